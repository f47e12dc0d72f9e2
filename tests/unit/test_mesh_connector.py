from __future__ import annotations

import random

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
    assert c.targets[A].state == "ourself" and c.next_deadline() is None


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
