"""ESP for fastdp on this machine's kernel, which has xfrm but no ESP: what must hold even here, with real parts.

- `WEAVE_ENCRYPTION=auto` (the default): the kernel probe refuses, no router offers ESP, pod traffic is sealed in
  the sleeve, and no xfrm state or policy of ours is left anywhere.
- `WEAVE_ENCRYPTION=esp` (no probe): policies that require ESP go in for every peer and the guard chains drop
  VXLAN without a policy; the SAs cannot be made here, so VXLAN is blocked, never sent in the clear (a capture on
  the underlay sees no UDP 6784 at all), the heartbeats fail, and the sealed sleeve carries the pods' traffic.
  A peer that does not offer ESP (`--encryption sleeve`) gets no policy and no VXLAN entry, and status says why.
- `weave-node reset` takes our policies and the guard chains away.
The SAs themselves (keys, rekeys, tcpdump showing ESP) are proven on stock-kernel VMs: tests/vm/test_esp_vm.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.cni.libcni import ensure_driver
from tests.cni.test_dual_stack import _delete_pods, _modes, _ping, _pods
from tests.cni.test_weave_net import make_node
from tests.helpers import BIN, poll
from tests.netns.hosts import FAST, Net, netns_hosts


def _password(tmp_path: Path) -> str:
    path = tmp_path / "password"
    path.write_text("correct horse battery staple\n")
    path.chmod(0o600)
    return str(path)


def _start(net: Net, password: str, modes: list[str]) -> list[Any]:
    addrs = [h.address for h in net.hosts]
    return [
        net.start_router(i, *FAST, "--password-file", password, "--encryption", mode,
                         *[a for a in addrs if a != h.address], datapath=True)
        for i, (h, mode) in enumerate(zip(net.hosts, modes, strict=True), 1)
    ]  # fmt: skip


def _xfrm(host: Any) -> str:
    return str(host.run("ip", "xfrm", "policy", "list").stdout + host.run("ip", "xfrm", "state", "list").stdout)


def test_this_kernel_is_probed_for_esp_and_wireguard_and_everything_is_sealed_in_the_sleeve(tmp_path: Path) -> None:
    with netns_hosts(2, tmp_path) as net:
        routers = _start(net, _password(tmp_path), ["auto", "wireguard"])  # (this kernel has no WireGuard either)
        for r, why in zip(routers, ("can carry neither ESP as we use it", "has no WireGuard"), strict=True):
            poll(lambda r=r: _modes(r) == ["sleeve"], timeout=40, what=f"{r.host.netns}: sealed sleeve")
            doc = r.status()["datapath"]
            assert doc["encryption"]["esp"] is False and doc["encryption"]["kind"] is None
            assert f"this kernel {why}" in doc["encryption"]["reason"], doc["encryption"]
            assert doc["fastdp"] is None  # no VXLAN device at all
            assert doc["peers"][0]["encryption"]["by"] == "sleeve", doc["peers"][0]
            assert "reqid" not in _xfrm(r.host)  # the probe's SA went, nothing else was made
            links = r.host.run("ip", "-o", "link").stdout
            assert "weave-wg" not in links, links  # nor the WireGuard probe's device (nor any)
            assert "fastdp-esp" not in r.log_text() and "fastdp-wireguard" not in r.log_text()


def test_without_sas_vxlan_is_blocked_never_clear_and_the_sleeve_carries_the_pods(tmp_path: Path) -> None:
    binary = ensure_driver()
    with netns_hosts(3, tmp_path) as net:
        a1, a2, a3 = (h.address for h in net.hosts)
        r1, r2, r3 = _start(net, _password(tmp_path), ["esp", "esp", "sleeve"])
        nodes = [make_node(r, binary, tmp_path / f"node{i}") for i, r in enumerate((r1, r2, r3), 1)]
        try:
            # Policies for the ESP peer, in both directions, ours (reqid 0x5745); none for the sleeve-only peer.
            poll(lambda: _policies(net.hosts[0]) == {(a1, a2, "out"), (a2, a1, "in")}, timeout=30,
                 what="node1's policies to node2")  # fmt: skip
            guard = net.hosts[0].run("iptables-save", "-t", "filter").stdout
            assert "-A WEAVE-NODE-ESP-OUT -p udp -m udp --dport 6784 -m policy --dir out --pol none -j DROP" in guard
            assert "-A OUTPUT -j WEAVE-NODE-ESP-OUT" in guard and "-A INPUT -j WEAVE-NODE-ESP-IN" in guard
            # The SAs cannot be made on this kernel: said, and the heartbeats fail over to the sleeve.
            poll(lambda: any("AEAD" in e for e in r1.status()["datapath"]["encryption"]["errors"]), timeout=30,
                 what="the SA error in status")  # fmt: skip
            for r in (r1, r2, r3):
                poll(lambda r=r: _modes(r) == ["sleeve", "sleeve"], timeout=60, what=f"{r.host.netns}: sleeve")
            peers = {p["nickname"]: p for p in r1.status()["datapath"]["peers"]}
            assert "does not offer ESP" in peers["h3"]["encryption"]["why"], peers["h3"]
            assert peers["h2"]["encryption"]["by"] == "sleeve", peers["h2"]
            fdb = net.hosts[0].run("bridge", "fdb", "show", "dev", "vxlan-6784").stdout
            assert f"dst {a2}" in fdb and f"dst {a3}" not in fdb, fdb  # no VXLAN at all to the sleeve-only peer
            pods = _pods(nodes, "e")
            capture = _Capture(net, tmp_path / "vxlan.pcap", "udp port 6784")
            try:
                for netns, _ in pods:
                    for _other, result in pods:
                        ip = result["ips"][0]["address"].split("/")[0]
                        assert _ping(netns, ip, count=2), f"{Path(netns).name} -> {ip} (sealed sleeve)"
            finally:
                seen = capture.stop()
            assert seen == 0, f"{seen} clear VXLAN packet(s) on the underlay"
        finally:
            _delete_pods(nodes)
        r1.proc.terminate()
        r1.proc.wait(timeout=20)
        out = net.hosts[0].run(str(BIN / "weave-node"), "reset", "--force")
        assert "xfrm polic" in out.stdout and "WEAVE-NODE-ESP-OUT" in out.stdout, out.stdout
        assert "reqid" not in _xfrm(net.hosts[0])
        assert "WEAVE-NODE-ESP" not in net.hosts[0].run("iptables-save").stdout


def _policies(host: Any) -> set[tuple[str, str, str]]:
    from weave_node.datapath.xfrm import parse_policies

    return {(p.src, p.dst, p.direction) for p in parse_policies(host.run("ip", "xfrm", "policy", "list").stdout)}


class _Capture:
    """tcpdump on the underlay bridge for the block; `stop` gives the number of packets it saw."""

    def __init__(self, net: Net, pcap: Path, expression: str) -> None:
        self.pcap = pcap
        cmd = ["ip", "netns", "exec", net.underlay, "tcpdump", "-i", "br0", "-U", "-n", "-w", str(pcap),
               *expression.split()]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        poll(lambda: pcap.exists() and pcap.stat().st_size >= 24, timeout=10, what="tcpdump started")

    def stop(self) -> int:
        self.proc.terminate()  # (-U: each packet was written as it came)
        self.proc.wait(timeout=10)
        out = subprocess.run(["tcpdump", "-n", "-r", str(self.pcap)], capture_output=True, text=True, check=False)
        return len([line for line in out.stdout.splitlines() if line.strip()])
