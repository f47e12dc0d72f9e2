"""A lab host that is a virtual machine with Debian's own kernel (`lab up --vm`): for what this machine's kernel
lacks (IPsec ESP, gcm(aes), WireGuard). QEMU without acceleration (TCG; /dev/kvm here is PVM, which cannot boot a
stock kernel: ../shared/VM-NOTES.md), so a VM proves that something works, never how fast.

- One ext4 image per machine, made from a root filesystem built like the nspawn hosts' (rootfs.py) plus Debian's
  kernel, with a small initramfs (virtio and ext4 only); cached beside the rootfs.
- Per VM: a qcow2 overlay on that image, and a small "seed" disk holding the host's own files (the same upper
  layer an nspawn host gets: hostname, keys, /etc/hosts, plus its systemd-networkd address), copied into place
  early in the boot by a unit of the image.
- QEMU runs in the lab's underlay namespace, in the host's own cgroup (so `lab down` stops it like a host); its
  NIC is a TAP on the underlay bridge, named like an nspawn host's veth end (vhN).
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import shutil
from collections.abc import Callable
from pathlib import Path

from weave_node.lab import system
from weave_node.lab.paths import LabPaths
from weave_node.lab.rootfs import ensure_rootfs, rootfs_path
from weave_node.lab.spec import UNDERLAY_GATEWAY6, UNDERLAY_NET6, HostSpec, LabSpec
from weave_node.lab.system import LabError

# What a VM needs beyond an nspawn host: a kernel (and udev to load its modules). e2fsprogs: mkfs/fsck.
VM_PACKAGES = ("linux-image-amd64", "udev", "e2fsprogs")
IMAGE_SIZE = "3G"  # sparse: the rootfs takes ~1 GB of it
SEED_SIZE = "16M"
MEMORY_MIB = 640
TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "mkfs.ext4": "e2fsprogs"}

# Written before the kernel package is installed, so its first initramfs is already the small one.
INITRAMFS_CONF = "MODULES=list\nCOMPRESS=gzip\n"
INITRAMFS_HOOK = """\
#!/bin/sh
# weave-node lab: a VM's initramfs needs only virtio and ext4
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
manual_add_modules crc32c_generic crc32c_intel
for m in virtio_pci virtio_blk ext4; do force_load "$m"; done
"""
SETUP_HOOK = f"""\
set -e
mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks"
cat > "$1/etc/initramfs-tools/conf.d/weave-lab.conf" <<'WEAVE_EOF'
{INITRAMFS_CONF}WEAVE_EOF
cat > "$1/etc/initramfs-tools/hooks/weave-lab" <<'WEAVE_EOF'
{INITRAMFS_HOOK}WEAVE_EOF
chmod 755 "$1/etc/initramfs-tools/hooks/weave-lab"
"""
SEED_UNIT = """\
[Unit]
Description=weave-node lab: this host's own files (the seed disk)
DefaultDependencies=no
Requires=dev-vdb.device
After=dev-vdb.device
Before=sysinit.target systemd-networkd.service ssh.service systemd-journald.service
ConditionPathExists=!/etc/weave-lab-seeded

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -ec 'mkdir -p /run/weave-seed; mount -o ro /dev/vdb /run/weave-seed; \
cp -a /run/weave-seed/. /; umount /run/weave-seed; rm -rf /lost+found/*; hostname -F /etc/hostname; \
touch /etc/weave-lab-seeded'

[Install]
WantedBy=sysinit.target
"""


def customize_vm(root: Path) -> None:
    """The VM image's own parts: the seed unit, systemd-networkd, no serial getty, the root in fstab."""
    units = root / "etc/systemd/system"
    (units / "weave-lab-seed.service").write_text(SEED_UNIT)
    wants = {
        "sysinit.target.wants": ["weave-lab-seed.service"],
        "multi-user.target.wants": ["systemd-networkd.service"],
        "sockets.target.wants": ["systemd-networkd.socket"],
    }
    for target, names in wants.items():
        (units / target).mkdir(parents=True, exist_ok=True)
        for name in names:
            link = units / target / name
            link.unlink(missing_ok=True)
            base = units if name.startswith("weave-lab") else Path("/lib/systemd/system")
            link.symlink_to(base / name if base != units else f"/etc/systemd/system/{name}")
    for unit in ("serial-getty@ttyS0.service", "systemd-networkd-wait-online.service"):
        link = units / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    (root / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")


class VmImage:
    """The cached image of a VM: root.ext4, vmlinuz, initrd.img."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @property
    def disk(self) -> Path:
        return self.dir / "root.ext4"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"


def ensure_image(cache_dir: Path, packages: tuple[str, ...], on_line: Callable[[str], None]) -> tuple[VmImage, bool]:
    """Return (image, built_now): the VM rootfs (built like the nspawn hosts'), then an ext4 image of it; the
    rootfs directory goes once the image is made."""
    packages = packages + VM_PACKAGES
    image = VmImage(
        rootfs_path(cache_dir, packages, vm_flavour()).with_name(
            "vm-" + rootfs_path(cache_dir, packages, vm_flavour()).name.removeprefix("rootfs-")
        )
    )
    if image.disk.is_file():
        return image, False
    rootfs, _ = ensure_rootfs(cache_dir, on_line, packages, vm=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image.disk.is_file():
            return image, False
        partial = image.dir.with_name(image.dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            on_line("ext4 image of the VM root filesystem")
            system.run(
                ["mkfs.ext4", "-q", "-F", "-L", "weave-root", "-d", str(rootfs), str(partial / "root.ext4"), IMAGE_SIZE]
            )
            shutil.copyfile(_newest(rootfs / "boot", "vmlinuz-*"), partial / "vmlinuz")
            shutil.copyfile(_newest(rootfs / "boot", "initrd.img-*"), partial / "initrd.img")
            shutil.rmtree(image.dir, ignore_errors=True)
            partial.rename(image.dir)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        shutil.rmtree(rootfs, ignore_errors=True)
    return image, True


def vm_flavour() -> str:
    """What, beside its packages, makes the VM's rootfs (part of its cache key)."""
    text = SETUP_HOOK + SEED_UNIT + inspect.getsource(customize_vm)
    return "vm:" + hashlib.sha256(text.encode()).hexdigest()


def _newest(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if not found:
        raise LabError(f"the VM root filesystem has no {directory / pattern}")
    return found[-1]


def network_file(spec: LabSpec, host: HostSpec) -> str:
    """systemd-networkd's configuration of the VM's eth0: what make_network gives an nspawn host's."""
    lines = [
        "[Match]",
        "Name=eth0",
        "",
        "[Network]",
        f"Address={host.address}/{spec.prefix}",
        f"Gateway={spec.gateway}",
        "LinkLocalAddressing=ipv6" if spec.ipv6 or host.address6 else "LinkLocalAddressing=no",
        "IPv6AcceptRA=no",
    ]
    if host.address6 is not None:
        lines += [f"Address={host.address6}/{UNDERLAY_NET6.prefixlen}", f"Gateway={UNDERLAY_GATEWAY6}"]
    return "\n".join(lines) + "\n"


def mac(host: HostSpec) -> str:
    return f"52:54:00:18:{host.index >> 8:02x}:{host.index & 0xFF:02x}"


def prepare(spec: LabSpec, host: HostSpec, image: VmImage, paths: LabPaths) -> None:
    """The VM's disks: a qcow2 overlay on the image, and the seed disk made of its upper layer."""
    host_dir = paths.host_dir(host.name)
    upper = host_dir / "upper"
    network = upper / "etc/systemd/network"
    network.mkdir(parents=True, exist_ok=True)
    system.write_atomic(network / "10-eth0.network", network_file(spec, host))
    system.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.disk), str(host_dir / "disk.qcow2")]
    )
    system.run(["mkfs.ext4", "-q", "-F", "-L", "weave-seed", "-d", str(upper), str(host_dir / "seed.ext4"), SEED_SIZE])


def boot(spec: LabSpec, host: HostSpec, image: VmImage, paths: LabPaths) -> None:
    """Start QEMU for the host (its TAP is made by make_network), in the host's cgroup."""
    cgroups = system.lab_cgroups(spec.name, host.name)
    system.make_cgroups(cgroups)
    host_dir = paths.host_dir(host.name)
    append = f"root=/dev/vda rw console=ttyS0 quiet net.ifnames=0 systemd.hostname={host.name} panic=-1"
    cmd = [
        "ip",
        "netns",
        "exec",
        spec.underlay_netns,
        "qemu-system-x86_64",
        "-name",
        host.machine,
        "-accel",
        "tcg,tb-size=128",
        "-cpu",
        "max",
        "-m",
        str(MEMORY_MIB),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-monitor",
        "none",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        append,
        "-drive",
        f"file={host_dir / 'disk.qcow2'},if=virtio,format=qcow2,cache=unsafe",
        "-drive",
        f"file={host_dir / 'seed.ext4'},if=virtio,format=raw,readonly=on",
        "-netdev",
        f"tap,id=n0,ifname={host.underlay_port},script=no,downscript=no",
        "-device",
        f"virtio-net-pci,netdev=n0,mac={mac(host)}",
        "-device",
        "virtio-rng-pci",
        "-serial",
        f"file:{host_dir / 'console.log'}",
    ]
    system.spawn_in_cgroups(cmd, host_dir / "qemu.log", cgroups)


def qemu_pid(spec: LabSpec, host: HostSpec) -> int | None:
    for pid in system.cgroup_pids(system.lab_cgroups(spec.name, host.name)[0]):
        if system.comm(pid) == "qemu-system-x86":
            return pid
    return None
