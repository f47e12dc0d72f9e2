"""The underlay as the kernel routes it: which device (and MTU, and gateway) reaches an address, the default
route's device, whether the host is IPv6-only. Read with pyroute2 in the caller's thread."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from weave_node.datapath.netns import ipr_in


def _route(ipr: Any, dst: str) -> tuple[int, str] | None:
    """(output interface, gateway or "") of the kernel's route to `dst`, or None if there is none."""
    try:
        routes = ipr.route("get", dst=dst)
    except NetlinkError:
        return None
    for route in routes:
        oif = route.get("RTA_OIF")
        if oif:
            return oif, route.get("RTA_GATEWAY") or ""
    return None


def _route_get(dst: str, netns: str | None) -> tuple[str, int, str] | None:
    """(device, its MTU, gateway or "") of the kernel's route to `dst`, or None if there is none."""
    with ipr_in(netns) as ipr:
        found = _route(ipr, dst)
        if found is None:
            return None
        link = ipr.get_links(found[0])[0]
        return link.get("IFLA_IFNAME"), int(link.get("IFLA_MTU")), found[1]


def routes_via(dsts: Iterable[str], netns: str | None = None) -> dict[str, tuple[str, str] | None]:
    """(device, gateway) of the kernel's route to each of `dsts` (gateway "" when on-link), or None: one socket,
    and each device's name asked for once (direct mode asks for every peer's on every sync)."""
    out: dict[str, tuple[str, str] | None] = {}
    names: dict[int, str] = {}
    with ipr_in(netns) as ipr:
        for dst in dsts:
            found = _route(ipr, dst)
            if found is None:
                out[dst] = None
                continue
            oif, gateway = found
            if oif not in names:
                names[oif] = ipr.get_links(oif)[0].get("IFLA_IFNAME")
            out[dst] = (names[oif], gateway)
    return out


def route_mtu(dst: str, netns: str | None = None) -> tuple[str, int] | None:
    """The device (and its MTU) the kernel would use to reach `dst`, or None if there is no route."""
    found = _route_get(dst, netns)
    if found is None or found[0] == "lo":
        return None  # (lo: one of our own addresses, which says nothing about the underlay)
    return found[0], found[1]


def default_route_mtu(netns: str | None = None) -> tuple[str, int] | None:
    """The device of the IPv4 default route (else IPv6's: an IPv6-only host) and its MTU, or None."""
    with ipr_in(netns) as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_default_routes(family=family):
                oif = route.get("RTA_OIF")
                if oif:
                    link = ipr.get_links(oif)[0]
                    return link.get("IFLA_IFNAME"), int(link.get("IFLA_MTU"))
    return None


def default_ipv6_only(netns: str | None = None) -> bool:
    """Whether the host has an IPv6 default route and no IPv4 one (an IPv6-only host)."""
    with ipr_in(netns) as ipr:
        routes = {family: list(ipr.get_default_routes(family=family)) for family in (socket.AF_INET, socket.AF_INET6)}
    return bool(routes[socket.AF_INET6]) and not routes[socket.AF_INET]
