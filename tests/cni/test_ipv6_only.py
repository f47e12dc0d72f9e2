"""IPv6-only pods (an IPv6 range alone) with real parts: three routers in network namespaces over an IPv4
underlay, pods added through libcni, pinging each other and their hosts across hosts over the kernel VXLAN (the
routers' heartbeats run between the bridges' IPv6 addresses, found through permanent NDP entries), over the
sealed sleeve, and over the sleeve fallback; IPv6 multicast (ff02::1) across hosts; masquerade to an outside
address; status and metrics of the one IPv6 range."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cni.libcni import ensure_driver
from tests.cni.test_dual_stack import (
    _block_vxlan,
    _delete_pods,
    _modes,
    _ping,
    _pods,
    mesh_of_nodes,
    multicast_reaches_other_hosts,
    outside_sees,
)
from tests.cni.test_weave_net import Node, make_node
from tests.helpers import BIN, poll
from tests.netns.hosts import FAST, netns_hosts, peers_fastdp, start_mesh
from weave_node.api.client import ApiError, request

RANGE6 = "fd32:58::/64"


@pytest.fixture(scope="module")
def fastdp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    with mesh_of_nodes(tmp_path_factory.mktemp("v6only"), RANGE6, outside=True) as nodes:
        yield nodes


def _address(result: dict[str, Any]) -> str:
    ips = [ip["address"] for ip in result["ips"]]
    assert len(ips) == 1 and ips[0].startswith("fd32:58:") and ips[0].endswith("/64"), result
    assert [r["dst"] for r in result["routes"]] == ["::/0"], result
    return str(ips[0].split("/")[0])


def test_ipv6_only_pods_reach_each_other_and_the_hosts_across_three_hosts(fastdp: list[Node]) -> None:
    pods = _pods(fastdp, "v6")
    ips = [_address(result) for _ns, result in pods]
    for netns, _ in pods:
        for ip in ips:
            assert _ping(netns, ip), f"{Path(netns).name} -> {ip}"
    for node in fastdp:  # each host reaches every pod, its own and the others' (the bridge's IPv6 address)
        for ip in ips:
            out = node.router.host.run("ping", "-6", "-c", "1", "-W", "3", ip, check=False)
            assert out.returncode == 0, f"{node.router.host.netns} -> {ip}: {out.stdout}"
        assert peers_fastdp(node.router, 2)  # the heartbeats (IPv6, bridge to bridge) keep the kernel datapath
    datapath = fastdp[0].router.status()["datapath"]
    assert datapath["bridge_address"].startswith("fd32:58:"), datapath
    assert all(p["bridge_ip"].startswith("fd32:58:") for p in datapath["peers"]), datapath["peers"]
    neigh = fastdp[0].router.host.run("ip", "-6", "neigh", "show", "dev", "weave", "nud", "permanent").stdout
    assert sum(1 for p in datapath["peers"] if p["bridge_ip"] in neigh) == 2, neigh
    v4 = fastdp[0].router.host.run("ip", "-4", "addr", "show", "dev", "weave").stdout
    assert "inet " not in v4, v4  # no IPv4 on the bridge


def test_ipv6_only_ipam_status_metrics_and_release(fastdp: list[Node]) -> None:
    node = fastdp[1]
    netns = node.netns("st")
    ip = _address(node.driver.add(node.conflist("1.0.0"), "st-1", netns))
    node.driver.check(node.conflist("1.0.0"), "st-1", netns)
    assert ip in {row["ip"] for row in node.allocations()}
    status = node.router.status()["ipam"]
    assert status["family"] == "ipv6" and status["range"] == RANGE6 and status["ready"] and "ipv6" not in status
    text = subprocess.run([str(BIN / "weave-node"), "status", "--socket", str(node.router.socket)],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert f"IPAM: {RANGE6}, ready" in text and "10.32.0.0" not in text, text
    code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:6782/metrics').read().decode())"
    metrics = node.router.host.run(sys.executable, "-c", code).stdout
    assert "weave_node_ipam_ipv6_ready 1.0" in metrics and f"weave_max_ips {float(2**64)}" in metrics, metrics
    node.driver.delete(node.conflist("1.0.0"), "st-1", netns)
    assert ip not in {row["ip"] for row in node.allocations()}


def test_ipv6_only_multicast_reaches_pods_on_other_hosts(fastdp: list[Node]) -> None:
    multicast_reaches_other_hosts(_pods(fastdp, "m6"))


def test_ipv6_only_pods_are_masqueraded_to_the_outside(fastdp: list[Node]) -> None:
    assert outside_sees(fastdp[2], "o6") == "2001:db8:77::3"  # host 3's underlay address, not the pod's
    rules = fastdp[2].router.host.run("iptables-save", "-t", "nat").stdout
    assert "WEAVE" not in rules, rules  # no IPv4 range: no IPv4 chains


def test_the_sealed_sleeve_carries_ipv6_only_pods_across_three_hosts(tmp_path: Path) -> None:
    binary = ensure_driver()
    password = tmp_path / "password"
    password.write_text("correct horse battery staple\n")
    password.chmod(0o600)
    with netns_hosts(3, tmp_path) as net:
        addrs = [h.address for h in net.hosts]
        routers = [
            net.start_router(i, *FAST, "--ipalloc-range", RANGE6, "--password-file", str(password),
                             *[a for a in addrs if a != h.address], datapath=True)
            for i, h in enumerate(net.hosts, 1)
        ]  # fmt: skip
        for r in routers:
            poll(lambda r=r: _modes(r) == ["sleeve", "sleeve"], timeout=40, what=f"{r.host.netns}: sealed sleeve")
        nodes = [make_node(r, binary, tmp_path / f"node{i}") for i, r in enumerate(routers, 1)]
        try:
            pods = _pods(nodes, "s6")
            for netns, _ in pods:
                for _other, result in pods:
                    assert _ping(netns, _address(result), count=2), f"{Path(netns).name} -> {_address(result)}"
            counters = routers[0].status()["datapath"]["sleeve"]["counters"]
            assert counters.get("frames_out", 0) > 0, counters
        finally:
            _delete_pods(nodes)


@pytest.mark.parametrize("ipv6_underlay", [False, True], ids=["ipv4-underlay", "ipv6-underlay"])
def test_ipv6_only_falls_back_to_the_sleeve_when_vxlan_is_blocked(tmp_path: Path, ipv6_underlay: bool) -> None:
    binary = ensure_driver()
    with netns_hosts(2, tmp_path, ipv6=ipv6_underlay) as net:
        routers = start_mesh(net, "--ipalloc-range", RANGE6)
        nodes = [make_node(r, binary, tmp_path / f"n{i}") for i, r in enumerate(routers, 1)]
        try:
            (ns1, r1), (_ns2, r2) = _pods(nodes, "f6")
            _block_vxlan(net, add=True)
            for r in routers:
                poll(lambda r=r: _modes(r) == ["sleeve"], timeout=30, what=f"{r.host.netns}: fallen back to the sleeve")
            assert _ping(ns1, _address(r2), count=2, wait=2), "pod -> pod through the sleeve"
            for host, result in ((net.hosts[0], r2), (net.hosts[1], r1)):
                ip6 = _address(result)
                out = host.run("ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", ip6, check=False)
                assert out.returncode == 0, f"{host.netns} -> {ip6} through the sleeve: {out.stdout}"
        finally:
            _block_vxlan(net, add=False)
            _delete_pods(nodes)


def test_a_neighbour_with_an_ipv6_range_alone_holds_ipv4_back_and_the_roll_goes_on(tmp_path: Path) -> None:
    """In a rolling change from an IPv6 range alone to dual-stack, a restarted (dual-stack) router's IPv4 ring
    cannot be agreed while its neighbours carry no "ipam" channel: IPv4 is held back with them named (ADDs fail at
    once), and the router counts as ready, so the rollout's health gate does not stop the roll."""
    with netns_hosts(2, tmp_path) as net:
        a1, a2 = (h.address for h in net.hosts)
        dual = net.start_router(1, *FAST, "--ipalloc-range", f"10.32.0.0/12,{RANGE6}", a2)
        net.start_router(2, *FAST, "--ipalloc-range", RANGE6, a1)
        poll(lambda: "h2" in dual.established(), timeout=20, what="h1 and h2 connected")
        poll(lambda: "h2" in dual.status()["ipam"]["waiting"], timeout=10, what="IPv4 IPAM held, h2 named")
        status = dual.status()["ipam"]
        assert status["held"] and status["family"] == "ipv4" and "an IPv6 range alone" in status["waiting"], status
        with pytest.raises(ApiError, match=r"no IPv4 address: connected peer\(s\) .*\(h2\)"):
            request("POST", "/ipam/allocate", body={"container_id": "c1", "wait": 1}, socket_path=str(dual.socket))
        poll(lambda: dual.status()["ipam"]["ipv6"]["ready"], timeout=20, what="IPv6 IPAM ready (both carry it)")
        ready = subprocess.run([str(BIN / "weave-node"), "status", "--socket", str(dual.socket), "--wait", "5"],
                               capture_output=True, text=True, check=False)  # fmt: skip
        assert ready.returncode == 0, ready.stdout + ready.stderr  # what the rollout's health gate waits for
        assert "IPv4 IPAM: connected peer(s)" in dual.log_text()
