"""Datapath numbers: TCP throughput pod -> pod across hosts, time from a peer joining to its first delivered
packet, and the cost of adding one peer to a host's datapath.

    .venv/bin/python bench/datapath_bench.py [--runs 3] [--seconds 5] [--join-runs 3] [--peers 0,10,100,1000]

Needs root: hosts are network namespaces on an underlay bridge (tests/netns/hosts.py), pods are namespaces on
each host's bridge; everything is created under names of this process and deleted at the end, also on failure.
Nothing is added to the root namespace. Baselines measured in the same run:
- throughput: `iperf3 -c -t S -O 1 -J` (one TCP stream, median of `runs`), interleaved run by run between
  (a) the underlay alone: host to host over eth0, MTU 1500, no encapsulation;
  (b) the same pod -> pod path built by hand with `ip` commands: bridge + kernel VXLAN (learning, one flood
      entry per remote host), veth pods, MTU 1450, no iptables rules;
  (c) ours: two real `weave-node router` processes, pods plumbed by the router's pod API, IPAM addresses;
  (d) diagnostic: (b) plus weave-node's own iptables chains (conntrack, br_netfilter), to show what they cost;
  (e) ours with `--bridge-netfilter on` (what a Kubernetes node runs: bridged pod traffic through iptables);
  (f) ours in direct mode (the default between hosts on one subnet: routed over the underlay, no VXLAN);
  (g) direct's reference, flannel's host-gw built by hand: a bridge and a /24 of pods per host, a route per other
      host, veth pods with MTU 1450, no iptables rules.
  (c) and (e) run with --no-direct: they measure fastdp itself.
  The order of the paths rotates from run to run.
- join: router on h1 with a pod; the router on h2 (peer h1) is started at t = 0; its pod is attached as soon as
  IPAM gives h2 a bridge address; a UDP prober in the h2 pod (10 ms ARP retransmit, so ARP timers do not
  quantise the result) sends every 5 ms until the h1 pod receives one. Also: when each side reports the other
  in mode "fastdp". Baseline: the process answering its API at all.
- peer cost: in a namespace of our own, a datapath for N fake peers (desired_state from peer_entries), then
  one more peer added the way the router does it (observe with sysctls and iptables, plan, apply), timed; the
  baseline is the same entries added with `bridge fdb append` / `ip neigh replace` in one `-batch` each.
The VM has 2 cores and about +-10-15 % noise; iperf3's client, server and both kernels' softirqs share them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import BIN, REPO, terminate_cleanly

from tests.helpers import poll
from tests.netns.hosts import Net, RouterProc, netns_hosts
from tests.netns.pods import PodNs, make_pod, remove_pods
from weave_node.api.client import _UnixHTTPConnection
from weave_node.datapath import netlink
from weave_node.datapath.iptables import TABLES, weave_chains
from weave_node.datapath.model import BRIDGE, FLOOD_MAC, VXLAN, Desired, bridge_mac
from weave_node.datapath.plan import Plan, RestoreTable, plan
from weave_node.lab.system import ip_batch
from weave_node.overlay.desired import SYSCTL_BRIDGE_NF, SYSCTL_FORWARD, Settings, desired_state, peer_entries
from weave_node.overlay.peers import PeerInfo

# fastdp as such (these hosts share a subnet: without --no-direct they would go direct, measured as its own path)
FAST = ["--heartbeat-interval", "0.5", "--gossip-interval", "1", "--no-direct"]
IPERF_PORT = 5201
IPERF_ARGS = ("-J", "-O", "1", "-t")  # JSON, omit the first second (slow start), duration
PROBE_PORT = 7000
HAND_VNI = 42
HAND_PORT = 6784
HAND_RANGE = "10.99.0.0/24"
OVERLAY_MTU = 1450
SELF = str(Path(__file__).resolve())


# --- small tools ---------------------------------------------------------------------------------------


def status(r: RouterProc, timeout: float = 2.0) -> dict[str, Any]:
    """The router's /status over its unix socket, in-process ({} while it does not answer)."""
    if not r.socket.exists():
        return {}
    conn = _UnixHTTPConnection(str(r.socket), timeout)
    try:
        conn.request("GET", "/status")
        resp = conn.getresponse()
        doc: dict[str, Any] = json.loads(resp.read()) if resp.status == 200 else {}
        return doc
    except (OSError, ValueError):
        return {}
    finally:
        conn.close()


def peer_mode(r: RouterProc, nickname: str) -> str:
    for p in status(r).get("datapath", {}).get("peers", []):
        if p.get("nickname") == nickname:
            return str(p.get("mode"))
    return ""


def launch_router(net: Net, index: int, *args: str) -> RouterProc:
    """Like Net.start_router(datapath=True) but returns at once (the caller times the start-up itself); the
    process is registered with `net`, so leaving netns_hosts() kills it."""
    host = net.hosts[index - 1]
    sock = host.workdir / "weave.sock"
    log = host.workdir / f"router-{len(net.routers)}.log"
    cmd = ["ip", "netns", "exec", host.netns, str(BIN / "weave-node"), "router", "--nickname", f"h{index}"]
    cmd += ["--state-dir", str(host.workdir / "state"), "--status-socket", str(sock), *args]
    env = dict(os.environ)
    env.pop("WEAVE_PASSWORD", None)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    r = RouterProc(host=host, proc=proc, log=log, socket=sock, args=list(args))
    net.routers.append(r)
    return r


def ns_run(netns: str, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *args], input=input_text, capture_output=True, text=True, check=True, timeout=60
    )


def kill(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- throughput ----------------------------------------------------------------------------------------


@dataclass
class IperfResult:
    bps: float
    retransmits: int


def iperf(src_ns: str, dst_ns: str, dst_ip: str, seconds: int) -> IperfResult:
    server = subprocess.Popen(
        ["ip", "netns", "exec", dst_ns, "iperf3", "-s", "-1", "-B", dst_ip, "-p", str(IPERF_PORT), "--forceflush"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        while "listening" not in (line := server.stdout.readline()):
            if not line:
                raise RuntimeError(f"iperf3 server in {dst_ns} did not start")
        client = subprocess.run(
            ["ip", "netns", "exec", src_ns, "iperf3", "-c", dst_ip, "-p", str(IPERF_PORT), *IPERF_ARGS, str(seconds)],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        doc = json.loads(client.stdout) if client.stdout.strip() else {}
        if client.returncode != 0 or "error" in doc:
            raise RuntimeError(f"iperf3 {src_ns} -> {dst_ip}: {doc.get('error') or client.stderr.strip()}")
        server.wait(timeout=30)
        end = doc["end"]
        return IperfResult(float(end["sum_received"]["bits_per_second"]), int(end["sum_sent"].get("retransmits", 0)))
    finally:
        kill(server)


def hand_ip(i: int) -> str:
    return f"10.99.0.{i}"


def build_by_hand(net: Net) -> list[str]:
    """Bridge + VXLAN + one veth pod per host with `ip`/`bridge` commands; returns the pods' netns names."""
    pods = []
    for i, host in enumerate(net.hosts, 1):
        others = [h.address for h in net.hosts if h is not host]
        pod = f"{host.netns}-hp"
        ip_batch(None, [f"netns add {pod}", f"link add vp netns {host.netns} type veth peer name eth0 netns {pod}"])
        pods.append(pod)
        ip_batch(
            host.netns,
            [
                "link add br0 type bridge",
                f"link set br0 mtu {OVERLAY_MTU} up",
                f"link add vx type vxlan id {HAND_VNI} dstport {HAND_PORT} learning",
                f"link set vx mtu {OVERLAY_MTU} master br0 up",
                f"link set vp mtu {OVERLAY_MTU} master br0 up",
            ],
        )
        subprocess.run(
            ["bridge", "-n", host.netns, "-batch", "-"],
            input="".join(f"fdb append 00:00:00:00:00:00 dev vx dst {o}\n" for o in others),
            text=True,
            check=True,
        )
        ip_batch(pod, ["link set lo up", f"link set eth0 mtu {OVERLAY_MTU} up", f"addr add {hand_ip(i)}/24 dev eth0"])
    return pods


def build_host_gw(net: Net) -> list[str]:
    """What direct mode is measured against: flannel's host-gw by hand. A bridge per host with a /24 of pods, one
    route per other host's /24 via its underlay address, veth pods with MTU 1450 (as ours), no iptables rules."""
    pods = []
    for i, host in enumerate(net.hosts, 1):
        pod = f"{host.netns}-gp"
        ip_batch(None, [f"netns add {pod}", f"link add vg netns {host.netns} type veth peer name eth0 netns {pod}"])
        pods.append(pod)
        routes = [f"route add 10.98.{j}.0/24 via {h.address}" for j, h in enumerate(net.hosts, 1) if h is not host]
        bridge = ["link add br1 type bridge", f"link set br1 mtu {OVERLAY_MTU} up", f"addr add 10.98.{i}.1/24 dev br1"]
        ip_batch(host.netns, [*bridge, f"link set vg mtu {OVERLAY_MTU} master br1 up", *routes])
        ns_run(host.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        link = ["link set lo up", f"link set eth0 mtu {OVERLAY_MTU} up", f"addr add 10.98.{i}.2/24 dev eth0"]
        ip_batch(pod, [*link, f"route add default via 10.98.{i}.1"])
    return pods


def start_mesh(net: Net, *extra: str, mode: str = "fastdp") -> list[RouterProc]:
    addrs = [h.address for h in net.hosts]
    flags = FAST if mode == "fastdp" else [f for f in FAST if f != "--no-direct"]
    routers = [
        launch_router(net, i, *flags, *extra, *[a for a in addrs if a != h.address]) for i, h in enumerate(net.hosts, 1)
    ]
    for r in routers:
        others = [f"h{i}" for i in range(1, len(routers) + 1) if routers[i - 1] is not r]
        poll(
            lambda r=r, others=others: all(peer_mode(r, o) == mode for o in others),
            timeout=60,
            what=f"{r.host.netns}: {mode} to every peer",
            interval=0.1,
        )
    return routers


def vxlan_details(netns: str, dev: str) -> str:
    words = " ".join(ns_run(netns, "ip", "-d", "link", "show", "dev", dev).stdout.split())
    start = words.find("vxlan id")
    return words[start : words.find(" bridge_slave", start)] if start >= 0 else words


def ns_file(netns: str, path: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", netns, "cat", path], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "-"


def add_weave_rules(net: Net) -> None:
    """weave-node's own chains (for the hand-built range and bridge) in each host: what ours pays for them."""
    chains = weave_chains(HAND_RANGE, "br0")
    for host in net.hosts:
        for table in TABLES:
            mine = tuple(c for c in chains if c.table == table)
            op = RestoreTable(table, mine, tuple((c.hook, c.jump) for c in mine))
            ns_run(host.netns, "iptables-restore", "--noflush", "-w", "5", input_text=op.text())
        ns_run(host.netns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")


PATHS = [
    ("underlay", "underlay veth alone (MTU 1500)"),
    ("hand", "hand-built bridge+VXLAN (1450)"),
    ("ours", "weave-node pod -> pod (1450)"),
    ("hand_ipt", "hand-built + weave-node's iptables"),
    ("ours_bnf", "ours, --bridge-netfilter on"),
    ("host_gw", "hand-built host-gw routes (1450)"),
    ("direct", "ours, direct mode (no encapsulation)"),
]


def throughput(base: Path, runs: int, seconds: int) -> dict[str, Any]:
    results: dict[str, list[IperfResult]] = {key: [] for key, _ in PATHS}
    pods: list[PodNs] = []
    hand_pods: list[str] = []
    with (
        netns_hosts(2, base / "hand") as hand,
        netns_hosts(2, base / "ours") as ours,
        netns_hosts(2, base / "hand-ipt") as hand_ipt,
        netns_hosts(2, base / "ours-bnf") as ours_bnf,
        netns_hosts(2, base / "direct") as direct,
        netns_hosts(2, base / "host-gw") as host_gw,
    ):
        try:
            for net in (hand, hand_ipt):
                hand_pods += build_by_hand(net)
            hand_pods += build_host_gw(host_gw)
            add_weave_rules(hand_ipt)
            routers = start_mesh(ours)
            pods.append(make_pod(routers[0], "ta"))  # one by one: a failure still removes those made
            pods.append(make_pod(routers[1], "tb"))
            routers_bnf = start_mesh(ours_bnf, "--bridge-netfilter", "on")
            pods.append(make_pod(routers_bnf[0], "ka"))
            pods.append(make_pod(routers_bnf[1], "kb"))
            routers_direct = start_mesh(direct, mode="direct")
            pods.append(make_pod(routers_direct[0], "da"))
            pods.append(make_pod(routers_direct[1], "db"))
            h1, h2 = hand.hosts
            pairs = {  # (source netns, destination netns, destination address)
                "underlay": (h1.netns, h2.netns, h2.address),
                "hand": (hand_pods[0], hand_pods[1], hand_ip(2)),
                "ours": (pods[0].name, pods[1].name, pods[1].ip),
                "hand_ipt": (hand_pods[2], hand_pods[3], hand_ip(2)),
                "ours_bnf": (pods[2].name, pods[3].name, pods[3].ip),
                "direct": (pods[4].name, pods[5].name, pods[5].ip),
                "host_gw": (hand_pods[4], hand_pods[5], "10.98.2.2"),
            }
            for src, _, dst_ip in pairs.values():  # every path works before timing
                ns_run(src, "ping", "-c", "1", "-W", "5", dst_ip)
            print(f"throughput: iperf3, 1 TCP stream, {seconds} s (first second omitted), median of {runs} runs")
            keys = list(pairs)
            for run in range(runs):
                for key in keys[run % len(keys) :] + keys[: run % len(keys)]:  # rotate: no path always goes first
                    results[key].append(iperf(*pairs[key], seconds))
                print(f"  run {run + 1}: " + ", ".join(f"{k} {v[-1].bps / 1e9:.2f}" for k, v in results.items()))
            bnf = "/proc/sys/net/bridge/bridge-nf-call-iptables"
            ct = "/proc/sys/net/netfilter/nf_conntrack_count"
            details = {
                "hand vxlan": vxlan_details(h1.netns, "vx"),
                "ours vxlan": vxlan_details(ours.hosts[0].netns, "vxlan-6784"),
                "bridge-nf-call-iptables (hand, ours, hand+ipt, ours on)": ", ".join(
                    ns_file(n.hosts[0].netns, bnf) for n in (hand, ours, hand_ipt, ours_bnf)
                ),
                "conntrack entries on h1 (hand, ours, hand+ipt, ours on)": ", ".join(
                    ns_file(n.hosts[0].netns, ct) for n in (hand, ours, hand_ipt, ours_bnf)
                ),
            }
        finally:
            remove_pods(pods)
            for pod in hand_pods:
                subprocess.run(["ip", "netns", "delete", pod], capture_output=True, check=False)
    med = {k: median([r.bps for r in v]) for k, v in results.items()}
    rtx = {k: median([float(r.retransmits) for r in v]) for k, v in results.items()}
    print(f"  {'path':<38}{'Gbit/s':>8}{'retr':>7}{'x hand':>8}{'x underlay':>11}")
    for key, label in PATHS:
        print(
            f"  {label:<38}{med[key] / 1e9:>8.2f}{rtx[key]:>7.0f}"
            f"{med[key] / med['hand']:>8.2f}{med[key] / med['underlay']:>11.2f}"
        )
    goal = med["ours"] / med["hand"]
    print(f"  goal ours >= 0.97 x hand-built: {goal:.2f} -> {'met' if goal >= 0.97 else 'MISSED'}")
    print(f"  ours / (hand-built + the same iptables rules): {med['ours'] / med['hand_ipt']:.2f}")
    direct_goal = med["direct"] / med["underlay"]
    print(f"  goal direct >= 0.95 x underlay: {direct_goal:.2f} -> {'met' if direct_goal >= 0.95 else 'MISSED'}")
    print(f"  direct / hand-built host-gw: {med['direct'] / med['host_gw']:.2f}")
    for k, v in details.items():
        print(f"  {k}: {v}")
    return {"median_bps": med, "retransmits": rtx, "details": details}


# --- join --------------------------------------------------------------------------------------------

UDP_ECHO = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
first = None
while True:
    data, addr = s.recvfrom(64)
    if first is None:
        first = time.monotonic(); print("first", repr(first), flush=True)
    s.sendto(data, addr)
"""

UDP_PROBE = """
import socket, sys, time
dst, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
print("start", repr(time.monotonic()), flush=True)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.005)
sent = 0
while time.monotonic() < deadline:
    sent += 1
    try:
        s.sendto(b"probe", (dst, port))
        s.recvfrom(64)
    except OSError:
        continue
    print("reply", repr(time.monotonic()), sent, flush=True)
    break
else:
    print("timeout", sent, flush=True); sys.exit(1)
"""


class JoinWatch:
    """Polls both routers and the probe after h2's router is started at `t0`; records when each step happened."""

    def __init__(self, r1: RouterProc, r2: RouterProc, pa: PodNs, server: subprocess.Popen[str], t0: float) -> None:
        self.r1, self.r2, self.pa, self.server, self.t0 = r1, r2, pa, server, t0
        self.t: dict[str, float] = {}
        self.pods: list[PodNs] = []
        self.prober: subprocess.Popen[str] | None = None

    def done(self) -> bool:
        return {"fastdp_h1", "fastdp_h2", "first_packet"} <= set(self.t)

    def step(self) -> None:
        now = time.monotonic()
        s2 = status(self.r2, 1.0)
        if s2:
            self.t.setdefault("api", now)
        dp = s2.get("datapath", {})
        if dp.get("bridge_address") and "pod" not in self.t:
            self.t["bridge"] = now
            self.start_probe()
        if any(p.get("nickname") == "h1" and p.get("mode") == "fastdp" for p in dp.get("peers", [])):
            self.t.setdefault("fastdp_h2", now)
        if peer_mode(self.r1, "h2") == "fastdp":
            self.t.setdefault("fastdp_h1", now)
        if self.prober is not None and self.prober.poll() is not None and "first_packet" not in self.t:
            out = self.prober.communicate()[0]
            if self.prober.returncode != 0:
                raise RuntimeError(f"the h2 pod never reached the h1 pod: {out}")
            words = out.split()
            self.t["probe_start"], self.t["reply"] = float(words[1]), float(words[3])
            kill(self.server)
            first = [ln for ln in self.server.communicate()[0].splitlines() if ln.startswith("first")]
            self.t["first_packet"] = float(first[0].split()[1])

    def start_probe(self) -> None:
        pb = make_pod(self.r2, "jb")
        self.pods.append(pb)
        # ARP retransmit every 10 ms instead of 1 s: the time says when the path works, not when a timer fired.
        pb.run("sysctl", "-qw", "net.ipv4.neigh.eth0.retrans_time_ms=10", "net.ipv4.neigh.eth0.mcast_solicit=200")
        self.t["pod"] = time.monotonic()
        self.prober = pb.popen("python3", "-c", UDP_PROBE, self.pa.ip, str(PROBE_PORT), "30")


def join_once(base: Path) -> dict[str, float]:
    pods: list[PodNs] = []
    procs: list[subprocess.Popen[str]] = []
    with netns_hosts(2, base) as net:
        try:
            r1 = launch_router(net, 1, *FAST)
            poll(lambda: status(r1).get("datapath", {}).get("bridge_address"), timeout=30, what="h1 bridge address")
            pa = make_pod(r1, "ja")
            pods.append(pa)
            server = pa.popen("python3", "-c", UDP_ECHO, str(PROBE_PORT))
            procs.append(server)
            assert server.stdout is not None
            assert server.stdout.readline().strip() == "ready"
            h1_lines = len(r1.log_text().splitlines())
            t0 = time.monotonic()
            r2 = launch_router(net, 2, *FAST, net.hosts[0].address)
            watch = JoinWatch(r1, r2, pa, server, t0)
            try:
                while not watch.done():
                    if time.monotonic() > t0 + 60 or r2.proc.poll() is not None:
                        raise RuntimeError(f"join did not complete: {sorted(watch.t)}\n{r2.log_text()[-3000:]}")
                    watch.step()
                    time.sleep(0.01)
            finally:
                pods += watch.pods
                procs += [watch.prober] if watch.prober else []
            after = r1.log_text().splitlines()[h1_lines:]
            applied = [ln.split("applied ", 1)[1] for ln in after if "datapath: applied" in ln]
            print(f"  h1's syncs for the new peer: {'; '.join(applied) or 'none'}")
            return {k: v - t0 for k, v in watch.t.items()}
        finally:
            for proc in procs:
                kill(proc)
            remove_pods(pods)


def join(base: Path, runs: int) -> dict[str, float]:
    print(f"join: router h2 started (peer h1) -> first packet h2 pod -> h1 pod, {runs} runs")
    samples = []
    for run in range(runs):
        s = join_once(base / f"join{run}")
        samples.append(s)
        print(
            f"  run {run + 1}: api {s['api']:.3f}, bridge addr {s['bridge']:.3f}, pod attached {s['pod']:.3f}, "
            f"first packet {s['first_packet']:.3f}, fastdp on h2 {s['fastdp_h2']:.3f}, on h1 {s['fastdp_h1']:.3f} s"
        )
    keys = ["api", "bridge", "pod", "first_packet", "reply", "fastdp_h2", "fastdp_h1"]
    med = {k: median([s[k] for s in samples]) for k in keys}
    med["pod_to_first_packet"] = median([s["first_packet"] - s["pod"] for s in samples])
    med["probe_to_first_packet"] = median([s["first_packet"] - s["probe_start"] for s in samples])
    labels = {
        "api": "h2 answers its API (baseline)",
        "bridge": "h2 has a bridge address (IPAM)",
        "pod": "h2 pod attached",
        "first_packet": "first packet delivered h2 pod -> h1 pod",
        "reply": "its echo back in the h2 pod",
        "fastdp_h2": "h2 reports h1 fastdp",
        "fastdp_h1": "h1 reports h2 fastdp",
    }
    print(f"  {'median since h2 router started':<42}{'s':>7}{'x api':>7}")
    for k in keys:
        print(f"  {labels[k]:<42}{med[k]:>7.3f}{med[k] / med['api']:>7.2f}")
    print(
        f"  pod attached -> first packet: {med['pod_to_first_packet'] * 1000:.1f} ms, of which the prober's "
        f"python start-up {(med['pod_to_first_packet'] - med['probe_to_first_packet']) * 1000:.1f} ms; "
        f"first probe sent -> delivered: {med['probe_to_first_packet'] * 1000:.1f} ms"
    )
    return med


# --- peer cost ----------------------------------------------------------------------------------------

COST_WORKER = "--cost-worker"


FAKE_BASE = 0x0A0000000000  # fake peer names: 0x0a00_0000_0000 + i


def fake_info(i: int) -> PeerInfo:
    name = FAKE_BASE + i
    return PeerInfo(name, 1, f"10.{32 + i // 65536}.{i // 256 % 256}.{i % 256}", 12, bridge_mac(name), "")


def fake_underlay(i: int) -> str:
    return f"198.18.{i // 250}.{i % 250 + 1}"  # never contacted: FDB entries only name a VTEP


def fake_desired(peers: list[int]) -> Desired:
    settings = Settings(me=1, pod_range="10.32.0.0/12", mtu=OVERLAY_MTU, bridge_nf=True)
    infos = {FAKE_BASE + i: fake_info(i) for i in peers}
    fdb, neigh, _ = peer_entries(set(infos), infos, {FAKE_BASE + i: fake_underlay(i) for i in peers}, 1)
    return desired_state(settings, "10.32.0.1/12", fdb, neigh)


def sync(peers: list[int]) -> tuple[Plan, dict[str, float]]:
    """What the router's reconcile loop does in its own namespace: observe, plan, apply."""
    desired = fake_desired(peers)
    t0 = time.perf_counter()
    observed = netlink.observe(sysctls=[SYSCTL_FORWARD, SYSCTL_BRIDGE_NF])
    t1 = time.perf_counter()
    result = plan(desired, observed)
    t2 = time.perf_counter()
    netlink.apply(result.ops)
    t3 = time.perf_counter()
    return result, {"observe": t1 - t0, "plan": t2 - t1, "apply": t3 - t2, "total": t3 - t0}


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def add_by_hand(i: int) -> float:
    """The baseline: peer i's three entries with one `bridge -batch` and one `ip -batch`."""
    info, vtep = fake_info(i), fake_underlay(i)
    t = time.perf_counter()
    subprocess.run(
        ["bridge", "-batch", "-"],
        input=f"fdb append {FLOOD_MAC} dev {VXLAN} dst {vtep}\nfdb append {info.bridge_mac} dev {VXLAN} dst {vtep}\n",
        text=True,
        check=True,
    )
    subprocess.run(
        ["ip", "-batch", "-"],
        input=f"neigh replace {info.bridge_ip} lladdr {info.bridge_mac} dev {BRIDGE} nud permanent\n",
        text=True,
        check=True,
    )
    return time.perf_counter() - t


def cost_worker(n: int, adds: int) -> None:
    """Runs inside a namespace of its own (peer_cost re-executes this script there); prints one JSON line."""
    peers = list(range(1, n + 1))
    t0 = time.perf_counter()
    initial, _ = sync(peers)
    build = time.perf_counter() - t0
    assert not sync(peers)[0].ops  # converged: an empty plan
    samples: list[dict[str, float]] = []
    kinds: dict[str, int] = {}
    for k in range(adds):
        result, times = sync([*peers, n + 1 + k])
        for op in result.ops:
            kinds[type(op).__name__] = kinds.get(type(op).__name__, 0) + 1
        times["observe_netlink"] = min(timed(lambda: netlink.observe(iptables=False)) for _ in range(3))
        times["ops"] = len(result.ops)
        samples.append(times)
        sync(peers)  # remove it again: every sample adds to a host with exactly n peers
    hand, same = [], 0
    for k in range(adds):
        hand.append(add_by_hand(n + 1 + k))
        same += not plan(fake_desired([*peers, n + 1 + k]), netlink.observe(iptables=False)).ops
        sync(peers)
    keys = ["observe", "observe_netlink", "plan", "apply", "total", "ops"]
    out: dict[str, Any] = {k: median([s[k] for s in samples]) for k in keys}
    out.update(hand=median(hand), hand_same=same, initial_ops=len(initial.ops), initial_s=build, adds=adds)
    print(json.dumps({"result": out, "kinds": {k: v / adds for k, v in kinds.items()}}))


def peer_cost(counts: list[int], adds: int) -> list[dict[str, Any]]:
    print(f"cost of adding one peer to a host with N peers (router's sync: observe + plan + apply), median of {adds}")
    rows = []
    netns = f"wnb-{os.getpid()}-cost"
    for n in counts:
        subprocess.run(["ip", "netns", "add", netns], check=True)
        try:
            out = subprocess.run(
                ["ip", "netns", "exec", netns, sys.executable, SELF, COST_WORKER, str(n), "--adds", str(adds)],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
                cwd=REPO,
            )
        finally:
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"cost worker (N={n}) failed:\n{out.stderr[-3000:]}")
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        doc["n"] = n
        rows.append(doc)
    ms = 1000.0
    print(
        f"  {'N':>5}{'ops':>5}  {'kinds':<28}{'observe':>9}{'(netlink)':>10}{'plan':>7}{'apply':>7}"
        f"{'total':>8}{'by hand':>9}{'x hand':>8}  initial build"
    )
    for doc in rows:
        r = doc["result"]
        kinds = ", ".join(f"{v:g} {k}" for k, v in sorted(doc["kinds"].items()))
        print(
            f"  {doc['n']:>5}{r['ops']:>5.0f}  {kinds:<28}{r['observe'] * ms:>9.1f}{r['observe_netlink'] * ms:>10.1f}"
            f"{r['plan'] * ms:>7.2f}{r['apply'] * ms:>7.2f}{r['total'] * ms:>8.1f}{r['hand'] * ms:>9.1f}"
            f"{r['total'] / r['hand']:>8.2f}  {r['initial_ops']} ops, {r['initial_s'] * ms:.0f} ms"
        )
    print("  (ms; observe = netlink dumps + 2 x iptables-save + sysctls, as in the router; '(netlink)' = dumps only)")
    same = sum(doc["result"]["hand_same"] for doc in rows)
    total = sum(doc["result"]["adds"] for doc in rows)
    print(f"  entries added by hand equal the router's (empty plan afterwards): {same}/{total}")
    return rows


# --- main ------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3, help="iperf3 runs per path")
    ap.add_argument("--seconds", type=int, default=5, help="iperf3 duration")
    ap.add_argument("--join-runs", type=int, default=3)
    ap.add_argument("--peers", default="0,10,100,1000", help="N for the peer cost, comma-separated")
    ap.add_argument("--adds", type=int, default=5, help="samples per N for the peer cost")
    ap.add_argument("--only", choices=["throughput", "join", "cost"], action="append")
    ap.add_argument(COST_WORKER, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cost_worker is not None:
        cost_worker(args.cost_worker, args.adds)
        return
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    only = set(args.only or ["throughput", "join", "cost"])
    tmp = Path(tempfile.mkdtemp(prefix="weave-dp-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    ok = False
    with terminate_cleanly():
        try:
            if "throughput" in only:
                throughput(tmp, args.runs, args.seconds)
            if "join" in only:
                join(tmp, args.join_runs)
            if "cost" in only:
                peer_cost([int(n) for n in args.peers.split(",")], args.adds)
            ok = True
        finally:
            if ok:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                print(f"logs kept in {tmp}", file=sys.stderr)


if __name__ == "__main__":
    main()
