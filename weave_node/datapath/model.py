"""The desired and observed state of one host's datapath, as frozen values (pure).

The router computes a `Desired` from the mesh and IPAM; netlink.py reads an `Observed` from the kernel; plan.py
diffs them. Only what we own is modelled: the `weave` bridge, our VXLAN device, the permanent FDB/neigh entries
on them, the ports we put on the bridge (the sleeve's TAP), a few sysctls and our iptables chains. Everything
else on the host is outside the model and is never touched (other VXLAN devices are only observed, to report a
clash on our UDP port).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

BRIDGE = "weave"
VXLAN = "vxlan-6784"
ALIAS = "weave-node"  # IFLA_IFALIAS on the links we created: how we recognise ours after a restart
VXLAN_PORT = 6784
VNI = 0x6784  # one flat layer-2 network: every host uses the same VNI
FLOOD_MAC = "00:00:00:00:00:00"  # the VXLAN "all-zeros" FDB entry: where broadcast/multicast/unknown go
CHAIN_PREFIX = "WEAVE-NODE-"
VXLAN_OVERHEAD_V4 = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
VXLAN_OVERHEAD_V6 = 70  # outer IPv6 header is 40 bytes
# Direct mode (docs/architecture.md): our routes carry this protocol number, the direct heartbeats this mark,
# which one rule sends to this table.
RT_PROTO = 0x57
MAIN_TABLE = 254
DIRECT_TABLE = 6784
DIRECT_MARK = 0x2067  # clear of kube-proxy's 0x4000 (masquerade) and 0x8000 (drop) and Calico's upper 16 bits
RULE_PRIORITY = 6784


def overlay_mtu(underlay_mtu: int, *, ipv6_underlay: bool = False) -> int:
    """The MTU of the bridge, the VXLAN device and every pod: the underlay's minus the encapsulation."""
    mtu = underlay_mtu - (VXLAN_OVERHEAD_V6 if ipv6_underlay else VXLAN_OVERHEAD_V4)
    if mtu < 576:
        raise ValueError(f"underlay MTU {underlay_mtu} leaves {mtu} for pods; need at least 576")
    return mtu


@functools.lru_cache(maxsize=4096)  # (asked for every peer on every heartbeat step)
def bridge_mac(peer_name: int) -> str:
    """A stable MAC for the bridge, derived from the peer name: locally administered, unicast."""
    value = (peer_name & 0xFFFFFFFFFFFF) | (0x02 << 40)
    value &= ~(0x01 << 40)
    return ":".join(f"{(value >> s) & 0xFF:02x}" for s in range(40, -8, -8))


def host_alias_mac(peer_name: int) -> str:
    """The MAC that the bridge's own frames carry inside the sleeve (its host's traffic with pods behind the
    sleeve: ARP, kube-proxy's NodePort, a ping): the bridge's MAC with the locally-administered bit cleared. Every
    bridge MAC has that bit set (bridge_mac), and so has every MAC the kernel makes up for a pod, so the alias
    can be no one's bridge MAC nor a pod's. A far bridge learns this MAC behind its TAP, never the real one, to
    which its VXLAN heartbeats for us must go."""
    mac = bytes.fromhex(bridge_mac(peer_name).replace(":", ""))
    return ":".join(f"{b:02x}" for b in bytes([mac[0] & ~0x02]) + mac[1:])


@dataclass(frozen=True, order=True)
class Fdb:
    """A permanent entry on our VXLAN device: frames for `mac` go to the VTEP `dst` (FLOOD_MAC = flood list)."""

    mac: str
    dst: str


@dataclass(frozen=True, order=True)
class Neigh:
    """A permanent ARP (or, an IPv6 range alone, NDP) entry on the bridge: a remote router's bridge address, for
    its heartbeats."""

    ip: str
    mac: str


@dataclass(frozen=True, order=True)
class Route:
    """One of our routes (protocol RT_PROTO): `dst` via `via` on `dev` (via "" = on-link), or unreachable."""

    dst: str  # CIDR
    via: str = ""
    dev: str = ""
    table: int = MAIN_TABLE
    kind: str = "unicast"  # or "unreachable"
    src: str = ""  # preferred source address ("" = the kernel's choice)

    @property
    def key(self) -> tuple[int, str]:
        """What the kernel knows a route by (one route per destination and table, here)."""
        return self.table, self.dst


@dataclass(frozen=True, order=True)
class Rule:
    """A policy routing rule of ours: packets marked `mark` look up `table`."""

    priority: int = RULE_PRIORITY
    mark: int = DIRECT_MARK
    table: int = DIRECT_TABLE


@dataclass(frozen=True)
class Bridge:
    name: str = BRIDGE
    mtu: int = 1450
    mac: str = ""
    # CIDRs on the bridge; None = "not known yet, leave whatever is there" (IPAM may not be ready at start).
    addresses: tuple[str, ...] | None = None
    mcast_snooping: bool = False  # flood multicast like broadcast: pods on other hosts are behind one port
    proxy_arp: bool = False  # answer ARP for addresses routed away from the bridge (direct mode), at once
    ipv6: bool = False  # pods have IPv6 addresses: IPv6 on (a host may have it off by default)
    # IPv6 addresses in `addresses` are ours to manage (added, and others removed) only when this is set: an
    # IPv4-only router leaves the bridge's IPv6 addresses alone, and a dual-stack one until it knows its own
    managed6: bool = False

    def sysctls(self) -> tuple[tuple[str, str], ...]:
        """The bridge's own sysctls (they exist once it does); proxy ARP is turned off again with direct mode."""
        out = ((f"net/ipv6/conf/{self.name}/disable_ipv6", "0"),) if self.ipv6 else ()
        if not self.proxy_arp:
            return (*out, (f"net/ipv4/conf/{self.name}/proxy_arp", "0"))
        return (*out, (f"net/ipv4/conf/{self.name}/proxy_arp", "1"), (f"net/ipv4/neigh/{self.name}/proxy_delay", "0"))


@dataclass(frozen=True)
class Vxlan:
    name: str = VXLAN
    vni: int = VNI
    port: int = VXLAN_PORT
    mtu: int = 1450
    learning: bool = True  # remote pod MACs are learned from received frames; we only install flood entries
    # "": an IPv4 underlay (the device's socket is IPv4's); an IPv6 address: an IPv6 underlay, this the source.
    # A VXLAN device is of one family (unless in external mode): its FDB entries' VTEPs are all of it.
    local: str = ""
    isolated: bool = False  # an isolated bridge port (with the sleeve's TAP): no frame crosses between the two


@dataclass(frozen=True)
class Port:
    """A link created elsewhere (the sleeve's TAP) that we put on the bridge: its MTU, up, isolated or not.
    Isolated ports never exchange frames: a frame that came from one overlay path never leaves by the other."""

    name: str
    mtu: int = 1450
    isolated: bool = True


@dataclass(frozen=True)
class Chain:
    """One of our iptables chains (name starts with CHAIN_PREFIX), rules in iptables-save form, and the jump
    into it we keep at the top of a built-in chain."""

    table: str
    name: str
    rules: tuple[str, ...]
    hook: str  # the built-in chain that jumps here, e.g. "FORWARD"
    family: str = "ip"  # "ip": iptables; "ip6": ip6tables; "eth": ebtables (the bridge's own frames)

    @property
    def jump(self) -> str:
        return f"-j {self.name}"


@dataclass(frozen=True)
class Desired:
    bridge: Bridge
    vxlan: Vxlan | None
    fdb: frozenset[Fdb] = frozenset()
    neigh: frozenset[Neigh] = frozenset()
    sysctls: tuple[tuple[str, str], ...] = ()  # (path under /proc/sys, value)
    chains: tuple[Chain, ...] = ()
    ports: tuple[Port, ...] = ()
    # Generation of the flush of the MACs the bridge learned behind the overlay ports (VXLAN, `ports`): raised when
    # a peer's path changes, so that its pods' MACs are learned again on the path now in use.
    flush: int = 0
    routes: frozenset[Route] = frozenset()
    rules: frozenset[Rule] = frozenset()


@dataclass(frozen=True)
class Link:
    name: str
    kind: str  # "bridge", "vxlan", "veth", ... ("" when the kernel reports none)
    index: int = 0
    mtu: int = 1500
    mac: str = ""
    up: bool = False
    master: str = ""  # the name of the bridge it is enslaved to
    alias: str = ""
    addresses: tuple[str, ...] = ()  # CIDRs, sorted: IPv4, and IPv6 of global scope (not link-local)
    vni: int | None = None
    port: int | None = None
    learning: bool | None = None
    mcast_snooping: bool | None = None
    isolated: bool | None = None  # as a bridge port; None when it is on no bridge
    local: str = ""  # a VXLAN device's source address (IFLA_VXLAN_LOCAL6/LOCAL), "" when none


@dataclass(frozen=True)
class Observed:
    links: dict[str, Link] = field(default_factory=dict)
    fdb: frozenset[Fdb] = frozenset()  # permanent entries on our VXLAN device
    neigh: frozenset[Neigh] = frozenset()  # permanent entries on the bridge
    sysctls: dict[str, str] = field(default_factory=dict)  # only the keys we asked for; missing = no such file
    # table -> chain -> rules (iptables-save form), or None when iptables is not available
    iptables: dict[str, dict[str, tuple[str, ...]]] | None = None
    flushed: int = 0  # the flush generation last applied (the kernel keeps no record of a flush: the shell does)
    routes: frozenset[Route] = frozenset()  # ours (protocol RT_PROTO), in any table
    rules: frozenset[Rule] = frozenset()  # ours (priority RULE_PRIORITY)
    ebtables: dict[str, dict[str, tuple[str, ...]]] | None = None  # as iptables, from ebtables-save
    ip6tables: dict[str, dict[str, tuple[str, ...]]] | None = None  # as iptables, from ip6tables-save


@dataclass(frozen=True)
class Pod:
    """One pod attachment, as the pod plumbing API takes it (the CNI plugin's ADD/DEL in the router)."""

    netns: str  # path of the pod's network namespace
    ifname: str  # name inside the pod, e.g. eth0
    host_ifname: str  # the host end, on the bridge
    address: str  # CIDR, e.g. 10.32.0.5/12
    gateway: str  # the bridge's address: the pod's default route
    mtu: int
    bridge: str = BRIDGE
    hairpin: bool = False
    mac: str = ""  # "" = let the kernel choose
    address6: str = ""  # dual-stack: the pod's IPv6 CIDR, e.g. fd32:57::5/64 ("" = none)
    gateway6: str = ""  # the bridge's IPv6 address: the pod's IPv6 default route
