"""Admission of inbound connections: the pure rules, and the router applying them (fake streams, no sockets).
Unauthenticated connections have caps of their own (total and per source) and a deadline; CONN_LIMIT counts
established connections only, so idle connections can never keep a peer out."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_mesh_dispatch import ME, FakeWriter
from weave_node.core.ratelimit import LogLimiter
from weave_node.mesh.admission import Limits, Pending, admit, source_of
from weave_node.mesh.protocol import Connection, Identity, ProtocolConfig
from weave_node.mesh.router import Router
from weave_node.mesh.settings import MeshSettings

pytestmark = pytest.mark.unit
LIMITS = Limits(total=6, per_source=3)


def pending(*sources: str) -> dict[int, Pending]:
    return {i: Pending(s, float(i)) for i, s in enumerate(sources)}


def test_per_source_cap() -> None:
    verdict = admit(pending("a", "a", "a"), "a", LIMITS)
    assert not verdict.admit and verdict.code == "per_source"
    assert admit(pending("a", "a", "a"), "b", LIMITS).admit


def test_when_every_slot_is_taken_the_oldest_of_the_biggest_holder_makes_room() -> None:
    full = pending("b", "a", "a", "c", "a", "c")
    verdict = admit(full, "d", LIMITS)
    assert verdict.admit and verdict.evict == 1  # a holds 3: its oldest
    assert admit(full, "c", LIMITS).evict == 1  # c holds 2 < 3: may take one of a's
    assert admit(pending("a", "a", "b", "b", "c", "c"), "c", LIMITS).code == "total"  # c would outgrow the others
    assert admit(pending("a", "b", "c", "d", "e", "f"), "g", LIMITS).evict == 0  # all equal: the oldest


@given(
    arrivals=st.lists(st.sampled_from("abcdefgh"), max_size=60),
    peer_at=st.integers(0, 60),
)
def test_an_attacker_with_fewer_addresses_than_slots_never_keeps_a_peer_out(arrivals: list[str], peer_at: int) -> None:
    """Whatever an attacker with 8 addresses opens, before or after, a peer's own address gets in and stays in."""
    table: dict[int, Pending] = {}
    peer_in = False
    for t, src in enumerate([*arrivals[:peer_at], "peer", *arrivals[peer_at:]]):
        verdict = admit(table, src, Limits(total=16, per_source=4))
        if verdict.evict is not None:
            del table[verdict.evict]
        if verdict.admit:
            table[t] = Pending(src, float(t))
        assert len(table) <= 16 and max(list(_counts(table).values()) or [0]) <= 4
        if src == "peer":
            peer_in = verdict.admit
        if peer_in:
            assert any(p.source == "peer" for p in table.values())  # never evicted: every attacker holds >= 1
    assert peer_in


def _counts(table: dict[int, Pending]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in table.values():
        out[p.source] = out.get(p.source, 0) + 1
    return out


@pytest.mark.parametrize(
    ("host", "source"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::9", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not an address", "not an address"),
    ],
)
def test_sources(host: str, source: str) -> None:
    assert source_of(host) == source


def test_bad_limits() -> None:
    with pytest.raises(ValueError, match="per_source"):
        Limits(total=2, per_source=3)


# ---- the router -------------------------------------------------------------------------------------------


def _router(conn_limit: int = 100, handshake_timeout: float = 10.0) -> Router:
    return Router(
        MeshSettings(port=0, conn_limit=conn_limit),
        ME,
        ProtocolConfig(handshake_timeout=handshake_timeout),
        rng=random.Random(1),
        admission_limits=Limits(total=8, per_source=3),
        log_limiter=LogLimiter(burst=2, interval=60.0),
    )


async def _open(router: Router, host: str, port: int) -> tuple[asyncio.Task[None], FakeWriter]:
    reader = asyncio.StreamReader()
    writer = FakeWriter((host, port), reader=reader)
    task = asyncio.ensure_future(router._accept(reader, writer))  # type: ignore[arg-type]
    for _ in range(3):
        await asyncio.sleep(0)
    return task, writer


async def _join(router: Router, name: int, host: str) -> tuple[asyncio.Task[None], FakeWriter, Connection]:
    """A real peer's handshake, as far as the router is concerned."""
    task, writer = await _open(router, host, 6783)
    peer = Connection(Identity(name, f"p{name}", name), ProtocolConfig(), outbound=True, now=router.clock.now())
    peer.receive_data(writer.take(), router.clock.now())
    assert writer.reader is not None
    writer.reader.feed_data(peer.data_to_send())
    for _ in range(5):
        await asyncio.sleep(0)
    return task, writer, peer


def test_idle_connections_are_capped_and_a_peer_still_joins(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        router = _router(conn_limit=2)
        idle = [await _open(router, "203.0.113.66", 1000 + i) for i in range(200)]
        assert len(router.handshaking) == 3 and router.refused == {"per_source": 197}
        assert sum(not w.closed for _t, w in idle) == 3
        # from more addresses than the total cap allows: the biggest holders make room
        others = [await _open(router, f"203.0.113.{i}", 1) for i in range(1, 8)]
        assert len(router.handshaking) == 8 and router.refused["evicted"] == 2
        task, writer, peer = await _join(router, 0x02AA000000F1, "198.51.100.2")
        assert set(router.established) == {0x02AA000000F1} and peer.state == "established"
        assert router.refused["evicted"] == 3  # (it took the slot of one of the idle ones)
        # CONN_LIMIT (2) counts established connections: a second peer fits, a third is refused after its handshake
        await _join(router, 0x02AA000000F2, "198.51.100.3")
        _t3, w3, _p3 = await _join(router, 0x02AA000000F3, "198.51.100.4")
        assert len(router.established) == 2 and w3.closed and router.refused["conn_limit"] == 1
        for t, w in [*idle, *others, (task, writer)]:
            w.close()
            await t
        assert not router.handshaking and not router.pending

    with caplog.at_level(logging.INFO, logger="weave_node.router"):
        asyncio.run(scenario())
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 2  # the limiter's burst; the rest are counted for a summary line
    assert not [r for r in caplog.records if "suppressed" in r.getMessage()]  # (the interval is not over)


def test_unauthenticated_connections_are_closed_at_their_deadline() -> None:
    async def scenario() -> None:
        router = _router(handshake_timeout=0.3)
        idle = [await _open(router, "203.0.113.66", 1000 + i) for i in range(3)]
        assert len(router.handshaking) == 3
        async with asyncio.timeout(5):
            for t, _w in idle:
                await t
        assert all(w.closed for _t, w in idle) and not router.handshaking
        assert (await _open(router, "203.0.113.66", 2000))[1].closed is False  # room again

    asyncio.run(scenario())
