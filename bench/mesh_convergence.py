"""Topology gossip benchmark on the deterministic simulator (weave_node/mesh/sim.py).

    .venv/bin/python bench/mesh_convergence.py [--seed 1] [--sizes 100 1000]

For each mesh size n (sparse: every peer connects to 3 random earlier peers) it measures, for our gossip
(deltas + digest anti-entropy) and for a baseline measured in the same run on the same graph (naive flooding:
every peer sends its full topology to every neighbour every round):
  - rounds until every peer holds the identical full topology (goal: <= 3*log2(n));
  - bytes sent + received per peer (max and mean) for that initial convergence;
  - the same for a single change after convergence (one new connection), goal <= 64 KiB per peer.
`ratio` is ours / baseline. `floor` is the size of the full topology: what every peer must at least receive
to converge from nothing, whatever the protocol.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from weave_node.mesh.sim import Network, sparse_graph
from weave_node.mesh.topology import encoded_size

KIB = 1024


@dataclass
class Result:
    rounds: int
    bytes_max: int
    bytes_mean: float
    wave_rounds: int
    wave_max: int
    wave_mean: float
    floor: int
    seconds: float


def per_peer(net: Network) -> tuple[int, float]:
    totals = [p.stats.bytes_sent + p.stats.bytes_received for p in net.peers.values()]
    return max(totals), sum(totals) / len(totals)


def measure(n: int, seed: int, mode: str) -> Result:
    t0 = time.monotonic()
    rng = random.Random(seed)
    names, edges = sparse_graph(n, rng)
    net = Network.build(names, edges, rng, mode=mode)
    rounds = net.run_until_agreed(200)
    bytes_max, bytes_mean = per_peer(net)
    floor = encoded_size(net.peers[names[0]].topology.records.values())
    if mode == "delta":
        net.run_until_quiet(200)
    net.reset_stats()
    a = names[n // 2]
    b = next(x for x in reversed(names) if x != a and x not in net.peers[a].neighbours)
    net.connect(a, b)
    wave_rounds = net.run_until_agreed(200)
    if mode == "delta":
        net.run_until_quiet(200)
    wave_max, wave_mean = per_peer(net)
    return Result(rounds, bytes_max, bytes_mean, wave_rounds, wave_max, wave_mean, floor, time.monotonic() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()

    header = f"{'n':>5} {'metric':<22} {'ours':>12} {'baseline':>12} {'ratio':>7} {'goal':>10} {'ok':>3}"
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        ours, base = measure(n, args.seed, "delta"), measure(n, args.seed, "flood")
        rounds_goal = 3 * math.log2(n)
        rows = [
            ("rounds (convergence)", ours.rounds, base.rounds, rounds_goal, ours.rounds <= rounds_goal),
            ("bytes/peer max (conv.)", ours.bytes_max, base.bytes_max, 64 * KIB, ours.bytes_max <= 64 * KIB),
            ("bytes/peer mean (conv.)", ours.bytes_mean, base.bytes_mean, 64 * KIB, ours.bytes_mean <= 64 * KIB),
            ("rounds (1 change)", ours.wave_rounds, base.wave_rounds, rounds_goal, ours.wave_rounds <= rounds_goal),
            ("bytes/peer max (1 chg)", ours.wave_max, base.wave_max, 64 * KIB, ours.wave_max <= 64 * KIB),
            ("bytes/peer mean (1 chg)", ours.wave_mean, base.wave_mean, 64 * KIB, ours.wave_mean <= 64 * KIB),
        ]
        for label, mine, theirs, goal, ok in rows:
            ratio = mine / theirs if theirs else float("nan")
            verdict = "yes" if ok else "NO"
            print(f"{n:>5} {label:<22} {mine:>12,.0f} {theirs:>12,.0f} {ratio:>7.2g} {goal:>10,.0f} {verdict:>3}")
        print(
            f"{n:>5} floor (full topology) {ours.floor:>12,} B; sim time ours {ours.seconds:.1f} s, "
            f"baseline {base.seconds:.1f} s"
        )


if __name__ == "__main__":
    main()
