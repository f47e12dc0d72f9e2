"""Real Ansible on this machine, confined to a temporary directory: tasks taken from the role's task files run with
`ansible_connection=local` against paths under tmp_path (never /etc, /opt), through ansible-runner, and their
results come back as one dict per task (or loop item)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import BIN, REPO
from weave_node_deploy import handover

ROLE = REPO / "weave_node_deploy/ansible/roles/weave_node"
ACTION_PLUGINS = ROLE / "action_plugins"

RunTasks = Callable[..., list[dict[str, Any]]]


def role_tasks(task_file: str, *names: str) -> list[dict[str, Any]]:
    """The tasks called `names` of roles/weave_node/tasks/<task_file>, as written there (blocks searched too)."""
    doc = yaml.safe_load((ROLE / "tasks" / task_file).read_text())

    def walk(tasks: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        for task in tasks:
            yield task
            yield from walk(task.get("block", []))

    found = {t["name"]: t for t in walk(doc) if "name" in t}
    missing = [n for n in names if n not in found]
    assert not missing, f"{task_file} has no task(s) {missing}: {sorted(found)}"
    return [found[n] for n in names]


@pytest.fixture
def run_tasks(tmp_path: Path) -> RunTasks:
    """run_tasks(tasks, vars=..., inventory_vars=..., hosts=...) -> the results of the play's tasks, in order:
    {"host", "task", "event", "res"}. Modules run on this machine as this user, with Ansible's own temporary
    files under tmp_path."""
    import ansible_runner

    home = tmp_path / "ansible-home"
    home.mkdir()

    def run(
        tasks: list[dict[str, Any]],
        *,
        play_vars: dict[str, Any] | None = None,
        host_vars: dict[str, dict[str, Any]] | None = None,
        extravars: dict[str, Any] | None = None,
        play: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        hosts = host_vars or {"localhost": {}}
        inventory = {
            "all": {
                "hosts": {
                    name: {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3", **v}
                    for name, v in hosts.items()
                }
            }
        }
        playbook = tmp_path / "play.yml"
        playbook.write_text(
            yaml.safe_dump(
                [{"hosts": "all", "gather_facts": False, "vars": play_vars or {}, "tasks": tasks, **(play or {})}],
                sort_keys=False,
            )
        )
        events: list[dict[str, Any]] = []

        def keep(event: dict[str, Any]) -> bool:
            kind = event.get("event", "")
            if kind.startswith("runner_") and kind.endswith(("_ok", "_failed", "_skipped", "_unreachable")):
                data = event["event_data"]
                res = data.get("res") or {}
                events.append({"host": data.get("host"), "task": data.get("task"), "event": kind, "res": res})
            return True

        private = tmp_path / f"runner-{len(list(tmp_path.glob('runner-*')))}"
        private.mkdir()
        result = ansible_runner.run(
            private_data_dir=str(private),
            playbook=str(playbook),
            inventory=inventory,
            extravars=extravars or {},
            envvars={
                "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "ANSIBLE_HOME": str(home),
                "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
                "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),
                "ANSIBLE_ACTION_PLUGINS": str(ACTION_PLUGINS),
                "ANSIBLE_LIBRARY": str(ROLE / "library"),
                "ANSIBLE_NOCOLOR": "1",
            },
            event_handler=keep,
            quiet=True,
        )
        stdout = (private / "artifacts").glob("*/stdout")
        text = "\n".join(p.read_text() for p in stdout)
        assert result.status in ("successful", "failed"), f"ansible-runner: {result.status}\n{text}"
        return events

    return run


Facts = dict[Any, Any]
Plan = list[tuple[str, list[str]]]
PlanDeploy = Callable[..., Plan]


@pytest.fixture
def pyinfra_plan(monkeypatch: pytest.MonkeyPatch) -> PlanDeploy:
    """pyinfra_plan(deploy, facts, data, *args, later=None) -> [(operation name, [commands])], in order: a @deploy
    planned for one host whose facts are given (facts[(FactClass name, path)] or facts[FactClass name], default
    None); no connection, nothing runs. Uploads show as `upload <dest>`, Python callbacks as `call <function>`.
    `later`: facts changed by the time the operations run (pyinfra generates an operation's commands then, from
    the facts of that moment; the deploy's own code ran with `facts`)."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.deploy import add_deploy
    from pyinfra.api.host import Host
    from pyinfra.context import ctx_host, ctx_state

    def plan(
        deploy: Callable[..., Any],
        facts: Facts,
        data: dict[str, Any] | None = None,
        *args: Any,
        later: Facts | None = None,
    ) -> Plan:
        current = dict(facts)

        def get_fact(self: Host, cls: type, *_: Any, **kwargs: Any) -> Any:
            key = (cls.__name__, kwargs.get("path"))
            return current[key] if key in current else current.get(cls.__name__)

        monkeypatch.setattr(Host, "get_fact", get_fact)
        inventory = Inventory((["node1"], data or {}))
        state = State(inventory, Config())
        host = inventory.get_host("node1")
        host.init(state)
        state.active_hosts.add(host)
        state.activated_hosts.add(host)
        add_deploy(state, deploy, *args, host=host)
        current.update(later or {})
        out: Plan = []
        with ctx_state.use(state), ctx_host.use(host):
            for op_hash in state.get_op_order():
                op = state.get_op_data_for_host(host, op_hash)
                commands = [_shown(c) for c in op.command_generator()]
                (name,) = state.get_op_meta(op_hash).names
                out.append((name.split(" | ", 1)[-1], commands))
        return out

    return plan


def _shown(command: Any) -> str:
    from pyinfra.api.command import FileUploadCommand, FunctionCommand

    if isinstance(command, FileUploadCommand):
        return f"upload {command.dest}"
    if isinstance(command, FunctionCommand):
        return f"call {command.function.__name__}"
    return str(command.get_raw_value())


FAKE_WEAVE_NODE = """\
echo "$*" >> "$CALLS"
case "$1 $2" in
  "status --wait")
    if [ -n "${NOT_READY:-}" ]; then echo "weave-node: error: $NOT_READY" >&2; exit 1; fi
    echo '{"ok": true}';;
  "status --json")
    if [ -z "${STATUS_JSON:-}" ]; then echo "weave-node: error: cannot reach the router's API" >&2; exit 1; fi
    echo "$STATUS_JSON";;
  "ipam leave")
    if [ -n "${LEAVE_ERROR:-}" ]; then echo "weave-node: error: $LEAVE_ERROR" >&2; exit 1; fi
    echo "$LEAVE_OUT";;
  *) echo "unexpected: $*" >&2; exit 2;;
esac
"""
FAKE_SYSTEMCTL = """\
echo "systemctl $*" >> "$CALLS"
case "$1" in
  is-active) [ "${ACTIVE:-yes}" = yes ];;
  start) if [ -n "${START_ERROR:-}" ]; then echo "$START_ERROR" >&2; exit 1; fi;;
  *) exit 2;;
esac
"""
HANDED = "handed 1024 addresses to peer 0a:00:00:00:00:01 (node1)"
STATUS = '{"router": {"name": "0a:00:00:00:00:03", "nickname": "node3"}}'


def _script(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


class HandoverHost:
    """A host for handover.py's script (weave_node_deploy): a prefix, a state directory and an env file under tmp_path,
    a fake systemctl and a fake weave-node (what they do: environment variables, see FAKE_*; every call is recorded in
    `calls`); the venv's python3 is this interpreter (weave_node importable, as in the installed venv)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.prefix, self.state = tmp_path / "opt", tmp_path / "state"
        self.env_file = tmp_path / "weave-node.env"
        self.calls = tmp_path / "calls"
        _script(self.prefix / "venv/bin/weave-node", FAKE_WEAVE_NODE)
        (self.prefix / "venv/bin/python3").symlink_to(sys.executable)
        _script(tmp_path / "bin/systemctl", FAKE_SYSTEMCTL)
        self.state.mkdir()

    def run(self, health_timeout: int = 7, **env: str) -> tuple[str, list[str]]:
        script = handover.script(
            str(self.prefix), str(self.state), health_timeout, (str(self.env_file), str(self.env_file) + ".missing")
        )
        done = subprocess.run(
            ["/bin/sh", "-c", script],
            env={"PATH": f"{self.tmp / 'bin'}:/usr/bin:/bin", "CALLS": str(self.calls), **env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done  # never fails: the removal goes on
        calls = self.calls.read_text().splitlines() if self.calls.exists() else []
        return done.stdout, calls
