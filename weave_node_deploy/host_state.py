"""One look at a host, for the pyinfra deploys (pure: the shell command, and what its answer means). pyinfra plans
its hosts one after another, and each fact it gathers is a round trip to the host, so a 20-host re-run paid ~25
round trips per host, in a row (8.1 s). Asked once per host instead, this says where every file, directory and
link the rollout manages stands, and the few other things a run checks (the packages, the kernel modules, IPv4
forwarding, the installed version and plugin, the service); the deploys then plan operations only for what
differs, and those operations check again as they always do. No weave_node import (as host_files)."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from weave_node_deploy.host_files import Entry

# Each path's answer: `-` absent, `o` something else, `l <target>`, `d <mode> <uid> <gid>`,
# `f <mode> <uid> <gid> <sha1>`. A shell function keeps the command short for ~20 paths.
_LOOK = (
    'look(){ if [ -L "$2" ]; then echo "$1 l $(readlink "$2")"; '
    'elif [ -d "$2" ]; then echo "$1 d $(stat -c \'%a %u %g\' "$2")"; '
    'elif [ -f "$2" ]; then echo "$1 f $(stat -c \'%a %u %g\' "$2") $(sha1sum < "$2" | cut -d \' \' -f 1)"; '
    'elif [ -e "$2" ]; then echo "$1 o"; else echo "$1 -"; fi; }'
)


@dataclass(frozen=True)
class State:
    paths: dict[str, str]  # path -> its answer (above)
    checks: dict[str, str]  # name -> the first line its command printed ("" when it printed none)


def script(paths: Iterable[str], checks: Mapping[str, str]) -> str:
    """The command: one line per path (`P<i> ...`) and per check (`C<name> <first line of its output>`). Never
    fails (a check's errors are its answer: nothing)."""
    lines = [_LOOK]
    for i, path in enumerate(dict.fromkeys(paths)):
        lines.append(f"look P{i} {shlex.quote(path)}")
    for name, command in checks.items():
        if not name.isidentifier():
            raise ValueError(f"check name {name!r}")
        lines.append(f'echo "C{name} $( ( {command} ) 2>/dev/null | head -n 1)"')
    lines.append("true")
    return "\n".join(lines)


def parse(output: Sequence[str], paths: Iterable[str], checks: Iterable[str]) -> State:
    """The answer to script(paths, checks): a path or check missing from it reads as unknown (None/absent from the
    dicts), so the deploy plans its operation and pyinfra decides."""
    index = {f"P{i}": path for i, path in enumerate(dict.fromkeys(paths))}
    wanted = set(checks)
    seen_paths: dict[str, str] = {}
    seen_checks: dict[str, str] = {}
    for line in output:
        key, _, rest = line.partition(" ")
        if key in index:
            seen_paths[index[key]] = rest.strip()
        elif key[:1] == "C" and key[1:] in wanted:
            seen_checks[key[1:]] = rest.strip()
    return State(seen_paths, seen_checks)


def file_sha1(answer: str | None) -> str | None:
    """The SHA-1 of a file's content from its answer, None when it is no regular file."""
    parts = (answer or "").split(" ")
    return parts[4] if parts[0] == "f" and len(parts) == 5 else None


def satisfied(entry: Entry, answer: str | None, sha1: str | None = None, owner: tuple[int, int] | None = None) -> bool:
    """Whether `entry` already holds on the host, given its answer. `sha1`: of the file's wanted content (the
    caller's: a secret's is read from its file, never rendered); `owner`: (uid, gid) when the deploy sets them."""
    if answer is None:
        return False
    kind, *rest = answer.split(" ")
    if entry.state == "absent":
        return kind == "-"
    if entry.state == "link":
        return kind == "l" and " ".join(rest) == entry.target
    if entry.state == "directory":
        return kind == "d" and len(rest) == 3 and rest[0] == f"{entry.mode:o}"
    if entry.state == "file":
        if kind != "f" or len(rest) != 4 or rest[0] != f"{entry.mode:o}" or rest[3] != sha1:
            return False
        return owner is None or (rest[1], rest[2]) == (str(owner[0]), str(owner[1]))
    raise ValueError(f"entry state {entry.state!r}")
