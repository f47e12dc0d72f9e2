"""The router's facts the rollout checks before it touches a host. The control machine must stand alone (the Ansible
role runs without weave_node installed), so they are stated here too; tests/unit/test_facts.py keeps each equal to
its home in weave_node.core."""

from __future__ import annotations

VERSION = "0.2.0"  # of this checkout: the wheel, the image, `weave-node --version` (CHANGELOG.md)
DEFAULT_RANGE = "10.32.0.0/12"
STATUS_SOCKET = "/run/weave-node/weave.sock"  # the router's API socket: env file, conflist, DaemonSet
MTU_MIN, MTU_MAX = 576, 65485
CNI_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
BRIDGE_NETFILTER_MODES = ("auto", "on", "off")  # weave_bridge_netfilter
ENCRYPTION_MODES = ("auto", "esp", "wireguard", "sleeve")  # weave_encryption (the router's WEAVE_ENCRYPTION)
PASSWORD_FILE_MODE_MASK = 0o077  # a password file readable or writable by group or others is refused
