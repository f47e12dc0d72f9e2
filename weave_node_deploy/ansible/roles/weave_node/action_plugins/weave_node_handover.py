"""Action `weave_node_handover`: on the control machine, what remove.yml's IPAM hand-over step printed, in words, by
the same code the pyinfra removal uses (handover.py). Never fails: a hand-over that did not happen is a
warning naming what to do (`weave-node ipam rmpeer NAME` on a live host, or wait for --ipam-reclaim-after); the
removal goes on. `changed` when space was handed over or the router had to be started for it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

HERE = Path(__file__).resolve()
if HERE.parents[4].name == "weave_node_deploy" and str(HERE.parents[5]) not in sys.path:  # the role in the package
    sys.path.insert(0, str(HERE.parents[5]))
try:  # the collection needs the package on the control machine (its Python, the one that runs Ansible)
    from weave_node_deploy import handover
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
        task_vars = task_vars or {}
        args = self._task.args
        reclaim_after = args.get("reclaim_after", 600)
        outcome = handover.outcome(
            str(args.get("output") or ""),
            reclaim_after if isinstance(reclaim_after, int | float) and not isinstance(reclaim_after, bool) else 600,
        )
        result.update(changed=outcome.changed, msg=outcome.message, handed_over=outcome.ok)
        if not outcome.ok:
            result["warnings"] = [f"{task_vars.get('inventory_hostname', '')}: {outcome.message}"]
        return result
