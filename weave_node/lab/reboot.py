"""`weave-node lab reboot HOST`: a host restarted as a real machine would be. systemd inside is asked to reboot;
systemd-nspawn then exits (it leaves restarting to its caller), and what a reboot wipes is wiped: the host's
network namespace loses every link but its NIC and loopback (bridges, VXLAN, TAP, pods' veths), its iptables
rules and its forwarding sysctl; /run is a tmpfs of the container and goes with it (pods' network namespaces).
The disk (the host's overlay layer: /etc, /var/lib) stays. Then it boots again and its sshd answers."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

from weave_node.lab import system
from weave_node.lab.hosts import boot, wait_ssh
from weave_node.lab.lab import _load_state, _lock, require_up
from weave_node.lab.system import LabError

STOP_TIMEOUT = 60.0


def reboot(name: str, host: str, report: object = None) -> float:
    """Reboot `host` of lab `name`; the seconds it took until sshd answered again."""
    spec, paths = require_up(name)
    target = spec.host(host)
    state = _load_state(paths) or {}
    if state.get("kubernetes"):
        raise LabError("lab reboot is for plain labs (a Kubernetes host's cgroups are set up by `lab up` only)")
    if target.vm:
        raise LabError(f"{host} is a VM: reboot it from inside (`weave-node lab ssh {host} systemctl reboot`)")
    start = time.monotonic()
    with _lock(name):
        # Queued, not waited for (the session would hang as the host goes down): the exit code says nothing.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                ["ssh", "-F", str(paths.ssh_config), host, "systemctl reboot --no-block"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        cgroup = system.lab_cgroups(spec.name, host)[0]
        deadline = time.monotonic() + STOP_TIMEOUT
        while system.cgroup_pids(cgroup):
            if time.monotonic() > deadline:
                raise LabError(f"{host} did not stop within {STOP_TIMEOUT:g} s of `systemctl reboot`")
            time.sleep(0.1)
        _wipe_kernel_state(target.netns)
        boot(spec, target, Path(str(state["rootfs"])), paths)
        wait_ssh(spec, paths, report if callable(report) else (lambda _text: None))
    return time.monotonic() - start


def _wipe_kernel_state(netns: str) -> None:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True, check=True)
    links = [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines() if ":" in line]
    doomed = [link for link in links if link not in ("lo", "eth0")]
    if doomed:
        system.ip_batch(netns, [f"link delete {link}" for link in doomed])
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            for flag in ("-F", "-X"):
                subprocess.run(["ip", "netns", "exec", netns, tool, "-t", table, flag], capture_output=True,
                               check=False)  # fmt: skip
    for key in ("net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"):
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", key], check=False)
