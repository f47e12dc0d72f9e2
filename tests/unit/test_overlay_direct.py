"""Direct mode's decisions without a kernel: which peers are candidates, what goes into the kernel for them, and
how the direct heartbeats confirm and drop the path (overlay.direct, overlay.health)."""

from __future__ import annotations

import struct

from weave_node.datapath.model import BRIDGE, DIRECT_TABLE, Route, Rule
from weave_node.overlay import health as hb
from weave_node.overlay.direct import ARP_CHAIN, PROXY_CHAIN, Candidate, candidates, cidrs, entries, with_adopted
from weave_node.overlay.health import Health, Mode

A, B, C = 0xA, 0xB, 0xC
V4 = int.from_bytes(bytes([10, 40, 0, 0]), "big")


def test_only_peers_reached_without_a_gateway_and_with_a_bridge_address_are_candidates() -> None:
    vteps = {A: "198.19.0.1", B: "198.19.0.2", C: "198.20.0.3"}
    routes = {"198.19.0.1": ("eth0", ""), "198.19.0.2": ("weave", ""), "198.20.0.3": ("eth0", "198.19.0.254")}
    bridges = {A: "10.32.0.1", B: "10.40.0.1", C: "10.48.0.1"}
    assert candidates(vteps, bridges, routes) == {A: Candidate(A, "198.19.0.1", "eth0", "10.32.0.1")}
    assert candidates(vteps, {}, routes) == {}  # no bridge address yet: nothing to probe
    assert candidates(vteps, bridges, routes, exclude=("eth0",)) == {}


def test_spans_become_the_fewest_cidrs() -> None:
    assert cidrs([(V4, V4 + 2**18)]) == ("10.40.0.0/14",)
    assert cidrs([(V4 + 3, V4 + 4), (V4 + 4, V4 + 8)]) == ("10.40.0.3/32", "10.40.0.4/30")
    assert cidrs([(V4, V4)]) == ()


def test_entries_probe_every_candidate_and_route_only_confirmed_ones() -> None:
    found = {B: Candidate(B, "198.19.0.2", "eth0", "10.40.0.1"), C: Candidate(C, "198.19.0.3", "eth0", "10.48.0.1")}
    space = {A: ("10.32.0.0/13",), B: ("10.40.0.0/14", "10.44.0.7/32"), C: ("10.48.0.0/13",)}
    e = entries(found, {B}, space, A, "10.32.0.1")
    assert Route("0.0.0.0/0", table=DIRECT_TABLE, kind="unreachable") in e.routes
    assert Route("10.48.0.1/32", via="198.19.0.3", dev="eth0", table=DIRECT_TABLE) in e.routes  # C: probed only
    # the host's own traffic to B's pods leaves from our bridge address, as it did through VXLAN
    assert Route("10.40.0.0/14", via="198.19.0.2", dev="eth0", src="10.32.0.1") in e.routes
    assert Route("10.40.0.1/32", dev=BRIDGE, src="10.32.0.1") in e.routes  # B's bridge address stays on VXLAN
    assert not any(r.dst == "10.48.0.0/13" for r in e.routes)
    assert e.rules == frozenset({Rule()})
    arp, proxy = e.chains
    assert arp.name == ARP_CHAIN and arp.family == "eth" and arp.hook == "FORWARD"
    assert arp.rules == (
        "-p ARP -o vxlan-6784 --arp-ip-dst 10.40.0.1 -j RETURN",  # before the DROP of B's space that holds it
        "-p ARP -o vxlan-6784 --arp-op Request --arp-ip-dst 10.40.0.0/14 -j DROP",  # (our pods' answers pass)
        "-p ARP -o vxlan-6784 --arp-op Request --arp-ip-dst 10.44.0.7 -j DROP",  # as ebtables-save prints a /32
        # From the tunnel: what asks for our addresses passes; any other ARP of B's pods does not reach ours
        "-p ARP -i vxlan-6784 --arp-ip-dst 10.32.0.0/13 -j RETURN",
        "-p ARP -i vxlan-6784 --arp-ip-src 10.40.0.0/14 -j DROP",
        "-p ARP -i vxlan-6784 --arp-ip-src 10.44.0.7 -j DROP",
    )
    assert proxy.name == PROXY_CHAIN and proxy.hook == "OUTPUT"
    assert proxy.rules == tuple(
        f"-p ARP -o {port} --arp-ip-src {net} -j DROP"
        for port in ("vxlan-6784", "weave-sleeve")
        for net in ("10.40.0.0/14", "10.44.0.7")
    )
    assert e.peers == {B} and e.sources == ("198.19.0.2", "198.19.0.3")
    empty = entries(found, {B}, {}, A)  # no known space: nothing routed, nothing filtered, but direct all the same
    assert empty.chains[0].rules == () and empty.peers == {B}


def _pair(now: float, a: Health, b: Health, *, vxlan: bool = True, direct: bool = True) -> None:
    for src, dst in ((a, b), (b, a)):
        for _, msg, over_direct in src.due(now):
            if direct if over_direct else vxlan:
                dst.receive(msg, now)


def _health(me: int, peer: int) -> Health:
    h = Health(me, interval=1, timeout=3)
    h.watch({peer}, 0.0)
    h.watch_direct({peer}, 0.0)
    return h


def test_direct_needs_both_directions_of_both_paths_and_falls_back_to_fastdp() -> None:
    a, b = _health(A, B), _health(B, A)
    for t in range(3):
        _pair(float(t), a, b)
    assert [s.new for s in a.evaluate(2.0)] == [Mode.DIRECT] and a.direct_peers() == {B}
    assert b.evaluate(2.0)[0].new == Mode.DIRECT
    for t in range(3, 7):  # the underlay starts dropping pod addresses: VXLAN still works
        _pair(float(t), a, b, direct=False)
    (switch,) = a.evaluate(6.0)
    assert (switch.old, switch.new) == (Mode.DIRECT, Mode.FASTDP) and "direct path: no heartbeat" in switch.reason
    for t in range(7, 10):
        _pair(float(t), a, b)
    assert a.evaluate(9.0)[0].new == Mode.DIRECT
    for t in range(10, 14):  # VXLAN fails, the direct path does not: no direct without the fast path
        _pair(float(t), a, b, vxlan=False)
    assert a.evaluate(13.0)[0].new == Mode.DOWN


def test_a_peer_without_direct_mode_never_confirms_it_and_old_routers_ignore_direct_heartbeats() -> None:
    a = _health(A, B)
    old = Health(B, interval=1, timeout=3)  # a router of 0.2.0: no direct candidates, version-1 decoder
    old.watch({A}, 0.0)
    for t in range(5):
        _pair(float(t), a, old)
    assert a.evaluate(4.0)[0].new == Mode.FASTDP and "direct path" in a.peers[B].reason
    assert old.peers[A].direct_rx is None and old.evaluate(4.0)[0].new == Mode.FASTDP

    # What 0.2.0's decoder does (version 1 only, flag 1 = heard): a direct heartbeat is not one of its own, and a
    # version-1 heartbeat with our new flag still says "heard".
    def decode_020(data: bytes) -> tuple[int, int, bool] | None:
        magic, version, src, dst, flags = struct.unpack(">4sBQQB", data)
        return None if magic != b"WNHB" or version != 1 else (src, dst, bool(flags & 1))

    assert decode_020(hb.encode(A, B, True, True, direct=True)) is None
    assert decode_020(hb.encode(A, B, True, True)) == (A, B, True)
    assert decode_020(hb.encode(A, B, False, True)) == (A, B, False)


def test_no_longer_a_candidate_forgets_the_direct_path() -> None:
    a, b = _health(A, B), _health(B, A)
    for t in range(3):
        _pair(float(t), a, b)
    a.evaluate(2.0)
    a.watch_direct(set(), 3.0)
    assert a.peers[B].direct_since is None and a.evaluate(3.0)[0].new == Mode.FASTDP
    assert all(not over_direct for _, _, over_direct in a.due(10.0))


def test_after_a_restart_what_the_kernel_had_stays_until_the_window_ends_and_fresh_entries_win() -> None:
    found = {B: Candidate(B, "198.19.0.2", "eth0", "10.40.0.1")}
    old = entries(found, {B}, {A: ("10.32.0.0/13",), B: ("10.40.0.0/14",)}, A, "10.32.0.1")
    fresh = entries({}, set(), {}, A)  # just started: nothing is a candidate or confirmed yet
    kept = with_adopted(fresh, old.routes, {c.name: c.rules for c in old.chains})
    assert kept.routes == old.routes and [c.rules for c in kept.chains] == [c.rules for c in old.chains]
    assert kept.sources == ("198.19.0.2",)  # its host may still route in to our pods
    # A fresh route for the same destination wins over the adopted one.
    moved = entries(
        {B: Candidate(B, "198.19.0.9", "eth0", "10.40.0.1")}, {B}, {A: ("10.32.0.0/13",), B: ("10.40.0.0/14",)}, A
    )
    merged = with_adopted(moved, old.routes, {})
    assert [r.via for r in merged.routes if r.dst == "10.40.0.0/14"] == ["198.19.0.9"]


def test_an_adopted_route_over_our_own_space_or_a_fresher_one_goes() -> None:
    """Found by CI (the DaemonSet, pods started on three nodes at once): after a restart A kept the route of B's
    old range, 10.40.0.0/13, beside the fresh one for B's range now, 10.40.0.0/14, after 10.44.0.0/15 had come to
    A; the kernel picked the /13 for A's own pod there and sent its traffic back to B."""
    found = {B: Candidate(B, "198.19.0.2", "eth0", "10.40.0.1")}
    old = entries(found, {B}, {A: ("10.32.0.0/13",), B: ("10.40.0.0/13",)}, A, "10.32.0.1")
    just_started = entries({}, set(), {}, A)
    space = {A: ("10.32.0.0/13", "10.44.0.0/15"), B: ("10.40.0.0/14", "10.46.0.0/15")}
    kept = with_adopted(just_started, old.routes, {}, own=space[A])
    assert not [r for r in kept.routes if r.dst == "10.40.0.0/13"]  # (it covers our 10.44.0.0/15)
    assert [r.dst for r in kept.routes if r.dst == "10.40.0.1/32"]  # (B's bridge: no overlap, kept)
    confirmed = entries(found, {B}, space, A, "10.32.0.1")
    merged = with_adopted(confirmed, old.routes, {}, own=())  # (a fresher route for part of it: the old one goes)
    assert {r.dst for r in merged.routes if r.via} == {r.dst for r in confirmed.routes if r.via}


def test_a_space_that_begins_with_the_peers_bridge_address_keeps_that_address_on_vxlan() -> None:
    """Found by the netns suite: B's space 10.36.0.1/32, 10.36.0.2/31, ... and its bridge at 10.36.0.1 gave two
    routes for one destination, and the space's won: the VXLAN heartbeats went direct and a blocked VXLAN went
    unnoticed."""
    found = {B: Candidate(B, "198.19.0.3", "eth0", "10.36.0.1")}
    e = entries(found, {B}, {B: ("10.36.0.1/32", "10.36.0.2/31")}, A, "10.40.0.0")
    at_bridge = [r for r in e.routes if r.dst == "10.36.0.1/32" and r.table != DIRECT_TABLE]
    assert at_bridge == [Route("10.36.0.1/32", dev=BRIDGE, src="10.40.0.0")]
