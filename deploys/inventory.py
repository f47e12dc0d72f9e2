"""pyinfra inventories for Ansible: the one inventory file (inventory/*.py) drives both engines.

`load()` reads a pyinfra inventory file the way pyinfra does (module-level lists of hosts, or (hosts, group data)
tuples; `group_data/<group>.py` and `group_data/all.py` beside it), `to_ansible()` turns it into an Ansible
inventory (YAML/dict form, what ansible-runner takes) and `to_script()` into a dynamic inventory script's --list
output. pyinfra's connection data (ssh_*) becomes Ansible's (ansible_*); weave_* settings pass through unchanged.
No weave_node import, no pyinfra import.
"""

from __future__ import annotations

import runpy
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class InventoryError(ValueError):
    pass


@dataclass
class Inventory:
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> data (group data merged in)
    groups: dict[str, list[str]] = field(default_factory=dict)  # group -> host names, in file order


def _module_data(path: Path) -> dict[str, Any]:
    try:
        namespace = runpy.run_path(str(path))
    except SystemExit as exc:  # inventory/lab.py says so when its lab is not up
        raise InventoryError(str(exc.code)) from None
    return {k: v for k, v in namespace.items() if not k.startswith("_")}


def _host_entries(value: Any) -> list[tuple[str, dict[str, Any]]] | None:
    if not isinstance(value, list | tuple):
        return None
    out = []
    for item in value:
        if isinstance(item, str):
            out.append((item, {}))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], dict):
            out.append((item[0], dict(item[1])))
        else:
            return None
    return out


def load(path: str | Path) -> Inventory:
    path = Path(path)
    if not path.is_file():
        raise InventoryError(f"{path}: no such inventory file")
    group_dir = path.parent / "group_data"

    def group_data(group: str) -> dict[str, Any]:
        f = group_dir / f"{group}.py"
        return _module_data(f) if f.is_file() else {}

    inv = Inventory()
    everyone = group_data("all")
    for group, value in _module_data(path).items():
        hosts, gdata = value, {}
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
            hosts, gdata = value[0], dict(value[1])
        entries = _host_entries(hosts)
        if entries is None:
            continue  # not a group (an import, a helper)
        gdata = {**group_data(group), **gdata}
        inv.groups[group] = []
        for name, data in entries:
            inv.groups[group].append(name)
            inv.hosts[name] = {**everyone, **inv.hosts.get(name, {}), **gdata, **data}
    if not inv.hosts:
        raise InventoryError(f"{path}: no hosts (a pyinfra inventory is module-level lists of hosts)")
    return inv


SSH_ARGS = {
    "ssh_config_file": "-F {}",
    "ssh_strict_host_key_checking": "-o StrictHostKeyChecking={}",
    "ssh_known_hosts_file": "-o UserKnownHostsFile={}",
}
DIRECT = {
    "ssh_hostname": "ansible_host",
    "ssh_user": "ansible_user",
    "ssh_port": "ansible_port",
    "ssh_key": "ansible_ssh_private_key_file",
    "ssh_password": "ansible_password",
    "_sudo": "ansible_become",
    "_sudo_user": "ansible_become_user",
}


def host_vars(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """One host's Ansible variables from its pyinfra data."""
    out: dict[str, Any] = {}
    args = []
    for key, value in data.items():
        if key in DIRECT:
            out[DIRECT[key]] = value
        elif key in SSH_ARGS:
            args.append(SSH_ARGS[key].format(shlex.quote(str(value))))
        elif key.startswith(("ssh_", "_")):
            raise InventoryError(f"{name}: pyinfra's {key} has no Ansible equivalent here; set ansible_* instead")
        else:
            out[key] = value
    if args:
        out["ansible_ssh_common_args"] = " ".join(args)
    if name.startswith("@local"):
        out["ansible_connection"] = "local"
    elif name.startswith("@"):
        raise InventoryError(f"{name}: only SSH hosts and @local can be rolled out with Ansible")
    return out


def to_ansible(inv: Inventory) -> dict[str, Any]:
    """The YAML-inventory form: {"all": {"hosts": {...}, "children": {group: {"hosts": {...}}}}}."""
    return {
        "all": {
            "hosts": {name: host_vars(name, data) for name, data in inv.hosts.items()},
            "children": {group: {"hosts": {n: {} for n in names}} for group, names in inv.groups.items()},
        }
    }


def to_script(inv: Inventory) -> dict[str, Any]:
    """A dynamic inventory script's `--list` output."""
    out: dict[str, Any] = {"_meta": {"hostvars": {n: host_vars(n, d) for n, d in inv.hosts.items()}}}
    out["all"] = {"children": [*inv.groups, "ungrouped"]}
    for group, names in inv.groups.items():
        out[group] = {"hosts": names}
    return out
