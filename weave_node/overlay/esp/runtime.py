"""The shell around the ESP core (sas.py) for the overlay service: the "esp" channel, the links from the mesh's
neighbours, and the xfrm half of each sync. The core lives on the event loop; `sync_first`/`sync_last` run in the
service's worker thread with values the loop computed (the desired xfrm state) and return values (the kernel's)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from weave_node.datapath import xfrm
from weave_node.datapath.model import VXLAN_PORT
from weave_node.datapath.xfrm import Policy, Sa, Xfrm, XfrmOp
from weave_node.mesh.errors import ProtocolError
from weave_node.mesh.gossip import GossipChannel
from weave_node.mesh.neighbours import Neighbour
from weave_node.mesh.peer import format_name
from weave_node.overlay.esp.keys import esp_keys
from weave_node.overlay.esp.sas import EspSas, Link
from weave_node.overlay.peers import vtep_address
from weave_node.overlay.unicast import UnicastOnly

log = logging.getLogger("weave_node.overlay")
CHANNEL = "esp"
FEATURE = "fastdp-esp"  # a mesh feature: our kernel carries ESP as we use it (WEAVE_ENCRYPTION auto or esp)


def link_of(n: Neighbour, vtep: str | None) -> Link | str:
    """The ESP link to a neighbour, or why it gets none: both ends must offer ESP, the connection must be encrypted
    (its keys are the ESP keys' root), and the VXLAN must go to the connection's address (SAs are bound to
    addresses)."""
    if FEATURE not in n.features:
        return "the peer does not offer ESP (its kernel cannot, it runs an older weave-node, or WEAVE_ENCRYPTION)"
    if not n.encrypted or n.sleeve_keys is None:
        return "the mesh connection to it is not encrypted"
    local, remote = vtep_address(n.local_address), vtep_address(n.remote_address)
    if not local or not remote or (":" in local) != (":" in remote):
        return "the mesh connection has no underlay address of one family at both ends"
    if remote != vtep:
        return f"its VXLAN goes to {vtep or 'no address'}, not to the mesh connection's {remote}"
    return Link(local, remote, esp_keys(n.sleeve_keys))


def remove_leftovers(kernel: Any) -> int:
    """Without ESP now: our SAs and policies of an earlier run (with ESP) go. Returns how many; a kernel without
    xfrm has none."""
    try:
        ops = xfrm.removal(kernel.xfrm_observe())
        applied, errors = kernel.xfrm_apply(ops)
    except Exception as exc:  # (no xfrm in this kernel, no `ip`): nothing of ours can be there
        log.debug("ESP leftovers not looked for: %s", exc)
        return 0
    for error in errors:
        log.error("datapath: %s", error)
    if applied:
        log.info("ESP is not used now: removed %d SA(s) and policies of an earlier run", applied)
    return int(applied)


def esp_runtime(
    config: Any, fastdp: bool, kernel: Any, clock: Callable[[], float], wake: Callable[[], None]
) -> EspRuntime | None:
    """The runtime when pod traffic between hosts is ESP's (a password, WEAVE_ENCRYPTION allowing it, a kernel
    that can, fastdp on), else None."""
    if not (config.encrypt and config.esp and fastdp):
        return None
    return EspRuntime(VXLAN_PORT, kernel.xfrm_observe, kernel.xfrm_apply, clock, wake,
                      core=EspSas(rekey_interval=config.esp_rekey))  # fmt: skip


@dataclass(frozen=True)
class SyncInput:
    desired: Xfrm
    links: frozenset[tuple[str, str]]  # (local, remote) of every ESP link
    established: frozenset[str]  # the remote addresses of the peers keyed both ways


@dataclass
class EspRuntime(UnicastOnly):
    port: int
    observe: Callable[[], Xfrm]
    apply: Callable[[list[XfrmOp]], tuple[int, list[str]]]
    clock: Callable[[], float]
    wake: Callable[[], None]  # the service's reconcile loop: a sync is due
    core: EspSas = field(default_factory=EspSas)
    channel: GossipChannel | None = None
    links: dict[int, Link] = field(default_factory=dict)
    why_not: dict[int, str] = field(default_factory=dict)  # the peers without a link: why
    up: set[int] = field(default_factory=set)  # keyed both ways at the last sync (logged on change)
    errors: tuple[str, ...] = ()  # of the last sync
    seen: Xfrm | None = None  # what sync_first read, when it changed nothing (sync_last needs no second read)
    garbled: int = 0

    # ---- the "esp" channel (gossip.Gossiper) --------------------------------------------------------------

    def on_unicast(self, src: int, data: bytes) -> None:
        try:
            sends = self.core.on_message(self.clock(), src, data)
        except ProtocolError:
            self.garbled += 1
            raise
        self._send(sends)
        self.wake()  # an OFFER gives us an outbound SA to install

    # ---- on the event loop --------------------------------------------------------------------------------

    def update(
        self, kept: Iterable[int], vteps: Mapping[int, str], neighbour: Callable[[int], Neighbour | None]
    ) -> frozenset[int]:
        """The peers whose VXLAN is ESP's: connected ones that qualify (link_of), and retained ones (connection gone,
        forwarding entries kept a while) with their last link. The others get no VXLAN at all."""
        links: dict[int, Link] = {}
        why_not: dict[int, str] = {}
        for name in kept:
            n = neighbour(name)
            if n is not None:
                link: Link | str = link_of(n, vteps.get(name))
            else:
                last = self.links.get(name)
                link = last if last is not None and vteps.get(name) == last.remote else "no mesh connection to it"
            if isinstance(link, Link):
                links[name] = link
            else:
                why_not[name] = link
        self.links, self.why_not = links, why_not
        self.core.set_links(self.clock(), links)
        return frozenset(links)

    def sync_input(self) -> SyncInput:
        """What a sync needs of the core (taken on the event loop, used in the worker thread)."""
        return SyncInput(
            self.core.desired(self.port),
            frozenset((link.local, link.remote) for link in self.links.values()),
            frozenset(link.remote for name, link in self.links.items() if self.core.established(name)),
        )

    def tick(self) -> None:
        before = self.core.version
        self._send(self.core.tick(self.clock()))
        if self.core.version != before:
            self.wake()  # a rekey (a new inbound SA) or a retired one

    def synced(self, kernel: Xfrm) -> None:
        self._send(self.core.observed(self.clock(), kernel.sas, kernel.other_spis))
        up = {name for name in self.links if self.core.established(name)}
        for name in sorted(up - self.up):
            spis = self.core.status(name)
            log.info("ESP with peer %s: keyed both ways (out %s, in %s)", format_name(name), spis["spi_out"],
                     spis["spi_in"][-1])  # fmt: skip
        for name in sorted(self.up - up):
            log.info("ESP with peer %s: no longer keyed", format_name(name))
        self.up = up

    # ---- in the worker thread -----------------------------------------------------------------------------

    def prepare(self) -> None:
        """At start, before the first SPI is drawn: every SPI already in the kernel."""
        try:
            kernel = self.observe()
        except Exception as exc:  # (the first sync says it again)
            log.debug("ip xfrm: %s", exc)
            return
        self.core.kernel_spis = frozenset(sa.spi for sa in kernel.sas) | kernel.other_spis

    def sync_first(self, plan_input: SyncInput, fdb_vteps: frozenset[str]) -> tuple[list[XfrmOp], frozenset[str]]:
        """Policies and SAs to add before the datapath's plan runs. Returns what to remove after it, and the peer
        addresses whose policies are not both in place (their FDB entries must wait: nothing in the clear).

        Kept though not wanted, while an FDB entry still sends VXLAN to the peer's address (entries adopted at a
        restart, or a departed peer's, retained): its policies, and its SAs until the core has keyed the peer
        anew (at a restart the peer still sends with the SAs of before, and our old outbound one still works)."""
        try:
            observed = self.observe()
        except Exception as exc:  # (xfrm_shell.XfrmError: no xfrm here, no `ip`): no ESP peer gets VXLAN
            self.errors, self.seen = (f"ip xfrm: {exc}",), None
            return [], frozenset(remote for _local, remote in plan_input.links)
        current = {remote: local for local, remote in plan_input.links}

        def kept_policy(p: Policy) -> bool:
            local, remote = (p.src, p.dst) if p.direction == "out" else (p.dst, p.src)
            return remote in fdb_vteps and current.get(remote, local) == local

        def kept_sa(sa: Sa) -> bool:
            remote = sa.dst if sa.dst in fdb_vteps else sa.src
            return remote in fdb_vteps and remote not in plan_input.established

        want = Xfrm(
            plan_input.desired.sas | {sa for sa in observed.sas if kept_sa(sa)},
            plan_input.desired.policies | {p for p in observed.policies if kept_policy(p)},
        )
        first, last = xfrm.plan(want, observed, self.port)
        _, errors = self.apply(first)
        self.errors = tuple(errors)
        self.seen = observed if not first and not last else None
        present = observed.policies
        if errors or any(isinstance(op, xfrm.AddPolicy) for op in first):  # (seen, not assumed: an add that
            try:  # found "File exists" may have found someone else's policy with our selector)
                present = self.observe().policies
            except Exception:
                present = frozenset()
        blocked = frozenset(
            remote
            for local, remote in plan_input.links
            if Policy(local, remote, "out", self.port) not in present
            or Policy(remote, local, "in", self.port) not in present
        )
        return last, blocked

    def sync_last(self, last: list[XfrmOp]) -> Xfrm | None:
        """What goes after the datapath's plan; then our SAs in the kernel (None: unreadable): as sync_first read
        them when this sync changes nothing of ours, read again otherwise."""
        if self.seen is not None and not last:
            return self.seen
        _, errors = self.apply(last)
        self.errors += tuple(errors)
        try:
            return self.observe()
        except Exception as exc:
            self.errors += (f"ip xfrm: {exc}",)
            return None

    # ---- status -------------------------------------------------------------------------------------------

    def peer_status(self, name: int) -> dict[str, Any]:
        return self.core.status(name)

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "esp",
            "peers": len(self.links),
            "established": sum(1 for n in self.links if self.core.established(n)),
            "rekeys": self.core.rekeys,
            "ignored_messages": self.core.ignored,
            "garbled_messages": self.garbled,
            "errors": list(self.errors),
        }
