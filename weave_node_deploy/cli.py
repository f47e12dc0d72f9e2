"""`weave-node rollout`: one command for both engines, from one pyinfra inventory file.

    weave-node rollout --inventory inventory/lab.py                    # pyinfra (weave_node_deploy.rollout)
    weave-node rollout --engine ansible --inventory inventory/lab.py   # Ansible (weave_node_deploy/ansible/site.yml)
    weave-node rollout --retire node3 --inventory inventory/lab.py     # take node3 out of the cluster for good

The Ansible engine runs the playbook through ansible-runner with an inventory generated from the pyinfra one
(inventory.py), streams one line per change or failure, and exits non-zero naming each failed host, its
task and the reason. Settings are validated for every host before any host is touched (both engines).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weave_node_deploy import inventory as pyinfra_inventory
from weave_node_deploy import paths, wheelhouse

ANSIBLE = paths.ANSIBLE
BIN = Path(sys.executable).parent


def run(args: argparse.Namespace) -> int:
    data = {}
    for item in args.data:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"weave-node rollout: --data wants KEY=VALUE, not {item!r}", file=sys.stderr)
            return 2
        data[key] = value
    missing = _missing_tool(args.engine)
    if missing:
        print(f"weave-node rollout: {missing}", file=sys.stderr)
        return 2
    if getattr(args, "retire", None):
        return retire(args, data)
    if args.engine == "pyinfra":
        return _pyinfra(args, data)
    return _ansible(args, data)


def _missing_tool(engine: str) -> str | None:
    """What the engine needs and this Python lacks (the rollout extra), said before anything runs."""
    import importlib.util

    if engine == "ansible":
        if importlib.util.find_spec("ansible_runner") is None or importlib.util.find_spec("ansible") is None:
            return "--engine ansible needs ansible-core and ansible-runner: pip install 'weave-node[rollout]'"
    elif not (BIN / "pyinfra").exists():
        return f"the pyinfra engine needs pyinfra beside this Python ({BIN}): pip install 'weave-node[rollout]'"
    return None


def retire(args: argparse.Namespace, data: dict[str, str]) -> int:
    """`--retire node3`: (1) the removal on node3 with its state, so its router first hands its address space to a
    live peer (at once: no grace period, and only by node3 itself, so a live host's space is never taken); (2)
    the rollout on every other host with node3 in weave_retired: their peer lists lose it, applied live (no
    router restarts). Names not in the inventory are an error before any host is touched."""
    retired = _patterns(args.retire)
    try:
        names = list(pyinfra_inventory.load(args.inventory, override=pyinfra_inventory.parse_data(data)).hosts)
    except pyinfra_inventory.InventoryError as exc:
        print(f"weave-node rollout: {exc}", file=sys.stderr)
        return 2
    unknown = [n for n in retired if n not in names]
    if unknown or args.remove or args.limit:
        why = (
            f"--retire {', '.join(unknown)}: not in {args.inventory} (hosts: {', '.join(names)})"
            if unknown
            else "--retire goes with neither --remove nor --limit (it picks the hosts itself)"
        )
        print(f"weave-node rollout: {why}", file=sys.stderr)
        return 2
    rest = [n for n in names if n not in retired]
    if not rest:
        print("weave-node rollout: --retire would leave no host: use --remove to take the whole cluster away",
              file=sys.stderr)  # fmt: skip
        return 2
    # One host after another: each hand-over is confirmed before the next starts, so no space is ever handed to a
    # host that is itself leaving at that moment (what it received, it hands on when its own turn comes).
    code = 0
    for name in retired:
        removal = copy.copy(args)
        removal.retire, removal.remove, removal.limit = None, True, name
        code = _step(removal, {**data, "weave_remove_state": "true"}) or code
    if code != 0:
        print(
            f"weave-node rollout: the removal on {', '.join(retired)} failed (above); the other hosts are updated "
            "anyway. If a retired host is gone for good, its space returns by `weave-node ipam rmpeer` on a live "
            "host, or by itself after --ipam-reclaim-after",
            file=sys.stderr,
        )
    others = copy.copy(args)
    others.retire, others.limit = None, ",".join(rest)
    code = _step(others, {**data, "weave_retired": json.dumps(retired)}) or code  # a list, whatever the names
    if code == 0:
        print(
            f"retired {', '.join(retired)}: weave-node is gone from it, its address space is with the other hosts, "
            f"and they no longer dial it. Now take {', '.join(retired)} out of {args.inventory} (a rollout with it "
            "still there would install it again)."
        )
    return code


def _step(args: argparse.Namespace, data: dict[str, str]) -> int:
    if args.engine == "ansible":
        return _ansible(args, data)
    cmd, env = pyinfra_command(args, data)
    return subprocess.run(cmd, env=env, check=False).returncode


def _pyinfra(args: argparse.Namespace, data: dict[str, str]) -> int:
    cmd, env = pyinfra_command(args, data)
    os.execve(cmd[0], cmd, env)  # noqa: S606 - pyinfra's own output and exit code


def pyinfra_command(args: argparse.Namespace, data: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """pyinfra's command line and environment. It runs in the caller's directory (relative paths in the inventory
    and --data mean what they mean to pyinfra) and runs this package's deploy function (`weave_node_deploy.rollout`
    or `.removal`: pyinfra imports it, from the checkout or the installed package alike). pyinfra's --limit takes
    one pattern each: `--limit a,b` becomes two."""
    deploy = "weave_node_deploy.removal" if args.remove else "weave_node_deploy.rollout"
    cmd = [str(BIN / "pyinfra"), "-y", args.inventory, deploy]
    for pattern in _patterns(args.limit):
        cmd += ["--limit", pattern]
    for key, value in data.items():
        cmd += ["--data", f"{key}={value}"]
    env = dict(os.environ)
    if wheelhouse.source_tree() is not None:  # a checkout, perhaps not installed: pyinfra imports it from there
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(paths.PACKAGE.parent), env.get("PYTHONPATH", "")) if p)
    return cmd, env


def _patterns(limit: str | None) -> list[str]:
    return [p.strip() for p in (limit or "").split(",") if p.strip()]


@dataclass
class Progress:
    """ansible-runner events -> one line per change or failure; the failures for the summary."""

    out: Callable[[str], None] = print
    failures: list[tuple[str, str, str | None]] = field(default_factory=list)  # host, task, reason (None: hidden)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # host, warning (repeated after the recap)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        host, task = data.get("host", ""), data.get("task", "")
        res = data.get("res", {}) or {}
        hidden = "censored" in res  # no_log: ansible-runner keeps nothing of the result, not even `changed`
        item = f" ({_item(res)})" if "item" in res else ""
        # Our own actions' messages are written for the operator (the IPAM hand-over says what it handed to whom).
        ours = str(data.get("task_action", "")).startswith("weave_node_")
        note = f": {res['msg']}" if ours and res.get("msg") else ""
        if kind.startswith("runner_"):
            for warning in res.get("warnings") or []:
                text = str(warning).removeprefix(f"{host}: ")
                self.warnings.append((host, text))
                self.out(f"  {host}: WARNING  {text}")
        if kind == "playbook_on_play_start":
            self.out(f"play: {data.get('play', '')}")
        elif kind in ("runner_on_ok", "runner_item_on_ok") and _changed(event, res):
            if kind == "runner_item_on_ok" or "results" not in res:
                self.out(f"  {host}: changed{f' {HIDDEN}' if hidden else ''}  {task}{item}{note}")
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            reason = None if hidden else _reason(res)
            what = "UNREACHABLE" if kind == "runner_on_unreachable" else "FAILED"
            self.failures.append((host, task, reason))
            self.out(f"  {host}: {what} {HIDDEN}  {task}" if reason is None else f"  {host}: {what}  {task}: {reason}")
        elif kind == "playbook_on_stats":
            for key in ("ok", "changed", "failures", "dark", "skipped"):
                for h, n in (data.get(key) or {}).items():
                    self.stats.setdefault(h, {})[key] = n
        return True  # keep the event in the artifacts


def _item(res: dict[str, Any]) -> str:
    item = res.get("item")
    return str(item.get("key", item) if isinstance(item, dict) else item)


HIDDEN = "(output hidden)"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What Ansible says when the command's own output says why.
GENERIC = ("non-zero return code", "module failure", "see stdout/stderr")
REASON_LINES, REASON_CHARS = 2, 400


def _changed(event: dict[str, Any], res: dict[str, Any]) -> bool:
    if "censored" not in res:
        return bool(res.get("changed"))
    # The censored result lost `changed`; the default callback's line for the event still says it.
    return bool(re.search(r"^changed: \[", ANSI.sub("", str(event.get("stdout") or "")), re.M))


def _tail(text: Any) -> str:
    """The last non-empty lines of a command's output: where a failure says why."""
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return " / ".join(lines[-REASON_LINES:])


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= REASON_CHARS else "..." + text[-(REASON_CHARS - 3) :]


def _reason(res: dict[str, Any]) -> str:
    if "censored" in res:
        return HIDDEN
    failed_items = [r for r in res.get("results", []) if isinstance(r, dict) and r.get("failed")]
    if failed_items:
        return "; ".join(f"{_item(r)}: {_reason(r)}" for r in failed_items)
    msg = str(res.get("msg") or res.get("reason") or "").strip()
    output = next(
        (t for t in map(_tail, (res.get(k) for k in ("stderr", "module_stderr", "stdout", "module_stdout"))) if t),
        "",
    )
    if output and (not msg or msg.lower().startswith(GENERIC)):
        return _short(output)
    if output and output not in msg:
        return _short(f"{msg}: {output}")
    return _short(msg) if msg else "failed"


def _ansible(args: argparse.Namespace, data: dict[str, str]) -> int:
    import ansible_runner  # the control machine's rollout extra

    try:
        # --data is pyinfra's override data (typed as pyinfra types it), so it maps to Ansible like the inventory's
        # (ssh_* to ansible_*) and its relative paths, like the inventory's, are the caller's (to_ansible).
        inv = pyinfra_inventory.load(args.inventory, override=pyinfra_inventory.parse_data(data))
        ansible_inventory = pyinfra_inventory.to_ansible(inv, base=Path.cwd())
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
    for host, text in progress.warnings:
        print(f"weave-node rollout: {host}: WARNING: {text}", file=sys.stderr)
    if result.rc != 0 or progress.failures:
        for host, task, reason in progress.failures:
            why = f"failed {HIDDEN}" if reason is None else f"failed: {reason}"
            print(f"weave-node rollout: {host}: task {task!r} {why}", file=sys.stderr)
        if not progress.failures:
            print(f"weave-node rollout: ansible-playbook ended with {result.status} (rc {result.rc})", file=sys.stderr)
        return result.rc or 1
    print(f"rolled out to {len(progress.stats)} host(s) with Ansible in {elapsed:.1f} s")
    return 0
