"""The router's topology gossip (its own core, mesh/node.py) in a deterministic simulated mesh: convergence,
change waves, partitions, restarts, deaths, duplicates, learned dials."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from weave_node.mesh.sim import DIGEST_SIZE, GOSSIP_INTERVAL, Network, sparse_graph
from weave_node.mesh.topology import encoded_size

KIB = 1024


def build(n: int, seed: int, **options: object) -> tuple[Network, list[int]]:
    rng = random.Random(seed)
    names, edges = sparse_graph(n, rng)
    return Network.build(names, edges, rng, **options), names


def assert_identical(net: Network, check_every: int = 1) -> None:
    """Every peer holds exactly the live records of its component; invariants hold (on every `check_every`th)."""
    for comp in net.components():
        truth = {name: net.peers[name].topology.local for name in comp}
        for i, name in enumerate(sorted(comp)):
            topo = net.peers[name].topology
            assert dict(topo.records) == truth, f"peer {name:#x} disagrees"
            if i % check_every == 0:
                topo.check_invariants()


def wave_bytes(net: Network, change: Callable[[], None], max_rounds: int = 40) -> tuple[int, int]:
    """Apply `change` to a quiet, converged network; return (rounds to agree, max bytes sent+received by a peer)."""
    net.run_until_quiet(max_rounds)
    net.reset_stats()
    change()
    rounds = net.run_until_agreed(max_rounds)
    net.run_until_quiet(max_rounds)
    return rounds, max(p.stats.bytes_sent + p.stats.bytes_received for p in net.peers.values())


def test_thousand_peers_single_changes_cost_the_endpoints_one_full_topology_each(
    record_property: Callable[[str, object], None],
) -> None:
    n = 1000
    net, names = build(n, seed=1)
    net.settle()  # (a cold start of 1000 peers costs ~N**2 messages to simulate: see bench/mesh_convergence.py)
    assert net.agreed()
    full = 1 + encoded_size(net.peers[names[0]].topology.records.values())

    a, b = names[n // 2], names[-1]
    assert b not in net.peers[a].neighbours
    connect_rounds, connect_bytes = wave_bytes(net, lambda: net.connect(a, b))
    assert_identical(net, check_every=50)
    # a new connection changes both endpoints' records, so their digests differ: each sends the other everything
    assert net.counters["full"] == 2
    drop_rounds, drop_bytes = wave_bytes(net, lambda: net.disconnect(a, b))
    assert_identical(net, check_every=50)
    record_property("wave_rounds", (connect_rounds, drop_rounds))
    record_property("wave_bytes_per_peer_max", (connect_bytes, drop_bytes))
    assert connect_bytes <= 2 * full + 64 * KIB
    assert drop_bytes <= 64 * KIB or net.counters["full"] > 0  # a periodic digest may meet the wave half-way
    assert max(connect_rounds, drop_rounds) <= 3 * math.log2(n)


def test_hundred_peers_converge_from_nothing(record_property: Callable[[str, object], None]) -> None:
    net, _ = build(100, seed=1)
    rounds = net.run_until_agreed(max_rounds=50)
    record_property("rounds", rounds)
    assert rounds <= 3 * math.log2(100)
    assert_identical(net)


def test_steady_state_costs_only_digests() -> None:
    net, _ = build(100, seed=2, round_seconds=1.0)  # the periodic anti-entropy every 10 rounds
    net.run_until_agreed(50)
    net.run_until_quiet(50)
    net.reset_stats()
    rounds = 2 * round(GOSSIP_INTERVAL)
    for _ in range(rounds):
        net.step()
    assert set(net.counters) <= {"digest", "dial"}
    assert all(p.stats.bytes_sent <= 3 * DIGEST_SIZE for p in net.peers.values())  # one per interval (+ phase)
    assert_identical(net)


def two_halves(n: int, bridges: int, seed: int) -> tuple[Network, list[int], list[int], list[tuple[int, int]]]:
    rng = random.Random(seed)
    left, left_edges = sparse_graph(n // 2, rng)
    right, right_edges = sparse_graph(n // 2, rng)
    assert not set(left) & set(right)
    cut = [(rng.choice(left), rng.choice(right)) for _ in range(bridges)]
    cut = sorted(set(cut))
    net = Network.build(left + right, left_edges + right_edges + cut, rng)
    return net, left, right, cut


def test_partition_then_heal() -> None:
    net, left, right, cut = two_halves(100, bridges=5, seed=3)
    net.run_until_agreed(50)
    assert len(net.components()) == 1

    for a, b in cut:
        net.disconnect(a, b)
    assert sorted(map(len, net.components())) == [50, 50]
    net.run_until_agreed(50)
    assert_identical(net)
    for name in left:
        assert set(net.peers[name].topology.records) == set(left)
    for name in right:
        assert set(net.peers[name].topology.records) == set(right)

    for a, b in cut:
        net.connect(a, b)
    net.run_until_agreed(50)
    assert_identical(net)
    assert all(len(p.topology.records) == 100 for p in net.peers.values())


def test_restarted_peer_replaces_its_old_record_everywhere() -> None:
    net, names = build(100, seed=4)
    net.run_until_agreed(50)
    victim = names[37]
    old = net.peers[victim].topology.local
    net.restart(victim)
    new_uid = net.peers[victim].topology.local.uid
    assert new_uid != old.uid
    net.run_until_agreed(50)
    assert_identical(net)
    for peer in net.peers.values():
        record = peer.topology.records[victim]
        assert record.uid == new_uid
        assert record.version > old.version
        assert record.established == old.established


def test_dead_peer_disappears_everywhere() -> None:
    net, names = build(100, seed=5)
    net.run_until_agreed(50)
    dead = names[-1]  # the newest peer: its death leaves the mesh connected
    net.kill(dead)
    net.run_until_agreed(50)
    assert_identical(net)
    assert len(net.components()) == 1
    assert all(dead not in p.topology.records for p in net.peers.values())


def test_dead_bridge_peer_splits_the_mesh_and_everyone_forgets_the_other_side() -> None:
    net, _, right, cut = two_halves(100, bridges=1, seed=5)
    net.run_until_agreed(50)
    dead = cut[0][0]
    net.kill(dead)
    net.run_until_agreed(50)
    assert_identical(net)  # per component: each fragment holds exactly its own peers
    assert len(net.components()) >= 2
    assert all(dead not in p.topology.records for p in net.peers.values())
    for name in right:
        assert set(net.peers[name].topology.records) == set(right)


def test_anti_entropy_repairs_lost_messages() -> None:
    net, _ = build(100, seed=6, loss=0.2, round_seconds=1.0)  # the periodic anti-entropy every 10 rounds
    net.run_until_agreed(300)
    assert_identical(net)
    assert net.counters["lost"] > 0
    assert net.counters["full"] > 0  # repaired by digest mismatches, not by luck


def test_wire_mode_matches_the_object_mode() -> None:
    """Really encoding and decoding every payload changes nothing: sizes are exact, the codec round-trips."""
    results = []
    for wire in (False, True):
        net, names = build(60, seed=7, wire=wire)
        rounds = net.run_until_agreed(50)
        net.restart(names[10])
        rounds += net.run_until_agreed(50)
        results.append((rounds, dict(net.counters), [(p.stats, p.topology.fingerprint()) for p in net.peers.values()]))
    assert results[0] == results[1]


def test_simulation_is_deterministic() -> None:
    def run() -> tuple[int, list[int]]:
        net, _ = build(60, seed=8)
        rounds = net.run_until_agreed(50)
        return rounds, [p.stats.bytes_received for p in net.peers.values()]

    assert run() == run()


def test_flood_baseline_converges_too() -> None:
    net, _ = build(100, seed=9, mode="flood")
    assert net.run_until_agreed(50) <= 3 * math.log2(100)
    assert_identical(net)


def test_duplicate_connections_leave_one_at_both_ends() -> None:
    """Both ends keep the connection initiated by the greater name; the simulation runs that decision."""
    net, names = build(10, seed=10)
    net.run_until_agreed(50)
    a, b = next((x, y) for x in names for y in names if x != y and y not in net.peers[x].neighbours)
    first, second = net.connect(a, b), net.connect(b, a)
    kept = first if a > b else second
    assert set(net.peers[a].conns) & {first, second} == {kept} == set(net.peers[b].conns) & {first, second}
    assert net.peers[a].node.links[b].key == kept == net.peers[b].node.links[a].key
    net.run_until_agreed(50)
    assert_identical(net)


def test_learned_addresses_are_dialled_until_the_mesh_is_full() -> None:
    """With dials performed, every peer dials the addresses it learns (up to CONN_LIMIT): an address someone
    dialled is in that peer's record, so everyone learns it and ends up connected to it (once)."""
    rng = random.Random(11)
    names, edges = sparse_graph(12, rng)
    net = Network.build(names, edges, rng, dials=True)
    net.run_until_agreed(50)
    for _ in range(20):
        net.step()
    net.run_until_agreed(50)
    dialled = {b for _a, b in edges}
    assert all(p.neighbours >= dialled - {p.name} for p in net.peers.values())
    assert all(len(p.conns) == len(p.neighbours) for p in net.peers.values())  # duplicates resolved
    assert net.counters["dial"] > 0
    assert_identical(net)
