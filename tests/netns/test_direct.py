"""Direct mode with real routers: h1 and h2 share an L2 segment (pod traffic between them is routed over the
underlay without encapsulation), h3 is on another subnet behind a router namespace (VXLAN as before)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import poll
from tests.netns.hosts import FAST, Net, RouterProc, netns_hosts, start_mesh
from tests.netns.pods import PodNs, finish, make_pod, multicast_reaches, remove_pods, tcp_transfer
from weave_node.lab.system import ip_batch

PODS = "10.32.0.0/12"


class Cluster:
    def __init__(self, net: Net, routers: list[RouterProc], gateway: str) -> None:
        self.net, self.routers, self.gateway = net, routers, gateway
        self.pods: list[PodNs] = []

    def pod(self, host: int, name: str) -> PodNs:
        p = make_pod(self.routers[host - 1], name)
        self.pods.append(p)
        return p

    def mode(self, host: int, peer: str) -> str:
        return str(
            next(p["mode"] for p in self.routers[host - 1].status()["datapath"]["peers"] if p["nickname"] == peer)
        )

    def vxlan_tx(self, host: int) -> int:
        text = self.net.hosts[host - 1].run("cat", "/sys/class/net/vxlan-6784/statistics/tx_bytes").stdout
        return int(text)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with netns_hosts(3, tmp_path_factory.mktemp("direct")) as net:
        gateway = f"wnt-{net.tag}-gw"
        ip_batch(
            None, [f"netns add {gateway}", f"link add vg netns {net.underlay} type veth peer name eth0 netns {gateway}"]
        )
        try:
            ip_batch(net.underlay, ["link set vg master br0 up"])
            ip_batch(
                gateway,
                [
                    "link set lo up",
                    "addr add 198.19.0.254/24 dev eth0",
                    "addr add 198.19.1.254/24 dev eth0",
                    "link set eth0 up",
                ],
            )
            subprocess.run(["ip", "netns", "exec", gateway, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
            h1, h2, h3 = net.hosts
            for h in (h1, h2):
                ip_batch(h.netns, ["route add 198.19.1.0/24 via 198.19.0.254"])
            ip_batch(
                h3.netns,
                [
                    "addr del 198.19.0.3/24 dev eth0",
                    "addr add 198.19.1.3/24 dev eth0",
                    "route add 198.19.0.0/24 via 198.19.1.254",
                ],
            )
            h3.address = "198.19.1.3"
            c = Cluster(net, start_mesh(net), gateway)
            poll(lambda: c.mode(1, "h2") == "direct" and c.mode(2, "h1") == "direct", timeout=20, what="h1<->h2 direct")
            yield c
            remove_pods(c.pods)
        finally:
            subprocess.run(["ip", "netns", "delete", gateway], capture_output=True, check=False)


def test_l2_neighbours_go_direct_and_a_routed_peer_stays_in_vxlan(cluster: Cluster) -> None:
    assert cluster.mode(1, "h3") == "fastdp" and cluster.mode(3, "h1") == "fastdp"
    peer = next(p for p in cluster.routers[0].status()["datapath"]["peers"] if p["nickname"] == "h2")
    assert peer["direct"] == {"device": "eth0"} and "both directions" in peer["reason"]
    a, b, c = cluster.pod(1, "a"), cluster.pod(2, "b"), cluster.pod(3, "c")
    for src, dst in [(a, b), (b, a), (a, c), (c, b)]:
        out = src.run("ping", "-c", "2", "-W", "5", dst.ip, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    # a -> b: routed by both hosts (TTL 64 - 2), no VXLAN; a -> c: bridged through the tunnel (TTL untouched).
    h1 = cluster.net.hosts[0]
    why = h1.run("ip", "route").stdout + a.run("ip", "neigh").stdout + h1.run("ebtables-save").stdout
    assert "ttl=62" in a.run("ping", "-c", "1", b.ip).stdout, why
    assert "ttl=64" in a.run("ping", "-c", "1", c.ip).stdout
    before = cluster.vxlan_tx(1)
    received, sent = finish(*tcp_transfer(a, b, 30 << 20))
    assert received.split()[:2] == sent.split() and received.split()[2] == a.ip  # intact, and no NAT
    assert cluster.vxlan_tx(1) - before < 1 << 20  # 30 MiB went by, not through the tunnel
    before = cluster.vxlan_tx(1)
    received, sent = finish(*tcp_transfer(a, c, 10 << 20, port=5002))
    assert received.split()[:2] == sent.split()
    assert cluster.vxlan_tx(1) - before > 10 << 20  # h3 is not a neighbour: the tunnel carried it
    # a's pod resolved b's address to its own host's bridge (proxy ARP), and c's to c itself.
    h1_bridge = cluster.net.hosts[0].run("cat", "/sys/class/net/weave/address").stdout.strip()
    neigh = a.run("ip", "neigh", "show", b.ip).stdout
    assert h1_bridge in neigh, neigh


def test_multicast_reaches_pods_on_every_host_in_direct_mode(cluster: Cluster) -> None:
    r2, r3, s1 = cluster.pod(2, "m2"), cluster.pod(3, "m3"), cluster.pod(1, "m1")
    multicast_reaches(s1, [r2, r3], "239.1.2.4", 5354, "hello-direct")


@contextlib.contextmanager
def pod_addresses_dropped(cluster: Cluster) -> Iterator[None]:
    """The underlay starts dropping packets with pod addresses (a router or a cloud's ACL would): VXLAN, whose
    outer addresses are the hosts', still passes."""
    rules = [["-s", PODS, "-j", "DROP"], ["-d", PODS, "-j", "DROP"]]
    u = cluster.net.underlay
    for rule in rules:
        subprocess.run(["ip", "netns", "exec", u, "iptables", "-I", "FORWARD", *rule], check=True)
    try:
        yield
    finally:
        for rule in rules:
            subprocess.run(["ip", "netns", "exec", u, "iptables", "-D", "FORWARD", *rule], check=False)


def test_a_direct_path_that_breaks_mid_transfer_falls_back_and_the_transfer_completes(cluster: Cluster) -> None:
    a, b = cluster.pod(1, "fa"), cluster.pod(2, "fb")
    h1 = cluster.net.hosts[0]
    before = cluster.vxlan_tx(1)
    server, client = tcp_transfer(a, b, 12 << 20, pace=0.03, port=5003)  # ~6 s
    try:
        poll(lambda: "5003" in a.run("ss", "-tnH", "state", "established").stdout, timeout=10, what="transfer on")
        with pod_addresses_dropped(cluster):
            poll(lambda: cluster.mode(1, "h2") == "fastdp", timeout=20, what="h1 falls back to fastdp for h2")
            assert "direct path: no heartbeat" in next(
                p["reason"] for p in cluster.routers[0].status()["datapath"]["peers"] if p["nickname"] == "h2"
            )
            poll(lambda: "198.19.0.2" not in h1.run("ip", "route", "show", "proto", "87").stdout, timeout=10,
                 what="h2's direct routes gone")  # fmt: skip
            received, sent = finish(server, client)
    finally:
        for proc in (server, client):
            if proc.poll() is None:
                proc.kill()
    assert received.split()[:2] == sent.split()  # every byte, in order, across the switch
    assert cluster.vxlan_tx(1) - before > 1 << 20  # the rest went through the tunnel
    poll(lambda: cluster.mode(1, "h2") == "direct", timeout=20, what="h1<->h2 direct again")


def test_a_restart_with_no_direct_takes_direct_mode_away_and_keeps_traffic_in_vxlan(tmp_path: Path) -> None:
    with netns_hosts(2, tmp_path) as net:
        r1, r2 = start_mesh(net)
        h = net.hosts[0]
        poll(lambda: h.run("ip", "route", "show", "proto", "87").stdout != "", timeout=20, what="h1's direct routes")
        r1.proc.terminate()
        r1.proc.wait()
        r1 = net.start_router(1, *FAST, "--no-direct", net.hosts[1].address, datapath=True)
        dp = poll(lambda: (d := r1.status().get("datapath")) and d["peers"] and d, timeout=20, what="status")
        assert dp["direct"] == {"on": False, "reason": "turned off (--no-direct)"}
        poll(lambda: h.run("ip", "route", "show", "table", "all", "proto", "87").stdout == "", timeout=20,
             what="every route of ours gone")  # fmt: skip
        assert "WEAVE-NODE-DIRECT" not in h.run("ebtables-save").stdout and "6784" not in h.run("ip", "rule").stdout
        assert h.run("cat", "/proc/sys/net/ipv4/conf/weave/proxy_arp").stdout.strip() == "0"
        poll(lambda: [p["mode"] for p in r1.status()["datapath"]["peers"]] == ["fastdp"], timeout=20, what="fastdp")
        a, b = make_pod(r1, "na"), make_pod(r2, "nb")
        try:
            assert "ttl=64" in a.run("ping", "-c", "1", "-W", "5", b.ip).stdout  # bridged through the tunnel
        finally:
            remove_pods([a, b])


def test_a_restarted_router_keeps_its_direct_routes_while_the_peer_confirms_again(tmp_path: Path) -> None:
    with netns_hosts(2, tmp_path) as net:
        r1, _ = start_mesh(net)
        h = net.hosts[0]
        poll(lambda: "direct" in [p["mode"] for p in r1.status()["datapath"]["peers"]], timeout=20, what="direct")
        routes = h.run("ip", "route", "show", "table", "all", "proto", "87").stdout
        r1.proc.terminate()
        r1.proc.wait()
        r1 = net.start_router(1, *FAST, net.hosts[1].address, datapath=True)
        poll(lambda: [p["mode"] for p in r1.status()["datapath"]["peers"]] == ["direct"], timeout=20, what="direct")
        applied = [line for line in r1.log_text().splitlines() if "datapath: applied" in line]
        assert not any("DelRoute" in line or "AddRule" in line for line in applied), applied
        assert h.run("ip", "route", "show", "table", "all", "proto", "87").stdout == routes
        assert "direct mode: adopting" in r1.log_text()


def test_pods_that_address_their_host_still_reach_a_direct_peer_that_falls_to_the_sleeve(cluster: Cluster) -> None:
    """Direct mode's proxy ARP teaches a pod to send to its own host for a direct peer's pods. When that peer
    falls back to the sleeve (here VXLAN is blocked, so fastdp goes and direct mode with it), the host routes
    those packets into the sleeve: the host's own frames must cross it (they cross under the bridge's alias).
    Before, the sleeve dropped them with the bridges' heartbeats, and such a pod lost the peer until its ARP entry
    expired (15-45 s, longer than a restart)."""
    x, y = cluster.pod(1, "sx"), cluster.pod(2, "sy")
    h1_bridge = cluster.net.hosts[0].run("cat", "/sys/class/net/weave/address").stdout.strip()
    assert x.run("ping", "-c", "1", "-W", "5", y.ip, check=False).returncode == 0
    assert h1_bridge in x.run("ip", "neigh", "show", y.ip).stdout  # proxy ARP: x sends to its host
    x.run("ip", "neigh", "replace", y.ip, "lladdr", h1_bridge, "dev", "eth0", "nud", "permanent")  # and keeps to it
    u, (h1, h2) = cluster.net.underlay, (h.address for h in cluster.net.hosts[:2])
    rules = [["-s", s, "-d", d, "-p", "udp", "--dport", "6784", "-j", "DROP"] for s, d in ((h1, h2), (h2, h1))]
    try:
        for rule in rules:
            subprocess.run(["ip", "netns", "exec", u, "iptables", "-I", "FORWARD", *rule], check=True)
        poll(lambda: cluster.mode(1, "h2") == "sleeve" and cluster.mode(2, "h1") == "sleeve", timeout=20,
             what="h1<->h2 in the sleeve")  # fmt: skip
        poll(lambda: "198.19.0.2" not in cluster.net.hosts[0].run("ip", "route", "show", "proto", "87").stdout,
             timeout=10, what="h2's direct routes gone")  # fmt: skip
        poll(lambda: x.run("ping", "-c", "1", "-W", "1", y.ip, check=False).returncode == 0, timeout=10,
             what="x -> y, routed by h1 into the sleeve")  # fmt: skip
        assert "ttl=63" in x.run("ping", "-c", "1", y.ip).stdout  # routed once (by h1), then bridged
        assert y.run("ping", "-c", "1", "-W", "5", x.ip, check=False).returncode == 0
    finally:
        for rule in rules:
            subprocess.run(["ip", "netns", "exec", u, "iptables", "-D", "FORWARD", *rule], check=False)
        x.run("ip", "neigh", "del", y.ip, "dev", "eth0", check=False)
    poll(lambda: cluster.mode(1, "h2") == "direct" and cluster.mode(2, "h1") == "direct", timeout=30,
         what="h1<->h2 direct again")  # fmt: skip
