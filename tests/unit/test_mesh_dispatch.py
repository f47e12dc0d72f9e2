"""The router's message dispatch after a valid handshake, without sockets: a router (never started) and a peer's
sans-IO Connection feed each other through its real Connection and `_handle`, so every received message goes the
way a socket's bytes would. Fuzzed with every message kind (topology, digest, gossip, unicast, broadcast, unknown
kinds, garbage) on a test channel whose handler raises on request and on the real overlay channel: the dispatch
never raises, a bad message costs at most its connection, a channel's error only that message, and nothing is
logged with a traceback unless a channel's handler really failed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weave_node.core.address import parse_range
from weave_node.mesh import gossip
from weave_node.mesh.errors import ProtocolError
from weave_node.mesh.protocol import Connection, Established, Identity, MessageReceived, ProtocolConfig
from weave_node.mesh.router import PeerConn, Router
from weave_node.mesh.settings import MeshSettings
from weave_node.mesh.topology import ConnectionInfo, PeerRecord, encode_records
from weave_node.overlay import peers as overlay_peers
from weave_node.overlay.config import OverlayConfig
from weave_node.overlay.service import OverlayService

pytestmark = pytest.mark.unit
ME = Identity(name=0x02AA00000001, nickname="me", uid=11)
PEER = Identity(name=0x02AA00000002, nickname="peer", uid=22)
OTHER = 0x02AA00000003
PC = ProtocolConfig()
NAMES = [ME.name, PEER.name, OTHER, 0, (1 << 48) - 1, 1 << 48, (1 << 64) - 1]


class FakeWriter:
    """What the router uses of an asyncio.StreamWriter; closing it ends the reader (like a socket's close)."""

    class _Transport:
        def get_write_buffer_size(self) -> int:
            return 0

    def __init__(self, peer: tuple[str, int] = ("198.51.100.7", 40000), reader: Any = None) -> None:
        self.out = bytearray()
        self.closed = False
        self.transport = self._Transport()
        self.peer = peer
        self.reader = reader

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed and self.reader is not None:
            self.reader.feed_eof()
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return self.peer if name == "peername" else None

    async def drain(self) -> None:
        return None

    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data


class RaisingChannel:
    """A channel whose handler raises what the payload's first byte asks for."""

    def __init__(self) -> None:
        self.received: list[tuple[str, int, bytes]] = []

    def _maybe_raise(self, data: bytes) -> None:
        if data[:1] == b"P":
            raise ProtocolError("test channel refuses this")
        if data[:1] == b"V":
            raise ValueError("test channel bug")

    def on_gossip(self, src: int, data: bytes) -> bytes | None:
        self._maybe_raise(data)
        self.received.append(("gossip", src, data))
        return data or None

    def on_unicast(self, src: int, data: bytes) -> None:
        self._maybe_raise(data)
        self.received.append(("unicast", src, data))

    def on_broadcast(self, src: int, data: bytes) -> None:
        self._maybe_raise(data)
        self.received.append(("broadcast", src, data))

    def gossip_state(self) -> bytes | None:
        return None


class Rig:
    """A router with one established inbound connection from PEER, whose side is `peer` (a sans-IO Connection)."""

    def __init__(self) -> None:
        self.router = Router(MeshSettings(port=0, conn_limit=10), ME, PC, rng=random.Random(1))
        self.channel = RaisingChannel()
        self.router.register_channel("test", self.channel)
        self.overlay = OverlayService(
            ME.name, OverlayConfig(pod_range=parse_range("10.32.0.0/12")), _no_bridge, wall_ns=lambda: 1
        )
        self.overlay.gossip.attach(self.router.register_channel("overlay", self.overlay.gossip))
        self.closed: list[str] = []  # why each connection of PEER's ended
        self.connect()

    def connect(self) -> None:
        """A fresh connection from PEER (what its router would do after a close)."""
        self.writer = FakeWriter()
        conn = Connection(ME, PC, outbound=False, now=0.0)
        self.pc = PeerConn(conn=conn, writer=self.writer, outbound=False, socket_addr="198.51.100.7:40000")  # type: ignore[arg-type]
        self.router.pending.add(self.pc)
        self.peer = Connection(PEER, PC, outbound=True, now=0.0)
        self.pump()
        assert self.router.established == {PEER.name: self.pc}

    def pump(self) -> None:
        for _ in range(10):
            to_router, to_peer = self.peer.data_to_send(), self.pc.conn.data_to_send() + self.writer.take()
            if not to_router and not to_peer:
                return
            for event in self.pc.conn.receive_data(to_router, 0.0) if to_router else []:
                self.router._handle(self.pc, event)
            self.router._flush(self.pc)
            if to_peer and self.peer.state != "closed":
                self.peer.receive_data(to_peer, 0.0)

    def send(self, payload: bytes) -> None:
        self.peer.send_message(payload, 0.0)
        self.pump()
        if self.pc.conn.state == "closed":  # what the connection's task does when its loop ends
            self.router._finish(self.pc)
            self.closed.append(self.pc.failure)

    def close(self) -> None:
        self.overlay.executor.shutdown()
        self.overlay.pods.executor.shutdown()


async def _no_bridge(_cidr: str | None) -> str:
    raise AssertionError("not used")


# ---- strategies: every message kind, well-formed, nearly well-formed and garbage ---------------------------

names = st.one_of(st.sampled_from(NAMES), st.sampled_from(NAMES[:4]), st.integers(0, (1 << 64) - 1))
peer_names = st.sampled_from([ME.name, PEER.name, OTHER, 7])
channels = st.sampled_from(["test", "test", "test", "overlay", "overlay", "ipam", "nobody", "é"])
payloads = st.binary(max_size=40) | st.sampled_from([b"P", b"V", b"Pbad", b"Vbug"])


@st.composite
def records(draw: st.DrawFn) -> PeerRecord:
    name = draw(peer_names)
    peers = sorted(draw(st.sets(peer_names.filter(lambda p: p != name), max_size=3)))
    addresses = st.sampled_from(["", "10.0.0.1:6783", "a..b:1", "[::1]:6783", "1.2.3.4:²", "h:٣", "x y:1", "[::1"])
    conns = tuple(ConnectionInfo(p, draw(addresses), draw(st.booleans()), draw(st.booleans())) for p in peers)
    return PeerRecord(name, draw(st.text(max_size=4)), draw(st.integers(0, 3)), draw(st.integers(1, 4)), conns)


def _topology(recs: list[PeerRecord]) -> bytes:
    unique = {r.name: r for r in recs}
    return bytes([gossip.KIND_TOPOLOGY]) + encode_records(unique.values())


overlay_infos = st.builds(
    lambda name, version, ip, under: overlay_peers.encode(
        [overlay_peers.PeerInfo(name, version, ip, 12 if ip else 0, "", under)]
    ),
    peer_names,
    st.integers(1, 1 << 40),
    st.sampled_from(["", "10.32.0.1", "10.40.0.1", "192.168.1.1"]),
    st.sampled_from(["", "198.51.100.2", "::1"]),
)


def _flip(data: bytes, flips: list[int]) -> bytes:
    out = bytearray(data)
    for f in flips:
        if out:
            out[f % len(out)] ^= 1 << (f % 8)
    return bytes(out)


def _digest(fingerprint: int, echo: bool) -> bytes:
    return gossip.encode(gossip.encode_digest(fingerprint, echo))


def _channel_message(kind: int, channel: str, src: int, dst: int, payload: bytes) -> bytes:
    """Built by hand: names may be any 64-bit number (the encoder would refuse some)."""
    raw = channel.encode()
    src_field = src.to_bytes(8, "big") if kind != gossip.KIND_GOSSIP else b""
    dst_field = dst.to_bytes(8, "big") if kind == gossip.KIND_UNICAST else b""
    return bytes([kind, len(raw)]) + raw + src_field + dst_field + payload


channel_messages = st.builds(
    _channel_message,
    st.sampled_from([gossip.KIND_GOSSIP, gossip.KIND_UNICAST, gossip.KIND_BROADCAST]),
    channels,
    names,
    st.just(ME.name) | names,
    payloads | overlay_infos,
)
envelopes = st.one_of(
    st.lists(records(), max_size=4).map(_topology),
    st.builds(_digest, st.integers(0, (1 << 64) - 1), st.booleans()),
    channel_messages,
    channel_messages,
    channel_messages,
    st.builds(lambda kind, rest: bytes([kind]) + rest, st.integers(0, 255), st.binary(max_size=40)),
    st.binary(max_size=60),
)
messages = st.one_of(
    envelopes, envelopes, envelopes, st.builds(_flip, envelopes, st.lists(st.integers(0, 4000), min_size=1, max_size=3))
)


@given(batch=st.lists(messages, min_size=1, max_size=8))
@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_message_of_any_kind_gets_past_the_dispatch(batch: list[bytes], caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    caplog.clear()
    try:
        with caplog.at_level(logging.DEBUG, logger="weave_node"):
            for payload in batch:
                if rig.pc.conn.state == "closed":
                    rig.connect()
                rig.send(payload)  # raises if anything escaped the dispatch
                rig.router.topology.check_invariants()
        errors = rig.router.message_errors
        for outcome in sorted(errors):
            hypothesis.event(outcome)
        hypothesis.event(f"delivered to the test channel: {min(len(rig.channel.received), 3)}+")
        assert errors["internal_error"] == 0
        tracebacks = [r for r in caplog.records if r.exc_info]
        assert len(tracebacks) <= errors["channel_error"]  # (rate-limited: at most one per failure)
        assert all(reason.startswith("bad message") for reason in rig.closed), rig.closed
        assert errors["bad_message"] == len(rig.closed)
        assert not rig.router.pending and list(rig.router.established.values()) in ([], [rig.pc])
    finally:
        rig.close()


def test_a_unicast_to_a_destination_beyond_48_bits_closes_the_connection_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig()
    crafted = bytes([gossip.KIND_UNICAST, 4]) + b"ipam" + PEER.name.to_bytes(8, "big") + (1 << 48).to_bytes(8, "big")
    with caplog.at_level(logging.DEBUG, logger="weave_node"):
        rig.send(crafted + b"x")
    assert rig.pc.conn.state == "closed" and rig.pc.failure.startswith("bad message: destination")
    assert rig.router.message_errors == {"bad_message": 1}
    assert not [r for r in caplog.records if r.exc_info]
    rig.close()


def test_a_channel_that_raises_loses_that_message_only() -> None:
    rig = Rig()
    for payload in (b"Pno", b"Vbug", b"fine"):
        rig.send(bytes([gossip.KIND_GOSSIP, 4]) + b"test" + payload)
    assert rig.pc.conn.state == "established"
    assert rig.router.message_errors == {"channel_rejected": 1, "channel_error": 1}
    assert rig.channel.received == [("gossip", PEER.name, b"fine")]
    rig.close()


def test_a_bad_overlay_message_is_dropped_and_the_connection_stays() -> None:
    rig = Rig()
    rig.send(bytes([gossip.KIND_GOSSIP, 7]) + b"overlay" + b"\x01\x00\x05")  # 5 entries announced, none there
    assert rig.pc.conn.state == "established" and rig.router.message_errors == {"channel_rejected": 1}
    rig.close()


def test_messages_behind_an_over_the_limit_handshake_are_not_dispatched() -> None:
    rig = Rig()
    rig.router.node.conn_limit = 1  # PEER holds the one slot
    writer = FakeWriter(("198.51.100.9", 1))
    pc = PeerConn(conn=Connection(ME, PC, outbound=False, now=0.0), writer=writer, outbound=False, socket_addr="x")  # type: ignore[arg-type]
    rig.router.pending.add(pc)
    other = Connection(Identity(OTHER, "other", 33), PC, outbound=True, now=0.0)
    other.receive_data(pc.conn.data_to_send(), 0.0)
    events = pc.conn.receive_data(other.data_to_send(), 0.0)
    assert isinstance(events[0], Established)
    other.send_message(bytes([gossip.KIND_GOSSIP, 4]) + b"test" + b"sneaky", 0.0)
    events += pc.conn.receive_data(other.data_to_send(), 0.0)
    for event in events:
        rig.router._handle(pc, event)
    assert pc.failure.startswith("too many connections") and rig.router.refused == {"conn_limit": 1}
    assert set(rig.router.established) == {PEER.name} and rig.channel.received == []
    rig.close()


# ---- the connection task itself: a fed StreamReader instead of a socket ------------------------------------


def test_the_connection_task_ends_normally_after_a_crafted_unicast(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        router = Router(MeshSettings(port=0), ME, PC, rng=random.Random(1))
        reader = asyncio.StreamReader()
        writer = FakeWriter(reader=reader)
        peer = Connection(PEER, PC, outbound=True, now=router.clock.now())
        reader.feed_data(peer.data_to_send())
        task = asyncio.ensure_future(router._serve(reader, writer, outbound=False, target=None, source="198.51.100.7"))  # type: ignore[arg-type]
        for _ in range(100):
            await asyncio.sleep(0)
            if router.established:
                break
        peer.receive_data(writer.take(), router.clock.now())
        assert peer.state == "established"
        crafted = bytes([gossip.KIND_UNICAST, 4]) + b"ipam" + (7).to_bytes(8, "big") + (1 << 63).to_bytes(8, "big")
        peer.send_message(crafted, router.clock.now())
        reader.feed_data(peer.data_to_send())
        async with asyncio.timeout(5):
            await task  # raises if the task died with an exception
        assert not router.established and not router.handshaking and not router.pending
        assert router.message_errors == {"bad_message": 1}

    with caplog.at_level(logging.DEBUG, logger="weave_node"):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if r.exc_info]
    assert any("bad message: destination" in r.getMessage() for r in caplog.records)


def test_an_idle_inbound_connection_is_closed_at_the_handshake_deadline() -> None:
    async def scenario() -> None:
        router = Router(MeshSettings(port=0), ME, ProtocolConfig(handshake_timeout=0.2))
        reader = asyncio.StreamReader()
        writer = FakeWriter(reader=reader)
        task = asyncio.ensure_future(router._serve(reader, writer, outbound=False, target=None, source="192.0.2.1"))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert len(router.handshaking) == 1
        async with asyncio.timeout(5):
            await task
        assert writer.closed and not router.handshaking and not router.pending

    asyncio.run(scenario())


# ---- a duplicate connection resolved: nothing a channel said is lost -------------------------------------------


@contextlib.contextmanager
def messages_to_peers() -> Iterator[list[gossip.Envelope]]:
    """Every message a (sans-IO) Connection receives meanwhile, decoded: what our router sent to its peers."""
    sent: list[gossip.Envelope] = []
    receive = Connection.receive_data

    def recording(self: Connection, data: bytes, now: float) -> list[Any]:
        events = receive(self, data, now)
        sent.extend(gossip.decode(e.payload) for e in events if isinstance(e, MessageReceived))
        return events

    Connection.receive_data = recording  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        Connection.receive_data = receive  # type: ignore[method-assign]


def test_every_new_connection_carries_the_channels_whole_state() -> None:
    """A restarted peer learns our overlay and IPAM state on its first connection, not when a periodic gossip
    happens to come its way. (Seen on the lab: a restarted router without its neighbour's bridge address for 5 s
    sent no heartbeats, the neighbour put it in the sleeve, and a rolling restart lost 2.5 s of pod pings.)"""
    with messages_to_peers() as sent:
        rig = Rig()  # the first connection from PEER, no duplicate anywhere
    states = [env for env in sent if env.kind == gossip.KIND_GOSSIP and env.channel == "overlay"]
    assert states and overlay_peers.decode(states[0].payload), sent  # our PeerInfo, at once
    rig.close()


def test_a_connection_that_replaces_a_duplicate_carries_the_channels_state_again() -> None:
    """When a connection replaces one the peer may already have closed as a duplicate (with our channels' first
    gossip in it), the channels' state goes out again on the new one; what the peer sent on the loser before it
    was closed still counts. (Seen on the lab: a peer's datapath info lost that way left the fast datapath
    pending for 30 s, until a periodic gossip happened to go that way.)"""
    rig = Rig()
    rig.channel.gossip_state = lambda: b"the state"  # type: ignore[method-assign]
    first = rig.pc
    with messages_to_peers() as sent:
        rig.connect()  # the same peer again: the newer connection wins, the first is closed as a duplicate
    assert first.failure == "duplicate connection" and rig.router.established == {PEER.name: rig.pc}
    assert any(env.channel == "test" and env.payload == b"the state" for env in sent), sent
    # a message that arrived on the loser after it was closed is still dispatched
    msg = gossip.encode(gossip.Envelope(kind=gossip.KIND_GOSSIP, channel="test", payload=b"late"))
    rig.router._handle(first, MessageReceived(msg))
    assert ("gossip", PEER.name, b"late") in rig.channel.received
    rig.close()
