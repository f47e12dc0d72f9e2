"""IPv6 in the IPAM core (issue 24, first step): ranges of either family and their checks, the ring and one
peer's allocator over an IPv6 range, and the wire's version 2 (16-byte addresses) beside version 1, which stays
byte for byte what an IPv4-only router speaks."""

from __future__ import annotations

import contextlib
import ipaddress
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_ipam_ring import A, B, C, _evolve, merged_in_every_order
from weave_node.core.address import IPV4_LIMIT, ip_str, parse_ip6, parse_range, parse_ranges
from weave_node.core.errors import ConfigError
from weave_node.ipam import messages
from weave_node.ipam.allocator import Allocator
from weave_node.ipam.consensus import Ballot, Claim
from weave_node.ipam.errors import DecodeError
from weave_node.ipam.model import Init, Key
from weave_node.ipam.presence import Sighting
from weave_node.ipam.ring import Ring
from weave_node.ipam.store import Store

pytestmark = pytest.mark.unit
ME = 0x02_00_00_00_00_01
V6_SMALL = parse_range("fd32:57::ff00/120", ipv6=True)
V6_LARGE = parse_range("fd32:57::/64", ipv6=True)
V4 = parse_range("10.32.0.0/24")


def test_ranges_of_either_family_and_what_is_refused() -> None:
    assert V6_LARGE.ipv6 and V6_LARGE.bits == 128 and V6_LARGE.size == 1 << 64 and str(V6_LARGE) == "fd32:57::/64"
    assert not V4.ipv6 and V4.bits == 32 and V4.size == 256 and str(V4) == "10.32.0.0/24"
    assert parse_ranges("fd32:57::/64, 10.32.0.0/12") == (parse_range("10.32.0.0/12"), V6_LARGE)  # IPv4 first
    assert parse_ranges("10.32.0.0/12") == (parse_range("10.32.0.0/12"),)
    refused = {
        "fd32:57::/48": "a /64 to a /120",
        "fd32:57::/121": "a /64 to a /120",
        "::a00:0/120": "IPv4-compatible",
        "fd32:57::1/64": "host bits zero",
        "ff02::/64": "multicast",
        "fe80::/64": "link-local",
        "::ffff:10.32.0.0/120": "IPv4-mapped",
        "10.32.0.0/12,10.40.0.0/16": "at most one range of each family",
        "fd32:57::/64,fd33::/64": "at most one range of each family",
        "10.32.0.0/12,fd32::/64,fd33::/64": "at most one range of each family",
        "": "empty",
    }
    for text, why in refused.items():
        with pytest.raises(ConfigError, match=why):
            parse_ranges(text)
    with pytest.raises(ConfigError, match="IPv6 ranges are not supported here yet"):
        parse_range("fd32:57::/64")  # the router's IPALLOC_RANGE until the datapath carries IPv6


def test_an_address_int_says_its_family() -> None:
    """IPv4 below 2^32, ours of IPv6 at or above it: ip_str needs no family, and the two never mix."""
    assert ip_str(parse_range("10.32.0.0/12").start) == "10.32.0.0"
    assert ip_str(V6_LARGE.start + 1) == "fd32:57::1"
    assert parse_ip6("fd32:57::9") == V6_LARGE.start + 9
    with pytest.raises(ConfigError, match="IPv4-compatible"):
        parse_ip6("::10.0.0.1")
    assert parse_ip6("::1:0:0") == IPV4_LIMIT


def test_ipv6_usable_addresses_are_all_but_the_first() -> None:
    """No broadcast in IPv6: only the subnet-router anycast address (the first) is never handed out."""
    r = V6_SMALL
    assert not r.usable(r.start) and r.usable(r.start + 1) and r.usable(r.end - 1) and not r.usable(r.end)
    assert r.usable_end == r.end and V4.usable_end == V4.end - 1
    assert Ring.initial(r, 1, [A]).sizes() == {A: 256}
    assert next(iter(Ring.initial(r, 1, [A]))).free == 255


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 25), large=st.booleans())
def test_an_ipv6_ring_merges_as_a_crdt_and_survives_the_wire(seed: int, steps: int, large: bool) -> None:
    span = V6_LARGE if large else V6_SMALL
    history = _evolve(seed, steps, span)
    results = merged_in_every_order(random.Random(seed).sample(history, min(3, len(history))))
    assert all(r == results[0] for r in results)
    ring = history[-1]
    wire = messages.encode_state(span, ring)
    assert wire[:2] == b"I" + bytes([messages.VERSION6])
    decoded = messages.decode(wire)
    assert isinstance(decoded, messages.State) and decoded.ring == ring and decoded.span == span


def test_ipv4_messages_stay_version_1_byte_for_byte() -> None:
    """What an IPv4-only router of the previous release decodes: the same bytes as before IPv6 came in."""
    ring = Ring.initial(V4, 7, [A, B])
    wire = messages.encode_state(V4, ring)
    head = b"I" + bytes([1, messages.KIND_STATE]) + V4.start.to_bytes(4, "big") + bytes([24, 1])
    entries = b"".join(
        e.token.to_bytes(4, "big") + e.owner.to_bytes(8, "big") + bytes(8) + e.free.to_bytes(4, "big") for e in ring
    )
    assert wire == head + (7).to_bytes(8, "big") + (2).to_bytes(4, "big") + entries
    assert (
        messages.encode_request(V4) == b"I" + bytes([1, messages.KIND_REQUEST]) + V4.start.to_bytes(4, "big") + b"\x18"
    )


def test_every_ipv6_message_round_trips() -> None:
    ring = Ring.initial(V6_LARGE, 3, [A, B, C])
    claims = {A: Claim(Ballot(2, A), Ballot(1, B), (A, B, C))}
    sightings = {B: Sighting(12.5, "node-2"), C: Sighting(float("inf"), "")}
    state = messages.decode(messages.encode_state(V6_LARGE, ring, 3, claims, unsynced=True, sightings=sightings))
    assert state == messages.State(V6_LARGE, ring, 3, claims, unsynced=True, sightings=sightings)
    assert messages.decode(messages.encode_request(V6_SMALL)) == messages.Request(V6_SMALL)
    ips = [V6_LARGE.end - 1, V6_LARGE.start + 1, V6_LARGE.start + (1 << 40)]
    for kind in (messages.KIND_RECLAIMED, messages.KIND_IN_USE):
        got = messages.decode(messages.encode_addresses(V6_LARGE, kind, ips))
        assert got == messages.Addresses(V6_LARGE, kind, tuple(sorted(ips)))


def test_a_family_in_the_other_versions_layout_is_refused() -> None:
    """An IPv4 range in a version 2 message, a bad IPv6 prefix, a truncated one: refused, never a ring."""
    v4_in_v2 = b"I" + bytes([2, messages.KIND_REQUEST]) + V4.start.to_bytes(16, "big") + bytes([64])
    big = int(ipaddress.IPv6Address("fd32::"))
    too_large = b"I" + bytes([2, messages.KIND_REQUEST]) + big.to_bytes(16, "big") + bytes([48])
    for wire in (v4_in_v2, too_large, messages.encode_request(V6_SMALL)[:-1], b"I\x02"):
        with pytest.raises(DecodeError):
            messages.decode(wire)
    outside = messages.encode_addresses(V6_SMALL, messages.KIND_IN_USE, [V6_LARGE.start + 5])
    with pytest.raises(DecodeError, match="outside the range"):
        messages.decode(outside)


@settings(max_examples=300, deadline=None)
@given(flip=st.integers(0, 10_000), value=st.integers(0, 255))
def test_a_corrupted_ipv6_ring_is_rejected_or_still_valid(flip: int, value: int) -> None:
    wire = bytearray(messages.encode_state(V6_LARGE, _evolve(3, 8, V6_LARGE)[-1]))
    wire[flip % len(wire)] = value
    with contextlib.suppress(DecodeError):
        msg = messages.decode(bytes(wire))
        if isinstance(msg, messages.State) and msg.ring is not None:
            msg.ring.check_invariants()


def test_one_peer_allocates_every_usable_ipv6_address_once() -> None:
    """A /120 to the last address: 255 pods, every address but the first, none twice; the 256th waits."""
    a = Allocator(ME, V6_SMALL, Init("consensus", peers=1), reclaim_after=600, now=0.0)
    ips = [a.allocate(Key(f"c{i}"), 0.0) for i in range(255)]
    assert None not in ips and sorted(ips) == list(range(V6_SMALL.start + 1, V6_SMALL.end))  # type: ignore[type-var]
    assert a.allocate(Key("one-too-many"), 0.0) is None
    assert a.release("c7") == [ips[7]]
    assert a.allocate(Key("again"), 0.0) == ips[7]
    big = Allocator(ME, V6_LARGE, Init("consensus", peers=1), reclaim_after=600, now=0.0)
    first = big.allocate(Key("c1"), 0.0)
    assert first is not None and ip_str(first) == "fd32:57::1"
    assert big.claim(Key("c2"), V6_LARGE.end - 1, 0.0) is True  # the last address of a /64 is a pod's too


def test_an_ipv6_ranges_state_survives_a_restart_and_ipv4_rows_stay_integers(tmp_path: Path) -> None:
    """sqlite's INTEGER holds 64 bits: an IPv6 range's addresses are 16-byte BLOBs in its own database; an IPv4
    range's rows are INTEGERs, as every earlier release wrote and reads them."""
    for span, name in ((V6_LARGE, "ipam6.db"), (V4, "ipam.db")):
        alloc = Allocator(ME, span, Init("consensus", peers=1), reclaim_after=600, now=0.0)
        store = Store(tmp_path / name, me=ME, span=span)
        store.commit(alloc, alloc.take_changes())
        ips = {Key(f"c{i}"): alloc.allocate(Key(f"c{i}"), 0.0) for i in range(3)}
        assert alloc.claim(Key("last"), span.usable_end - 1, 0.0)
        store.commit(alloc, alloc.take_changes())
        alloc.release("c1")
        store.commit(alloc, alloc.take_changes())
        kinds = {kind for (kind,) in store.db.execute("SELECT typeof(ip) FROM allocations")}
        store.close()
        assert kinds == ({"blob"} if span.ipv6 else {"integer"})
        loaded = Store(tmp_path / name, me=ME, span=span).load()
        want = {Key("c0"): ips[Key("c0")], Key("c2"): ips[Key("c2")], Key("last"): span.usable_end - 1}
        assert loaded.allocations == want
        assert loaded.ring == alloc.ring
