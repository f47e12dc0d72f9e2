"""One inventory for both engines: pyinfra inventory files read as pyinfra does, turned into Ansible inventories;
the shared settings (weave_node_deploy/settings.py) and the rollout's event stream (weave_node_deploy/cli.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO
from weave_node_deploy import inventory, settings
from weave_node_deploy.cli import Progress
from weave_node_deploy.validate import InvalidData

pytestmark = pytest.mark.unit


def _write(tmp_path: Path, text: str, name: str = "inv.py") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_example_inventory_becomes_ansible_hosts_with_the_same_settings() -> None:
    inv = inventory.load(REPO / "inventory/example.py", cwd=REPO)
    assert list(inv.groups) == ["nodes", "example"] and len(inv.hosts) == 3  # pyinfra's group named after the file
    doc = inventory.to_ansible(inv)
    c = doc["all"]["hosts"]["node-c.example.internal"]
    assert c == {
        "ansible_user": "root",
        "weave_ipalloc_range": "10.32.0.0/12",
        "weave_address": "10.0.0.13",
        "weave_kube_control_plane": True,
    }
    assert list(doc["all"]["children"]["nodes"]["hosts"]) == [
        "node-a.example.internal",
        "node-b.example.internal",
        "node-c.example.internal",
    ]


def test_connection_data_maps_and_host_data_beats_group_data(tmp_path: Path) -> None:
    (tmp_path / "group_data").mkdir()
    _write(tmp_path / "group_data", "weave_conn_limit = 7\nweave_mtu = 1400\n", "all.py")
    _write(tmp_path / "group_data", "weave_mtu = 1300\n", "web.py")
    path = _write(
        tmp_path,
        "import os\n"
        "web = ([('w1', {'ssh_hostname': '10.0.0.1', 'ssh_port': 2222, 'weave_mtu': 1200}), 'w2'],"
        " {'ssh_user': 'admin', 'ssh_config_file': '/x y/cfg', 'ssh_strict_host_key_checking': 'yes'})\n"
        "_private = ['not-a-group']\n",
    )
    inv = inventory.load(path, cwd=tmp_path)
    assert list(inv.groups) == ["web", "inv"]  # `os` and `_private` are not groups; `inv` is the file's
    w1 = inventory.host_vars("w1", inv.hosts["w1"])
    assert w1["ansible_host"] == "10.0.0.1" and w1["ansible_port"] == 2222 and w1["ansible_user"] == "admin"
    assert w1["ansible_ssh_common_args"] == "-F '/x y/cfg' -o StrictHostKeyChecking=yes"
    assert (w1["weave_mtu"], w1["weave_conn_limit"]) == (1200, 7)
    assert inventory.host_vars("w2", inv.hosts["w2"])["weave_mtu"] == 1300
    script = inventory.to_script(inv)
    assert script["web"] == {"hosts": ["w1", "w2"]} and set(script["_meta"]["hostvars"]) == {"w1", "w2"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodes = []\n", "no hosts"),
        ("nodes = [('h', {'ssh_paramiko_connect_kwargs': {}})]\n", "no Ansible equivalent"),
        ("nodes = ['@docker/debian']\n", "only SSH hosts"),
        ("raise SystemExit('lab is not up')\n", "lab is not up"),
    ],
)
def test_inventories_ansible_cannot_take_fail_clearly(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(inventory.InventoryError, match=message):
        inventory.to_ansible(inventory.load(_write(tmp_path, text)))


def test_the_dynamic_inventory_script_prints_json_and_an_empty_inventory_when_the_lab_is_down(tmp_path: Path) -> None:
    script = REPO / "weave_node_deploy/ansible/inventory.py"
    out = subprocess.run(
        [sys.executable, str(script), "--list"],
        env={"WEAVE_INVENTORY": str(REPO / "inventory/example.py")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["nodes"]["hosts"][0] == "node-a.example.internal"
    down = subprocess.run(
        [sys.executable, str(script), "--list"],
        env={"WEAVE_INVENTORY": str(_write(tmp_path, "raise SystemExit('lab x is not up')\n"))},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(down.stdout) == {"_meta": {"hostvars": {}}} and "lab x is not up" in down.stderr


def test_settings_are_typed_defaulted_and_validated_once_for_both_engines() -> None:
    hosts = [("a", {"weave_address": "10.0.0.1"}), ("b", {"weave_address": "10.0.0.2", "weave_mtu": "1400"})]
    b = settings.effective("b", hosts[1][1], hosts)
    assert b["weave_mtu"] == 1400 and b["weave_peers"] == ["10.0.0.1"] and b["weave_hairpin"] is True
    assert settings.effective("a", {"weave_address": "10.0.0.1", "weave_mtu": ""}, hosts)["weave_mtu"] is None
    assert settings.effective("a", {"weave_address": "10.0.0.1", "weave_peers": "1.2.3.4 5.6.7.8"}, hosts)[
        "weave_peers"
    ] == ["1.2.3.4", "5.6.7.8"]
    with pytest.raises(InvalidData, match="a: weave_ipalloc_range"):
        settings.effective("a", {"weave_address": "10.0.0.1", "weave_ipalloc_range": "10.0.0.0/8"}, hosts)


def test_progress_names_the_failed_host_task_and_reason() -> None:
    lines: list[str] = []
    progress = Progress(out=lines.append)
    events = [
        {"event": "playbook_on_play_start", "event_data": {"play": "weave-node"}},
        {"event": "runner_on_ok", "event_data": {"host": "n1", "task": "Unit file", "res": {"changed": True}}},
        {"event": "runner_on_ok", "event_data": {"host": "n2", "task": "Unit file", "res": {"changed": False}}},
        {
            "event": "runner_on_failed",
            "event_data": {"host": "n2", "task": "Install", "res": {"stderr": "pip: one\nno space left on device"}},
        },
        {
            "event": "runner_on_failed",
            "event_data": {"host": "n3", "task": "Password", "res": {"censored": "the output has been hidden"}},
            "stdout": 'fatal: [n3]: FAILED! => {"censored": "the output has been hidden", "changed": false}',
        },
        {"event": "runner_on_failed", "event_data": {"host": "n1", "task": "probe", "ignore_errors": True}},
        {"event": "playbook_on_stats", "event_data": {"ok": {"n1": 3}, "changed": {"n1": 1}, "failures": {"n2": 1}}},
    ]
    for event in events:
        assert progress(event) is True
    assert progress.failures == [
        ("n2", "Install", "pip: one / no space left on device"),  # the last lines of its output
        ("n3", "Password", None),  # no_log: nothing to show
    ]
    assert lines[:2] == ["play: weave-node", "  n1: changed  Unit file"]
    assert "  n3: FAILED (output hidden)  Password" in lines
    assert progress.stats == {"n1": {"ok": 3, "changed": 1}, "n2": {"failures": 1}}


def test_progress_shows_warnings_and_what_our_own_actions_say() -> None:
    """The IPAM hand-over of a removal: what it handed to whom (the action's msg), or a warning with what to do
    (kept, to be repeated after the recap). Other modules' messages stay out."""
    lines: list[str] = []
    progress = Progress(out=lines.append)
    said = "handed 1024 addresses to peer 0a:00:00:00:00:01 (node1)"
    warning = "the IPAM address space was not handed over to a peer: no reachable peer"
    events = [
        {
            "event": "runner_on_ok",
            "event_data": {
                "host": "n2",
                "task": "IPAM hand-over, what it did",
                "task_action": "weave_node_handover",
                "res": {"changed": True, "msg": said},
            },
        },
        {
            "event": "runner_on_ok",
            "event_data": {
                "host": "n3",
                "task": "IPAM hand-over, what it did",
                "task_action": "weave_node_handover",
                "res": {"changed": False, "msg": warning, "warnings": [f"n3: {warning}"]},
            },
        },
        {
            "event": "runner_on_ok",
            "event_data": {
                "host": "n3",
                "task": "Unit file",
                "task_action": "ansible.builtin.file",
                "res": {"changed": True, "msg": "file removed"},
            },
        },
    ]
    for event in events:
        assert progress(event) is True
    assert lines == [
        f"  n2: changed  IPAM hand-over, what it did: {said}",
        f"  n3: WARNING  {warning}",
        "  n3: changed  Unit file",
    ]
    assert progress.warnings == [("n3", warning)]


@pytest.mark.parametrize(
    ("res", "reason"),
    [
        # command/shell: Ansible's msg is generic, the command's own output says why
        (
            {
                "msg": "non-zero return code",
                "rc": 1,
                "stderr": "",
                "stdout": "x\n\nsha256sum: WARNING: 1 did NOT match\n",
            },
            "x / sha256sum: WARNING: 1 did NOT match",
        ),
        (
            {
                "msg": "non-zero return code",
                "stderr": "a\nb\nmodprobe: FATAL: Module vxlan not found\n",
                "stdout": "ok",
            },
            "b / modprobe: FATAL: Module vxlan not found",
        ),
        (
            {
                "msg": "MODULE FAILURE\nSee stdout/stderr for the exact error",
                "module_stderr": "Traceback\nKeyError: 'x'",
            },
            "Traceback / KeyError: 'x'",
        ),
        # a module's own message is the reason; output it does not contain is added
        ({"msg": "Destination directory /etc/x does not exist"}, "Destination directory /etc/x does not exist"),
        (
            {"msg": "apt failed", "stderr": "E: Unable to locate package foo"},
            "apt failed: E: Unable to locate package foo",
        ),
        (
            {"msg": "E: Unable to locate package foo", "stderr": "E: Unable to locate package foo"},
            "E: Unable to locate package foo",
        ),
        (
            {"unreachable": True, "msg": "ssh: connect to host 198.18.0.9 port 22: No route to host"},
            "ssh: connect to host 198.18.0.9 port 22: No route to host",
        ),
        (
            {"results": [{"item": "a", "failed": False}, {"item": "b", "failed": True, "msg": "no such file"}]},
            "b: no such file",
        ),
        ({}, "failed"),
    ],
)
def test_a_failure_reason_is_what_the_command_said(res: dict[str, object], reason: str) -> None:
    from weave_node_deploy.cli import _reason

    assert _reason(res) == reason


def test_a_long_reason_keeps_its_end() -> None:
    from weave_node_deploy.cli import REASON_CHARS, _reason

    reason = _reason({"msg": "non-zero return code", "stderr": "x" * 1000 + " the end"})
    assert len(reason) == REASON_CHARS and reason.startswith("...") and reason.endswith("x the end")


def test_hidden_results_say_changed_or_failed_and_nothing_else() -> None:
    """ansible-runner replaces a no_log result with {"censored": ...} (even `changed` goes); the event's display
    line still says "changed"."""
    lines: list[str] = []
    progress = Progress(out=lines.append)
    hidden = {"censored": "the output has been hidden due to the fact that 'no_log: true' was specified"}
    events = [
        {
            "event": "runner_on_ok",
            "event_data": {"host": "n1", "task": "Password", "res": hidden},
            "stdout": "\x1b[0;33mchanged: [n1]\x1b[0m",
        },
        {
            "event": "runner_on_ok",
            "event_data": {"host": "n2", "task": "Password", "res": hidden},
            "stdout": "\x1b[0;32mok: [n2]\x1b[0m",
        },
        {
            "event": "runner_item_on_ok",
            "event_data": {"host": "n1", "task": "Secrets", "res": hidden},
            "stdout": "changed: [n1] => (item=(censored due to no_log))",
        },
        {"event": "runner_on_ok", "event_data": {"host": "n1", "task": "Secrets", "res": hidden}, "stdout": ""},
        {
            "event": "runner_on_failed",
            "event_data": {"host": "n2", "task": "Password", "res": hidden},
            "stdout": "fatal: [n2]: FAILED! => {...}",
        },
    ]
    for event in events:
        progress(event)
    assert lines == [
        "  n1: changed (output hidden)  Password",
        "  n1: changed (output hidden)  Secrets",
        "  n2: FAILED (output hidden)  Password",
    ]
    assert progress.failures == [("n2", "Password", None)]
    assert not [line for line in lines if "censored" in line or "hidden due to" in line]


# Inventories whose data comes from everywhere pyinfra takes it: inline group data, group_data/ in the working
# directory and beside the file, hosts in several groups, an explicit `all`, the file's own group.
INVENTORIES = {
    "groups": (
        "import os\n"
        "web = ([('w1', {'weave_mtu': 1201, 'k': 'w1-in-web'}), 'both', 'w2'],"
        " {'weave_mtu': 1300, 'g': 'web', 'w': 1})\n"
        "db = (['both', ('d1', {'k': 'd1'}), ('w1', {'k': 'w1-in-db'})], {'g': 'db', 'd': 1, 'weave_mtu': 1400})\n"
        "solo = ['s1']\n"
        "_hidden = ['x1']\n"
    ),
    "explicit-all": (
        "web = ([('w1', {'k': 'web'}), 'only-in-web'], {'g': 'web'})\n"
        "all = ([('w1', {'k': 'all'}), 'a1'], {'g': 'all', 'a': 1})\n"
    ),
    "file-group-defined": "inv = (['h1', 'h2'], {'g': 'inline-inv'})\nweb = ['h2']\n",
}
GROUP_DATA = {
    "cwd": {
        "all.py": "g = 'cwd-all'\na_cwd = 1\nweave_mtu = 1100\n",
        "web.py": "g = 'cwd-web'\nc = 'cwd'\n",
        "inv.py": "f = 'cwd-inv'\nfrom pathlib import Path\n",
    },
    "beside": {
        "web.py": "import json\ng = 'file-web'\n_single = 'kept'\n__dunder = 'dropped'\n",
        "db.py": "__all__ = ['g']\ng = 'file-db'\nnot_exported = 1\n",
        "all.py": "a = 'file-all'\n",
        "nogroup.py": "z = 1\n",
        "notes.txt": "not python\n",
    },
}


def _layout(tmp_path: Path, text: str) -> tuple[Path, Path]:
    cwd, beside = tmp_path / "cwd", tmp_path / "inventories"
    for folder, files in ((cwd, GROUP_DATA["cwd"]), (beside, GROUP_DATA["beside"])):
        (folder / "group_data").mkdir(parents=True)
        for name, content in files.items():
            (folder / "group_data" / name).write_text(content)
    return _write(beside, text, "inv.py"), cwd


# pyinfra's CLI package monkey-patches the whole process with gevent when imported: ask it in a child process.
PYINFRA_VIEW = """
import json, sys
from pyinfra.api import State
from pyinfra.context import ctx_state
from pyinfra_cli.inventory import make_inventory_from_files
from pyinfra_cli.util import parse_cli_arg

path, cwd, override, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
with ctx_state.use(State()):
    inv = make_inventory_from_files(path, override_data=override, cwd=cwd)
hosts = [[h.name, h.data.dict(), list(dict.fromkeys(h.groups))] for h in inv]
print(json.dumps({"hosts": hosts, "parsed": [parse_cli_arg(v) for v in values]}))
"""


def _pyinfra(path: Path, cwd: Path, override: dict[str, object], values: list[str] | None = None) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PYINFRA_VIEW, str(path), str(cwd), json.dumps(override), json.dumps(values or [])],
        capture_output=True,
        text=True,
        check=True,
    )
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def _pyinfra_view(path: Path, cwd: Path, override: dict[str, object]) -> dict[str, tuple[dict[str, object], list[str]]]:
    return {name: (data, groups) for name, data, groups in _pyinfra(path, cwd, override)["hosts"]}


@pytest.mark.parametrize("name", list(INVENTORIES))
@pytest.mark.parametrize("override", [{}, {"weave_mtu": 1500, "g": "override"}])
def test_hosts_data_and_groups_are_pyinfras_exactly(tmp_path: Path, name: str, override: dict[str, object]) -> None:
    path, cwd = _layout(tmp_path, INVENTORIES[name])
    theirs = _pyinfra_view(path, cwd, override)
    inv = inventory.load(path, cwd=cwd, override=override)
    ours = {host: (data, [g for g, names in inv.groups.items() if host in names]) for host, data in inv.hosts.items()}
    assert ours == theirs
    assert list(ours) == list(theirs)  # and in pyinfra's order


def test_the_precedence_spelled_out(tmp_path: Path) -> None:
    """What the parity test above pins down, readable: strongest first."""
    path, cwd = _layout(tmp_path, INVENTORIES["groups"])
    hosts = inventory.load(path, cwd=cwd).hosts
    # the host's own data beats every group's; from several groups, the group listed later in the file wins
    assert hosts["w1"]["k"] == "w1-in-db" and hosts["w1"]["weave_mtu"] == 1201
    # group_data/<group>.py beats the inline (hosts, data); group_data/ beside the file beats the cwd's
    assert hosts["w2"]["g"] == "file-web" and hosts["w1"]["g"] == "file-db"
    # every host is in the group named after the file (`inv`), listed after the file's groups
    assert hosts["s1"]["f"] == "cwd-inv" and inventory.load(path, cwd=cwd).groups["inv"][0] == "w1"
    # a host in two groups gets both groups' data; the later group's wins
    assert (hosts["both"]["w"], hosts["both"]["d"], hosts["both"]["weave_mtu"]) == (1, 1, 1400)
    # group_data/all.py is the weakest, under every group; single-underscore names are data, __dunder__ and imports
    # are not, __all__ says what a file exports
    assert (hosts["s1"]["weave_mtu"], hosts["s1"]["a_cwd"], hosts["s1"]["a"]) == (1100, 1, "file-all")
    assert hosts["both"]["_single"] == "kept" and "__dunder" not in hosts["both"] and "json" not in hosts["both"]
    assert "not_exported" not in hosts["d1"] and "Path" not in hosts["s1"]


def test_relative_paths_are_the_callers_as_pyinfra_reads_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(
        tmp_path,
        "nodes = [('n1', {'weave_address': '10.0.0.1', 'ssh_key': 'keys/id', 'ssh_config_file': 'lab/ssh config',"
        " 'weave_password_file': 'secret', 'ansible_ssh_private_key_file': '~/k', 'weave_prefix': 'opt'})]\n",
    )
    caller = tmp_path / "caller"
    caller.mkdir()
    monkeypatch.chdir(caller)
    inv = inventory.load(path, override=inventory.parse_data({"weave_wheelhouse": "dist/wheels"}))
    n1 = inventory.to_ansible(inv)["all"]["hosts"]["n1"]
    assert n1["ansible_ssh_private_key_file"] == str(Path("~/k").expanduser())  # given twice: Ansible's own wins
    assert n1["weave_password_file"] == f"{caller}/secret"
    assert n1["weave_wheelhouse"] == f"{caller}/dist/wheels"
    assert n1["ansible_ssh_common_args"] == f"-F '{caller}/lab/ssh config'"
    assert n1["weave_prefix"] == "opt"  # a path on the host, not here
    assert inventory.host_vars("n1", {"ssh_key": "/abs/id"}, base="/elsewhere")["ansible_ssh_private_key_file"] == (
        "/abs/id"
    )
    script = inventory.to_script(inv, base="/base")["_meta"]["hostvars"]["n1"]
    assert script["weave_password_file"] == "/base/secret"  # noqa: S105 - a path


def test_data_is_typed_as_pyinfra_types_it(tmp_path: Path) -> None:
    values = ["true", "False", "1400", "-3", '["10.0.0.1", "10.0.0.2"]', '{"a": 1}', "10.0.0.1", "", "1.5", "null"]
    parsed = _pyinfra(_write(tmp_path, "nodes = ['n1']\n"), tmp_path, {}, values)["parsed"]
    assert [inventory.parse_data({"k": v})["k"] for v in values] == parsed


def test_data_overrides_the_inventory_and_maps_to_ansible(tmp_path: Path) -> None:
    path = _write(tmp_path, "nodes = ([('n1', {'weave_mtu': 1300})], {'ssh_user': 'admin'})\n")
    inv = inventory.load(path, cwd=tmp_path, override=inventory.parse_data({"weave_mtu": "1400", "ssh_user": "root"}))
    n1 = inventory.to_ansible(inv, base=tmp_path)["all"]["hosts"]["n1"]
    assert (n1["weave_mtu"], n1["ansible_user"]) == (1400, "root")


def test_the_pyinfra_engine_splits_limit_and_runs_this_packages_deploy_from_anywhere() -> None:
    import argparse

    from weave_node_deploy.cli import pyinfra_command

    args = argparse.Namespace(inventory="mine.py", limit="node-a, nodes,,node-c", remove=False)
    cmd, env = pyinfra_command(args, {"weave_mtu": "1400"})
    assert cmd[1:] == [
        "-y",
        "mine.py",
        "weave_node_deploy.rollout",
        *["--limit", "node-a", "--limit", "nodes", "--limit", "node-c"],
        *["--data", "weave_mtu=1400"],
    ]
    assert env["PYTHONPATH"].split(":")[0] == str(REPO)
    cmd, _ = pyinfra_command(argparse.Namespace(inventory="mine.py", limit=None, remove=True), {})
    assert cmd[3:] == ["weave_node_deploy.removal"]
