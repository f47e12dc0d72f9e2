"""Dual-stack pods with real parts: three routers in network namespaces with an IPv4 and an IPv6 range, pods added
through libcni (the static plugin), pinging each other on both families across hosts over the kernel VXLAN and
over the sealed sleeve, IPv6 multicast (ff02::1) across hosts, masquerade of IPv6 to an outside address, and a
router whose neighbour carries no IPv6 range refusing IPv6 addresses with that peer named."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cni.libcni import ensure_driver
from tests.cni.test_weave_net import Node, make_node
from tests.helpers import BIN, poll
from tests.netns.hosts import FAST, Net, netns_hosts, peers_fastdp, start_mesh
from weave_node.api.client import ApiError, request
from weave_node.lab.system import ip_batch

RANGES = "10.32.0.0/12,fd32:57::/64"
OUTSIDE6 = "2001:db8:77::fe"  # an "outside" host on the underlay (documentation range, inside our namespaces)


@pytest.fixture(scope="module")
def fastdp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    with mesh_of_nodes(tmp_path_factory.mktemp("dual"), RANGES, outside=True) as nodes:
        yield nodes


@contextlib.contextmanager
def mesh_of_nodes(base: Path, ranges: str, *, outside: bool = False, ipv6: bool = False) -> Iterator[list[Node]]:
    """Three hosts (an IPv6-only underlay with `ipv6`), routers with IPALLOC_RANGE `ranges` on fastdp, a CNI node
    each; `outside`: an outside namespace at OUTSIDE6 on the underlay (`_outside`). Everything goes after."""
    binary = ensure_driver()
    with netns_hosts(3, base, ipv6=ipv6) as net:
        out = _outside(net) if outside else ""
        try:
            routers = start_mesh(net, "--ipalloc-range", ranges)
            nodes = [make_node(r, binary, base / f"node{i}") for i, r in enumerate(routers, 1)]
            try:
                yield nodes
            finally:
                _delete_pods(nodes)
        finally:
            if out:
                subprocess.run(["ip", "netns", "delete", out], capture_output=True, check=False)


def _outside(net: Net) -> str:
    """IPv6 on the underlay: the hosts get 2001:db8:77::<n>/64, an outside namespace OUTSIDE6 on the same link."""
    ns = f"{net.underlay}-out"
    ip_batch(None, [f"netns add {ns}", f"link add vout netns {net.underlay} type veth peer name eth0 netns {ns}"])
    ip_batch(net.underlay, ["link set vout master br0 up"])
    ip_batch(ns, ["link set lo up", f"addr add {OUTSIDE6}/64 dev eth0 nodad", "link set eth0 up"])
    for i, h in enumerate(net.hosts, 1):
        ip_batch(h.netns, [f"addr add 2001:db8:77::{i}/64 dev eth0 nodad"])
    return ns


def _delete_pods(nodes: list[Node]) -> None:
    for node in nodes:
        for ns in node.pods:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


def _addresses(result: dict[str, Any]) -> tuple[str, str]:
    ips = [ip["address"].split("/")[0] for ip in result["ips"]]
    assert len(ips) == 2 and ":" not in ips[0] and ":" in ips[1], result
    return ips[0], ips[1]


def _ping(netns: str, ip: str, count: int = 1, wait: int = 3) -> bool:
    flag = "-6" if ":" in ip else "-4"
    out = subprocess.run(
        ["ip", "netns", "exec", Path(netns).name, "ping", flag, "-c", str(count), "-W", str(wait), ip],
        capture_output=True, check=False, timeout=30,
    )  # fmt: skip
    return out.returncode == 0


def _pods(nodes: list[Node], prefix: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for i, node in enumerate(nodes, 1):
        netns = node.netns(f"{prefix}{i}")
        out.append((netns, node.driver.add(node.conflist("1.0.0"), f"{prefix}-{i}", netns)))
    return out


def test_dual_stack_pods_reach_each_other_on_both_families_across_three_hosts(fastdp: list[Node]) -> None:
    pods = _pods(fastdp, "ds")
    for _netns, result in pods:
        _addresses(result)
        assert result["ips"][1]["address"].endswith("/64") and result["ips"][1]["gateway"].startswith("fd32:57:")
        assert {r["dst"] for r in result["routes"]} == {"0.0.0.0/0", "::/0"}, result
    bridge6 = fastdp[0].router.status()["datapath"]["bridge_address6"]
    assert bridge6.startswith("fd32:57:") and bridge6.endswith("/64")
    for netns, _ in pods:
        for _other_ns, other in pods:
            for ip in _addresses(other):
                assert _ping(netns, ip), f"{Path(netns).name} -> {ip}"
    node = fastdp[0]
    netns, result = pods[0]
    node.driver.check(node.conflist("1.0.0"), "ds-1", netns)  # CHECK verifies both families
    held = {row["ip"] for row in node.allocations()}
    assert set(_addresses(result)) <= held
    node.driver.delete(node.conflist("1.0.0"), "ds-1", netns)  # DEL releases both
    assert not set(_addresses(result)) & {row["ip"] for row in node.allocations()}
    status = node.router.status()["ipam"]
    assert status["ready"] and status["ipv6"]["ready"] and status["ipv6"]["range"] == "fd32:57::/64", status
    text = subprocess.run([str(BIN / "weave-node"), "status", "--socket", str(node.router.socket)],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "IPAM: 10.32.0.0/12, ready" in text and "IPAM: fd32:57::/64, ready" in text, text
    assert bridge6 in text  # the datapath line shows both bridge addresses
    code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:6782/metrics').read().decode())"
    metrics = node.router.host.run(sys.executable, "-c", code).stdout
    assert "weave_node_ipam_ipv6_ready 1.0" in metrics and 'weave_node_ipam_ipv6_ips{state="local-used"}' in metrics


def test_check_finds_an_ipv6_address_gone_and_an_old_result_version_names_the_family(fastdp: list[Node]) -> None:
    node = fastdp[1]
    netns = node.netns("old")
    result = node.driver.add(node.conflist("0.4.0"), "old-1", netns)
    assert [ip["version"] for ip in result["ips"]] == ["4", "6"], result
    v6 = result["ips"][1]["address"]
    subprocess.run(["ip", "netns", "exec", Path(netns).name, "ip", "addr", "del", v6, "dev", "eth0"], check=True)
    with pytest.raises(Exception, match=f"address {v6} missing"):
        node.driver.check(node.conflist("0.4.0"), "old-1", netns)


def test_ipv6_multicast_reaches_pods_on_other_hosts(fastdp: list[Node]) -> None:
    multicast_reaches_other_hosts(_pods(fastdp, "mc"))


def multicast_reaches_other_hosts(pods: list[tuple[str, dict[str, Any]]]) -> None:
    """The all-nodes group (ff02::1) pinged from the first pod is answered by the pods of the other hosts."""
    poll(lambda: all(_link_local(netns) for netns, _ in pods), timeout=10, what="the pods' link-local addresses")
    far = {_link_local(netns) for netns, _ in pods[1:]}
    out = subprocess.run(
        ["ip", "netns", "exec", Path(pods[0][0]).name, "ping", "-6", "-c", "3", "-i", "0.3", "-w", "5",
         "ff02::1%eth0"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    answered = {line.split()[3].rstrip(":").split("%")[0] for line in out.stdout.splitlines() if "bytes from" in line}
    assert far <= answered, (far, out.stdout)  # the all-nodes group, answered by the pods of the other two hosts


def _link_local(netns: str) -> str:
    """The pod's link-local address once usable (past duplicate address detection), else ""."""
    out = subprocess.run(
        ["ip", "netns", "exec", Path(netns).name, "ip", "-j", "-6", "addr", "show", "dev", "eth0", "scope", "link"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = [a for a in json.loads(out.stdout)[0]["addr_info"] if "local" in a and not a.get("tentative")]
    return str(found[0]["local"]) if found else ""


ACCEPT_ONE = """
import socket, sys
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 8080)); s.listen(1); print("ready", flush=True)
c, a = s.accept(); print(a[0], flush=True)
"""


def test_ipv6_to_the_outside_is_masqueraded_to_the_host_s_address(fastdp: list[Node]) -> None:
    assert outside_sees(fastdp[2], "out") == "2001:db8:77::3"  # host 3's underlay address, not the pod's


def outside_sees(node: Node, name: str) -> str:
    """A new pod on `node` connects to OUTSIDE6 over TCP: the source address the outside sees."""
    netns = node.netns(name)
    node.driver.add(node.conflist("1.0.0"), f"{name}-1", netns)
    outside = f"{node.router.host.netns.rsplit('-h', 1)[0]}-u-out"
    server = subprocess.Popen(
        ["ip", "netns", "exec", outside, sys.executable, "-c", ACCEPT_ONE], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        connect = f"import socket; socket.create_connection(('{OUTSIDE6}', 8080), timeout=5).close()"
        subprocess.run(["ip", "netns", "exec", Path(netns).name, sys.executable, "-c", connect], check=True, timeout=30)
        return server.stdout.readline().strip()
    finally:
        server.kill()
        server.wait(timeout=10)


def test_the_sealed_sleeve_carries_both_families(tmp_path: Path) -> None:
    binary = ensure_driver()
    password = tmp_path / "password"
    password.write_text("correct horse battery staple\n")
    password.chmod(0o600)
    with netns_hosts(2, tmp_path) as net:
        a1, a2 = (h.address for h in net.hosts)
        routers = [
            net.start_router(1, *FAST, "--ipalloc-range", RANGES, "--password-file", str(password), a2, datapath=True),
            net.start_router(2, *FAST, "--ipalloc-range", RANGES, "--password-file", str(password), a1, datapath=True),
        ]
        for r in routers:
            poll(lambda r=r: _modes(r) == ["sleeve"], timeout=40, what=f"{r.host.netns}: the sleeve to its peer")
        nodes = [make_node(r, binary, tmp_path / f"node{i}") for i, r in enumerate(routers, 1)]
        try:
            (ns1, _r1), (_ns2, r2) = _pods(nodes, "sl")
            for ip in _addresses(r2):
                assert _ping(ns1, ip, count=2), ip
            counters = routers[0].status()["datapath"]["sleeve"]["counters"]
            assert counters.get("frames_out", 0) > 0, counters
        finally:
            _delete_pods(nodes)


def _modes(r: Any) -> list[str]:
    return [p["mode"] for p in r.status().get("datapath", {}).get("peers", [])]


def test_a_neighbour_without_an_ipv6_range_holds_ipv6_back_and_is_named(tmp_path: Path) -> None:
    with netns_hosts(2, tmp_path) as net:
        a1, a2 = (h.address for h in net.hosts)
        dual = net.start_router(1, *FAST, "--ipalloc-range", RANGES, a2)
        net.start_router(2, *FAST, "--ipalloc-range", "10.32.0.0/12", a1)
        poll(lambda: "h2" in dual.established(), timeout=20, what="h1 and h2 connected")
        poll(lambda: "h2" in dual.status()["ipam"]["ipv6"]["waiting"], timeout=10, what="IPv6 IPAM held, h2 named")
        body = {"container_id": "c1", "family": "ipv6", "wait": 1}
        with pytest.raises(ApiError, match=r"no IPv6 address: connected peer\(s\) .*\(h2\)"):
            request("POST", "/ipam/allocate", body=body, socket_path=str(dual.socket))
        v4 = request("POST", "/ipam/allocate", body={"container_id": "c2"}, socket_path=str(dual.socket))
        assert v4["range"] == "10.32.0.0/12"  # IPv4 goes on as before
        assert "IPv6 IPAM: connected peer(s)" in dual.log_text()


def test_the_router_refuses_two_ranges_of_one_family_and_an_ipv6_range_too_large(tmp_path: Path) -> None:
    with netns_hosts(1, tmp_path) as net:
        for bad, message in (
            ("fd32:57::/48", "an IPv6 range must be a /64 to a /120"),
            ("10.32.0.0/12,10.48.0.0/12", "at most one range of each family"),
            ("10.32.0.0/12,fd32:57::/48", "an IPv6 range must be a /64 to a /120"),
        ):
            out = net.hosts[0].run(
                str(Path(sys.executable).parent / "weave-node"), "router", "--ipalloc-range", bad,
                "--state-dir", str(tmp_path / "s"), check=False,
            )  # fmt: skip
            assert out.returncode != 0 and message in out.stderr, (bad, out.stderr)


def test_fastdp_peers_stay_fastdp(fastdp: list[Node]) -> None:
    for node in fastdp:
        assert peers_fastdp(node.router, 2)


def test_an_address_given_again_reaches_its_new_pod_at_once(fastdp: list[Node]) -> None:
    """A pod's addresses, freed by its DEL, go to the next pod, with another MAC: the new pod announces itself
    (gratuitous ARP, unsolicited neighbour advertisement), so neighbour caches that still hold the old MAC (the
    host's, a pod's on another host) reach it at once, not after their entries time out."""
    node, far = fastdp[0], fastdp[1]
    conf, far_conf = node.conflist("1.0.0"), far.conflist("1.0.0")
    client = far.netns("reuse-c")
    far.driver.add(far_conf, "reuse-c", client)
    old = node.netns("reuse-a")
    first = _addresses(node.driver.add(conf, "reuse-a", old))
    for ip in first:
        assert _ping(client, ip) and node.router.host.run("ping", "-c", "1", "-W", "3", ip, check=False).returncode == 0
    node.driver.delete(conf, "reuse-a", old)
    for ip in first:  # what a restarted router does on its own (its cursor starts again at the lowest free)
        body = {"container_id": "reuse-b", "ifname": "eth0", "ip": ip}
        request("POST", "/ipam/claim", body=body, socket_path=str(node.router.socket))
    new = node.netns("reuse-b")
    second = _addresses(node.driver.add(conf, "reuse-b", new))
    assert second == first
    for ip in second:  # one try each, a second's wait: a stale neighbour entry would take ~5 s or more to go
        host_ping = node.router.host.run("ping", "-c", "1", "-W", "1", ip, check=False)
        assert host_ping.returncode == 0, f"host -> {ip}: {host_ping.stdout}"
        assert _ping(client, ip, wait=1), f"pod on another host -> {ip}"


def test_hosts_reach_pods_across_the_sleeve_fallback_on_ipv6_too(tmp_path: Path) -> None:
    """With fastdp on and VXLAN blocked between two hosts, the pair falls back to the sleeve; each host reaches
    the other's pod over IPv6 through it: its neighbour discovery crosses under the bridge's alias MAC, the
    link-layer option rewritten too (else the pod answers the real MAC, which its bridge sends to the VXLAN)."""
    binary = ensure_driver()
    with netns_hosts(2, tmp_path) as net:
        routers = start_mesh(net, "--ipalloc-range", RANGES)
        nodes = [make_node(r, binary, tmp_path / f"n{i}") for i, r in enumerate(routers, 1)]
        try:
            (_ns1, r1), (_ns2, r2) = _pods(nodes, "fb")
            _block_vxlan(net, add=True)
            for r in routers:
                poll(lambda r=r: _modes(r) == ["sleeve"], timeout=30, what=f"{r.host.netns}: fallen back to the sleeve")
            for host, result in ((net.hosts[0], r2), (net.hosts[1], r1)):
                ip6 = _addresses(result)[1]
                host.run("ip", "-6", "neigh", "flush", "dev", "weave", check=False)
                out = host.run("ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", ip6, check=False)
                assert out.returncode == 0, f"{host.netns} -> {ip6} through the sleeve: {out.stdout}"
        finally:
            _block_vxlan(net, add=False)
            _delete_pods(nodes)


def _block_vxlan(net: Net, *, add: bool) -> None:
    """VXLAN's UDP dropped between the two hosts, on the underlay (the sleeve's UDP 6783 still passes); with
    iptables, or ip6tables on an IPv6 underlay."""
    tool, key = ("ip6tables", "ip6tables") if net.ipv6 else ("iptables", "iptables")
    subprocess.run(["ip", "netns", "exec", net.underlay, "sysctl", "-qw", f"net.bridge.bridge-nf-call-{key}=1"],
                   check=False)  # fmt: skip
    rule = ["FORWARD", "-p", "udp", "--dport", "6784", "-j", "DROP"]
    subprocess.run(["ip", "netns", "exec", net.underlay, tool, "-w", "5", "-I" if add else "-D", *rule],
                   check=add, capture_output=True)  # fmt: skip
