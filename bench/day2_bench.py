"""Day-2 benchmark (issue 21): on one lab, the previous release upgraded to this tree, a host added, a host
retired, encryption turned on and the password rotated — each timed, with the pod traffic lost meanwhile.

    .venv/bin/python bench/day2_bench.py

Baselines measured in the same run: a plain re-run of the rollout that changes nothing (the upgrade's and the
add's wall times are printed as ratios against it) and the ping interval (losses are counted replies at 10/s).
The lab has 4 hosts; the cluster starts on 3 (WEAVE_LAB_ONLY), pods without a password use the fast datapath.
Results go into docs/benchmarks.md by hand, with the date and the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BIN, REPO
from tests.e2e import verify
from tests.helpers import poll
from tests.lab.test_day2 import POD, Day2Lab, Pings
from tests.lab.test_lab import grand_total
from tests.lab.test_upgrade import _previous_tree, previous_deploy

NODES = ("node1", "node2", "node3")
INVENTORY = str(REPO / "inventory/lab.py")  # (this tree's: WEAVE_LAB_ONLY keeps node4 spare)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.monotonic()
    result = fn()
    return time.monotonic() - t0, result


def main() -> int:  # noqa: PLR0915 - one scenario, step by step
    name = f"db{os.getpid() % 10000}"
    secrets = Path(tempfile.mkdtemp(prefix="day2-bench-"))
    tree = _previous_tree(Path(tempfile.mkdtemp(prefix="previous-")))
    subprocess.run([str(BIN / "weave-node"), "lab", "up", "--name", name, "--hosts", "4"], check=True)
    rows: list[tuple[str, str]] = []
    try:
        status = json.loads(subprocess.run([str(BIN / "weave-node"), "lab", "status", "--json", "--name", name],
                                           capture_output=True, text=True, check=True).stdout)  # fmt: skip
        lab = Day2Lab(name, status["ssh_config"], secrets)
        lab.password = None
        os.environ["WEAVE_LAB_ONLY"] = ",".join(NODES)
        previous_deploy(lab, tree, inventory=INVENTORY)
        for node in NODES:
            poll(lambda n=node: len(lab.established(n)) == 2, timeout=60, what=f"{node} meshed")
            lab.add_pod(node)
        # -- the upgrade: from the previous release, host by host ------------------------------------------
        # the baseline: a plain re-run of the previous release's rollout (nothing changes)
        base, _ = timed(lambda: previous_deploy(lab, tree, inventory=INVENTORY))
        with Pings(lab, "node1", ("node2", "node3")) as pings:
            upgrade, _ = timed(lambda: _serial(lab))
            lost = pings.lost()
        rows.append(("upgrade of 3 hosts (--serial) / plain re-run", f"{upgrade:.1f} s / {base:.1f} s = "
                     f"{upgrade / base:.2f}x"))  # fmt: skip
        rows.append(("replies lost during the upgrade (fastdp, 10/s)", f"{lost}"))
        rerun, _ = timed(lab.roll)
        # -- adding a host -----------------------------------------------------------------------------
        lab.hosts = (*NODES, "node4")
        os.environ["WEAVE_LAB_ONLY"] = ",".join(lab.hosts)
        add, _ = timed(lab.roll)
        t0 = time.monotonic()
        lab.add_pod("node4")
        for other in NODES:
            poll(lambda o=other: lab.reaches("node4", o) and lab.reaches(o, "node4"), timeout=60, what=f"{other}")
        reach = time.monotonic() - t0
        rows.append(("add 1 host: rollout / plain re-run", f"{add:.1f} s / {rerun:.1f} s = {add / rerun:.2f}x"))
        rows.append(("add 1 host: its pod reaches every pod, after the rollout", f"{reach:.2f} s"))
        # -- retiring it ---------------------------------------------------------------------------------
        retired = lab.status("node4")["router"]["name"]
        verify.del_pod(lab.host("node4"), POD)
        seen: dict[str, float] = {}

        def watch() -> None:
            while "gone" not in seen:
                owners = {o["peer"] for o in (lab.status("node1").get("ipam") or {}).get("owners", [])}
                if owners and retired not in owners:
                    seen["gone"] = time.monotonic()
                time.sleep(0.1)

        threading.Thread(target=watch, daemon=True).start()
        t0 = time.monotonic()
        subprocess.run([str(BIN / "weave-node"), "rollout", "--retire", "node4"], cwd=REPO, check=True,
                       env=dict(os.environ, WEAVE_LAB=name), capture_output=True)  # fmt: skip
        total = time.monotonic() - t0
        usable = poll(lambda: seen.get("gone"), timeout=30, what="node4's space with the others") - t0
        rows.append(("retire 1 host: its range usable by the others (from the command's start)", f"{usable:.2f} s"))
        rows.append(("retire 1 host: the whole command (removal + the others reloaded)", f"{total:.1f} s"))
        lab.hosts = NODES
        os.environ["WEAVE_LAB_ONLY"] = ",".join(NODES)
        # -- encryption on, then a rotation ---------------------------------------------------------------
        with Pings(lab, "node1", ("node2", "node3")) as pings:
            lab.password = lab.secret("pw-1", "bench-password-one")
            on1, _ = timed(lambda: lab.roll("weave_accept_unencrypted=true"))
            on2, _ = timed(lab.roll)
            lost = pings.lost()
        rows.append(("encryption on (2 rollouts: restarts, then a reload)", f"{on1:.1f} s + {on2:.1f} s, lost {lost}"))
        with Pings(lab, "node1", ("node2", "node3")) as pings:
            first = lab.password
            lab.password = lab.secret("pw-2", "bench-password-two")
            r1, _ = timed(lambda: lab.roll(f"weave_previous_password_file={first}"))
            r2, _ = timed(lab.roll)
            lost = pings.lost()
        rows.append(("password rotation (2 rollouts, reloads)", f"{r1:.1f} s + {r2:.1f} s, lost {lost}"))
    finally:
        subprocess.run([str(BIN / "weave-node"), "lab", "down", "--name", name, "-q"], check=False)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _serial(lab: Day2Lab) -> tuple[int, int]:
    env = {**lab.env, "WEAVE_LAB_ONLY": ",".join(lab.hosts)}
    out = subprocess.run([str(BIN / "pyinfra"), "-y", "inventory/lab.py", "deploys/weave_node.py", "--serial"],
                         cwd=REPO, env=dict(os.environ, **env), capture_output=True, text=True, check=True)  # fmt: skip
    changed, errors, _ = grand_total(out.stdout + out.stderr)
    return changed, errors


if __name__ == "__main__":
    raise SystemExit(main())
