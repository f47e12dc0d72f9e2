"""Validation of the rollout's data before any host is touched (pure: no pyinfra, no weave_node imports).

The entry deploy calls `validate()` for every host during pyinfra's prepare phase, so a bad inventory stops
the run with a precise message before the first operation executes.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from weave_node_deploy.facts import (
    BRIDGE_NETFILTER_MODES,
    CNI_VERSIONS,
    DEFAULT_RANGE,
    ENCRYPTION_MODES,
    MTU_MAX,
    MTU_MIN,
    PASSWORD_FILE_MODE_MASK,
)

KNOWN = {
    "weave_address",
    "weave_peers",
    "weave_ipalloc_range",
    "weave_ipalloc_init",
    "weave_conn_limit",
    "weave_mtu",
    "weave_password_file",
    "weave_previous_password_file",
    "weave_retired",
    "weave_allow_downgrade",
    "weave_accept_unencrypted",
    "weave_metrics_addr",
    "weave_state_dir",
    "weave_prefix",
    "weave_cni_bin_dir",
    "weave_cni_conf_dir",
    "weave_cni_version",
    "weave_hairpin",
    "weave_bridge_netfilter",
    "weave_encryption",
    "weave_esp_rekey",
    "weave_direct",
    "weave_daemonset_direct",
    "weave_dns",
    "weave_dns_domain",
    "weave_dns_upstreams",
    "weave_bandwidth",
    "weave_health_timeout",
    "weave_ipam_reclaim_after",
    "weave_ipam_reclaim_replaced",
    "weave_wheelhouse",
    "weave_remove_state",
    "weave_kubernetes",
    "weave_kube_control_plane",
    "weave_image",
    "weave_image_pull_policy",
}
PULL_POLICIES = ("", "Always", "IfNotPresent", "Never")
BOOLEANS = (
    "weave_direct",
    "weave_daemonset_direct",
    "weave_dns",
    "weave_allow_downgrade",
    "weave_accept_unencrypted",
    "weave_kubernetes",
    "weave_kube_control_plane",
    "weave_hairpin",
    "weave_bandwidth",
    "weave_remove_state",
    "weave_ipam_reclaim_replaced",
)


class InvalidData(ValueError):
    """A message that names the host and the setting."""


def check_removal(host: str, data: Mapping[str, Any]) -> None:
    """The settings the removal uses (deploys/remove.py, remove.yml), after settings.typed()."""

    def fail(msg: str) -> None:
        raise InvalidData(f"{host}: {msg}")

    check_booleans(host, {"weave_remove_state": data.get("weave_remove_state", False)})
    _check_seconds(data, fail)


def _check_seconds(data: Mapping[str, Any], fail: Any) -> None:
    timeout = data.get("weave_health_timeout", 90)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        fail(f"weave_health_timeout must be seconds, a whole number > 0, not {timeout!r}")
    reclaim = data.get("weave_ipam_reclaim_after", 600)
    if isinstance(reclaim, bool) or not isinstance(reclaim, int | float) or not 0 <= reclaim < math.inf:
        fail(
            "weave_ipam_reclaim_after must be seconds, a number >= 0 (0: a departed host's space is never taken over "
            f"by itself), not {reclaim!r}"
        )


def check_booleans(host: str, data: Mapping[str, Any]) -> None:
    """After settings.typed(): a boolean setting that is still not a boolean was neither true nor false."""
    for key in BOOLEANS:
        if key in data and not isinstance(data[key], bool):
            raise InvalidData(f"{host}: {key} must be true or false (true, false, yes, no, 1, 0), not {data[key]!r}")


def validate(host: str, data: Mapping[str, Any], all_hosts: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
    def fail(msg: str) -> None:
        raise InvalidData(f"{host}: {msg}")

    unknown = sorted(k for k in data if k.startswith("weave_") and k not in KNOWN)
    if unknown:
        fail(f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(KNOWN))})")
    address = data.get("weave_address")
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        fail(f"weave_address must be this host's IP address for its peers, not {address!r}")
    ranges = _pod_ranges(str(data["weave_ipalloc_range"]), fail)
    all_hosts = list(all_hosts)
    _check_retired(host, data, {name for name, _ in all_hosts}, fail)
    seen: dict[str, str] = {}
    for other, other_data in all_hosts:
        addr = str(other_data.get("weave_address"))
        if addr in seen and seen[addr] != other:
            fail(f"weave_address {addr} is used by both {seen[addr]} and {other}")
        seen[addr] = other
        try:
            other_ip = ipaddress.ip_address(addr)
        except ValueError:
            continue  # that host's own validation names it
        for pod_range in ranges:
            if other != host and other_ip in pod_range:
                fail(f"weave_ipalloc_range {pod_range} contains {other}'s address {addr}: pick a range no host uses")
    for pod_range in ranges:
        if ip in pod_range:
            fail(f"weave_ipalloc_range {pod_range} contains this host's address {ip}")
    _check_same_range(host, ranges, all_hosts, fail)
    if data.get("weave_kubernetes") is True:
        _check_daemonset(host, data, all_hosts, fail)
    _check_numbers(data, fail)
    _check_wheelhouse(data.get("weave_wheelhouse"), fail)
    check_booleans(host, data)


def _check_same_range(
    host: str, ranges: list[ipaddress.IPv4Network | ipaddress.IPv6Network], all_hosts: list[tuple[str, Any]], fail: Any
) -> None:
    """Every router of a cluster needs the same range: a host with another one (another family above all) would
    hold the others' rings back for good, not just while a change rolls through."""
    mine = sorted(str(r) for r in ranges)
    for other, other_data in all_hosts:
        text = str(other_data.get("weave_ipalloc_range") or DEFAULT_RANGE)
        try:
            theirs = sorted(str(ipaddress.ip_network(p)) for p in text.replace(" ", ",").split(",") if p)
        except ValueError:
            continue  # that host's own validation names it
        if other != host and theirs != mine:
            fail(f"weave_ipalloc_range {','.join(mine)} differs from {other}'s {','.join(theirs)}: every host of a "
                 "cluster needs the same range")  # fmt: skip


def _pod_ranges(text: str, fail: Any) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """An IPv4 range, an IPv6 range, or one of each family separated by a comma (dual-stack), as the router takes them
    (weave_node.core.address.parse_ranges; the deploys do not import the router's package)."""
    ranges = []
    for part in (p for p in text.replace(" ", ",").split(",") if p):
        try:
            net = ipaddress.ip_network(part)
        except ValueError as exc:
            fail(f"weave_ipalloc_range {part!r} is not a CIDR with its host bits zero ({exc})")
        if net.version == 4 and net.prefixlen > 30:
            fail(f"weave_ipalloc_range {net} must be an IPv4 network of /30 or larger")
        special = net.version == 6 and (
            net.is_link_local or net.is_multicast or net.is_loopback or int(net.network_address) < 2**32
        )
        if net.version == 6 and (not 64 <= net.prefixlen <= 120 or special or net.network_address.ipv4_mapped):
            fail(f"weave_ipalloc_range {net}: an IPv6 range must be a /64 to a /120 of unique local or global space")
        ranges.append(net)
    families = sorted(r.version for r in ranges)
    if families not in ([4], [6], [4, 6]):
        fail(
            f"weave_ipalloc_range {text!r} must be an IPv4 range, an IPv6 range, or one of each separated by a comma "
            "(dual-stack)"
        )
    return ranges


def _check_wheelhouse(path: Any, fail: Any) -> None:
    """A given wheelhouse (an upgrade to another version's build): one weave_node wheel and its checksums."""
    if not path:
        return
    folder = str(path)
    try:
        names = os.listdir(folder)
    except OSError as exc:
        fail(f"weave_wheelhouse {folder}: {exc.strerror}")
        return
    ours = [n for n in names if n.startswith("weave_node-") and n.endswith(".whl")]
    if len(ours) != 1 or "SHA256SUMS" not in names:
        found = f"{len(ours)} weave_node wheels" + ("" if "SHA256SUMS" in names else " and no SHA256SUMS")
        fail(
            f"weave_wheelhouse {folder} has {found}: it needs exactly one weave_node wheel and SHA256SUMS (build "
            "one with `python -m weave_node_deploy.wheelhouse` in the checkout of the version you want)"
        )


DAEMONSET_FIXED = {
    "weave_state_dir": "/var/lib/weave-node",
    "weave_cni_bin_dir": "/opt/cni/bin",
    "weave_cni_conf_dir": "/etc/cni/net.d",
}


def _check_daemonset(
    host: str, data: Mapping[str, Any], all_hosts: Iterable[tuple[str, Mapping[str, Any]]], fail: Any
) -> None:
    """What the DaemonSet path cannot honour (yet) is refused rather than silently ignored."""
    if data.get("weave_password_file"):
        fail(
            "weave_password_file with weave_kubernetes: the DaemonSet does not carry the password yet (its mesh "
            "would run unencrypted): run the router as the systemd service for an encrypted mesh"
        )
    for key, fixed in DAEMONSET_FIXED.items():
        if key in data and data[key] != fixed:
            fail(f"{key} must be {fixed} with weave_kubernetes (the DaemonSet's host paths), not {data[key]!r}")
    planes = sorted(h for h, d in all_hosts if d.get("weave_kube_control_plane") in (True, "true", "yes", "1"))
    if len(planes) > 1:
        fail(
            f"weave_kube_control_plane is set on {', '.join(planes)}: set it on one host (the DaemonSet is applied "
            "from there)"
        )


_DNS_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def _check_dns(data: Mapping[str, Any], fail: Any) -> None:
    """What the router's WEAVE_DNS_DOMAIN / WEAVE_DNS_UPSTREAMS take (weave_node/dns/settings.py), checked here."""
    domain = str(data.get("weave_dns_domain", "weave.local")).lower().removesuffix(".")
    if len(domain) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in domain.split(".")):
        fail(f"weave_dns_domain must be a DNS name (labels of a-z, 0-9, - and _), not {data.get('weave_dns_domain')!r}")
    elif domain.endswith(("in-addr.arpa", "ip6.arpa")) or domain == "arpa":
        fail(f"weave_dns_domain {domain!r} is a reverse-lookup domain")
    upstreams = data.get("weave_dns_upstreams") or []
    if not isinstance(upstreams, list) or len(upstreams) > 3:
        fail(f"weave_dns_upstreams must be a list of at most 3 resolvers, not {upstreams!r}")
        return
    for up in upstreams:
        if not _upstream_ok(str(up)):
            fail(f"weave_dns_upstreams: {str(up)!r} is not an IP address with an optional :port")


def _upstream_ok(text: str) -> bool:
    """10.0.0.2, 10.0.0.2:53, 2001:db8::53 or [2001:db8::53]:53."""
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") else ("53" if not rest else "")
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return port.isdigit() and 0 < int(port) < 65536


def _check_numbers(data: Mapping[str, Any], fail: Any) -> None:
    mtu = data.get("weave_mtu")
    if mtu is not None and (not isinstance(mtu, int) or not MTU_MIN <= mtu <= MTU_MAX):
        fail(f"weave_mtu must be a number between {MTU_MIN} and {MTU_MAX}, not {mtu!r}")
    limit = data.get("weave_conn_limit")
    if not isinstance(limit, int) or limit < 0:
        fail(f"weave_conn_limit must be a number >= 0, not {limit!r}")
    _check_seconds(data, fail)
    if data.get("weave_bridge_netfilter", "auto") not in BRIDGE_NETFILTER_MODES:
        fail(
            f"weave_bridge_netfilter must be one of {', '.join(BRIDGE_NETFILTER_MODES)}, "
            f"not {data.get('weave_bridge_netfilter')!r}"
        )
    _check_dns(data, fail)
    if data.get("weave_encryption", "auto") not in ENCRYPTION_MODES:
        fail(f"weave_encryption must be one of {', '.join(ENCRYPTION_MODES)}, not {data.get('weave_encryption')!r}")
    rekey = data.get("weave_esp_rekey", 3600)
    if isinstance(rekey, bool) or not isinstance(rekey, int | float) or not 5 <= rekey <= 86400:
        fail(f"weave_esp_rekey must be seconds between 5 and 86400, not {rekey!r}")
    if data.get("weave_cni_version") not in CNI_VERSIONS:
        fail(f"weave_cni_version must be one of {', '.join(CNI_VERSIONS)}, not {data.get('weave_cni_version')!r}")
    password = data.get("weave_password_file")
    if password:
        _check_password_file("weave_password_file", str(password), fail)
    previous = data.get("weave_previous_password_file")
    if previous:
        if not password:
            fail(
                "weave_previous_password_file without weave_password_file: the previous password is accepted only "
                "beside the current one, during a rotation (docs/operations.md)"
            )
        _check_password_file("weave_previous_password_file", str(previous), fail)
    policy = data.get("weave_image_pull_policy") or ""
    if policy not in PULL_POLICIES:
        fail(
            "weave_image_pull_policy must be Always, IfNotPresent or Never (empty: chosen by the image), "
            f"not {policy!r}"
        )
    image = data.get("weave_image")
    if "weave_image" in data and (not isinstance(image, str) or not image or any(c.isspace() for c in image)):
        fail(f"weave_image must be an image reference (e.g. localhost/weave-node:0.2.0), not {image!r}")


def _check_password_file(key: str, path: str, fail: Any) -> None:
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            text = f.read(1 << 16)
    except OSError as exc:
        fail(f"{key} {path}: {exc.strerror}")
        return
    if st.st_mode & PASSWORD_FILE_MODE_MASK:
        fail(f"{key} {path} is readable by others (mode {st.st_mode & 0o777:04o}): chmod 600 it")
    if not text.strip():
        fail(f"{key} {path} is empty")


def host_list(value: Any) -> list[str]:
    """weave_retired as given: a list, or names separated by commas or spaces (`--data`, `-e`)."""
    if isinstance(value, str):
        return [n for n in value.replace(",", " ").split() if n]
    return [str(n) for n in value or []]


def _check_retired(host: str, data: Mapping[str, Any], names: set[str], fail: Any) -> None:
    value = data.get("weave_retired")
    if value is not None and not isinstance(value, (str, list, tuple)):
        fail(f"weave_retired must be a list of inventory host names, not {value!r}")
        return
    retired = host_list(value)
    unknown = [n for n in retired if n not in names]
    if unknown:
        fail(f"weave_retired names {', '.join(unknown)}, not in the inventory (hosts: {', '.join(sorted(names))})")
    if host in retired:
        fail(
            "this host is in weave_retired: it is being retired, not rolled out to "
            "(`weave-node rollout --retire` removes it; take it out of weave_retired to keep it)"
        )
