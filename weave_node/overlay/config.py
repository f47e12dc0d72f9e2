"""The overlay service's configuration (from the router's)."""

from __future__ import annotations

from dataclasses import dataclass

from weave_node.core.address import Range


@dataclass(frozen=True)
class OverlayConfig:
    pod_range: Range
    mtu: int | None = None  # None: from the underlay
    peer_hosts: tuple[str, ...] = ()  # initial peers: their routes tell which device is the underlay
    fastdp: bool = True
    retain: float = 60.0
    resync: float = 10.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 4.0
    sleeve: bool = True  # the userspace fallback (and, with a password, the only path for pod traffic)
    encrypt: bool = False  # a password is set: pod traffic only through the sleeve, sealed
    bridge_netfilter: str = "auto"  # overlay.netfilter: whether bridged pod traffic goes through iptables
    direct: bool = True  # direct mode between L2 neighbours (overlay.direct)
    pod_range6: Range | None = None  # dual-stack: the IPv6 range (the bridge gets an address from it too)
    esp: bool = False  # with `encrypt`: VXLAN in IPsec ESP to peers that can too (overlay/esp), the sleeve otherwise
    esp_rekey: float = 3600.0
    esp_note: str = ""  # with `encrypt` and neither `esp` nor `wireguard`: why (for status)
    wireguard: bool = False  # with `encrypt`: VXLAN in WireGuard to peers that can too (overlay/wireguard)
