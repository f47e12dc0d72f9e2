"""pyinfra inventory of the local lab: `weave-node lab up`, then `pyinfra inventory/lab.py <deploy>`.

Reads the running lab's state (WEAVE_LAB names the lab, default "lab"; WEAVE_LAB_HOME its home). Hosts are
reached from the root namespace through the lab's ssh_config (a ProxyCommand into the underlay namespace), with
each host's own key pinned in the lab's known_hosts.
"""

import json
import os
from pathlib import Path

_name = os.environ.get("WEAVE_LAB", "lab")
_state_file = Path(os.environ.get("WEAVE_LAB_HOME", "/var/lib/weave-node-lab")) / "labs" / _name / "state.json"
if not _state_file.exists():
    raise SystemExit(f"inventory/lab.py: lab {_name!r} is not up: run `weave-node lab up` first")
_state = json.loads(_state_file.read_text())

_ssh = {
    "ssh_config_file": _state["ssh_config"],
    "ssh_strict_host_key_checking": "yes",
}
# The group every deploy targets: weave-node runs on each of these.
nodes = [(f"node{i}", dict(_ssh)) for i in range(1, int(_state["hosts"]) + 1)]
