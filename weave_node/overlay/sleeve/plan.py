"""What the sleeve forwarder should do now (pure): which peers use the sleeve, the links with their keys, the
routes over the links that answer probes, and the bridges' MACs whose frames never take the sleeve."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace

from weave_node.datapath.model import bridge_mac
from weave_node.mesh.crypto import SessionKeys
from weave_node.mesh.neighbours import Neighbour
from weave_node.mesh.topology import PeerRecord
from weave_node.overlay.health import Mode
from weave_node.overlay.sleeve.config import Config, LinkSpec
from weave_node.overlay.sleeve.routing import sleeve_routes

UDP_IPV4 = 28  # IPv4 + UDP headers: a datagram is the underlay MTU minus these
UDP_IPV6 = 48  # IPv6 + UDP: a peer reached over an IPv6 underlay


def sleeve_peers(
    running: bool,
    fastdp: bool,
    peers: Iterable[int],
    modes: Mapping[int, Mode],
    no_fastdp: frozenset[int] = frozenset(),
) -> frozenset[int]:
    """The peers whose pod traffic goes through the sleeve: none without it, all without fastdp, else those
    whose fast path failed and those that have none (`no_fastdp`: a peer with a password, connected to us in
    plaintext while encryption is switched, runs no VXLAN)."""
    if not running:
        return frozenset()
    if not fastdp:
        return frozenset(peers)
    return frozenset(n for n, mode in modes.items() if mode is Mode.SLEEVE) | (no_fastdp & set(peers))


def direct_links(
    direct: Mapping[int, str],
    underlay_mtu: int,
    encrypt: bool,
    keys_of: Callable[[int], tuple[SessionKeys, int] | None],
    neighbour: Callable[[int], Neighbour | None],
) -> dict[int, LinkSpec]:
    """The links to our direct connections (see link_specs): with a password, sealed with each connection's keys,
    clear to a peer whose connection is plaintext (taken while encryption is switched on or off)."""
    if not encrypt:
        return link_specs(direct, None, underlay_mtu)
    keys = {n: k for n in direct if (k := keys_of(n)) is not None}
    plain = frozenset(n for n in direct if (c := neighbour(n)) is not None and not c.encrypted)
    return link_specs(direct, keys, underlay_mtu, plain)


def link_specs(
    direct: Mapping[int, str],
    keys: Mapping[int, tuple[SessionKeys, int]] | None,
    underlay_mtu: int,
    plain: frozenset[int] = frozenset(),
) -> dict[int, LinkSpec]:
    """A link per direct connection. `keys` None: no password, clear datagrams. With a password, the connections
    that have sleeve keys (and their cipher) get a sealed link, and those that are plaintext (`plain`: peers
    without a password, taken while turning encryption on or off) a clear one: never a clear datagram to a peer
    whose connection is encrypted."""
    links = {}
    for name, address in sorted(direct.items()):
        largest = underlay_mtu - (UDP_IPV6 if ":" in address else UDP_IPV4)
        if keys is None or (name in plain and name not in keys):
            links[name] = LinkSpec(name, address, None, max_datagram=largest)
        elif name in keys:
            sealed, cipher = keys[name]
            links[name] = LinkSpec(name, address, sealed, max_datagram=largest, cipher=cipher)
    return links


def sleeve_config(
    *,
    me: int,
    links: dict[int, LinkSpec],
    up: Iterable[int],
    records: Mapping[int, PeerRecord],
    sleeve: frozenset[int],
    fastdp: bool,
    peers: Iterable[int],
    encrypt: bool = False,
    modes: Mapping[int, Mode] | None = None,
    no_vxlan: frozenset[int] = frozenset(),
) -> Config:
    """`up`: the links whose probes are answered (the forwarder's report); routes use only those. `encrypt`: we
    have a password, so a clear link (a plaintext connection) is no one else's next hop. `modes`: each peer's,
    for the peers confirmed in fastdp or direct (their late sleeve frames are dropped). `no_vxlan`: the peers with
    no VXLAN between us at all (see sleeve_peers): the sleeve is their bridge's only way, so its MAC is not
    blocked (their host's own traffic, an ARP request for a pod it routes to say, must reach ours)."""
    usable = {n for n in up if n in links}
    plain = frozenset(n for n, spec in links.items() if spec.keys is None) if encrypt else frozenset()
    routes = sleeve_routes(records, me, usable, plain)
    blocked: frozenset[bytes] = frozenset()
    if fastdp:  # heartbeats prove the tunnel: bridge-to-bridge frames never take the sleeve
        blocked = frozenset(bytes.fromhex(bridge_mac(n).replace(":", "")) for n in {*peers, me} - no_vxlan)
    kernel = frozenset(n for n, m in (modes or {}).items() if m in (Mode.FASTDP, Mode.DIRECT) and n not in sleeve)
    return Config(links, routes, sleeve, blocked, kernel if fastdp else frozenset())


def newly_sealed(old: Config | None, new: Config) -> list[tuple[int, int]]:
    """(peer, cipher) of the links that start sealing, or change cipher: the log says so once."""
    before = old.links if old else {}
    return [
        (name, spec.cipher)
        for name, spec in new.links.items()
        if spec.keys is not None and (name not in before or before[name].cipher != spec.cipher)
    ]


def new_routes(config: Config, logged: Mapping[int, int]) -> list[tuple[int, int]]:
    """(destination, next hop) of the sleeve destinations whose route is new since it was last logged."""
    out = []
    for dst in sorted(config.sleeve):
        hop = config.routes.get(dst)
        if hop is not None and logged.get(dst) != hop:
            out.append((dst, hop))
    return out


LINGER = 5.0
"""Seconds a sealed link stays after its mesh connection went (a reconnect, a password rotation step): the
forwarder keeps carrying frames over it until the new connection's link takes over (make-before-break)."""


def with_lingering(
    config: Config,
    previous: Config | None,
    lingering: Mapping[int, tuple[LinkSpec, float]],
    now: float,
    *,
    peers: Collection[int],
    sleeve_before: frozenset[int] = frozenset(),
) -> tuple[Config, dict[int, tuple[LinkSpec, float]]]:
    """`config` plus the sealed links that the overlay's `previous` config (not a merged one) had and `config`
    lost, for LINGER seconds, each also the route to its own peer where the sleeve carries that peer (rather than
    the relay `config` may have found meanwhile: the peer still opens the old keys): (the config to push, the
    lingering links as (spec, until)). A link back in `config` stops lingering; so does an expired one.
    A sleeve destination (in `sleeve_before`, the last pushed) that left the topology but has a link (lingering, or
    a new connection's before the peer's record is back: `peers` are the topology's) stays one over that link: as
    when a router closes every connection at once to take a new password, and for a moment the mesh has no other
    way to it. Its pods' frames go on flowing, with keys it still opens."""
    still = {n: (spec, until) for n, (spec, until) in lingering.items() if until > now and n not in config.links}
    for name, spec in (previous.links if previous else {}).items():
        if name not in config.links and name not in still and spec.keys is not None:
            still[name] = (spec, now + LINGER)
    links = {**config.links, **{n: spec for n, (spec, _) in still.items()}}
    away = frozenset(n for n in links if n in sleeve_before and n not in peers and n not in config.kernel_peers)
    if not still and not away:
        return config, still
    sleeve = config.sleeve | away
    routes = {**config.routes, **{n: n for n in {*still, *away} if n in sleeve}}  # (rather than a relay meanwhile)
    return replace(config, links=links, routes=routes, sleeve=sleeve), still
