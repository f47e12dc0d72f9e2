"""An IPv6-only underlay with real parts: hosts in network namespaces with nothing but 2001:db8:19::<n>/64 on
their link. The mesh runs over TCP/IPv6, VXLAN over IPv6 (the device's source is the host's address, 70 bytes
of overhead), the sleeve over UDP/IPv6 (sealed with a password; the fallback when VXLAN is blocked is in
test_ipv6_only.py).
Pods of an IPv6 range alone ping each other and the hosts; dual-stack pods reach each other on both families."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cni.libcni import ensure_driver
from tests.cni.test_dual_stack import _addresses, _delete_pods, _modes, _ping, _pods, mesh_of_nodes
from tests.cni.test_ipv6_only import RANGE6, _address
from tests.cni.test_weave_net import Node, make_node
from tests.helpers import poll
from tests.netns.hosts import FAST, netns_hosts, peers_fastdp


@pytest.fixture(scope="module")
def fastdp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    with mesh_of_nodes(tmp_path_factory.mktemp("u6"), RANGE6, ipv6=True) as nodes:
        yield nodes


def test_the_mesh_vxlan_and_pods_run_over_an_ipv6_only_underlay(fastdp: list[Node]) -> None:
    host = fastdp[0].router.host
    assert "inet " not in host.run("ip", "-4", "addr", "show", "dev", "eth0").stdout  # no IPv4 on the underlay
    established = host.run("ss", "-Htn", "state", "established", "( sport = :6783 or dport = :6783 )").stdout
    assert established.count("[2001:db8:19::") >= 4, established  # both ends of both connections, over IPv6
    vxlan = host.run("ip", "-d", "link", "show", "vxlan-6784").stdout
    assert f"local {host.address} " in vxlan and "mtu 1430 " in vxlan, vxlan  # 1500 - 70: VXLAN over IPv6
    fdb = host.run("bridge", "fdb", "show", "dev", "vxlan-6784").stdout
    assert "00:00:00:00:00:00 dst 2001:db8:19::2 " in fdb and "dst 2001:db8:19::3 " in fdb, fdb
    datapath = fastdp[0].router.status()["datapath"]
    assert {p["vtep"] for p in datapath["peers"]} == {"2001:db8:19::2", "2001:db8:19::3"}, datapath["peers"]
    pods = _pods(fastdp, "u6")
    ips = [_address(result) for _ns, result in pods]
    for netns, _ in pods:
        for ip in ips:
            assert _ping(netns, ip), f"{Path(netns).name} -> {ip}"
    for node in fastdp:
        for ip in ips:
            out = node.router.host.run("ping", "-6", "-c", "1", "-W", "3", ip, check=False)
            assert out.returncode == 0, f"{node.router.host.netns} -> {ip}: {out.stdout}"
        assert peers_fastdp(node.router, 2)
    big = subprocess.run(  # a full-size packet: the MTU leaves room for the IPv6 underlay's 20 bytes more
        ["ip", "netns", "exec", Path(pods[0][0]).name, "ping", "-6", "-c", "1", "-W", "3", "-M", "do", "-s",
         str(1430 - 48), ips[1]],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert big.returncode == 0, big.stdout + big.stderr


def test_the_sealed_sleeve_runs_over_an_ipv6_underlay(tmp_path: Path) -> None:
    binary = ensure_driver()
    password = tmp_path / "password"
    password.write_text("correct horse battery staple\n")
    password.chmod(0o600)
    with netns_hosts(2, tmp_path, ipv6=True) as net:
        a1, a2 = (h.address for h in net.hosts)
        args = (*FAST, "--ipalloc-range", "10.32.0.0/12,fd32:57::/64", "--password-file", str(password))
        routers = [net.start_router(1, *args, a2, datapath=True), net.start_router(2, *args, a1, datapath=True)]
        for r in routers:
            poll(lambda r=r: _modes(r) == ["sleeve"], timeout=40, what=f"{r.host.netns}: the sleeve to its peer")
        nodes = [make_node(r, binary, tmp_path / f"node{i}") for i, r in enumerate(routers, 1)]
        try:
            (ns1, _r1), (_ns2, r2) = _pods(nodes, "s6")
            for ip in _addresses(r2):  # dual-stack pods: IPv4 and IPv6 inside, sealed in IPv6 UDP between hosts
                assert _ping(ns1, ip, count=2), ip
            sleeve = routers[0].status()["datapath"]["sleeve"]
            assert sleeve["counters"].get("frames_out", 0) > 0, sleeve
            link = routers[0].status()["datapath"]["peers"][0]["sleeve"]["link"]
            assert link["up"] and link["verified_mtu"] == 1452 and "none" not in link["cipher"], link
        finally:
            _delete_pods(nodes)
