"""Pods for the datapath tests: network namespaces plumbed onto a host's `weave` bridge through the pod plumbing
API (datapath.pods.attach_pod, what the router does for the CNI plugin), with addresses from the host
router's IPAM. Plus small traffic tools run inside pods (system python3: no extra packages)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Any

from tests.helpers import poll
from tests.netns.hosts import NsHost, RouterProc
from weave_node.api.client import request
from weave_node.datapath import pods as pod_links
from weave_node.datapath.model import Pod


@dataclass
class PodNs:
    name: str  # netns name
    ip: str
    pod: Pod
    host: NsHost

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *args], capture_output=True, text=True, check=check, timeout=timeout
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.name, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )


def make_pod(router: RouterProc, name: str) -> PodNs:
    """A pod on the router's host: an IPAM address, a veth onto the bridge, default route via the bridge."""
    host = router.host
    dp = poll(
        lambda: (router.status().get("datapath") or {}).get("bridge_address") and router.status()["datapath"],
        timeout=30,
        what=f"{host.netns}: the bridge's address",
    )
    gateway, prefix = dp["bridge_address"].split("/")
    doc: dict[str, Any] = request(
        "POST", "/ipam/allocate", socket_path=str(router.socket), body={"container_id": name}, timeout=30
    )
    ns = f"{host.netns}-{name}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    pod = Pod(
        netns=f"/run/netns/{ns}",
        ifname="eth0",
        host_ifname=f"vp-{name}"[:15],
        address=f"{doc['ip']}/{prefix}",
        gateway=gateway,
        mtu=int(dp["mtu"]),
    )
    pod_links.attach_pod(pod, host.netns)
    return PodNs(ns, str(doc["ip"]), pod, host)


def remove_pods(pods: list[PodNs]) -> None:
    for p in pods:
        subprocess.run(["ip", "netns", "delete", p.name], capture_output=True, check=False)


SERVER = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
print("listening", flush=True)
c, addr = s.accept(); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 16)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest(), addr[0], flush=True)
"""

CLIENT = """
import hashlib, random, socket, sys, time
dst, port, total, pace = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rnd = random.Random(7); h = hashlib.sha256(); sent = 0
c = socket.create_connection((dst, port), timeout=30)
while sent < total:
    chunk = rnd.randbytes(min(1 << 16, total - sent))
    c.sendall(chunk); h.update(chunk); sent += len(chunk)
    if pace: time.sleep(pace)  # spread the transfer over time so a router can be killed in the middle
c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
print(sent, h.hexdigest(), flush=True)
"""


def tcp_transfer(
    src: PodNs, dst: PodNs, total: int, *, pace: float = 0.0, port: int = 5001
) -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
    """Start a server in `dst` and a client in `src`; returns both processes (collect with finish())."""
    server = dst.popen("python3", "-c", SERVER, str(port))
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "listening"
    client = src.popen("python3", "-c", CLIENT, dst.ip, str(port), str(total), str(pace))
    return server, client


def finish(server: subprocess.Popen[str], client: subprocess.Popen[str], timeout: float = 120) -> tuple[str, str]:
    c_out, c_err = client.communicate(timeout=timeout)
    s_out, s_err = server.communicate(timeout=timeout)
    assert client.returncode == 0, f"client failed: {c_err}"
    assert server.returncode == 0, f"server failed: {s_err}"
    return s_out.strip().splitlines()[-1], c_out.strip()


MCAST_RECV = """
import socket, struct, sys
group, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0"))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
s.settimeout(30)
print("joined", flush=True)
data, addr = s.recvfrom(2048)
print(data.decode(), addr[0], flush=True)
"""

MCAST_SEND = """
import socket, sys, time
group, port, text, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 4)
for _ in range(count):
    s.sendto(text.encode(), (group, port))
    time.sleep(0.2)  # a few copies: the receivers' joins may still be settling
"""


def multicast_reaches(sender: PodNs, receivers: list[PodNs], group: str, port: int, text: str) -> None:
    """`sender` sends to `group`; every receiver (joined first) gets it, from the sender's address."""
    procs = [p.popen("python3", "-c", MCAST_RECV, group, str(port)) for p in receivers]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "joined"
    sender.run("python3", "-c", MCAST_SEND, group, str(port), text, "3")
    for proc in procs:
        out, err = proc.communicate(timeout=40)
        assert proc.returncode == 0, err
        assert out.split()[-2:] == [text, sender.ip]
