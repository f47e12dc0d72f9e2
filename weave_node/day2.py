"""The day-2 commands: `weave-node rollout` (the deploys of a checkout, onto an inventory) and `weave-node reload`
(a changed peer list and passwords, applied to the running router)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from weave_node.core.facts import DEFAULT_STATUS_SOCKET


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _add_reload(sub)
    _add_rollout(sub)


def _add_reload(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rel = sub.add_parser(
        "reload",
        help="apply a changed peer list and passwords to the running router, without a restart",
        description="Reads WEAVE_PEERS, WEAVE_PASSWORD_FILE and WEAVE_PREVIOUS_PASSWORD_FILE from the env files "
        "(later files win; without --env-file, from this command's environment, as systemd's ExecReload gives it) "
        "and sends them to the router over its unix socket. New peers are dialled at once; connections made with "
        "a password no longer accepted are re-established.",
    )
    rel.add_argument("--env-file", action="append", default=[], metavar="FILE", help="an env file (repeatable)")
    rel.add_argument("--socket", help=f"the router's unix socket (default {DEFAULT_STATUS_SOCKET})")
    rel.add_argument("--wait", type=float, default=30.0, help="seconds to wait for a starting router (30)")
    rel.set_defaults(func=cmd_reload)


def _add_rollout(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser(
        "rollout",
        help="roll weave-node out onto an inventory's hosts with pyinfra or Ansible (the rollout extra)",
        description="Roll weave-node out (weave_node_deploy/cli.py): --engine pyinfra runs weave_node_deploy.rollout, "
        "--engine ansible runs weave_node_deploy/ansible/site.yml through ansible-runner; both from one pyinfra "
        "inventory, from any directory.",
    )
    r.add_argument("--engine", choices=("pyinfra", "ansible"), default="pyinfra", help="default: pyinfra")
    r.add_argument("--inventory", "-i", default="inventory/lab.py", help="a pyinfra inventory file")
    r.add_argument("--limit", help="only these hosts (comma-separated)")
    r.add_argument("--data", "-e", action="append", default=[], metavar="KEY=VALUE", help="a weave_* setting")
    r.add_argument("--remove", action="store_true", help="take weave-node away instead")
    r.add_argument(
        "--retire",
        metavar="HOSTS",
        help="take these inventory hosts out of the cluster for good (comma-separated): their address space goes to "
        "the others at once, and the others stop dialling them without a restart",
    )
    r.add_argument("--keep-artifacts", action="store_true", help="ansible: keep ansible-runner's artifacts")
    r.set_defaults(func=_cmd_rollout)


def _cmd_rollout(args: argparse.Namespace) -> int:
    """The rollout is weave_node_deploy's (control-machine code, in the same distribution; nodes never use it)."""
    import importlib

    from weave_node.core.errors import WeaveError

    try:
        rollout = importlib.import_module("weave_node_deploy.cli")
    except ImportError as exc:  # the rollout extra's tools (pyinfra, Ansible) are missing, or too old
        raise WeaveError(
            f"`weave-node rollout` needs the rollout extra: pip install 'weave-node[rollout]' ({exc})"
        ) from None
    code: int = rollout.run(args)
    return code


def cmd_reload(args: argparse.Namespace) -> int:
    """`weave-node reload`: the live settings to the router (unix socket only: it changes the router)."""
    from weave_node.api.client import ApiError, request
    from weave_node.config import strict_flag
    from weave_node.core.envfile import read_env_files

    env = read_env_files([Path(f) for f in args.env_file]) if args.env_file else dict(os.environ)
    body = {
        "peers": env.get("WEAVE_PEERS", "").split(),
        "password_file": env.get("WEAVE_PASSWORD_FILE") or None,
        "previous_password_file": env.get("WEAVE_PREVIOUS_PASSWORD_FILE") or None,
        "accept_unencrypted": strict_flag(env.get("WEAVE_ACCEPT_UNENCRYPTED"), "WEAVE_ACCEPT_UNENCRYPTED"),
    }
    sock = args.socket or env.get("WEAVE_STATUS_SOCKET") or DEFAULT_STATUS_SOCKET
    deadline = time.monotonic() + args.wait
    while not Path(sock).exists():  # a router still starting has no socket yet: it gets --wait seconds
        if time.monotonic() >= deadline:
            raise ApiError(f"no router socket at {sock} after {args.wait:g} s (is weave-node running?)")
        time.sleep(0.2)
    # Only over the unix socket (the client falls back to TCP only when the socket file is missing)
    doc = request("POST", "/reload", socket_path=sock, body=body, timeout=30.0)
    print(doc.get("summary", "done") if isinstance(doc, dict) else "done")
    return 0
