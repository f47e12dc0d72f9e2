"""Rollout benchmark: the same 3-host rollout with pyinfra and with Ansible, onto fresh lab hosts, then a re-run.

    .venv/bin/python bench/rollout_bench.py [--runs 3] [--hosts 3]

Baseline measured in the same run: the pyinfra engine (`weave-node rollout --engine pyinfra`); Ansible's times are
printed as ratios against it. The wheelhouse is built before timing (both engines use the same cached one).
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
from weave_node_deploy import wheelhouse


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
    parser.add_argument("--hosts", type=int, default=3)
    args = parser.parse_args()
    wheelhouse.build()
    results: dict[str, list[tuple[float, float]]] = {"pyinfra": [], "ansible": []}
    for _ in range(args.runs):
        for engine, rows in results.items():  # interleaved, so drift in the machine's load hits both
            rows.append(one(engine, args.hosts))
    med = {e: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for e, rs in results.items()}
    base = med["pyinfra"]
    print(f"\n{args.hosts} fresh lab hosts, medians of {args.runs} runs; baseline = pyinfra in this run")
    print(f"{'engine':<8} {'fresh s':>8} {'x base':>7} {'re-run s':>9} {'x base':>7}")
    for engine, (fresh, again) in med.items():
        print(f"{engine:<8} {fresh:8.1f} {fresh / base[0]:7.2f} {again:9.1f} {again / base[1]:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
