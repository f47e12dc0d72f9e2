"""Routes: unicast next hops and broadcast trees over symmetric established edges."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.mesh.routes import broadcast_next_hops, neighbours, unicast_routes
from weave_node.mesh.topology import ConnectionInfo, PeerRecord


def graph(
    edges: Iterable[tuple[int, int]], one_sided: Iterable[tuple[int, int]] = (), peers: Iterable[int] = ()
) -> dict[int, PeerRecord]:
    """Records for undirected `edges`, plus `one_sided` claims (a lists b, b does not list a)."""
    adj: dict[int, set[int]] = {p: set() for p in peers}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    for a, b in one_sided:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set())
    return {
        n: PeerRecord(n, f"p{n}", 1, 1, tuple(ConnectionInfo(m, "", n < m, True) for m in sorted(ms)))
        for n, ms in adj.items()
    }


def line(n: int) -> dict[int, PeerRecord]:
    return graph((i, i + 1) for i in range(1, n))


def ring(n: int) -> dict[int, PeerRecord]:
    return graph((i, i % n + 1) for i in range(1, n + 1))


def deliveries(records: dict[int, PeerRecord], source: int) -> Counter[int]:
    """Simulate forwarding a broadcast from `source`: how many times each peer receives it."""
    received: Counter[int] = Counter()
    queue = [source]
    while queue:
        x = queue.pop()
        for y in broadcast_next_hops(records, source, x):
            received[y] += 1
            if received[y] == 1:
                queue.append(y)
    return received


def test_line() -> None:
    rs = line(5)
    assert unicast_routes(rs, 1) == {2: 2, 3: 2, 4: 2, 5: 2}
    assert unicast_routes(rs, 3) == {1: 2, 2: 2, 4: 4, 5: 4}
    assert broadcast_next_hops(rs, 1, 1) == [2]
    assert broadcast_next_hops(rs, 1, 3) == [4]
    assert broadcast_next_hops(rs, 1, 5) == []
    assert broadcast_next_hops(rs, 3, 3) == [2, 4]


def test_ring_ties_go_to_the_lowest_name() -> None:
    rs = ring(6)  # 1-2-3-4-5-6-1: 4 is three hops from 1 both ways
    routes = unicast_routes(rs, 1)
    assert routes == {2: 2, 3: 2, 4: 2, 5: 6, 6: 6}
    assert broadcast_next_hops(rs, 1, 1) == [2, 6]
    assert broadcast_next_hops(rs, 1, 3) == [4]  # 4's parents at distance 2 are 3 and 5: lowest is 3
    assert broadcast_next_hops(rs, 1, 5) == []
    assert deliveries(rs, 1) == Counter({2: 1, 3: 1, 4: 1, 5: 1, 6: 1})


def test_tie_break_is_on_the_first_hop_not_discovery_order() -> None:
    # 1 has neighbours 2 and 3; 9 is reachable in two hops through either: the lowest first hop wins.
    rs = graph([(1, 3), (1, 2), (3, 9), (2, 9)])
    assert unicast_routes(rs, 1)[9] == 2


def test_star() -> None:
    rs = graph((0, i) for i in range(1, 6))
    assert unicast_routes(rs, 0) == {i: i for i in range(1, 6)}
    assert unicast_routes(rs, 3) == {0: 0, 1: 0, 2: 0, 4: 0, 5: 0}
    assert broadcast_next_hops(rs, 0, 0) == [1, 2, 3, 4, 5]
    assert broadcast_next_hops(rs, 3, 3) == [0]
    assert broadcast_next_hops(rs, 3, 0) == [1, 2, 4, 5]
    assert broadcast_next_hops(rs, 3, 1) == []


def test_disconnected() -> None:
    rs = graph([(1, 2), (3, 4)], peers=[5])
    assert unicast_routes(rs, 1) == {2: 2}
    assert unicast_routes(rs, 5) == {}
    assert broadcast_next_hops(rs, 3, 1) == []  # 1 is not reachable from 3
    assert broadcast_next_hops(rs, 1, 1) == [2]
    assert deliveries(rs, 3) == Counter({4: 1})


def test_unknown_peers() -> None:
    rs = line(3)
    assert unicast_routes(rs, 99) == {}
    assert broadcast_next_hops(rs, 99, 1) == []
    assert broadcast_next_hops(rs, 1, 99) == []
    assert neighbours(rs, 99) == []


def test_one_sided_edges_are_ignored() -> None:
    rs = graph([(1, 2)], one_sided=[(2, 3), (4, 1)])
    assert neighbours(rs, 2) == [1]
    assert neighbours(rs, 1) == [2]
    assert unicast_routes(rs, 1) == {2: 2}
    assert unicast_routes(rs, 3) == {}
    assert broadcast_next_hops(rs, 1, 2) == []


def test_an_edge_to_an_unknown_record_is_ignored() -> None:
    rs = graph([(1, 2), (2, 3)])
    del rs[3]
    assert unicast_routes(rs, 1) == {2: 2}


def test_not_established_is_ignored() -> None:
    rs = graph([(1, 2)])
    rs[1] = PeerRecord(1, "", 1, 2, (ConnectionInfo(2, "", True, False),))
    assert unicast_routes(rs, 1) == {}


@st.composite
def connected_graphs(draw: st.DrawFn) -> dict[int, PeerRecord]:
    """A random connected graph: a random spanning tree plus random extra edges, random names."""
    n = draw(st.integers(1, 25))
    names = draw(st.lists(st.integers(0, 2**48 - 1), min_size=n, max_size=n, unique=True))
    edges = {(names[i], names[draw(st.integers(0, i - 1))]) for i in range(1, n)}
    if n > 1:
        extra = st.tuples(st.sampled_from(names), st.sampled_from(names)).filter(lambda e: e[0] != e[1])
        edges |= set(draw(st.lists(extra, max_size=2 * n)))
    return graph(edges, peers=names)


@settings(max_examples=150, deadline=None)
@given(connected_graphs())
def test_broadcast_reaches_every_peer_exactly_once_from_every_source(rs: dict[int, PeerRecord]) -> None:
    for source in rs:
        assert deliveries(rs, source) == Counter({p: 1 for p in rs if p != source})


def bfs(rs: dict[int, PeerRecord], root: int) -> dict[int, int]:
    """Hop counts from `root`, computed independently of the code under test."""
    dist = {root: 0}
    frontier = [root]
    while frontier:
        nxt = []
        for x in frontier:
            for c in rs[x].connections:
                y = c.peer
                if y not in dist and y in rs and any(b.peer == x for b in rs[y].connections):
                    dist[y] = dist[x] + 1
                    nxt.append(y)
        frontier = nxt
    return dist


@settings(max_examples=150, deadline=None)
@given(connected_graphs())
def test_unicast_next_hop_is_the_lowest_first_hop_of_a_shortest_path(rs: dict[int, PeerRecord]) -> None:
    dist = {p: bfs(rs, p) for p in rs}
    for local in rs:
        routes = unicast_routes(rs, local)
        assert set(routes) == set(rs) - {local}
        for p, hop in routes.items():
            candidates = [n for n in neighbours(rs, local) if dist[n][p] == dist[local][p] - 1]
            assert hop == min(candidates)


@pytest.mark.parametrize("n", [2, 7, 30])
def test_line_and_ring_broadcast_exactly_once(n: int) -> None:
    for rs in (line(n), ring(n) if n > 2 else line(n)):
        for source in rs:
            assert deliveries(rs, source) == Counter({p: 1 for p in rs if p != source})
