"""What the systemd rollout writes on a bare host, rendered on the control machine from the effective settings: each
file's bytes and mode, the directories, Debian's plugin links, and the files that must be gone. Both engines write
these bytes (pyinfra's deploys render the same templates the same way: tests/deploy, tests/lab/test_ansible.py);
the Ansible role writes a whole set in one module run (roles/weave_node/library/weave_node_files.py). No
weave_node import, and nothing heavier than Jinja2: Ansible's workers import it for every host."""

from __future__ import annotations

import functools
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2

from weave_node_deploy.facts import STATUS_SOCKET
from weave_node_deploy.paths import TEMPLATES
from weave_node_deploy.settings import MODULES, SYSCTL_FILE, SYSCTL_TEXT

CONF_DIR = "/etc/weave-node"
ENV = f"{CONF_DIR}/weave-node.env"
MESH_ENV = f"{CONF_DIR}/mesh.env"
PASSWORD = f"{CONF_DIR}/password"
PREVIOUS_PASSWORD = f"{CONF_DIR}/password.previous"
UNIT = "/etc/systemd/system/weave-node.service"
MODULES_LOAD = "/etc/modules-load.d/weave-node.conf"
STANDARD_PLUGINS = ("loopback", "portmap", "bandwidth")  # Debian's, linked into the CNI bin directory
DEBIAN_PLUGINS = "/usr/lib/cni"
CONFLIST = "10-weave.conflist"  # in the CNI configuration directory

# What a change to a file needs of the running router (the Ansible role's restart and reload decisions).
RESTART, RELOAD, DAEMON_RELOAD = "restart", "reload", "daemon-reload"


@dataclass(frozen=True)
class Entry:
    """One thing on the host. `state`: file (content, mode), directory (mode), link (target), absent. `source`: a
    secret's file on the control machine (read only by the writer, never rendered or logged); `needs`: what a
    change to it needs of the running router (RESTART, RELOAD, DAEMON_RELOAD), or nothing."""

    path: str
    state: str
    content: str = ""
    mode: int = 0o644
    target: str = ""
    source: str = ""
    needs: tuple[str, ...] = ()


@functools.cache
def env() -> jinja2.Environment:
    """Our templates with pyinfra's settings (pyinfra.api.util.get_template): the same bytes from either engine.
    One per process: it keeps the parsed templates (an Ansible worker renders several per host)."""
    return jinja2.Environment(  # noqa: S701 - configuration files, not HTML
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )


def render(template: str, **values: Any) -> str:
    return env().get_template(template).render(**values)


def conflist(data: Mapping[str, Any]) -> str:
    """The network configuration list: what the systemd rollout writes to the CNI configuration directory and what
    the DaemonSet's init container installs (one template, both paths)."""
    text = render(
        f"{CONFLIST}.j2",
        cni_version=data["weave_cni_version"],
        hairpin_mode=data["weave_hairpin"],
        bandwidth=data["weave_bandwidth"],
        pending_dir=f"{data['weave_state_dir']}/cni-pending",
        status_socket=STATUS_SOCKET,
    )
    return text.rstrip("\n") + "\n"


def router_env(data: Mapping[str, Any]) -> str:
    return render(
        "weave-node/weave-node.env.j2",
        ipalloc_range=data["weave_ipalloc_range"],
        ipalloc_init=data["weave_ipalloc_init"],
        ipam_reclaim_after=data["weave_ipam_reclaim_after"],
        ipam_reclaim_replaced=data["weave_ipam_reclaim_replaced"],
        conn_limit=data["weave_conn_limit"],
        mtu=data["weave_mtu"],
        bridge_netfilter=data["weave_bridge_netfilter"],
        direct=data["weave_direct"],
        dns=data["weave_dns"],
        dns_domain=data["weave_dns_domain"],
        dns_upstreams=data["weave_dns_upstreams"],
        password_file=PASSWORD if data["weave_password_file"] else "",
        encryption=data.get("weave_encryption", "auto"),
        esp_rekey=data.get("weave_esp_rekey", 3600),
        state_dir=data["weave_state_dir"],
        metrics_addr=data["weave_metrics_addr"],
        status_socket=STATUS_SOCKET,
    )


def mesh_env(data: Mapping[str, Any]) -> str:
    return render(
        "weave-node/mesh.env.j2",
        peers=data["weave_peers"],
        previous_password_file=PREVIOUS_PASSWORD if data["weave_previous_password_file"] else "",
        accept_unencrypted=data["weave_accept_unencrypted"],
    )


def unit(data: Mapping[str, Any]) -> str:
    return render("weave-node/weave-node.service.j2", prefix=data["weave_prefix"], state_dir=data["weave_state_dir"])


def prerequisites() -> list[Entry]:
    """The node's boot-time settings: our kernel modules and IPv4 forwarding (drop-ins of our own)."""
    return [
        Entry(MODULES_LOAD, "file", "".join(f"{m}\n" for m, _ in MODULES)),
        Entry(SYSCTL_FILE, "file", SYSCTL_TEXT),
    ]


def configuration(data: Mapping[str, Any]) -> list[Entry]:
    """The router's configuration and unit, in the order they are written (after the node's boot-time drop-ins:
    one write for both on a bare host). A password is written from its file on the control machine into a file that
    is 0600 from its creation; without one, the file is gone."""
    entries = [*prerequisites(), Entry(CONF_DIR, "directory", mode=0o755)]
    for setting, path in (("weave_password_file", PASSWORD), ("weave_previous_password_file", PREVIOUS_PASSWORD)):
        if data[setting]:
            entries.append(Entry(path, "file", mode=0o600, source=str(data[setting]), needs=(RELOAD,)))
    entries += [
        Entry(ENV, "file", router_env(data), needs=(RESTART,)),
        Entry(MESH_ENV, "file", mesh_env(data), needs=(RELOAD,)),
    ]
    # After mesh.env stops naming it (a router restarted in between would not find it); the password's absence
    # goes with the env file's change (a restart).
    if not data["weave_previous_password_file"]:
        entries.append(Entry(PREVIOUS_PASSWORD, "absent", needs=(RELOAD,)))
    if not data["weave_password_file"]:
        entries.append(Entry(PASSWORD, "absent"))
    entries.append(Entry(UNIT, "file", unit(data), needs=(DAEMON_RELOAD, RESTART)))
    return entries


def cni(data: Mapping[str, Any]) -> list[Entry]:
    """The CNI directories, Debian's standard plugins linked in, and the network configuration list (last: a
    runtime that finds it finds the plugins it names)."""
    bin_dir, conf_dir = str(data["weave_cni_bin_dir"]), str(data["weave_cni_conf_dir"])
    return [
        Entry(bin_dir, "directory", mode=0o755),
        Entry(conf_dir, "directory", mode=0o755),
        *(Entry(f"{bin_dir}/{p}", "link", target=f"{DEBIAN_PLUGINS}/{p}") for p in STANDARD_PLUGINS),
        Entry(f"{conf_dir}/{CONFLIST}", "file", conflist(data)),
    ]


PLUGIN = "weave-net"
PACKAGED_PLUGIN = "weave_node/cni/bin/weave-net-linux-*"  # in the venv's site-packages (weave_node/cni/gobuild.py)


def plugin_check(prefix: str, bin_dir: str) -> str:
    """A shell command that prints `yes` when the host's weave-net plugin is the installed router's (the binary its
    wheel carries, mode 0755, through a link as the installer follows one: what `weave-node install-cni-plugin
    --check` checks), `no` otherwise; no Python start (a 20-host re-run pays one per host otherwise). The wheel
    carries one binary, for the machine it was built for (the install script refuses another)."""
    packaged = f"{shlex.quote(prefix)}/venv/lib/python3*/site-packages/{PACKAGED_PLUGIN}"
    plugin = shlex.quote(f"{bin_dir}/{PLUGIN}")
    return (
        f"p=$(ls -d {packaged} 2>/dev/null | head -n 1); "
        f'if [ -n "$p" ] && [ "$(stat -L -c %a {plugin} 2>/dev/null)" = 755 ] && cmp -s "$p" {plugin}; '
        "then echo yes; else echo no; fi"
    )


SETS = {"prerequisites": lambda data: prerequisites(), "configuration": configuration, "cni": cni}
