"""DNS numbers: the routers' server against dnsmasq serving the same names from a hosts file, and how long a new
pod's name takes to resolve on another host.

    .venv/bin/python bench/dns_bench.py [--names 50] [--seconds 10] [--latency 2000] [--propagation 20]

Needs root. Three hosts are network namespaces on an underlay bridge with real routers (tests/netns/hosts.py);
pods are added through libcni (tests/cni/driver) with K8S_POD_NAME in CNI_ARGS, as containerd's CRI does.
dnsmasq (Debian's dnsmasq-base) runs in host 1's namespace on the bridge address, port 5353, with the same
names in a hosts file (`--no-resolv --no-hosts --addn-hosts`), so both servers answer the same questions from the
same place; the clients run in a pod on host 1. Installs dnsmasq-base and dnsperf with apt-get when missing.
- throughput: `dnsperf` (Debian) for `--seconds` (the routers run with WEAVE_DNS_CLIENT_RATE=0: one client
  asks far more than the per-client limit lets through), the names in turn, 20 queries in flight, the two servers one
  after the other, twice, alternating.
- latency: one query at a time from a Python client (the same client for both servers), `--latency` queries
  each, interleaved query by query; p50/p99.
- propagation: a pod added on host 3 (the clock starts when its ADD returns) until host 1's server answers its
  name (a client in host 1's pod asking every 2 ms), `--propagation` pods.
Everything is deleted at the end, also on failure; nothing is added to the root namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import terminate_cleanly

from tests.cni.libcni import ensure_driver
from tests.cni.test_weave_net import Node, make_node
from tests.netns.hosts import netns_hosts, start_mesh

LATENCY = """
import socket, struct, sys, time, json
servers = [(sys.argv[1], int(p)) for p in sys.argv[2].split(",")]
names = sys.argv[3].split(","); n = int(sys.argv[4])
def query(i, name):
    q = struct.pack(">HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\\0" + struct.pack(">HH", 1, 1)
    return q
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
out = {f"{h}:{p}": [] for h, p in servers}
for i in range(n):
    for h, p in servers:
        q = query(i, names[i % len(names)]); t = time.perf_counter(); s.sendto(q, (h, p))
        while True:
            d, _ = s.recvfrom(4096)
            if d[:2] == q[:2]: break
        out[f"{h}:{p}"].append(time.perf_counter() - t)
print(json.dumps(out))
"""
WAIT_FOR = """
import socket, struct, sys, time
server, name = sys.argv[1], sys.argv[2]
q = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)
sys.stdin.readline(); t = time.perf_counter()
while time.perf_counter() - t < 30:
    s.sendto(q, (server, 53))
    try:
        d, _ = s.recvfrom(4096)
    except OSError:
        continue
    if d[3] & 0xF == 0 and struct.unpack(">H", d[6:8])[0] > 0:
        print(time.perf_counter() - t); break
    time.sleep(0.002)
"""


def ensure_packages() -> None:
    missing = [p for p, exe in (("dnsmasq-base", "dnsmasq"), ("dnsperf", "dnsperf")) if not shutil.which(exe)]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, capture_output=True, timeout=600)


def add_pod(node: Node, container: str, name: str) -> tuple[str, str]:
    driver = dataclasses.replace(node.driver, extra_env={"CNIDRIVER_ARGS": f"K8S_POD_NAME={name}"})
    netns = node.netns(container)
    result = driver.add(node.conflist("1.0.0"), container, netns)
    return Path(netns).name, str(result["ips"][0]["address"].split("/")[0])


def in_ns(ns: str, *argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True, **kw)  # type: ignore[call-overload,no-any-return]


def dnsperf(ns: str, server: str, port: int, queries: Path, seconds: int) -> float:
    out = in_ns(ns, "dnsperf", "-s", server, "-p", str(port), "-d", str(queries), "-l", str(seconds), "-q", "20",
                "-t", "2", timeout=seconds + 60).stdout  # fmt: skip
    found = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if not found:
        raise RuntimeError(out)
    print(f"    dnsperf {server}:{port}: {float(found.group(1)):.0f} q/s, lost {lost.group(1) if lost else '?'}")
    return float(found.group(1))


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * q))]


def measure(client: str, bridge: str, names: list[str], queries: Path, far: Node, *, args: argparse.Namespace) -> None:
    print(f"throughput ({args.seconds} s each, 20 in flight, dnsperf in a pod on host 1):")
    ours, theirs = [], []
    for _ in range(2):
        ours.append(dnsperf(client, bridge, 53, queries, args.seconds))
        theirs.append(dnsperf(client, bridge, 5353, queries, args.seconds))
    q_ours, q_theirs = statistics.median(ours), statistics.median(theirs)
    print(f"  weave-node {q_ours:.0f} q/s, dnsmasq {q_theirs:.0f} q/s: {q_ours / q_theirs:.2f}x")
    argv = [sys.executable, "-c", LATENCY, bridge, "53,5353", ",".join(names), str(args.latency)]
    lat = json.loads(in_ns(client, *argv, timeout=600).stdout)
    mine, other = lat[f"{bridge}:53"], lat[f"{bridge}:5353"]
    for label, v in (("weave-node", mine), ("dnsmasq", other)):
        print(f"  latency {label}: p50 {pct(v, 0.5) * 1e6:.0f} us, p99 {pct(v, 0.99) * 1e6:.0f} us")
    print(f"  p50 {pct(mine, 0.5) / pct(other, 0.5):.2f}x, p99 {pct(mine, 0.99) / pct(other, 0.99):.2f}x dnsmasq")
    times = []
    for i in range(args.propagation):
        waiter = subprocess.Popen(
            ["ip", "netns", "exec", client, sys.executable, "-c", WAIT_FOR, bridge, f"new-{i}.weave.local"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        add_pod(far, f"new-{i}", f"new-{i}")
        assert waiter.stdin is not None
        waiter.stdin.write("go\n")
        waiter.stdin.flush()
        got, _ = waiter.communicate(timeout=60)
        times.append(float(got))
    print(f"propagation host 3 -> host 1 ({args.propagation} pods, ADD returned -> answered): "
          f"p50 {pct(times, 0.5) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--latency", type=int, default=2000)
    parser.add_argument("--propagation", type=int, default=20)
    args = parser.parse_args()
    ensure_packages()
    binary = ensure_driver()
    os.environ["WEAVE_DNS_CLIENT_RATE"] = "0"  # the server's own speed, not the per-client limit (1000 q/s)
    with terminate_cleanly(), tempfile.TemporaryDirectory(prefix="dns-bench-") as tmp:
        base = Path(tmp)
        dnsmasq = None
        with netns_hosts(3, base) as net:
            routers = start_mesh(net)
            nodes = [make_node(r, binary, base / f"node{i}") for i, r in enumerate(routers, 1)]
            try:
                bridge = str(routers[0].status()["datapath"]["bridge_address"].split("/")[0])
                client, _ = add_pod(nodes[0], "client", "client")
                hosts = []
                for i in range(args.names):
                    _, ip = add_pod(nodes[2], f"svc-{i}", f"svc-{i}")
                    hosts.append(f"{ip} svc-{i}.weave.local")
                (base / "hosts").write_text("\n".join(hosts) + "\n")
                dnsmasq = subprocess.Popen(
                    ["ip", "netns", "exec", net.hosts[0].netns, "dnsmasq", "--keep-in-foreground", "--no-resolv",
                     "--no-hosts", f"--addn-hosts={base / 'hosts'}", f"--listen-address={bridge}", "--bind-interfaces",
                     "--port=5353", "--cache-size=1000", "--user=root", "--pid-file", "--local-ttl=5"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
                names = [f"svc-{i}.weave.local" for i in range(args.names)]
                queries = base / "queries"
                queries.write_text("".join(f"{n} A\n" for n in names))
                # both answer every name before anything is measured
                for port in (53, 5353):
                    probe = in_ns(
                        client, sys.executable, "-c", LATENCY, bridge, str(port), ",".join(names), str(len(names))
                    )
                    assert probe.stdout, probe
                measure(client, bridge, names, queries, nodes[2], args=args)
            finally:
                if dnsmasq is not None:
                    dnsmasq.terminate()
                    dnsmasq.wait(timeout=10)
                for node in nodes:
                    for ns in node.pods:
                        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
