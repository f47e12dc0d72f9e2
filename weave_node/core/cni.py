"""What the CNI plugin and the router agree on (stdlib only, cheap to import: the plugin runs once per pod)."""

from __future__ import annotations

# The CNI spec versions the plugin speaks; the last is what VERSION reports first and what a result defaults to.
CNI_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CNI_LATEST = CNI_VERSIONS[-1]
CNI_PLUGIN = "weave-net"  # the binary's name in /opt/cni/bin and the conflist's "type"


def pending_name(container_id: str, ifname: str) -> str:
    """The file a pending DEL of this attachment is recorded in (written by the plugin, completed by the router)."""
    import hashlib  # only here: its OpenSSL part costs 2 ms of every plugin start-up

    return hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:32] + ".json"
