"""Idle routers' CPU: fresh lab hosts, the rollout, every peer settled in fastdp or direct mode, then each router's
CPU time over a window in which nothing changes.

    .venv/bin/python bench/idle_cpu.py [--hosts 2 20] [--seconds 20]

Baseline measured in the same run: the smallest lab's routers (one peer each on 2 hosts), so the ratio says what
each further peer costs an idle router. Also printed: how busy the whole machine was (the lab's systemd, sshd and
kernel work included). Results go into docs/benchmarks.md by hand, with the date and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BIN, REPO

HZ = os.sysconf("SC_CLK_TCK")
ROUTER = "/opt/weave-node/venv/bin/weave-node"


def cli(*args: str, lab: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, WEAVE_LAB=lab, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    return subprocess.run([str(BIN / "weave-node"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          check=check)  # fmt: skip


def settled(lab: str, hosts: int) -> bool:
    """Every router sees every other peer in fastdp or direct mode."""
    for i in range(1, hosts + 1):
        out = cli("lab", "ssh", f"node{i}", "--", ROUTER, "status", "--json", lab=lab, check=False)
        try:
            peers = json.loads(out.stdout).get("datapath", {}).get("peers", [])
        except json.JSONDecodeError:
            return False
        if len(peers) != hosts - 1 or any(p.get("mode") not in ("fastdp", "direct") for p in peers):
            return False
    return True


def routers() -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"{ROUTER} router"], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ  # utime + stime


def machine() -> tuple[float, float]:
    """(busy, total) seconds of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / HZ, sum(values) / HZ


def one(hosts: int, seconds: float) -> tuple[float, float]:
    """(mean CPU % of one router, machine busy in cores) over the window."""
    lab = f"ic{os.getpid() % 10000}"
    cli("lab", "up", "--name", lab, "--hosts", str(hosts), lab=lab)
    try:
        cli("rollout", "--engine", "pyinfra", "--inventory", "inventory/lab.py", lab=lab)
        deadline = time.monotonic() + 120
        while not settled(lab, hosts):
            if time.monotonic() > deadline:
                raise SystemExit(f"{hosts} hosts: the peers did not all reach fastdp or direct within 120 s")
            time.sleep(1)
        pids = routers()
        if len(pids) != hosts:
            raise SystemExit(f"{len(pids)} router processes on this machine, expected {hosts} (another lab up?)")
        before, (busy0, total0) = {p: cpu_seconds(p) for p in pids}, machine()
        time.sleep(seconds)  # (the window measured, not a wait for a state)
        after, (busy1, total1) = {p: cpu_seconds(p) for p in pids}, machine()
        per_router = sum(after[p] - before[p] for p in pids) / len(pids) / seconds * 100
        cores = (busy1 - busy0) / (total1 - total0) * os.cpu_count()  # type: ignore[operator]
        return per_router, cores
    finally:
        cli("lab", "down", "--name", lab, "-q", lab=lab, check=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, nargs="+", default=[2, 20], help="lab sizes; the smallest is the baseline")
    parser.add_argument("--seconds", type=float, default=20.0, help="the window measured")
    args = parser.parse_args()
    results = {n: one(n, args.seconds) for n in sorted(args.hosts)}
    base = results[min(results)][0] or float("nan")  # (a router measured at 0: no ratio)
    print(f"\nidle routers, {args.seconds:.0f} s window; baseline: a router of the {min(results)}-host lab, this run")
    print(f"{'hosts':>5} {'peers':>5} {'CPU % a router':>15} {'x baseline':>10} {'machine busy, cores':>20}")
    for n, (pct, cores) in results.items():
        print(f"{n:>5} {n - 1:>5} {pct:15.2f} {pct / base:10.2f} {cores:20.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
