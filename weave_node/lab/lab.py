"""Bring a lab of real systemd hosts up and down on this one machine.

Layout on disk (WEAVE_LAB_HOME, default /var/lib/weave-node-lab):
    cache/rootfs-bookworm-<key>/     the shared, read-only lower dir of every host (built once)
    labs/<name>/state.json           written last by `up`: its presence means the lab came up
    labs/<name>/ssh_config           reach hosts from the root namespace: ssh -F ssh_config node1
    labs/<name>/known_hosts          the hosts' own (per-host) keys, pinned
    labs/<name>/id_ed25519           the lab's client key (root on every host)
    labs/<name>/hosts/<host>/upper   the host's copy-on-write layer; console.log beside it
    labs/<name>/kubeconfig           with --kubernetes: the cluster's admin (use `weave-node lab kubectl`)
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weave_node.lab import system
from weave_node.lab.progress import Progress
from weave_node.lab.rootfs import KUBERNETES_PACKAGES, PACKAGES, ensure_rootfs
from weave_node.lab.spec import (
    UNDERLAY_GATEWAY,
    UNDERLAY_NET,
    HostSpec,
    LabSpec,
    make_spec,
    render_etc_hosts,
    render_known_hosts,
    render_ssh_config,
    validate_lab_name,
)
from weave_node.lab.system import LabError

DEFAULT_HOME = Path("/var/lib/weave-node-lab")
TOOLS = {
    "ip": "iproute2",
    "systemd-nspawn": "systemd-container",
    "mmdebstrap": "mmdebstrap",
    "nc": "netcat-openbsd",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "nsenter": "util-linux",
}
BOOT_TIMEOUT = float(os.environ.get("WEAVE_LAB_BOOT_TIMEOUT", "90"))


def home() -> Path:
    return Path(os.environ.get("WEAVE_LAB_HOME", str(DEFAULT_HOME)))


@dataclass(frozen=True)
class LabPaths:
    root: Path

    @classmethod
    def of(cls, name: str) -> LabPaths:
        return cls(home() / "labs" / name)

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        return self.root / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def host_dir(self, host: str) -> Path:
        return self.root / "hosts" / host


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


def leftovers(name: str) -> list[str]:
    """Everything of lab `name` that exists on this machine (namespaces, cgroups, files)."""
    found = [f"netns {ns}" for ns in system.netns_list() if ns.startswith(f"wnl-{name}-")]
    found += [f"cgroup {cg}" for cg in system.lab_cgroups(name, controllers=True) if cg.exists()]
    paths = LabPaths.of(name)
    if paths.root.exists():
        found.append(f"dir {paths.root}")
    return found


def status(name: str, *, probe_systemd: bool = True) -> LabStatus:
    validate_lab_name(name)
    paths = LabPaths.of(name)
    state = _load_state(paths)
    if state is None:
        return LabStatus(name=name, up=False, spec=None, leftovers=leftovers(name), paths=paths)
    spec = make_spec(name, int(state["hosts"]))
    hosts = []
    for host in spec.hosts:
        cgroups = system.lab_cgroups(name, host.name)
        pids = system.cgroup_pids(cgroups[0])
        pid1 = system.ns_pid_one(pids)
        state_text = "down"
        if pid1 is not None:
            state_text = _system_state(pid1) if probe_systemd else "up"
        hosts.append(
            HostStatus(
                name=host.name,
                address=str(host.address),
                netns=host.netns,
                pid1=pid1,
                system_state=state_text,
                pss_mib=system.pss_kib(pids) / 1024,
            )
        )
    up = all(h.pid1 is not None for h in hosts)
    return LabStatus(name=name, up=up, spec=spec, hosts=hosts, paths=paths)


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


def up(name: str, count: int, progress: Progress, kubernetes: bool = False) -> LabStatus:
    spec = make_spec(name, count)  # bad input fails here, before anything is touched
    system.require_root()
    system.require_tools(TOOLS)
    system.cgroup_hierarchies()
    with _lock(name):
        current = status(name, probe_systemd=False)
        if current.up and current.spec is not None:
            if len(current.spec.hosts) == count and is_kubernetes(name) == kubernetes:
                progress.note(f"lab {name!r} is already up with {count} hosts: reusing it")
                return current
            raise LabError(
                f"lab {name!r} is already up with {len(current.spec.hosts)} hosts"
                f"{' as a Kubernetes cluster' if is_kubernetes(name) else ''}, not {count}"
                f"{' as a Kubernetes cluster' if kubernetes else ''}: "
                f"run `weave-node lab down{_name_flag(name)}` first"
            )
        if current.leftovers or current.spec is not None:
            with progress.step("cleaning up what an earlier lab left behind") as step:
                step.update(", ".join(current.leftovers) or "stale state")
                _teardown(name)
        try:
            _bring_up(spec, progress, kubernetes)
        except BaseException:
            kept = _keep_console_logs(spec)
            progress.note(f"lab up failed: removing everything it created (console logs kept in {kept})")
            _teardown(name)
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
        host_keys = _prepare_files(spec, paths)
        step.update(f"{len(spec.hosts)} hosts, per-host SSH host keys")
        if prepared is not None:
            admin = bringup.write_host_files(spec, lambda host: paths.host_dir(host) / "upper")
            system.write_atomic(paths.root / "kubeconfig", admin.decode(), mode=0o600)
            step.update("certificates, kubeconfigs and units of a Kubernetes cluster (control plane on node1)")
    with progress.step("network namespaces and underlay bridge") as step:
        _make_network(spec)
        step.update(f"{spec.underlay_netns}: br0 {UNDERLAY_GATEWAY}/{UNDERLAY_NET.prefixlen}")
    with progress.step(f"booting {len(spec.hosts)} hosts (systemd-nspawn -b)") as step:
        for host in spec.hosts:
            _boot(spec, host, rootfs, paths, prepared.nspawn_args if prepared else ())
        step.update("systemd is PID 1 in each")
    with progress.step("waiting for sshd on every host") as step:
        _wait_ssh(spec, paths, step.update)
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
        "created": time.time(),
        "kubernetes": prepared is not None,
        "kubernetes_bin": str(prepared.bin_dir) if prepared else None,
    }
    system.write_atomic(paths.state, json.dumps(state, indent=2) + "\n")


def _keygen(path: Path, comment: str) -> str:
    system.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_suffix(".pub").read_text().strip()


def _prepare_files(spec: LabSpec, paths: LabPaths) -> dict[str, str]:
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


def _make_network(spec: LabSpec) -> None:
    under = spec.underlay_netns
    root_cmds = [f"netns add {under}"] + [f"netns add {h.netns}" for h in spec.hosts]
    root_cmds += [
        f"link add {h.underlay_port} netns {under} type veth peer name eth0 netns {h.netns}" for h in spec.hosts
    ]
    system.ip_batch(None, root_cmds)
    prefix = UNDERLAY_NET.prefixlen
    under_cmds = [
        "link set lo up",
        "link add br0 type bridge",
        f"addr add {UNDERLAY_GATEWAY}/{prefix} dev br0",
        "link set br0 up",
    ]
    under_cmds += [f"link set {h.underlay_port} master br0 up" for h in spec.hosts]
    system.ip_batch(under, under_cmds)
    for h in spec.hosts:
        system.ip_batch(
            h.netns,
            [
                "link set lo up",
                f"addr add {h.address}/{prefix} dev eth0",
                "link set eth0 up",
                f"route add default via {UNDERLAY_GATEWAY}",
            ],
        )


def _boot(spec: LabSpec, host: HostSpec, rootfs: Path, paths: LabPaths, extra: tuple[str, ...] = ()) -> None:
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
    with open(host_dir / "console.log", "wb") as log:
        subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: system.enter_cgroups(cgroups),  # noqa: PLW1509 - single-threaded here
        )


def failure_logs_dir(name: str) -> Path:
    return home() / "failed" / name


def _keep_console_logs(spec: LabSpec) -> Path:
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


def _wait_ssh(spec: LabSpec, paths: LabPaths, report: Any) -> None:
    pending = {h.name: h for h in spec.hosts}
    deadline = time.monotonic() + BOOT_TIMEOUT
    while pending:
        for name, host in list(pending.items()):
            if system.ssh_banner(spec.underlay_netns, str(host.address), timeout=0.3):
                del pending[name]
                continue
            if not system.cgroup_pids(system.lab_cgroups(spec.name, name)[0]):
                raise LabError(
                    f"{name} stopped while booting: {_console_tail(paths, name)} "
                    f"(console logs: {failure_logs_dir(spec.name)})"
                )
        report(f"{len(spec.hosts) - len(pending)}/{len(spec.hosts)} ready")
        if pending and time.monotonic() > deadline:
            names = ", ".join(sorted(pending))
            raise LabError(
                f"sshd did not answer within {BOOT_TIMEOUT:g} s on {names} "
                f"(console logs: {failure_logs_dir(spec.name)})"
            )
        if pending:
            time.sleep(0.05)


def down(name: str, progress: Progress) -> bool:
    """Remove lab `name` and everything it left. Returns False when there was nothing to remove."""
    validate_lab_name(name)
    system.require_root()
    with _lock(name):
        found = leftovers(name)
        if not found:
            return False
        with progress.step(f"stopping lab {name!r}") as step:
            _teardown(name)
            step.update(f"removed {len(found)} namespaces/cgroups/dirs")
    return True


def _teardown(name: str) -> None:
    """Stop every host, then delete cgroups, namespaces and files. Safe to call on any partial state."""
    _close_ssh_masters(LabPaths.of(name).root / "ssh-control")
    system.stop_pods(name)  # containers first: a host halting with pods waits ~90 s for them
    cgroups = system.lab_cgroups(name, controllers=True)
    system.kill_tree(cgroups, grace=8.0)
    for cg in cgroups:
        system.remove_cgroup_tree(cg)
        with contextlib.suppress(OSError):  # the shared parent goes when the last lab goes
            cg.parent.rmdir()
    namespaces = [ns for ns in system.netns_list() if ns.startswith(f"wnl-{name}-")]
    for ns in sorted(namespaces, key=lambda n: n.endswith("-u")):  # hosts first, the underlay last
        system.netns_delete(ns)
    _remove_nspawn_runtime_dirs(name)
    paths = LabPaths.of(name)
    if paths.root.exists():
        shutil.rmtree(paths.root)
    still = leftovers(name)
    if still:
        raise LabError(f"could not remove: {', '.join(still)}")


def _close_ssh_masters(directory: Path) -> None:
    """Ansible keeps an SSH connection per host open (ControlPersist) in the lab's own control directory
    (inventory/lab.py): close them, so no master (and its ProxyCommand in the underlay) outlives the lab."""
    if not directory.is_dir():
        return
    for socket_path in directory.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "lab"],
            capture_output=True,
            timeout=10,
            check=False,
        )


def _remove_nspawn_runtime_dirs(name: str) -> None:
    """nspawn leaves /run/systemd/nspawn/propagate/<machine> when /run is not a tmpfs (as on these VMs)."""
    base = Path("/run/systemd/nspawn")
    for sub in ("propagate", "unix-export"):
        d = base / sub
        if d.is_dir():
            for entry in d.iterdir():
                if entry.name.startswith(f"wnl-{name}-") and not os.path.ismount(entry):
                    shutil.rmtree(entry, ignore_errors=True)


def require_up(name: str) -> tuple[LabSpec, LabPaths]:
    """The spec and paths of a lab that came up; a one-line error otherwise."""
    validate_lab_name(name)
    paths = LabPaths.of(name)
    state = _load_state(paths)
    if state is None:
        raise LabError(f"lab {name!r} is not up: run `weave-node lab up{_name_flag(name)}`")
    return make_spec(name, int(state["hosts"])), paths


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
