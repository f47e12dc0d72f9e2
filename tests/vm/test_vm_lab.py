"""Lab hosts with Debian's own kernel (`lab up --vm`): QEMU VMs (emulated, slow) beside an nspawn host on this
machine's kernel, one underlay, the same inventory and rollout. What the VMs are for: the kernel features this
machine lacks (IPsec ESP, rfc4106(gcm(aes)), WireGuard) that our users' stock kernels have."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import verify
from tests.helpers import poll
from tests.lab.test_lab import grand_total
from tests.lab.test_rollout import Lab, running_lab

HOSTS, VMS = 3, 2  # node1, node2: VMs; node3: an nspawn host
NAMES = tuple(f"node{i}" for i in range(1, HOSTS + 1))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab("vm", HOSTS, "--vm", str(VMS)) as (name, ssh_config):
        yield Lab(name, ssh_config)


def test_vms_run_a_stock_kernel_with_what_this_machine_lacks(lab: Lab) -> None:
    for name in NAMES[:VMS]:
        out = lab.ssh(
            name,
            "uname -r; modprobe -a esp4 xfrm_user wireguard && echo loaded; "
            "grep -c '^name *: rfc4106(gcm(aes))' /proc/crypto; hostname; ip -br addr show eth0",
        )
        lines = out.stdout.split()
        assert lines[0].endswith("-amd64") and lines[0] != os.uname().release, out.stdout  # Debian's, not ours
        assert "loaded" in lines and name in lines, out.stdout
        assert f"198.18.0.{NAMES.index(name) + 1}/24" in out.stdout, out.stdout
        assert int(lines[lines.index("loaded") + 1]) >= 1, out.stdout  # the AEAD ESP needs, in the kernel
    container = lab.ssh(NAMES[-1], "uname -r").stdout.strip()
    assert container == os.uname().release  # the nspawn host shares this machine's kernel


def _underlay_capture(lab: Lab, pcap: Path, expression: str) -> subprocess.Popen[bytes]:
    cmd = ["ip", "netns", "exec", f"wnl-{lab.name}-u", "tcpdump", "-i", "br0", "-U", "-n", "-w", str(pcap),
           *expression.split()]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    poll(lambda: pcap.exists() and pcap.stat().st_size >= 24, timeout=10, what="tcpdump started")
    return proc


def _packets(proc: subprocess.Popen[bytes], pcap: Path) -> list[str]:
    proc.terminate()  # (-U: each packet was written as it came)
    proc.wait(timeout=10)
    out = subprocess.run(["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True, check=False)
    return [line for line in out.stdout.splitlines() if line.strip()]


def _peer(lab: Lab, name: str, nickname: str) -> dict[str, Any]:
    return next((p for p in lab.status(name).get("datapath", {}).get("peers", []) if p["nickname"] == nickname), {})


def _esp_up(lab: Lab, name: str, other: str) -> bool:
    peer = _peer(lab, name, other)
    enc = peer.get("encryption") or {}
    return peer.get("mode") == "fastdp" and enc.get("by") == "esp" and bool(enc.get("established"))


def test_with_a_password_vxlan_between_stock_kernels_is_esp_and_the_container_gets_the_sealed_sleeve(
    lab: Lab, tmp_path: Path
) -> None:
    """The rollout on VMs and a container, with a password: ESP where both kernels can (node1 <-> node2, the VMs),
    the sealed sleeve to node3 (this machine's kernel, no ESP). Pods on every host reach each other and multicast
    crosses from VM to VM while the underlay is captured: ESP between the VMs only, no VXLAN in the clear anywhere.
    A rekey every 10 s during a ping train loses nothing; nor (almost) does a router restart during one."""
    password = tmp_path / "password"
    password.write_text("correct horse battery staple\n")
    password.chmod(0o600)
    out = lab.deploy("--data", f"weave_password_file={password}", "--data", "weave_esp_rekey=10")
    assert grand_total(out.stdout + out.stderr)[1] == 0, out.stdout
    poll(lambda: _esp_up(lab, "node1", "node2") and _esp_up(lab, "node2", "node1"), timeout=90,
         what="ESP between the VMs, both ways")  # fmt: skip
    for vm in ("node1", "node2"):
        to_container = _peer(lab, vm, "node3")
        assert to_container["mode"] == "sleeve" and to_container["encryption"]["by"] == "sleeve", to_container
        assert "does not offer ESP" in to_container["encryption"]["why"], to_container
        doc = lab.status(vm)["datapath"]
        assert doc["encryption"]["esp"] is True and doc["encryption"]["established"] == 1, doc["encryption"]
        sas = lab.ssh(vm, "ip xfrm state list nokeys").stdout
        assert "proto esp" in sas and "reqid 22341 mode transport" in sas and "aead rfc4106(gcm(aes))" in sas, sas
    container = lab.status("node3")["datapath"]
    assert container["encryption"]["esp"] is False and "can carry neither ESP" in container["encryption"]["reason"]
    hosts = {name: lab.host(name) for name in NAMES}
    esp = _underlay_capture(lab, tmp_path / "esp.pcap", "esp")
    clear = _underlay_capture(lab, tmp_path / "clear.pcap", "udp port 6784")
    try:
        try:
            for host in hosts.values():
                verify.node_is_installed(host, password=True)
            ips = {name: verify.add_pod_ips(hosts[name], "esp", f"esp-{name}")[0] for name in NAMES}
            verify.pods_reach_each_other(hosts, "esp", ips)
            poll(lambda: verify._multicast(hosts["node2"], hosts["node1"], "esp"), timeout=90,
                 what="a multicast datagram from VM to VM (flooded in ESP)")  # fmt: skip
            train = hosts["node1"].run(f"ip netns exec esp ping -c 300 -i 0.1 -W 2 -q {ips['node2']}")
        finally:
            esp_packets, clear_packets = _packets(esp, tmp_path / "esp.pcap"), _packets(clear, tmp_path / "clear.pcap")
        assert not clear_packets, clear_packets[:5]  # no VXLAN in the clear, between any hosts
        assert esp_packets and all(" > 198.18.0." in p and "ESP(spi=0x57" in p for p in esp_packets), esp_packets[:5]
        assert {p.split()[2] for p in esp_packets} == {"198.18.0.1", "198.18.0.2"}  # the VMs only, both ways
        assert " 0% packet loss" in train.stdout, train.stdout  # across the rekeys below
        generation = (_peer(lab, "node1", "node2")["encryption"] or {}).get("generation", 0)
        assert generation >= 2, generation  # (rekeys every 10 s: at least two during the 30 s train)
        # A router restart keeps pod traffic flowing: the kernel keeps the SAs of before until the peer is keyed
        # anew over the new connection (then they go).
        spis = "ip xfrm state list nokeys | grep -o 'spi 0x[0-9a-f]*' | cut -d' ' -f2"
        before = set(lab.ssh("node1", spis).stdout.split())
        assert len(before) >= 2, before
        with ThreadPoolExecutor(1) as pool:  # a ping train from node2's pod to node1's, across node1's restart
            train = pool.submit(lab.ssh, "node2", f"ip netns exec esp ping -c 250 -i 0.1 -W 2 -q {ips['node1']}", False)
            lab.ssh("node1", "systemctl restart weave-node")
            summary = train.result(timeout=90).stdout
        received = int(summary.split(" packets transmitted, ")[1].split()[0])
        assert 250 - received <= 5, summary  # (a few at most: the VMs are emulated)
        poll(lambda: _esp_up(lab, "node1", "node2"), timeout=90, what="node1 keyed with node2 again")
        poll(lambda: not before & set(lab.ssh("node1", spis).stdout.split()), timeout=60,
             what="the SAs of before gone")  # fmt: skip
    finally:
        for host in hosts.values():
            verify.del_pod(host, "esp")


def _encryption(lab: Lab, name: str) -> dict[str, Any]:
    return lab.status(name).get("datapath", {}).get("encryption") or {}


def _kernel_wireguard_peers(lab: Lab, name: str) -> int:
    """The peers on the host's weave-wg, as its kernel has them (through the router's own netlink shell)."""
    code = "from weave_node.datapath import wireguard_shell as w; print(len(w.observe().peers))"
    out = lab.ssh(name, f"/opt/weave-node/venv/bin/python -c '{code}'", check=False).stdout.strip()
    return int(out) if out.isdigit() else -1


def _wireguard_up(lab: Lab, name: str, other: str) -> bool:
    peer = _peer(lab, name, other)
    enc = peer.get("encryption") or {}
    return peer.get("mode") == "fastdp" and enc.get("by") == "wireguard" and enc.get("handshake_age") is not None


def test_with_wireguard_vxlan_between_the_vms_runs_in_it_and_a_wrong_password_carries_nothing(
    lab: Lab, tmp_path: Path
) -> None:
    """The same lab switched to WEAVE_ENCRYPTION=wireguard (a re-run that restarts the routers): VXLAN between the
    VMs runs inside WireGuard (UDP 6786 on the underlay, nothing else), ESP's SAs of before are gone, the container
    (no WireGuard in this kernel) keeps the sealed sleeve, pods reach each other, multicast crosses, and a router
    restart keeps pod traffic flowing (the device and its key stay). Then node2 is given a wrong password: once
    node1 no longer retains it, nothing of node2's pods' traffic crosses the underlay at all."""
    password = tmp_path / "password"
    password.write_text("correct horse battery staple\n")
    password.chmod(0o600)
    out = lab.deploy("--data", f"weave_password_file={password}", "--data", "weave_encryption=wireguard")
    assert grand_total(out.stdout + out.stderr)[1] == 0, out.stdout
    poll(lambda: _wireguard_up(lab, "node1", "node2") and _wireguard_up(lab, "node2", "node1"), timeout=90,
         what="WireGuard between the VMs, both ways")  # fmt: skip
    for vm in ("node1", "node2"):
        to_container = _peer(lab, vm, "node3")
        assert to_container["mode"] == "sleeve" and "does not offer WireGuard" in to_container["encryption"]["why"]
        doc = lab.status(vm)["datapath"]["encryption"]
        assert doc["kind"] == "wireguard" and doc["peers"] == 1 and doc["established"] == 1, doc
        assert _kernel_wireguard_peers(lab, vm) == 1  # the other VM's, and none for the container
        link = lab.ssh(vm, "ip -d link show weave-wg; ip xfrm state list nokeys | grep -c 'reqid 22341' || true").stdout
        assert "wireguard" in link and link.split()[-1] == "0", link  # ESP's SAs of the run before: gone
    container = lab.status("node3")["datapath"]["encryption"]
    assert container["kind"] is None and "no WireGuard" in container["reason"], container
    hosts = {name: lab.host(name) for name in NAMES}
    tunnel = _underlay_capture(lab, tmp_path / "wg.pcap", "udp port 6786")
    clear = _underlay_capture(lab, tmp_path / "clear.pcap", "udp port 6784 or esp")
    try:
        try:
            ips = {name: verify.add_pod_ips(hosts[name], "wg", f"wg-{name}")[0] for name in NAMES}
            verify.pods_reach_each_other(hosts, "wg", ips)
            poll(lambda: verify._multicast(hosts["node2"], hosts["node1"], "wg"), timeout=90,
                 what="a multicast datagram from VM to VM (flooded in WireGuard)")  # fmt: skip
            key = _encryption(lab, "node1")["public_key"]
            with ThreadPoolExecutor(1) as pool:  # node2's pod to node1's, across node1's restart
                train = pool.submit(lab.ssh, "node2", f"ip netns exec wg ping -c 200 -i 0.1 -W 2 -q {ips['node1']}",
                                    False)  # fmt: skip
                lab.ssh("node1", "systemctl restart weave-node")
                summary = train.result(timeout=90).stdout
        finally:
            tunnel_packets, clear_packets = (
                _packets(tunnel, tmp_path / "wg.pcap"),
                _packets(clear, tmp_path / "clear.pcap"),
            )
        assert not clear_packets, clear_packets[:5]  # no VXLAN in the clear, no ESP
        assert tunnel_packets and {p.split()[2].rsplit(".", 1)[0] for p in tunnel_packets} == {
            "198.18.0.1", "198.18.0.2"}, tunnel_packets[:5]  # fmt: skip
        received = int(summary.split(" packets transmitted, ")[1].split()[0])
        assert 200 - received <= 5, summary
        poll(lambda: _wireguard_up(lab, "node1", "node2"), timeout=90, what="node1 with node2 in WireGuard again")
        assert _encryption(lab, "node1")["public_key"] == key  # the device and its key stayed
        # A wrong password on node2: no mesh connection, so no preshared key and no public key for it anywhere;
        # node1 drops its peer once node2 is no longer retained (WEAVE_PEER_RETAIN, 60 s)
        lab.ssh(
            "node2", "umask 077; printf 'not the password\\n' > /etc/weave-node/password; systemctl restart weave-node"
        )  # (what a rollout with another password file does, without its time)
        poll(lambda: _encryption(lab, "node1").get("peers") == 0, timeout=150,
             what="node1 without a WireGuard peer for node2")  # fmt: skip
        doc = lab.status("node2")  # (its router runs: no connection with the wrong password)
        assert doc and not any(c["state"] == "established" for c in doc.get("connections", [])), doc.get("connections")
        for vm in ("node1", "node2"):  # (node2 kept node1's peer while its own entries of before were adopted)
            poll(lambda vm=vm: _kernel_wireguard_peers(lab, vm) == 0, timeout=90, what=f"{vm}: no WireGuard peer")  # type: ignore[misc]
        quiet = _underlay_capture(lab, tmp_path / "quiet.pcap", "host 198.18.0.1 and host 198.18.0.2 and udp")
        try:
            lost = hosts["node1"].run(f"ip netns exec wg ping -c 20 -i 0.2 -W 1 -q {ips['node2']}")
        finally:
            carried = _packets(quiet, tmp_path / "quiet.pcap")
        assert "100% packet loss" in lost.stdout and not carried, (lost.stdout, carried[:5])
        # `weave-node reset` (router stopped) takes the device away with the rest, and the guard chains
        out = lab.ssh("node1", "systemctl stop weave-node; /opt/weave-node/venv/bin/weave-node reset; "
                      "ip link show weave-wg 2>&1; ip6tables-save | grep -c WEAVE-NODE-WG || true")  # fmt: skip
        assert "removed link weave-wg" in out.stdout and "does not exist" in out.stdout, out.stdout
        assert out.stdout.split()[-1] == "0", out.stdout
    finally:
        for host in hosts.values():
            verify.del_pod(host, "wg")
