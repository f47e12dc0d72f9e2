"""Action `weave_node_files`: on the control machine, one set of the host's files (`set`: prerequisites,
configuration or cni; `root`: a directory standing for /, for tests) rendered from the effective settings (the
fact `weave`) by the code the pyinfra deploys use (weave_node_deploy/host_files.py), then written by one run of
the module of the same name on the host (library/weave_node_files.py): one module run where a template, copy or
file task each took one. Passwords are read here (bytes) from their files on the control machine and reach the
host as files in Ansible's temporary directory, never as arguments. Returns `changed_paths`, and `restart`,
`reload`, `daemon_reload`: whether a changed entry needs that of the router."""

from __future__ import annotations

import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

HERE = Path(__file__).resolve()
if HERE.parents[4].name == "weave_node_deploy" and str(HERE.parents[5]) not in sys.path:  # the role in the package
    sys.path.insert(0, str(HERE.parents[5]))
try:  # the collection needs the package on the control machine (its Python, the one that runs Ansible)
    from weave_node_deploy import host_files
except ImportError as exc:
    MISSING: str | None = (
        f"the weave_node role needs the weave-node Python package on the control machine, in the Python that runs "
        f"Ansible ({sys.executable}): pip install 'weave-node[rollout]' ({exc})"
    )
else:
    MISSING = None


class ActionModule(ActionBase):  # type: ignore[misc]
    TRANSFERS_FILES = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        if MISSING:
            return {**result, "failed": True, "msg": MISSING}
        task_vars = task_vars or {}
        which = str(self._task.args.get("set", ""))
        weave = self._task.args.get("weave") or task_vars.get("weave")
        if which not in host_files.SETS or not isinstance(weave, dict):
            return {
                **result,
                "failed": True,
                "msg": f"set must be one of {sorted(host_files.SETS)}, with the fact weave",
            }
        root = str(self._task.args.get("root") or "").rstrip("/")  # a directory standing for / (tests, images)
        try:
            entries = [replace(e, path=root + e.path) for e in host_files.SETS[which](self._templar.template(weave))]
        except (KeyError, TypeError, ValueError) as exc:
            return {**result, "failed": True, "msg": f"the {which} files: {exc}"}
        secrets: dict[int, bytes] = {}
        for index, entry in enumerate(entries):
            if entry.source:
                try:
                    secrets[index] = Path(entry.source).read_bytes()  # bytes: any password, as pyinfra copies it
                except OSError as exc:
                    return {**result, "failed": True, "msg": f"{entry.source}: {exc.strerror}"}
        args: dict[str, Any] = {
            "entries": [{k: v for k, v in asdict(e).items() if k not in ("source", "needs")} for e in entries]
        }
        # Passwords never travel in the module's arguments (Ansible prints those when debugging): each goes into
        # Ansible's temporary directory on the host (0700, the connection's user; removed after the module ran).
        tmpdir = self._make_tmp_path() if secrets else None
        try:
            if tmpdir:
                files = {str(i): self._connection._shell.join_path(tmpdir, f"secret-{i}") for i in secrets}
                for i, data in secrets.items():
                    self._transfer_data(files[str(i)], data)
                self._fixup_perms2([tmpdir, *files.values()])
                args["secret_files"] = files
            # The module beside this action: ansible.legacy.* for the role's library/, the collection's own name in
            # the collection (plugins/modules), whichever way the task named the action.
            module = self._task.resolved_action or "weave_node_files"
            out = self._execute_module(module_name=module, module_args=args, task_vars=task_vars)
        finally:
            if tmpdir:
                self._remove_tmp_path(tmpdir, force=True)
        out.pop("invocation", None)  # (long, and not worth a log)
        changed = {i for i in out.get("changed_entries") or () if isinstance(i, int) and 0 <= i < len(entries)}
        needs = {n for i in changed for n in entries[i].needs}
        return {
            **result,
            **out,
            "restart": host_files.RESTART in needs,
            "reload": host_files.RELOAD in needs,
            "daemon_reload": host_files.DAEMON_RELOAD in needs,
        }
