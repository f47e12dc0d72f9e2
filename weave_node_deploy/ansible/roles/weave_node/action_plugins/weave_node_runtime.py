"""Action `weave_node_runtime`: the router's runtime on the host, in two steps, with the code the pyinfra deploys use.

- `step: check` asks the host (one shell command, no module) which version it runs and which wheelhouse it was
  installed from (<prefix>/venv/.weave-node-wheels): fails when the rollout would downgrade it
  (weave_node_deploy/versions.py, unless `allow_downgrade`); returns `installed` (nothing to push).
- `step: install` builds the runtime archive on the control machine (once, then cached:
  weave_node_deploy/runtime.py), pushes that one file and runs the install script (checksum verified, unpacked
  into a new venv, swapped in whole). In check mode it only says it would.
"""

from __future__ import annotations

import hashlib
import shlex
import sys
from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

HERE = Path(__file__).resolve()
if HERE.parents[4].name == "weave_node_deploy" and str(HERE.parents[5]) not in sys.path:  # the role in the package
    sys.path.insert(0, str(HERE.parents[5]))
try:  # the collection needs the package on the control machine (its Python, the one that runs Ansible)
    from weave_node_deploy import runtime, versions, wheelhouse
except ImportError as exc:
    MISSING: str | None = (
        f"the weave_node role needs the weave-node Python package on the control machine, in the Python that runs "
        f"Ansible ({sys.executable}): pip install 'weave-node[rollout]' ({exc})"
    )
else:
    MISSING = None


class ActionModule(ActionBase):  # type: ignore[misc]
    TRANSFERS_FILES = False  # only the install pushes a file, into a temporary directory it makes itself

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        if MISSING:
            return {**result, "failed": True, "msg": MISSING}
        args = self._task.args
        prefix = str(args.get("prefix", "/opt/weave-node"))
        try:
            wheels = Path(str(args["wheelhouse"]))
            sums = (wheels / "SHA256SUMS").read_bytes()
        except (KeyError, OSError) as exc:
            return {**result, "failed": True, "msg": f"the wheelhouse: {exc}"}
        if args.get("step") == "check":
            host = str((task_vars or {}).get("inventory_hostname", ""))
            return {
                **result,
                **self._check(
                    host, prefix, wheels, sums, str(args.get("allow_downgrade", False)).lower() in ("true", "1", "yes")
                ),
            }
        if args.get("step") == "install":
            return {**result, **self._install(prefix, wheels)}
        return {**result, "failed": True, "msg": "step must be check or install"}

    def _sh(self, command: str) -> dict[str, Any]:
        return dict(self._low_level_execute_command(command, sudoable=True))

    def _check(self, host: str, prefix: str, wheels: Path, sums: bytes, allowed: bool) -> dict[str, Any]:
        venv = shlex.quote(f"{prefix}/venv")
        out = self._sh(
            f'echo "version=$({versions.command(prefix)})"; '
            f'echo "wheels=$(sha256sum < {venv}/{runtime.MARKER} 2>/dev/null | cut -d" " -f1)"'
        )
        lines = dict(line.partition("=")[::2] for line in str(out.get("stdout", "")).splitlines() if "=" in line)
        if out.get("rc") != 0 or "version" not in lines:
            return {"failed": True, "msg": f"asking the host what it runs: {out.get('stderr') or out.get('stdout')}"}
        running = lines["version"].strip()
        refused = versions.downgrade(host, running or None, wheelhouse.our_wheel(wheels).name, allowed)
        if refused:
            return {"failed": True, "msg": refused}
        installed = lines.get("wheels", "").strip() == hashlib.sha256(sums).hexdigest()
        return {"changed": False, "installed": installed, "running": running}

    def _install(self, prefix: str, wheels: Path) -> dict[str, Any]:
        if self._task.check_mode:
            return {"changed": True, "msg": "would install the runtime archive"}
        try:
            archive = runtime.build(wheels)
        except (OSError, RuntimeError, ValueError) as exc:
            return {"failed": True, "msg": f"the runtime archive: {exc}"}
        digest = runtime.sha256(archive)
        dest = f"{prefix}/{runtime.ARCHIVE}"
        # Uploaded as the connection's user into Ansible's own temporary directory (0700), then moved into place
        # by the (become) root shell: a non-root SSH user with sudo works as with the old copy task.
        tmpdir = self._make_tmp_path()
        try:
            staged = self._connection._shell.join_path(tmpdir, runtime.ARCHIVE)
            self._transfer_file(str(archive), staged)
            self._fixup_perms2((tmpdir, staged))
            q = shlex.quote
            out = self._sh(
                f"mkdir -p {q(prefix)} && chmod 0755 {q(prefix)} && mv -f {q(staged)} {q(dest)} && "
                f"chown 0:0 {q(dest)} && chmod 0600 {q(dest)} && {runtime.install_script(prefix, digest)}"
            )
        finally:
            self._remove_tmp_path(tmpdir)
        if out.get("rc") != 0:
            return {
                "failed": True,
                "rc": out.get("rc"),
                "stdout": out.get("stdout", ""),
                "stderr": out.get("stderr", ""),
                "msg": "installing the runtime archive failed",
            }
        return {"changed": True, "sha256": digest, "stdout": out.get("stdout", "")}
