"""One peer's allocator: idempotency, claims, releases, bad input, IPALLOC_INIT parsing, persistence hand-off."""

from __future__ import annotations

import pytest

from weave_node.core.address import parse_ip, parse_range
from weave_node.core.errors import ConfigError
from weave_node.ipam.allocator import Allocator
from weave_node.ipam.errors import BadRequest, Conflict, NotFound, Unavailable
from weave_node.ipam.model import Init, Key, parse_init

ME = 0x02_00_00_00_00_01
SPAN = parse_range("10.32.0.0/28")


def solo(**kw: object) -> Allocator:
    return Allocator(ME, SPAN, Init("consensus", peers=1), reclaim_after=600, now=0.0, **kw)  # type: ignore[arg-type]


def test_a_single_peer_decides_alone_and_allocates_idempotently() -> None:
    a = solo()
    assert a.ring is not None and a.ready(0.0)
    first = a.allocate(Key("c1"), 0.0)
    assert first == parse_ip("10.32.0.1")
    assert a.allocate(Key("c1"), 0.0) == first
    assert a.allocate(Key("c1", "eth1"), 0.0) != first
    changes = a.take_changes()
    assert set(changes.put) == {first, parse_ip("10.32.0.2")} and changes.ring


def test_range_exhaustion_waits_and_release_makes_room() -> None:
    a = solo()
    ips = [a.allocate(Key(f"c{i}"), 0.0) for i in range(14)]  # a /28 has 14 usable addresses
    assert None not in ips and len(set(ips)) == 14
    assert a.allocate(Key("one-too-many"), 0.0) is None
    assert "no reachable peer has free space" in a.waiting_reason(0.0)
    assert a.release("c3") == [ips[3]]
    assert a.allocate(Key("one-too-many"), 0.0) == ips[3]


def test_claims() -> None:
    a = solo()
    a.allocate(Key("c1"), 0.0)
    assert a.claim(Key("c2"), parse_ip("10.32.0.9"), 0.0) is True
    assert a.claim(Key("c2"), parse_ip("10.32.0.9"), 0.0) is True  # idempotent
    with pytest.raises(Conflict, match="in use by c1/eth0"):
        a.claim(Key("c3"), parse_ip("10.32.0.1"), 0.0)
    with pytest.raises(Conflict, match=r"already has 10\.32\.0\.9"):
        a.claim(Key("c2"), parse_ip("10.32.0.10"), 0.0)
    for bad in ("10.32.0.0", "10.32.0.15", "10.33.0.1"):
        with pytest.raises(BadRequest, match="not a usable address"):
            a.claim(Key("c4"), parse_ip(bad), 0.0)
    assert a.allocate(Key("c5"), 0.0) == parse_ip("10.32.0.2")


def test_bad_input_changes_nothing() -> None:
    a = solo()
    a.allocate(Key("c1"), 0.0)
    a.take_changes()
    before = dict(a.allocations)
    for key in (Key(""), Key("x" * 300), Key("c", ""), Key("c", "a/b"), Key("c", "x" * 16), Key("bad\n")):
        with pytest.raises(BadRequest):
            a.allocate(key, 0.0)
    with pytest.raises(NotFound, match="no address is allocated to ghost"):
        a.release("ghost")
    with pytest.raises(BadRequest, match="ourselves"):
        a.rmpeer(ME, 0.0)
    assert a.allocations == before and not a.take_changes()


def test_observer_owns_nothing_and_says_so() -> None:
    a = Allocator(ME, SPAN, Init("observer"), reclaim_after=600, now=0.0)
    with pytest.raises(Unavailable, match="observer"):
        a.allocate(Key("c1"), 0.0)
    assert "observer" in a.waiting_reason(0.0)


def test_restart_restores_allocations_and_the_cursor_skips_them() -> None:
    a = solo()
    ips = {Key(f"c{i}"): a.allocate(Key(f"c{i}"), 0.0) for i in range(3)}
    b = solo(ring=a.ring, allocations=ips)
    assert b.allocations == ips
    assert b.allocate(Key("new"), 0.0) not in ips.values()


def test_parse_init() -> None:
    assert parse_init("", 3) == Init("consensus", peers=3)
    assert parse_init("consensus=5", 3).quorum == 3
    assert parse_init("observer", 3).mode == "observer"
    assert parse_init("seed=02:00:00:00:00:02,02:00:00:00:00:01", 1).seeds == (0x020000000001, 0x020000000002)
    for bad in ("consensus=0", "consensus=x", "seed=", "seed=nope", "observer=1", "paxos"):
        with pytest.raises(ConfigError):
            parse_init(bad, 1)
