"""Announcements of an address and its MAC, so neighbour caches that hold another MAC for it update at once: a
gratuitous ARP (an ARP request for our own address, broadcast) and, for IPv6, an unsolicited neighbour
advertisement to all nodes with Override set (RFC 4861 7.2.6).

A pod announces itself on ADD (an address IPAM gave out before, to a pod since deleted, is still in the host's
and other pods' caches with that pod's MAC); the bridge announces itself after a peer entered or left the sleeve
(datapath/ops.Announce). Sockets are made in the namespace given (a path, or None for our own)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import TypeVar

from weave_node.datapath.netns import made_in

T = TypeVar("T")


def _in(netns: str | None, make: Callable[[], T]) -> T:
    return made_in(netns, make) if netns else make()


def arp(netns: str | None, ifname: str, mac: str, ip: str) -> None:
    """A gratuitous ARP out of `ifname` (the name resolves in the socket's namespace)."""
    hw, addr = bytes.fromhex(mac.replace(":", "")), socket.inet_aton(ip)
    frame = b"\xff" * 6 + hw + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + hw + addr + bytes(6) + addr
    with _in(netns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)) as sock:
        sock.bind((ifname, 0))
        sock.send(frame)


def neighbour_advertisement(netns: str | None, ifindex: int, mac: str, ip: str) -> None:
    """An unsolicited advertisement of `ip` at `mac` to ff02::1 on the interface; the kernel fills in the ICMPv6
    checksum. Sent from `ip` itself, which must be usable (our addresses go in without DAD)."""
    na = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + socket.inet_pton(socket.AF_INET6, ip)
    na += bytes([2, 1]) + bytes.fromhex(mac.replace(":", ""))  # the target's link-layer address option
    with _in(netns, lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # NDP is only taken at 255
        sock.bind((ip, 0))
        sock.sendto(na, ("ff02::1", 0, 0, ifindex))


def bridge(netns: str | None, name: str, mac: str, ip: str) -> None:
    """The bridge's own address, out of the bridge (to every port)."""
    if ":" in ip:
        neighbour_advertisement(netns, _in(netns, lambda: socket.if_nametoindex(name)), mac, ip)
    else:
        arp(netns, name, mac, ip)
