"""Lab benchmark: rootfs build, `lab up` to sshd-ready, memory per idle host, `lab down`.

    .venv/bin/python bench/lab_bench.py [--cold] [--runs 3]

Baseline measured in the same run: a 1-host lab. Ratios show how up/down scale with the host count; the goals
of the foundation issue are printed beside each number. `--cold` also builds the rootfs into a temporary cache
(the real cache is left alone). Results go into docs/benchmarks.md by hand, with the date and the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from weave_node.lab import lab
from weave_node.lab.paths import home
from weave_node.lab.progress import Progress
from weave_node.lab.rootfs import ensure_rootfs

QUIET = Progress(quiet=True)


def timed_up_down(name: str, hosts: int) -> tuple[float, float, float]:
    """(seconds to sshd-ready, mean idle PSS MiB per host, seconds to tear down)."""
    t0 = time.monotonic()
    lab.up(name, hosts, QUIET)
    up_s = time.monotonic() - t0
    deadline = time.monotonic() + 60
    while True:  # idle = every host's systemd reports running
        st = lab.status(name)
        if all(h.system_state in ("running", "degraded") for h in st.hosts) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    mem = statistics.mean(h.pss_mib for h in st.hosts)
    t1 = time.monotonic()
    lab.down(name, QUIET)
    return up_s, mem, time.monotonic() - t1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", action="store_true", help="also time a cold rootfs build (temporary cache)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big", type=int, default=20, help="host count of the large lab")
    args = parser.parse_args()

    if args.cold:
        tmp = Path(tempfile.mkdtemp(prefix="weave-lab-bench-"))
        try:
            t0 = time.monotonic()
            ensure_rootfs(tmp, lambda _line: None)
            print(f"cold rootfs build: {time.monotonic() - t0:.1f} s (goal <= 60 s)")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    ensure_rootfs(home() / "cache", lambda _line: None)

    rows: dict[int, list[tuple[float, float, float]]] = {}
    for count in (1, 3, args.big):
        rows[count] = [timed_up_down(f"bench{count}"[:8], count) for _ in range(args.runs)]

    def med(count: int, i: int) -> float:
        return statistics.median(r[i] for r in rows[count])

    base_up, base_down = med(1, 0), med(1, 2)
    goals = {3: 5.0, args.big: 15.0}
    print(
        f"\nmedians of {args.runs} runs; baseline = a 1-host lab in this run "
        f"(up {base_up:.2f} s, down {base_down:.2f} s)"
    )
    print(f"{'hosts':>5} {'up s':>7} {'x base':>7} {'goal':>6} {'down s':>7} {'x base':>7} {'PSS MiB/host':>13}")
    for count in rows:
        up_goal = goals.get(count, float("nan"))
        print(
            f"{count:>5} {med(count, 0):>7.2f} {med(count, 0) / base_up:>7.2f} {up_goal:>6.1f} "
            f"{med(count, 2):>7.2f} {med(count, 2) / base_down:>7.2f} {med(count, 1):>13.1f}"
        )
    print(f"memory goal: <= 35 MiB per idle host; down goal: <= 3 s; machine: {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
