"""CNI plugin numbers: ADD/DEL latency through a real CNI runtime (libcni), the plugin's start-up, and pod churn on
two hosts.

    .venv/bin/python bench/cni_bench.py [--pods 200] [--block 20] [--version-runs 200] [--churn 100]

Needs root: hosts are network namespaces on an underlay bridge with real routers and the kernel datapath
(tests/netns/hosts.py); pods are network namespaces; the CNI runtime is tests/cni/driver (Debian's libcni 1.1.2)
run inside the host's namespace. Everything is created under names of this process and deleted at the end,
also on failure; nothing is added to the root namespace (libcni's cache and host-local's dataDir are in a
temporary directory). Baselines measured in the same run:
- latency: Debian's reference plugins (/usr/lib/cni, 1.1.1) `bridge` (cnibr0, isGateway) + `host-local`
  (10.123.0.0/16) through the same driver in the same host namespace, alone and with `portmap` chained, against
  `weave-net` alone and `weave-net` + `portmap` (the deployed conflist). No port mappings are requested (the
  common pod), so portmap is one more exec of a plugin that has nothing to do. Each pod is a fresh namespace
  created before the clock starts; only the driver call is timed (it includes `ip netns exec` into the host,
  the same for every setup). Pods are done in blocks (`--block` ADDs, then their DELs), and the setups take
  turns block by block, the order rotating, so noise hits all of them. Diagnostic: the router's own
  POST /cni/add and /cni/del over its unix socket (a new connection per call, as the plugin does), no exec;
  and the driver's floor: a conflist with only the reference `loopback` plugin (driver + one Go plugin exec).
- start-up: `CNI_COMMAND=VERSION weave-net` (the static Go executable, as installed) against the same call of
  Debian's `loopback` plugin (Go), interleaved run by run. Diagnostic: `/usr/bin/python3 -S -I -c pass`, the
  floor the Python plugin had (until 0.3.0).
- churn: 100 ADD then 100 DEL per host, both hosts at once (one thread each), the deployed conflist (weave-net +
  portmap) against bridge + host-local + portmap on the same two hosts; afterwards no allocation, no vethwe*
  link and no pending DEL may be left (host-local: no reservation, no veth on cnibr0), and weave-net must not
  have given one address twice (across both hosts: one IPAM ring).
The VM has 2 cores and about +-10-15 % noise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import BIN, REPO, terminate_cleanly

from tests.cni.libcni import REFERENCE_PLUGINS, Driver, ensure_driver
from tests.cni.test_weave_net import Node, make_node, render_conflist
from tests.netns.hosts import netns_hosts, start_mesh
from weave_node.api.client import request

REF_BRIDGE = "cnibr0"
REF_SUBNET = "10.123.0.0/16"
REF_NAME = "cnibench-ref"
CNI_VERSION = "1.0.0"
WEAVE_281 = {"ADD": (63.0, 107.0), "DEL": (29.0, 57.0)}  # /work/shared/CNI-NOTES.md, same driver, this machine
SYS_PYTHON = "/usr/bin/python3"
PREFIX = f"wnc{os.getpid() % 100000}"


# --- small tools ---------------------------------------------------------------------------------------


def ms(seconds: float) -> float:
    return seconds * 1000.0


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[98] if len(xs) > 1 else xs[0]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


class PodNamespaces:
    """Pod namespaces named after this process; whatever is left is deleted by close()."""

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.count = 0
        self.lock = threading.Lock()

    def create(self, tag: str) -> tuple[str, str]:
        with self.lock:
            self.count += 1
            name = f"{PREFIX}-{tag}-{self.count}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        with self.lock:
            self.live.add(name)
        return name, f"/run/netns/{name}"

    def delete(self, names: list[str]) -> None:
        if not names:
            return
        subprocess.run(
            ["ip", "-batch", "-"], input="".join(f"netns delete {n}\n" for n in names), text=True, check=True
        )
        with self.lock:
            self.live.difference_update(names)

    def close(self) -> None:
        for name in sorted(self.live):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        self.live.clear()


@dataclass
class Setup:
    """One way of plumbing a pod: add(cid, netns path) -> IP, delete(cid, netns path)."""

    label: str
    tag: str
    add: Callable[[str, str], str]
    delete: Callable[[str, str], None]
    adds: list[float] = field(default_factory=list)
    dels: list[float] = field(default_factory=list)
    unique: bool = True  # ADD returns a distinct pod address each time


def ref_conflist(path: Path, data_dir: Path, portmap: bool) -> Path:
    plugins: list[dict[str, Any]] = [
        {
            "type": "bridge",
            "bridge": REF_BRIDGE,
            "isGateway": True,
            "ipam": {"type": "host-local", "subnet": REF_SUBNET, "dataDir": str(data_dir)},
        }
    ]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
    path.write_text(json.dumps({"cniVersion": CNI_VERSION, "name": REF_NAME, "plugins": plugins}))
    return path


def weave_conflist(node: Node, path: Path, portmap: bool) -> Path:
    doc = render_conflist(CNI_VERSION, node.router.socket, node.pending)
    assert [p["type"] for p in doc["plugins"]] == ["weave-net", "portmap"], doc
    if not portmap:
        doc["plugins"] = doc["plugins"][:1]
    path.write_text(json.dumps(doc))
    return path


def driver_setup(label: str, tag: str, driver: Driver, conflist: Path, unique: bool = True) -> Setup:
    def add(cid: str, netns: str) -> str:
        result = driver.add(conflist, cid, netns)
        return str(result["ips"][0]["address"].split("/")[0]) if unique else ""

    def delete(cid: str, netns: str) -> None:
        driver.delete(conflist, cid, netns)

    return Setup(label, tag, add, delete, unique=unique)


def loopback_conflist(path: Path) -> Path:
    path.write_text(json.dumps({"cniVersion": CNI_VERSION, "name": "cnibench-lo", "plugins": [{"type": "loopback"}]}))
    return path


def api_setup(label: str, tag: str, node: Node) -> Setup:
    sock = str(node.router.socket)

    def add(cid: str, netns: str) -> str:
        body = {"container_id": cid, "ifname": "eth0", "netns": netns, "hairpin": True}
        return str(request("POST", "/cni/add", socket_path=sock, body=body, timeout=60)["ip"])

    def delete(cid: str, netns: str) -> None:
        request("POST", "/cni/del", socket_path=sock, body={"container_id": cid, "ifname": "eth0", "netns": netns})

    return Setup(label, tag, add, delete)


def ref_leftovers(node: Node, data_dir: Path) -> list[str]:
    """host-local reservations and veths on the reference bridge still there."""
    net_dir = data_dir / REF_NAME
    left = (
        [p.name for p in net_dir.iterdir() if not p.name.startswith(("last_reserved_ip", "lock"))]
        if net_dir.exists()
        else []
    )
    out = node.router.host.run("ip", "-o", "link", "show", "master", REF_BRIDGE, check=False).stdout
    return left + [line.split(":")[1].strip() for line in out.splitlines()]


def weave_leftovers(node: Node) -> list[str]:
    pending = [p.name for p in node.pending.glob("*.json")] if node.pending.exists() else []
    return [f"allocation {a['container_id']} {a['ip']}" for a in node.allocations()] + node.veths() + pending


# --- ADD / DEL latency ----------------------------------------------------------------------------------


def latency(setups: list[Setup], pods: PodNamespaces, count: int, block: int, warmup: int) -> None:
    def one_block(setup: Setup, n: int, record: bool) -> None:
        tag = setup.tag
        made = [pods.create(tag) for _ in range(n)]
        ids = [f"{tag}-{name.rsplit('-', 1)[1]}" for name, _ in made]
        ips = []
        for cid, (_, path) in zip(ids, made, strict=True):
            dt, ip = timed(lambda cid=cid, path=path: setup.add(cid, path))
            ips.append(ip)
            if record:
                setup.adds.append(dt)
        assert not setup.unique or len(set(ips)) == n, (setup.label, ips)
        for cid, (_, path) in zip(ids, made, strict=True):
            dt, _ = timed(lambda cid=cid, path=path: setup.delete(cid, path))
            if record:
                setup.dels.append(dt)
        pods.delete([name for name, _ in made])

    for setup in setups:
        one_block(setup, warmup, record=False)
    blocks = (count + block - 1) // block
    for b in range(blocks):
        n = min(block, count - b * block)
        k = b % len(setups)
        for setup in setups[k:] + setups[:k]:
            one_block(setup, n, record=True)
        print(f"  block {b + 1}/{blocks}: " + ", ".join(f"{s.label} {ms(p50(s.adds)):.1f}" for s in setups), flush=True)


def report_latency(setups: dict[str, Setup], goals: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    print(f"  {'setup':<36}{'ADD p50':>9}{'ADD p99':>9}{'DEL p50':>9}{'DEL p99':>9}   (ms)")
    for key, s in setups.items():
        row = {"add": (ms(p50(s.adds)), ms(p99(s.adds))), "del": (ms(p50(s.dels)), ms(p99(s.dels))), "n": len(s.adds)}
        out[key] = row
        print(f"  {s.label:<36}{row['add'][0]:>9.1f}{row['add'][1]:>9.1f}{row['del'][0]:>9.1f}{row['del'][1]:>9.1f}")
    print(f"  Weave 2.8.1 (CNI-NOTES, not this run) {WEAVE_281['ADD'][0]:>5.1f}{WEAVE_281['ADD'][1]:>9.1f}", end="")
    print(f"{WEAVE_281['DEL'][0]:>9.1f}{WEAVE_281['DEL'][1]:>9.1f}")
    for ours, ref in goals:
        for op in ("add", "del"):
            r50 = out[ours][op][0] / out[ref][op][0]
            r99 = out[ours][op][1] / out[ref][op][1]
            verdict = "met" if r50 <= 1.0 and r99 <= 1.5 else "MISSED"
            print(
                f"  {op.upper()} {setups[ours].label} / {setups[ref].label}: p50 x{r50:.2f} (goal <= 1.0), "
                f"p99 x{r99:.2f} (goal <= 1.5) -> {verdict}"
            )
            out.setdefault("ratios", {})[f"{ours}/{ref}/{op}"] = (r50, r99, verdict)
    return out


# --- start-up and import time ---------------------------------------------------------------------------


def startup(runs: int) -> dict[str, Any]:
    env = dict(os.environ, CNI_COMMAND="VERSION")
    installed = Path(tempfile.mkdtemp(prefix="cnibench-bin-"))
    subprocess.run([str(BIN / "weave-node"), "install-cni-plugin", "--dir", str(installed)], check=True)
    cmds = {
        "ref": ("Debian's loopback plugin (Go, baseline)", [f"{REFERENCE_PLUGINS}/loopback"]),
        "plugin": ("weave-net as installed (static Go)", [str(installed / "weave-net")]),
        "sys": ("diag: /usr/bin/python3 -S -I -c pass", [SYS_PYTHON, "-S", "-I", "-c", "pass"]),
    }
    for _, argv in cmds.values():
        out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, cwd="/")
        if argv[-1] != "pass":
            doc = json.loads(out.stdout)
            assert "1.0.0" in doc["supportedVersions"] and not out.stderr, out
    samples: dict[str, list[float]] = {k: [] for k in cmds}
    keys = list(cmds)
    for run in range(runs + 5):
        k = run % len(keys)
        for key in keys[k:] + keys[:k]:
            dt, _ = timed(
                lambda key=key: subprocess.run(cmds[key][1], env=env, capture_output=True, check=True, cwd="/")
            )
            if run >= 5:  # the first 5 rounds warm the page cache
                samples[key].append(dt)
    shutil.rmtree(installed, ignore_errors=True)
    base = p50(samples["ref"])
    print(f"  {'command':<44}{'p50':>7}{'p99':>7}{'x baseline':>12}   (ms, {runs} runs each, interleaved)")
    out: dict[str, Any] = {}
    for key, (label, _) in cmds.items():
        row = (ms(p50(samples[key])), ms(p99(samples[key])))
        out[key] = row
        print(f"  {label:<44}{row[0]:>7.1f}{row[1]:>7.1f}{p50(samples[key]) / base:>12.2f}")
    return out


# --- churn ----------------------------------------------------------------------------------------------


def churn(label: str, hosts: list[tuple[Setup, str]], pods: PodNamespaces, count: int, shared_pool: bool) -> float:
    """`count` ADDs then `count` DELs on every host at once (a thread per host); wall time of the whole."""
    made = {tag: [pods.create(tag) for _ in range(count)] for _, tag in hosts}
    ips: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(hosts) + 1)

    def work(setup: Setup, tag: str) -> None:
        start.wait()
        try:
            ids = [f"{tag}-{name.rsplit('-', 1)[1]}" for name, _ in made[tag]]
            ips[tag] = [setup.add(cid, path) for cid, (_, path) in zip(ids, made[tag], strict=True)]
            for cid, (_, path) in zip(ids, made[tag], strict=True):
                setup.delete(cid, path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=host) for host in hosts]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    pods.delete([name for tag in made for name, _ in made[tag]])
    if errors:
        raise errors[0]
    for tag, got in ips.items():
        assert len(set(got)) == count, (label, tag, "duplicate addresses on one host")
    if shared_pool:
        every = [ip for got in ips.values() for ip in got]
        assert len(set(every)) == len(every), (label, "the same address on two hosts")
    print(f"  {label}: {wall:.2f} s", flush=True)
    return wall


# --- main -----------------------------------------------------------------------------------------------


def network_part(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    binary = ensure_driver()
    pods = PodNamespaces()
    results: dict[str, Any] = {}
    try:
        with netns_hosts(2, tmp / "hosts") as net:
            routers = start_mesh(net)
            nodes = [make_node(r, binary, tmp / f"node{i}") for i, r in enumerate(routers, 1)]
            h1 = nodes[0]
            ref_data = [tmp / f"host-local-h{i}" for i in (1, 2)]
            drv = h1.driver
            setups = {
                "weave": driver_setup("weave-net", "w", drv, weave_conflist(h1, tmp / "w.conflist", False)),
                "ref": driver_setup(
                    "bridge + host-local (baseline)", "r", drv, ref_conflist(tmp / "r.conflist", ref_data[0], False)
                ),
                "weave_pm": driver_setup(
                    "weave-net + portmap", "wp", drv, weave_conflist(h1, tmp / "wp.conflist", True)
                ),
                "ref_pm": driver_setup(
                    "bridge + host-local + portmap", "rp", drv, ref_conflist(tmp / "rp.conflist", ref_data[0], True)
                ),
                "api": api_setup("diag: router POST /cni/add|del", "api", h1),
                "floor": driver_setup(
                    "diag: loopback plugin alone", "lo", drv, loopback_conflist(tmp / "lo.conflist"), unique=False
                ),
            }
            print(f"ADD/DEL latency through libcni, {args.pods} pods per setup, blocks of {args.block}, host h1")
            latency(list(setups.values()), pods, args.pods, args.block, warmup=3)
            results["latency"] = report_latency(setups, [("weave", "ref"), ("weave_pm", "ref_pm")])
            left = weave_leftovers(h1) + ref_leftovers(h1, ref_data[0])
            assert not left, f"left after the latency runs: {left}"

            print(f"pod churn: {args.churn} ADD then {args.churn} DEL per host, 2 hosts at once")
            weave_hosts = [
                (driver_setup("weave", f"cw{i}", n.driver, weave_conflist(n, tmp / f"cw{i}.conflist", True)), f"cw{i}")
                for i, n in enumerate(nodes, 1)
            ]
            ref_hosts = [
                (driver_setup("ref", f"cr{i}", n.driver, ref_conflist(tmp / f"cr{i}.conflist", d, True)), f"cr{i}")
                for i, (n, d) in enumerate(zip(nodes, ref_data, strict=True), 1)
            ]
            walls: dict[str, list[float]] = {"weave": [], "ref": []}
            for rnd in range(args.churn_rounds):
                order = ["ref", "weave"] if rnd % 2 == 0 else ["weave", "ref"]
                for which in order:
                    name = "weave-net + portmap" if which == "weave" else "bridge + host-local + portmap"
                    label = f"round {rnd + 1}, {name}"
                    walls[which].append(
                        churn(label, weave_hosts if which == "weave" else ref_hosts, pods, args.churn, which == "weave")
                    )
                    left = [x for n in nodes for x in weave_leftovers(n)] + [
                        x for n, d in zip(nodes, ref_data, strict=True) for x in ref_leftovers(n, d)
                    ]
                    assert not left, f"leaked after churn ({which}): {left}"
            w, r = statistics.median(walls["weave"]), statistics.median(walls["ref"])
            print(f"  median wall: weave-net {w:.2f} s, baseline {r:.2f} s (x{w / r:.2f}); leaked: 0 IPs, 0 links")
            print(
                f"  goal {args.churn} ADD+DEL per host in <= 10 s with 0 leaked IPs -> {'met' if w <= 10 else 'MISSED'}"
            )
            results["churn"] = {"weave": walls["weave"], "ref": walls["ref"]}
            log = "\n".join(r.log_text() for r in routers)
            bad = [line for line in log.splitlines() if re.search(r"ERROR|Traceback|WARNING", line)]
            if bad:
                print("  router log lines worth a look:\n    " + "\n    ".join(bad[:20]))
    finally:
        pods.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=200, help="pods per setup for ADD/DEL latency")
    ap.add_argument("--block", type=int, default=20, help="pods per block (setups take turns by block)")
    ap.add_argument("--version-runs", type=int, default=200)
    ap.add_argument("--churn", type=int, default=100, help="pods per host for the churn")
    ap.add_argument("--churn-rounds", type=int, default=2)
    ap.add_argument("--only", choices=["latency", "startup"], action="append", help="latency includes churn")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    only = set(args.only or ["latency", "startup"])
    tmp = Path(tempfile.mkdtemp(prefix="weave-cni-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    git = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True, cwd=REPO, check=False).stdout
    print(f"commit {commit.strip() or '?'}, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs")
    results: dict[str, Any] = {"commit": commit.strip()}
    ok = False
    with terminate_cleanly():
        try:
            if "startup" in only:
                print(f"plugin start-up, {args.version_runs} runs per command")
                results["startup"] = startup(args.version_runs)
            if "latency" in only:
                results.update(network_part(tmp, args))
            ok = True
        finally:
            if args.json:
                args.json.write_text(json.dumps(results, indent=1, default=str))
            if ok:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                print(f"logs kept in {tmp}", file=sys.stderr)


if __name__ == "__main__":
    main()
