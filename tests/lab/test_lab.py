"""The lab end to end: 3 real systemd hosts, a pyinfra deploy over SSH, testinfra checks, clean teardown.

The lab gets a name of its own, so a lab the user has up (the README demo) is never touched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra

from tests.helpers import poll, run_cli

HOSTS = 3


@dataclass
class Lab:
    name: str
    ssh_config: str
    env: dict[str, str]

    def host(self, name: str) -> testinfra.host.Host:
        return testinfra.get_host(f"paramiko://{name}", ssh_config=self.ssh_config)

    def pyinfra(self, deploy: str) -> subprocess.CompletedProcess[str]:
        return run_cli("pyinfra", "-y", "inventory/lab.py", deploy, env=self.env, check=True)


def root_namespace_view() -> tuple[str, str, str]:
    """Links, addresses and routes of the root namespace: the lab must never change them."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names = "\n".join(sorted(line.split(":")[1].strip() for line in links.splitlines()))
    addrs = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=True).stdout
    return names, addrs, routes


@pytest.fixture(scope="module")
def root_before() -> tuple[str, str, str]:
    return root_namespace_view()


@pytest.fixture(scope="module")
def lab(root_before: tuple[str, str, str]) -> Iterator[Lab]:
    name = f"t{os.getpid() % 100000}"
    env = {"WEAVE_LAB": name}
    try:
        proc = run_cli("weave-node", "lab", "up", "--name", name, "--hosts", str(HOSTS), env=env)
        assert proc.returncode == 0, proc.stderr
        assert "waiting for sshd on every host" in proc.stderr  # the progress lines are shown
        status = json.loads(run_cli("weave-node", "lab", "status", "--json", "--name", name, check=True).stdout)
        assert status["up"] is True
        yield Lab(name=name, ssh_config=status["ssh_config"], env=env)
    finally:
        run_cli("weave-node", "lab", "down", "--name", name, "-q")


def grand_total(output: str) -> tuple[int, int, int]:
    """(changed, errors, unchanged) from pyinfra's results table."""
    match = re.search(r"Grand total\s+(\d+|-)\s+(\S+)\s+(\S+)\s+(\S+)", output)  # all "-": nothing planned
    assert match, output
    as_int = [0 if v == "-" else int(v) for v in match.groups()[1:]]
    return as_int[0], as_int[1], as_int[2]


def test_hosts_are_real_systemd_hosts(lab: Lab, root_before: tuple[str, str, str]) -> None:
    for i in range(1, HOSTS + 1):
        host = lab.host(f"node{i}")
        assert host.check_output("hostname") == f"node{i}"
        assert host.process.get(pid=1).comm == "systemd"
        state = poll(
            lambda h=host: h.run("systemctl is-system-running").stdout.strip() in ("running", "degraded"),
            timeout=30,
            what=f"node{i} to finish booting",
        )
        assert state
        assert host.service("ssh").is_running
        assert host.interface("eth0").addresses[0] == f"198.18.0.{i}"
    # OpenSSH with the lab's ssh_config pins each host's own key (StrictHostKeyChecking yes)
    ssh = run_cli("weave-node", "lab", "ssh", "--name", lab.name, "node3", "hostname", env=lab.env)
    assert (ssh.returncode, ssh.stdout.strip()) == (0, "node3"), ssh.stderr
    # every host has its own identity
    ids = {lab.host(f"node{i}").check_output("cat /etc/machine-id") for i in range(1, HOSTS + 1)}
    assert len(ids) == HOSTS
    # ... and nothing was added to the root namespace's interfaces, addresses or routes
    assert root_namespace_view() == root_before


def test_smoke_deploy_over_ssh_is_idempotent_and_repairs_drift(lab: Lab) -> None:
    first = lab.pyinfra("deploys/smoke.py")
    changed, errors, _ = grand_total(first.stdout + first.stderr)
    assert errors == 0 and changed > 0

    for i in range(1, HOSTS + 1):
        host = lab.host(f"node{i}")
        service = host.service("weave-smoke")
        assert service.is_running and service.is_enabled
        unit = host.file("/etc/systemd/system/weave-smoke.service")
        assert unit.mode == 0o644 and unit.contains("ProtectSystem=strict")
        assert host.file("/var/lib/weave-smoke/index.html").content_string == f"weave-node smoke: node{i}\n"
        poll(lambda h=host: h.socket("tcp://127.0.0.1:8099").is_listening, timeout=10, what="the smoke port")
        assert host.check_output("curl -s http://127.0.0.1:8099/") == f"weave-node smoke: node{i}"

    second = lab.pyinfra("deploys/smoke.py")
    changed, errors, unchanged = grand_total(second.stdout + second.stderr)
    assert (changed, errors) == (0, 0), second.stdout
    assert unchanged > 0

    # Drift: stop the service on one host; the next run changes exactly that and starts it again.
    node2 = lab.host("node2")
    node2.check_output("systemctl stop weave-smoke")
    assert not node2.service("weave-smoke").is_running
    third = lab.pyinfra("deploys/smoke.py")
    assert grand_total(third.stdout + third.stderr)[:2] == (1, 0)
    assert node2.service("weave-smoke").is_running


VXLAN_NODE = """
set -e
ip link add tbr type bridge
ip link set tbr up
ip link add tvx type vxlan id 42 dstport 4789 local {me} dev eth0 nolearning
ip link set tvx master tbr up
bridge fdb append 00:00:00:00:00:00 dev tvx dst {peer}
ip netns add pod
ip link add tveth type veth peer name eth0 netns pod
ip link set tveth master tbr up
ip -n pod link set lo up
ip -n pod addr add 10.99.0.{index}/24 dev eth0
ip -n pod link set eth0 up
iptables -t nat -A POSTROUTING -s 10.99.0.0/24 ! -d 10.99.0.0/24 -j MASQUERADE
sysctl -qw net.ipv4.ip_forward=1
"""


def test_lab_hosts_can_do_what_a_node_does(lab: Lab) -> None:
    """Bridge, VXLAN, veth, a pod namespace and iptables inside each host; pods on two hosts talk over VXLAN."""
    node1, node2 = lab.host("node1"), lab.host("node2")
    node1.check_output(VXLAN_NODE.format(me="198.18.0.1", peer="198.18.0.2", index=1))
    node2.check_output(VXLAN_NODE.format(me="198.18.0.2", peer="198.18.0.1", index=2))
    assert "MASQUERADE" in node1.check_output("iptables -t nat -S POSTROUTING")
    assert node1.check_output("ip netns list").startswith("pod")
    poll(
        lambda: node1.run("ip netns exec pod ping -c1 -W1 10.99.0.2").rc == 0,
        timeout=15,
        what="a pod on node1 to ping a pod on node2 over VXLAN",
    )
    assert node2.check_output("ip -s link show tvx")  # the tunnel device exists and counts packets
    assert "vxlan id 42" in node2.check_output("ip -d link show tvx")


def test_second_up_reuses_a_lab_of_the_same_size_and_refuses_another(lab: Lab) -> None:
    same = run_cli("weave-node", "lab", "up", "--name", lab.name, "--hosts", str(HOSTS))
    assert same.returncode == 0
    assert "already up with 3 hosts: reusing it" in same.stderr
    other = run_cli("weave-node", "lab", "up", "--name", lab.name, "--hosts", "5")
    assert other.returncode == 1
    assert f"lab {lab.name!r} is already up with 3 hosts, not 5" in other.stderr
    assert "Traceback" not in other.stderr
    assert lab.host("node1").process.get(pid=1).comm == "systemd"  # still up


def test_down_leaves_nothing_behind(lab: Lab, root_before: tuple[str, str, str]) -> None:
    proc = run_cli("weave-node", "lab", "down", "--name", lab.name)
    assert proc.returncode == 0, proc.stderr
    prefix = f"wnl-{lab.name}-"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert prefix not in netns
    mounts = Path("/proc/self/mountinfo").read_text()
    assert prefix not in mounts
    assert f"/labs/{lab.name}" not in mounts
    assert not Path(f"/sys/fs/cgroup/systemd/weave-node-lab/{lab.name}").exists()
    assert not Path(f"/sys/fs/cgroup/weave-node-lab/{lab.name}").exists()

    def lab_processes() -> list[str]:
        found = []
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit():
                continue
            try:
                cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                stat = (proc_dir / "stat").read_text()
            except OSError:
                continue
            if prefix in cmdline or (") Z " in stat and "(systemd-nspawn)" in stat):
                found.append(f"{proc_dir.name}: {cmdline or stat}")
        return found

    # exited supervisors are reaped by this machine's init on its own schedule: poll, never sleep
    poll(lambda: not lab_processes(), timeout=30, what="no process of the lab (live or zombie)")
    assert root_namespace_view() == root_before
    status = run_cli("weave-node", "lab", "status", "--json", "--name", lab.name)
    assert status.returncode == 3
    assert json.loads(status.stdout)["leftovers"] == []


def lab_traces(name: str) -> list[str]:
    prefix = f"wnl-{name}-"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    found = [line for line in netns.splitlines() if prefix in line]
    found += [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if prefix in line]
    found += [str(p) for p in Path("/sys/fs/cgroup").glob(f"**/weave-node-lab/{name}")]
    return found


def test_a_failed_up_removes_everything_it_created() -> None:
    name = f"f{os.getpid() % 100000}"
    try:
        # nspawn refuses an unknown flag: every host stops while booting
        proc = run_cli(
            "weave-node",
            "lab",
            "up",
            "--name",
            name,
            "--hosts",
            "2",
            env={"WEAVE_LAB_NSPAWN_ARGS": "--no-such-flag"},
        )
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        error = [line for line in proc.stderr.splitlines() if line.startswith("weave-node: error:")]
        assert len(error) == 1 and "stopped while booting" in error[0], proc.stderr
        assert "no-such-flag" in error[0]  # the console's last lines say why
        assert lab_traces(name) == []
        assert not Path(f"/var/lib/weave-node-lab/labs/{name}").exists()
        # a timeout is a failure too: nothing can answer within a millisecond
        proc = run_cli(
            "weave-node", "lab", "up", "--name", name, "--hosts", "2", env={"WEAVE_LAB_BOOT_TIMEOUT": "0.001"}
        )
        assert proc.returncode == 1
        assert "sshd did not answer within 0.001 s" in proc.stderr
        assert lab_traces(name) == []
    finally:
        run_cli("weave-node", "lab", "down", "--name", name, "-q")
