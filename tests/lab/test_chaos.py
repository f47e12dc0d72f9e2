"""Faults during a rollout (issue 21, item 6) on the lab: while a rollout that restarts every router runs and pods
are added and deleted on every host, a router is SIGKILLed, the underlay between two hosts is cut (iptables in
the lab's underlay namespace) and a host is rebooted. Afterwards every host's IPAM agrees, no address is held twice
and none is leaked or lost (every host's allocations are exactly its live pods, compared with the pods' own
addresses), pods reach each other again within a bound, and a second rollout changes nothing."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import verify
from tests.helpers import poll, run_cli
from tests.lab.test_lab import grand_total
from tests.lab.test_rollout import Lab, running_lab

pytestmark = pytest.mark.lab
NODES = ("node1", "node2", "node3")
CLI = "/opt/weave-node/venv/bin/weave-node"
SETTING = "weave_conn_limit=99"  # a change that restarts every router
REACH_BOUND = 60.0  # seconds until every pod reaches every other once the faults are over (measured: see below)


def _cni(command: str, pod: str, conf: str = verify.CONF) -> str:
    env = (
        f"CNI_COMMAND={command} CNI_CONTAINERID={pod} CNI_NETNS=/run/netns/{pod} CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin"
    )
    return f"{conf} | {env} /opt/cni/bin/weave-net"


class Churn:
    """Pods added and deleted on every host, as a runtime does: an ADD that fails is undone with a DEL; a host
    that is down (rebooting) is skipped. `live[host]`: pod -> address, for the ADDs that succeeded and were not
    deleted."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.live: dict[str, dict[str, str]] = {n: {} for n in NODES}
        self.paused: set[str] = set()
        self.stats = {"add": 0, "add_failed": 0, "del": 0, "del_failed": 0}
        self.undone: dict[str, set[str]] = {n: set() for n in NODES}  # DELs still to do (the runtime retries)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.busy = {n: threading.Lock() for n in NODES}  # held while a host's ADD or DEL is under way
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in NODES]
        self.rng = random.Random(21)

    def __enter__(self) -> Churn:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def _run(self, node: str) -> None:
        n = 0
        while not self.stop.wait(0.2):
            with self.busy[node]:
                if node in self.paused:
                    continue
                with self.lock:
                    pods = sorted(self.live[node])
                    add = len(pods) < 3 or self.rng.random() < 0.6
                    victim = self.rng.choice(pods) if pods else None
                if add:
                    n += 1
                    self._add(node, f"c{node[-1]}x{n}")
                elif victim is not None:
                    self._del(node, victim)

    def _add(self, node: str, pod: str) -> None:
        out = self.lab.ssh(node, f"ip netns add {pod} && {_cni('ADD', pod)}", check=False)
        if out.returncode == 0:
            ip = json.loads(out.stdout)["ips"][0]["address"].split("/")[0]
            with self.lock:
                self.live[node][pod] = ip
                self.stats["add"] += 1
            return
        with self.lock:
            self.stats["add_failed"] += 1
            self.undone[node].add(pod)
        self._undo(node, pod)

    def _del(self, node: str, pod: str) -> None:
        out = self.lab.ssh(node, f"{_cni('DEL', pod)}; rc=$?; ip netns delete {pod}; exit $rc", check=False)
        with self.lock:
            if out.returncode == 0:
                self.live[node].pop(pod, None)
                self.stats["del"] += 1
            else:
                self.stats["del_failed"] += 1

    def _undo(self, node: str, pod: str) -> bool:
        out = self.lab.ssh(node, f"{_cni('DEL', pod)}; rc=$?; ip netns delete {pod} 2>/dev/null; exit $rc", check=False)
        if out.returncode == 0:
            with self.lock:
                self.undone[node].discard(pod)
        return out.returncode == 0

    def finish(self) -> None:
        """What a runtime does afterwards: the DELs that failed, again."""
        for node in NODES:
            for pod in sorted(self.undone[node]):
                poll(lambda n=node, p=pod: self._undo(n, p), timeout=60, what=f"DEL of {pod} on {node}")  # type: ignore[misc]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab("x", len(NODES)) as (name, ssh_config):
        lab = Lab(name, ssh_config)
        out = lab.deploy()
        assert grand_total(out.stdout + out.stderr)[1] == 0
        yield lab


def underlay(lab: Lab) -> str:
    status = json.loads(run_cli("weave-node", "lab", "status", "--json", "--name", lab.name, check=True).stdout)
    return str(status["underlay_netns"])


def cut(lab: Lab, a: str, b: str, on: bool) -> None:
    """Drop everything between two hosts on the underlay bridge (br_netfilter makes bridged IPv4 go through the
    underlay namespace's FORWARD chain)."""
    import subprocess

    ns = underlay(lab)
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"], check=True)
    op = "-I" if on else "-D"
    for src, dst in ((a, b), (b, a)):
        rule = ["-s", f"198.18.0.{src[-1]}", "-d", f"198.18.0.{dst[-1]}", "-j", "DROP"]
        subprocess.run(["ip", "netns", "exec", ns, "iptables", op, "FORWARD", *rule], check=True)


def ipam(lab: Lab, node: str) -> dict[str, Any]:
    return dict(lab.status(node).get("ipam") or {})


def test_faults_during_a_rollout_lose_and_duplicate_nothing(lab: Lab) -> None:
    rollout: dict[str, Any] = {}

    def roll() -> None:
        t0 = time.monotonic()
        out = run_cli("pyinfra", "-y", "inventory/lab.py", "deploys/weave_node.py", "--data", SETTING, env=lab.env,
                      timeout=300)  # fmt: skip
        rollout.update(rc=out.returncode, took=time.monotonic() - t0)

    with Churn(lab) as churn:
        poll(lambda: churn.stats["add"] >= 6, timeout=60, what="pods being added")
        runner = threading.Thread(target=roll, daemon=True)
        runner.start()
        lab.ssh("node2", "systemctl kill -s KILL weave-node", check=False)  # systemd restarts it
        cut(lab, "node1", "node3", True)  # a partition that lasts 20 s (a duration, not a wait for some state)
        try:
            time.sleep(5)
            # node3 rebooted in the middle of it, while the rollout runs: its pods go with the reboot (their
            # network namespaces are in its /run)
            churn.paused.add("node3")
            with churn.busy["node3"], churn.lock:
                gone = dict(churn.live["node3"])
                churn.live["node3"].clear()
                churn.undone["node3"].clear()
            started = lab.ssh("node3", "cut -d' ' -f22 /proc/1/stat").stdout.strip()  # PID 1's start time
            t0 = time.monotonic()
            run_cli("weave-node", "lab", "reboot", "--name", lab.name, "node3", check=True)
            took = time.monotonic() - t0
            assert lab.ssh("node3", "cut -d' ' -f22 /proc/1/stat").stdout.strip() != started, "no reboot"
            churn.paused.discard("node3")
            time.sleep(max(0.0, 15 - took))
        finally:
            cut(lab, "node1", "node3", False)
        runner.join(timeout=900)
        time.sleep(5)  # a few more pods added and deleted after the faults (a duration, not a wait)
    churn.finish()
    print(f"\nchaos: {churn.stats}; node3 rebooted in {took:.1f} s, {len(gone)} of its pods went with it; rollout "  # noqa: T201
          f"during the faults: rc {rollout.get('rc')} after {rollout.get('took', 0):.0f} s")  # fmt: skip

    final = lab.deploy("--data", SETTING)
    assert grand_total(final.stdout + final.stderr)[1] == 0
    healed = time.monotonic()
    for node in NODES:
        poll(lambda n=node: ipam(lab, n).get("ready"), timeout=120, what=f"{node} IPAM ready")  # type: ignore[misc]
    # As the runtime does after a reboot: GC with the attachments still valid (those added since).
    gc_conf = verify.CONF.replace('p.update(cniVersion=d["cniVersion"]', 'p.update(cniVersion="1.1.0"')
    valid = json.dumps([{"containerID": p, "ifname": "eth0"} for p in sorted(churn.live["node3"])])
    gc = gc_conf.replace("print(json.dumps(p))", f'p["cni.dev/valid-attachments"] = {valid}; print(json.dumps(p))')
    out = lab.ssh("node3", _cni("GC", "gc", gc), check=False)
    assert out.returncode == 0, out.stdout + out.stderr

    owners = {node: sorted((o["peer"], o["size"]) for o in ipam(lab, node)["owners"]) for node in NODES}
    poll(lambda: len({json.dumps(sorted((o["peer"], o["size"]) for o in ipam(lab, n)["owners"])) for n in NODES})
         == 1, timeout=60, what="every host's ring the same")  # fmt: skip
    held: dict[str, str] = {}
    for node in NODES:
        rows = json.loads(lab.ssh(node, f"{CLI} ipam allocations --json").stdout)
        allocated = {r["container_id"]: r["ip"] for r in rows}
        bridge = allocated.pop("weave:bridge")
        assert allocated == churn.live[node], f"{node}: allocations != its live pods (leaked or lost)"
        for pod, ip in allocated.items():
            actual = lab.ssh(node, f"ip -n {pod} -4 -o addr show eth0").stdout.split()[3].split("/")[0]
            assert actual == ip, f"{node}/{pod} has {actual}, IPAM says {ip}"
        for owner, ip in [(f"{node}/bridge", bridge), *((f"{node}/{p}", i) for p, i in allocated.items())]:
            assert ip not in held, f"{ip} held by {held[ip]} and {owner}"
            held[ip] = owner
    # Pods reach each other again: one per host to one on every other host.
    first = {node: next(iter(sorted(churn.live[node]))) for node in NODES if churn.live[node]}
    for a, pa in first.items():
        for b, pb in first.items():
            if a != b:
                ip = churn.live[b][pb]
                poll(lambda a=a, pa=pa, ip=ip: lab.ssh(a, f"ip netns exec {pa} ping -c 1 -W 1 {ip}", check=False)  # type: ignore[misc]
                     .returncode == 0, timeout=REACH_BOUND, what=f"{a}/{pa} -> {b}/{pb}")  # fmt: skip
    print(f"chaos: every pod reaches every host's pod {time.monotonic() - healed:.1f} s after the final rollout; "  # noqa: T201
          f"{len(held)} addresses, owners {owners['node1']}")  # fmt: skip
    again = lab.deploy("--data", SETTING)
    assert grand_total(again.stdout + again.stderr)[:2] == (0, 0)
