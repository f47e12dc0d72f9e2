"""The sleeve with real routers on the real kernel: hosts are network namespaces on an underlay bridge whose
namespace filters traffic with iptables (bridged packets pass its FORWARD chain), pods are namespaces on each
host's `weave` bridge.

- UDP 6784 (VXLAN) blocked between two hosts: their pods' traffic falls back to the sleeve within the bound, a
  running TCP transfer survives, the third host stays in fastdp, each host reaches the other's pods through the
  sleeve; unblocked: back to fastdp.
- All traffic between two hosts cut: their pods reach each other through the third host (relayed).
- A password: pod traffic only in the sleeve, sealed; a capture on the underlay shows no plaintext, a captured
  datagram replayed is dropped, a host with the wrong password carries nothing, 256 MiB arrive intact with loss
  and reordering on the underlay.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import poll
from tests.netns.hosts import FAST, Net, RouterProc, netns_hosts, start_mesh
from tests.netns.pods import PodNs, finish, make_pod, remove_pods, tcp_transfer
from weave_node.overlay.sleeve.codec import aesgcm_available

pytestmark = pytest.mark.netns
FALLBACK_BOUND = 10.0  # seconds from the block to sleeve mode (heartbeat timeout 4 s + evaluation)
PATTERN = "5eed5eed5eed5eed"  # ping -p: a payload to look for on the wire
REPLAY = """
import socket, struct, sys
src, dst, payload = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
udp = struct.pack("!HHHH", 6783, 6783, 8 + len(payload), 0) + payload  # checksum 0: none (IPv4)
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(3):
    s.sendto(ip + udp, (dst, 0))
"""


def _mode(r: RouterProc, peer: str) -> str | None:
    p = r.status().get("datapath", {}).get("peers", [])
    return next((x["mode"] for x in p if x["nickname"] == peer), None)


def _peer(r: RouterProc, peer: str) -> dict[str, Any]:
    p = r.status().get("datapath", {}).get("peers", [])
    return next((x for x in p if x["nickname"] == peer), {})


def _sleeve(r: RouterProc) -> dict[str, Any]:
    doc: dict[str, Any] = r.status().get("datapath", {}).get("sleeve") or {}
    return doc


def _block(net: Net, a: int, b: int, *match: str, add: bool = True) -> None:
    """Drop packets between hosts a and b (both directions) in the underlay's FORWARD chain."""
    ha, hb = net.hosts[a - 1].address, net.hosts[b - 1].address
    for src, dst in ((ha, hb), (hb, ha)):
        subprocess.run(
            ["ip", "netns", "exec", net.underlay, "iptables", "-w", "5", "-I" if add else "-D", "FORWARD",
             "-s", src, "-d", dst, *match, "-j", "DROP"],
            check=True, capture_output=True,
        )  # fmt: skip


def _ping(pod: PodNs, ip: str, count: int = 3) -> bool:
    return pod.run("ping", "-c", str(count), "-i", "0.2", "-W", "2", ip, check=False).returncode == 0


@pytest.fixture
def three(tmp_path: Path) -> Iterator[tuple[Net, list[RouterProc], list[PodNs]]]:
    with netns_hosts(3, tmp_path) as net:
        routers = start_mesh(net, "--no-direct")  # VXLAN and the sleeve; test_direct.py covers direct mode
        pods: list[PodNs] = []
        try:
            for i, r in enumerate(routers, 1):
                pods.append(make_pod(r, f"s{i}"))  # one by one: a failure still removes those made
            yield net, routers, pods
        finally:
            remove_pods(pods)


def test_blocked_vxlan_falls_back_to_sleeve_and_returns_with_a_transfer_running(
    three: tuple[Net, list[RouterProc], list[PodNs]],
) -> None:
    net, (r1, r2, r3), (p1, p2, _p3) = three
    total = 96 << 20
    assert _ping(p1, p2.ip)
    server, client = tcp_transfer(p1, p2, total, pace=0.02)  # ~1500 chunks of 64 KiB over ~30 s
    poll(lambda: "ESTAB" in p1.run("ss", "-tn", "dst", p2.ip).stdout, timeout=10, what="transfer under way")
    _block(net, 1, 2, "-p", "udp", "--dport", "6784")
    blocked = time.monotonic()
    poll(lambda: _mode(r1, "h2") == "sleeve" and _mode(r2, "h1") == "sleeve", timeout=20, what="h1<->h2 in sleeve")
    fell_back = time.monotonic() - blocked
    assert fell_back < FALLBACK_BOUND, f"fallback took {fell_back:.1f} s"
    assert _mode(r1, "h3") == "fastdp" and _mode(r3, "h1") == "fastdp", "h3 must stay in the kernel"
    reason = _peer(r1, "h2")["reason"]
    assert "6784" in reason, reason
    # Traffic really crosses the sleeve now, and the flood list no longer names h2 (no duplicate broadcasts).
    frames = _sleeve(r1)["counters"].get("frames_out", 0)
    poll(
        lambda: _sleeve(r1)["counters"].get("frames_out", 0) > frames + 50,
        timeout=30,
        what="frames through h1's sleeve",
    )
    poll(lambda: r1.status()["datapath"]["fastdp"]["flood_entries"] == 1, timeout=10, what="one flood entry (h3)")
    assert _ping(p1, p2.ip)
    # Each host reaches the other's pod through the sleeve too (its frames cross under the bridge's alias; they
    # used to be dropped with the heartbeats), and that does not keep the pair from returning to fastdp below.
    for host, pod in ((net.hosts[0], p2), (net.hosts[1], p1)):
        host.run("ip", "neigh", "flush", "dev", "weave", "to", pod.ip, check=False)
        out = host.run("ping", "-c", "3", "-i", "0.2", "-W", "2", pod.ip, check=False)
        assert out.returncode == 0, f"{host.netns} -> {pod.ip} through the sleeve: {out.stdout}"
    _block(net, 1, 2, "-p", "udp", "--dport", "6784", add=False)
    unblocked = time.monotonic()
    poll(lambda: _mode(r1, "h2") == "fastdp" and _mode(r2, "h1") == "fastdp", timeout=20, what="h1<->h2 back to fastdp")
    returned = time.monotonic() - unblocked
    # The pods cached the other host under the sleeve's alias of its MAC: its announcement (a gratuitous ARP when
    # the peer left the sleeve) gives them the real one, so the hosts reach them at once, not after 15-50 s.
    for host, pod in ((net.hosts[0], p2), (net.hosts[1], p1)):
        poll(lambda h=host, p=pod: h.run("ping", "-c", "1", "-W", "1", p.ip, check=False).returncode == 0,  # type: ignore[misc]
             timeout=5, what=f"{host.netns} -> {pod.ip} back in fastdp")  # fmt: skip
    s_out, c_out = finish(server, client, timeout=180)
    n, digest, _src = s_out.split()
    assert (int(n), digest) == tuple(x if i else int(x) for i, x in enumerate(c_out.split())), (s_out, c_out)
    assert int(n) == total
    for r, other in ((r1, "h2"), (r2, "h1")):
        log = r.log_text()
        assert f"({other}): fastdp -> sleeve" in log and f"({other}): sleeve -> fastdp" in log, log[-3000:]
    assert "effective MTU verified at 1472" in r1.log_text()
    print(f"fallback {fell_back:.1f} s, return {returned:.1f} s")  # noqa: T201


@pytest.mark.parametrize("cut", ["all", "udp"])
def test_peers_cut_apart_are_relayed_through_a_third(
    three: tuple[Net, list[RouterProc], list[PodNs]], cut: str
) -> None:
    """All traffic between h1 and h3 dropped (no mesh connection), or only UDP (the TCP connection stays, but
    neither VXLAN nor the sleeve's datagrams pass): h1's pods reach h3's through h2."""
    net, (r1, r2, r3), (p1, _p2, p3) = three
    _block(net, 1, 3, *(["-p", "udp"] if cut == "udp" else []))
    if cut == "all":
        poll(lambda: "h3" not in r1.established() and "h1" not in r3.established(), timeout=30, what="h1-h3 cut")
    else:
        poll(lambda: not _peer(r1, "h3")["sleeve"]["link"]["up"], timeout=20, what="h1's sleeve link to h3 down")
        assert "h3" in r1.established()
    poll(lambda: _mode(r1, "h3") == "sleeve" and _mode(r3, "h1") == "sleeve", timeout=20, what="h1<->h3 in sleeve")
    poll(lambda: (_peer(r1, "h3").get("sleeve") or {}).get("via") == "h2", timeout=20, what="h1 -> h3 via h2")
    relayed = _sleeve(r2)["counters"].get("relayed", 0)
    poll(lambda: _ping(p1, p3.ip), timeout=20, what="p1 pings p3 through h2")
    assert _sleeve(r2)["counters"].get("relayed", 0) > relayed
    server, client = tcp_transfer(p3, p1, 16 << 20)
    s_out, c_out = finish(server, client, timeout=120)
    assert s_out.split()[:2] == c_out.split()
    assert "relayed via" in r1.log_text()


def _password_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def _udp_datagrams(pcap: Path) -> list[tuple[str, str, bytes]]:
    """(source address, destination address, UDP payload) of each datagram in a classic pcap file (Ethernet,
    IPv4)."""
    data = pcap.read_bytes()
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        pkt = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        if len(pkt) > 14 + 20 and pkt[12:14] == b"\x08\x00" and pkt[23] == 17:
            ihl = (pkt[14] & 0x0F) * 4
            src, dst = socket.inet_ntoa(pkt[26:30]), socket.inet_ntoa(pkt[30:34])
            out.append((src, dst, pkt[14 + ihl + 8 :]))
    return out


@pytest.mark.parametrize("h2_aes", [True, False], ids=["aes-gcm", "h2-without-aes"])
def test_encrypted_pod_traffic(tmp_path: Path, h2_aes: bool) -> None:
    """With `h2-without-aes`, h2 does not offer AES-256-GCM: the link falls back to NaCl secretbox."""
    with netns_hosts(3, tmp_path) as net:
        good = _password_file(tmp_path / "good", "correct horse battery staple")
        bad = _password_file(tmp_path / "bad", "wrong horse")
        a1, a2 = net.hosts[0].address, net.hosts[1].address
        r1 = net.start_router(1, *FAST, "--password-file", str(good), a2, datapath=True)
        r2 = net.start_router(
            2, *FAST, "--password-file", str(good), a1, datapath=True,
            env={} if h2_aes else {"WEAVE_NO_SLEEVE_AESGCM": "1"},
        )  # fmt: skip
        # Alone with its wrong password: it takes the whole range for itself (consensus among one).
        r3 = net.start_router(
            3, *FAST, "--password-file", str(bad), a1, a2, datapath=True, env={"IPALLOC_INIT": "consensus=1"}
        )
        poll(lambda: _mode(r1, "h2") == "sleeve" and _mode(r2, "h1") == "sleeve", timeout=30, what="sleeve h1<->h2")
        assert r1.status()["datapath"]["fastdp"] is None and _sleeve(r1)["encrypted"] is True
        assert r1.status()["datapath"]["mtu"] == 1500 - 104
        want = "AES-256-GCM" if aesgcm_available() and h2_aes else "NaCl secretbox (XSalsa20-Poly1305)"
        poll(lambda: (_peer(r1, "h2")["sleeve"]["link"] or {}).get("cipher") == want, timeout=10, what=want)
        assert f"datagrams sealed with {want}" in r1.log_text()
        pods: list[PodNs] = []
        try:
            for i, r in enumerate((r1, r2, r3), 1):
                pods.append(make_pod(r, f"e{i}"))  # one by one: a failure still removes those made
            p1, p2, p3 = pods
            poll(lambda: _ping(p1, p2.ip), timeout=20, what="p1 pings p2 through the sealed sleeve")
            # A capture on the underlay: datagrams, none with the payload in clear.
            pcap = tmp_path / "u.pcap"
            dump = subprocess.Popen(
                ["ip", "netns", "exec", net.underlay, "tcpdump", "-i", "br0", "-U", "-s", "0", "-w", str(pcap),
                 "udp", "port", "6783"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                poll(lambda: pcap.exists() and pcap.stat().st_size >= 24, timeout=10, what="tcpdump started")
                assert p1.run("ping", "-c", "5", "-i", "0.2", "-p", PATTERN, "-s", "1000", p2.ip).returncode == 0
                poll(lambda: len(_udp_datagrams(pcap)) >= 10, timeout=10, what="datagrams captured")
            finally:
                dump.terminate()
                dump.wait(timeout=10)
            datagrams = _udp_datagrams(pcap)
            payloads = [p for _s, _d, p in datagrams]
            needle = bytes.fromhex(PATTERN)
            assert not any(needle in p for p in payloads), "plaintext of the pod's payload on the underlay"
            assert not any(b"weave" in p for p in payloads)
            # A captured datagram from h1 to h2, replayed from h1's address and port (a raw socket: an attacker on
            # the path writes what it likes), is dropped as a replay. (One h2 sent would fail h2's check as
            # forged: each direction has its own key.)
            replays = _sleeve(r2)["drops"].get("replay", 0)
            big = max((p for s, d, p in datagrams if (s, d) == (a1, a2)), key=len)
            net.hosts[0].run("python3", "-c", REPLAY, a1, a2, big.hex())
            poll(lambda: _sleeve(r2)["drops"].get("replay", 0) >= replays + 1, timeout=10, what="replay counted")
            # The host with the wrong password has no connection, no sleeve link, and its pod reaches nobody.
            assert not r3.established()
            for target in {p1.ip, p2.ip} - {p3.ip}:  # r3's IPAM is its own: an address may coincide
                assert not _ping(p3, target, count=2)
            assert not _ping(p1, p3.ip, count=2) or p3.ip in (p1.ip, p2.ip)
            c3 = _sleeve(r3)["counters"]
            assert c3.get("frames_in", 0) == 0 and c3.get("datagrams_out", 0) == 0, c3
            assert c3.get("frames_dropped_no_peer", 0) > 0, c3  # its pod did try
            # 256 MiB intact, with loss and reordering between h1 and h2. This kernel has no sch_netem, so:
            # 0.5% of the datagrams dropped at random (iptables statistic), and 10% sent through a slow HTB class
            # on the port towards h2, which overtakes them with the rest (reordering).
            u = net.underlay
            for cmd in (
                "tc qdisc add dev v2 root handle 1: htb default 10",
                "tc class add dev v2 parent 1: classid 1:10 htb rate 20gbit",
                "tc class add dev v2 parent 1: classid 1:20 htb rate 300mbit",
                f"iptables -w 5 -t mangle -A POSTROUTING -s {a1} -d {a2} -p udp --dport 6783 "
                "-m statistic --mode random --probability 0.1 -j CLASSIFY --set-class 1:20",
                f"iptables -w 5 -I FORWARD -s {a1} -d {a2} -p udp --dport 6783 "
                "-m statistic --mode random --probability 0.005 -j DROP",
            ):
                subprocess.run(["ip", "netns", "exec", u, *cmd.split()], check=True, capture_output=True)
            server, client = tcp_transfer(p1, p2, 256 << 20)
            s_out, c_out = finish(server, client, timeout=400)
            assert s_out.split()[:2] == c_out.split() and int(c_out.split()[0]) == 256 << 20
            dropped = subprocess.run(
                ["ip", "netns", "exec", u, "iptables", "-w", "5", "-nvxL", "FORWARD", "1"],
                capture_output=True, text=True, check=True,
            ).stdout.split()[0]  # fmt: skip
            slow = subprocess.run(
                ["ip", "netns", "exec", u, "tc", "-s", "class", "show", "dev", "v2", "classid", "1:20"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            assert int(dropped) > 10, f"only {dropped} drops"  # a drop is one GSO skb: up to 44 datagrams
            assert int(slow.split("Sent ")[1].split()[2]) > 1000, slow  # packets through the slow class
            assert "wrong horse" not in r1.log_text() + r3.log_text()
        finally:
            remove_pods(pods)


def test_once_status_shows_a_mode_one_packet_crosses_by_it(tmp_path: Path) -> None:
    """The mode in `status` is the one the kernel datapath has applied (flood entries, learned MACs flushed), not
    only what the heartbeats decided: a single ping sent as soon as it changes gets through, both ways round."""
    with netns_hosts(2, tmp_path) as net:
        r1, r2 = start_mesh(net, "--no-direct")
        pods = [make_pod(r1, "o1"), make_pod(r2, "o2")]
        try:
            p1, p2 = pods
            assert _ping(p1, p2.ip)
            for _ in range(2):
                for mode, blocked in (("sleeve", True), ("fastdp", False)):
                    _block(net, 1, 2, "-p", "udp", "--dport", "6784", add=blocked)
                    poll(lambda m=mode: _mode(r1, "h2") == m and _mode(r2, "h1") == m, timeout=20, what=mode)
                    one = p1.run("ping", "-c", "1", "-W", "3", p2.ip, check=False)
                    assert one.returncode == 0, f"the first packet after {mode} showed in status: {one.stdout}"
        finally:
            remove_pods(pods)
