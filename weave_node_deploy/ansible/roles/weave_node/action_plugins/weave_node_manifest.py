"""Action `weave_node_manifest`: the Kubernetes manifest rendered from templates/weave-node/daemonset.yaml.j2 and
validated against the Kubernetes schemas on the control machine (manifest.py, as the pyinfra path does).
Takes `settings` (the role's effective `weave` settings, as weave_node_deploy/tasks/weave_node.py passes them) or the
template's values. Returns `manifest` (the text), `config_hash` (carried in its pod template), `live_state`
(the command that reads the live one and its pod counts) and `health_gate` (its shell command); fails with
the schema error."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

HERE = Path(__file__).resolve()
if HERE.parents[4].name == "weave_node_deploy" and str(HERE.parents[5]) not in sys.path:  # the role in the package
    sys.path.insert(0, str(HERE.parents[5]))
try:  # the collection needs the package on the control machine (its Python, the one that runs Ansible)
    from weave_node_deploy import manifest
except ImportError as exc:
    MISSING: str | None = (
        f"the weave_node role needs the weave-node Python package on the control machine, in the Python that runs "
        f"Ansible ({sys.executable}): pip install 'weave-node[rollout]' ({exc})"
    )
else:
    MISSING = None


class ActionModule(ActionBase):  # type: ignore[misc]
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        if MISSING:
            return {**result, "failed": True, "msg": MISSING}
        args = dict(self._task.args)
        try:
            settings = args.get("settings")
            text = manifest.from_settings(settings) if settings is not None else manifest.render(**args)
        except manifest.InvalidManifest as exc:
            return {**result, "failed": True, "msg": f"the weave-node manifest is invalid: {exc}"}
        timeout = manifest.gate_timeout(settings) if settings is not None else 90
        return {
            **result,
            "changed": False,
            "manifest": text,
            "config_hash": manifest.config_hash(text),
            "live_state": manifest.LIVE_STATE,
            "health_gate": manifest.health_gate(timeout),
        }
