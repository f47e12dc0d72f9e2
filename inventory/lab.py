"""pyinfra inventory of the local lab: `weave-node lab up`, then `pyinfra inventory/lab.py <deploy>`.

Reads the running lab's state (WEAVE_LAB names the lab, default "lab"; WEAVE_LAB_HOME its home). Hosts are
reached from the root namespace through the lab's ssh_config (a ProxyCommand into the underlay namespace), with
each host's own key pinned in the lab's known_hosts.
"""

import json
import os
import select
import time
from pathlib import Path

import paramiko.proxy


def _send_all(self: paramiko.proxy.ProxyCommand, content: bytes) -> int:
    """paramiko's ProxyCommand.send ignores short writes; under pyinfra's gevent the pipe to the ProxyCommand is
    non-blocking, so an upload larger than the pipe (64 KiB) lost bytes and the session broke. Write it all."""
    view = memoryview(content)
    try:
        while view:
            written = self.process.stdin.write(view)
            view = view[written or 0 :]
    except OSError as exc:
        raise paramiko.proxy.ProxyCommandFailure(" ".join(self.cmd), exc.strerror) from exc
    return len(content)


def _recv_until_eof(self: paramiko.proxy.ProxyCommand, size: int) -> bytes:
    """paramiko's ProxyCommand.recv reads again and again once the command has exited (os.read gives b"" at end of
    file): a host that went away (a reboot) left pyinfra spinning at 100 % CPU, waiting forever. At end of file,
    return what was read (b"" tells paramiko the connection is closed). It waits with poll(), not select(): a
    process with more than 1024 descriptors open (many hosts, a long test run) made select() fail."""
    buffer = b""
    start = time.time()
    poller = select.poll()
    poller.register(self.process.stdout, select.POLLIN | select.POLLHUP)
    try:
        while len(buffer) < size:
            wait = None
            if self.timeout is not None:
                wait = self.timeout - (time.time() - start)
                if wait <= 0:
                    raise TimeoutError()
            if poller.poll(None if wait is None else wait * 1000):
                chunk = os.read(self.process.stdout.fileno(), size - len(buffer))
                if not chunk:
                    return buffer
                buffer += chunk
        return buffer
    except TimeoutError:
        if buffer:
            return buffer
        raise
    except OSError as exc:
        raise paramiko.proxy.ProxyCommandFailure(" ".join(self.cmd), exc.strerror) from exc


paramiko.proxy.ProxyCommand.send = _send_all  # type: ignore[method-assign]
paramiko.proxy.ProxyCommand.recv = _recv_until_eof  # type: ignore[method-assign]

_name = os.environ.get("WEAVE_LAB", "lab")
_state_file = Path(os.environ.get("WEAVE_LAB_HOME", "/var/lib/weave-node-lab")) / "labs" / _name / "state.json"
if not _state_file.exists():
    raise SystemExit(f"inventory/lab.py: lab {_name!r} is not up: run `weave-node lab up` first")
_state = json.loads(_state_file.read_text())

_ssh = {
    "ssh_config_file": _state["ssh_config"],
    "ssh_strict_host_key_checking": "yes",
    # Ansible (weave-node rollout --engine ansible, Molecule) keeps SSH masters open per host address; every lab
    # has the same addresses, so each lab keeps its own (closed by `weave-node lab down`).
    "ansible_control_path_dir": str(_state_file.parent / "ssh-control"),
}
# The group every deploy targets: weave-node runs on each of these.
# weave_address: where the other nodes reach this one (the router's peers, its VXLAN endpoint).
_addresses = _state.get("addresses") or {f"node{i}": f"198.18.0.{i}" for i in range(1, int(_state["hosts"]) + 1)}
nodes = [(f"node{i}", {**_ssh, "weave_address": _addresses[f"node{i}"]}) for i in range(1, int(_state["hosts"]) + 1)]
# WEAVE_LAB_ONLY=node1,node2,node3: only these of the lab's hosts are in the inventory (the others are spare
# machines, e.g. to add to the cluster later: docs/operations.md, "Adding hosts").
if os.environ.get("WEAVE_LAB_ONLY"):
    _only = {n.strip() for n in os.environ["WEAVE_LAB_ONLY"].split(",") if n.strip()}
    _unknown = _only - {name for name, _ in nodes}
    if _unknown:
        raise SystemExit(f"inventory/lab.py: WEAVE_LAB_ONLY names {', '.join(sorted(_unknown))}, not in lab {_name!r}")
    nodes = [(name, data) for name, data in nodes if name in _only]
if _state.get("kubernetes"):
    # `weave-node lab up --kubernetes`: node1 runs the control plane (with kubectl and an admin kubeconfig), where
    # the DaemonSet is applied from when the rollout runs with weave_kubernetes=true.
    nodes[0][1]["weave_kube_control_plane"] = True
