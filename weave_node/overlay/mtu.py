"""The overlay's MTU (pure): WEAVE_MTU when set, else the smallest MTU of the devices that carry traffic to the
initial peers (or of the default route's device) minus the encapsulation: VXLAN's, or the encrypted sleeve's
when a password is set (pod traffic then never takes VXLAN)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from weave_node.datapath.model import overlay_mtu
from weave_node.overlay.sleeve import codec

DEFAULT = 1450
SLEEVE_OVERHEAD = 20 + 8 + 14 + codec.VNET_HDR_SIZE  # IPv4 + UDP + the frame's Ethernet + virtio-net
WIREGUARD_OVERHEAD = 40 + 8 + 8 + 14 + 20 + 8 + 32  # VXLAN over IPv6, in WireGuard over IPv4
IPV6_EXTRA = 20  # an IPv6 header's 40 bytes against IPv4's 20
MIN_IPV6 = 1280  # IPv6's minimum link MTU (RFC 8200): pods with IPv6 need at least this


@dataclass(frozen=True)
class Mtu:
    mtu: int  # of the bridge, the VXLAN device, the TAP and every pod
    source: str  # how it was chosen, for status and the log
    underlay: int = 1500  # the underlay device's: the sleeve's datagrams must fit it
    ipv6: bool = False  # chosen for an IPv6 underlay (its 20 bytes more of header taken off)


def configured(mtu: int | None) -> Mtu:
    """Before the underlay is looked at (and for good when WEAVE_MTU is set)."""
    return Mtu(mtu, "WEAVE_MTU") if mtu else Mtu(DEFAULT, "default")


def probe_hosts(peer_hosts: Iterable[str]) -> list[str]:
    """The initial peers given as IP addresses: the routes to them tell which device is the underlay."""
    out = []
    for host in peer_hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            continue
        out.append(host)
    return out


def from_underlay(
    found: Sequence[tuple[str, int]], *, encrypt: bool, ipv6: bool = False, wireguard: bool = False
) -> Mtu:
    """From the underlay devices found, (name, MTU) each; none found: 1500. `ipv6`: an IPv6 underlay, whose
    header is 20 bytes longer than IPv4's. `wireguard`: VXLAN over IPv6 inside WireGuard (70 + 60 bytes; more than
    the sealed sleeve's, which carries the other peers)."""
    name, mtu = min(found, key=lambda d: d[1]) if found else ("(no route found)", 1500)
    extra, family = (IPV6_EXTRA, " over IPv6") if ipv6 else (0, "")
    if wireguard:
        overhead = WIREGUARD_OVERHEAD + extra
        return Mtu(mtu - overhead, f"underlay {name} {mtu} - {overhead} (VXLAN in WireGuard{family})", mtu, ipv6)
    if encrypt:
        overhead = SLEEVE_OVERHEAD + codec.overhead(True) + extra
        return Mtu(mtu - overhead, f"underlay {name} {mtu} - {overhead} (encrypted sleeve{family})", mtu, ipv6)
    return Mtu(overlay_mtu(mtu) - extra, f"underlay {name} {mtu} - {50 + extra} (VXLAN{family})", mtu, ipv6)
