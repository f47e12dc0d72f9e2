"""Gossip-Paxos bootstrap: whatever the delivery order, losses, partitions and retries, at most one value is ever
decided, and with a reachable quorum something is decided."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.ipam.consensus import Consensus, Decision


def _run(n: int, seed: int, steps: int, drop: float) -> tuple[list[Decision], dict[int, Consensus]]:
    rnd = random.Random(seed)
    nodes = {i: Consensus(i, n // 2 + 1) for i in range(1, n + 1)}
    decisions: list[Decision] = []
    for _ in range(steps):
        a, b = rnd.sample(list(nodes), 2)
        action = rnd.random()
        if action < 0.1:
            nodes[a].propose((a, rnd.randrange(1000)))  # anyone may (re)propose, any value, at any time
        elif rnd.random() >= drop:
            nodes[b].merge(dict(nodes[a].claims))  # gossip a's knowledge to b
        nodes[b].think()
        for node in nodes.values():
            d = node.decision()
            if d is not None:
                decisions.append(d)
    return decisions, nodes


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 6), seed=st.integers(0, 100_000), steps=st.integers(1, 150), drop=st.sampled_from([0, 0.3]))
def test_at_most_one_value_is_ever_decided(n: int, seed: int, steps: int, drop: float) -> None:
    decisions, _ = _run(n, seed, steps, drop)
    assert len({d.value for d in decisions}) <= 1


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 6), seed=st.integers(0, 100_000))
def test_a_connected_quorum_decides(n: int, seed: int) -> None:
    nodes = {i: Consensus(i, n // 2 + 1) for i in range(1, n + 1)}
    rnd = random.Random(seed)
    for i in rnd.sample(list(nodes), rnd.randint(1, n)):
        nodes[i].propose()  # duelling proposers converge on the highest ballot
    for _ in range(10):  # rounds of all-to-all gossip
        for a in nodes.values():
            a.think()
            for b in nodes.values():
                b.merge(dict(a.claims))
    decided = {node.decision() for node in nodes.values()}
    assert len(decided) == 1 and None not in decided
    (d,) = decided
    assert d is not None and set(d.value) <= set(nodes)


def test_a_minority_never_decides() -> None:
    nodes = {i: Consensus(i, 3) for i in (1, 2)}  # 2 of 5 initial peers
    nodes[1].propose()
    for _ in range(10):
        for a in nodes.values():
            a.think()
            for b in nodes.values():
                b.merge(dict(a.claims))
    assert all(n.decision() is None for n in nodes.values())
