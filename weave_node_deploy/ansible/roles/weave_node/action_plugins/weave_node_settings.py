"""Action `weave_node_settings`: on the control machine, this host's weave_* settings with the defaults filled in,
typed and validated against every host of the inventory by the same code the pyinfra deploys use
(weave_node_deploy/settings.py). Sets the fact `weave`: the effective settings, plus `templates` and `wheel` (the
wheelhouse, built once per run when weave_wheelhouse is not given). Fails naming the host and the setting, or
saying what the control machine lacks (the weave-node package of the collection's version, ansible-core >= 2.19);
connects to no host."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase
from ansible.release import __version__ as ansible_version

HERE = Path(__file__).resolve()
if HERE.parents[4].name == "weave_node_deploy" and str(HERE.parents[5]) not in sys.path:  # the role in the package
    sys.path.insert(0, str(HERE.parents[5]))
try:  # the collection needs the package on the control machine (its Python, the one that runs Ansible)
    from weave_node_deploy import compat, facts, handover, host_files, paths, settings, validate, versions, wheelhouse
except ImportError as exc:
    MISSING: str | None = (
        f"the weave_node role needs the weave-node Python package on the control machine, in the Python that runs "
        f"Ansible ({sys.executable}): pip install 'weave-node[rollout]' ({exc})"
    )
else:
    MISSING = None

COLLECTION = HERE.parents[2] / "MANIFEST.json"
"""Installed collections have one (ansible-galaxy writes it): the collection's version, which must be the package's."""


def collection_version() -> str | None:
    try:
        return str(json.loads(COLLECTION.read_text())["collection_info"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the role of a checkout or of the installed package: the package's own files


def _plain(value: Any) -> Any:
    """Ansible's templated values as plain JSON types (what the pyinfra path sees)."""
    return json.loads(json.dumps(value, default=str))


class ActionModule(ActionBase):  # type: ignore[misc]
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        # Ansible older than the role supports, the package missing or of another version than the collection.
        problem = MISSING or compat.ansible_problem(ansible_version) or compat.collection_problem(collection_version())
        if problem:
            return {**result, "failed": True, "msg": problem}
        hostvars = task_vars["hostvars"]
        me = task_vars["inventory_hostname"]
        # task_vars are raw (`weave_address: "{{ ansible_host }}"` as written); hostvars[...] template on access.
        # Template this host's the same way, with every variable the task sees (play and role vars too).
        templar = self._templar.copy_with_new_env(available_variables=task_vars)
        own = {k: templar.template(task_vars[k]) for k in task_vars if k.startswith("weave_")}
        if not self._task.args.get("validate", True):  # removal: defaults, types, and what the removal uses
            data = settings.typed({**settings.DEFAULTS, "weave_remove_state": False, **_plain(own)})
            try:
                validate.check_removal(me, data)
            except validate.InvalidData as exc:
                return {**result, "failed": True, "msg": f"invalid weave-node settings: {exc}"}
            # Not a weave_* name (those are settings): the IPAM hand-over's script (remove.yml).
            data["handover_script"] = handover.script(
                data["weave_prefix"], data["weave_state_dir"], data["weave_health_timeout"]
            )
            data["sysctl_file"] = settings.SYSCTL_FILE
            return {**result, "changed": False, "ansible_facts": {"weave": data}}
        others = []
        for name in task_vars["groups"]["all"]:
            hv = hostvars[name]
            others.append((name, {k: hv[k] for k in hv if k.startswith("weave_")}))
        try:
            data = settings.effective(me, _plain(own), _plain(others))
        except validate.InvalidData as exc:
            return {**result, "failed": True, "msg": f"invalid weave-node settings: {exc}"}
        try:
            wheels = Path(data["weave_wheelhouse"]) if data["weave_wheelhouse"] else wheelhouse.build()
            wheel = wheelhouse.our_wheel(wheels).name
        except (OSError, RuntimeError, ValueError) as exc:
            return {**result, "failed": True, "msg": f"the wheelhouse: {exc}"}
        data["weave_wheelhouse"] = str(wheels)
        # Not weave_* names: those are settings, and an unknown one is an error.
        data["templates"] = str(paths.TEMPLATES)
        data["wheel"] = wheel
        version = versions.wheel_version(wheel)
        data["version"] = ".".join(map(str, version)) if version else "0.0.0"
        data["downgrade_refused"] = versions.message(me, "@RUNNING@", data["version"])  # the host's, in main.yml
        data["packages"] = settings.PACKAGES
        data["status_socket"] = facts.STATUS_SOCKET
        data["sysctl_file"], data["sysctl_text"] = settings.SYSCTL_FILE, settings.SYSCTL_TEXT
        data["modules"] = [list(m) for m in settings.MODULES]
        data["plugin_check"] = host_files.plugin_check(data["weave_prefix"], data["weave_cni_bin_dir"])
        return {**result, "changed": False, "ansible_facts": {"weave": data}}
