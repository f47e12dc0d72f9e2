"""Rollout benchmark: the same 3-host rollout with pyinfra and with Ansible, onto fresh lab hosts, then a re-run.

    .venv/bin/python bench/rollout_bench.py [--runs 3] [--hosts 3 20] [--engines pyinfra ansible]

Baselines measured in the same run: the pyinfra engine (`weave-node rollout --engine pyinfra`) on as many hosts,
for Ansible's ratio, and the smallest lab of the run with the same engine, for how it scales with hosts. The
wheelhouse and the runtime archive are built before timing (both engines push the same cached archive).
Results go into docs/benchmarks.md by hand, with the date and the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BIN, REPO
from weave_node_deploy import runtime, wheelhouse


def rollout(lab: str, engine: str) -> float:
    env = dict(os.environ, WEAVE_LAB=lab, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    t0 = time.monotonic()
    out = subprocess.run(
        [str(BIN / "weave-node"), "rollout", "--engine", engine, "--inventory", "inventory/lab.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - t0
    if out.returncode != 0:
        raise SystemExit(f"{engine} rollout failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return elapsed


def one(engine: str, hosts: int) -> tuple[float, float]:
    lab = f"rb{engine[0]}{os.getpid() % 10000}"
    subprocess.run([str(BIN / "weave-node"), "lab", "up", "--name", lab, "--hosts", str(hosts)], check=True)
    try:
        return rollout(lab, engine), rollout(lab, engine)
    finally:
        subprocess.run([str(BIN / "weave-node"), "lab", "down", "--name", lab, "-q"], check=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", type=int, nargs="+", default=[3], help="lab sizes, e.g. --hosts 3 20")
    parser.add_argument("--engines", nargs="+", default=["pyinfra", "ansible"], choices=["pyinfra", "ansible"])
    args = parser.parse_args()
    runtime.build(wheelhouse.build())  # both engines push the same cached archive
    results = {(n, e): [] for n in args.hosts for e in args.engines}  # type: ignore[var-annotated]
    for _ in range(args.runs):
        for key, rows in results.items():  # interleaved, so drift in the machine's load hits all of them
            rows.append(one(key[1], key[0]))
    med = {k: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for k, rs in results.items()}
    smallest = min(args.hosts)
    print(
        f"\nfresh lab hosts, medians of {args.runs} runs; baselines: pyinfra on as many hosts, and the same engine on"
    )
    print(f"{smallest} hosts, in this run")
    print(
        f"{'hosts':>5} {'engine':<8} {'fresh s':>8} {'x pyinfra':>9} {f'x {smallest} hosts':>10}"
        f" {'re-run s':>9} {'x pyinfra':>9}"
    )
    for (n, engine), (fresh, again) in med.items():
        base = med.get((n, "pyinfra"), (fresh, again))
        small = med[(smallest, engine)][0]
        print(
            f"{n:>5} {engine:<8} {fresh:8.1f} {fresh / base[0]:9.2f} {fresh / small:10.2f} {again:9.1f}"
            f" {again / base[1]:9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
