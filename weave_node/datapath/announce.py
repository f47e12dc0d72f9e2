"""Announcements of an address and its MAC, so neighbour caches that hold another MAC for it update at once: a
gratuitous ARP (an ARP request for our own address, broadcast) and, for IPv6, an unsolicited neighbour
advertisement to all nodes with Override set (RFC 4861 7.2.6).

A pod announces itself on ADD (an address IPAM gave out before, to a pod since deleted, is still in the host's
and other pods' caches with that pod's MAC); the bridge announces itself after a peer entered or left the sleeve
(datapath/ops.Announce). Sockets are made in the namespace given (a path, or None for our own).

Closing a packet socket waits for an RCU grace period (10-16 ms here): a pod's ADD must not wait for it, so its
socket is closed by a thread of its own (`close_later`) once the frame is sent."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from weave_node.datapath.netns import made_in

T = TypeVar("T")


def _in(netns: str | None, make: Callable[[], T]) -> T:
    return made_in(netns, make) if netns else make()


_closer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="announce-close")


def close_later(sock: socket.socket) -> None:
    _closer.submit(sock.close)


def arp(
    netns: str | None, ifname: str, mac: str, ip: str, *, close: Callable[[socket.socket], None] = socket.socket.close
) -> None:
    """A gratuitous ARP out of `ifname` (the name resolves in the socket's namespace)."""
    hw, addr = bytes.fromhex(mac.replace(":", "")), socket.inet_aton(ip)
    frame = b"\xff" * 6 + hw + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + hw + addr + bytes(6) + addr
    sock = _in(netns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
    try:
        sock.bind((ifname, 0))
        sock.send(frame)
    finally:
        close(sock)


def neighbour_advertisement(netns: str | None, ifindex: int, mac: str, ip: str, *, router: bool = False) -> None:
    """An unsolicited advertisement of `ip` at `mac` to ff02::1 on the interface (Override; Router for a host
    that forwards, so pods keep it as their router); the kernel fills in the ICMPv6 checksum. Sent from `ip`
    itself, which must be usable (our addresses go in without DAD)."""
    flags = 0xA0000000 if router else 0x20000000
    na = struct.pack("!BBHI", 136, 0, 0, flags) + socket.inet_pton(socket.AF_INET6, ip)
    na += bytes([2, 1]) + bytes.fromhex(mac.replace(":", ""))  # the target's link-layer address option
    with _in(netns, lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # NDP is only taken at 255
        sock.bind((ip, 0))
        sock.sendto(na, ("ff02::1", 0, 0, ifindex))


def bridge(netns: str | None, name: str, mac: str, ip: str) -> None:
    """The bridge's own address, out of the bridge (to every port)."""
    if ":" in ip:
        neighbour_advertisement(netns, _in(netns, lambda: socket.if_nametoindex(name)), mac, ip, router=True)
    else:
        arp(netns, name, mac, ip)
