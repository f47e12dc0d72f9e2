"""Where a lab lives on this machine (WEAVE_LAB_HOME, default /var/lib/weave-node-lab):
cache/rootfs-bookworm-<key>/     the shared, read-only lower dir of every host (built once)
labs/<name>/state.json           written last by `up`: its presence means the lab came up
labs/<name>/ssh_config           reach hosts from the root namespace: ssh -F ssh_config node1
labs/<name>/known_hosts          the hosts' own (per-host) keys, pinned
labs/<name>/id_ed25519           the lab's client key (root on every host)
labs/<name>/hosts/<host>/upper   the host's copy-on-write layer; console.log beside it
labs/<name>/kubeconfig           with --kubernetes: the cluster's admin (use `weave-node lab kubectl`)
failed/<name>/                   the hosts' console logs of the last `up` that failed
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = Path("/var/lib/weave-node-lab")


def home() -> Path:
    return Path(os.environ.get("WEAVE_LAB_HOME", str(DEFAULT_HOME)))


@dataclass(frozen=True)
class LabPaths:
    root: Path

    @classmethod
    def of(cls, name: str) -> LabPaths:
        return cls(home() / "labs" / name)

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        return self.root / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def host_dir(self, host: str) -> Path:
        return self.root / "hosts" / host


def failure_logs_dir(name: str) -> Path:
    return home() / "failed" / name
