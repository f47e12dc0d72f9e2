"""Password rotations back to back on one lab: the pod traffic each one loses (the sleeve's key handover).

    .venv/bin/python bench/rotation_bench.py [--rotations 8] [--load 2]

Four hosts, a password (so pods use the sealed sleeve: this kernel has no ESP), a pod on each; node1's pod pings the
others' at 10/s through each rotation: the new password with the old one too (a rollout, reloads), then the new one
alone (a rollout, reloads: every connection made with the old one is re-established, so each sleeve link is
re-keyed). `--load N` keeps N busy processes of ours running meanwhile (a machine as loaded as CI's, where the
routers' reconnections race more). The baseline of the same run: the same pings through a rollout that changes
nothing. Results go into docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BIN
from tests.helpers import poll
from tests.lab.test_day2 import Day2Lab, Pings

NODES = ("node1", "node2", "node3", "node4")


def main() -> int:  # noqa: PLR0915 - one scenario, step by step
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rotations", type=int, default=8)
    parser.add_argument("--load", type=int, default=0, help="busy processes meanwhile (default: none)")
    parser.add_argument("--journals", action="store_true", help="print the routers' journals around each loss")
    args = parser.parse_args()
    name = f"rb{os.getpid() % 10000}"
    secrets = Path(tempfile.mkdtemp(prefix="rotation-bench-"))
    hogs: list[subprocess.Popen[bytes]] = []
    subprocess.run([str(BIN / "weave-node"), "lab", "up", "--name", name, "--hosts", str(len(NODES))], check=True)
    try:
        status = json.loads(subprocess.run([str(BIN / "weave-node"), "lab", "status", "--json", "--name", name],
                                           capture_output=True, text=True, check=True).stdout)  # fmt: skip
        lab = Day2Lab(name, status["ssh_config"], secrets)
        lab.hosts = NODES  # type: ignore[assignment]  # (Day2Lab starts with three)
        assert lab.roll()[1] == 0
        for node in NODES:
            poll(lambda n=node: len(lab.established(n)) == len(NODES) - 1, timeout=60, what=f"{node} meshed")  # type: ignore[misc]
            lab.add_pod(node)
        others = NODES[1:]
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
        with Pings(lab, "node1", others) as pings:
            t0, runs = time.monotonic(), 0
            while runs == 0 or time.monotonic() - t0 < 5:  # (enough pings to count: a re-run takes seconds)
                assert lab.roll() == (0, 0)
                runs += 1
            base = (time.monotonic() - t0) / runs
            baseline = pings.lost()
        print(f"baseline (a rollout that changes nothing, {runs} runs): {base:.1f} s each, lost {baseline}", flush=True)
        rows: list[dict[str, int]] = []
        for i in range(args.rotations):
            before = {node: _sleeve_counts(lab, node) for node in NODES}
            with Pings(lab, "node1", others) as pings:
                old = lab.password
                lab.password = lab.secret(f"pw-{i}", f"rotation-bench-password-{i}")
                t0 = time.monotonic()
                assert lab.roll(f"weave_previous_password_file={old}")[1] == 0
                assert lab.roll()[1] == 0
                took = time.monotonic() - t0
                for node in NODES:
                    want = {o for o in NODES if o != node}
                    poll(lambda n=node, w=want: lab.established(n) == w, timeout=30, what=f"{node} meshed")  # type: ignore[misc]
                lost = pings.lost()
                gaps = pings.gaps()
            rows.append(lost)
            if args.journals and any(lost.values()):
                _journals(lab, lost, gaps, before)
            print(f"rotation {i + 1}: {took:.1f} s ({took / base:.2f}x the baseline), lost {lost} {gaps}", flush=True)
        per_peer = [n for row in rows for n in row.values()]
        lossy = sum(1 for r in rows if any(r.values()))
        print(
            f"\n{args.rotations} rotations, load {args.load}: lost per peer and rotation: max {max(per_peer)}, "
            f"total {sum(per_peer)} over {len(per_peer)}; rotations with a loss: {lossy}"
        )
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        subprocess.run([str(BIN / "weave-node"), "lab", "down", "--name", name, "-q"], check=False)
    return 0


QUIET = ("bytes_in", "bytes_out", "datagrams_out", "frames_in", "frames_out", "frames_left_to_fastdp")


def _sleeve_counts(lab: Day2Lab, node: str) -> Counter[str]:
    """The sleeve's counters and drops on `node` (but the traffic's own), as its router's status has them."""
    sleeve = lab.status(node).get("datapath", {}).get("sleeve") or {}
    counts = Counter({f"drop:{k}": v for k, v in (sleeve.get("drops") or {}).items()})
    counts.update({k: v for k, v in (sleeve.get("counters") or {}).items() if k not in QUIET})
    return counts


def _journals(lab: Day2Lab, lost: dict[str, int], gaps: dict[str, list[str]], before: dict[str, Counter[str]]) -> None:
    """What node1's router and a losing peer's did around the first gap; the sleeve's counts meanwhile."""
    for node in NODES:
        after = _sleeve_counts(lab, node)
        print(f"   {node} sleeve counts meanwhile: {dict(sorted((after - before[node]).items()))}")
    gap = next(g for runs in gaps.values() for g in runs)
    first, last = (datetime.datetime.strptime(t, "%H:%M:%S.%f") for t in gap.split(" ")[0].split("-"))
    since, until = ((t + datetime.timedelta(seconds=d)).strftime("%H:%M:%S") for t, d in ((first, -2), (last, 2)))
    for node in ("node1", next(n for n, k in lost.items() if k)):
        cmd = f"journalctl -u weave-node -o short-precise --no-pager --utc --since '{since}' --until '{until}'"
        print(f"== {node} around {gap}\n{lab.ssh(node, cmd).stdout}")


if __name__ == "__main__":
    raise SystemExit(main())
