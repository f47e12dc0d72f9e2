"""Action `weave_node_settings`: on the control machine, this host's weave_* settings with the defaults filled in,
typed and validated against every host of the inventory by the same code the pyinfra deploys use
(deploys/settings.py). Sets the fact `weave`: the effective settings, plus `repo`, `wheel` and `wheels` (the
wheelhouse, built once per run when weave_wheelhouse is not given). Fails naming the host and the setting;
connects to no host."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

REPO = Path(__file__).resolve().parents[5]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deploys import settings, validate, wheelhouse  # noqa: E402 - after the path is known


def _plain(value: Any) -> Any:
    """Ansible's templated values as plain JSON types (what the pyinfra path sees)."""
    return json.loads(json.dumps(value, default=str))


class ActionModule(ActionBase):  # type: ignore[misc]
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        hostvars = task_vars["hostvars"]
        me = task_vars["inventory_hostname"]
        own = {k: task_vars[k] for k in task_vars if k.startswith("weave_")}
        if not self._task.args.get("validate", True):  # removal: defaults and types only
            data = settings.typed({**settings.DEFAULTS, "weave_remove_state": False, **_plain(own)})
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
        data["wheels"] = sorted(p.name for p in wheels.glob("*.whl"))
        data["packages"] = settings.PACKAGES
        data["modules"] = [list(m) for m in settings.MODULES]
        data["cni_plugin"] = settings.PLUGIN_SHEBANG + (REPO / "weave_node/cni/plugin.py").read_text()
        return {**result, "changed": False, "ansible_facts": {"weave": data}}
