"""The DELs the CNI plugin recorded while the router was down: a JSON file {"container_id", "ifname"} per
attachment in the pending directory, written atomically by the plugin (core.cni.pending_name names it); the
router's PodService completes them (idempotently) at start and every few seconds, then removes the file."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

from weave_node.core.cni import pending_name
from weave_node.ipam.errors import IpamError
from weave_node.ipam.model import INTERNAL_PREFIX, Key

log = logging.getLogger("weave_node.cni")


def prepare(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for tmp in directory.glob(".del-*"):  # a plugin that died mid-write: the DEL was not recorded
        tmp.unlink(missing_ok=True)


def dir_ok(directory: Path) -> bool:
    try:
        st = directory.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        log.error("pending CNI DELs: %s must be our own directory, writable only by us: ignored", directory)
        return False
    return True


def read(path: Path) -> Key | None:
    """The attachment a record names; None (and the record removed) when it is not one the plugin writes."""
    try:
        doc = json.loads(path.read_text())
        key = Key(str(doc["container_id"]), str(doc.get("ifname") or "eth0"))
        key.validate()
        ours = path.name == pending_name(key.container_id, key.ifname)
        if key.container_id.startswith(INTERNAL_PREFIX) or not ours:
            raise ValueError("not a record the plugin writes")
    except (OSError, ValueError, KeyError, TypeError, IpamError) as exc:
        log.error("pending CNI DEL %s is unreadable (%s): removing it", path.name, exc)
        path.unlink(missing_ok=True)
        return None
    return key
