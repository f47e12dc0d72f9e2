from __future__ import annotations

import copy
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.core.address import PeerAddress
from weave_node.mesh.connector import Connector

A, B, C = PeerAddress("10.0.0.1", 6783), PeerAddress("10.0.0.2", 6783), PeerAddress("node3", 7000)


def make(limit: int = 100, peers: tuple[PeerAddress, ...] = (A, B)) -> Connector:
    return Connector(initial=peers, conn_limit=limit, rng=random.Random(1))


def test_initial_peers_are_due_at_once_and_not_twice() -> None:
    c = make()
    assert set(c.due(0.0, set(), 0)) == {A, B}
    assert c.due(0.0, set(), 0) == []  # in flight


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    c = make(peers=(A,))
    delays = []
    now = 0.0
    for _ in range(12):
        assert c.due(now, set(), 0) == [A]
        delay = c.failed(A, now, "refused")
        delays.append(delay)
        assert c.due(now + delay - 1e-6, set(), 0) == []  # not before its time
        now += delay
    for i, d in enumerate(delays):
        full = min(60.0, 2.0**i)
        assert full / 2 <= d <= full
    assert max(delays) <= 60.0


def test_success_resets_backoff() -> None:
    c = make(peers=(A,))
    c.due(0, set(), 0)
    c.failed(A, 0, "x")
    c.failed(A, 0, "x")
    c.succeeded(A, peer=7)
    assert c.targets[A].attempts == 0 and c.targets[A].state == "connected"
    delay = c.disconnected(A, 100.0, "closed")
    assert 0.5 <= delay <= 1.0


def test_connection_limit_counts_established_and_in_flight() -> None:
    c = make(limit=2, peers=(A, B, C))
    assert len(c.due(0, set(), 1)) == 1
    assert c.due(0, set(), 1) == []


def test_peers_already_connected_are_skipped() -> None:
    c = make(peers=())
    c.add(C, "learned", peer=42)
    assert c.due(0, {42}, 1) == []
    assert c.due(0, set(), 1) == [C]


def test_learned_targets_are_dropped_when_their_peer_is_gone_but_flags_stay() -> None:
    c = make(peers=(A,))
    c.add(C, "learned", peer=42)
    c.forget_learned_except(set())
    assert set(c.targets) == {A}
    assert c.forget(A) and not c.targets


def test_an_address_that_leads_back_to_us_is_never_dialled_again() -> None:
    """A DaemonSet gives every router the whole node list, its own address included."""
    c = make(peers=(A, B))
    assert set(c.due(0.0, set(), 0)) == {A, B}
    assert c.ourself(A) is True and c.ourself(A) is False  # logged once
    c.failed(B, 0.0, "refused")
    assert c.due(1000.0, set(), 0) == [B]
    assert c.targets[A].state == "ourself" and c.next_deadline(set(), 0) is None


def test_an_explicit_connect_gives_an_ourself_address_one_more_try() -> None:
    c = make(peers=(A,))
    c.due(0.0, set(), 0)
    c.ourself(A)
    c.add(A, "learned")
    assert c.due(10.0, set(), 0) == []
    c.add(A, "flag")  # `weave-node connect A`
    assert c.due(10.0, set(), 0) == [A]


def test_a_replaced_peer_list_adds_the_new_and_unpins_the_dropped() -> None:
    c = make()
    c.due(0.0, set(), 0)
    c.succeeded(A, 1)
    added, dropped = c.replace_configured((A, C))
    assert (added, dropped) == ([C], [B])
    assert {a: t.origin for a, t in c.targets.items()} == {A: "flag", B: "learned", C: "flag"}
    assert c.due(0.0, {1}, 1) == [C]  # the new one is dialled at once
    # B, no longer configured nor taught by anyone, goes; A stays configured whatever the topology says
    assert c.forget_learned_except(set()) is False and set(c.targets) == {A, C}
    assert c.replace_configured((A, C)) == ([], [])  # the same list again: nothing to do


def test_a_dropped_peer_that_is_connected_stays_until_it_is_not() -> None:
    c = make()
    c.due(0.0, set(), 0)
    c.succeeded(B, 2)
    assert c.replace_configured((A,)) == ([], [B])
    assert c.forget_learned_except(set()) is True and B in c.targets  # connected: kept, asked again later
    c.disconnected(B, 1.0, "gone")
    assert c.forget_learned_except(set()) is False and B not in c.targets


def test_a_target_whose_peer_is_connected_the_other_way_is_no_deadline() -> None:
    """Regression: a duplicate connection dropped left its target idle with a past `next_try`; counted as a
    deadline, it made the maintenance loop wake every 10 ms for as long as the other connection lived."""
    c = make(peers=(A, B))
    assert set(c.due(0.0, set(), 0)) == {A, B}
    c.superseded(A, 1)  # the peer's own connection to us won
    c.succeeded(B, 2)
    assert c.due(5.0, {1, 2}, 2) == [] and c.next_deadline({1, 2}, 2) is None
    assert c.next_deadline({2}, 1) == 0.0  # the other connection ended: A is due again at once
    assert c.due(5.0, {2}, 1) == [A]


def test_a_waiting_target_taught_for_another_peer_wakes_the_router() -> None:
    """A target skipped because its peer is connected the other way is due again when a record says another peer
    is behind that address now: `add` says so, and the router wakes up for it (it no longer spins to find it)."""
    c = make(peers=(A,))
    c.due(0.0, set(), 0)
    c.superseded(A, 1)
    assert c.next_deadline({1}, 1) is None
    assert c.add(A, "learned", peer=1) is False  # the same peer: nothing new
    assert c.add(A, "learned", peer=2) is True
    assert c.next_deadline({1}, 1) == 0.0 and c.due(1.0, {1}, 1) == [A]


def test_at_the_connection_limit_nothing_is_a_deadline() -> None:
    c = make(limit=1, peers=(A, B))
    assert c.due(0.0, set(), 0) == [A]
    assert c.next_deadline(set(), 0) is None  # (A in flight fills the limit; its outcome wakes the router)
    c.failed(A, 0.0, "refused")
    assert c.next_deadline(set(), 0) == 0.0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("dfsxc"), st.integers(0, 2), st.floats(0, 5)), max_size=30),
       st.integers(1, 3))  # fmt: skip
def test_the_deadline_is_exactly_when_something_is_due(ops: list[tuple[str, int, float]], limit: int) -> None:
    """Whatever happened, `next_deadline` is never in the past while nothing is due (no busy loop) and never
    later than the first moment something is (no dial overslept)."""
    peers = (A, B, C)
    c = make(limit=limit, peers=peers)
    connected: dict[PeerAddress, int] = {}
    now = 0.0
    for op, i, dt in ops:
        now += dt
        addr = peers[i]
        if op == "d":
            c.due(now, set(connected.values()), len(connected))
        elif op == "f" and c.targets[addr].state == "connecting":
            c.failed(addr, now, "refused")
        elif op == "s" and c.targets[addr].state == "connecting":
            c.succeeded(addr, i + 1)
            connected[addr] = i + 1
        elif op == "x" and addr in connected:
            del connected[addr]
            c.disconnected(addr, now, "closed")
        elif op == "c" and c.targets[addr].state in ("idle", "retrying"):
            c.superseded(addr, i + 1)  # the peer's connection is the one kept
            connected[addr] = i + 1
        peers_up, est = set(connected.values()), len(connected)
        deadline = c.next_deadline(peers_up, est)
        probe = copy.deepcopy(c)
        if deadline is None:
            assert probe.due(now + 1000.0, peers_up, est) == []
        else:
            at = max(now, deadline)
            assert copy.deepcopy(c).due(at, peers_up, est) != []
            if deadline > now:
                assert probe.due(now, peers_up, est) == []
