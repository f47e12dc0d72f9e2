"""A lab's hosts, made on this machine: keys and copy-on-write layers, the network namespaces and the underlay
bridge, one `systemd-nspawn -b` per host, and the wait for their sshd."""

from __future__ import annotations

import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from weave_node.lab import system
from weave_node.lab.paths import LabPaths, failure_logs_dir
from weave_node.lab.spec import UNDERLAY_GATEWAY6, UNDERLAY_NET6, HostSpec, LabSpec, render_etc_hosts
from weave_node.lab.system import LabError

BOOT_TIMEOUT = float(os.environ.get("WEAVE_LAB_BOOT_TIMEOUT", "90"))
VM_BOOT_TIMEOUT = float(os.environ.get("WEAVE_LAB_VM_BOOT_TIMEOUT", "300"))  # emulated CPUs (vm.py)


def _keygen(path: Path, comment: str) -> str:
    system.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_suffix(".pub").read_text().strip()


def prepare_files(spec: LabSpec, paths: LabPaths) -> dict[str, str]:
    if paths.root.exists():
        shutil.rmtree(paths.root)
    paths.root.mkdir(parents=True, mode=0o700)
    client_pub = _keygen(paths.key, f"weave-node-lab-{spec.name}")
    public_keys = {}
    for host in spec.hosts:
        upper = paths.host_dir(host.name) / "upper"
        (upper / "etc/ssh").mkdir(parents=True)
        upper.chmod(0o755)
        (upper / "root/.ssh").mkdir(parents=True, mode=0o700)
        (upper / "root").chmod(0o700)
        system.write_atomic(upper / "root/.ssh/authorized_keys", client_pub + "\n", mode=0o600)
        system.write_atomic(upper / "etc/hostname", host.name + "\n")
        system.write_atomic(upper / "etc/hosts", render_etc_hosts(spec, host))
        public_keys[host.name] = _keygen(upper / "etc/ssh/ssh_host_ed25519_key", f"root@{host.name}")
    return public_keys


def make_network(spec: LabSpec) -> None:
    """The underlay namespace and bridge; a namespace and a veth pair per nspawn host; a TAP per VM."""
    under = spec.underlay_netns
    containers = [h for h in spec.hosts if not h.vm]
    root_cmds = [f"netns add {under}"] + [f"netns add {h.netns}" for h in containers]
    root_cmds += [
        f"link add {h.underlay_port} netns {under} type veth peer name eth0 netns {h.netns}" for h in containers
    ]
    system.ip_batch(None, root_cmds)
    prefix, nodad = spec.prefix, " nodad" if spec.ipv6 else ""  # (IPv6: usable at once, no DAD wait)
    under_cmds = [
        "link set lo up",
        "link add br0 type bridge",
        f"addr add {spec.gateway}/{prefix} dev br0{nodad}",
        "link set br0 up",
    ]
    if spec.dual:
        under_cmds.append(f"addr add {UNDERLAY_GATEWAY6}/{UNDERLAY_NET6.prefixlen} dev br0 nodad")
    under_cmds += [f"tuntap add dev {h.underlay_port} mode tap" for h in spec.hosts if h.vm]
    under_cmds += [f"link set {h.underlay_port} master br0 up" for h in spec.hosts]
    system.ip_batch(under, under_cmds)
    for h in containers:
        system.ip_batch(
            h.netns,
            [
                "link set lo up",
                f"addr add {h.address}/{prefix} dev eth0{nodad}",
                "link set eth0 up",
                f"route add default via {spec.gateway}",
                *_dual_stack(h),
            ],
        )


def _dual_stack(host: HostSpec) -> list[str]:
    """A dual-stack lab's host: its IPv6 address and default route beside IPv4's."""
    if host.address6 is None:
        return []
    return [
        f"addr add {host.address6}/{UNDERLAY_NET6.prefixlen} dev eth0 nodad",
        f"route add default via {UNDERLAY_GATEWAY6}",
    ]


def boot(spec: LabSpec, host: HostSpec, rootfs: Path, paths: LabPaths, extra: tuple[str, ...] = ()) -> None:
    # A Kubernetes host joins its own cgroup in every v1 controller too: its pods' cgroups go under it.
    cgroups = system.lab_cgroups(spec.name, host.name, controllers=bool(extra))
    system.make_cgroups(cgroups)
    host_dir = paths.host_dir(host.name)
    cmd = [
        "systemd-nspawn",
        "--quiet",
        "--boot",
        f"--directory={rootfs}",
        f"--overlay={rootfs}:{host_dir / 'upper'}:/",
        f"--machine={host.machine}",
        f"--hostname={host.name}",
        f"--network-namespace-path={system.NETNS_DIR / host.netns}",
        "--private-network",  # keeps that namespace and grants CAP_NET_ADMIN + writable /proc/sys
        "--register=no",
        "--keep-unit",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--console=read-only",
        "--bind=/dev/net/tun",  # the sleeve's TAP (nspawn allows the device it binds in)
        *extra,
        # extra flags for debugging a host, e.g. WEAVE_LAB_NSPAWN_ARGS="--bind=/srv/debug"
        *shlex.split(os.environ.get("WEAVE_LAB_NSPAWN_ARGS", "")),
    ]
    system.spawn_in_cgroups(cmd, host_dir / "console.log", cgroups)


def keep_console_logs(spec: LabSpec) -> Path:
    """Copy the hosts' console logs out of the lab dir (which teardown removes) for debugging."""
    dest = failure_logs_dir(spec.name)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    paths = LabPaths.of(spec.name)
    for host in spec.hosts:
        log = paths.host_dir(host.name) / "console.log"
        if log.exists():
            shutil.copyfile(log, dest / f"{host.name}.console.log")
    return dest


def _console_tail(paths: LabPaths, host: str, lines: int = 3) -> str:
    try:
        text = (paths.host_dir(host) / "console.log").read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _stopped(cgroup: Path, confirm: float = 1.0) -> bool:
    """No process left in the host's cgroup, seen again and again for `confirm` seconds: one walk of the tree can
    miss every process while nspawn and systemd move into sub-cgroups they just made (a host under load was taken
    for stopped 0.1 s into its boot)."""
    deadline = time.monotonic() + confirm
    while not system.cgroup_pids(cgroup):
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)  # (a re-check of a racy read, not a wait for a state)
    return False


def wait_ssh(spec: LabSpec, paths: LabPaths, report: Any) -> None:
    pending = {h.name: h for h in spec.hosts}
    timeout = max(BOOT_TIMEOUT, VM_BOOT_TIMEOUT) if spec.vms else BOOT_TIMEOUT
    deadline = time.monotonic() + timeout
    while pending:
        for name, host in list(pending.items()):
            if system.ssh_banner(spec.underlay_netns, str(host.address), timeout=0.3):
                del pending[name]
                continue
            if _stopped(system.lab_cgroups(spec.name, name)[0]):
                raise LabError(
                    f"{name} stopped while booting: {_console_tail(paths, name)} "
                    f"(console logs: {failure_logs_dir(spec.name)})"
                )
        report(f"{len(spec.hosts) - len(pending)}/{len(spec.hosts)} ready")
        if pending and time.monotonic() > deadline:
            names = ", ".join(sorted(pending))
            raise LabError(
                f"sshd did not answer within {timeout:g} s on {names} (console logs: {failure_logs_dir(spec.name)})"
            )
        if pending:
            time.sleep(0.05)
