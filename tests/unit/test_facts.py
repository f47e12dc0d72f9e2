"""The rollout checks the router's facts on the control machine without importing weave_node (the Ansible role runs
where it is not installed): weave_node_deploy/facts.py restates them, and this keeps each equal to its home."""

from __future__ import annotations

from weave_node.core import cni, facts
from weave_node_deploy import facts as rollout


def test_the_rollout_checks_the_facts_the_router_enforces() -> None:
    assert rollout.DEFAULT_RANGE == facts.DEFAULT_RANGE
    assert rollout.STATUS_SOCKET == facts.DEFAULT_STATUS_SOCKET
    assert (rollout.MTU_MIN, rollout.MTU_MAX) == (facts.MTU_MIN, facts.MTU_MAX)
    assert rollout.CNI_VERSIONS == cni.CNI_VERSIONS
    assert rollout.PASSWORD_FILE_MODE_MASK == facts.PASSWORD_FILE_MODE_MASK
    assert rollout.BRIDGE_NETFILTER_MODES == facts.BRIDGE_NETFILTER_MODES


def test_one_version_for_the_wheel_the_router_the_rollout_and_the_changelog() -> None:
    import tomllib
    from pathlib import Path

    import weave_node

    repo = Path(__file__).resolve().parents[2]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    assert project["version"] == weave_node.__version__ == rollout.VERSION
    assert f"## {rollout.VERSION} " in (repo / "CHANGELOG.md").read_text()
