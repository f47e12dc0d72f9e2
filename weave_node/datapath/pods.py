"""Pod plumbing in the kernel (the CNI plugin's work, done by the router): one veth pair per attachment, the
host end on the bridge, the pod end addressed and routed. attach_pod/detach_pod are idempotent."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from weave_node.datapath.model import Pod
from weave_node.datapath.netns import DatapathError, index, ipr_in


def attach_pod(pod: Pod, netns: str | None = None) -> dict[str, str]:
    """Create the veth pair, the pod end in `pod.netns` as `pod.ifname` with address, MTU and a default route via
    the gateway, the host end up on the bridge. Idempotent: an attachment that is already complete is left
    as it is; a partial one is completed. On failure, whatever this call created is removed again.
    Returns the interfaces' MACs and names (for the CNI result)."""
    fd = _open_netns(pod.netns)
    created = False
    try:
        with ipr_in(netns) as host:
            bridge = index(host, pod.bridge)
            found = host.link_lookup(ifname=pod.host_ifname)
            if found and _kind(host, found[0]) != "veth":
                raise DatapathError(f"host interface name {pod.host_ifname} is taken by a link that is not a veth")
            if found and not _pod_end_exists(pod):
                host.link("del", index=found[0])  # a stale host end whose pod end is gone
                found = []
            if not found:
                peer: dict[str, Any] = {"ifname": pod.ifname, "net_ns_fd": fd, "mtu": pod.mtu}
                if pod.mac:
                    peer["address"] = pod.mac
                host.link("add", ifname=pod.host_ifname, kind="veth", mtu=pod.mtu, peer=peer)
                created = True
            idx = index(host, pod.host_ifname)
            host.link("set", index=idx, master=bridge, mtu=pod.mtu, state="up")
            if pod.hairpin or not created:  # a new bridge port starts with hairpin off
                host.brport("set", index=idx, mode=int(pod.hairpin))
            host_mac = host.get_links(idx)[0].get("IFLA_ADDRESS")
        pod_mac = _configure_pod_end(pod)
    except (NetlinkError, OSError) as exc:
        if created:
            _rollback(pod, netns)
        raise DatapathError(f"attach {pod.ifname} in {pod.netns}: {exc}") from exc
    except DatapathError:
        if created:
            _rollback(pod, netns)
        raise
    finally:
        os.close(fd)
    return {"host_ifname": pod.host_ifname, "host_mac": host_mac, "mac": pod_mac, "ifname": pod.ifname}


def _rollback(pod: Pod, netns: str | None) -> None:
    with contextlib.suppress(DatapathError, NetlinkError, OSError):  # the original error is the one to report
        detach_pod(pod, netns)


def _kind(ipr: Any, index: int) -> str:
    info = ipr.get_links(index)[0].get("IFLA_LINKINFO")
    return str(info.get("IFLA_INFO_KIND") or "") if info else ""


def _open_netns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise DatapathError(f"network namespace {path}: {exc.strerror}") from exc


def _pod_end_exists(pod: Pod) -> bool:
    try:
        with ipr_in(pod.netns) as ipr:
            return bool(ipr.link_lookup(ifname=pod.ifname))
    except DatapathError:
        return False


def _configure_pod_end(pod: Pod) -> str:
    iface = ipaddress.ip_interface(pod.address)
    with ipr_in(pod.netns) as ipr:
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            ipr.link("set", index=lo[0], state="up")
        idx = index(ipr, pod.ifname)
        ipr.link("set", index=idx, mtu=pod.mtu, state="up")
        have = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx, family=socket.AF_INET)}
        if (str(iface.ip), iface.network.prefixlen) not in have:
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        try:
            ipr.route("replace", dst="0.0.0.0/0", gateway=pod.gateway, oif=idx)
        except NetlinkError as exc:
            raise DatapathError(f"default route via {pod.gateway} in {pod.netns}: {os.strerror(exc.code)}") from exc
        return str(ipr.get_links(idx)[0].get("IFLA_ADDRESS"))


def detach_pod(pod: Pod, netns: str | None = None) -> bool:
    """The exact inverse of attach_pod: the veth pair is gone afterwards (removing either end removes both).
    Idempotent: succeeds when the pair, the pod or its namespace is already gone. True if it removed something."""
    removed = False
    with ipr_in(netns) as host:
        found = host.link_lookup(ifname=pod.host_ifname)
        try:
            if found and _kind(host, found[0]) == "veth":
                host.link("del", index=found[0])
                removed = True
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:  # gone in between: that is what we wanted
                raise DatapathError(f"detach {pod.host_ifname}: {os.strerror(exc.code)}") from exc
    if not removed and os.path.exists(pod.netns):  # removing the host end removed the pod end with it
        with contextlib.suppress(DatapathError, NetlinkError), ipr_in(pod.netns) as ipr:
            for idx in ipr.link_lookup(ifname=pod.ifname):
                link = ipr.get_links(idx)[0]
                info = link.get("IFLA_LINKINFO")
                if info and info.get("IFLA_INFO_KIND") == "veth":
                    try:
                        ipr.link("del", index=idx)
                        removed = True
                    except NetlinkError as exc:
                        if exc.code != errno.ENODEV:
                            raise DatapathError(f"detach {pod.ifname} in {pod.netns}: {exc}") from exc
    return removed


def pod_state(pod: Pod) -> dict[str, Any]:
    """What the pod end looks like now (for CHECK): address list, MTU, default gateway; {} if absent."""
    if not os.path.exists(pod.netns):
        return {}
    with ipr_in(pod.netns) as ipr:
        found = ipr.link_lookup(ifname=pod.ifname)
        if not found:
            return {}
        idx = found[0]
        link = ipr.get_links(idx)[0]
        addrs = sorted(
            f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx, family=socket.AF_INET)
        )
        gateways = [r.get("RTA_GATEWAY") for r in ipr.get_default_routes(family=socket.AF_INET)]
        return {
            "mtu": link.get("IFLA_MTU"),
            "mac": link.get("IFLA_ADDRESS"),
            "up": bool(link["flags"] & 1),
            "addresses": addrs,
            "gateways": [g for g in gateways if g],
        }
