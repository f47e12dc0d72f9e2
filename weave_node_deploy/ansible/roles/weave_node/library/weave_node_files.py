#!/usr/bin/python3
"""Module `weave_node_files`, run on the host by the action of the same name (action_plugins/weave_node_files.py),
which renders the entries on the control machine (weave_node_deploy/host_files.py): a whole set of files,
directories and links written in one module run, each only when it differs.

A file is written beside its place (mkstemp: mode 0600 from its creation), synced, given its mode and owner, and
renamed in: a runtime never reads half a file, and a password is never readable by others, not even for a moment.
A link replaces only a link (a real plugin binary where a link would go is an error, naming it). In check mode
nothing is written; what would change is reported (with --diff, how, except for a secret)."""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule


def _owner_ok(st: os.stat_result) -> bool:
    return os.geteuid() != 0 or (st.st_uid, st.st_gid) == (0, 0)


def _file(entry: dict[str, Any], content: bytes, check: bool) -> bool:
    path, mode = entry["path"], int(entry["mode"])
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            same = f.read() == content
        if same and stat.S_IMODE(st.st_mode) == mode and _owner_ok(st):
            return False
    elif st is not None and stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path} is a directory")
    # (a link where the file goes is replaced by the file, as Ansible's template and copy do)
    if check:
        return True
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):  # as pyinfra's files.put does (its create_remote_dir)
        os.makedirs(directory, mode=0o755)
    fd, staged = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)
            if os.geteuid() == 0:
                os.fchown(f.fileno(), 0, 0)
        os.rename(staged, path)
    except BaseException:
        if os.path.lexists(staged):
            os.unlink(staged)
        raise
    _sync_dir(directory)
    return True


def _before(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _sync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _directory(entry: dict[str, Any], check: bool) -> bool:
    path, mode = entry["path"], int(entry["mode"])
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not check:
            os.makedirs(path, mode=mode)
            os.chmod(path, mode)  # (makedirs' mode goes through the umask)
        return True
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path} exists and is not a directory")
    if stat.S_IMODE(st.st_mode) == mode:
        return False
    if not check:
        os.chmod(path, mode)
    return True


def _link(entry: dict[str, Any], check: bool) -> bool:
    path, target = entry["path"], entry["target"]
    if os.path.islink(path):
        if os.readlink(path) == target:
            return False
    elif os.path.lexists(path):
        raise ValueError(f"{path} exists and is not a link (a plugin installed by someone else?): not replaced")
    if check:
        return True
    staged = f"{path}.weave-new"
    if os.path.lexists(staged):
        os.unlink(staged)
    os.symlink(target, staged)
    os.rename(staged, path)
    return True


def _absent(entry: dict[str, Any], check: bool) -> bool:
    path = entry["path"]
    if not os.path.lexists(path):
        return False
    if os.path.isdir(path) and not os.path.islink(path):
        raise ValueError(f"{path} is a directory: not removed")
    if not check:
        os.unlink(path)
    return True


def apply(entry: dict[str, Any], content: bytes, check: bool) -> bool:
    state = entry.get("state")
    if state == "file":
        return _file(entry, content, check)
    if state == "directory":
        return _directory(entry, check)
    if state == "link":
        return _link(entry, check)
    if state == "absent":
        return _absent(entry, check)
    raise ValueError(f"{entry.get('path')}: unknown state {state!r}")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "entries": {"type": "list", "elements": "dict", "required": True},
            # Entry index -> a file the action pushed into Ansible's temporary directory (0700): a password's
            # bytes, which never travel in the arguments (nor in logs, results or diffs).
            "secret_files": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    secret_files = module.params["secret_files"]
    changed: list[int] = []
    diffs: list[dict[str, str]] = []
    for index, entry in enumerate(module.params["entries"]):
        path = entry.get("path", "")
        secret = str(index) in secret_files
        try:
            if secret:
                with open(secret_files[str(index)], "rb") as f:
                    content = f.read()
            else:
                content = str(entry.get("content", "")).encode()
            before = _before(path) if module._diff and entry.get("state") == "file" and not secret else None
            if apply(entry, content, module.check_mode):
                changed.append(index)
                if before is not None:
                    diffs.append({"before_header": path, "after_header": path, "before": before,
                                  "after": content.decode(errors="replace")})  # fmt: skip
        except (OSError, ValueError, KeyError) as exc:
            reason = exc.strerror if secret and isinstance(exc, OSError) else exc  # (never a secret's bytes)
            module.fail_json(msg=f"{path}: {reason}", changed=bool(changed), changed_entries=changed)
    paths = [module.params["entries"][i].get("path", "") for i in changed]
    result: dict[str, Any] = {"changed": bool(changed), "changed_entries": changed, "changed_paths": paths}
    if diffs:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
