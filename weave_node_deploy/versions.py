"""Which version a host runs and which one the rollout brings (pure: both engines ask the host
`command()` and call `downgrade()` before they touch it).

Upgrades go forward one minor version at a time, host by host (a mixed cluster of N and N+1 works: the mesh
negotiates its protocol version per connection). A downgrade is refused unless `weave_allow_downgrade` says so:
it works while the IPAM state format stays the same (0.2.0 -> 0.1.0 does), and a router refuses a state of a newer
format at start (docs/day2.md)."""

from __future__ import annotations

import re
import shlex

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def command(prefix: str) -> str:
    """What both engines run on a host for the version it runs: the installed distribution's name (no Python
    start: a 20-host re-run pays one per host otherwise), or what `weave-node --version` says. Prints one line,
    empty when nothing is installed (parse() reads either)."""
    venv = shlex.quote(f"{prefix}/venv")
    return (
        f"v=$(cd {venv}/lib/python3*/site-packages 2>/dev/null && ls -d weave_node-*.dist-info 2>/dev/null); "
        f'[ -n "$v" ] || v=$({venv}/bin/weave-node --version 2>/dev/null); echo $v'
    )


def parse(text: str | None) -> tuple[int, int, int] | None:
    """`weave-node 0.2.0` (or a wheel's file name) -> (0, 2, 0); None if there is none (not installed)."""
    found = _VERSION.search(text or "")
    return (int(found[1]), int(found[2]), int(found[3])) if found else None


def wheel_version(wheel_name: str) -> tuple[int, int, int] | None:
    """weave_node-0.2.0-py3-none-any.whl -> (0, 2, 0)."""
    parts = wheel_name.split("-")
    return parse(parts[1]) if len(parts) > 1 else None


def downgrade(host: str, installed_text: str | None, wheel_name: str, allowed: bool) -> str | None:
    """The error when this rollout would install an older version than `host` runs (and it is not allowed)."""
    installed, new = parse(installed_text), wheel_version(wheel_name)
    if installed is None or new is None or new >= installed or allowed:
        return None
    return message(host, ".".join(map(str, installed)), ".".join(map(str, new)))


def message(host: str, have: str, want: str) -> str:
    return (
        f"{host} runs weave-node {have} and this rollout would install {want}: a downgrade is refused. It works "
        "while the IPAM state format is the same (a router refuses a newer one at start); to do it anyway, set "
        "weave_allow_downgrade=true (docs/day2.md)"
    )
