"""IPAM through host churn (issue 18): hosts replaced with and without handing their space over, crashes,
restarts and partitions. Allocation stays available wherever a majority of the space's owners is connected,
dead identities' space comes back, and no address is ever handed out twice."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.core.address import parse_range
from weave_node.ipam.errors import Conflict, Unavailable
from weave_node.ipam.model import Init, Key
from weave_node.ipam.presence import Presence, Sighting, is_quorum
from weave_node.ipam.sim import IpamSim

pytestmark = pytest.mark.sim

G = 60.0  # the grace period (--ipam-reclaim-after) of these simulations
BASE = 0x0200000000A0


def names(n: int, start: int = 1) -> list[int]:
    return [BASE + start + i for i in range(n)]


def three() -> tuple[IpamSim, list[int]]:
    live = names(3)
    sim = IpamSim(live, span=parse_range("10.32.0.0/24"), init=Init("consensus", peers=3), reclaim_after=G)
    sim.run_until(sim.converged, timeout=10)
    return sim, live


def owners(sim: IpamSim, at: int) -> set[int]:
    ring = sim.peers[at].ring
    assert ring is not None
    return ring.owners()


def all_ready(sim: IpamSim) -> bool:
    return all(p.ready(sim.now) for p in sim.peers.values())


# ---- replacing hosts -----------------------------------------------------------------------------------------


def test_replacing_a_host_four_times_in_a_minute_with_hand_over_never_stops_allocation() -> None:
    sim, live = three()
    fresh = iter(names(10, start=10))
    pods = itertools.count()
    for _ in range(4):
        old = live.pop()
        assert sim.leave(old), "a connected host hands its space over"
        new = next(fresh)
        sim.start(new)
        live.append(new)
        sim.run_until(lambda n=new: sim.peers[n].ring is not None, timeout=2)  # type: ignore[misc]  # it syncs
        for _ in range(15):  # 15 s until the next replacement; every host allocates throughout
            sim.step(1.0)
            assert all_ready(sim), {hex(n): p.waiting_reason(sim.now) for n, p in sim.peers.items()}
            for n in live[:2]:
                assert sim.allocate(n, Key(f"pod-{next(pods)}")) is not None
        sim.allocate_wait(live[-1], Key(f"pod-{next(pods)}"), timeout=5)
        sim.check()
    assert owners(sim, live[0]) <= set(live), "departed identities own nothing"
    sim.run(10 * G)
    assert all_ready(sim)
    assert not any("fenced" in msg for _, _, msg in sim.logs)


def test_replacing_every_host_once_with_hand_over() -> None:
    sim, live = three()
    for i, old in enumerate(list(live)):
        assert sim.leave(old)
        live.remove(old)
        new = names(1, start=20 + i)[0]
        sim.start(new)
        live.append(new)
        sim.allocate_wait(new, Key(f"on-{new:x}"), timeout=5)
        assert all_ready(sim)
        sim.check()
    assert owners(sim, live[0]) == set(live)
    assert sim.peers[live[0]].ring == sim.peers[live[2]].ring


def test_re_imaged_hosts_old_identities_are_reclaimed_at_once() -> None:
    """A host re-installed without the removal (a new identity, the same host name), four times in a minute:
    the old identity is taken over seconds after the new one shows up, so allocation never stops."""
    sim, live = three()
    fresh = iter(names(10, start=10))
    for i in range(4):
        old = live.pop(i % 2)  # node1 and node2 in turn, silently
        host = sim.nickname[old]
        sim.remove(old)
        new = next(fresh)
        sim.start(new, nickname=host)
        live.append(new)
        sim.run_until(lambda o=old: o not in owners(sim, live[0]), timeout=10)  # type: ignore[misc]
        sim.allocate_wait(new, Key(f"on-{new:x}"), timeout=5)
        sim.run(8)
        assert all_ready(sim)
        sim.check()
    assert any("replaced by peer" in msg for _, _, msg in sim.logs)
    assert not any("fenced" in msg for _, _, msg in sim.logs)


def test_silent_deaths_with_new_host_names_are_reclaimed_after_the_grace_period() -> None:
    """Hosts terminated and replaced by new ones with new names (an autoscaling group) and nobody ran the
    removal: while the live owners stay a majority, the dead ones' space comes back one grace period later."""
    five = names(5)
    sim = IpamSim(five, span=parse_range("10.32.0.0/24"), init=Init("consensus", peers=5), reclaim_after=G)
    sim.run_until(sim.converged, timeout=10)
    dead = five[:2]
    for i, old in enumerate(dead):
        sim.remove(old)
        new = names(1, start=30 + i)[0]
        sim.start(new)
        sim.allocate_wait(new, Key(f"on-{new:x}"), timeout=5)
    died = sim.now
    took = sim.run_until(lambda: not owners(sim, five[2]) & set(dead), timeout=2 * G)
    assert G - 2 <= sim.now - died <= G + 5, took
    assert all_ready(sim) and not any("fenced" in msg for _, _, msg in sim.logs)
    sim.check()


def test_when_most_owners_die_silently_the_rest_fence_and_rmpeer_brings_them_back() -> None:
    """The limit of any safe design: two of three owners gone at once without a word look exactly like a
    partition in which those two are alive and allocating. The survivor must stop; the operator, who knows the
    hosts are gone, runs rmpeer."""
    sim, live = three()
    sim.remove(live[1])
    sim.remove(live[2])
    for i in range(2):
        sim.start(names(1, start=50 + i)[0])
    sim.run(G)
    assert not sim.peers[live[0]].ready(sim.now)
    assert sim.allocate(live[0], Key("x")) is None
    sim.rmpeer(live[0], live[1])
    sim.rmpeer(live[0], live[2])
    for n in sorted(sim.peers):
        sim.allocate_wait(n, Key(f"after-{n:x}"), timeout=G)
    sim.check()


def test_same_host_name_reclaim_can_be_turned_off() -> None:
    live = names(3)
    sim = IpamSim(live, init=Init("consensus", peers=3), reclaim_after=G, reclaim_replaced=False)
    sim.run_until(sim.converged, timeout=10)
    host = sim.nickname[live[0]]
    sim.remove(live[0])
    sim.start(names(1, start=60)[0], nickname=host)
    sim.run(G / 2)
    assert live[0] in owners(sim, live[1])


def test_two_reachable_peers_with_one_host_name_reclaim_nothing_early() -> None:
    live = names(3)
    sim = IpamSim(live, init=Init("consensus", peers=3), reclaim_after=G)
    sim.run_until(sim.converged, timeout=10)
    host = sim.nickname[live[0]]
    sim.remove(live[0])
    sim.start(names(1, start=61)[0], nickname=host)
    sim.start(names(1, start=62)[0], nickname=host)  # a clone: which one is the successor? neither
    sim.run(G / 2)
    assert live[0] in owners(sim, live[1])


def test_leave_refuses_while_pods_hold_addresses_unless_forced() -> None:
    sim, live = three()
    assert sim.allocate(live[0], Key("pod")) is not None
    with pytest.raises(Conflict, match="still in use by pods"):
        sim.peers[live[0]].leave(sim.now)
    assert sim.peers[live[0]].leaving is None and sim.peers[live[0]].allocations
    assert sim.leave(live[0], force=True)


def test_leave_with_nobody_reachable_says_what_to_do_and_changes_nothing() -> None:
    sim, live = three()
    sim.partition({live[0]}, live[1:])
    sim.run(1)
    before = sim.peers[live[0]].ring.copy()  # type: ignore[union-attr]
    with pytest.raises(Conflict, match="rmpeer"):
        sim.peers[live[0]].leave(sim.now)
    assert sim.peers[live[0]].ring == before


def test_a_peer_that_left_refuses_to_allocate() -> None:
    sim, live = three()
    leaving = sim.peers[live[0]].leave(sim.now)
    assert leaving is not None
    with pytest.raises(Unavailable, match="left the ring"):
        sim.peers[live[0]].allocate(Key("late"), sim.now)
    assert "left the ring" in sim.peers[live[0]].waiting_reason(sim.now)


# ---- the grace clock ------------------------------------------------------------------------------------------


def test_an_unrelated_restart_does_not_postpone_reclaim() -> None:
    """Issue 18 item 2: a survivor that briefly lost quorum (another host's 3 s restart) used to start every
    absent owner's clock again (a 600 s reclaim took 787 s)."""
    five = names(5)
    sim = IpamSim(five, span=parse_range("10.32.0.0/24"), init=Init("consensus", peers=5), reclaim_after=G)
    sim.run_until(sim.converged, timeout=10)
    a, _b, c, d, e = five
    sim.remove(d)
    sim.remove(e)  # 3 of 5 owners left: any restart costs the others their quorum
    sim.run(G / 2)
    sim.crash(c)
    sim.run(3)
    sim.start(c)
    took = sim.run_until(lambda: not owners(sim, a) & {d, e}, timeout=2 * G)
    assert took <= G / 2 + 5, f"reclaim postponed to {G / 2 + 3 + took:.0f} s after the deaths"
    sim.check()


def test_fencing_and_unfencing_are_logged_with_what_to_do() -> None:
    sim, live = three()
    sim.partition({live[0]}, live[1:])
    sim.run(G / 2 + 1)
    fenced = [msg for n, lvl, msg in sim.logs if n == live[0] and lvl == logging.ERROR and "IPAM fenced" in msg]
    assert len(fenced) == 1 and "rmpeer" in fenced[0] and "1 of the 3 owners" in fenced[0]
    sim.heal()
    sim.run_until(lambda: sim.peers[live[0]].ready(sim.now), timeout=10)
    sim.step()
    assert any(n == live[0] and "unfenced" in msg for n, _, msg in sim.logs)


def test_a_cut_off_minority_cannot_grow_into_a_second_majority() -> None:
    """New hosts joining the minority side of a partition get no space there: otherwise {2 old + 2 new} would be
    4 of 7 owners while the 3 on the other side are 3 of 5, and each side would reclaim the other."""
    five = names(5)
    sim = IpamSim(five, span=parse_range("10.32.0.0/24"), init=Init("consensus", peers=5), reclaim_after=G)
    sim.run_until(sim.converged, timeout=10)
    newcomers = names(3, start=40)
    for n in newcomers:
        sim.start(n, group=1)
    sim.partition(five[:3], [*five[3:], *newcomers])
    for n in newcomers:
        sim.allocate(n, Key(f"new-{n:x}"))
    sim.run(3 * G)
    for n in newcomers:
        assert n not in owners(sim, five[3]), "no donation to a new owner without a quorum"
    sim.check()
    sim.heal()
    for n in newcomers:
        sim.allocate_wait(n, Key(f"new-{n:x}"), timeout=20)
    sim.check()


# ---- the vouching rule (pure) -----------------------------------------------------------------------------------


def test_certified_absence_needs_a_quorum_of_vouchers() -> None:
    a, b, c, x = names(4)
    quad = {a, b, c, x}
    p = Presence(a, 0.0)  # a fresh identity: it never saw x
    p.set_reachable({a, b, c}, quad, 0.0)
    assert p.certified(x, quad, 100.0) == 0.0, "a alone is 1 of 4 owners"
    p.merge(b, {x: Sighting(50.0, "node4")}, 0.0)
    assert p.certified(x, quad, 100.0) == 150.0, "a and b: half, with the lowest name; b's vouch grew with time"
    assert p.nicknames[x] == "node4"
    p.set_reachable({a, c}, quad, 120.0)  # b went away: its vouch goes with it
    assert p.certified(x, quad, 120.0) == 0.0
    p.set_reachable({a, b, c}, quad, 121.0)
    p.merge(b, {x: Sighting(10.0)}, 121.0)
    p.merge(c, {x: Sighting(30.0)}, 121.0)
    assert p.certified(x, quad, 121.0) == 30.0, "the quorum's weakest vouch: c's"
    p.set_reachable({a, b, c, x}, quad, 122.0)  # x is back: every vouch about it is stale
    p.set_reachable({a, b, c}, quad, 123.0)
    assert p.certified(x, quad, 123.0) == 0.0


def test_a_restarted_peer_vouches_for_the_time_before_its_restart() -> None:
    a, x = names(2)
    p = Presence(a, 1000.0, seen_ago={x: 40.0})
    p.set_reachable({a}, {a, x}, 1000.0)
    assert p.absent_for(x, 1000.0) == 40.0
    old_store = Presence(a, 1000.0, floor=1000.0)  # a store from before sightings were kept: from now only
    old_store.set_reachable({a}, {a, x}, 1000.0)
    assert old_store.absent_for(x, 1010.0) == 10.0


def test_is_quorum_never_holds_for_two_disjoint_sets() -> None:
    for n in range(1, 8):
        group = set(names(n))
        for k in range(n + 1):
            for side in itertools.combinations(sorted(group), k):
                assert not (is_quorum(side, group) and is_quorum(group - set(side), group))


# ---- random churn with partitions -------------------------------------------------------------------------------

CHURN = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["alloc", "release", "crash", "replace", "reimage", "leave", "join", "step"]),
            st.integers(0, 9),
        ),
        st.tuples(st.just("split"), st.integers(0, 1023)),
        st.tuples(st.just("heal"), st.just(0)),
    ),
    max_size=60,
)


class Churn:
    """The random test's operations on a simulation (one method per operation)."""

    def __init__(self, seed: int) -> None:
        self.sim = IpamSim(
            names(3), span=parse_range("10.32.0.0/26"), init=Init("consensus", peers=3), reclaim_after=G, seed=seed
        )
        self.sim.run_until(self.sim.converged, timeout=10)
        self.fresh = iter(names(200, start=100))
        self.dead: set[int] = set()
        self.pods = itertools.count()

    def live(self) -> list[int]:
        return sorted(self.sim.peers)

    def beside(self, peer: int) -> int | None:
        """The group of `peer` if a peer with the ring is there, else any such group (None: no other peer has
        the ring). A newcomer that reaches only other newcomers would bootstrap a second ring (that is what
        IPALLOC_INIT consensus=N means), not join this one: new hosts join where the ring is."""
        sim = self.sim
        holders = sorted(n for n in sim.peers if n != peer and sim.peers[n].ring is not None)
        here = [n for n in holders if sim.group[n] == sim.group.get(peer)]
        return sim.group[(here or holders)[0]] if holders else None

    def newcomer(self, group: int, nickname: str | None = None) -> None:
        new = next(self.fresh)
        self.sim.start(new, group=group, nickname=nickname)
        self.sim.run_until(lambda: self.sim.peers[new].ring is not None, timeout=5)

    def do(self, op: str, arg: int) -> None:
        peers = self.live()
        who = peers[arg % len(peers)]
        if op in ("replace", "reimage", "leave"):
            self.replace(op, who)
        elif op == "split":
            side = {n for i, n in enumerate(peers) if arg >> i & 1}
            self.sim.partition(side, set(peers) - side)
        else:
            getattr(self, op)(who, arg)

    def alloc(self, who: int, _arg: int) -> None:
        with contextlib.suppress(Unavailable):
            self.sim.allocate(who, Key(f"p{next(self.pods)}"))

    def release(self, who: int, arg: int) -> None:
        held = sorted(self.sim.peers[who].allocations)
        if held:
            self.sim.release(who, held[arg % len(held)].container_id)

    def crash(self, who: int, arg: int) -> None:
        self.sim.crash(who)
        self.sim.run(arg)
        self.sim.start(who, group=0)

    def replace(self, op: str, who: int) -> None:
        group = self.beside(who)
        if group is None:
            return  # the last peer with the ring stays: newcomers alone would start a new network
        host = self.sim.nickname[who]
        if not (op == "leave" and self.sim.leave(who, timeout=5)):
            self.sim.remove(who)  # silently (or the hand-over could not complete)
        self.dead.add(who)
        self.newcomer(group, host if op == "reimage" else None)

    def join(self, _who: int, _arg: int) -> None:
        group = self.beside(-1)
        if group is not None:
            self.newcomer(group)

    def heal(self, _who: int, _arg: int) -> None:
        self.sim.heal()

    def step(self, _who: int, arg: int) -> None:
        self.sim.run(arg * 7, dt=0.5)


@settings(max_examples=int(os.environ.get("WEAVE_SIM_EXAMPLES", "40")), deadline=None)
@given(ops=CHURN, seed=st.integers(0, 1000))
def test_random_churn_and_partitions_never_duplicate_and_recover(ops: list[tuple[str, int]], seed: int) -> None:
    """Random host replacement (new identities; removal with hand-over, silently, or re-imaged with the same host
    name), crashes with restarts, joins and partitions. After every step: rings valid, allocations inside their
    peer's own space, no address held twice by peers that may hand out addresses (see IpamSim.check). At the
    end, healed: wherever the live peers are a majority of the owners, every dead identity's space is reclaimed
    and every peer allocates; where they are not (more owners died silently than live), rmpeer on one peer
    brings it back, and nothing is held twice."""
    churn = Churn(seed)
    sim = churn.sim
    for op, arg in ops:
        churn.do(op, arg)
        sim.check(stale_ok=True)

    sim.heal()
    sim.run(3 * G, dt=0.5)
    anyone = churn.live()[0]
    ring = sim.peers[anyone].ring
    assert ring is not None
    if not is_quorum(set(churn.live()), ring.owners()):
        for gone in sorted(ring.owners() & churn.dead):  # the operator's way out, once hosts are known to be gone
            sim.rmpeer(anyone, gone)
        sim.run(2 * G, dt=0.5)
    sim.run_until(sim.converged, timeout=G)
    ring = sim.peers[anyone].ring
    assert ring is not None
    assert not ring.owners() & churn.dead, "every dead identity's space is reclaimed"
    for n in churn.live():
        sim.allocate_wait(n, Key(f"end-{n:x}"), timeout=G)
    sim.check()


# ---- the rules, each by the duplicate it prevents ----------------------------------------------------------------


def fill(sim: IpamSim, peer: int, tag: str, n: int = 40) -> None:
    for i in range(n):
        with contextlib.suppress(Unavailable):
            sim.allocate(peer, Key(f"{tag}-{i}"))


def allocate_everywhere(sim: IpamSim, peers: Iterable[int], seconds: float) -> None:
    """Every simulated second for `seconds`: three allocations on each of `peers`, then the invariant."""
    for _ in range(int(seconds)):
        sim.step(1.0)
        for n in peers:
            fill(sim, n, f"{n:x}-{sim.now:.0f}", 3)
        sim.check(stale_ok=True)


def test_reclaim_waits_for_the_vouches_of_peers_that_saw_the_owner_last() -> None:
    """a is cut off for a while; then b and c join a, while d and e (with b and c until now) are cut off. a's own
    clock says d and e have been gone long, but b and c saw them a moment ago and d and e have not fenced yet:
    reclaiming on a's clock would hand out addresses d and e still hand out."""
    five = names(5)
    a, b, c, d, e = five
    sim = IpamSim(five, span=parse_range("10.32.0.0/26"), init=Init("consensus", peers=5), reclaim_after=G)
    sim.run_until(sim.converged, timeout=10)
    sim.partition({a}, {b, c, d, e})
    sim.run(0.8 * G)
    sim.partition({a, b, c}, {d, e})
    for _ in range(int(0.45 * G)):  # until just before d and e fence: they allocate, a must not reclaim them
        sim.step(1.0)
        fill(sim, d, "d")
        fill(sim, e, "e")
        fill(sim, a, f"a{sim.now:.0f}")
        sim.check(stale_ok=True)
    assert {d, e} <= owners(sim, a)
    sim.run(G)
    assert not {d, e} & owners(sim, a), "reclaimed one grace period after b and c last saw them"
    sim.check(stale_ok=True)


def test_a_cut_off_minority_growing_would_reclaim_the_majority() -> None:
    """The consequence the growth rule prevents: with newcomers as owners on the minority side, both sides
    would reclaim each other and hand out the same addresses. Here the minority stays fenced, so nothing is
    ever handed out twice."""
    five = names(5)
    sim = IpamSim(five, span=parse_range("10.32.0.0/26"), init=Init("consensus", peers=5), reclaim_after=G)
    sim.run_until(sim.converged, timeout=10)
    newcomers = names(3, start=70)
    sim.partition(five[:3], five[3:])
    for n in newcomers:
        sim.start(n, group=1)
    allocate_everywhere(sim, [*five, *newcomers], 3 * G)


def test_a_peer_that_lost_its_memory_vouches_only_from_when_it_knew() -> None:
    """c's state is wiped (its name is fixed, e.g. by --name) while c, d, e hold the majority; then c joins a
    and b. Had c vouched "never saw d or e" (a fresh identity's right), a would reclaim d and e at once, before
    they fence, and hand out addresses they still hand out."""
    five = names(5)
    a, b, c, d, e = five
    sim = IpamSim(five, span=parse_range("10.32.0.0/26"), init=Init("consensus", peers=5), reclaim_after=G)
    sim.run_until(sim.converged, timeout=10)
    sim.partition({a, b}, {c, d, e})
    sim.run(2 * G)  # c, d, e reclaim a and b; a and b fence
    sim.remove(c)
    sim.start(c, group=0)  # a fresh store, the same name
    sim.run_until(lambda: sim.peers[c].ring is not None, timeout=10)
    allocate_everywhere(sim, five, 0.45 * G)


def test_handing_over_to_a_non_owner_needs_a_quorum() -> None:
    """Owners a and x, y a peer without space, y < a < x. Cut off with y, x hands its space to y: now a and y own
    it and y, the lowest name, breaks the tie for its side while a breaks it for the old owner set. Both sides
    would have a quorum and reclaim each other. So x may only hand over to an owner, or with a quorum."""
    y, a, x = names(3)
    sim = IpamSim([a, x], span=parse_range("10.32.0.0/26"), init=Init("consensus", peers=2), reclaim_after=G)
    sim.run_until(sim.converged, timeout=10)
    sim.start(y)
    sim.run_until(lambda: sim.peers[y].ring is not None, timeout=5)
    sim.partition({a}, {x, y})
    sim.run(1)
    sim.leave(x)  # refused (nobody to take it), so x goes silently
    sim.remove(x)
    allocate_everywhere(sim, (a, y), 2 * G)


# ---- a host back after its space was reclaimed (issue 18 item 3) --------------------------------------------------


def test_a_returning_host_takes_back_its_pods_free_addresses_and_flags_the_ones_in_use() -> None:
    sim, (p1, p2, p3) = three()
    pods = {f"x{i}": sim.allocate(p3, Key(f"x{i}")) for i in range(4)}
    assert None not in pods.values()
    sim.partition({p1, p2}, {p3})
    sim.run(1.5 * G)  # p1 reclaims p3's space; p3's pods keep running with their addresses
    assert p3 not in owners(sim, p1)
    taken = pods["x0"]
    assert taken is not None
    assert sim.peers[p1].claim(Key("newcomer"), taken, sim.now)  # one of them is handed out again meanwhile
    sim.heal()
    sim.run_until(
        lambda: len(sim.peers[p3].orphans) == 1 and not sim.peers[p3].orphans.keys() - sim.peers[p3].conflicts, 10
    )
    held = {k.container_id: ip for k, ip in sim.peers[p3].allocations.items()}
    assert held == {c: ip for c, ip in pods.items() if c != "x0"}, "the free ones are the pods' again"
    assert sim.peers[p3].orphans == {Key("x0"): taken}
    logs = [msg for _, lvl, msg in sim.logs if lvl == logging.ERROR and "address conflict" in msg]
    assert len(logs) == 2 and all("10.32.0." in m for m in logs), logs  # both ends say so, once
    status = sim.peers[p3].status(sim.now)
    assert [(o["container_id"], o["state"]) for o in status["orphans"]] == [("x0", "conflict")]
    sim.check()
    assert sim.release(p3, "x0") == [taken]  # DEL of the conflicting pod ends it; the address stays p1's
    assert not sim.peers[p3].orphans and sim.peers[p1].allocations[Key("newcomer")] == taken
    sim.crash(p3)  # what is left persists: a restart neither forgets the taken-back ones nor the orphans
    sim.start(p3)
    assert {k.container_id for k in sim.peers[p3].allocations} == {"x1", "x2", "x3"}
    sim.check()


# ---- found in review (each failed before its fix) ------------------------------------------------------------------


def test_a_seed_whose_state_was_lost_waits_for_the_ring_and_vouches_only_from_then() -> None:
    """Seed mode builds its ring locally, so a wiped seed never merges one: it vouched "never seen" for everyone
    and allocated from a stale initial split at once."""
    five = names(5)
    a, b, c, d, e = five
    sim = IpamSim(five, span=parse_range("10.32.0.0/26"), init=Init("seed", seeds=tuple(five)), reclaim_after=G)
    sim.run(2)
    sim.partition({a, b}, {c, d, e})
    sim.run(2 * G)  # c, d, e reclaim a and b
    sim.remove(c)
    sim.start(c, group=0)  # wiped; joins a and b
    assert sim.allocate(c, Key("at-once")) is None, "nothing from a stale initial split before a sync"
    allocate_everywhere(sim, five, 0.45 * G)


def test_two_hosts_with_one_host_name_are_never_each_others_successor() -> None:
    five = names(5)
    sim = IpamSim(five, span=parse_range("10.32.0.0/26"), init=Init("consensus", peers=5), reclaim_after=G)
    sim.nickname[five[3]] = sim.nickname[five[4]] = "localhost"  # two hosts from one image, both alive
    sim.run_until(sim.converged, timeout=10)
    sim.partition(five[:4], [five[4]])
    allocate_everywhere(sim, five, 0.45 * G)
    assert five[4] in owners(sim, five[0])
    assert "localhost" in sim.peers[five[0]].presence.shared
    sim.crash(five[0])  # remembered across a restart
    sim.start(five[0])
    assert "localhost" in sim.peers[five[0]].presence.shared


def test_a_host_name_that_cannot_be_shown_does_not_stop_ipam_gossip() -> None:
    three_ = names(3)
    sim = IpamSim(three_, span=parse_range("10.32.0.0/24"), init=Init("consensus", peers=3), reclaim_after=G)
    sim.nickname[three_[2]] = "node\u00a03\x07"  # WEAVE_NICKNAME with a no-break space and a bell
    sim.run_until(sim.converged, timeout=10)
    sim.start(names(1, start=80)[0])
    sim.allocate_wait(names(1, start=80)[0], Key("pod"), timeout=20)
    assert all(p.counters["bad_messages"] == 0 for p in sim.peers.values())


def test_in_a_partial_mesh_the_reclaimer_hears_vouches_from_peers_it_is_not_connected_to() -> None:
    """Gossip reaches neighbours only: a's one link is to b, so a (the lowest name, the reclaimer) heard no
    vouches from c and d and never reclaimed e."""
    five = names(5)
    a, b, c, d, e = five
    links = [(a, b), (b, c), (b, d), (b, e), (c, d), (c, e), (d, e)]
    sim = IpamSim(five, span=parse_range("10.32.0.0/24"), init=Init("consensus", peers=5), reclaim_after=G, links=links)
    sim.run_until(sim.converged, timeout=10)
    sim.remove(e)
    took = sim.run_until(lambda: e not in owners(sim, a), timeout=2 * G)
    assert took <= G + 15
    sim.check()


def test_a_donation_on_its_way_when_a_peer_leaves_follows_the_rest() -> None:
    sim, (p1, _p2, _p3) = three()
    newcomer = names(1, start=90)[0]
    sim.start(newcomer)
    sim.run_until(lambda: sim.peers[newcomer].ring is not None, timeout=5)
    assert sim.allocate(newcomer, Key("pod")) is None  # asks a donor
    leaving = sim.peers[newcomer].leave(sim.now, force=True)  # before the donation arrives: it owns nothing yet
    sim.run(5)
    assert not sim.peers[newcomer].owned(), "what arrived was handed on"
    assert newcomer not in owners(sim, p1)
    assert leaving.acknowledged
    with pytest.raises(Unavailable, match="left the ring"):
        sim.peers[newcomer].allocate(Key("again"), sim.now)


def test_a_router_restarted_before_its_hand_over_was_confirmed_finishes_it() -> None:
    sim, (p1, _p2, p3) = three()
    sim.peers[p3].leave(sim.now)
    sim._flush(p3)
    sim.queue.clear()  # the hand-over never got out
    sim.crash(p3)
    sim.start(p3)
    leaving = sim.peers[p3].leaving
    assert leaving is not None and not leaving.acknowledged, "the store kept it"
    with pytest.raises(Unavailable, match="left the ring"):
        sim.peers[p3].allocate(Key("p"), sim.now)
    sim.run_until(lambda: leaving.acknowledged and p3 not in owners(sim, p1), timeout=10)


def test_the_timer_never_spins_on_work_it_cannot_do() -> None:
    sim, (p1, p2, p3) = three()
    a = sim.peers[p3]
    sim.partition([p1], [p2, p3])
    sim.run(1)
    leaving = a.leave(sim.now)
    sim.crash(leaving.receiver)  # the receiver is gone before it confirms
    for _ in range(300):
        sim.step(0.1)
        deadline = a.next_deadline(sim.now)
        assert deadline is None or deadline > sim.now


# ---- found in the second review (each failed before its fix) -------------------------------------------------------


@pytest.mark.parametrize("how", ["rmpeer", "reclaim"])
def test_an_orphan_s_address_back_in_our_space_is_the_pod_s_not_a_new_one_s(how: str) -> None:
    """a's pod keeps its address while a is cut off and its space reclaimed by b, which then goes before a is back
    (a cannot ask it). When a takes b's space over (rmpeer, or reclaim as the lowest owner), the pod's address is
    a's again and must stay the pod's, not go to the next new pod."""
    five = names(5)
    a, b, c, d, e = five
    sim = IpamSim(five, span=parse_range("10.32.0.0/26"), init=Init("consensus", peers=5), reclaim_after=G)
    sim.run_until(sim.converged, timeout=10)
    held = sim.allocate(a, Key("pod"))
    sim.partition({a}, {b, c, d, e})
    sim.run(2 * G)  # b (the lowest reachable) reclaims a's space
    sim.crash(b)
    sim.heal()
    sim.run_until(lambda: Key("pod") in sim.peers[a].orphans, timeout=10)
    sim.allocate_wait(a, Key("first-new"), timeout=10)  # a owns space again (a donation): the lowest owner
    if how == "rmpeer":
        sim.rmpeer(a, b)
    else:
        sim.run_until(lambda: b not in owners(sim, a), timeout=2 * G)
    for i in range(80):
        fill(sim, a, f"new-{i}", 1)
        sim.check(stale_ok=True)
    assert sim.peers[a].allocations.get(Key("pod")) == held


def test_adding_a_pod_whose_address_is_being_asked_back_is_refused_not_doubled() -> None:
    sim, (p1, _p2, p3) = three()
    held = sim.allocate(p3, Key("pod"))
    sim.partition({p1, _p2}, {p3})
    sim.run(1.5 * G)
    sim.heal()
    sim.run_until(lambda: Key("pod") in sim.peers[p3].orphans, timeout=10)
    with pytest.raises(Unavailable, match="being asked back"):
        sim.peers[p3].allocate(Key("pod"), sim.now)
    sim.run_until(lambda: sim.peers[p3].allocations.get(Key("pod")) == held, timeout=10)
    sim.check()


def test_a_peer_that_leaves_while_addresses_are_asked_back_hands_them_on() -> None:
    sim, (p1, p2, p3) = three()
    sim.allocate(p3, Key("pod"))
    sim.partition({p1, p2}, {p3})
    sim.run(1.5 * G)
    sim.heal()
    sim.run_until(lambda: bool(sim.peers[p3].orphans), timeout=10)
    leaving = sim.peers[p3].leave(sim.now, force=True)  # owns nothing now, but a give-back is on its way
    assert not leaving.acknowledged, "done only once what was on its way is handed on"
    sim.run_until(lambda: leaving.acknowledged, timeout=10)
    sim.remove(p3)
    sim.run(2)
    assert p3 not in owners(sim, p1), "the host removed after its leave owns nothing"


def test_an_address_listed_twice_is_a_bad_message_and_changes_nothing() -> None:
    from weave_node.ipam import messages

    sim, (p1, p2, _p3) = three()
    ip = sim.peers[p1].owned()[0][0] + 5
    raw = messages.encode_addresses(sim.range, messages.KIND_RECLAIMED, [ip])
    twice = raw[:-6] + b"\x00\x02" + raw[-4:] * 2
    before = sim.peers[p1].ring.copy()  # type: ignore[union-attr]
    sim.peers[p1].receive(p2, twice, sim.now)
    assert sim.peers[p1].ring == before and sim.peers[p1].counters["bad_messages"] == 1
