"""The kernel datapath with real routers: hosts are network namespaces on an underlay bridge, pods are network
namespaces on each host's `weave` bridge, traffic crosses hosts in kernel VXLAN."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BIN, poll
from tests.netns.hosts import FAST, Net, RouterProc, netns_hosts, peers_fastdp, start_mesh
from tests.netns.pods import PodNs, finish, make_pod, multicast_reaches, remove_pods, tcp_transfer
from weave_node.datapath import pods as pod_links
from weave_node.datapath.model import Pod
from weave_node.lab.system import ip_batch

INTERNET = "203.0.113.1"  # on the "internet" namespace, reached from pods only through masquerade


class Mesh:
    def __init__(self, net: Net, routers: list[RouterProc], internet: str) -> None:
        self.net, self.routers, self.internet = net, routers, internet
        self.pods: list[PodNs] = []

    def pod(self, host: int, name: str) -> PodNs:
        p = make_pod(self.routers[host - 1], name)
        self.pods.append(p)
        return p


@contextlib.contextmanager
def _mesh(tmp: Path, *, kube_proxy: bool) -> Iterator[Mesh]:
    with netns_hosts(3, tmp) as net:
        internet = f"wnt-{net.tag}-inet"
        ip_batch(
            None,
            [f"netns add {internet}", f"link add vi netns {net.underlay} type veth peer name eth0 netns {internet}"],
        )
        try:
            ip_batch(net.underlay, ["link set vi master br0 up"])
            ip_batch(
                internet,
                [
                    "link set lo up",
                    f"addr add {INTERNET}/32 dev lo",
                    "addr add 198.19.0.254/24 dev eth0",
                    "link set eth0 up",
                ],
            )
            for h in net.hosts:
                ip_batch(h.netns, ["route add default via 198.19.0.254"])
                if kube_proxy:  # kube-proxy's chains exist before we start: they must survive us untouched.
                    h.run("iptables", "-t", "nat", "-N", "KUBE-SERVICES")
                    h.run(
                        "iptables",
                        "-t",
                        "nat",
                        "-A",
                        "KUBE-SERVICES",
                        "-d",
                        "10.96.0.1/32",
                        "-p",
                        "tcp",
                        "-j",
                        "RETURN",
                    )
                    h.run("iptables", "-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES")
            m = Mesh(net, start_mesh(net), internet)
            yield m
            remove_pods(m.pods)
        finally:
            subprocess.run(["ip", "netns", "delete", internet], capture_output=True, check=False)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Three hosts where kube-proxy's chains exist: bridged pod traffic must stay visible to iptables."""
    with _mesh(tmp_path_factory.mktemp("dp"), kube_proxy=True) as m:
        yield m


def test_pods_on_three_hosts_ping_each_other_and_transfer(mesh: Mesh) -> None:
    _ping_and_transfer(mesh)


def _ping_and_transfer(mesh: Mesh) -> None:
    a, b, c = mesh.pod(1, "a"), mesh.pod(2, "b"), mesh.pod(3, "c")
    for src, dst in [(a, b), (b, c), (c, a)]:
        out = src.run("ping", "-c", "2", "-W", "5", dst.ip, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    server, client = tcp_transfer(a, c, 20 << 20)
    received, sent = finish(server, client)
    assert received.split()[:2] == sent.split()  # every byte arrived, checksum equal
    assert received.split()[2] == a.ip  # pod to pod: no NAT inside the range
    # The pod's MTU is the bridge's, the underlay's minus VXLAN's 50 bytes.
    mtu = mesh.routers[0].status()["datapath"]["mtu"]
    assert mtu == 1450 and pod_links.pod_state(a.pod)["mtu"] == 1450
    big = a.run("ping", "-c", "1", "-W", "5", "-M", "do", "-s", str(mtu - 28), c.ip, check=False)
    assert big.returncode == 0, big.stdout  # a full-size packet crosses without fragmentation


def test_multicast_from_one_host_reaches_pods_on_two_others(mesh: Mesh) -> None:
    _multicast(mesh)


def _multicast(mesh: Mesh) -> None:
    r1, r2, s3 = mesh.pod(1, "m1"), mesh.pod(2, "m2"), mesh.pod(3, "m3")
    multicast_reaches(s3, [r1, r2], "239.1.2.3", 5353, "hello-weave")


def test_pods_reach_the_outside_through_masquerade(mesh: Mesh) -> None:
    _masquerade(mesh)


def _masquerade(mesh: Mesh, name: str = "out") -> None:
    pod = mesh.pod(2, name)
    server = subprocess.Popen(
        ["ip", "netns", "exec", mesh.internet, "python3", "-c", _SERVER_ON_INTERNET],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        out = pod.run("python3", "-c", _CLIENT_TO_INTERNET, INTERNET, check=False)
        assert out.returncode == 0, out.stderr
        seen_from = server.communicate(timeout=30)[0].strip()
    finally:
        if server.poll() is None:
            server.kill()
    assert seen_from == mesh.net.hosts[1].address  # the pod's address was masqueraded to its host's


_SERVER_ON_INTERNET = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("203.0.113.1", 8080)); s.listen(1); print("listening", flush=True)
c, addr = s.accept(); c.sendall(b"hi"); c.close(); print(addr[0], flush=True)
"""
_CLIENT_TO_INTERNET = """
import socket, sys
c = socket.create_connection((sys.argv[1], 8080), timeout=20); assert c.recv(2) == b"hi"
"""


def test_kube_proxy_chains_survive_and_ours_are_in_place(mesh: Mesh) -> None:
    for h in mesh.net.hosts:
        nat = h.run("iptables-save", "-t", "nat").stdout
        assert "-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -j RETURN" in nat
        assert "-A PREROUTING -j KUBE-SERVICES" in nat
        assert nat.count("-A POSTROUTING -j WEAVE-NODE-NAT") == 1
        assert "-A WEAVE-NODE-NAT -s 10.32.0.0/12 ! -d 10.32.0.0/12 -j MASQUERADE" in nat
        assert h.run("iptables-save", "-t", "filter").stdout.count("-A FORWARD -j WEAVE-NODE-FORWARD") == 1
        assert h.run("sysctl", "-n", "net.bridge.bridge-nf-call-iptables").stdout.strip() == "1"
    shown = mesh.routers[0].status()["datapath"]["bridge_netfilter"]
    assert shown["value"] == "1" and "kube-proxy" in shown["reason"], shown


def test_on_bare_hosts_bridged_pod_traffic_skips_iptables_and_all_still_works(tmp_path: Path) -> None:
    """Where weave is the only bridge and nothing of Kubernetes is there, bridge-nf-call-iptables goes to 0 (the
    measured cost of fastdp against a hand-built bridge): pods still reach each other (unicast, a transfer,
    multicast) and the outside through masquerade (routed, so iptables still sees it)."""
    with _mesh(tmp_path, kube_proxy=False) as bare:
        for h in bare.net.hosts:
            poll(
                lambda h=h: h.run("sysctl", "-n", "net.bridge.bridge-nf-call-iptables").stdout.strip() == "0",
                timeout=20,
                what=f"{h.netns}: bridge-nf-call-iptables 0",
            )
        assert "nothing but weave-node" in bare.routers[0].status()["datapath"]["bridge_netfilter"]["reason"]
        _ping_and_transfer(bare)
        _multicast(bare)
        _masquerade(bare)


def test_pod_plumbing_is_idempotent_and_exactly_reversed(mesh: Mesh) -> None:
    p = mesh.pod(1, "plumb")
    host = mesh.net.hosts[0]
    before = pod_links.pod_state(p.pod)
    assert pod_links.attach_pod(p.pod, host.netns)["mac"] == before["mac"]  # again: nothing changes
    assert pod_links.pod_state(p.pod) == before
    assert before["addresses"] == [p.pod.address] and before["gateways"] == [p.pod.gateway]
    assert pod_links.detach_pod(p.pod, host.netns) is True
    assert pod_links.pod_state(p.pod) == {}
    assert p.pod.host_ifname not in host.run("ip", "-o", "link").stdout
    assert pod_links.detach_pod(p.pod, host.netns) is False  # already gone: fine
    subprocess.run(["ip", "netns", "delete", p.name], check=True)
    assert pod_links.detach_pod(p.pod, host.netns) is False  # the namespace is gone too: still fine


def test_a_failed_attach_leaves_nothing_behind(mesh: Mesh) -> None:
    host = mesh.net.hosts[0]
    ns = f"{host.netns}-bad"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        bad = Pod(f"/run/netns/{ns}", "eth0", "vp-bad", "10.32.9.9/12", gateway="192.0.2.1", mtu=1450)
        with pytest.raises(pod_links.DatapathError, match=r"default route via 192\.0\.2\.1"):
            pod_links.attach_pod(bad, host.netns)
        assert "vp-bad" not in host.run("ip", "-o", "link").stdout
        missing = Pod("/run/netns/nope-not-there", "eth0", "vp-bad", "10.32.9.9/12", "10.32.0.1", 1450)
        with pytest.raises(pod_links.DatapathError, match="nope-not-there"):
            pod_links.attach_pod(missing, host.netns)
        assert not Path("/run/netns/nope-not-there").exists()
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def test_blocked_vxlan_is_reported_per_peer_and_recovers(mesh: Mesh) -> None:
    h3 = mesh.net.hosts[2]
    rule = ["INPUT", "-p", "udp", "--dport", "6784", "-j", "DROP"]
    h3.run("iptables", "-I", *rule)
    try:

        def h3_mode_on_h1() -> dict[str, Any] | None:
            peers = {p["nickname"]: p for p in mesh.routers[0].status()["datapath"]["peers"]}
            return peers["h3"] if peers["h3"]["mode"] == "sleeve" else None

        down = poll(h3_mode_on_h1, timeout=20, what="h1 to report h3's fast path down (and use the sleeve)")
        assert "UDP 6784" in down["reason"]
        h2_on_h1 = {p["nickname"]: p["mode"] for p in mesh.routers[0].status()["datapath"]["peers"]}["h2"]
        assert h2_on_h1 == "direct"  # only the broken pair is affected (h1 and h2 are L2 neighbours: direct)
        assert "h3): direct -> sleeve" in mesh.routers[0].log_text()
    finally:
        h3.run("iptables", "-D", *rule)
    poll(lambda: peers_fastdp(mesh.routers[0], 2), timeout=20, what="h3 back to the kernel datapath")


def test_sigkill_of_a_router_does_not_interrupt_a_transfer_and_restart_adopts(tmp_path: Path) -> None:
    with netns_hosts(2, tmp_path) as net:
        r1, r2 = start_mesh(net)
        a, b = make_pod(r1, "ka"), make_pod(r2, "kb")
        try:
            links_before = net.hosts[0].run("ip", "-o", "link", "show", "weave").stdout.split(":")[0]
            fdb_before = net.hosts[0].run("bridge", "fdb", "show", "dev", "vxlan-6784").stdout
            server, client = tcp_transfer(a, b, 24 << 20, pace=0.01)  # ~4 s
            r1.proc.send_signal(signal.SIGKILL)
            r1.proc.wait()
            r2.proc.send_signal(signal.SIGKILL)  # both at once: nobody is left in the path
            r2.proc.wait()
            received, sent = finish(server, client)
            assert received.split()[:2] == sent.split()
            r1 = net.start_router(1, *FAST, net.hosts[1].address, datapath=True)
            poll(lambda: r1.status().get("datapath", {}).get("last_sync", {}).get("ops") == 0, timeout=20, what="sync")
            # Adopted, not rebuilt: the same bridge, the same entries, and no link or FDB change was needed but the
            # one that puts the new sleeve TAP on the bridge (the old one went with the killed router). Direct
            # mode's routes wait for the direct heartbeats again (pod traffic takes VXLAN meanwhile).
            assert net.hosts[0].run("ip", "-o", "link", "show", "weave").stdout.split(":")[0] == links_before
            applied = [line for line in r1.log_text().splitlines() if "datapath: applied" in line]
            first = applied[0].split("datapath: applied ")[1]
            assert "1 SetLink" in first and not any(k in first for k in ("Create", "Delete", "Fdb", "Neigh")), applied
            assert "sleeve: weave-sleeve on bridge weave" in r1.log_text()
            assert _permanent(net.hosts[0].run("bridge", "fdb", "show", "dev", "vxlan-6784").stdout) == _permanent(
                fdb_before
            )
            assert a.run("ping", "-c", "1", "-W", "5", b.ip, check=False).returncode == 0
        finally:
            remove_pods([a, b])


def _permanent(fdb: str) -> set[str]:
    return {line.strip() for line in fdb.splitlines() if "permanent" in line and "dst" in line}


def test_a_stale_bridge_is_repaired_and_a_foreign_vxlan_is_reported(tmp_path: Path) -> None:
    with netns_hosts(2, tmp_path) as net:
        h1, h2 = net.hosts
        ip_batch(h1.netns, ["link add weave type bridge", "link set weave mtu 9000", "addr add 10.99.0.1/16 dev weave"])
        ip_batch(h2.netns, ["link add foreign0 type vxlan id 42 dstport 6784"])
        r1 = net.start_router(1, *FAST, datapath=True)
        r2 = net.start_router(2, *FAST, datapath=True)

        def repaired() -> bool:
            link = h1.run("ip", "-o", "link", "show", "dev", "weave").stdout
            addrs = h1.run("ip", "-o", "addr", "show", "dev", "weave").stdout
            cidr = r1.status()["datapath"]["bridge_address"] or "?"
            return "mtu 1450" in link and ",UP" in link and "10.99.0.1" not in addrs and f"inet {cidr}" in addrs

        poll(repaired, timeout=20, what="the stale bridge repaired")
        assert "alias weave-node" in h1.run("ip", "-d", "link", "show", "weave").stdout
        problems = poll(lambda: r2.status()["datapath"]["problems"], timeout=20, what="the clash reported")
        assert "foreign0 already uses UDP port 6784" in problems[0]
        assert "foreign0 already uses UDP port 6784" in r2.log_text()
        assert "foreign0" in h2.run("ip", "-o", "link").stdout  # still there
        assert "vxlan-6784" not in h2.run("ip", "-o", "link").stdout
        assert r1.status()["datapath"]["problems"] == []


def test_a_departed_peer_loses_its_entries_after_the_retention(tmp_path: Path) -> None:
    with netns_hosts(2, tmp_path) as net:
        r1, r2 = start_mesh(net, "--peer-retain", "2")

        def floods() -> str:
            return net.hosts[0].run("bridge", "fdb", "show", "dev", "vxlan-6784").stdout

        assert f"00:00:00:00:00:00 dst {net.hosts[1].address}" in floods()
        r2.proc.terminate()
        r2.proc.wait()
        gone = f"dst {net.hosts[1].address}"
        poll(lambda: not any(gone in e for e in _permanent(floods())), timeout=30, what="h2's entries removed")
        assert r1.status()["datapath"]["peers"] == []


def test_status_shows_the_datapath_per_peer(mesh: Mesh) -> None:
    r1 = mesh.routers[0]
    args = ["--socket", str(r1.socket)]
    summary = r1.host.run(str(BIN / "weave-node"), "status", *args).stdout
    flat = " ".join(summary.split())  # rich wraps long lines
    assert "Datapath: fastdp (vxlan-6784, UDP 6784), sleeve (weave-sleeve, UDP 6783), bridge weave 10." in flat
    assert "2 direct" in flat  # the hosts share a subnet
    detail = subprocess.run(
        ["ip", "netns", "exec", r1.host.netns, str(BIN / "weave-node"), "status", "datapath", *args],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "80", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    ).stdout
    assert "MTU from underlay eth0 1500 - 50 (VXLAN)" in detail
    rows = [line for line in detail.splitlines() if line.strip().startswith(("h2", "h3"))]
    assert len(rows) == 2 and all(" direct " in row and "198.19.0." in row for row in rows)
    assert max(len(line) for line in detail.splitlines()) <= 80


def test_reset_removes_only_ours_and_refuses_while_the_router_runs(tmp_path: Path) -> None:
    with netns_hosts(1, tmp_path) as net:
        h = net.hosts[0]
        h.run("iptables", "-t", "nat", "-N", "SOMEONE-ELSES")
        r = net.start_router(1, *FAST, datapath=True)
        poll(lambda: r.status()["datapath"]["bridge_address"], timeout=20, what="the bridge address")
        poll(lambda: "WEAVE-NODE-NAT" in h.run("iptables-save", "-t", "nat").stdout, timeout=20, what="our chains")
        bnf = ("sysctl", "-n", "net.bridge.bridge-nf-call-iptables")
        poll(lambda: h.run(*bnf).stdout.strip() == "0", timeout=20, what="bridged traffic off iptables")
        assert "WEAVE-NODE-DIRECT" in h.run("ebtables-save").stdout and "6784" in h.run("ip", "rule").stdout
        refused = h.run(str(BIN / "weave-node"), "reset", "--socket", str(r.socket), check=False)
        assert refused.returncode == 1 and "stop it first" in refused.stderr
        r.proc.terminate()
        r.proc.wait()
        assert "vxlan-6784" in h.run("ip", "-o", "link").stdout  # stopping leaves the datapath in place
        out = h.run(str(BIN / "weave-node"), "reset", "--socket", str(r.socket))
        assert "removed link vxlan-6784" in out.stdout and "removed link weave" in out.stdout
        links = h.run("ip", "-o", "link").stdout
        assert "weave" not in links and "vxlan-6784" not in links
        nat = h.run("iptables-save", "-t", "nat").stdout
        assert "WEAVE-NODE" not in nat and ":SOMEONE-ELSES" in nat
        assert "set net.bridge.bridge-nf-call-iptables back to 1" in out.stdout and h.run(*bnf).stdout.strip() == "1"
        # direct mode's objects: the policy rule, table 6784's default, the ebtables chains
        assert "6784" not in h.run("ip", "rule").stdout
        assert h.run("ip", "route", "show", "table", "all", "proto", "87").stdout == ""
        assert "WEAVE-NODE" not in h.run("ebtables-save").stdout
        assert h.run(str(BIN / "weave-node"), "reset", "--socket", str(r.socket)).stdout.strip() == "nothing to remove"
