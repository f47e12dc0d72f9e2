"""One inventory for both engines: pyinfra inventory files read as pyinfra does, turned into Ansible inventories;
the shared settings (deploys/settings.py) and the rollout's event stream (deploys/rollout.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploys import inventory, settings
from deploys.rollout import Progress
from deploys.validate import InvalidData
from tests.helpers import REPO

pytestmark = pytest.mark.unit


def _write(tmp_path: Path, text: str, name: str = "inv.py") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_example_inventory_becomes_ansible_hosts_with_the_same_settings() -> None:
    inv = inventory.load(REPO / "inventory/example.py")
    assert list(inv.groups) == ["nodes"] and len(inv.hosts) == 3
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
    inv = inventory.load(path)
    assert list(inv.groups) == ["web"]  # `os` and `_private` are not groups
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
    script = REPO / "deploys/ansible/inventory.py"
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
        },
        {"event": "runner_on_failed", "event_data": {"host": "n1", "task": "probe", "ignore_errors": True}},
        {"event": "playbook_on_stats", "event_data": {"ok": {"n1": 3}, "changed": {"n1": 1}, "failures": {"n2": 1}}},
    ]
    for event in events:
        assert progress(event) is True
    assert progress.failures == [
        ("n2", "Install", "no space left on device"),
        ("n3", "Password", "the output has been hidden"),
    ]
    assert lines[:2] == ["play: weave-node", "  n1: changed  Unit file"]
    assert progress.stats == {"n1": {"ok": 3, "changed": 1}, "n2": {"failures": 1}}
