"""Action `weave_node_manifest`: the Kubernetes manifest rendered from templates/weave-node/daemonset.yaml.j2 and
validated against the Kubernetes schemas on the control machine (deploys/manifest.py, as the pyinfra path does).
Returns `manifest` (the text); fails with the schema error."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

REPO = Path(__file__).resolve().parents[5]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deploys import manifest  # noqa: E402 - after the path is known


class ActionModule(ActionBase):  # type: ignore[misc]
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        args = dict(self._task.args)
        try:
            text = manifest.render(**args)
        except manifest.InvalidManifest as exc:
            return {**result, "failed": True, "msg": f"the weave-node manifest is invalid: {exc}"}
        return {**result, "changed": False, "manifest": text}
