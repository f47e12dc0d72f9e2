"""Facts the router, its CLI and its CNI plugin share, stated once (stdlib only, importable by the plugin's
fast path). The control machine's rollout states the ones it checks in weave_node_deploy/facts.py (it must stand alone,
without weave_node: the Ansible collection ships without it); tests/unit/test_facts.py keeps the two equal."""

from __future__ import annotations

DEFAULT_MESH_PORT = 6783  # TCP: the mesh; UDP: the sleeve
DEFAULT_STATUS_ADDR = "127.0.0.1:6784"
DEFAULT_STATUS_SOCKET = "/run/weave-node/weave.sock"
DEFAULT_STATE_DIR = "/var/lib/weave-node"
DEFAULT_PENDING_DIR = "/var/lib/weave-node/cni-pending"
DEFAULT_METRICS_ADDR = "127.0.0.1:6782"
DEFAULT_RANGE = "10.32.0.0/12"

MTU_MIN = 576  # WEAVE_MTU bounds: IPv4's minimum datagram every host must take ...
MTU_MAX = 65485  # ... up to the largest VXLAN payload a 64 KiB underlay MTU leaves

BRIDGE_NETFILTER_MODES = ("auto", "on", "off")  # WEAVE_BRIDGE_NETFILTER (overlay/netfilter.py)

PASSWORD_FILE_MODE_MASK = 0o077  # a password file readable or writable by group or others is refused
