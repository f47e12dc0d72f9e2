"""Action `weave_node_settings`: on the control machine, this host's weave_* settings with the defaults filled in,
typed and validated against every host of the inventory by the same code the pyinfra deploys use
(deploys/settings.py). Sets the fact `weave`: the effective settings, plus `repo`, `wheel` and `wheels` (the
wheelhouse, built once per run when weave_wheelhouse is not given). Fails naming the host and the setting;
connects to no host."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase
from ansible.release import __version__ as ansible_version

REPO = Path(__file__).resolve().parents[5]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deploys import facts, handover, settings, validate, versions, wheelhouse  # noqa: E402 - after the path is known

# ansible-core 2.19's templating keeps a single expression's type ("{{ weave.weave_mtu }}" stays None, a number
# stays a number), which the role's template vars rely on to render the bytes pyinfra renders; this action uses its
# Templar API. Also in pyproject.toml (the rollout extra) and meta/main.yml.
MIN_ANSIBLE = (2, 19)


def ansible_too_old(version: str) -> str | None:
    """Why this ansible-core cannot run the role, or None."""
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    if parts >= MIN_ANSIBLE:
        return None
    need = ".".join(map(str, MIN_ANSIBLE))
    return f"the weave_node role needs ansible-core >= {need} (this is {version}): pip install 'ansible-core>={need}'"


def _plain(value: Any) -> Any:
    """Ansible's templated values as plain JSON types (what the pyinfra path sees)."""
    return json.loads(json.dumps(value, default=str))


class ActionModule(ActionBase):  # type: ignore[misc]
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        too_old = ansible_too_old(ansible_version)
        if too_old:
            return {**result, "failed": True, "msg": too_old}
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
        except (OSError, RuntimeError) as exc:
            return {**result, "failed": True, "msg": f"the wheelhouse: {exc}"}
        data["weave_wheelhouse"] = str(wheels)
        # Not weave_* names: those are settings, and an unknown one is an error.
        data["repo"] = str(REPO)
        data["wheel"] = wheel
        version = versions.wheel_version(wheel)
        data["version"] = ".".join(map(str, version)) if version else "0.0.0"
        data["downgrade_refused"] = versions.message(me, "@RUNNING@", data["version"])  # the host's, in main.yml
        data["wheels"] = sorted(p.name for p in wheels.glob("*.whl"))
        data["packages"] = settings.PACKAGES
        data["status_socket"] = facts.STATUS_SOCKET
        data["sysctl_file"], data["sysctl_text"] = settings.SYSCTL_FILE, settings.SYSCTL_TEXT
        data["modules"] = [list(m) for m in settings.MODULES]
        return {**result, "changed": False, "ansible_facts": {"weave": data}}
