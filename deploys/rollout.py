"""`weave-node rollout`: one command for both engines, from one pyinfra inventory file.

    weave-node rollout --inventory inventory/lab.py                    # pyinfra (deploys/weave_node.py)
    weave-node rollout --engine ansible --inventory inventory/lab.py   # Ansible (deploys/ansible/site.yml)

The Ansible engine runs the playbook through ansible-runner with an inventory generated from the pyinfra one
(deploys/inventory.py), streams one line per change or failure, and exits non-zero naming each failed host, its
task and the reason. Settings are validated for every host before any host is touched (both engines).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploys import inventory as pyinfra_inventory

REPO = Path(__file__).resolve().parent.parent
ANSIBLE = REPO / "deploys" / "ansible"
BIN = Path(sys.executable).parent


def run(args: argparse.Namespace) -> int:
    data = {}
    for item in args.data:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"weave-node rollout: --data wants KEY=VALUE, not {item!r}", file=sys.stderr)
            return 2
        data[key] = value
    if args.engine == "pyinfra":
        return _pyinfra(args, data)
    return _ansible(args, data)


def _pyinfra(args: argparse.Namespace, data: dict[str, str]) -> int:
    deploy = "deploys/remove.py" if args.remove else "deploys/weave_node.py"
    cmd = [str(BIN / "pyinfra"), "-y", args.inventory, deploy]
    if args.limit:
        cmd += ["--limit", args.limit]
    for key, value in data.items():
        cmd += ["--data", f"{key}={value}"]
    os.execv(cmd[0], cmd)  # noqa: S606 - pyinfra's own output and exit code


@dataclass
class Progress:
    """ansible-runner events -> one line per change or failure; the failures for the summary."""

    out: Callable[[str], None] = print
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # host, task, reason
    stats: dict[str, dict[str, int]] = field(default_factory=dict)

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        host, task = data.get("host", ""), data.get("task", "")
        res = data.get("res", {}) or {}
        item = f" ({_item(res)})" if "item" in res else ""
        if kind == "playbook_on_play_start":
            self.out(f"play: {data.get('play', '')}")
        elif res.get("changed") and (kind == "runner_item_on_ok" or (kind == "runner_on_ok" and "results" not in res)):
            self.out(f"  {host}: changed  {task}{item}")
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            reason = _reason(res)
            what = "UNREACHABLE" if kind == "runner_on_unreachable" else "FAILED"
            self.failures.append((host, task, reason))
            self.out(f"  {host}: {what}  {task}: {reason}")
        elif kind == "playbook_on_stats":
            for key in ("ok", "changed", "failures", "dark", "skipped"):
                for h, n in (data.get(key) or {}).items():
                    self.stats.setdefault(h, {})[key] = n
        return True  # keep the event in the artifacts


def _item(res: dict[str, Any]) -> str:
    item = res.get("item")
    return str(item.get("key", item) if isinstance(item, dict) else item)


def _reason(res: dict[str, Any]) -> str:
    if res.get("censored"):
        return str(res["censored"])
    failed_items = [r for r in res.get("results", []) if isinstance(r, dict) and r.get("failed")]
    if failed_items:
        return "; ".join(f"{_item(r)}: {_reason(r)}" for r in failed_items)
    for key in ("msg", "stderr", "stdout", "reason"):
        text = str(res.get(key) or "").strip()
        if text:
            return text.splitlines()[-1] if key in ("stderr", "stdout") else text
    return "failed"


def _ansible(args: argparse.Namespace, data: dict[str, str]) -> int:
    import ansible_runner  # the control machine's rollout extra

    try:
        inv = pyinfra_inventory.load(args.inventory)
        ansible_inventory = pyinfra_inventory.to_ansible(inv)
    except pyinfra_inventory.InventoryError as exc:
        print(f"weave-node rollout: {exc}", file=sys.stderr)
        return 2
    private = Path(tempfile.mkdtemp(prefix="weave-node-ansible-"))
    progress = Progress()
    start = time.monotonic()
    try:
        result = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(ANSIBLE),
            playbook="remove.yml" if args.remove else "site.yml",
            inventory=ansible_inventory,
            extravars=data,
            limit=args.limit,
            envvars={
                "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
                "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            },
            event_handler=progress,
            quiet=True,
        )
    finally:
        if args.keep_artifacts:
            print(f"ansible-runner artifacts: {private}")
        else:
            shutil.rmtree(private, ignore_errors=True)
    elapsed = time.monotonic() - start
    for host, counts in sorted(progress.stats.items()):
        print(
            f"{host}: ok={counts.get('ok', 0)} changed={counts.get('changed', 0)} "
            f"failed={counts.get('failures', 0)} unreachable={counts.get('dark', 0)}"
        )
    if result.rc != 0 or progress.failures:
        for host, task, reason in progress.failures:
            print(f"weave-node rollout: {host}: task {task!r} failed: {reason}", file=sys.stderr)
        if not progress.failures:
            print(f"weave-node rollout: ansible-playbook ended with {result.status} (rc {result.rc})", file=sys.stderr)
        return result.rc or 1
    print(f"rolled out to {len(progress.stats)} host(s) with Ansible in {elapsed:.1f} s")
    return 0
