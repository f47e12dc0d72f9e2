"""The routers' DNS with real parts: pods added through libcni with the names containerd's CRI passes
(K8S_POD_NAME/K8S_POD_NAMESPACE in CNI_ARGS), their resolv.conf written from the CNI result as a runtime does,
glibc's resolver (`getent`) in the pods, three routers gossiping the records, and a resolver of our own in a
namespace on the underlay standing for the host's upstream."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cni.libcni import ensure_driver
from tests.cni.test_weave_net import Node, make_node
from tests.helpers import BIN, poll
from tests.netns.hosts import Net, netns_hosts, start_mesh
from weave_node.api.client import request
from weave_node.lab.system import ip_batch

UPSTREAM = "198.19.0.250"
UPSTREAM_SERVER = """
import socket, sys, threading, dns.message, dns.rrset
def answer(wire):
    q = dns.message.from_wire(wire); r = dns.message.make_response(q)
    if q.question[0].name.to_text().lower() == "outside.example.":
        r.answer.append(dns.rrset.from_text("outside.example.", 60, "IN", "A", "192.0.2.7"))
    else:
        r.set_rcode(3)
    return r.to_wire()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 53))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("0.0.0.0", 53)); t.listen(8)
def tcp():
    while True:
        c, _ = t.accept(); n = int.from_bytes(c.recv(2), "big"); w = answer(c.recv(n))
        c.sendall(len(w).to_bytes(2, "big") + w); c.close()
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
while True:
    d, a = u.recvfrom(4096); u.sendto(answer(d), a)
"""


@dataclasses.dataclass
class Dns:
    net: Net
    nodes: list[Node]
    resolv: Path
    upstream_ns: str

    def add(self, host: int, container: str, pod_name: str = "", namespace: str = "default") -> tuple[str, Any]:
        """A pod through libcni with the CRI's CNI_ARGS, and its resolv.conf from the result (as a runtime)."""
        node = self.nodes[host - 1]
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod_name}" if pod_name else ""
        driver = dataclasses.replace(node.driver, extra_env={"CNIDRIVER_ARGS": args})
        netns = node.netns(container)
        result = driver.add(node.conflist("1.0.0"), container, netns)
        etc = Path("/etc/netns") / Path(netns).name
        etc.mkdir(parents=True, exist_ok=True)
        dns = result.get("dns") or {}
        lines = [f"nameserver {s}" for s in dns.get("nameservers", [])] + [f"search {' '.join(dns.get('search', []))}"]
        (etc / "resolv.conf").write_text("\n".join(lines) + "\noptions timeout:1 attempts:2\n")
        return netns, result

    def delete(self, host: int, container: str, netns: str) -> None:
        node = self.nodes[host - 1]
        node.driver.delete(node.conflist("1.0.0"), container, netns)

    def getent(self, netns: str, name: str) -> list[str]:
        """glibc's answer in the pod (through the pod's resolv.conf): the addresses, [] for none."""
        out = subprocess.run(
            ["ip", "netns", "exec", Path(netns).name, "getent", "ahostsv4", name],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        return sorted({line.split()[0] for line in out.stdout.splitlines() if line.strip()})

    def query(self, netns: str, server: str, name: str, rdtype: str = "A", tcp: bool = False) -> dict[str, Any]:
        """One raw query from the pod (dnspython): rcode, flags and the answers' texts."""
        script = (
            "import dns.message, dns.query, json, sys\n"
            "q = dns.message.make_query(sys.argv[2], sys.argv[3])\n"
            "f = dns.query.tcp if sys.argv[4] == '1' else dns.query.udp\n"
            "r = f(q, sys.argv[1], timeout=3)\n"
            "print(json.dumps({'rcode': r.rcode(), 'aa': bool(r.flags & 0x400), "
            "'answers': [rd.to_text() for rr in r.answer for rd in rr]}))\n"
        )
        out = subprocess.run(
            ["ip", "netns", "exec", Path(netns).name, sys.executable, "-c", script, server, name, rdtype,
             "1" if tcp else "0"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dns]:
    binary = ensure_driver()
    base = tmp_path_factory.mktemp("dns")
    resolv = base / "resolv.conf"
    resolv.write_text("nameserver 198.19.0.251\n")  # nobody there yet: the test moves it to our resolver
    old = os.environ.get("WEAVE_DNS_RESOLV_CONF")
    os.environ["WEAVE_DNS_RESOLV_CONF"] = str(resolv)
    try:
        with netns_hosts(3, base) as net:
            upstream_ns = f"wnt-{net.tag}-up"
            veth = f"link add vup netns {net.underlay} type veth peer name eth0 netns {upstream_ns}"
            ip_batch(None, [f"netns add {upstream_ns}", veth])
            server = None
            try:
                ip_batch(net.underlay, ["link set vup master br0 up"])
                ip_batch(upstream_ns, ["link set lo up", f"addr add {UPSTREAM}/24 dev eth0", "link set eth0 up"])
                server = subprocess.Popen(
                    ["ip", "netns", "exec", upstream_ns, sys.executable, "-c", UPSTREAM_SERVER],
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                assert server.stdout is not None and server.stdout.readline().strip() == "ready"
                routers = start_mesh(net)
                nodes = [make_node(r, binary, base / f"node{i}") for i, r in enumerate(routers, 1)]
                c = Dns(net, nodes, resolv, upstream_ns)
                try:
                    yield c
                finally:
                    for node in nodes:
                        for ns in node.pods:
                            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
                            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
            finally:
                if server is not None:
                    server.kill()
                    server.wait(timeout=10)
                subprocess.run(["ip", "netns", "delete", upstream_ns], capture_output=True, check=False)
    finally:
        if old is None:
            os.environ.pop("WEAVE_DNS_RESOLV_CONF", None)
        else:
            os.environ["WEAVE_DNS_RESOLV_CONF"] = old


def _bridge(node: Node) -> str:
    return str(node.router.status()["datapath"]["bridge_address"].split("/")[0])


def test_a_pod_finds_a_pod_on_another_host_by_name_until_it_is_deleted(cluster: Dns) -> None:
    client_ns, client = cluster.add(1, "client-1", "client")
    assert client["dns"] == {"nameservers": [_bridge(cluster.nodes[0])], "search": ["weave.local"]}
    web_ns, web = cluster.add(3, "web-1", "web")
    web_ip = web["ips"][0]["address"].split("/")[0]
    poll(lambda: cluster.getent(client_ns, "web") == [web_ip], timeout=10, what="node1's pod resolves web (node3)")
    assert cluster.getent(client_ns, "web.weave.local.") == [web_ip]  # (the time it takes: bench/dns_bench.py)
    assert cluster.getent(web_ns, "client") == [client["ips"][0]["address"].split("/")[0]]  # and back
    status = cluster.nodes[1].router.status()["dns"]  # node2 holds both names too
    assert status["records"] >= 2 and status["own_records"] == 0 and status["problem"] is None, status
    cluster.delete(3, "web-1", web_ns)
    poll(lambda: cluster.getent(client_ns, "web") == [], timeout=10, what="web stops resolving after its DEL")
    reply = cluster.query(client_ns, _bridge(cluster.nodes[0]), "web.weave.local")
    assert reply["rcode"] == 3 and reply["aa"], reply  # NXDOMAIN, authoritative


def test_one_name_on_two_hosts_answers_both_in_turn_and_reverse_names_point_back(cluster: Dns) -> None:
    client_ns, _ = cluster.add(1, "client-2", "client2")
    ips = []
    for host in (2, 3):
        _, result = cluster.add(host, f"api-{host}", "api", namespace="shop")
        ips.append(result["ips"][0]["address"].split("/")[0])
    server = _bridge(cluster.nodes[0])
    poll(lambda: sorted(cluster.query(client_ns, server, "api.shop.weave.local").get("answers", [])) == sorted(ips),
         timeout=10, what="both api pods under one name")  # fmt: skip
    firsts = {cluster.query(client_ns, server, "api.shop.weave.local")["answers"][0] for _ in range(4)}
    assert firsts == set(ips)  # round-robin: each one comes first in turn
    ptr = cluster.query(client_ns, server, ".".join(reversed(ips[0].split("."))) + ".in-addr.arpa", "PTR")
    assert ptr["answers"] == ["api.shop.weave.local."], ptr
    tcp = cluster.query(client_ns, server, "api.shop.weave.local", tcp=True)
    assert sorted(tcp["answers"]) == sorted(ips), tcp
    nodata = cluster.query(client_ns, server, "api.shop.weave.local", "MX")
    assert nodata["rcode"] == 0 and nodata["answers"] == [] and nodata["aa"], nodata


def test_other_names_go_to_the_host_s_resolvers_read_again_when_they_change(cluster: Dns) -> None:
    client_ns, _ = cluster.add(2, "client-3", "client3")
    server = _bridge(cluster.nodes[1])
    failed = cluster.query(client_ns, server, "outside.example")  # resolv.conf names a resolver that is not there
    assert failed.get("rcode") == 2, failed  # SERVFAIL, after the upstream's timeout
    cluster.resolv.write_text(f"# moved\nnameserver {UPSTREAM}\n")
    poll(lambda: cluster.getent(client_ns, "outside.example") == ["192.0.2.7"], timeout=10,
         what="an outside name through node2's forwarder")  # fmt: skip
    assert cluster.query(client_ns, server, "outside.example", tcp=True)["answers"] == ["192.0.2.7"]
    assert cluster.query(client_ns, server, "nowhere.example")["rcode"] == 3  # the upstream's NXDOMAIN, relayed
    counters = cluster.nodes[1].router.status()["dns"]["counters"]
    assert counters["forwarded"] >= 3 and counters["forward_failed"] >= 1, counters


def test_names_by_hand_and_a_restarted_router_keeps_its_pods_names(cluster: Dns) -> None:
    client_ns, _ = cluster.add(1, "client-4", "client4")
    db_ns, db = cluster.add(3, "db-1", "db")
    db_ip = db["ips"][0]["address"].split("/")[0]
    sock = str(cluster.nodes[1].router.socket)
    request("POST", "/dns/records", socket_path=sock, body={"name": "legacy.weave.local", "ip": "10.40.0.9"})
    poll(lambda: cluster.getent(client_ns, "legacy") == ["10.40.0.9"], timeout=10, what="a name added by hand")
    cli = [str(BIN / "weave-node"), "dns", "lookup", "legacy", "--socket", str(cluster.nodes[0].router.socket)]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0 and out.stdout.split() == ["10.40.0.9"], out
    router = cluster.nodes[2].router
    router.proc.terminate()
    router.proc.wait(timeout=30)
    restarted = cluster.net.start_router(3, *router.args, datapath=True)
    cluster.nodes[2].router = restarted
    poll(lambda: restarted.status()["dns"]["own_records"] >= 1, timeout=20, what="node3's names back after a restart")
    assert cluster.getent(client_ns, "db") == [db_ip]  # never gone: the others kept node3's book
    request("POST", "/dns/remove", socket_path=sock, body={"name": "legacy"})
    poll(lambda: cluster.getent(client_ns, "legacy") == [], timeout=10, what="a name removed by hand")
    cluster.delete(3, "db-1", db_ns)


def test_garbage_never_takes_the_server_down_and_the_underlay_cannot_reach_it(cluster: Dns) -> None:
    client_ns, _ = cluster.add(1, "client-5", "client5")
    server = _bridge(cluster.nodes[0])
    rng = random.Random(25)
    valid = bytes.fromhex("abcd01000001000000000000") + b"\x03web\x05weave\x05local\x00\x00\x01\x00\x01"
    packets = [bytearray(rng.randbytes(rng.randrange(0, 600))) for _ in range(300)]
    for _ in range(300):  # a valid query with a few bytes changed
        p = bytearray(valid)
        for _ in range(rng.randrange(1, 6)):
            p[rng.randrange(len(p))] = rng.randrange(256)
        packets.append(p)
    packets += [bytearray(bytes.fromhex("abcd01000001000000000000") + b"\xc0\x0c\x00\x01\x00\x01")]  # a loop
    script = (
        "import socket, sys, json\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for p in json.load(sys.stdin): s.sendto(bytes.fromhex(p), (sys.argv[1], 53))\n"
        "t = socket.create_connection((sys.argv[1], 53), timeout=5)\n"
        "t.sendall(b'\\xff\\xff' + b'\\x00' * 100); t.close()\n"  # a TCP message that never completes
    )
    subprocess.run(
        ["ip", "netns", "exec", Path(client_ns).name, sys.executable, "-c", script, server],
        input=json.dumps([bytes(p).hex() for p in packets]), text=True, timeout=60, check=True,
    )  # fmt: skip
    reply = cluster.query(client_ns, server, "client5.weave.local")
    assert reply.get("rcode") == 0 and len(reply["answers"]) == 1, reply
    # A flood from one pod (about 20 times its 1000 queries/s) is held to its rate; another pod is answered
    # meanwhile. (A flood faster than the host takes datagrams in fills the socket's buffer before any limit of
    # ours sees it: that needs a limit in the kernel, docs/operations.md.)
    other_ns, _ = cluster.add(1, "client-6", "client6")
    flood = subprocess.Popen(
        ["ip", "netns", "exec", Path(client_ns).name, sys.executable, "-c",
         "import socket, sys, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nend = time.time() + 5\n"
         "while time.time() < end:\n    for _ in range(200): s.sendto(bytes.fromhex(sys.argv[2]), (sys.argv[1], 53))\n"
         "    time.sleep(0.01)\n", server, valid.hex()],
    )  # fmt: skip
    try:
        poll(lambda: cluster.nodes[0].router.status()["dns"]["counters"].get("rate_limited", 0) > 1000,
             timeout=10, what="the flood held to its rate")  # fmt: skip
        assert cluster.query(other_ns, server, "client5.weave.local").get("answers"), "another pod is answered"
    finally:
        flood.kill()
        flood.wait(timeout=10)
    assert cluster.nodes[0].router.proc.poll() is None
    assert "Traceback" not in cluster.nodes[0].router.log_text()
    # From the underlay (the upstream's namespace, on the hosts' subnet): neither the host's own address nor the
    # bridge's, routed through the host as any machine there may, has a server.
    h1 = cluster.net.hosts[0].address
    subprocess.run(["ip", "-n", cluster.upstream_ns, "route", "replace", f"{server}/32", "via", h1], check=True)
    for target in (h1, server):
        probe = subprocess.run(
            ["ip", "netns", "exec", cluster.upstream_ns, sys.executable, "-c",
             "import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n"
             "s.sendto(bytes.fromhex(sys.argv[2]), (sys.argv[1], 53))\n"
             "try:\n    s.recvfrom(512); print('answered')\nexcept OSError as e:\n    print('no answer', e)\n",
             target, valid.hex()],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert probe.stdout.startswith("no answer"), (target, probe.stdout)
    ping = subprocess.run(["ip", "netns", "exec", cluster.upstream_ns, "ping", "-c1", "-W2", server],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert ping.returncode == 0, ping.stdout  # the address is reachable from there: only DNS is not
    lines = cluster.net.hosts[0].run("ss", "-Hlun", "sport", "= :53").stdout.splitlines()
    bound = [line.split()[3] for line in lines]  # the local addresses
    assert f"{server}%weave:53" in bound and f"{server}%lo:53" in bound, bound  # bound to the bridge and lo only
    assert not any(a.startswith(("0.0.0.0:", "*:", f"{h1}:")) for a in bound), bound


def test_the_server_waits_for_the_bridge_device_and_then_serves(tmp_path: Path) -> None:
    """IPAM gives the bridge its address before the datapath has made the bridge: binding to a device that is not
    there yet is no problem, only a try again (CI's load once made that 10 s and the names late)."""
    ns = f"wnt-{os.getpid() % 100000}-enodev"
    script = """
import asyncio, subprocess, sys
from weave_node.dns.answer import Zone
from weave_node.dns.server import DnsServer
from weave_node.dns.settings import DnsSettings
async def main():
    s = DnsServer(DnsSettings(port=53), Zone.of("weave.local", 5, lambda n: [], lambda ip: [], lambda ip: False))
    await s.bind("10.99.0.1")
    print(s.address, s.problem)
    subprocess.run(["ip", "link", "add", "weave", "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "10.99.0.1/24", "dev", "weave"], check=True)
    await s.bind("10.99.0.1")
    print(s.address, s.problem)
    await s.stop()
asyncio.run(main())
"""
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script], capture_output=True,
                             text=True, timeout=60, check=True)  # fmt: skip
        assert out.stdout.split("\n")[:2] == ["None None", "10.99.0.1 None"], out
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
