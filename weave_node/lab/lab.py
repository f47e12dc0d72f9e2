"""Bring a lab of real systemd hosts up and down on this one machine: `up` (rolled back on failure), `down`,
`status`, and the commands that reach a lab that is up. Where it lives on disk: paths.py; its hosts: hosts.py;
removing it: teardown.py.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weave_node.lab import system, vm
from weave_node.lab.hosts import boot, keep_console_logs, make_network, prepare_files, wait_ssh
from weave_node.lab.paths import LabPaths, home
from weave_node.lab.progress import Progress
from weave_node.lab.rootfs import KUBERNETES_PACKAGES, PACKAGES, ensure_rootfs
from weave_node.lab.spec import (
    LabSpec,
    make_spec,
    render_known_hosts,
    render_ssh_config,
    validate_lab_name,
)
from weave_node.lab.system import LabError
from weave_node.lab.teardown import leftovers, teardown

TOOLS = {
    "ip": "iproute2",
    "systemd-nspawn": "systemd-container",
    "mmdebstrap": "mmdebstrap",
    "nc": "netcat-openbsd",
    "socat": "socat",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "nsenter": "util-linux",
}


@dataclass
class HostStatus:
    name: str
    address: str
    netns: str
    pid1: int | None  # the host's systemd, as seen from this machine
    system_state: str  # systemctl is-system-running inside the host
    pss_mib: float


@dataclass
class LabStatus:
    name: str
    up: bool
    spec: LabSpec | None
    hosts: list[HostStatus] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    paths: LabPaths | None = None


def _lock(name: str) -> Any:
    return system.file_lock(home() / "locks" / f"{name}.lock")


def _load_state(paths: LabPaths) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(paths.state.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(f"unreadable lab state {paths.state}: {exc}") from exc
    return data


def status(name: str, *, probe_systemd: bool = True) -> LabStatus:
    validate_lab_name(name)
    paths = LabPaths.of(name)
    state = _load_state(paths)
    if state is None:
        return LabStatus(name=name, up=False, spec=None, leftovers=leftovers(name), paths=paths)
    spec = _spec_of(name, state)
    hosts = []
    for host in spec.hosts:
        cgroups = system.lab_cgroups(name, host.name)
        pids = system.cgroup_pids(cgroups[0])
        pid1 = vm.qemu_pid(spec, host) if host.vm else system.ns_pid_one(pids)
        state_text = "down"
        if pid1 is not None and host.vm:
            state_text = _vm_state(paths, host.name) if probe_systemd else "up"
        elif pid1 is not None:
            state_text = _system_state(pid1) if probe_systemd else "up"
        hosts.append(
            HostStatus(
                name=host.name,
                address=str(host.address),
                netns=f"(VM in {spec.underlay_netns})" if host.vm else host.netns,
                pid1=pid1,
                system_state=state_text,
                pss_mib=system.pss_kib(pids) / 1024,
            )
        )
    up = all(h.pid1 is not None for h in hosts)
    return LabStatus(name=name, up=up, spec=spec, hosts=hosts, paths=paths)


def _spec_of(name: str, state: dict[str, Any]) -> LabSpec:
    return make_spec(
        name, int(state["hosts"]), bool(state.get("ipv6")), bool(state.get("dual")), int(state.get("vms", 0))
    )


def _family(spec: LabSpec) -> str:
    vms = f" with {spec.vms} VMs" if spec.vms else ""
    return (" on IPv6 only" if spec.ipv6 else " dual-stack" if spec.dual else "") + vms


def _vm_state(paths: LabPaths, host: str) -> str:
    """A VM's `systemctl is-system-running`, over SSH (there is no namespace to enter)."""
    cmd = ["ssh", "-F", str(paths.ssh_config), "-o", "ConnectTimeout=5", host, "systemctl", "is-system-running"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)
    except subprocess.TimeoutExpired:
        return "unresponsive"
    return proc.stdout.strip() or "booting"


def _system_state(pid1: int) -> str:
    try:
        proc = subprocess.run(
            ["nsenter", "-t", str(pid1), "-a", "systemctl", "is-system-running"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "unresponsive"
    return proc.stdout.strip() or "unknown"


def up(
    name: str,
    count: int,
    progress: Progress,
    *,
    kubernetes: bool = False,
    ipv6: bool = False,
    dual: bool = False,
    vms: int = 0,
) -> LabStatus:
    """`ipv6`: an IPv6-only underlay (the hosts have no IPv4 address); `dual`: both families on the underlay;
    `vms`: the first `vms` hosts are VMs with Debian's own kernel (vm.py)."""
    spec = make_spec(name, count, ipv6, dual, vms)  # bad input fails here, before anything is touched
    if kubernetes and ipv6:
        raise LabError("--kubernetes needs IPv4 on the hosts (the lab's cluster is IPv4's): use --dual-stack")
    if kubernetes and vms:
        raise LabError("--kubernetes runs on nspawn hosts only, not with --vm")
    system.require_root()
    system.require_tools(TOOLS | (vm.TOOLS if vms else {}))
    system.cgroup_hierarchies()
    with _lock(name):
        current = status(name, probe_systemd=False)
        if current.up and current.spec is not None:
            same = len(current.spec.hosts) == count and _family(current.spec) == _family(spec)
            if same and is_kubernetes(name) == kubernetes:
                progress.note(f"lab {name!r} is already up with {count} hosts: reusing it")
                return current

            def kind(k8s: bool, s: LabSpec) -> str:
                return f"{' as a Kubernetes cluster' if k8s else ''}{_family(s)}"

            raise LabError(
                f"lab {name!r} is already up with {len(current.spec.hosts)} hosts"
                f"{kind(is_kubernetes(name), current.spec)}, not {count}{kind(kubernetes, spec)}: "
                f"run `weave-node lab down{_name_flag(name)}` first"
            )
        if current.leftovers or current.spec is not None:
            with progress.step("cleaning up what an earlier lab left behind") as step:
                step.update(", ".join(current.leftovers) or "stale state")
                teardown(name)
        try:
            _bring_up(spec, progress, kubernetes)
        except BaseException:
            kept = keep_console_logs(spec)
            progress.note(f"lab up failed: removing everything it created (console logs kept in {kept})")
            teardown(name)
            raise
    return status(name, probe_systemd=False)


def _name_flag(name: str) -> str:
    return "" if name == "lab" else f" --name {name}"


def is_kubernetes(name: str) -> bool:
    state = _load_state(LabPaths.of(name))
    return bool(state and state.get("kubernetes"))


def _bring_up(spec: LabSpec, progress: Progress, kubernetes: bool = False) -> None:
    paths = LabPaths.of(spec.name)
    packages = PACKAGES + KUBERNETES_PACKAGES if kubernetes else PACKAGES
    with progress.step("root filesystem (Debian bookworm, cached)") as step:
        rootfs, built = ensure_rootfs(home() / "cache", step.update, packages)
        step.update(("built " if built else "cached ") + str(rootfs))
    prepared = None
    if kubernetes:
        from weave_node.lab.kubernetes import bringup

        with progress.step("Kubernetes 1.20 binaries and images (built once per machine)") as step:
            prepared = bringup.prepare(home() / "cache", step.update)
            step.update(f"{prepared.bin_dir}; images: {', '.join(sorted(prepared.images))}")
    with progress.step("keys and host layers") as step:
        host_keys = prepare_files(spec, paths)
        step.update(f"{len(spec.hosts)} hosts, per-host SSH host keys")
        if prepared is not None:
            admin = bringup.write_host_files(spec, lambda host: paths.host_dir(host) / "upper")
            system.write_atomic(paths.root / "kubeconfig", admin.decode(), mode=0o600)
            step.update("certificates, kubeconfigs and units of a Kubernetes cluster (control plane on node1)")
    image = None
    if spec.vms:
        with progress.step("VM image (Debian's kernel; cached)") as step:
            image, built = vm.ensure_image(home() / "cache", packages, step.update)
            for host in spec.hosts:
                if host.vm:
                    vm.prepare(spec, host, image, paths)
            step.update(("built " if built else "cached ") + str(image.dir))
    with progress.step("network namespaces and underlay bridge") as step:
        make_network(spec)
        step.update(f"{spec.underlay_netns}: br0 {spec.gateway}/{spec.prefix}")
    raised = system.raise_inotify_instances()
    if raised:
        progress.note(raised)
    kinds = (
        "QEMU VMs and systemd-nspawn -b"
        if image and spec.vms < len(spec.hosts)
        else ("QEMU VMs" if image else "systemd-nspawn -b")
    )
    with progress.step(f"booting {len(spec.hosts)} hosts ({kinds})") as step:
        for host in spec.hosts:
            if host.vm and image is not None:
                vm.boot(spec, host, image, paths)
            else:
                boot(spec, host, rootfs, paths, prepared.nspawn_args if prepared else ())
        step.update("systemd is PID 1 in each")
    with progress.step("waiting for sshd on every host") as step:
        wait_ssh(spec, paths, step.update)
    system.write_atomic(paths.ssh_config, render_ssh_config(spec, str(paths.key), str(paths.known_hosts)))
    system.write_atomic(paths.known_hosts, render_known_hosts(spec, host_keys))
    if prepared is not None:
        with progress.step("images into each node's containerd") as step:
            bringup.import_images(spec, paths.ssh_config, prepared.images)
            step.update(", ".join(sorted(prepared.images)))
        with progress.step("Kubernetes control plane and nodes") as step:
            bringup.wait_cluster(spec, prepared.bin_dir, paths.root / "kubeconfig", step.update)
    state = {
        "name": spec.name,
        "hosts": len(spec.hosts),
        "rootfs": str(rootfs),
        "underlay_netns": spec.underlay_netns,
        "ssh_config": str(paths.ssh_config),
        "addresses": {h.name: str(h.address) for h in spec.hosts},
        "ipv6": spec.ipv6,
        "dual": spec.dual,
        "addresses6": {h.name: str(h.address6) for h in spec.hosts if h.address6},
        "vms": spec.vms,
        "created": time.time(),
        "kubernetes": prepared is not None,
        "kubernetes_bin": str(prepared.bin_dir) if prepared else None,
    }
    system.write_atomic(paths.state, json.dumps(state, indent=2) + "\n")


def down(name: str, progress: Progress) -> bool:
    """Remove lab `name` and everything it left. Returns False when there was nothing to remove."""
    validate_lab_name(name)
    system.require_root()
    with _lock(name):
        found = leftovers(name)
        if not found:
            return False
        with progress.step(f"stopping lab {name!r}") as step:
            teardown(name)
            step.update(f"removed {len(found)} namespaces/cgroups/dirs")
    return True


def require_up(name: str) -> tuple[LabSpec, LabPaths]:
    """The spec and paths of a lab that came up; a one-line error otherwise."""
    validate_lab_name(name)
    paths = LabPaths.of(name)
    state = _load_state(paths)
    if state is None:
        raise LabError(f"lab {name!r} is not up: run `weave-node lab up{_name_flag(name)}`")
    return _spec_of(name, state), paths


def kubectl_argv(name: str, args: list[str]) -> list[str]:
    """kubectl 1.20 (from the lab's cache) with the lab's admin kubeconfig, inside the underlay namespace."""
    spec, paths = require_up(name)
    state = _load_state(paths) or {}
    if not state.get("kubernetes"):
        raise LabError(f"lab {name!r} is not a Kubernetes cluster: bring it up with `weave-node lab up --kubernetes`")
    from weave_node.lab.kubernetes.bringup import kubectl_argv as argv

    return argv(spec, Path(state["kubernetes_bin"]), paths.root / "kubeconfig", args)


def ssh_argv(name: str, host: str, command: list[str]) -> list[str]:
    spec, paths = require_up(name)
    spec.host(host)  # unknown host -> one-line error
    system.require_tools({"ssh": "openssh-client"})
    return ["ssh", "-F", str(paths.ssh_config), host, *command]
