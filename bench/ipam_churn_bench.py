"""What IPAM's churn handling costs (issue 18): the sightings every state message now carries, and the vouch
arithmetic (`certified`) that `tick` and `next_deadline` do for each absent owner, at 100 and 1000 owners with
none, 10% and 50% of them away.

    .venv/bin/python bench/ipam_churn_bench.py

Baselines measured in the same run: the same state message without sightings (what a message was before), and
`tick` + `next_deadline` of the same peer with reclaim off (--ipam-reclaim-after 0: no vouches are weighed).
Pure code, one core, no I/O.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator

from weave_node.core.address import parse_range
from weave_node.ipam import messages
from weave_node.ipam.allocator import Allocator
from weave_node.ipam.model import Init
from weave_node.ipam.presence import Sighting
from weave_node.ipam.ring import Ring

BASE = 0x020000000000


def peer(owners: int, away: float, reclaim_after: float) -> tuple[Allocator, int, dict[int, Sighting]]:
    span = parse_range("10.32.0.0/12")
    names = [BASE + 1 + i for i in range(owners)]
    ring = Ring.initial(span, 1, names)
    me = names[0]
    a = Allocator(me, span, Init("consensus", peers=owners), reclaim_after=reclaim_after, now=0.0, ring=ring)
    gone = set(names[owners - int(owners * away) :])
    here = set(names) - gone
    a.set_reachable(here, 1.0, {n: f"node-{n & 0xFFFF:04x}" for n in names})
    vouch = {n: Sighting(30.0, f"node-{n & 0xFFFF:04x}") for n in gone}
    for v in sorted(here - {me}):  # every live owner has vouched for every absent one
        a.presence.merge(v, vouch, 1.0)
    fresher = {n: Sighting(1.0, s.nickname) for n, s in vouch.items()}  # a voucher saw them all 29 s later
    return a, max(here - {me}, default=me), fresher


def timed(fn: Callable[[], object], runs: int) -> float:
    """Median of `runs` calls, in microseconds."""
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e6)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    print(f"{'owners':>6} {'away':>5} | {'message B':>9} {'w/o sightings':>13} {'x':>5} | "
          f"{'tick+deadline us':>16} {'after a vouch':>13} {'reclaim off':>11} {'x':>6} {'x after':>7}")  # fmt: skip
    for owners in (100, 1000):
        for away in (0.0, 0.1, 0.5):
            a, voucher, fresher = peer(owners, away, 600.0)
            off, _, _ = peer(owners, away, 0.0)
            assert a.ring is not None
            size = len(a.state_message(2.0))
            plain = len(messages.encode_state(a.range, a.ring))
            t_on = timed(lambda a=a: (a.tick(2.0), a.next_deadline(2.0)), args.runs)  # type: ignore[misc]
            clock = iter(range(3, 10**9))

            def after_vouch(
                a: Allocator = a, v: int = voucher, s: dict[int, Sighting] = fresher, clock: Iterator[int] = clock
            ) -> None:
                now = float(next(clock))  # a fresher vouch for every absent owner, then the tick it causes
                a.presence.merge(v, s, now)
                a.tick(now)
                a.next_deadline(now)

            t_vouch = timed(after_vouch, args.runs)
            t_off = timed(lambda a=off: (a.tick(2.0), a.next_deadline(2.0)), args.runs)  # type: ignore[misc]
            print(
                f"{owners:>6} {away:>5.0%} | {size:>9} {plain:>13} {size / plain:>5.2f} | "
                f"{t_on:>16.0f} {t_vouch:>13.0f} {t_off:>11.0f} {t_on / t_off:>6.1f} {t_vouch / t_off:>7.1f}"
            )


if __name__ == "__main__":
    main()
