"""Packaged pyinfra deploys that roll weave-node out onto bare hosts. Compose them in your own deploy files, or run
them all: `pyinfra inventory/<yours>.py weave_node_deploy.rollout` (a checkout: deploys/weave_node.py).

Every step is a pyinfra operation that reports a change only when something changed; a second run changes
nothing. Data (host/group data, see DEFAULTS) is validated for every host before any host is touched.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.api.facts import FactBase
from pyinfra.facts.files import File
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from weave_node_deploy import host_files, host_state, manifest, runtime, validate, versions, wheelhouse
from weave_node_deploy.host_files import Entry
from weave_node_deploy.settings import MODULES, PACKAGES, effective
from weave_node_deploy.tasks.removal import removal, removal_settings, remove  # noqa: F401 - composable here too

MANIFEST = "/etc/weave-node/weave-node.yaml"
PASSWORD, PREVIOUS_PASSWORD, MESH_ENV = host_files.PASSWORD, host_files.PREVIOUS_PASSWORD, host_files.MESH_ENV
_built: dict[str, Path] = {}
logger = logging.getLogger("pyinfra")


def settings() -> dict[str, Any]:
    """This host's data with the defaults filled in, validated against the whole inventory."""
    try:
        return effective(host.name, host.data.dict(), [(h.name, h.data.dict()) for h in inventory])
    except validate.InvalidData as exc:
        raise DeployError(f"invalid weave-node settings: {exc}") from None


def _wheelhouse(data: dict[str, Any]) -> Path:
    if data["weave_wheelhouse"]:
        return Path(data["weave_wheelhouse"])
    if "dir" not in _built:  # once per run, on the control machine
        try:
            _built["dir"] = wheelhouse.build()
        except (OSError, RuntimeError, ValueError) as exc:  # a deploy's error, not pyinfra's "internal exception"
            raise DeployError(f"the wheelhouse: {exc}") from None
    return _built["dir"]


class HostState(FactBase[list[str]]):  # type: ignore[misc]  # (pyinfra is untyped here)
    """The lines of one host_state.script: everything a run checks on a bare host, in one round trip."""

    def command(self, script: str) -> str:
        return script

    def process(self, output: list[str]) -> list[str]:
        return output


def _checks(data: dict[str, Any] | None) -> dict[str, str]:
    modules = " ".join(f"[ -d {shlex.quote(probe)} ] || printf '%s ' {module};" for module, probe in MODULES)
    checks = {
        "packages": "dpkg-query -W -f='${db:Status-Abbrev}|' " + " ".join(PACKAGES),
        "modules": f"[ -e /proc/modules ] && {{ {modules} echo; }}",
        "ip_forward": "cat /proc/sys/net/ipv4/ip_forward",
    }
    if data is not None:
        prefix = data["weave_prefix"]
        checks["version"] = versions.command(prefix)
        checks["plugin"] = host_files.plugin_check(prefix, data["weave_cni_bin_dir"])
        checks["active"] = "systemctl is-active weave-node.service"
        checks["enabled"] = "systemctl is-enabled weave-node.service"
    return checks


def look(data: dict[str, Any] | None = None) -> host_state.State:
    """One look at this host (host_state.py): the prerequisites' state, and with `data` everything the rollout
    of the router manages. The steps below plan an operation only for what differs."""
    paths, checks = look_inputs(data)
    out = host.get_fact(HostState, script=host_state.script(paths, checks))
    return host_state.parse(out or [], paths, checks)


def look_inputs(data: dict[str, Any] | None) -> tuple[list[str], dict[str, str]]:
    """What look() asks about: the paths (the router's marker last) and the checks."""
    entries = host_files.prerequisites()
    if data is not None:
        entries = [*host_files.configuration(data), *host_files.cni(data)]
    paths = [e.path for e in entries]
    if data is not None:
        paths.append(f"{data['weave_prefix']}/venv/{runtime.MARKER}")
    return paths, _checks(data)


def _covering(state: host_state.State | None, data: dict[str, Any]) -> host_state.State:
    """`state` if it is a look with `data` (it answered the version), else a new one: a look without data (the
    prerequisites') knows nothing of the router, and an unknown must never read as up to date."""
    return state if state is not None and "version" in state.checks else look(data)


def _sha1(content: bytes) -> str:
    return hashlib.sha1(content).hexdigest()  # noqa: S324 - a checksum


def _put(state: host_state.State, name: str, content: str, dest: str, mode: int = 0o644) -> Any:
    """files.put of rendered text, planned only when the host's file differs. The operation or None."""
    if host_state.satisfied(Entry(dest, "file", mode=mode), state.paths.get(dest), _sha1(content.encode())):
        return None
    return files.put(name=name, src=io.StringIO(content), dest=dest, mode=f"{mode:o}")


def _directory(state: host_state.State, name: str, path: str) -> None:
    if not host_state.satisfied(Entry(path, "directory", mode=0o755), state.paths.get(path)):
        files.directory(name=name, path=path, mode="755")


def _absent(state: host_state.State, name: str, path: str) -> Any:
    if host_state.satisfied(Entry(path, "absent"), state.paths.get(path)):
        return None
    return files.file(name=name, path=path, present=False)


@deploy("weave-node: node prerequisites")
def prerequisites(state: host_state.State | None = None) -> None:
    state = state or look()
    packages = state.checks.get("packages", "")
    if packages.count("ii ") != len(PACKAGES):
        apt.packages(name="Packages a node needs (installed only when missing)", packages=PACKAGES)
    # Without /proc/modules (a container, or a kernel without loadable modules) nothing can be loaded here: the
    # router then reports what its kernel lacks. Otherwise load what is neither loaded nor built in.
    missing = state.checks.get("modules")  # (not answered: every module, and modprobe decides)
    for module in [m for m, _ in MODULES] if missing is None else missing.split():
        server.modprobe(name=f"Kernel module {module}", module=module)
    modules_load, sysctl = host_files.prerequisites()
    _put(state, "Kernel modules loaded at boot", modules_load.content, modules_load.path)
    _put(state, "IPv4 forwarding at boot (our own drop-in)", sysctl.content, sysctl.path)
    if state.checks.get("ip_forward") != "1":
        server.sysctl(name="IPv4 forwarding", key="net.ipv4.ip_forward", value=1)


def _runtime(wheels: Path) -> Path:
    try:  # on the control machine; cached on disk by what goes in
        return runtime.build(wheels)
    except (OSError, RuntimeError, ValueError) as exc:
        raise DeployError(f"the runtime archive: {exc}") from None


@deploy("weave-node: the router, installed offline from one archive")
def router(data: dict[str, Any], state: host_state.State | None = None) -> Any:
    """Installed means <prefix>/venv/.weave-node-wheels is the wheelhouse's SHA256SUMS: then nothing is pushed.
    Otherwise one upload (the runtime archive) and one script that checks it, unpacks it into a new venv and
    swaps that in whole. Returns the install operation, or None when it was up to date."""
    state = _covering(state, data)
    wheels = _wheelhouse(data)
    prefix = data["weave_prefix"]
    running = state.checks.get("version")
    refused = versions.downgrade(host.name, running, wheelhouse.our_wheel(wheels).name, data["weave_allow_downgrade"])
    if refused:
        raise DeployError(refused)
    sums = (wheels / "SHA256SUMS").read_bytes()
    marker = f"{prefix}/venv/{runtime.MARKER}"
    if host_state.file_sha1(state.paths.get(marker)) == _sha1(sums):
        return None
    archive = _runtime(wheels)
    files.directory(name="Installation directory", path=prefix, mode="755")
    name = "Runtime archive (the router and its dependencies, one file)"
    files.put(name=name, src=str(archive), dest=f"{prefix}/{runtime.ARCHIVE}", mode="600")
    return server.shell(
        name="Install weave-node (checksum verified, unpacked into a new venv, swapped in whole)",
        commands=[runtime.install_script(prefix, runtime.sha256(archive))],
    )


def _secret(state: host_state.State, name: str, src: str, dest: str) -> Any:
    # files.put uploads into the file and only then sets its mode: a new file would hold the password with the
    # SFTP server's default mode (0644) until the chmod. Create it empty and 0600 first; an upload into a file
    # that exists keeps its mode. Nothing is planned once the file holds it, 0600, root's.
    try:
        wanted = _sha1(Path(src).read_bytes())
    except OSError:
        wanted = None  # files.put says what is wrong with it
    if host_state.satisfied(Entry(dest, "file", mode=0o600), state.paths.get(dest), wanted, owner=(0, 0)):
        return None
    files.file(
        name=f"{name} file (empty, mode 0600, root, before the password goes in)",
        path=dest,
        mode="600",
        user="root",
        group="root",
    )
    return files.put(name=f"{name} (mode 0600, root)", src=src, dest=dest, mode="600", user="root", group="root")


@dataclass(frozen=True)
class Changes:
    """What the configuration step changed: `restart` needs a restart of the router, `live` only a reload. Only
    the operations planned (a file that already held its content plans none)."""

    restart: list[Any]
    live: list[Any]


@deploy("weave-node: configuration")
def config(data: dict[str, Any], state: host_state.State | None = None) -> Changes:
    state = _covering(state, data)
    _directory(state, "Configuration directory", host_files.CONF_DIR)
    live = []
    if data["weave_password_file"]:
        live.append(_secret(state, "Password", str(data["weave_password_file"]), PASSWORD))
    if data["weave_previous_password_file"]:
        live.append(_secret(state, "Previous password", str(data["weave_previous_password_file"]), PREVIOUS_PASSWORD))
    env = _put(state, "Router settings", host_files.router_env(data), host_files.ENV)
    live.append(_put(state, "Peers (applied without a restart)", host_files.mesh_env(data), MESH_ENV))
    if not data["weave_previous_password_file"]:
        live.append(_absent(state, "No previous password (rotation done)", PREVIOUS_PASSWORD))
    if not data["weave_password_file"]:  # (encryption turned off: the env file no longer names it)
        _absent(state, "No password (encryption off)", PASSWORD)
    return Changes(restart=[op for op in (env,) if op], live=[op for op in live if op])


@deploy("weave-node: the service")
def service(data: dict[str, Any], installed: Any, changes: Changes, state: host_state.State | None = None) -> None:
    state = _covering(state, data)
    unit = _put(state, "Unit file", host_files.unit(data), host_files.UNIT)
    if unit:
        systemd.daemon_reload(name="Reload systemd (unit changed)", _if=unit.did_change)
    started = None
    if state.checks.get("active") != "active":
        started = systemd.service(name="Running", service="weave-node.service", running=True)
    if state.checks.get("enabled") != "enabled":
        systemd.service(name="Enabled at boot", service="weave-node.service", enabled=True)
    restart_on = [op for op in (unit, installed, *changes.restart) if op]
    restart = None
    if restart_on:
        restart = systemd.service(
            name="Restart (unit, settings or version changed)",
            service="weave-node.service",
            restarted=True,
            _if=any_changed(*restart_on),
        )
    # Peers and passwords reach a running router without a restart (no other router restarts when a host joins).
    reload = None
    if changes.live:
        reload = systemd.service(
            name="Reload (peers or passwords changed: applied live)",
            service="weave-node.service",
            reloaded=True,
            _if=lambda: (
                any_changed(*changes.live)()
                and not (restart_on and any_changed(*restart_on)())
                and not (started is not None and started.did_change())
            ),
        )
    gate_on = [op for op in (started, restart, reload, unit, installed, *changes.restart, *changes.live) if op]
    if gate_on:
        server.shell(
            name="Health gate: the router answers, sees its peers, IPAM is ready, the bridge has its address",
            commands=[
                f"{data['weave_prefix']}/venv/bin/weave-node status --wait {data['weave_health_timeout']}"
                f" --peers {len(data['weave_peers'])}"
            ],
            _if=any_changed(*gate_on),
        )


@deploy("weave-node: CNI")
def cni(data: dict[str, Any], installed: Any = None, state: host_state.State | None = None) -> None:
    """The plugin is written by the installed router's own installer (`weave-node install-cni-plugin`, the one the
    Ansible role and the DaemonSet use too): the plugin always matches the router's version. It runs only when the
    host's plugin differs from what that installer would write, or the router was just (re)installed."""
    state = _covering(state, data)
    bin_dir, conf_dir = data["weave_cni_bin_dir"], data["weave_cni_conf_dir"]
    _directory(state, "CNI plugin directory", bin_dir)
    _directory(state, "CNI configuration directory", conf_dir)
    install = f"{data['weave_prefix']}/venv/bin/weave-node install-cni-plugin --dir {bin_dir}"
    # Decided at plan time where it can be (so a dry run of an up-to-date host plans nothing): a plugin that differs
    # (or no router yet to ask) is written; an up-to-date one only if this run (re)installs the router.
    label = "weave-net plugin (by the installed router's installer)"
    if state.checks.get("plugin") != "yes":
        server.shell(name=label, commands=[install])
    elif installed is not None:
        server.shell(name=label, commands=[install], _if=installed.did_change)
    for name in host_files.STANDARD_PLUGINS:
        path, target = f"{bin_dir}/{name}", f"{host_files.DEBIAN_PLUGINS}/{name}"
        if not host_state.satisfied(Entry(path, "link", target=target), state.paths.get(path)):
            files.link(name=f"{name} plugin (Debian's)", path=path, target=target)
    text = host_files.conflist(data)
    _atomic_put(state, "Network configuration list", text, f"{conf_dir}/{host_files.CONFLIST}", 0o644)


def _atomic_put(state: host_state.State, name: str, content: str, dest: str, mode: int) -> None:
    """A runtime reads these files at any moment: write a temp file beside it, then rename. Only when the file on
    the host differs (so a second run changes nothing, and a changed or deleted file is repaired)."""
    if host_state.satisfied(Entry(dest, "file", mode=mode), state.paths.get(dest), _sha1(content.encode())):
        return
    staged = f"{dest}.weave-new"
    files.put(name=f"{name} (staged)", src=io.StringIO(content), dest=staged, mode=f"{mode:o}")
    server.shell(name=f"{name} (renamed into place)", commands=[f"mv -f {staged} {dest}"])


@deploy("weave-node: Kubernetes DaemonSet")
def kubernetes(data: dict[str, Any]) -> None:
    """weave_kubernetes: the router runs as the DaemonSet (no systemd service on the nodes). On the host with
    weave_kube_control_plane: apply the manifest once the API server answers /readyz (otherwise say so and skip),
    then the health gate: every weave-node pod Ready, or the run fails naming each pod that is not and why.
    The manifest is validated against the Kubernetes schemas before anything is applied."""
    if not data["weave_kubernetes"] or not data["weave_kube_control_plane"]:
        return
    try:
        text = manifest.from_settings(data)
    except manifest.InvalidManifest as exc:
        raise DeployError(f"the weave-node manifest is invalid: {exc}") from None
    ready = host.get_fact(Command, command="kubectl get --raw=/readyz 2>/dev/null || true")
    if (ready or "").strip() != "ok":
        logger.warning(
            "%s: the Kubernetes API server does not answer /readyz: skipping the DaemonSet "
            "(run the deploy again once the cluster is up)",
            host.name,
        )
        return
    files.directory(name="Configuration directory", path="/etc/weave-node", mode="755")
    files.put(name="Manifest", src=io.StringIO(text), dest=MANIFEST, mode="600")
    # Applied when what the cluster runs differs from it (not when the file changed: an apply that failed, or a
    # DaemonSet deleted by hand, is applied again by the next run); gated whenever it was applied or is not
    # fully rolled out and Ready (a gate that failed fails again on the next run until the pods are Ready).
    live = (host.get_fact(Command, command=manifest.LIVE_STATE) or "").split()
    current = live[:1] == [manifest.config_hash(text)]
    if current and manifest.rolled_out(live[1:]):
        return
    timeout = manifest.gate_timeout(data)
    if not current:
        server.shell(name="kubectl apply", commands=[f"kubectl apply -f {MANIFEST}"])
    server.shell(
        name="Health gate: a weave-node pod Ready on every node",
        commands=[manifest.health_gate(timeout)],
    )


@deploy("weave-node: a node of the DaemonSet")
def daemonset_node(data: dict[str, Any]) -> None:
    """With weave_kubernetes: the standard CNI plugins the conflist names, in the CNI bin directory (as kubeadm's
    kubernetes-cni gives them), and no router service of ours beside the DaemonSet's (a host rolled out the
    systemd way before: its service is stopped and disabled; the state directory stays, so the pod takes over
    the router's identity, its IPAM state and the kernel datapath)."""
    bin_dir = data["weave_cni_bin_dir"]
    files.directory(name="CNI plugin directory", path=bin_dir, mode="755")
    for name in host_files.STANDARD_PLUGINS:
        if not host.get_fact(File, path=f"{bin_dir}/{name}"):
            target = f"{host_files.DEBIAN_PLUGINS}/{name}"
            files.link(name=f"{name} plugin (Debian's)", path=f"{bin_dir}/{name}", target=target)
    if host.get_fact(File, path="/etc/systemd/system/weave-node.service"):
        systemd.service(
            name="The router's systemd service stopped and disabled (the DaemonSet runs the router)",
            service="weave-node.service",
            running=False,
            enabled=False,
        )


def rollout() -> None:
    """Everything, in order: what `deploys/weave_node.py` runs. With weave_kubernetes the router runs as the
    DaemonSet, which installs the CNI plugin and configuration itself: the nodes get only the prerequisites."""
    data = settings()
    if data["weave_kubernetes"]:
        prerequisites()
        daemonset_node(data)
        kubernetes(data)
        return
    state = look(data)  # one round trip; each step plans only what differs
    prerequisites(state)
    install = router(data, state)
    changes = config(data, state)
    service(data, install, changes, state)
    cni(data, install, state)
