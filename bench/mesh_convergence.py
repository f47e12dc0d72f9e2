"""Topology gossip benchmark on the deterministic simulator (weave_node/mesh/sim.py), which runs the router's own
gossip core (weave_node/mesh/node.py): the figures describe the protocol the router speaks.

    .venv/bin/python bench/mesh_convergence.py [--seed 1] [--sizes 100 1000] [--cold-max 300]

For each mesh size n (sparse: every peer dials 3 random earlier peers; hops of 10 ms, anti-entropy every 10 s)
it measures, for the router's gossip and for a baseline measured in the same run on the same graph (naive
flooding: every peer sends its full topology to every neighbour every round):
  - from a cold start (every connection up at once, every peer knowing only itself; n <= --cold-max only: the
    router floods every version of every record, ~(n * links)**2 messages to simulate): rounds until every peer
    holds the identical full topology (goal: <= 3*log2(n)), bytes sent + received per peer (max and mean);
  - in a converged mesh (reached by `settle()`), one change: a new connection, then its loss: rounds and bytes
    per peer (goal <= 64 KiB).
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
    rounds: float  # nan: not simulated
    bytes_max: float
    bytes_mean: float
    waves: list[tuple[int, int, float]]  # per change: rounds, bytes/peer max, mean
    floor: int
    seconds: float


def per_peer(net: Network) -> tuple[int, float]:
    totals = [p.stats.bytes_sent + p.stats.bytes_received for p in net.peers.values()]
    return max(totals), sum(totals) / len(totals)


def quiet(net: Network, mode: str) -> None:
    if mode == "delta":
        net.run_until_quiet(400)


def measure(n: int, seed: int, mode: str, cold: bool) -> Result:
    t0 = time.monotonic()
    rng = random.Random(seed)
    names, edges = sparse_graph(n, rng)
    net = Network.build(names, edges, rng, mode=mode)
    rounds, bytes_max, bytes_mean = math.nan, math.nan, math.nan
    if cold:
        rounds = net.run_until_agreed(200)
        bytes_max, bytes_mean = per_peer(net)
        quiet(net, mode)
    else:
        net.settle()
    floor = 1 + encoded_size(net.peers[names[0]].topology.records.values())
    a = names[n // 2]
    b = next(x for x in reversed(names) if x != a and x not in net.peers[a].neighbours)
    waves = []
    for change in (lambda: net.connect(a, b), lambda: net.disconnect(a, b)):
        net.reset_stats()
        change()
        wave_rounds = net.run_until_agreed(200)
        quiet(net, mode)
        waves.append((wave_rounds, *per_peer(net)))
    return Result(rounds, bytes_max, bytes_mean, waves, floor, time.monotonic() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--cold-max", type=int, default=300, help="largest n simulated from a cold start")
    args = parser.parse_args()

    header = f"{'n':>5} {'metric':<26} {'ours':>12} {'baseline':>12} {'ratio':>7} {'goal':>10} {'ok':>3}"
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        cold = n <= args.cold_max
        ours, base = measure(n, args.seed, "delta", cold), measure(n, args.seed, "flood", cold)
        rounds_goal = 3 * math.log2(n)
        rows = []
        if cold:
            rows += [
                ("rounds (cold start)", ours.rounds, base.rounds, rounds_goal, ours.rounds <= rounds_goal),
                ("bytes/peer max (cold)", ours.bytes_max, base.bytes_max, math.nan, True),
                ("bytes/peer mean (cold)", ours.bytes_mean, base.bytes_mean, math.nan, True),
            ]
        for label, mine, theirs in zip(("new connection", "lost connection"), ours.waves, base.waves, strict=True):
            rows += [
                (f"rounds ({label})", mine[0], theirs[0], rounds_goal, mine[0] <= rounds_goal),
                (f"bytes/peer max ({label})", mine[1], theirs[1], 64 * KIB, mine[1] <= 64 * KIB),
                (f"bytes/peer mean ({label})", mine[2], theirs[2], 64 * KIB, mine[2] <= 64 * KIB),
            ]
        for label, mine_v, theirs_v, goal, ok in rows:
            ratio = mine_v / theirs_v if theirs_v else float("nan")
            verdict = "yes" if ok else "NO"
            print(f"{n:>5} {label:<26} {mine_v:>12,.0f} {theirs_v:>12,.0f} {ratio:>7.2g} {goal:>10,.0f} {verdict:>3}")
        print(
            f"{n:>5} floor (full topology) {ours.floor:>12,} B; sim time ours {ours.seconds:.1f} s, "
            f"baseline {base.seconds:.1f} s"
        )


if __name__ == "__main__":
    main()
