"""From what the router knows (peers, their overlay info, our bridge address) to the datapath's desired state
(pure). Per remote peer with a known VTEP: one flood FDB entry (broadcast, multicast and unknown unicast reach
it), and when it has a bridge address, one FDB entry for its bridge MAC and one neighbour entry for its bridge
IP, so heartbeats take exactly that tunnel. Pod MACs are learned by the VXLAN device from received frames.

Peers are kept for `retain` seconds after they leave the topology, and entries found in the kernel at start are
kept for `retain` seconds while the mesh reconnects: a router restart (or a peer's) does not cut pod traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from weave_node.core.address import Range
from weave_node.datapath.iptables import esp_guard, tunnel_guard, weave_chains, weave_chains6
from weave_node.datapath.model import FLOOD_MAC, VXLAN_PORT, Bridge, Desired, Fdb, Neigh, Port, Vxlan, bridge_mac
from weave_node.overlay.direct import Entries
from weave_node.overlay.peers import PeerInfo, in_range, underlay_of

SYSCTL_FORWARD = "net/ipv4/ip_forward"
SYSCTL_FORWARD6 = "net/ipv6/conf/all/forwarding"  # dual-stack only: pods' IPv6 traffic to the outside is routed
SYSCTL_BRIDGE_NF = "net/bridge/bridge-nf-call-iptables"
SYSCTL_BRIDGE_NF6 = "net/bridge/bridge-nf-call-ip6tables"
TAP = "weave-sleeve"  # the sleeve's TAP, on the bridge while the sleeve runs


@dataclass(frozen=True)
class Settings:
    me: int
    pod_range: str
    mtu: int
    fastdp: bool = True
    masquerade: bool = True
    sleeve: bool = False  # the sleeve runs: its TAP is a port of the bridge, isolated from the VXLAN port
    direct: bool = False  # direct mode is on (overlay.direct): proxy ARP on the bridge, routed pod traffic in
    pod_range6: str = ""  # dual-stack: the IPv6 range (pods' IPv6 traffic crosses hosts on layer 2 only)
    vxlan_local: str = ""  # an IPv6 underlay: our address on it (the VXLAN device's family and source); "": IPv4
    esp: bool = False  # VXLAN is ESP's (overlay/esp): the guard chains drop any that is not
    tunnel: str = ""  # VXLAN runs inside this WireGuard device (overlay/wireguard): guard chains drop any outside it

    @property
    def ipv6_only(self) -> bool:
        """An IPv6 range alone: the bridge's one address, heartbeats and neighbour entries are IPv6's."""
        return ":" in self.pod_range


@dataclass
class Retention:
    """Which peers still get forwarding entries: those in the topology and those gone for less than `retain`."""

    retain: float
    started: float
    last_seen: dict[int, float] = field(default_factory=dict)
    adopted_fdb: frozenset[Fdb] = frozenset()
    adopted_neigh: frozenset[Neigh] = frozenset()

    def present(self, names: set[int], now: float) -> None:
        for name in names:
            self.last_seen[name] = now

    def kept(self, now: float) -> set[int]:
        if not self.adopting(now):
            self.adopted_fdb, self.adopted_neigh = frozenset(), frozenset()
        for name in [n for n, t in self.last_seen.items() if now - t >= self.retain]:
            del self.last_seen[name]
        return set(self.last_seen)

    def adopting(self, now: float) -> bool:
        return now - self.started < self.retain

    def next_deadline(self) -> float | None:
        times = [t + self.retain for t in self.last_seen.values()]
        if self.adopted_fdb or self.adopted_neigh:
            times.append(self.started + self.retain)
        return min(times, default=None)


def vteps_in_use(
    vteps: Mapping[int, str],
    present: Iterable[int],
    kept: set[int],
    infos: Mapping[int, PeerInfo],
    direct: Mapping[int, str],
    *,
    ipv6: bool | None = None,
) -> dict[int, str]:
    """The VTEP per kept peer: a present peer's current one (of our VXLAN device's family, `ipv6`, when it has
    one); a departed peer keeps the one it had (not whatever it advertised): its entries must not move while it
    is away."""
    out = {name: vtep for name, vtep in vteps.items() if name in kept}
    for name in present:
        vtep = underlay_of(name, infos, direct, ipv6)
        if vtep:
            out[name] = vtep
    return out


def adopted_bridge_cidr(addresses: Iterable[str], pod_range: Range) -> str | None:
    """The bridge's address found at start when exactly one is in the pod range: running pods use it as their
    gateway, so the router keeps it if IPAM agrees."""
    inside = [a for a in addresses if in_range(a, pod_range)]
    return inside[0] if len(inside) == 1 else None


def peer_entries(
    peers: set[int],
    infos: Mapping[int, PeerInfo],
    direct: Mapping[int, str],
    me: int,
    no_flood: frozenset[int] = frozenset(),
    *,
    ipv6: bool = False,
    no_vxlan: frozenset[int] = frozenset(),
) -> tuple[frozenset[Fdb], frozenset[Neigh], dict[int, str]]:
    """(FDB entries, neighbour entries, {peer: bridge ip} of the peers whose heartbeats can run).
    Peers in `no_flood` (those in sleeve mode) get no flood entry: the sleeve carries their broadcasts, and a
    half-working tunnel must not deliver them twice. Their bridge MAC entry stays, for the heartbeats.
    `ipv6`: our VXLAN device's family; a peer whose VTEP is of the other family gets no entries (see
    `other_family`: the sleeve carries its pod traffic); nor does one in `no_vxlan` (with ESP: a peer that gets
    none, whose pod traffic the sealed sleeve carries)."""
    fdb: set[Fdb] = set()
    neigh: set[Neigh] = set()
    bridges: dict[int, str] = {}
    for name in sorted(peers - {me} - no_vxlan):
        vtep = underlay_of(name, infos, direct)
        if not vtep or (":" in vtep) != ipv6:
            continue
        if name not in no_flood:
            fdb.add(Fdb(FLOOD_MAC, vtep))
        info = infos.get(name)
        if info and info.bridge_ip and info.bridge_mac:
            fdb.add(Fdb(info.bridge_mac, vtep))
            neigh.add(Neigh(info.bridge_ip, info.bridge_mac))
            bridges[name] = info.bridge_ip
    return frozenset(fdb), frozenset(neigh), bridges


def other_family(peers: set[int], vteps: Mapping[int, str], ipv6: bool) -> frozenset[int]:
    """The peers whose VTEP in use (`vteps_in_use`) is of the other underlay family than our VXLAN device's (no
    address of its family known): no fast datapath to them."""
    return frozenset(name for name in peers if (vtep := vteps.get(name)) and (":" in vtep) != ipv6)


def desired_state(
    settings: Settings,
    bridge_cidr: str | None,
    fdb: frozenset[Fdb],
    neigh: frozenset[Neigh],
    flush: int = 0,
    *,
    direct: Entries | None = None,
    bridge_cidr6: str | None = None,
) -> Desired:
    """`flush`: the generation of the flush of MACs learned behind the overlay ports (raised on a mode switch);
    `direct`: direct mode's routes, rule and ebtables chains (with `settings.direct`); `bridge_cidr6`: the
    bridge's IPv6 address (dual-stack)."""
    v6, v4 = bool(settings.pod_range6) or settings.ipv6_only, not settings.ipv6_only
    sysctls = [*([(SYSCTL_FORWARD, "1")] if v4 else []), *([(SYSCTL_FORWARD6, "1")] if v6 else [])]
    on = settings.direct and direct is not None and v4
    addresses = tuple(a for a in (bridge_cidr, bridge_cidr6) if a)
    range6 = settings.pod_range if settings.ipv6_only else settings.pod_range6
    return Desired(
        bridge=Bridge(
            mtu=settings.mtu,
            mac=bridge_mac(settings.me),
            # unknown (IPAM not ready): what is there stays, running pods use it; IPv6 alike, family by family
            addresses=addresses if bridge_cidr else None,
            proxy_arp=on,
            ipv6=v6,
            managed6=bool(bridge_cidr6) or (settings.ipv6_only and bool(bridge_cidr)),
        ),
        vxlan=Vxlan(mtu=settings.mtu, isolated=settings.sleeve, local=settings.vxlan_local)
        if settings.fastdp
        else None,
        fdb=_one_mac_one_vtep(fdb) if settings.fastdp else frozenset(),
        neigh=neigh,
        sysctls=tuple(sysctls),
        chains=(
            weave_chains(
                settings.pod_range,
                masquerade=settings.masquerade,
                direct=on,
                direct_sources=direct.sources if on and direct else (),
            )
            if v4
            else ()
        )
        + (direct.chains if on and direct else ())
        + (weave_chains6(range6, masquerade=settings.masquerade) if v6 else ())
        + (esp_guard(VXLAN_PORT, "ip6" if settings.vxlan_local else "ip") if settings.esp and settings.fastdp else ())
        + (tunnel_guard(VXLAN_PORT, settings.tunnel) if settings.tunnel and settings.fastdp else ()),
        ports=(Port(TAP, settings.mtu),) if settings.sleeve else (),
        flush=flush,
        routes=direct.routes if on and direct else frozenset(),
        rules=direct.rules if on and direct else frozenset(),
    )


def with_bridge_nf(desired: Desired, value: str | None) -> Desired:
    """`desired` with bridge-nf-call-iptables (and, dual-stack, -ip6tables) set to `value` ("1"/"0"), or left alone
    (None): overlay.netfilter decides, from what it observes on the host."""
    keys = (SYSCTL_BRIDGE_NF, SYSCTL_BRIDGE_NF6) if desired.bridge.ipv6 else (SYSCTL_BRIDGE_NF,)
    sysctls = tuple(s for s in desired.sysctls if s[0] not in keys)
    return replace(desired, sysctls=sysctls if value is None else (*sysctls, *((k, value) for k in keys)))


def _one_mac_one_vtep(fdb: frozenset[Fdb]) -> frozenset[Fdb]:
    """A unicast MAC can sit behind only one VTEP; when sources disagree (a stale adopted entry and a fresh one)
    keep one deterministically. Flood entries may list many VTEPs."""
    chosen: dict[str, Fdb] = {}
    out = {e for e in fdb if e.mac == FLOOD_MAC}
    for e in sorted(e for e in fdb if e.mac != FLOOD_MAC):
        chosen.setdefault(e.mac, e)
    return frozenset(out | set(chosen.values()))


def _one_ip_one_mac(neigh: frozenset[Neigh]) -> frozenset[Neigh]:
    chosen: dict[str, Neigh] = {}
    for e in sorted(neigh):
        chosen.setdefault(e.ip, e)
    return frozenset(chosen.values())


def adoptable(fdb: frozenset[Fdb], in_tunnel: Callable[[str], bool], *, tunnelled: bool) -> frozenset[Fdb]:
    """The FDB entries found at start that may stay while adopting: with VXLAN inside WireGuard only those to tunnel
    addresses, without it none of those (the VXLAN device of the other kind is made anew: an entry of the other
    kind would fail on it, or send to a peer's underlay address outside the tunnel)."""
    return frozenset(e for e in fdb if in_tunnel(e.dst) == tunnelled)


def merge_adopted(
    fresh_fdb: frozenset[Fdb], fresh_neigh: frozenset[Neigh], retention: Retention, now: float
) -> tuple[frozenset[Fdb], frozenset[Neigh]]:
    """While adopting, kernel entries from before the start stay; fresh knowledge wins where they conflict."""
    if not retention.adopting(now):
        return fresh_fdb, _one_ip_one_mac(fresh_neigh)
    fresh_macs = {e.mac for e in fresh_fdb if e.mac != FLOOD_MAC}
    fresh_ips = {e.ip for e in fresh_neigh}
    fdb = fresh_fdb | {e for e in retention.adopted_fdb if e.mac == FLOOD_MAC or e.mac not in fresh_macs}
    neigh = fresh_neigh | {e for e in retention.adopted_neigh if e.ip not in fresh_ips}
    return fdb, _one_ip_one_mac(neigh)
