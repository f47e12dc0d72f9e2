"""The overlay's direct-mode state between syncs (a thin shell around overlay.direct): whether direct mode is on
and why not, what the kernel said about the route to each VTEP (asked in the datapath thread at each sync), and
the IPAM space per peer the last desired state used."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from weave_node.datapath.model import Observed, Route
from weave_node.overlay import direct
from weave_node.overlay.kernel import Kernel

log = logging.getLogger("weave_node.overlay")
Spans = Mapping[int, list[tuple[int, int]]]


class DirectPaths:
    def __init__(self, kernel: Kernel, space: Callable[[], Spans]) -> None:
        self.kernel = kernel
        self.space = space  # IPAM: the spans each peer owns
        self.off_reason: str | None = "not started"
        self.routes_to: dict[str, tuple[str, str] | None] = {}  # VTEP -> (device, gateway) of our route to it
        self.found: dict[int, direct.Candidate] = {}
        self.strict: set[str] = set()  # underlay devices with strict rp_filter: no direct path through them
        self._space: dict[int, tuple[str, ...]] = {}
        # What a previous run left in the kernel, kept until `adopt_until` (overlay.direct.with_adopted)
        self.adopted_routes: frozenset[Route] = frozenset()
        self.adopted_chains: dict[str, tuple[str, ...]] = {}
        self.adopt_until = 0.0

    def adopt(self, observed: Observed, until: float) -> None:
        """At start: keep the direct routes and ARP rules found in the kernel until `until` (or confirmation)."""
        if not self.on:
            return
        self.adopted_routes = observed.routes
        mine = (direct.ARP_CHAIN, direct.PROXY_CHAIN)
        chains = (observed.ebtables or {}).get("filter", {})
        self.adopted_chains = {name: rules for name, rules in chains.items() if name in mine}
        self.adopt_until = until
        if self.adopted_routes:
            log.info("direct mode: adopting %d route(s) until the direct heartbeats confirm", len(self.adopted_routes))

    def start(self, *, wanted: bool, fastdp: bool, encrypt: bool, ipv6_only: bool = False) -> None:
        if not wanted:
            self.off_reason = "turned off (--no-direct)"
        elif ipv6_only:
            self.off_reason = "IPv4's only (IPv6 pod traffic crosses hosts on layer 2, in the tunnel)"
        elif encrypt:
            self.off_reason = "a password is set: pod traffic between hosts goes sealed through the sleeve"
        elif not fastdp:
            self.off_reason = "needs the fast datapath (VXLAN carries broadcast and multicast)"
        elif not self.kernel.ebtables():
            self.off_reason = "ebtables is not installed (it keeps ARP answers apart): install it, restart the router"
        else:
            self.off_reason = None
        log.info("direct mode (no encapsulation between L2 neighbours): %s", self.off_reason or "on")

    @property
    def on(self) -> bool:
        return self.off_reason is None

    def probe(self, vteps: Iterable[str]) -> bool:
        """Ask the kernel how it reaches each VTEP (datapath thread); True when that changed."""
        if not self.on:
            return False
        found = self.kernel.routes_via(sorted(set(vteps)))
        strict = {dev for dev, _ in filter(None, found.values()) if self.kernel.rp_filter(dev) == 1}
        for dev in sorted(strict - self.strict):
            log.warning(
                "direct mode: rp_filter is strict on %s, which drops pod-addressed packets from its peers before they "
                "are confirmed: no direct path through it (net.ipv4.conf.%s.rp_filter=2 allows it)",
                dev,
                dev,
            )
        changed = found != self.routes_to or strict != self.strict
        self.routes_to, self.strict = found, strict
        return changed

    def entries(
        self,
        me: int,
        vteps: Mapping[int, str],
        bridges: Mapping[int, str],
        confirmed: Iterable[int],
        *,
        src: str,
        now: float,
    ) -> direct.Entries:
        self.found = direct.candidates(vteps, bridges, self.routes_to, exclude=self.strict)
        self._space = self.current_space()
        e = direct.entries(self.found, confirmed, self._space, me, src)
        if now < self.adopt_until:
            return direct.with_adopted(e, self.adopted_routes, self.adopted_chains, own=self._space.get(me, ()))
        self.adopted_routes, self.adopted_chains = frozenset(), {}
        return e

    def current_space(self) -> dict[int, tuple[str, ...]]:
        return {peer: direct.cidrs(spans) for peer, spans in self.space().items()}

    def space_changed(self) -> bool:
        """After an IPAM change: does a direct peer's space differ from what the routes say?"""
        return self.on and self.current_space() != self._space
