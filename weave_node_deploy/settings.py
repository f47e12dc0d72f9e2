"""The rollout's settings, one definition for both engines (pure: no pyinfra, no Ansible, no weave_node import).

pyinfra reads them from host/group data (tasks/weave_node.py), Ansible from inventory and extra vars (the
role's `weave_node_settings` action); both call `effective()`, so defaults, types and validation are the same.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from weave_node_deploy import validate
from weave_node_deploy.facts import DEFAULT_RANGE, VERSION

DEFAULTS: dict[str, Any] = {
    "weave_address": None,  # this host's address for its peers (required)
    "weave_peers": None,  # default: weave_address of every other host in the inventory
    "weave_ipalloc_range": DEFAULT_RANGE,
    "weave_ipalloc_init": "",  # default: consensus among all the hosts of this rollout
    "weave_conn_limit": 100,
    "weave_mtu": None,  # default: underlay MTU - 50
    "weave_password_file": None,  # a 0600 file on the control machine; copied to /etc/weave-node/password
    # During a password rotation (docs/operations.md): the old password, still accepted beside the new one
    "weave_previous_password_file": None,
    "weave_retired": [],  # inventory hosts being retired (`weave-node rollout --retire`): no one's peer any more
    "weave_accept_unencrypted": False,  # with a password, take peers without one (turning encryption on or off)
    # With a password: auto = IPsec ESP for the fast datapath between hosts whose kernels can, the sealed sleeve
    # otherwise; esp = ESP without probing the kernel; sleeve = the sleeve for all pod traffic (WEAVE_ENCRYPTION).
    "weave_encryption": "auto",
    "weave_esp_rekey": 3600,  # seconds between ESP rekeys (WEAVE_ESP_REKEY)
    "weave_allow_downgrade": False,  # install an older version than a host runs (docs/day2.md)
    "weave_metrics_addr": "127.0.0.1:6782",
    "weave_state_dir": "/var/lib/weave-node",
    "weave_prefix": "/opt/weave-node",
    "weave_cni_bin_dir": "/opt/cni/bin",
    "weave_cni_conf_dir": "/etc/cni/net.d",
    "weave_cni_version": "1.0.0",
    "weave_hairpin": True,
    # Pod traffic between hosts on one subnet without encapsulation, per peer where the path proves itself
    # (docs/architecture.md); false: WEAVE_NO_DIRECT=1.
    "weave_direct": True,
    # Under the DaemonSet, opt-in for now: CI found a restarted router keeping a peer's old direct route over its
    # own pods' space (fixed: overlay.direct.with_adopted); on by default once that has run in CI for a while.
    "weave_daemonset_direct": False,
    # A DNS server in every router (bare hosts; the DaemonSet leaves names to the cluster's DNS): pods' names
    # under weave_dns_domain, every other name forwarded to weave_dns_upstreams (default: each host's resolv.conf).
    "weave_dns": True,
    "weave_dns_domain": "weave.local",
    "weave_dns_upstreams": [],
    "weave_bridge_netfilter": "auto",  # bridged pod traffic through iptables: auto|on|off (docs/configuration.md)
    "weave_bandwidth": False,
    "weave_health_timeout": 90,
    "weave_ipam_reclaim_after": 600,  # seconds before the others take a departed host's space over (0: never)
    "weave_ipam_reclaim_replaced": True,  # a re-imaged host's old identity (same host name): taken over at once
    "weave_wheelhouse": None,  # default: built from this checkout on the control machine, once per run
    "weave_kubernetes": False,  # the router runs as the DaemonSet (applied from weave_kube_control_plane, once up)
    "weave_kube_control_plane": False,
    "weave_image": f"localhost/weave-node:{VERSION}",  # the DaemonSet's image (scripts/build-image makes this one)
    "weave_image_pull_policy": "",  # empty: Never for a localhost/ image (imported into the nodes), else IfNotPresent
}
BOOLS = validate.BOOLEANS
INTS = ("weave_conn_limit", "weave_mtu", "weave_health_timeout")
NUMBERS = (
    "weave_ipam_reclaim_after",
    "weave_esp_rekey",
)  # seconds: a whole number stays an int (rendered "600", not "600.0")
TRUE, FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
PACKAGES = ["iproute2", "iptables", "ebtables", "python3", "python3-venv", "containernetworking-plugins"]
SYSCTL_FILE = "/etc/sysctl.d/90-weave-node.conf"  # ours alone: the removal deletes it (not /etc/sysctl.conf)
SYSCTL_TEXT = "# weave-node: pods' traffic is routed through this host\nnet.ipv4.ip_forward = 1\n"
MODULES = (
    ("vxlan", "/sys/module/vxlan"),
    ("br_netfilter", "/proc/sys/net/bridge"),
    ("tun", "/sys/class/misc/tun"),  # the sleeve's TAP (built in on many kernels: then /sys/module/tun is absent)
)


def ours(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k.startswith("weave_")}


def typed(data: Mapping[str, Any]) -> dict[str, Any]:
    """`--data key=value` (pyinfra) and `-e key=value` (Ansible) give strings: read booleans and numbers as such.
    A string that is neither stays a string, for validation to name."""
    out = dict(data)
    for key in BOOLS:
        if isinstance(out.get(key), str):
            word = out[key].strip().lower()
            out[key] = True if word in TRUE else False if word in FALSE else out[key]
    for key in INTS:
        if isinstance(out.get(key), str) and out[key].strip().lstrip("-").isdigit():
            out[key] = int(out[key])
    for key in NUMBERS:
        if isinstance(out.get(key), str):
            out[key] = _number(out[key])
    if isinstance(out.get("weave_dns_upstreams"), str):  # "10.0.0.2 10.0.0.3" or "10.0.0.2,10.0.0.3"
        out["weave_dns_upstreams"] = out["weave_dns_upstreams"].replace(",", " ").split()
    for key in (
        "weave_mtu",
        "weave_ipalloc_init",
        "weave_password_file",
        "weave_previous_password_file",
        "weave_wheelhouse",
        "weave_image_pull_policy",
    ):
        if out.get(key) == "":
            out[key] = DEFAULTS[key]
    return out


def _number(text: str) -> Any:
    try:
        value = float(text.strip())
    except ValueError:
        return text
    return int(value) if value.is_integer() else value


def effective(host: str, own: Mapping[str, Any], others: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """This host's settings with the defaults filled in, validated against every host of the inventory (`others`
    includes this one). Raises validate.InvalidData naming the host and the setting."""
    data = typed({**DEFAULTS, **ours(own)})
    everyone = [(name, typed(ours(d))) for name, d in others]
    validate.validate(host, {**data}, everyone)
    data["weave_retired"] = retired = validate.host_list(data["weave_retired"])
    if data["weave_peers"] is None:
        data["weave_peers"] = [d["weave_address"] for name, d in everyone if name != host and name not in retired]
    elif isinstance(data["weave_peers"], str):
        data["weave_peers"] = data["weave_peers"].split()
    gone = {_peer_host(str(d["weave_address"])) for name, d in everyone if name in retired}
    data["weave_peers"] = [p for p in data["weave_peers"] if _peer_host(str(p)) not in gone]
    return data


def _peer_host(peer: str) -> str:
    """The host of a peer address: 10.0.0.2, 10.0.0.2:6783, 2001:db8::2 or [2001:db8::2]:6783."""
    if peer.startswith("["):
        host = peer[1:].partition("]")[0]
    else:
        host = peer.split(":", maxsplit=1)[0] if peer.count(":") == 1 else peer
    try:
        return str(ipaddress.ip_address(host))  # (one spelling of an IPv6 address: 2001:db8:0::2 is 2001:db8::2)
    except ValueError:
        return host
