"""Direct mode (pure): which peers are L2 neighbours, and the routes, rule and ebtables chains that carry pod traffic
to the confirmed ones without encapsulation. The design, and why pods keep one flat on-link range, is in
docs/architecture.md ("Direct mode").

A *candidate* is a peer whose VTEP our kernel reaches without a gateway; the direct heartbeats (overlay.health)
confirm it; only then do its address space's routes go in. Probe routes (table DIRECT_TABLE) exist for every
candidate, so the marked heartbeats take the direct path or none.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from weave_node.core.address import IPV4_LIMIT
from weave_node.datapath.model import (
    BRIDGE,
    CHAIN_PREFIX,
    DIRECT_TABLE,
    VXLAN,
    Chain,
    Route,
    Rule,
)

TAP = "weave-sleeve"  # the sleeve's port on the bridge (overlay.desired.TAP)
ARP_CHAIN = CHAIN_PREFIX + "DIRECT"  # ebtables FORWARD: pods' requests for a direct peer's space stay here
PROXY_CHAIN = CHAIN_PREFIX + "DIRECT-OUT"  # ebtables OUTPUT: our proxy answers never leave through the tunnel
OVERLAY_DEVICES = (BRIDGE, VXLAN)


@dataclass(frozen=True, order=True)
class Candidate:
    peer: int
    vtep: str  # its underlay address
    dev: str  # our device on the same L2 segment
    bridge_ip: str


def candidates(
    vteps: Mapping[int, str],
    bridges: Mapping[int, str],
    routes: Mapping[str, tuple[str, str] | None],
    *,
    exclude: Iterable[str] = (),
) -> dict[int, Candidate]:
    """Peers whose VTEP is on-link: `routes` maps a VTEP to our kernel's (device, gateway) for it. `bridges`: the
    peers' bridge addresses (the probes' destination). Devices in `exclude` (the overlay's own) never count."""
    skip = set(OVERLAY_DEVICES) | set(exclude)
    out = {}
    for peer, vtep in sorted(vteps.items()):
        route = routes.get(vtep)
        ipv4 = ":" not in vtep and ":" not in bridges.get(peer, "")  # (direct mode routes IPv4 only)
        if ipv4 and route and not route[1] and route[0] not in skip and bridges.get(peer):
            out[peer] = Candidate(peer, vtep, route[0], bridges[peer])
    return out


def cidrs(spans: Iterable[tuple[int, int]]) -> tuple[str, ...]:
    """IPAM spans [start, end) as the fewest CIDRs."""
    out: list[str] = []
    for start, end in sorted(spans):
        if end > start:
            v6 = start >= IPV4_LIMIT  # (our IPv6 addresses lie above every IPv4 one: core/address.py)
            kind = ipaddress.IPv6Address if v6 else ipaddress.IPv4Address
            out += [str(net) for net in ipaddress.summarize_address_range(kind(start), kind(end - 1))]
    return tuple(out)


@dataclass(frozen=True)
class Entries:
    routes: frozenset[Route]
    rules: frozenset[Rule]
    chains: tuple[Chain, ...]
    peers: frozenset[int] = frozenset()  # the confirmed peers: their pod traffic goes by these routes
    sources: tuple[str, ...] = ()  # the candidates' underlay addresses: what may be routed in to our pods


def entries(
    found: Mapping[int, Candidate],
    confirmed: Iterable[int],
    space: Mapping[int, tuple[str, ...]],
    me: int,
    src: str = "",
) -> Entries:
    """The kernel objects of direct mode: probe routes for every candidate (and the unreachable default behind
    them), and for each confirmed one its space's routes, the /32 that keeps its bridge address on VXLAN (the
    fastdp heartbeats) and the ARP rules.

    `src`: our bridge address, the source the host's own traffic to P's pods takes (as it did through VXLAN).

    ARP rules, per confirmed peer P: (out) our pods' requests for P's space do not leave through the tunnel (we
    answer them: proxy ARP; their answers to P's pods do, while P still asks through it), our proxy answers never
    leave through the tunnel or the sleeve; (in) ARP from P's pods that arrives through the tunnel
    reaches our pods only when it asks for an address of ours. A request of theirs for a third host's pod would
    otherwise refresh our pods' cache entries for them with their real MAC (Linux updates an existing entry from
    any ARP packet's sender), and our pods would reach theirs through the tunnel again."""
    routes = {Route("0.0.0.0/0", table=DIRECT_TABLE, kind="unreachable")}
    routes |= {Route(f"{c.bridge_ip}/32", via=c.vtep, dev=c.dev, table=DIRECT_TABLE) for c in found.values()}
    arp: list[str] = []
    inbound: list[str] = []
    proxy: list[str] = []
    routed: set[int] = set()
    for peer in sorted(set(confirmed) & set(found)):
        c = found[peer]
        nets = space.get(peer, ())
        routed.add(peer)  # (with no space yet there is nothing to route: direct all the same)
        if not nets:
            continue
        bridge = f"{c.bridge_ip}/32"  # (its space may begin with it: then this route, not the space's, is the one)
        routes |= {Route(net, via=c.vtep, dev=c.dev, src=src) for net in nets if net != bridge}
        routes.add(Route(bridge, dev=BRIDGE, src=src))
        arp.append(f"-p ARP -o {VXLAN} --arp-ip-dst {c.bridge_ip} -j RETURN")
        arp += [f"-p ARP -o {VXLAN} --arp-op Request --arp-ip-dst {_eb(net)} -j DROP" for net in nets]
        inbound += [f"-p ARP -i {VXLAN} --arp-ip-src {_eb(net)} -j DROP" for net in nets]
        proxy += [f"-p ARP -o {port} --arp-ip-src {_eb(net)} -j DROP" for port in (VXLAN, TAP) for net in nets]
    if inbound:  # what asks for one of our addresses passes first
        arp += [f"-p ARP -i {VXLAN} --arp-ip-dst {_eb(net)} -j RETURN" for net in space.get(me, ())] + inbound
    chains = (
        Chain("filter", ARP_CHAIN, tuple(arp), "FORWARD", "eth"),
        Chain("filter", PROXY_CHAIN, tuple(proxy), "OUTPUT", "eth"),
    )
    sources = tuple(sorted({c.vtep for c in found.values()}))
    return Entries(frozenset(routes), frozenset({Rule()}), chains, frozenset(routed), sources)


def _eb(net: str) -> str:
    """A network as ebtables-save prints it (a single address without /32)."""
    return net.removesuffix("/32")


def with_adopted(
    e: Entries, routes: Iterable[Route], chains: Mapping[str, tuple[str, ...]], own: Iterable[str] = ()
) -> Entries:
    """`e` plus what a previous run of the router left in the kernel (its routes, its ARP rules, the underlay
    addresses they lead to), for the moments after a restart when the direct heartbeats have not confirmed
    anything yet: traffic that went direct keeps going direct. What `e` has for the same destination wins, and
    an adopted route that overlaps one of `e`'s (a fresher view of that space) or our own space `own` goes: a
    peer's old range part of which has come to us since would send our own pods' traffic to that peer."""
    keys = {r.key for r in e.routes}
    ours = [ipaddress.ip_network(n) for n in own]
    fresh = [(r.table, ipaddress.ip_network(r.dst)) for r in e.routes if r.kind != "unreachable"]

    def stale(r: Route) -> bool:
        if r.kind == "unreachable":
            return False
        net = ipaddress.ip_network(r.dst)
        near = [*ours, *(n for table, n in fresh if table == r.table)]
        return any(net.version == n.version and net.overlaps(n) for n in near)

    kept = {r for r in routes if r.key not in keys and not stale(r)}
    merged = tuple(
        replace(c, rules=c.rules + tuple(r for r in chains.get(c.name, ()) if r not in c.rules)) for c in e.chains
    )
    sources = tuple(sorted(set(e.sources) | {r.via for r in kept if r.via}))
    return replace(e, routes=e.routes | kept, chains=merged, sources=sources)
