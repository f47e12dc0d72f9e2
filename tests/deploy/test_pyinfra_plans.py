"""The pyinfra deploys planned against given facts (tests/deploy/conftest.py): what they would run, in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploys import settings
from deploys.tasks import weave_node
from tests.deploy.conftest import PlanDeploy

LINK = {"user": "root", "group": "root", "mode": 777, "size": 20, "atime": None, "mtime": None, "ctime": None}


def test_removal_takes_only_our_links_to_debians_plugins_never_a_plugin_binary(pyinfra_plan: PlanDeploy) -> None:
    facts = {
        ("Link", "/opt/cni/bin/loopback"): False,  # a real plugin binary: not a link
        ("Link", "/opt/cni/bin/portmap"): {**LINK, "link_target": "/usr/lib/cni/portmap"},  # ours
        ("Link", "/opt/cni/bin/bandwidth"): {**LINK, "link_target": "/opt/other-cni/bandwidth"},  # someone else's
    }
    plan = dict(pyinfra_plan(weave_node.remove, facts))
    assert plan["Remove /opt/cni/bin/portmap"] == ["rm -f /opt/cni/bin/portmap"]
    assert not [name for name in plan if name.endswith(("/loopback", "/bandwidth"))], plan


PASSWORD = "/etc/weave-node/password"  # noqa: S105 - a path


def _config(tmp_path: Path) -> dict[str, Any]:
    secret = tmp_path / "secret"
    secret.write_text("a password\n")
    secret.chmod(0o600)
    hosts = [("node1", {"weave_address": "198.18.0.1", "weave_password_file": str(secret)})]
    return settings.effective("node1", hosts[0][1], hosts)


def test_the_password_file_is_created_empty_and_private_before_the_password_is_uploaded(
    pyinfra_plan: PlanDeploy, tmp_path: Path
) -> None:
    plan = pyinfra_plan(weave_node.config, {}, None, _config(tmp_path))
    touching = [(name, [c for c in cmds if PASSWORD in c]) for name, cmds in plan]
    touching = [(name, cmds) for name, cmds in touching if cmds]
    first, *_ = touching
    assert first[1] == [f"touch {PASSWORD}", f"chmod 600 {PASSWORD}", f"chown root:root {PASSWORD}"], touching
    assert any(c == f"upload {PASSWORD}" for _, cmds in touching[1:] for c in cmds), touching


def test_an_existing_private_password_file_is_left_as_it_is(pyinfra_plan: PlanDeploy, tmp_path: Path) -> None:
    facts = {("File", PASSWORD): {"mode": 600, "user": "root", "group": "root", "size": 11}}
    plan = dict(pyinfra_plan(weave_node.config, facts, None, _config(tmp_path)))
    assert plan["Password file (empty, mode 0600, root, before the password goes in)"] == []
