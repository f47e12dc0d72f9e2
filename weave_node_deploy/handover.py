"""The IPAM hand-over before a host's state is removed (what Weave's `weave reset` did): one shell script that runs on
the host and one reading of what it printed, for both engines (pure: no pyinfra, no Ansible, no weave_node import).

Removing the state (`weave_remove_state`) removes the host's peer identity, and with it any chance that the address
space it owns comes back with the host. So the router hands that space to a reachable peer first (`weave-node ipam
leave --force`: the host's pods go with it). A stopped router is started for it, from its persisted state. When it
cannot (no peer reachable or none confirmed, the router does not start), the removal goes on anyway (a broken host
must stay removable) and the deploy warns with what to do: `weave-node ipam rmpeer NAME` on a live host, or wait
for the live hosts' --ipam-reclaim-after.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

TAG = "weave-node-handover:"
UNIT = "weave-node.service"
ENV_FILES = ("/etc/weave-node/weave-node.env", "/etc/weave-node/mesh.env")  # the peers: mesh.env (older: the first)
# Seconds `ipam leave` waits for a peer's confirmation. Under 30: the CLI's request to the router gives up after 30 s,
# and a request that times out says "cannot reach the router" where the router's own answer says why.
LEAVE_WAIT = 25

_NAME_FROM_STATUS = 'import json, sys; r = json.load(sys.stdin)["router"]; print(r["name"], r["nickname"])'
_NAME_FROM_HOST_ID = (
    "import sys; from weave_node.mesh.peer import format_name, name_from_host_id; "
    "print(format_name(name_from_host_id(bytes.fromhex(open(sys.argv[1]).read().strip()))))"
)


def script(prefix: str, state_dir: str, health_timeout: int, env_files: tuple[str, ...] = ENV_FILES) -> str:
    """The shell script (POSIX sh) that hands the space over. It always exits 0: what happened is in its `TAG`
    lines (see `outcome`). The router gets `health_timeout` seconds to answer, reach a peer (when its env file
    names any) and be ready, as after a rollout; then `leave` waits up to LEAVE_WAIT seconds for a peer's
    confirmation."""
    if isinstance(env_files, str):
        raise TypeError("env_files is a tuple of paths")
    wn = shlex.quote(f"{prefix}/venv/bin/weave-node")
    py = shlex.quote(f"{prefix}/venv/bin/python3")
    host_id = shlex.quote(f"{state_dir}/host-id")
    return f"""\
say() {{ printf '%s %s\\n' {TAG} "$*"; }}
flat() {{ printf '%s' "$1" | sed 's/^weave-node: error: //' | tr '\\n' ' ' | sed 's/ *$//'; }}
if [ ! -x {wn} ]; then say "failed {wn} is not there, so the router cannot run"; exit 0; fi
if ! systemctl is-active --quiet {UNIT}; then
  if out=$(systemctl start {UNIT} 2>&1); then say started; else say "start-failed $(flat "$out")"; fi
fi
peers=0
cat {" ".join(map(shlex.quote, env_files))} 2>/dev/null | grep -q '^WEAVE_PEERS=.*[^[:space:]]' && peers=1
if ! out=$({wn} status --wait {int(health_timeout)} --peers $peers 2>&1 >/dev/null); then
  say "not-ready $(flat "$out")"
fi
if out=$({wn} ipam leave --force --wait {LEAVE_WAIT} 2>&1); then say "ok $(flat "$out")"; exit 0; fi
say "failed $(flat "$out")"
name=$({wn} status --json 2>/dev/null | {py} -c {shlex.quote(_NAME_FROM_STATUS)} 2>/dev/null) || name=
if [ -z "$name" ] && [ -r {host_id} ]; then
  name=$({py} -c {shlex.quote(_NAME_FROM_HOST_ID)} {host_id} 2>/dev/null) && name="$name $(uname -n)" || name=
fi
if [ -n "$name" ]; then say "name $name"; fi
exit 0
"""


@dataclass(frozen=True)
class Outcome:
    ok: bool  # handed over, or there was nothing to hand over
    changed: bool  # space was handed over, or the router had to be started for it
    message: str  # one paragraph for the operator: what was handed over, or the warning with what to do


def outcome(output: str, reclaim_after: float) -> Outcome:
    """What the script printed (`output`, its stdout) -> what happened, in words (the engines add the host's name).
    `reclaim_after`: weave_ipam_reclaim_after, for the advice when the hand-over failed."""
    said: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith(TAG):
            key, _, rest = line[len(TAG) :].strip().partition(" ")
            said[key] = rest.strip()
    started = "started" in said
    if "ok" in said:
        text = said["ok"] or "done (the router said nothing more)"
        if started:
            text += " (the router was stopped: it was started for the hand-over)"
        return Outcome(ok=True, changed=started or text.startswith("handed"), message=text)
    why = [said.get("failed") or "the hand-over step reported nothing"]
    if "start-failed" in said:
        why.append(f"the router did not start: {said['start-failed']}")
    if "not-ready" in said:
        why.append(f"before that, the router was not ready: {said['not-ready']}")
    name, _, nickname = said.get("name", "").partition(" ")
    if name:
        peer = f"this host's peer {name}" + (f" ({nickname})" if nickname else "")
        rmpeer = f"`weave-node ipam rmpeer {name}` on a live host"
    else:
        peer = "this host's peer"
        rmpeer = (
            "`weave-node ipam rmpeer NAME` on a live host (NAME: the owner there in `weave-node status ipam` that is "
            "no longer reachable, its nickname this host's name)"
        )
    if reclaim_after > 0:
        wait = (
            f"or wait: the live hosts take it over by themselves {reclaim_after:g} s after this host is gone "
            "(--ipam-reclaim-after, weave_ipam_reclaim_after) if a majority of the space's owners stays connected"
        )
    else:
        wait = "as automatic reclaim is off (weave_ipam_reclaim_after=0), only rmpeer gives it back"
    message = (
        f"the IPAM address space was not handed over to a peer: {'; '.join(why)}. The removal goes on; once it is "
        f"done, the space is still owned by {peer}, which is gone. To use those addresses again, run {rmpeer}, "
        f"{wait}."
    )
    return Outcome(ok=False, changed=started, message=message)
