"""IPAM across simulated peers (fake clock, fake network, simulated disks): bootstrap by consensus with late
peers and partitions, donation, reclaim after the grace period, fencing, a reclaimed peer returning, rmpeer;
and a property test over random sequences of operations."""

from __future__ import annotations

import contextlib
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.core.address import parse_range
from weave_node.ipam.errors import Conflict, NotFound
from weave_node.ipam.model import Init, Key
from weave_node.ipam.sim import IpamSim

P1, P2, P3, P4 = 0x0200000000A1, 0x0200000000A2, 0x0200000000A3, 0x0200000000A4


def test_consensus_of_three_with_one_peer_late() -> None:
    sim = IpamSim([P1], init=Init("consensus", peers=3))
    sim.run(10)
    assert sim.peers[P1].ring is None, "one of three is no quorum"
    assert "awaiting consensus: 2 of 3" in sim.peers[P1].waiting_reason(sim.now)
    sim.start(P2)
    took = sim.run_until(lambda: all(p.ring is not None for p in sim.peers.values()), timeout=10)
    assert took <= 1.0
    assert sim.peers[P1].ring is not None and sim.peers[P1].ring.owners() == {P1, P2}
    sim.start(P3)  # the late one adopts the ring and gets space by donation
    ip = sim.allocate_wait(P3, Key("late-pod"), timeout=10)
    sim.check()
    assert sim.peers[P3].ring is not None and P3 in sim.peers[P3].ring.owners()
    assert any("donated" in msg for _, _, msg in sim.logs)
    assert sim.peers[P3].allocations[Key("late-pod")] == ip


def test_partition_two_one_during_bootstrap_then_heal() -> None:
    sim = IpamSim([P1, P2, P3], init=Init("consensus", peers=3))
    sim.partition({P1, P2}, {P3})
    sim.run_until(lambda: sim.peers[P1].ring is not None and sim.peers[P2].ring is not None, timeout=10)
    sim.run(20)
    assert sim.peers[P3].ring is None, "the minority side must not initialise a ring"
    assert sim.allocate(P3, Key("c")) is None
    a = sim.allocate_wait(P1, Key("a"))
    sim.heal()
    sim.run_until(sim.converged, timeout=10)
    assert sim.peers[P3].ring == sim.peers[P1].ring
    b = sim.allocate_wait(P3, Key("c"))
    assert a != b
    sim.check()


def test_all_partitions_of_four_never_initialise_two_rings() -> None:
    for side in ({P1}, {P1, P2}, {P1, P2, P3}):
        sim = IpamSim([P1, P2, P3, P4], init=Init("consensus", peers=4))
        sim.partition(side, {P1, P2, P3, P4} - side)
        sim.run(30)
        ids = {p.ring.ring_id for p in sim.peers.values() if p.ring is not None}
        assert len(ids) <= 1
        assert bool(ids) == (len(side) >= 3 or len(side) <= 1)  # only a side with 3 of 4 decides
        sim.heal()
        sim.run_until(sim.converged, timeout=30)


@pytest.mark.parametrize(("span", "usable"), [("10.32.0.0/27", 15), ("fd32:57::ff00/120", 127)], ids=["ipv4", "ipv6"])
def test_donation_round_trip_in_a_small_range(span: str, usable: int) -> None:
    sim = IpamSim([P1, P2], span=parse_range(span, ipv6=True), init=Init("consensus", peers=2))
    sim.run_until(sim.converged, timeout=5)
    mine = [sim.allocate(P1, Key(f"c{i}")) for i in range(usable)]  # P1 owns the first half, less the first
    assert None not in mine
    start = sim.now
    extra = sim.allocate_wait(P1, Key("extra"))
    assert sim.now - start <= 0.5  # request + grant: two hops of the simulated network
    assert sim.peers[P1].ring is not None and sim.peers[P1].ring.owner_of(extra) == P1
    sim.run(2)
    sim.check()


def test_a_donor_gives_only_free_addresses() -> None:
    sim = IpamSim([P1, P2], span=parse_range("10.32.0.0/27"), init=Init("consensus", peers=2))
    sim.run_until(sim.converged, timeout=5)
    for i in range(15):
        sim.allocate(P2, Key(f"d{i}"))
    for i in (3, 4, 5, 9):
        sim.release(P2, f"d{i}")  # P2's free space: two holes
    for i in range(15):
        sim.allocate(P1, Key(f"c{i}"))
    sim.allocate_wait(P1, Key("extra"))
    sim.check()
    assert sim.peers[P1].allocations[Key("extra")] in {sim.peers[P2].range.start + 16 + i for i in (4, 5)}


@pytest.mark.parametrize("span", ["10.32.0.0/12", "fd32:57::/64"], ids=["ipv4", "ipv6"])
def test_reclaim_after_grace_period_then_the_removed_peer_returns(span: str) -> None:
    sim = IpamSim([P1, P2, P3], span=parse_range(span, ipv6=True), reclaim_after=60)
    sim.run_until(sim.converged, timeout=5)
    held = sim.allocate(P3, Key("on-p3"))
    assert held is not None
    sim.crash(P3)
    sim.run(55)
    assert P3 in sim.peers[P1].ring.owners()  # type: ignore[union-attr]
    sim.run(10)
    assert P3 not in sim.peers[P1].ring.owners()  # type: ignore[union-attr]
    assert sim.peers[P1].ring == sim.peers[P2].ring
    reclaims = [(n, msg) for n, lvl, msg in sim.logs if "reclaimed" in msg and lvl == logging.WARNING]
    assert [n for n, _ in reclaims] == [P1], "exactly one, deterministic survivor reclaims"
    assert "unreachable for 6" in reclaims[0][1]
    # The removed peer comes back with its old disk: it discards the reclaimed space and its allocations in it.
    sim.start(P3)
    sim.run_until(lambda: sim.peers[P3].ring == sim.peers[P1].ring, timeout=10)
    assert sim.peers[P3].allocations == {}
    assert any(n == P3 and "reclaimed by peer" in msg for n, _, msg in sim.logs)
    fresh = sim.allocate_wait(P3, Key("on-p3-again"))
    sim.check()
    assert fresh is not None and any(s <= fresh < e for s, e in sim.peers[P3].owned())


def test_a_minority_fences_itself_before_the_majority_reclaims() -> None:
    sim = IpamSim([P1, P2, P3], reclaim_after=60)
    sim.run_until(sim.converged, timeout=5)
    sim.partition({P1, P2}, {P3})
    sim.run(29)
    assert sim.allocate(P3, Key("early")) is not None  # a short partition: P3 keeps working
    sim.run(2)
    assert sim.allocate(P3, Key("late")) is None
    assert "fenced" in sim.peers[P3].waiting_reason(sim.now)
    assert sim.allocate(P1, Key("majority")) is not None
    sim.run(40)  # the majority reclaims P3's space
    assert P3 not in sim.peers[P1].ring.owners()  # type: ignore[union-attr]
    sim.check()
    sim.heal()
    sim.run_until(lambda: sim.peers[P3].ring == sim.peers[P1].ring, timeout=10)
    assert Key("early") not in sim.peers[P3].allocations  # lost to the reclaim, and logged
    sim.allocate_wait(P3, Key("late"))
    sim.check()


def test_a_peer_back_after_a_long_absence_allocates_only_after_syncing_the_ring() -> None:
    sim = IpamSim([P1, P2, P3], reclaim_after=60)
    sim.run_until(sim.converged, timeout=5)
    sim.crash(P3)
    sim.run(70)  # reclaimed meanwhile
    sim.start(P3, group=1)  # back, but nobody reachable yet: its own old space is not its own any more
    sim.run(5)
    assert sim.allocate(P3, Key("first")) is None
    assert "waiting to sync the ring" in sim.peers[P3].waiting_reason(sim.now)
    sim.heal()
    ip = sim.allocate_wait(P3, Key("first"))
    sim.check()
    assert sim.peers[P1].ring.owner_of(ip) == P3  # type: ignore[union-attr]  # by donation, in everyone's ring


def test_a_quick_restart_allocates_at_once_even_alone() -> None:
    sim = IpamSim([P1, P2, P3], reclaim_after=60)
    sim.run_until(sim.converged, timeout=5)
    sim.crash(P3)
    sim.run(5)
    sim.start(P3, group=1)
    assert sim.allocate(P3, Key("now")) is not None
    sim.run(25)  # 5 s away + 25 s alone = half the grace period: fenced, as if it had never restarted
    assert sim.allocate(P3, Key("later")) is None
    assert "fenced" in sim.peers[P3].waiting_reason(sim.now)


def test_short_partitions_never_cost_anything() -> None:
    sim = IpamSim([P1, P2, P3], reclaim_after=60)
    sim.run_until(sim.converged, timeout=5)
    kept = {k: sim.allocate(P3, Key(k)) for k in ("a", "b")}
    sim.partition({P1, P2}, {P3})
    sim.run(25)
    sim.heal()
    sim.run(60)
    assert {k.container_id: ip for k, ip in sim.peers[P3].allocations.items()} == kept
    assert P3 in sim.peers[P1].ring.owners()  # type: ignore[union-attr]


def test_rmpeer_by_hand() -> None:
    sim = IpamSim([P1, P2, P3], reclaim_after=0)
    sim.run_until(sim.converged, timeout=5)
    with pytest.raises(Conflict, match="reachable"):
        sim.rmpeer(P1, P3)
    sim.crash(P3)
    sim.run(1)
    assert sim.rmpeer(P1, P3) > 0
    sim.run_until(sim.converged, timeout=5)
    assert P3 not in sim.peers[P2].ring.owners()  # type: ignore[union-attr]
    sim.run(3600)  # reclaim_after=0: nothing automatic ever happens
    assert not any("reclaimed" in msg for _, _, msg in sim.logs)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, 3), st.integers(0, 40)),
        st.tuples(st.just("alloc"), st.integers(0, 1), st.integers(0, 40)),
        st.tuples(st.just("release"), st.integers(0, 3), st.integers(0, 40)),
        st.tuples(st.just("split"), st.integers(1, 14), st.integers(0, 0)),
        st.tuples(st.just("heal"), st.integers(0, 0), st.integers(0, 0)),
        st.tuples(st.just("crash"), st.integers(0, 3), st.integers(0, 0)),
        st.tuples(st.just("step"), st.integers(1, 30), st.integers(0, 0)),
    ),
    max_size=80,
)


@pytest.mark.parametrize("span", ["10.32.0.0/27", "fd32:57::ff00/120"], ids=["ipv4", "ipv6"])
@settings(max_examples=60, deadline=None)
@given(ops=OPS, seed=st.integers(0, 1000))
def test_random_operations_never_duplicate_and_released_addresses_return(
    ops: list[tuple[str, int, int]], seed: int, span: str
) -> None:
    names = [P1, P2, P3, P4]
    sim = IpamSim(names, span=parse_range(span, ipv6=True), init=Init("consensus", peers=4), seed=seed)
    released: set[int] = set()
    for op, a, b in ops:
        if op == "alloc" and names[a] in sim.peers:
            with contextlib.suppress(Conflict):
                sim.allocate(names[a], Key(f"c{b}"))
        elif op == "release" and names[a] in sim.peers:
            with contextlib.suppress(NotFound):
                released.update(sim.release(names[a], f"c{b}"))
        elif op == "split":
            side = {n for i, n in enumerate(names) if a >> i & 1}
            sim.partition(side, set(names) - side)
        elif op == "heal":
            sim.heal()
        elif op == "crash" and names[a] in sim.peers:
            sim.crash(names[a])
            sim.start(names[a], group=0)
        elif op == "step":
            sim.run(a / 10)
        sim.check()  # after every step: rings valid, allocations inside own space, nothing allocated twice
    sim.heal()
    sim.run_until(sim.converged, timeout=60)
    sim.check()
    held = {ip for p in sim.peers.values() for ip in p.allocations.values()}
    for ip in sorted(released - held):  # every released address can be handed out again, by its owner
        ring = sim.peers[P1].ring
        assert ring is not None
        owner = ring.owner_of(ip)
        assert sim.peers[owner].claim(Key(f"again-{ip}"), ip, sim.now)


# ---- regressions found in review (each failed before its fix) ------------------------------------------------


def test_two_ballots_deciding_the_same_value_make_one_ring() -> None:
    sim = IpamSim([P1, P2, P3], init=Init("consensus", peers=3))
    sim.step()
    sim.step()
    sim.step()  # everyone promised the highest ballot; its proposer accepted it
    sim.partition({P1, P3}, {P2})
    sim.step()
    sim.partition({P1}, {P2}, {P3})
    sim.run(5)  # the others re-propose: a second ballot, same value
    sim.partition({P1}, {P2, P3})
    sim.run(10)
    sim.heal()
    sim.run_until(sim.converged, timeout=30)
    assert all(p.counters["conflicts"] == 0 for p in sim.peers.values())


def test_donation_from_adjacent_entries_of_one_owner() -> None:
    sim = IpamSim([P1, P2, P3], span=parse_range("10.32.0.0/26"), init=Init("consensus", peers=3), reclaim_after=0)
    sim.run_until(sim.converged, timeout=10)
    sim.crash(P2)
    sim.run(1)
    sim.rmpeer(P1, P2)  # P1 now owns two adjacent entries
    sim.run(2)
    for ip in range(sim.range.start + 32, sim.range.start + 42):
        sim.peers[P1].claim(Key(f"old{ip}"), ip, sim.now)
    for i in range(30):
        sim.allocate(P3, Key(f"c{i}"))  # P3 runs out and asks P1
    sim.run(3)
    sim.check(include_down=False)
    assert any("donated" in msg for _, _, msg in sim.logs)


def test_a_reclaim_is_not_undone_by_the_old_owner_s_later_versions() -> None:
    sim = IpamSim([P1, P2, P3], span=parse_range("10.32.0.0/26"), init=Init("consensus", peers=3), reclaim_after=20)
    sim.run_until(sim.converged, timeout=10)
    for i in range(3):
        sim.allocate(P3, Key(f"c{i}"))
    sim.run(3)
    sim.partition({P1, P2}, {P3})
    sim.run(2)
    for i in range(3):
        sim.release(P3, f"c{i}")  # the old owner keeps changing its entries while cut off
        sim.run(1.5)
    sim.run(25)
    for i in range(60):
        sim.allocate(P1, Key(f"a{i}"))
    held = dict(sim.peers[P1].allocations)
    sim.heal()
    sim.run_until(sim.converged, timeout=30)
    assert sim.peers[P1].allocations == held and sim.peers[P1].counters["lost"] == 0
    sim.check()


def test_a_peer_back_from_being_cut_off_does_not_reclaim_at_once() -> None:
    sim = IpamSim([P1, P2, P3], span=parse_range("10.32.0.0/26"), init=Init("consensus", peers=3), reclaim_after=20)
    sim.run_until(sim.converged, timeout=10)
    sim.run(3)
    sim.partition({P1}, {P2, P3})
    sim.run(25)  # P2 reclaims P1
    sim.partition({P1, P2}, {P3})
    sim.run(1)
    got: dict[int, set[int]] = {}
    for n in (P1, P3):
        for i in range(40):
            ip = sim.allocate(n, Key(f"{n:x}-{i}"))
            if ip is not None:
                got.setdefault(ip, set()).add(n)
    assert not [ip for ip, who in got.items() if len(who) > 1]


def test_only_an_in_sync_peer_s_ring_ends_a_resync() -> None:
    names = [0x0200000000A1 + i for i in range(5)]
    sim = IpamSim(names, span=parse_range("10.32.0.0/26"), init=Init("consensus", peers=5), reclaim_after=20)
    sim.run_until(sim.converged, timeout=10)
    sim.run(3)
    sim.partition(names[:2], names[2:])
    sim.run(25)
    for i in range(40):
        sim.allocate(names[2], Key(f"maj-{i}"))
    p1, p2 = sim.peers[names[0]], sim.peers[names[1]]
    for n in names:
        sim.peers[n].set_reachable(set(names), sim.now)
    p2.receive(names[0], p1.state_message(sim.now), sim.now)  # a fellow minority peer's stale ring first
    assert p2.allocate(Key("minority-pod"), sim.now) is None
    sim.heal()
    sim.run_until(lambda: not p2.resync, timeout=10)
    sim.allocate_wait(names[1], Key("minority-pod"))
    sim.check()


def test_a_restarted_sole_survivor_is_not_stuck_forever() -> None:
    sim = IpamSim([P1, P2], init=Init("consensus", peers=2), reclaim_after=60)
    sim.run_until(sim.converged, timeout=5)
    sim.crash(P1)
    sim.crash(P2)
    sim.run(100)
    sim.start(P1)  # P2 never comes back
    assert sim.allocate(P1, Key("x")) is None
    sim.run(130)
    assert sim.allocate(P1, Key("x")) is not None
