"""Pod plumbing in the kernel (the CNI plugin's work, done by the router): one veth pair per attachment, the
host end on the bridge, the pod end addressed and routed. attach_pod/detach_pod are idempotent."""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import socket
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from weave_node.datapath import announce, nlbatch
from weave_node.datapath.model import Pod
from weave_node.datapath.netns import DatapathError, ipr_in, made_in

LOOPBACK_INDEX = 1  # the kernel's LOOPBACK_IFINDEX: `lo` is link 1 in every network namespace


def attach_pod(pod: Pod, netns: str | None = None) -> dict[str, str]:
    """Create the veth pair, the pod end in `pod.netns` as `pod.ifname` with address, MTU and a default route via
    the gateway, the host end up on the bridge. Idempotent: an attachment that is already complete is left
    as it is; a partial one is completed. On failure, whatever this call created is removed again.
    Returns the interfaces' MACs and names (for the CNI result). Every pod ADD waits for this: few netlink
    round trips (links fetched by name, one request each; the MACs come with them)."""
    fd = _open_netns(pod.netns)
    created = False
    try:
        with ipr_in(netns) as host:
            bridge = _link(host, pod.bridge)
            if bridge is None:
                raise DatapathError(f"link {pod.bridge} does not exist")
            link = _existing_host_end(host, pod)
            if link is None:
                peer: dict[str, Any] = {"ifname": pod.ifname, "net_ns_fd": fd, "mtu": pod.mtu}
                if pod.mac:
                    peer["address"] = pod.mac
                # on the bridge and up in the same message
                host.link(
                    "add", ifname=pod.host_ifname, kind="veth", mtu=pod.mtu, peer=peer, master=bridge["index"],
                    state="up",
                )  # fmt: skip
                created = True
                link = _link(host, pod.host_ifname)
                if link is None:
                    raise DatapathError(f"{pod.host_ifname} vanished right after it was created")
            idx = link["index"]
            if not created:  # an earlier, partial attachment: completed
                host.link("set", index=idx, master=bridge["index"], mtu=pod.mtu, state="up")
            if pod.hairpin or not created:  # a new bridge port starts with hairpin off
                host.brport("set", index=idx, mode=int(pod.hairpin))
            host_mac = str(link.get("IFLA_ADDRESS"))
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


def _existing_host_end(host: Any, pod: Pod) -> Any | None:
    """The host end of an earlier ADD of this attachment, or None (a stale one whose pod end is gone is removed)."""
    link = _link(host, pod.host_ifname)
    if link is not None and _kind(link) != "veth":
        raise DatapathError(f"host interface name {pod.host_ifname} is taken by a link that is not a veth")
    if link is not None and not _pod_end_exists(pod):
        host.link("del", index=link["index"])
        return None
    return link


def _rollback(pod: Pod, netns: str | None) -> None:
    with contextlib.suppress(DatapathError, NetlinkError, OSError):  # the original error is the one to report
        detach_pod(pod, netns)


def _link(ipr: Any, name: str) -> Any | None:
    """One link by name, or None: RTM_GETLINK with the name (the kernel looks it up; pyroute2's
    get_links(ifname=...) would dump every link, ~90 ms with 400 of them)."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise DatapathError(f"link {name}: {os.strerror(exc.code)}") from exc  # e.g. a name the kernel refuses


def _kind(link: Any) -> str:
    info = link.get("IFLA_LINKINFO")
    return str(info.get("IFLA_INFO_KIND") or "") if info else ""


def _open_netns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise DatapathError(f"network namespace {path}: {exc.strerror}") from exc


def _pod_end_exists(pod: Pod) -> bool:
    try:
        with ipr_in(pod.netns) as ipr:
            return _link(ipr, pod.ifname) is not None
    except DatapathError:
        return False


def _configure_pod_end(pod: Pod) -> str:
    """Address, MTU, up and the default route of the pod end; its MAC. Two batches of requests on a plain netlink
    socket (nlbatch.py); each request creates or replaces, so a partial earlier attachment is completed alike.
    Then the pod announces itself (a gratuitous ARP, an unsolicited neighbour advertisement: datapath/announce):
    an address IPAM gave out before, to a pod since deleted, is in neighbour caches with that pod's MAC, and the
    host or a pod on another host would send to it until the entry timed out. (The kernel's arp_notify does not
    do it here: its ARP leaves as the veth comes up, before its queue is ready, and is dropped.)"""
    families = [
        (ipaddress.ip_interface(c), gw) for c, gw in ((pod.address, pod.gateway), (pod.address6, pod.gateway6)) if c
    ]
    try:
        with nlbatch.socket_in(pod.netns) as sock:
            batch = nlbatch.Batch(sock)
            nlbatch.set_link(batch, index=LOOPBACK_INDEX)
            get = nlbatch.get_link(batch, pod.ifname)
            nlbatch.set_link(batch, name=pod.ifname, mtu=pod.mtu)
            link = batch.run()[get]
            idx = int(link["index"])
            if any(iface.version == 6 for iface, _gw in families):  # (a runtime may have turned IPv6 off in the pod)
                _pod_sysctls(pod.netns, {f"ipv6/conf/{pod.ifname}/disable_ipv6": "0"})
            for iface, gateway in families:
                nlbatch.add_address(batch, idx, str(iface.ip), iface.network.prefixlen)
                nlbatch.replace_default_route(batch, gateway, idx)
            batch.run()
            mac = str(link.get_attr("IFLA_ADDRESS"))
    except DatapathError as exc:
        raise DatapathError(exc if pod.netns in str(exc) else f"{exc} in {pod.netns}") from exc
    for iface, _gw in families:
        with contextlib.suppress(OSError, ValueError, DatapathError):  # a failed one costs a neighbour timeout only
            if iface.version == 4:
                announce.arp(pod.netns, pod.ifname, mac, str(iface.ip), close=announce.close_later)
            else:
                announce.neighbour_advertisement(pod.netns, idx, mac, str(iface.ip))
    return mac


def _pod_sysctls(netns: str, values: dict[str, str]) -> None:
    """Sysctls under /proc/sys/net of the pod's namespace (/proc/sys/net resolves to the namespace of whoever
    opens it: the file is opened in the pod's); written only where they differ."""
    for key, value in values.items():
        path = f"/proc/sys/net/{key}"
        try:
            with made_in(netns, functools.partial(open, path)) as f:
                if f.read().strip() == value:
                    continue
            with made_in(netns, functools.partial(open, path, "w")) as f:
                f.write(value)
        except OSError as exc:
            raise DatapathError(f"{path} in {netns}: {exc.strerror}") from exc


def detach_pod(pod: Pod, netns: str | None = None) -> bool:
    """The exact inverse of attach_pod: the veth pair is gone afterwards (removing either end removes both).
    Idempotent: succeeds when the pair, the pod or its namespace is already gone. True if it removed something."""
    removed = False
    with ipr_in(netns) as host:
        link = _link(host, pod.host_ifname)
        try:
            if link is not None and _kind(link) == "veth":
                host.link("del", index=link["index"])
                removed = True
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:  # gone in between: that is what we wanted
                raise DatapathError(f"detach {pod.host_ifname}: {os.strerror(exc.code)}") from exc
    if not removed and os.path.exists(pod.netns):  # removing the host end removed the pod end with it
        with contextlib.suppress(DatapathError, NetlinkError), ipr_in(pod.netns) as ipr:
            link = _link(ipr, pod.ifname)
            if link is not None and _kind(link) == "veth":
                try:
                    ipr.link("del", index=link["index"])
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
        link = _link(ipr, pod.ifname)
        if link is None:
            return {}
        idx = link["index"]
        addrs = sorted(
            str(ipaddress.ip_interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"))
            for a in ipr.get_addr(index=idx)
            if a["family"] == socket.AF_INET or a["scope"] == 0  # IPv6: not the link-local one
        )
        gateways = [
            r.get("RTA_GATEWAY")
            for family in (socket.AF_INET, socket.AF_INET6)
            for r in ipr.get_default_routes(family=family)
        ]
        return {
            "mtu": link.get("IFLA_MTU"),
            "mac": link.get("IFLA_ADDRESS"),
            "up": bool(link["flags"] & 1),
            "addresses": addrs,
            "gateways": [g for g in gateways if g],
        }
