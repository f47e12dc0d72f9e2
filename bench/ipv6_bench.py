"""Dual-stack numbers: IPv6 pod -> pod throughput against IPv4 pod -> pod, and CNI ADD/DEL of a dual-stack pod
against an IPv4-only one.

    .venv/bin/python bench/ipv6_bench.py [--runs 5] [--seconds 5] [--pods 100] [--block 20]

Needs root: hosts are network namespaces on an underlay bridge (tests/netns/hosts.py), pods are namespaces added
through libcni (tests/cni/driver) with the static weave-net plugin; everything is created under names of this
process and deleted at the end, also on failure. Nothing is added to the root namespace. Measured in one run:
- throughput: two hosts, two dual-stack routers (`IPALLOC_RANGE=10.32.0.0/12,fd32:57::/64`), one pod on each;
  `iperf3 -J -O 1` one TCP stream pod -> pod to the other pod's IPv6 address and to its IPv4 address,
  interleaved run by run (order alternating), median of `runs`. Like for like: both over fastdp (the routers run
  `--no-direct`). Diagnostic: the routers' default, where IPv4 goes direct (no encapsulation) between these
  hosts on one subnet and IPv6 stays on VXLAN (direct mode is IPv4's).
- underlay: the same pods' IPv6 throughput over VXLAN on an IPv6-only underlay (tests/netns/hosts.py's SUBNET6:
  70 bytes of overhead, an MTU of 1430) against over VXLAN on an IPv4 one (50 bytes, 1450), both meshes up at
  once and the runs interleaved (`--underlay-only`: this part alone).
- CNI: one host with a dual-stack router and one with an IPv4-only router (same flags otherwise), ADD then DEL
  of `--pods` pods each through libcni, in blocks that take turns (bench/cni_bench.py's method); p50 and p99.
The VM has 2 cores and about +-10-15 % noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from cni_bench import PodNamespaces, Setup, driver_setup, latency, ms, p50, p99, weave_conflist
from common import terminate_cleanly
from datapath_bench import iperf

from tests.cni.libcni import ensure_driver
from tests.cni.test_dual_stack import _delete_pods
from tests.cni.test_weave_net import Node, make_node
from tests.helpers import poll
from tests.netns.hosts import FAST, netns_hosts, start_mesh

DUAL = "10.32.0.0/12,fd32:57::/64"


def throughput(tmp: Path, runs: int, seconds: int, direct: bool) -> dict[str, list[float]]:
    binary = ensure_driver()
    out: dict[str, list[float]] = {"ipv4": [], "ipv6": []}
    with netns_hosts(2, tmp / ("direct" if direct else "fastdp")) as net:
        routers = start_mesh(net, "--ipalloc-range", DUAL, *([] if direct else ["--no-direct"]))
        nodes = [make_node(r, binary, tmp / f"t{int(direct)}node{i}") for i, r in enumerate(routers, 1)]
        try:
            pods = []
            for i, node in enumerate(nodes, 1):
                netns = node.netns(f"p{i}")
                result = node.driver.add(node.conflist("1.0.0"), f"bench-{i}", netns)
                pods.append((Path(netns).name, [ip["address"].split("/")[0] for ip in result["ips"]]))
            (src, _), (dst, (dst4, dst6)) = pods
            modes = [p["mode"] for r in routers for p in r.status()["datapath"]["peers"]]
            print(f"  {'default (IPv4 direct)' if direct else 'both over fastdp'}: peers {modes}")
            for run in range(runs):
                order = [("ipv4", dst4), ("ipv6", dst6)]
                for family, ip in order if run % 2 == 0 else order[::-1]:
                    out[family].append(iperf(src, dst, ip, seconds).bps / 1e9)
                print(f"    run {run + 1}: IPv4 {out['ipv4'][-1]:.2f} Gbit/s, IPv6 {out['ipv6'][-1]:.2f} Gbit/s")
        finally:
            _delete_pods(nodes)
    return out


def underlay(tmp: Path, runs: int, seconds: int) -> dict[str, list[float]]:
    """Pod IPv6 -> pod IPv6 over an IPv4 underlay and over an IPv6 one (both fastdp), interleaved."""
    binary = ensure_driver()
    out: dict[str, list[float]] = {"ipv4": [], "ipv6": []}
    with netns_hosts(2, tmp / "u4") as net4, netns_hosts(2, tmp / "u6", ipv6=True) as net6:
        targets, nodes = {}, []
        for family, net in (("ipv4", net4), ("ipv6", net6)):
            routers = start_mesh(net, "--ipalloc-range", DUAL, "--no-direct")
            pair = [make_node(r, binary, tmp / f"u{family}{i}") for i, r in enumerate(routers, 1)]
            nodes += pair
            names = []
            for i, node in enumerate(pair, 1):
                netns = node.netns(f"u{i}")
                result = node.driver.add(node.conflist("1.0.0"), f"under-{i}", netns)
                names.append((Path(netns).name, result["ips"][1]["address"].split("/")[0]))
            targets[family] = (names[0][0], names[1][0], names[1][1])
            print(f"  {family} underlay: MTU {routers[0].status()['datapath']['mtu']}")
        try:
            for run in range(runs):
                order = ["ipv4", "ipv6"] if run % 2 == 0 else ["ipv6", "ipv4"]
                for family in order:
                    out[family].append(iperf(*targets[family], seconds).bps / 1e9)
                print(f"    run {run + 1}: over IPv4 {out['ipv4'][-1]:.2f} Gbit/s, over IPv6 {out['ipv6'][-1]:.2f}")
        finally:
            _delete_pods(nodes)
    return out


def cni(tmp: Path, count: int, block: int) -> dict[str, Setup]:
    binary = ensure_driver()
    pods = PodNamespaces()
    try:
        with netns_hosts(2, tmp / "cni") as net:
            dual = net.start_router(1, *FAST, "--ipalloc-range", DUAL, datapath=True)
            v4 = net.start_router(2, *FAST, "--ipalloc-range", "10.32.0.0/12", datapath=True)
            nodes: list[Node] = [make_node(r, binary, tmp / f"c{i}") for i, r in enumerate((dual, v4), 1)]
            for r in (dual, v4):
                poll(lambda r=r: r.status()["ipam"]["ready"] and r.status()["datapath"]["bridge_address"],
                     timeout=30, what="IPAM and the bridge ready")  # fmt: skip
            poll(lambda: dual.status()["datapath"].get("bridge_address6"), timeout=30, what="the IPv6 bridge address")
            setups = {
                "dual": driver_setup(
                    "dual-stack", "d", nodes[0].driver, weave_conflist(nodes[0], tmp / "d.json", False)
                ),
                "v4": driver_setup("IPv4 only", "v", nodes[1].driver, weave_conflist(nodes[1], tmp / "v.json", False)),
            }
            latency(list(setups.values()), pods, count, block, warmup=3)
            return setups
    finally:
        pods.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--block", type=int, default=20)
    ap.add_argument("--underlay-only", action="store_true", help="only IPv6 underlay against IPv4 underlay")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    tmp = Path(tempfile.mkdtemp(prefix="weave-ipv6-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    with terminate_cleanly():
        print(f"pod IPv6 throughput over an IPv6 underlay and over an IPv4 one, iperf3 {args.seconds} s")
        under = underlay(tmp, args.runs, args.seconds)
        u4, u6 = statistics.median(under["ipv4"]), statistics.median(under["ipv6"])
        print(f"  underlay: over IPv4 {u4:.2f} Gbit/s, over IPv6 {u6:.2f} Gbit/s: x{u6 / u4:.2f}")
        if args.underlay_only:
            return
        print(f"throughput pod -> pod across two hosts, iperf3 {args.seconds} s, {args.runs} runs each")
        like = throughput(tmp, args.runs, args.seconds, direct=False)
        default = throughput(tmp, args.runs, args.seconds, direct=True)
        print(f"ADD/DEL through libcni, {args.pods} pods per setup, blocks of {args.block}")
        setups = cni(tmp, args.pods, args.block)
    v4, v6 = statistics.median(like["ipv4"]), statistics.median(like["ipv6"])
    d4, d6 = statistics.median(default["ipv4"]), statistics.median(default["ipv6"])
    verdict = "met" if v6 / v4 >= 0.95 else "MISSED"
    print("\nresults (medians)")
    ratio = f"IPv6 x{v6 / v4:.2f} (goal >= 0.95) -> {verdict}"
    print(f"  both over fastdp: IPv4 {v4:.2f} Gbit/s, IPv6 {v6:.2f} Gbit/s: {ratio}")
    print(f"  diag, default (IPv4 direct, IPv6 VXLAN): IPv4 {d4:.2f}, IPv6 {d6:.2f}: x{d6 / d4:.2f}")
    dual, only4 = setups["dual"], setups["v4"]
    for op, a, b in (("ADD", dual.adds, only4.adds), ("DEL", dual.dels, only4.dels)):
        r50, r99 = p50(a) / p50(b), p99(a) / p99(b)
        goal = " (goal <= 1.1)" if op == "ADD" else ""
        met = (" -> met" if r50 <= 1.1 else " -> MISSED") if op == "ADD" else ""
        print(f"  CNI {op}: dual-stack p50 {ms(p50(a)):.1f} ms p99 {ms(p99(a)):.1f}, IPv4 only p50 {ms(p50(b)):.1f} "
              f"p99 {ms(p99(b)):.1f}: p50 x{r50:.2f}{goal}, p99 x{r99:.2f}{met}")  # fmt: skip


if __name__ == "__main__":
    main()
