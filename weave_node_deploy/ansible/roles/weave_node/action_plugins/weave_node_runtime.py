"""Action `weave_node_runtime`: on the control machine, the runtime archive of the wheelhouse (built once, then
cached: weave_node_deploy/runtime.py, the same archive and install script the pyinfra deploys use). Returns `path`
(the archive, for the `copy` that pushes it), `sha256` and `script` (what the host runs to install it). Connects to
no host; router.yml asks only for hosts that need an install."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

HERE = Path(__file__).resolve()
if HERE.parents[4].name == "weave_node_deploy" and str(HERE.parents[5]) not in sys.path:  # the role in the package
    sys.path.insert(0, str(HERE.parents[5]))
try:  # the collection needs the package on the control machine (its Python, the one that runs Ansible)
    from weave_node_deploy import runtime
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
        args = self._task.args
        try:
            archive = runtime.build(Path(str(args["wheelhouse"])))
        except (KeyError, OSError, RuntimeError, ValueError) as exc:
            return {**result, "failed": True, "msg": f"the runtime archive: {exc}"}
        digest = runtime.sha256(archive)
        script = runtime.install_script(str(args.get("prefix", "/opt/weave-node")), digest)
        return {**result, "changed": False, "path": str(archive), "sha256": digest, "script": script}
