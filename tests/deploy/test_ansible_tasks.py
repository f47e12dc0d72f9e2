"""The role's task files, run by real Ansible on this machine against a temporary directory (tests/deploy/conftest.py):
the logic that is Ansible's (conditions, loops, modules' file handling) checked where it runs."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import HANDED, ROLE, STATUS, HandoverHost, RunTasks, role_tasks
from tests.helpers import REPO
from weave_node_deploy import handover
from weave_node_deploy.facts import STATUS_SOCKET

ROLE_TASKS = ROLE / "tasks"


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


def _wheelhouse(tmp_path: Path) -> Path:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "weave_node-0.1.0-py3-none-any.whl").write_bytes(b"not really a wheel")
    (wheels / "SHA256SUMS").write_text("")
    return wheels


SETTINGS = {"name": "Settings", "weave_node_settings": {}}
CONFIG_TASK = "Configuration (settings, peers, passwords, unit; written only where they differ)"


def test_settings_are_templated_for_this_host_as_for_the_others(run_tasks: RunTasks, tmp_path: Path) -> None:
    hosts = {
        "node1": {"ansible_host": "198.18.0.1", "weave_address": "{{ ansible_host }}"},
        "node2": {"ansible_host": "198.18.0.2", "weave_address": "{{ ansible_host }}", "weave_mtu": "{{ 1400 }}"},
    }
    results = run_tasks(
        [SETTINGS],
        host_vars=hosts,
        play_vars={"weave_conn_limit": "{{ 5 * 2 }}"},
        extravars={"weave_wheelhouse": str(_wheelhouse(tmp_path))},
    )
    by_host = {r["host"]: r for r in results}
    assert {r["event"] for r in results} == {"runner_on_ok"}, results
    node1 = by_host["node1"]["res"]["ansible_facts"]["weave"]
    node2 = by_host["node2"]["res"]["ansible_facts"]["weave"]
    assert (node1["weave_address"], node1["weave_peers"]) == ("198.18.0.1", ["198.18.0.2"])
    assert (node2["weave_address"], node2["weave_peers"], node2["weave_mtu"]) == ("198.18.0.2", ["198.18.0.1"], 1400)
    assert node1["weave_conn_limit"] == node2["weave_conn_limit"] == 10


def test_removal_settings_are_templated_too(run_tasks: RunTasks, tmp_path: Path) -> None:
    (result,) = run_tasks(
        [{"name": "Settings", "weave_node_settings": {"validate": False}}],
        host_vars={"node1": {"prefix_var": str(tmp_path), "weave_prefix": "{{ prefix_var }}/opt"}},
        extravars={"weave_remove_state": "true"},
    )
    weave = result["res"]["ansible_facts"]["weave"]
    assert (weave["weave_prefix"], weave["weave_remove_state"]) == (f"{tmp_path}/opt", True)


def test_the_playbooks_target_hosts_variable_is_not_taken_for_a_setting(run_tasks: RunTasks, tmp_path: Path) -> None:
    """site.yml/remove.yml: `hosts: "{{ target_hosts | default('all') }}"`; a weave_* name would be validated as
    a setting (and refused as an unknown one)."""
    import yaml

    for playbook in ("site.yml", "remove.yml"):
        (play,) = yaml.safe_load((REPO / "weave_node_deploy/ansible" / playbook).read_text())
        assert play["hosts"] == "{{ target_hosts | default('all') }}", playbook
    hosts = {"node1": {"weave_address": "198.18.0.1"}, "node2": {"weave_address": "198.18.0.2"}}
    results = run_tasks(
        [SETTINGS],
        host_vars=hosts,
        extravars={"target_hosts": "node2", "weave_wheelhouse": str(_wheelhouse(tmp_path))},
        play={"hosts": "{{ target_hosts | default('all') }}"},
    )
    assert [(r["host"], r["event"]) for r in results] == [("node2", "runner_on_ok")], results


def test_an_unknown_setting_still_fails_naming_host_and_setting(run_tasks: RunTasks, tmp_path: Path) -> None:
    hosts = {"node1": {"weave_address": "198.18.0.1", "weave_colour": "blue"}}
    (result,) = run_tasks([SETTINGS], host_vars=hosts, extravars={"weave_wheelhouse": str(_wheelhouse(tmp_path))})
    assert result["event"] == "runner_on_failed"
    assert "node1: unknown setting(s) weave_colour" in result["res"]["msg"], result


def _settings_plugin() -> Any:
    import importlib.util

    path = REPO / "weave_node_deploy/ansible/roles/weave_node/action_plugins/weave_node_settings.py"
    spec = importlib.util.spec_from_file_location("weave_node_settings_plugin", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_role_asks_for_the_ansible_core_it_was_tested_with() -> None:
    """2.19 keeps a single expression's type (`mtu: "{{ weave.weave_mtu }}"` stays None): one minimum, stated in
    the rollout extra, the role's meta, the collection's runtime and checked by its first task."""
    import tomllib

    import yaml
    from ansible.release import __version__

    from weave_node_deploy import collection, compat

    need = ".".join(map(str, compat.ANSIBLE))
    assert need == "2.19"
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["rollout"]
    assert f"ansible-core>={need}" in extra
    meta = yaml.safe_load((REPO / "weave_node_deploy/ansible/roles/weave_node/meta/main.yml").read_text())
    assert meta["galaxy_info"]["min_ansible_version"] == need
    assert collection.runtime()["requires_ansible"] == f">={need}"
    assert compat.ansible_problem(__version__) is None
    assert compat.ansible_problem("2.20.0rc1") is None
    assert "needs ansible-core >= 2.19 (this is 2.16.14)" in (compat.ansible_problem("2.16.14") or "")


def _env_weave(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        **_weave(tmp_path),
        "templates": str(REPO / "weave_node_deploy" / "templates"),
        "weave_peers": ["198.18.0.2"],
        "weave_ipalloc_range": "10.32.0.0/12",
        "weave_ipalloc_init": "",
        "weave_ipam_reclaim_after": 600,
        "weave_ipam_reclaim_replaced": True,
        "weave_conn_limit": 100,
        "weave_mtu": None,
        "weave_bridge_netfilter": "auto",
        "weave_direct": True,
        "weave_dns": True,
        "weave_dns_domain": "weave.local",
        "weave_dns_upstreams": [],
        "weave_password_file": None,
        "weave_metrics_addr": "127.0.0.1:6782",
        "status_socket": STATUS_SOCKET,
        "weave_previous_password_file": None,
        "weave_accept_unencrypted": False,
        **extra,
    }


def _render_env(run_tasks: RunTasks, tmp_path: Path, weave: dict[str, Any]) -> str:
    """The env file from config.yml's task (the weave_node_files action and module), written under tmp_path."""
    (task,) = role_tasks("config.yml", CONFIG_TASK)
    task["weave_node_files"]["root"] = str(tmp_path / "root")
    task.pop("register")
    (result,) = run_tasks([task], play_vars={"weave": weave})
    assert result["event"] == "runner_on_ok", result
    assert result["res"]["restart"] is True and result["res"]["daemon_reload"] is True, result
    return (tmp_path / "root/etc/weave-node/weave-node.env").read_text()


def test_no_mtu_renders_no_weave_mtu_line(run_tasks: RunTasks, tmp_path: Path) -> None:
    env = _render_env(run_tasks, tmp_path, _env_weave(tmp_path))
    assert "CONN_LIMIT=100" in env and "WEAVE_PEERS" not in env  # the peers: mesh.env (applied live)
    assert "WEAVE_MTU" not in env and "None" not in env, env
    assert "WEAVE_IPAM_RECLAIM_AFTER=600" in env.splitlines() and "WEAVE_NO_IPAM_RECLAIM_REPLACED" not in env


@pytest.mark.parametrize(
    ("after", "replaced", "netfilter"), [(600, True, "auto"), (0, False, "off"), (90.5, False, "on")]
)
def test_the_reclaim_settings_render_the_bytes_pyinfra_renders(
    run_tasks: RunTasks, tmp_path: Path, after: float, replaced: bool, netfilter: str
) -> None:
    """Ansible keeps a value's type through the template vars (a number, a boolean): the same file as pyinfra's."""
    from pyinfra.api.util import get_template

    weave = _env_weave(
        tmp_path,
        weave_ipam_reclaim_after=after,
        weave_ipam_reclaim_replaced=replaced,
        weave_bridge_netfilter=netfilter,
        weave_direct=replaced,  # (one boolean more, both ways)
    )
    env = _render_env(run_tasks, tmp_path, weave)
    pyinfra = get_template(str(REPO / "weave_node_deploy/templates/weave-node/weave-node.env.j2")).render(
        peers=weave["weave_peers"],
        ipalloc_range=weave["weave_ipalloc_range"],
        ipalloc_init=weave["weave_ipalloc_init"],
        ipam_reclaim_after=after,
        ipam_reclaim_replaced=replaced,
        conn_limit=weave["weave_conn_limit"],
        mtu=weave["weave_mtu"],
        bridge_netfilter=netfilter,
        direct=replaced,
        password_file="",
        state_dir=weave["weave_state_dir"],
        metrics_addr=weave["weave_metrics_addr"],
        status_socket=STATUS_SOCKET,
    )
    assert env == pyinfra
    assert f"WEAVE_IPAM_RECLAIM_AFTER={after}" in env.splitlines()
    assert ("WEAVE_NO_IPAM_RECLAIM_REPLACED=1" in env.splitlines()) is not replaced
    assert ("WEAVE_BRIDGE_NETFILTER" in env) is (netfilter != "auto")
    assert ("WEAVE_NO_DIRECT=1" in env.splitlines()) is not replaced


def _modules_task(tmp_path: Path, modprobe: str) -> dict[str, Any]:
    """prerequisites.yml's shell task, with /proc/modules (absent on a kernel without loadable modules, like this
    machine's), IPv4 forwarding's /proc file and modprobe faked under tmp_path, and no packages to check."""
    (task,) = role_tasks("prerequisites.yml", "Packages, kernel modules and IPv4 forwarding (only what is missing)")
    proc_modules = tmp_path / "proc-modules"
    proc_modules.write_text("")
    forwarding = tmp_path / "ip_forward"
    forwarding.write_text("1\n")
    shell = task["ansible.builtin.shell"].replace("/proc/modules", str(proc_modules))
    task["ansible.builtin.shell"] = shell.replace("/proc/sys/net/ipv4/ip_forward", str(forwarding))
    _script(tmp_path / "fakebin/modprobe", modprobe)
    task["environment"] = {"PATH": f"{tmp_path / 'fakebin'}:/usr/bin:/bin"}
    return task


def _modules(tmp_path: Path) -> list[list[str]]:
    (tmp_path / "loaded-br").mkdir()
    return _modules_again(tmp_path)


def _modules_again(tmp_path: Path) -> list[list[str]]:
    return [["vxlan", str(tmp_path / "no-vxlan")], ["br_netfilter", str(tmp_path / "loaded-br")]]


def test_a_module_that_cannot_be_loaded_fails_the_task(run_tasks: RunTasks, tmp_path: Path) -> None:
    task = _modules_task(tmp_path, 'echo "modprobe: FATAL: Module $1 not found in directory /lib/modules" >&2; exit 1')
    (result,) = run_tasks([task], play_vars={"weave": {"modules": _modules(tmp_path), "packages": []}})
    assert result["event"] == "runner_on_failed", result
    assert "FATAL: Module vxlan not found" in result["res"]["stderr"]


def test_a_missing_module_is_loaded_and_reported(run_tasks: RunTasks, tmp_path: Path) -> None:
    task = _modules_task(tmp_path, f'echo "$1" >> {tmp_path}/loaded')
    (result,) = run_tasks([task], play_vars={"weave": {"modules": _modules(tmp_path), "packages": []}})
    assert (result["event"], result["res"]["changed"]) == ("runner_on_ok", True), result
    assert (tmp_path / "loaded").read_text() == "vxlan\n"
    (tmp_path / "no-vxlan").mkdir()  # loaded now
    (again,) = run_tasks([task], play_vars={"weave": {"modules": _modules_again(tmp_path), "packages": []}})
    assert (again["event"], again["res"]["changed"]) == ("runner_on_ok", False), again
    assert (tmp_path / "loaded").read_text() == "vxlan\n"


@pytest.mark.parametrize(("value", "removed"), [("false", False), ("true", True), (False, False), (True, True)])
def test_remove_state_is_read_as_a_boolean(run_tasks: RunTasks, tmp_path: Path, value: Any, removed: bool) -> None:
    (task,) = role_tasks("remove.yml", "The IPAM state")
    (tmp_path / "state").mkdir()
    (result,) = run_tasks([task], play_vars={"weave": _weave(tmp_path, weave_remove_state=value)})
    assert not result["event"].endswith("_failed"), result
    assert (tmp_path / "state").exists() is not removed


@pytest.mark.parametrize("value", ["false", False])
def test_the_kubernetes_tasks_are_skipped_unless_asked_for(run_tasks: RunTasks, tmp_path: Path, value: Any) -> None:
    """main.yml's import of kubernetes.yml, with its condition, on a host that is not a control plane."""
    (entry,) = role_tasks("main.yml", "Kubernetes DaemonSet")
    entry["ansible.builtin.include_tasks"] = str(ROLE_TASKS / entry["ansible.builtin.include_tasks"])
    weave = {**_weave(tmp_path), "weave_kubernetes": value, "weave_kube_control_plane": value}
    results = run_tasks([entry], play_vars={"weave": weave})
    assert results and {r["event"] for r in results} == {"runner_on_skipped"}, results


# A sitecustomize for the modules' interpreter: every chmod and rename that lands on the password file, with what it
# would expose (the mode it sets, or the mode of the file renamed onto it) and whether that file has content.
AUDIT = """
import os, sys
def _hook(event, args):
    if event not in ("os.chmod", "os.rename") or not os.environ.get("WATCH"):
        return
    watch, log = os.environ["WATCH"], os.environ["WATCH_LOG"]
    try:
        if event == "os.chmod" and os.fsdecode(args[0]) == watch and isinstance(args[1], int):
            st = os.stat(watch)
            entry = ("chmod", oct(args[1] & 0o777), st.st_size)
        elif event == "os.rename" and os.fsdecode(args[1]) == watch:
            st = os.stat(args[0])
            entry = ("rename", oct(st.st_mode & 0o777), st.st_size)
        else:
            return
    except (OSError, TypeError):
        return
    with open(log, "a") as f:
        f.write(repr(entry) + "\\n")
sys.addaudithook(_hook)
"""


def test_the_password_is_never_in_a_file_others_can_read(run_tasks: RunTasks, tmp_path: Path) -> None:
    """config.yml's task on a first run (no file yet), then with a new password, then once more: at no chmod or
    rename onto the password file does it have content and a mode that lets group or others read it; the password
    is in no result; a run with nothing new changes nothing."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(AUDIT)
    root = tmp_path / "root"
    conf = root / "etc/weave-node"
    secret = tmp_path / "secret"
    secret.touch(mode=0o600)
    (task,) = role_tasks("config.yml", CONFIG_TASK)
    task["weave_node_files"]["root"] = str(root)
    task["environment"] = {"PYTHONPATH": str(hook), "WATCH": str(conf / "password"), "WATCH_LOG": str(tmp_path / "log")}
    weave = _env_weave(tmp_path, weave_password_file=str(secret), weave_previous_password_file=None,
                       weave_accept_unencrypted=False)  # fmt: skip
    results = []
    # text, then bytes that are no UTF-8 with a CR (copied as they are, as pyinfra copies them), then nothing new
    for data in (b"first password\n", b"\xa3second\r\npassword\r", None):
        if data:
            secret.write_bytes(data)
        (result,) = run_tasks([task], play_vars={"weave": weave})
        assert result["event"] == "runner_on_ok", result
        assert "first password" not in repr(result["res"]) and "second" not in repr(result["res"]), result
        results.append(result["res"])
        assert (conf / "password").read_bytes() == (data or b"\xa3second\r\npassword\r")
        assert stat.S_IMODE((conf / "password").stat().st_mode) == 0o600
    assert results[1]["changed_paths"] == [str(conf / "password")] and results[1]["reload"], results[1]
    assert results[2]["changed"] is False and not results[2]["reload"], results[2]
    log = [eval(line) for line in (tmp_path / "log").read_text().splitlines()]  # noqa: S307 - our own repr()s
    assert log, "the audit hook saw nothing: the test does not test anything"
    exposed = [e for e in log if e[2] > 0 and int(e[1], 8) & 0o077]
    assert not exposed, log


HANDOVER_TASKS = ("Is the unit installed?", "IPAM hand-over to a peer (the state goes)", "IPAM hand-over, what it did")


def _handover_tasks(tmp_path: Path, node: HandoverHost, unit: bool, **env: str) -> list[dict[str, Any]]:
    """remove.yml's hand-over tasks, the unit's path under tmp_path, the shell step against handover.py's fakes
    (tests/deploy/conftest.py: HandoverHost)."""
    unit_path = tmp_path / "weave-node.service"
    if unit:
        unit_path.write_text("[Unit]\n")
    stat_task, shell_task, report_task = role_tasks("remove.yml", *HANDOVER_TASKS)
    stat_task["ansible.builtin.stat"]["path"] = str(unit_path)
    shell_task["environment"] = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "CALLS": str(node.calls), **env}
    return [stat_task, shell_task, report_task]


def _handover_weave(tmp_path: Path, node: HandoverHost, remove_state: Any) -> dict[str, Any]:
    script = handover.script(str(node.prefix), str(node.state), 7, (str(node.env_file),))
    return _weave(
        tmp_path,
        weave_remove_state=remove_state,
        weave_ipam_reclaim_after=300,
        weave_prefix=str(node.prefix),
        handover_script=script,
    )


@pytest.mark.parametrize(
    ("remove_state", "unit", "runs"),
    [(True, True, True), ("true", True, True), (False, True, False), ("false", True, False), (True, False, False)],
    ids=["state-unit", "state-unit-string", "no-state", "no-state-string", "state-no-unit"],
)
def test_removal_hands_the_space_over_only_with_the_state_and_the_unit(
    run_tasks: RunTasks, tmp_path: Path, remove_state: Any, unit: bool, runs: bool
) -> None:
    node = HandoverHost(tmp_path)
    tasks = _handover_tasks(tmp_path, node, unit, LEAVE_OUT=HANDED)
    _, shell, report = run_tasks(tasks, play_vars={"weave": _handover_weave(tmp_path, node, remove_state)})
    if not runs:
        assert shell["event"] == report["event"] == "runner_on_skipped", (shell, report)
        assert not node.calls.exists()
        return
    assert shell["event"] == "runner_on_ok" and shell["res"]["changed"] is False, shell
    assert f"ipam leave --force --wait {handover.LEAVE_WAIT}" in node.calls.read_text()
    assert report["event"] == "runner_on_ok", report
    assert (report["res"]["changed"], report["res"]["msg"]) == (True, HANDED)
    assert not report["res"].get("warnings"), report


def test_a_hand_over_that_fails_is_a_warning_and_the_removal_goes_on(run_tasks: RunTasks, tmp_path: Path) -> None:
    node = HandoverHost(tmp_path)
    tasks = _handover_tasks(
        tmp_path,
        node,
        True,
        NOT_READY="the router is not ready after 7 s: 0 of 1 expected peer(s) reachable",
        LEAVE_ERROR="no reachable peer to hand our 1024 addresses to",
        STATUS_JSON=STATUS,
    )
    _, shell, report = run_tasks(tasks, play_vars={"weave": _handover_weave(tmp_path, node, True)})
    assert shell["event"] == "runner_on_ok", shell  # failed_when: false
    assert report["event"] == "runner_on_ok" and report["res"]["changed"] is False, report
    (warning,) = report["res"]["warnings"]
    assert warning.startswith("localhost: the IPAM address space was not handed over to a peer: no reachable peer")
    assert "run `weave-node ipam rmpeer 0a:00:00:00:00:03` on a live host" in warning
    assert "300 s after this host is gone" in warning  # weave_ipam_reclaim_after


@pytest.mark.parametrize(
    ("extravars", "message"),
    [
        ({"weave_remove_state": "maybe"}, "node1: weave_remove_state must be true or false"),
        ({"weave_remove_state": "true", "weave_ipam_reclaim_after": "soon"}, "node1: weave_ipam_reclaim_after must"),
    ],
)
def test_removal_settings_refuse_what_the_removal_cannot_use(
    run_tasks: RunTasks, extravars: dict[str, str], message: str
) -> None:
    (result,) = run_tasks(
        [{"name": "Settings", "weave_node_settings": {"validate": False}}],
        host_vars={"node1": {}},
        extravars=extravars,
    )
    assert result["event"] == "runner_on_failed", result
    assert f"invalid weave-node settings: {message}" in result["res"]["msg"]


def test_removal_settings_carry_the_hand_over_script(run_tasks: RunTasks) -> None:
    (result,) = run_tasks(
        [{"name": "Settings", "weave_node_settings": {"validate": False}}],
        host_vars={"node1": {"weave_prefix": "/srv/wn", "weave_health_timeout": 30}},
        extravars={"weave_remove_state": "true"},
    )
    weave = result["res"]["ansible_facts"]["weave"]
    assert weave["handover_script"] == handover.script("/srv/wn", "/var/lib/weave-node", 30)


@pytest.mark.parametrize(("running", "allowed", "failed"), [("0.3.0", False, True), ("0.3.0", True, False),
                                                            ("0.2.0", False, False), (None, False, False)])  # fmt: skip
@pytest.mark.parametrize("how", ["dist-info", "command"])
def test_the_role_refuses_a_downgrade_as_pyinfra_does(  # noqa: PLR0917 - pytest's parameters
    run_tasks: RunTasks, tmp_path: Path, running: str | None, allowed: bool, failed: bool, how: str
) -> None:
    """main.yml's check step: the version the host runs from its venv's distribution (no Python start) or, without
    one, from `weave-node --version`; refused with pyinfra's message; `installed` only with the same wheelhouse."""
    from weave_node_deploy import versions

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "weave_node-0.2.0-py3-none-any.whl").write_bytes(b"")
    (wheels / "SHA256SUMS").write_text("the wheelhouse's sums\n")
    weave = _weave(tmp_path, weave_kubernetes=False, weave_allow_downgrade=allowed, weave_wheelhouse=str(wheels))
    venv = tmp_path / "prefix/venv"
    if running is not None and how == "dist-info":
        (venv / f"lib/python3.11/site-packages/weave_node-{running}.dist-info").mkdir(parents=True)
    elif running is not None:
        _script(venv / "bin/weave-node", f"echo 'weave-node {running}'")
    if running == "0.2.0":
        (venv / ".weave-node-wheels").write_text("the wheelhouse's sums\n")
    (task,) = role_tasks(
        "main.yml", "What this host runs (no downgrade unless allowed) and whether the runtime is installed"
    )
    (result,) = run_tasks([task], play_vars={"weave": weave})
    assert (result["event"] == "runner_on_failed") is failed, result
    if failed:
        assert result["res"]["msg"] == versions.downgrade(
            "localhost", "0.3.0", "weave_node-0.2.0-py3-none-any.whl", False
        )
    else:
        assert result["res"]["installed"] is (running == "0.2.0"), result


CNI_TASK = "CNI directories, Debian's loopback, portmap and bandwidth plugins, network configuration list"


def test_the_cni_files_are_written_once_checked_first_and_never_over_a_real_plugin(
    run_tasks: RunTasks, tmp_path: Path
) -> None:
    """cni.yml's files task: check mode writes nothing; a run writes the directories, Debian's plugins' links and the
    list; a second changes nothing; a changed mode and a deleted link are repaired; a real binary where a link
    goes fails the task naming it, and the list (written last) is not written."""
    from weave_node_deploy import host_files

    root = tmp_path / "root"
    (task,) = role_tasks("cni.yml", CNI_TASK)
    task["weave_node_files"]["root"] = str(root)
    weave = _weave(tmp_path, weave_cni_bin_dir="/opt/cni/bin", weave_cni_conf_dir="/etc/cni/net.d",
                   weave_cni_version="1.1.0", weave_hairpin=False, weave_bandwidth=False)  # fmt: skip
    conflist = root / "etc/cni/net.d/10-weave.conflist"

    def run(**play: Any) -> dict[str, Any]:
        (result,) = run_tasks([task], play_vars={"weave": weave}, play=play)
        return result

    dry = run(check_mode=True, diff=True)
    assert dry["event"] == "runner_on_ok" and dry["res"]["changed"] is True, dry
    (diff,) = dry["res"]["diff"]  # (--diff: what the list would be)
    assert (diff["after_header"], diff["before"], diff["after"]) == (str(conflist), "", host_files.conflist(weave))
    assert not root.exists()
    first = run()
    assert first["res"]["changed"] is True and len(first["res"]["changed_paths"]) == 6, first
    assert conflist.read_text() == host_files.conflist(weave)
    assert os.readlink(root / "opt/cni/bin/portmap") == "/usr/lib/cni/portmap"
    assert run()["res"]["changed"] is False
    conflist.chmod(0o600)
    (root / "opt/cni/bin/bandwidth").unlink()
    repaired = run()["res"]
    assert sorted(repaired["changed_paths"]) == sorted([str(root / "opt/cni/bin/bandwidth"), str(conflist)]), repaired
    assert stat.S_IMODE(conflist.stat().st_mode) == 0o644
    conflist.unlink()
    (root / "opt/cni/bin/loopback").unlink()
    (root / "opt/cni/bin/loopback").write_bytes(b"\x7fELF someone else's plugin")
    refused = run()
    assert refused["event"] == "runner_on_failed", refused
    assert "opt/cni/bin/loopback exists and is not a link" in refused["res"]["msg"], refused
    assert not conflist.exists()
    assert (root / "opt/cni/bin/loopback").read_bytes().startswith(b"\x7fELF")
