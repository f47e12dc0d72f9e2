"""The pyinfra deploys planned against given facts (tests/deploy/conftest.py): what they would run, in order."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import PlanDeploy
from weave_node_deploy import settings
from weave_node_deploy.tasks import removal, weave_node

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


UNIT = "/etc/systemd/system/weave-node.service"
HANDOVER = "IPAM: hand this host's address space to a peer (the state goes)"
REPORT = "IPAM: what the hand-over did"


def _installed(running: bool) -> dict[Any, Any]:
    return {
        ("File", UNIT): {"mode": 644, "user": "root", "group": "root", "size": 900},
        "SystemdStatus": {"weave-node.service": running},
        "SystemdEnabled": {"weave-node.service": True},
    }


@pytest.mark.parametrize("running", [True, False], ids=["running", "stopped"])
def test_removing_the_state_hands_the_space_over_before_the_router_stops(
    pyinfra_plan: PlanDeploy, running: bool
) -> None:
    plan = pyinfra_plan(weave_node.remove, _installed(running), {"weave_prefix": "/srv/wn"}, True)
    names = [name for name, _ in plan]
    assert names.index(HANDOVER) < names.index(REPORT) < names.index("Stop and disable the router")
    assert names.index("Stop and disable the router") < names.index("Remove the IPAM state")
    (script,) = dict(plan)[HANDOVER]
    assert "/srv/wn/venv/bin/weave-node ipam leave --force --wait 25" in script
    assert "systemctl start weave-node.service" in script  # a stopped router is started from its state
    assert "status --wait 90 " in script  # weave_health_timeout
    assert dict(plan)[REPORT] == ["call _report_handover"]


def test_a_router_the_hand_over_started_is_stopped_too(pyinfra_plan: PlanDeploy) -> None:
    """Planned while the router was stopped (nothing to stop then), the stop is decided when it runs: after the
    hand-over started the router."""
    later = {"SystemdStatus": {"weave-node.service": True}}
    plan = dict(pyinfra_plan(weave_node.remove, _installed(False), None, True, later=later))
    assert "systemctl stop weave-node.service" in plan["Stop and disable the router"]


def test_without_removing_the_state_nothing_is_handed_over(pyinfra_plan: PlanDeploy) -> None:
    """The identity stays with the state: the host may come back as itself, with its space."""
    names = [name for name, _ in pyinfra_plan(weave_node.remove, _installed(True), None, False)]
    assert "Stop and disable the router" in names
    assert HANDOVER not in names and REPORT not in names and "Remove the IPAM state" not in names


def test_the_hand_over_is_skipped_when_the_unit_is_gone(pyinfra_plan: PlanDeploy) -> None:
    """A second removal run: the unit went in the first, so there is no router to hand anything over."""
    names = [name for name, _ in pyinfra_plan(weave_node.remove, {}, None, True)]
    assert HANDOVER not in names and REPORT not in names and "Stop and disable the router" not in names


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"weave_remove_state": "maybe"}, "node1: weave_remove_state must be true or false"),
        ({"weave_remove_state": "true", "weave_health_timeout": "soon"}, "node1: weave_health_timeout must be"),
        ({"weave_remove_state": "yes", "weave_ipam_reclaim_after": "-5"}, "node1: weave_ipam_reclaim_after must be"),
    ],
)
def test_a_bad_removal_setting_stops_the_run_before_any_host_is_touched(
    pyinfra_plan: PlanDeploy, data: dict[str, Any], message: str
) -> None:
    from pyinfra.api.exceptions import DeployError

    with pytest.raises(DeployError, match=f"invalid weave-node settings: {message}"):
        pyinfra_plan(weave_node.remove, _installed(True), data, True)


class _Host:
    name = "node3"

    def __init__(self) -> None:
        self.logged: list[tuple[str, str]] = []

    def log_styled(self, message: str, log_func: Any = None, **_: Any) -> None:
        self.logged.append((getattr(log_func, "__name__", ""), message))


class _Op:
    def __init__(self, stdout: str) -> None:
        self.stdout = stdout

    def is_complete(self) -> bool:
        return True


def test_the_report_warns_with_what_to_do_and_never_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _Host()
    monkeypatch.setattr(removal, "host", fake)
    failed = (
        "weave-node-handover: failed no reachable peer to hand our 1024 addresses to.\n"
        "weave-node-handover: name 0a:00:00:00:00:03 node3\n"
    )
    removal._report_handover(_Op(failed), 600)
    ((level, text),) = fake.logged
    assert level == "warning" and text.startswith("WARNING: the IPAM address space was not handed over"), text
    assert "no reachable peer to hand our 1024 addresses to" in text
    assert "run `weave-node ipam rmpeer 0a:00:00:00:00:03` on a live host" in text and "600 s" in text
    fake.logged.clear()
    removal._report_handover(_Op("weave-node-handover: ok handed 1024 addresses to peer 0a:00:00:00:00:01\n"), 600)
    assert fake.logged == [("info", "IPAM hand-over: handed 1024 addresses to peer 0a:00:00:00:00:01")]


def _node1(**given: Any) -> dict[str, Any]:
    hosts = [("node1", {"weave_address": "198.18.0.1", **given})]
    return settings.effective("node1", hosts[0][1], hosts)


def _look(data: dict[str, Any], version: str, marker: str = "") -> dict[str, list[str]]:
    """The facts of a host whose one look (weave_node.look) answers with this version and this marker's SHA-1,
    and knows nothing else."""
    paths, _checks = weave_node.look_inputs(data)
    index = list(dict.fromkeys(paths)).index(paths[-1])  # the marker
    lines = [f"Cversion {version}"] + ([f"P{index} f 644 0 0 {marker}"] if marker else [])
    return {"HostState": lines}


def _wheelhouse(tmp_path: Path, version: str) -> Path:
    wheels = tmp_path / f"wheels-{version}"
    wheels.mkdir()
    (wheels / f"weave_node-{version}-py3-none-any.whl").write_bytes(b"not really a wheel")
    (wheels / "SHA256SUMS").write_text("")
    return wheels


@pytest.mark.parametrize(
    ("running", "allowed", "refused"),
    [
        ("weave-node 0.3.0", False, True),
        ("weave-node 0.3.0", True, False),
        ("weave-node 0.2.0", False, False),  # the same version: a re-run
        ("weave-node 0.1.0", False, False),  # an upgrade
        ("", False, False),  # not installed yet
    ],
)
def test_a_downgrade_is_refused_before_anything_is_touched_unless_allowed(  # noqa: PLR0917 - parametrized
    pyinfra_plan: PlanDeploy,
    tmp_path: Path,
    running: str,
    allowed: bool,
    refused: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pyinfra.api.exceptions import DeployError

    archive = tmp_path / "runtime.tar.gz"  # a plan only: the real archive is tests/deploy/test_runtime.py's
    archive.write_bytes(b"not really an archive")
    monkeypatch.setattr(weave_node, "_runtime", lambda wheels: archive)

    data = _node1(weave_wheelhouse=str(_wheelhouse(tmp_path, "0.2.0")), weave_allow_downgrade=allowed)
    if refused:
        with pytest.raises(DeployError, match=r"node1 runs weave-node 0\.3\.0 and this rollout would install 0\.2\.0"):
            pyinfra_plan(weave_node.router, _look(data, running), None, data)
    else:
        names = [name for name, _ in pyinfra_plan(weave_node.router, _look(data, running), None, data)]
        assert names == [
            "Installation directory",
            "Runtime archive (the router and its dependencies, one file)",
            "Install weave-node (checksum verified, unpacked into a new venv, swapped in whole)",
        ]


def test_an_installed_router_plans_nothing(
    pyinfra_plan: PlanDeploy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed = the venv's marker is the wheelhouse's SHA256SUMS: a re-run pushes nothing, builds nothing."""
    archive = tmp_path / "runtime.tar.gz"
    archive.write_bytes(b"not really an archive")
    monkeypatch.setattr(weave_node, "_runtime", lambda wheels: archive)
    wheels = _wheelhouse(tmp_path, "0.2.0")
    (wheels / "SHA256SUMS").write_text("0123  weave_node-0.2.0-py3-none-any.whl\n")
    marker = hashlib.sha1((wheels / "SHA256SUMS").read_bytes()).hexdigest()  # noqa: S324 - what pyinfra compares
    data = _node1(weave_wheelhouse=str(wheels))
    assert pyinfra_plan(weave_node.router, _look(data, "weave-node 0.2.0", marker), None, data) == []
    assert pyinfra_plan(weave_node.router, _look(data, "weave-node 0.2.0", "0" * 40), None, data) != []


def test_a_host_that_did_not_answer_the_look_gets_every_step_planned(pyinfra_plan: PlanDeploy) -> None:
    """An unknown never reads as up to date: with no answer, every module, the packages and the forwarding are
    planned (pyinfra's operations then check for themselves); with the answer, only what it says is missing."""
    from weave_node_deploy.settings import MODULES

    facts = {"DebPackages": {}, "KernelModules": {}, "Sysctl": {}}
    names = [name for name, _ in pyinfra_plan(weave_node.prerequisites, facts)]
    assert {f"Kernel module {m}" for m, _ in MODULES} <= set(names), names
    assert "Packages a node needs (installed only when missing)" in names and "IPv4 forwarding" in names
    _paths, checks = weave_node.look_inputs(None)
    answer = [f"C{name} " for name in checks] + [f"Cmodules {MODULES[0][0]} ", "Cip_forward 1"]
    answer += [f"Cpackages {'ii |' * len(weave_node.PACKAGES)}"]
    names = [name for name, _ in pyinfra_plan(weave_node.prerequisites, {**facts, "HostState": answer})]
    assert [n for n in names if n.startswith("Kernel module ")] == [f"Kernel module {MODULES[0][0]}"], names
    assert "IPv4 forwarding" not in names and not any(n.startswith("Packages") for n in names), names
