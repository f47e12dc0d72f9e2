"""pyinfra inventories for Ansible: the one inventory file (inventory/*.py) drives both engines.

`load()` reads a pyinfra inventory file the way pyinfra's CLI does (module-level lists of hosts, or (hosts, group
data) tuples; `group_data/<group>.py` in the working directory and beside the file; the same precedence: see
load()), `to_ansible()` turns it into an Ansible inventory (YAML/dict form, what ansible-runner takes) and
`to_script()` into a dynamic inventory script's --list output. pyinfra's connection data (ssh_*) becomes
Ansible's (ansible_*); weave_* settings pass through unchanged; files on the control machine are named by absolute
paths. No weave_node import, no pyinfra import.
"""

from __future__ import annotations

import ast
import json
import os
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


Entries = list[tuple[str, dict[str, Any]]]


def _exec(path: Path) -> dict[str, Any]:
    """A Python file's module-level names (pyinfra_cli.util.exec_file)."""
    try:
        return runpy.run_path(str(path))
    except SystemExit as exc:  # inventory/lab.py says so when its lab is not up
        raise InventoryError(str(exc.code)) from None


def _imported_names(path: Path) -> set[str]:
    """Names bound by import statements: not group data (pyinfra_cli.inventory._get_imported_names)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Import):
            names.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names if alias.name != "*")
    return names


def _group_data_dir(folder: Path) -> dict[str, dict[str, Any]]:
    """group name -> data, from folder/<group>.py (pyinfra_cli.inventory._get_group_data): __all__ when set, else
    every name but imported ones; never __dunder__ names."""
    out: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return out
    for file in sorted(folder.iterdir()):
        if not file.name.endswith(".py"):
            continue
        attrs = _exec(file)
        keys = set(attrs["__all__"]) if "__all__" in attrs else set(attrs) - _imported_names(file)
        out[file.stem] = {k: v for k, v in attrs.items() if k in keys and not k.startswith("__")}
    return out


def _host_entries(value: Any) -> Entries | None:
    if not isinstance(value, list | tuple):
        return None
    out: Entries = []
    for item in value:
        if isinstance(item, str):
            out.append((item, {}))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], dict):
            out.append((item[0], dict(item[1])))
        else:
            return None
    return out


def _groups(namespace: Mapping[str, Any]) -> dict[str, tuple[Entries, dict[str, Any]]]:
    """The inventory file's groups: module-level lists of hosts or (hosts, data) tuples; a name that starts with
    `_`, an import or a helper is not a group (pyinfra_cli.inventory._is_inventory_group)."""
    groups = {}
    for name, value in namespace.items():
        if name.startswith("_"):
            continue
        hosts, data = value, {}
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
            hosts, data = value[0], dict(value[1])
        entries = _host_entries(hosts)
        if entries is not None:
            groups[name] = (entries, data)
    return groups


Groups = dict[str, tuple[Entries, dict[str, Any]]]


def load(path: str | Path, cwd: str | Path | None = None, override: Mapping[str, Any] | None = None) -> Inventory:
    """Hosts, groups and each host's data exactly as pyinfra's CLI builds them (pyinfra_cli.inventory.
    make_inventory_from_files, pyinfra.api.inventory, Host.data), `cwd` being pyinfra's working directory
    (default: this process's) and `override` its --data. A host's data, strongest first:

    1. `override` (--data);
    2. the host's own data: from each group's (name, data) entries in file order, then from `all`'s;
    3. its groups' data, in the order the file lists those groups (a later group wins), then the group named
       after the file (`inventory/lab.py`: `lab`, every host is in it); a group's data is its inline (hosts,
       data) data updated with group_data/<group>.py (the file wins), read from <cwd>/group_data and then from
       group_data/ beside the inventory file (which wins);
    4. `all`'s data: an `all = (hosts, data)` group's data, updated with group_data/all.py.

    When the file defines `all`, its hosts are the inventory's hosts."""
    path = Path(path)
    if not path.is_file():
        raise InventoryError(f"{path}: no such inventory file")
    groups = _with_group_data(path, Path(cwd or os.getcwd()))
    inv = _merge(groups, override or {})
    if not inv.hosts:
        raise InventoryError(f"{path}: no hosts (a pyinfra inventory is module-level lists of hosts)")
    return inv


def _with_group_data(path: Path, cwd: Path) -> Groups:
    """The file's groups, `all` (defined or made of every host) and the file's own group, each with its data."""
    groups = _groups(_exec(path))
    if "all" not in groups:
        names = dict.fromkeys(name for entries, _ in groups.values() for name, _ in entries)
        groups["all"] = ([(name, {}) for name in names], {})
    else:
        groups["all"] = groups.pop("all")  # pyinfra moves it after the others (the file's group comes last)
    file_group = path.name.rsplit(".", 1)[0]
    if file_group not in groups:
        groups[file_group] = ([(name, {}) for name, _ in groups["all"][0]], {})
    folders = [cwd / "group_data"]
    if str(path.parent.resolve()) != str(cwd):
        folders.append(path.parent.resolve() / "group_data")
    from_files: dict[str, dict[str, Any]] = {}
    for folder in folders:
        for group, data in _group_data_dir(folder).items():
            from_files.setdefault(group, {}).update(data)
    return {group: (entries, {**data, **from_files.get(group, {})}) for group, (entries, data) in groups.items()}


def _merge(groups: Groups, override: Mapping[str, Any]) -> Inventory:
    all_entries, all_data = groups["all"]
    groups = {group: value for group, value in groups.items() if group != "all"}
    own: dict[str, dict[str, Any]] = {}
    member_of: dict[str, list[str]] = {}
    for group, (entries, _) in groups.items():
        for name, data in entries:
            own.setdefault(name, {}).update(data)
            member_of.setdefault(name, []).append(group)
    for name, data in all_entries:
        own.setdefault(name, {}).update(data)
    inv = Inventory()
    for name in dict.fromkeys(name for name, _ in all_entries):
        data = dict(all_data)
        for group in member_of.get(name, []):
            data.update(groups[group][1])
        inv.hosts[name] = {**data, **own[name], **override}
    for group, (entries, _) in groups.items():
        names = [name for name in dict.fromkeys(name for name, _ in entries) if name in inv.hosts]
        if names:
            inv.groups[group] = names
    return inv


def parse_data(items: Mapping[str, str]) -> dict[str, Any]:
    """`--data key=value` values as pyinfra reads them (pyinfra_cli.util.parse_cli_arg): true/false, integers, JSON,
    else the string."""
    return {key: _parse_value(value) for key, value in items.items()}


def _parse_value(value: str) -> Any:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return json.loads(value)
    except ValueError:
        return value


# Data naming a file on the control machine. pyinfra opens these relative to its working directory (the caller's,
# for `weave-node rollout`); ansible-runner runs in ansible/ and Ansible looks for a relative `copy` source
# in the role: they reach Ansible absolute. `~` is expanded too.
PATHS = (
    "weave_password_file",
    "weave_previous_password_file",
    "weave_wheelhouse",
    "ssh_key",
    "ssh_config_file",
    "ssh_known_hosts_file",
    "ansible_ssh_private_key_file",
    "ansible_private_key_file",
)


def absolute_paths(data: Mapping[str, Any], base: Path) -> dict[str, Any]:
    out = dict(data)
    for key in PATHS:
        value = out.get(key)
        if isinstance(value, str | Path) and str(value):
            path = Path(value).expanduser()
            out[key] = str(path if path.is_absolute() else base / path)
    return out


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


def host_vars(name: str, data: Mapping[str, Any], base: str | Path | None = None) -> dict[str, Any]:
    """One host's Ansible variables from its pyinfra data; relative paths (PATHS) from `base` (default: the working
    directory, as pyinfra reads them)."""
    out: dict[str, Any] = {}
    args = []
    for key, value in absolute_paths(data, Path(base or os.getcwd())).items():
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


def to_ansible(inv: Inventory, base: str | Path | None = None) -> dict[str, Any]:
    """The YAML-inventory form: {"all": {"hosts": {...}, "children": {group: {"hosts": {...}}}}}."""
    return {
        "all": {
            "hosts": {name: host_vars(name, data, base) for name, data in inv.hosts.items()},
            "children": {group: {"hosts": {n: {} for n in names}} for group, names in inv.groups.items()},
        }
    }


def to_script(inv: Inventory, base: str | Path | None = None) -> dict[str, Any]:
    """A dynamic inventory script's `--list` output."""
    out: dict[str, Any] = {"_meta": {"hostvars": {n: host_vars(n, d, base) for n, d in inv.hosts.items()}}}
    out["all"] = {"children": [*inv.groups, "ungrouped"]}
    for group, names in inv.groups.items():
        out[group] = {"hosts": names}
    return out
