"""The lab's Debian root filesystem: built once with mmdebstrap, cached, shared read-only by every host."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from weave_node.core.errors import WeaveError
from weave_node.lab.system import stream

SUITE = "bookworm"
# What a node needs (lab hosts have no route to package registries, so the deploys find it all here).
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "iproute2",
    "iptables",
    "ebtables",  # direct mode's ARP rules
    "ipset",
    "conntrack",
    "kmod",
    "procps",
    "iputils-ping",
    "netcat-openbsd",
    "tcpdump",
    "iperf3",
    "curl",
    "ca-certificates",
    "python3",
    "python3-venv",
    "containernetworking-plugins",
    "less",
)
# A Kubernetes host also runs containerd (with its CRI plugin) and runc; kubelet wants socat for port-forward.
KUBERNETES_PACKAGES = ("containerd", "runc", "socat")
# Bump when the customisation below changes: it is part of the cache key.
CUSTOMIZE_VERSION = 1
# Timers and units that only slow a lab host's boot or wake it up for nothing.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
    "dpkg-db-backup.timer",
    "getty@tty1.service",
    "console-getty.service",
    "systemd-networkd-wait-online.service",
)
SSHD_DROPIN = """\
# Written by weave-node's lab: hosts are reached as root with the lab's key only.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
HostKey /etc/ssh/ssh_host_ed25519_key
"""


def _vm_setup_hook() -> str:
    from weave_node.lab.vm import SETUP_HOOK

    return SETUP_HOOK


def _vm_flavour() -> str:
    from weave_node.lab.vm import vm_flavour

    return vm_flavour()


class RootfsError(WeaveError):
    pass


def cache_key(suite: str = SUITE, packages: tuple[str, ...] = PACKAGES, flavour: str = "") -> str:
    """`flavour`: what else makes this rootfs (a VM's hooks and units)."""
    lines = [suite, "variant=apt", f"customize={CUSTOMIZE_VERSION}", *sorted(packages)]
    if flavour:  # (none: the key of every rootfs built before VMs, unchanged)
        lines.append(flavour)
    text = "\n".join(lines)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rootfs_path(cache_dir: Path, packages: tuple[str, ...] = PACKAGES, flavour: str = "") -> Path:
    return cache_dir / f"rootfs-{SUITE}-{cache_key(packages=packages, flavour=flavour)}"


def apt_sources() -> list[str]:
    """The machine's own apt sources when it is Debian, so a local mirror or proxy is honoured."""
    override = os.environ.get("WEAVE_LAB_MIRROR")
    if override:
        return [override]
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.is_file() and SUITE in deb822.read_text():
        return [str(deb822)]
    classic = Path("/etc/apt/sources.list")
    if classic.is_file() and SUITE in classic.read_text():
        return [str(classic)]
    return []  # mmdebstrap's default mirror


def customize(root: Path) -> None:
    """Make one rootfs fit for many hosts: no shared identity, no DNS, no boot-time waits."""
    for name in ("etc/hostname",):
        (root / name).unlink(missing_ok=True)
    (root / "etc/machine-id").write_text("")  # each boot gets its own
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("# lab hosts have no DNS: names are in /etc/hosts\n")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # each host gets its own, written by the lab before it boots
    dropin = root / "etc/ssh/sshd_config.d/weave-lab.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(SSHD_DROPIN)
    systemd_dir = root / "etc/systemd/system"
    for unit in MASKED_UNITS:
        link = systemd_dir / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    default = systemd_dir / "default.target"
    default.unlink(missing_ok=True)
    default.symlink_to("/lib/systemd/system/multi-user.target")
    # The hosts' journals stay small: 20 hosts on one machine.
    journald = root / "etc/systemd/journald.conf.d/weave-lab.conf"
    journald.parent.mkdir(parents=True, exist_ok=True)
    journald.write_text("[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n")
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)


def ensure_rootfs(
    cache_dir: Path, on_line: Callable[[str], None], packages: tuple[str, ...] = PACKAGES, *, vm: bool = False
) -> tuple[Path, bool]:
    """Return (path, built_now). Builds under a lock into a temporary directory, then renames. `vm`: the root
    filesystem of a VM's image (vm.py: a small initramfs, its own units)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = rootfs_path(cache_dir, packages, _vm_flavour() if vm else "")
    if final.is_dir():
        return final, False
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():  # built by someone else while we waited
            return final, False
        partial = final.with_name(final.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        try:
            _mmdebstrap(partial, on_line, packages, vm)
            customize(partial)
            if vm:
                from weave_node.lab.vm import customize_vm

                customize_vm(partial)
            partial.rename(final)
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(partial)
            raise
    return final, True


def _mmdebstrap(target: Path, on_line: Callable[[str], None], packages: tuple[str, ...], vm: bool) -> None:
    if shutil.which("mmdebstrap") is None:
        raise RootfsError("missing dependency: mmdebstrap (apt-get install mmdebstrap)")
    cmd = [
        "mmdebstrap",
        "--variant=apt",
        "--mode=root",
        "--include=" + ",".join(packages),
        *(["--setup-hook=" + _vm_setup_hook()] if vm else []),
        SUITE,
        str(target),
        *apt_sources(),
    ]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    code, tail = stream(cmd, on_line, env=env, keep=20)
    if code != 0:
        last = next((t for t in reversed(tail) if t.startswith("E:")), tail[-1] if tail else "")
        raise RootfsError(f"mmdebstrap failed (exit {code}): {last}")
