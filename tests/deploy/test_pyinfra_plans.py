"""The pyinfra deploys planned against given facts (tests/deploy/conftest.py): what they would run, in order."""

from __future__ import annotations

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
