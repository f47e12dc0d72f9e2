"""The packaged deploy that takes weave-node away from bare hosts (`pyinfra inventory.py weave_node_deploy.removal`;
tasks/weave_node.py re-exports it beside the rollout's steps)."""

from __future__ import annotations

import logging
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import File, Link
from pyinfra.facts.server import Command
from pyinfra.operations import files, python, server, systemd

from weave_node_deploy import handover, host_files, validate
from weave_node_deploy.settings import DEFAULTS, SYSCTL_FILE, ours, typed

logger = logging.getLogger("pyinfra")


def removal_settings() -> dict[str, Any]:
    """This host's data for the removal, with defaults and types; what the removal uses is checked (a bad value
    stops the run before any host is touched), the rest is not: a host must stay removable."""
    data = typed({**DEFAULTS, "weave_remove_state": False, **ours(host.data.dict())})
    try:
        validate.check_removal(host.name, data)
    except validate.InvalidData as exc:
        raise DeployError(f"invalid weave-node settings: {exc}") from None
    return data


def removal() -> None:
    """`remove`, with weave_remove_state from the host's data (`pyinfra inventory.py weave_node_deploy.removal
    --data weave_remove_state=true`)."""
    remove(remove_state=removal_settings()["weave_remove_state"])


def _report_handover(op: Any, reclaim_after: float) -> None:
    """python.call, after the hand-over's shell step: say what it did, or warn with what to do (never fails)."""
    result = handover.outcome(op.stdout if op.is_complete() else "", reclaim_after)
    if result.ok:
        host.log_styled(f"IPAM hand-over: {result.message}", log_func=logger.info)
    else:
        host.log_styled(f"WARNING: {result.message}", fg="yellow", log_func=logger.warning)


@deploy("weave-node: removal")
def remove(remove_state: bool = False) -> None:
    """Everything the rollout installed goes: the service, its files, the CNI plugin and conflist, the bridge,
    the VXLAN device and our iptables chains. The IPAM state (<state dir>) only with remove_state=True, and then
    the router first hands its address space to a peer (handover.py; a failure warns, the removal goes on).
    Idempotent: a second run changes nothing."""
    data = removal_settings()
    prefix, state_dir = data["weave_prefix"], data["weave_state_dir"]
    bin_dir, conf_dir = data["weave_cni_bin_dir"], data["weave_cni_conf_dir"]
    unit_path = "/etc/systemd/system/weave-node.service"
    if host.get_fact(File, path=unit_path):
        if remove_state:
            # The identity goes with the state: its space goes to a peer first (a stopped router is started).
            step = server.shell(
                name="IPAM: hand this host's address space to a peer (the state goes)",
                commands=[handover.script(prefix, state_dir, data["weave_health_timeout"])],
            )
            python.call(
                name="IPAM: what the hand-over did",
                function=_report_handover,
                op=step,
                reclaim_after=data["weave_ipam_reclaim_after"],
            )
        # Planned now but decided when it runs: the router the hand-over started is stopped too.
        systemd.service(name="Stop and disable the router", service="weave-node.service", running=False, enabled=False)
    kernel_state = host.get_fact(
        Command,
        command="{ ip -o link show weave; iptables-save 2>/dev/null | grep -m1 WEAVE-NODE; } 2>/dev/null || true",
    )
    if (kernel_state or "").strip() and host.get_fact(File, path=f"{prefix}/venv/bin/weave-node"):
        server.shell(
            name="Remove the bridge, the VXLAN device and our iptables chains",
            commands=[f"{prefix}/venv/bin/weave-node reset --force"],
        )
    unit = files.file(name="Unit file", path=unit_path, present=False)
    systemd.daemon_reload(name="Reload systemd (unit removed)", _if=unit.did_change)
    # The drop-in goes; forwarding stays on until the next boot (other software on the host may rely on it).
    for path in (
        f"{bin_dir}/weave-net",
        f"{conf_dir}/{host_files.CONFLIST}",
        host_files.MODULES_LOAD,
        SYSCTL_FILE,
    ):
        files.file(name=f"Remove {path}", path=path, present=False)
    for name in host_files.STANDARD_PLUGINS:
        # Only the link the rollout made: a plugin binary there (or a link elsewhere) is someone else's and stays.
        link = host.get_fact(Link, path=f"{bin_dir}/{name}")
        if link and link.get("link_target") == f"{host_files.DEBIAN_PLUGINS}/{name}":
            files.link(name=f"Remove {bin_dir}/{name}", path=f"{bin_dir}/{name}", present=False)
    files.directory(name="Remove the installation", path=prefix, present=False)
    files.directory(name="Remove the configuration (and the password)", path="/etc/weave-node", present=False)
    if remove_state:
        files.directory(name="Remove the IPAM state", path=state_dir, present=False)
