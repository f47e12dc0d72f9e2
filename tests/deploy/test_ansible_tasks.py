"""The role's task files, run by real Ansible on this machine against a temporary directory (tests/deploy/conftest.py):
the logic that is Ansible's (conditions, loops, modules' file handling) checked where it runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import RunTasks, role_tasks


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _weave(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "weave_prefix": str(tmp_path / "prefix"),
        "weave_cni_bin_dir": str(tmp_path / "cni-bin"),
        "weave_cni_conf_dir": str(tmp_path / "cni-conf"),
        "weave_state_dir": str(tmp_path / "state"),
        **extra,
    }


@pytest.mark.parametrize(
    ("link", "chains", "reset"),
    [(True, False, True), (False, True, True), (True, True, True), (False, False, False)],
    ids=["bridge-only", "chains-only", "both", "neither"],
)
def test_removal_resets_when_the_bridge_or_our_chains_exist(
    run_tasks: RunTasks, tmp_path: Path, link: bool, chains: bool, reset: bool
) -> None:
    fake = tmp_path / "fakebin"
    _script(fake / "ip", "echo '5: weave: <BROADCAST,UP> mtu 1376'" if link else "echo 'no weave' >&2; exit 1")
    chain = "echo ':WEAVE-NODE-FORWARD - [0:0]'; " if chains else ""
    _script(fake / "iptables-save", f"echo '*filter'; {chain}echo COMMIT")
    calls = tmp_path / "calls"
    _script(tmp_path / "prefix/venv/bin/weave-node", f'echo "$@" >> {calls}; echo "removed link weave"')
    (task,) = role_tasks("remove.yml", "Remove the bridge, the VXLAN device and our iptables chains")
    task["environment"] = {"PATH": f"{fake}:/usr/bin:/bin"}
    (result,) = run_tasks([task], play_vars={"weave": _weave(tmp_path)})
    assert result["event"] == "runner_on_ok", result
    assert result["res"]["changed"] is reset
    assert (calls.read_text() if calls.exists() else "") == ("reset --force\n" if reset else "")


LINK_TASKS = ("What is at Debian's CNI plugins' places", "Debian's CNI plugins (only our links)")


def test_removal_takes_only_our_links_to_debians_plugins_never_a_plugin_binary(
    run_tasks: RunTasks, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "cni-bin"
    bin_dir.mkdir()
    (bin_dir / "loopback").write_bytes(b"\x7fELF a real plugin, installed by someone else")
    (bin_dir / "portmap").symlink_to("/usr/lib/cni/portmap")  # ours (what the rollout creates)
    (bin_dir / "bandwidth").symlink_to("/opt/other-cni/bandwidth")  # someone else's link
    tasks = role_tasks("remove.yml", *LINK_TASKS)
    results = run_tasks(tasks, play_vars={"weave": _weave(tmp_path)})
    assert not [r for r in results if r["event"].endswith(("_failed", "_unreachable"))], results
    assert (bin_dir / "loopback").read_bytes().startswith(b"\x7fELF")
    assert not os.path.lexists(bin_dir / "portmap")
    assert os.readlink(bin_dir / "bandwidth") == "/opt/other-cni/bandwidth"
    again = run_tasks(tasks, play_vars={"weave": _weave(tmp_path)})
    assert not any(r["res"].get("changed") for r in again), again
