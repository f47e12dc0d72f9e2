"""The rollout end to end on the lab: `pyinfra inventory/lab.py deploys/weave_node.py` onto real systemd hosts
over SSH, then the router meshes, pods made by the installed weave-net talk across hosts, a second run changes
nothing, the password stays secret, and bad settings stop the run before any host is touched."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import testinfra

from tests.e2e import verify
from tests.helpers import poll, run_cli
from tests.lab import userland
from tests.lab.test_lab import grand_total

HOSTS = 3
PASSWORD = "correct-horse-battery-staple-7d1f"  # noqa: S105 - a test's password, to search for


class Lab:
    def __init__(self, name: str, ssh_config: str) -> None:
        self.name, self.ssh_config = name, ssh_config
        self.env = {"WEAVE_LAB": name}

    def host(self, name: str) -> Any:
        return testinfra.get_host(f"paramiko://{name}", ssh_config=self.ssh_config)

    def ssh(self, name: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-F", self.ssh_config, name, command], capture_output=True, text=True, timeout=60, check=check
        )

    def deploy(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli("pyinfra", "-y", "inventory/lab.py", "deploys/weave_node.py", *args, env=self.env, check=check)

    def status(self, name: str) -> dict[str, Any]:
        out = self.ssh(name, "/opt/weave-node/venv/bin/weave-node status --json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else {}


@contextlib.contextmanager
def running_lab(prefix: str, hosts: int, *extra: str) -> Iterator[tuple[str, str]]:
    """A lab of `hosts` hosts named after `prefix` and this process, up for the block, always taken down after:
    (its name, its ssh_config). `extra`: more arguments of `lab up` (--ipv6)."""
    name = f"{prefix}{os.getpid() % 100000}"
    try:
        run_cli("weave-node", "lab", "up", "--name", name, "--hosts", str(hosts), *extra, env={"WEAVE_LAB": name},
                check=True)  # fmt: skip
        status = json.loads(run_cli("weave-node", "lab", "status", "--json", "--name", name, check=True).stdout)
        yield name, status["ssh_config"]
    finally:
        run_cli("weave-node", "lab", "down", "--name", name, "-q")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab("r", HOSTS, "--dual-stack") as (name, ssh_config):  # (IPv6 on the underlay too)
        yield Lab(name, ssh_config)


def _established(lab: Lab, name: str) -> int:
    doc = lab.status(name)
    return sum(1 for c in doc.get("connections", []) if c["state"] == "established")


def test_rollout_meshes_the_hosts_and_pods_talk(lab: Lab) -> None:
    first = lab.deploy()
    changed, errors, _ = grand_total(first.stdout + first.stderr)
    assert errors == 0 and changed > 0
    addresses = {f"node{i}": f"198.18.0.{i}" for i in range(1, HOSTS + 1)}
    for name in addresses:
        host = lab.host(name)
        service = host.service("weave-node")
        assert service.is_running and service.is_enabled
        unit = host.file("/etc/systemd/system/weave-node.service")
        assert unit.contains("ProtectSystem=strict") and unit.contains("CapabilityBoundingSet=CAP_NET_ADMIN")
        env = host.file("/etc/weave-node/mesh.env").content_string  # the peers: applied live on a change
        peers = next(line for line in env.splitlines() if line.startswith("WEAVE_PEERS="))
        assert sorted(peers.split("=", 1)[1].split()) == sorted(a for n, a in addresses.items() if n != name)
        assert host.file("/opt/cni/bin/weave-net").mode == 0o755
        assert host.file("/opt/cni/bin/portmap").linked_to == "/usr/lib/cni/portmap"
        conflist = json.loads(host.file("/etc/cni/net.d/10-weave.conflist").content_string)
        assert conflist["cniVersion"] == "1.0.0" and [p["type"] for p in conflist["plugins"]] == [
            "weave-net",
            "portmap",
        ]
        poll(lambda n=name: _established(lab, n) == HOSTS - 1, timeout=30, what=f"{name} meshed with the others")
        doc = lab.status(name)
        assert doc["ipam"]["ready"] is True and doc["datapath"]["bridge_address"]
    poll(
        lambda: all(p["mode"] in ("fastdp", "direct") for p in lab.status("node1")["datapath"]["peers"]),
        timeout=30,
        what="node1's fast datapath to every peer",
    )

    second = lab.deploy()
    assert grand_total(second.stdout + second.stderr)[:2] == (0, 0), second.stdout

    # Drift: the conflist is deleted on one host; the next run puts it back (atomically), nothing else.
    lab.ssh("node3", "rm /etc/cni/net.d/10-weave.conflist")
    third = lab.deploy()
    assert grand_total(third.stdout + third.stderr)[:2] == (2, 0)  # staged + renamed into place
    assert lab.host("node3").file("/etc/cni/net.d/10-weave.conflist").exists

    # Pods made by the installed plugin, as a runtime would run it, talk across hosts.
    ips = {node: verify.add_pod(lab.host(node), "e2e") for node in ("node1", "node2")}
    ping = lab.ssh("node1", f"ip netns exec e2e ping -c 2 -W 5 {ips['node2']}", check=False)
    assert ping.returncode == 0, ping.stdout
    for node in ("node1", "node2"):
        verify.del_pod(lab.host(node), "e2e")
        rows = json.loads(lab.ssh(node, "/opt/weave-node/venv/bin/weave-node ipam allocations --json").stdout)
        assert [r["container_id"] for r in rows] == ["weave:bridge"]


def test_the_verify_suite_passes_on_every_node(lab: Lab) -> None:
    hosts = {name: lab.host(name) for name in ("node1", "node2", "node3")}
    verify.suite(hosts, outside="198.18.0.254")  # the lab's underlay gateway


def test_the_installed_package_and_collection_find_the_hosts_as_the_checkout_left_them(
    lab: Lab, tmp_path: Path
) -> None:
    """Outside the repository, in a fresh venv with the built wheel (docs/rollout.md, "Three ways in"): the user's
    own 5-line deploy file, `weave-node rollout` from their directory and the collection from their own playbook
    change nothing on hosts the checkout's rollout set up (the same files, checksums and wheel); pods still
    reach each other; an ansible-core older than the role supports fails with what to do."""
    user = userland.make(tmp_path, lab.name)
    for args in (
        ("pyinfra", "-y", "inventory.py", "deploy.py"),
        ("weave-node", "rollout", "--inventory", "inventory.py"),
    ):
        out = user.run(*args)
        text = out.stdout + out.stderr
        assert out.returncode == 0, text[-4000:]
        assert grand_total(text)[:2] == (0, 0), text[-4000:]  # no change, no error
    out = user.run("ansible-playbook", "-i", "hosts.yml", "site.yml")  # (no change: so a re-run is none either)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    for i in range(1, HOSTS + 1):
        assert re.search(rf"^node{i}\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", text, re.M), text[-4000:]
    ips = {node: verify.add_pod(lab.host(node), "dist") for node in ("node2", "node3")}
    try:
        ping = lab.ssh("node2", f"ip netns exec dist ping -c 2 -W 5 {ips['node3']}", check=False)
        assert ping.returncode == 0, ping.stdout
    finally:
        for node in ips:
            verify.del_pod(lab.host(node), "dist")
    old = user.run("pip", "install", "-q", "--disable-pip-version-check", "ansible-core<2.19")
    assert old.returncode == 0, old.stdout + old.stderr
    out = user.run("ansible-playbook", "-i", "hosts.yml", "site.yml")
    assert out.returncode != 0
    assert "the weave_node role needs ansible-core >= 2.19 (this is 2.18" in out.stdout + out.stderr, out.stdout


def test_bad_settings_stop_the_run_before_any_host_is_touched(lab: Lab) -> None:
    for data, message in (
        ("weave_ipalloc_range=10.32.0.1/12", "is not a CIDR with its host bits zero"),
        ("weave_ipalloc_range=198.18.0.0/16", "weave_ipalloc_range 198.18.0.0/16 contains "),
        ("weave_colour=blue", "unknown setting(s) weave_colour"),
        ("weave_password_file=/nonexistent", "weave_password_file /nonexistent: No such file or directory"),
    ):
        out = lab.deploy("--data", data, check=False)
        text = out.stdout + out.stderr
        assert out.returncode != 0 and "invalid weave-node settings" in text and message in text, text
        assert "Starting operation" not in text


def test_the_password_is_distributed_0600_and_never_shown(lab: Lab, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o644)
    loose = lab.deploy("--data", f"weave_password_file={secret}", check=False)
    assert loose.returncode != 0 and "readable by others" in loose.stdout + loose.stderr
    secret.chmod(0o600)
    out = lab.deploy("--data", f"weave_password_file={secret}")
    assert PASSWORD not in out.stdout + out.stderr
    for name in ("node1", "node2", "node3"):
        host = lab.host(name)
        pw = host.file("/etc/weave-node/password")
        assert (pw.mode, pw.user, pw.group) == (0o600, "root", "root")
        assert PASSWORD not in host.file("/etc/weave-node/weave-node.env").content_string
        poll(lambda n=name: lab.status(n).get("router", {}).get("encryption") is True, timeout=30, what="encryption")
        poll(lambda n=name: _established(lab, n) == HOSTS - 1, timeout=30, what=f"{name} meshed, encrypted")
        assert PASSWORD not in lab.ssh(name, "cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '", check=False).stdout
        assert PASSWORD not in lab.ssh(name, "journalctl -u weave-node --no-pager").stdout
    # With a password, pod traffic between the hosts is sealed in the sleeve (no VXLAN device at all), and works.
    hosts = {name: lab.host(name) for name in ("node1", "node2", "node3")}
    for name in hosts:
        poll(
            lambda n=name: [p["mode"] for p in lab.status(n).get("datapath", {}).get("peers", [])] == ["sleeve"] * 2,
            timeout=30,
            what=f"{name}: both peers in the encrypted sleeve",
        )
        assert lab.status(name)["datapath"]["fastdp"] is None
    ips = {name: verify.add_pod(host, "sealed") for name, host in hosts.items()}
    try:
        verify.pods_reach_each_other(hosts, "sealed", ips)
    finally:
        for host in hosts.values():
            verify.del_pod(host, "sealed")


def test_dry_run_changes_nothing_and_a_failed_health_gate_stops_only_that_host(lab: Lab) -> None:
    dry = run_cli(
        "pyinfra",
        "inventory/lab.py",
        "deploys/weave_node.py",
        "--dry",
        "--data",
        "weave_conn_limit=50",
        env=lab.env,
        check=True,
    )
    planned = next(line for line in (dry.stdout + dry.stderr).splitlines() if "configuration | Router settings" in line)
    assert "3 (node1, node2, node3)" in planned  # the planned change is shown...
    assert "CONN_LIMIT=100" in lab.host("node1").file("/etc/weave-node/weave-node.env").content_string  # ...not made
    # node3 cannot be reached by its peers any more: its gate fails, the others pass and stay healthy.
    lab.ssh("node3", "iptables -I INPUT -p tcp -m multiport --ports 6783 -j DROP")
    try:
        out = lab.deploy("--data", "weave_conn_limit=50", "--data", "weave_health_timeout=8", check=False)
        text = out.stdout + out.stderr
        assert out.returncode != 0
        assert "[node3]" in text and "not ready after 8 s" in text, text
        for name in ("node1", "node2"):
            assert lab.host(name).service("weave-node").is_running
            assert "CONN_LIMIT=50" in lab.host(name).file("/etc/weave-node/weave-node.env").content_string
            assert lab.status(name)["ipam"]["ready"] is True
    finally:
        lab.ssh("node3", "iptables -D INPUT -p tcp -m multiport --ports 6783 -j DROP")
    again = lab.deploy("--data", "weave_conn_limit=50")
    assert grand_total(again.stdout + again.stderr)[1] == 0


def test_a_setting_rolls_out_host_by_host_without_interrupting_pods(lab: Lab) -> None:
    verify.add_pod(lab.host("node1"), "roll")
    dst = verify.add_pod(lab.host("node2"), "roll")
    # 0.1 s pings for as long as the rolling restart takes; the summary line says how many were lost.
    ping = subprocess.Popen(
        ["ssh", "-F", lab.ssh_config, "node1", f"ip netns exec roll ping -i 0.1 -w 60 -q {dst}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        out = lab.deploy("--serial", "--data", "weave_conn_limit=60")
        assert grand_total(out.stdout + out.stderr)[1] == 0
        for node in ("node1", "node2", "node3"):
            assert "CONN_LIMIT=60" in lab.host(node).file("/etc/weave-node/weave-node.env").content_string
    finally:
        lab.ssh("node1", "pkill -INT -f 'ping -i 0.1 -w 60'", check=False)
        summary = ping.communicate(timeout=70)[0]
    stats = next(line for line in summary.splitlines() if "packets transmitted" in line)
    sent, received = int(stats.split()[0]), int(stats.split()[3])
    assert sent >= 20, summary
    assert sent - received <= 1, summary  # the routers restart one by one; the kernel datapath never stops
    for node in ("node1", "node2"):
        verify.del_pod(lab.host(node), "roll")


def test_an_unreachable_host_fails_clearly_and_the_others_roll_out(lab: Lab) -> None:
    rule = ["INPUT", "-p", "tcp", "--dport", "22", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"]
    netns = f"wnl-{lab.name}-node3"  # the lab host's own namespace: same iptables as inside it
    subprocess.run(["ip", "netns", "exec", netns, "iptables", "-I", *rule], check=True)
    try:
        out = lab.deploy("--data", "weave_conn_limit=70", check=False)
        text = out.stdout + out.stderr
        assert out.returncode != 0 and "[node3] SSH error" in text, text
        for node in ("node1", "node2"):
            assert "CONN_LIMIT=70" in lab.host(node).file("/etc/weave-node/weave-node.env").content_string
            assert lab.status(node)["ipam"]["ready"] is True
    finally:
        subprocess.run(["ip", "netns", "exec", netns, "iptables", "-D", *rule], check=True)
    lab.deploy("--data", "weave_conn_limit=70")  # node3 catches up once it is back


def test_a_dual_stack_range_rolls_out_and_pods_talk_on_both_families(lab: Lab) -> None:
    """A running IPv4 cluster changed to dual-stack by one rollout (the IPv4 ring stays; the IPv6 ring is agreed
    once every router has the range), then the verify suite on both families."""
    out = lab.deploy("--data", "weave_ipalloc_range=10.32.0.0/12,fd32:57::/64")
    assert grand_total(out.stdout + out.stderr)[1] == 0, out.stdout
    for name in ("node1", "node2", "node3"):
        env = lab.host(name).file("/etc/weave-node/weave-node.env").content_string
        assert "IPALLOC_RANGE=10.32.0.0/12,fd32:57::/64" in env
        poll(lambda n=name: lab.status(n).get("ipam", {}).get("ipv6", {}).get("ready"), timeout=30,
             what=f"{name}'s IPv6 ring")  # fmt: skip
        assert lab.status(name)["datapath"]["bridge_address6"].startswith("fd32:57:")
        poll(lambda n=name: all(p["mode"] in ("fastdp", "direct") for p in lab.status(n)["datapath"]["peers"]),
             timeout=30, what=f"{name}'s kernel datapath to every peer after the restart")  # fmt: skip
    hosts = {name: lab.host(name) for name in ("node1", "node2", "node3")}
    verify.suite(hosts, outside=("198.18.0.254", "2001:db8:18::fe"))  # the dual-stack underlay's gateway


def test_an_ipv6_range_alone_rolls_out_and_ipv6_only_pods_talk(lab: Lab) -> None:
    """The dual-stack cluster changed to its IPv6 range alone by one rollout: the IPv6 ring (ipam6.db) stays,
    the bridges lose their IPv4 address, the heartbeats run over IPv6 and keep the kernel datapath; then the
    verify suite on IPv6 only (pods, AAAA names, IPv6 multicast)."""
    out = lab.deploy("--data", "weave_ipalloc_range=fd32:57::/64")
    assert grand_total(out.stdout + out.stderr)[1] == 0, out.stdout
    for name in ("node1", "node2", "node3"):
        poll(lambda n=name: lab.status(n).get("ipam", {}).get("ready"), timeout=30, what=f"{name}'s IPv6 ring")
        ipam, datapath = lab.status(name)["ipam"], lab.status(name)["datapath"]
        assert ipam["family"] == "ipv6" and ipam["range"] == "fd32:57::/64" and "ipv6" not in ipam, ipam
        assert datapath["bridge_address"].startswith("fd32:57:"), datapath
        assert "inet " not in lab.ssh(name, "ip -4 addr show dev weave").stdout  # IPv4's address is gone
        poll(lambda n=name: all(p["mode"] == "fastdp" for p in lab.status(n)["datapath"]["peers"]),
             timeout=30, what=f"{name}'s kernel datapath to every peer (IPv6 heartbeats)")  # fmt: skip
    hosts = {name: lab.host(name) for name in ("node1", "node2", "node3")}
    verify.suite(hosts, outside="2001:db8:18::fe")  # IPv6 pods out over the lab's IPv6 (masqueraded)


def test_removal_takes_everything_and_is_idempotent(lab: Lab) -> None:
    out = run_cli("pyinfra", "-y", "inventory/lab.py", "deploys/remove.py", env=lab.env, check=True)
    assert grand_total(out.stdout + out.stderr)[1] == 0
    for name in ("node1", "node2", "node3"):
        host = lab.host(name)
        verify.nothing_of_ours_is_left(host)
        assert host.file("/var/lib/weave-node/ipam.db").exists  # the IPAM state stays unless asked
        assert lab.ssh(name, "cat /proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"  # (until the next boot)
    again = run_cli("pyinfra", "-y", "inventory/lab.py", "deploys/remove.py", env=lab.env, check=True)
    assert grand_total(again.stdout + again.stderr)[:2] == (0, 0), again.stdout
