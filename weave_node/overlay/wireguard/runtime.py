"""The shell around WireGuard's pairs (pairs.py) for the overlay service: the "wireguard" channel, the links from
the mesh's neighbours, and the kernel half of each sync (datapath/wireguard.py's plan). Like ESP's runtime
(overlay/esp/runtime.py) it is called on the event loop (update, messages, tick) and in the service's worker
thread (prepare, sync_first, sync_last)."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from weave_node.datapath import wireguard as wg
from weave_node.datapath.wireguard import WgDevice, WgObserved, WgOp
from weave_node.mesh.errors import ProtocolError
from weave_node.mesh.gossip import GossipChannel
from weave_node.mesh.neighbours import Neighbour
from weave_node.mesh.peer import format_name
from weave_node.overlay.peers import vtep_address
from weave_node.overlay.unicast import UnicastOnly
from weave_node.overlay.wireguard import keys
from weave_node.overlay.wireguard.pairs import Link, WgPairs

WG_DEVICE = wg.DEVICE

log = logging.getLogger("weave_node.overlay")
CHANNEL = "wireguard"
FEATURE = "fastdp-wireguard"  # a mesh feature: VXLAN in WireGuard here (WEAVE_ENCRYPTION wireguard, or auto)
VXLAN6_OVERHEAD = 40 + 8 + 8 + 14  # VXLAN over IPv6 inside the tunnel: IPv6, UDP, VXLAN, the frame's Ethernet


def link_of(n: Neighbour) -> Link | str:
    """The WireGuard link to a neighbour, or why it gets none: both ends must offer it and the connection must be
    encrypted (its keys give the pair's preshared key; its underlay address is the endpoint)."""
    if FEATURE not in n.features:
        return "the peer does not offer WireGuard (its kernel cannot, it runs an older weave-node, or WEAVE_ENCRYPTION)"
    if not n.encrypted or n.sleeve_keys is None:
        return "the mesh connection to it is not encrypted"
    remote = vtep_address(n.remote_address)
    if not remote:
        return "the mesh connection has no underlay address"
    return Link(remote, keys.wg_keys(n.sleeve_keys))


@dataclass(frozen=True)
class WgInput:
    device: WgDevice
    tunnel: frozenset[str]  # the tunnel addresses of every linked peer


@dataclass
class WgRuntime(UnicastOnly):
    me: int
    observe: Callable[[], WgObserved]
    apply: Callable[[list[WgOp]], tuple[int, list[str]]]
    clock: Callable[[], float]
    wake: Callable[[], None]
    wall: Callable[[], float] = time.time
    core: WgPairs = field(default_factory=lambda: WgPairs(b""))
    private_key: bytes = field(default=b"", repr=False)
    mtu: int = 1440  # the device's: the pods' plus VXLAN over IPv6
    channel: GossipChannel | None = None
    why_not: dict[int, str] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    seen: WgObserved | None = None
    kernel: WgObserved = field(default_factory=WgObserved)  # as of the last sync
    up: set[int] = field(default_factory=set)  # peers with a handshake at the last sync (logged on change)
    garbled: int = 0

    @property
    def local(self) -> str:
        """Our tunnel address: the VXLAN device's source."""
        return keys.address(self.me)

    @property
    def links(self) -> dict[int, Link]:
        return self.core.links

    # ---- the "wireguard" channel --------------------------------------------------------------------------

    def on_unicast(self, src: int, data: bytes) -> None:
        if not self.core.public_key:
            return  # (before prepare(): the peer asks again)
        try:
            sends = self.core.on_message(self.clock(), src, data)
        except ProtocolError:
            self.garbled += 1
            raise
        self._send(sends)
        self.wake()

    # ---- on the event loop --------------------------------------------------------------------------------

    def update(
        self, kept: Iterable[int], vteps: Mapping[int, str], neighbour: Callable[[int], Neighbour | None]
    ) -> frozenset[int]:
        """The peers whose VXLAN runs in WireGuard: connected ones that qualify (link_of), and retained ones with
        their last link. The others get no VXLAN at all (the sealed sleeve)."""
        links: dict[int, Link] = {}
        why_not: dict[int, str] = {}
        for name in kept:
            n = neighbour(name)
            link = link_of(n) if n is not None else self.links.get(name) or "no mesh connection to it"
            if isinstance(link, Link):
                links[name] = link
            else:
                why_not[name] = link
        self.why_not = why_not
        if not self.core.public_key:  # (before prepare(): nothing is ours to offer yet)
            return frozenset()
        self._send(self.core.set_links(self.clock(), links))
        return frozenset(links)

    def tunnel_vteps(self, vteps: Mapping[int, str]) -> dict[int, str]:
        """The VTEPs for the VXLAN device: a linked peer's tunnel address instead of its underlay's."""
        return {**vteps, **{name: keys.address(name) for name in self.links}}

    def sync_input(self) -> WgInput:
        device = WgDevice(self.private_key, f"{self.local}/{keys.PREFIX.prefixlen}", self.mtu,
                          peers=self.core.peers())  # fmt: skip
        return WgInput(device, frozenset(keys.address(n) for n in self.links))

    def tick(self) -> None:
        if self.core.public_key:
            self._send(self.core.tick(self.clock()))

    def synced(self, kernel: WgObserved) -> None:
        self.kernel = kernel
        up = {n for n in self.links if self._fresh(n)}
        for name in sorted(up - self.up):
            log.info("WireGuard with peer %s: handshake done", format_name(name))
        for name in sorted(self.up - up):
            log.info("WireGuard with peer %s: no current handshake", format_name(name))
        self.up = up

    # ---- in the worker thread -----------------------------------------------------------------------------

    def prepare(self) -> None:
        """At start: our key pair, the one of a device of before (peers keep theirs for us: traffic flows through
        the restart), else a new one."""
        try:
            found = self.observe()
        except Exception as exc:
            log.debug("WireGuard: %s", exc)
            found = WgObserved()
        if found.ours and len(found.private_key) == keys.KEY_BYTES and any(found.private_key):
            self.private_key = found.private_key
        else:
            self.private_key = keys.new_private_key()
        self.core.public_key = keys.public_key(self.private_key)
        log.info("WireGuard: device %s on UDP %d, public key %s", wg.DEVICE, wg.PORT,
                 base64.b64encode(self.core.public_key).decode())  # fmt: skip

    def sync_first(self, given: WgInput, fdb_vteps: frozenset[str]) -> tuple[list[WgOp], frozenset[str]]:
        """The device and the wanted peers before the datapath's plan runs. Returns what goes after it (peers
        neither wanted nor still sent to), and the tunnel addresses whose peers are not in place (their FDB
        entries wait)."""
        if not self.private_key:
            self.errors = ("WireGuard: no key yet",)
            return [], given.tunnel
        try:
            observed = self.observe()
        except Exception as exc:
            self.errors, self.seen = (f"WireGuard: {exc}",), None
            return [], given.tunnel
        if observed.kind and not observed.ours:
            self.errors, self.seen = (f"a {observed.kind} link named {wg.DEVICE} exists that weave-node did not "
                                      "create; it stays, and WireGuard is off until it is removed",), None  # fmt: skip
            return [], given.tunnel
        first, last = wg.plan(given.device, observed, keep=fdb_vteps, now=self.wall())
        try:
            _, errors = self.apply(first)
        except Exception as exc:  # (the datapath's sync goes on: these peers wait)
            self.errors, self.seen = (f"WireGuard: {exc}",), None
            return [], given.tunnel
        self.errors = tuple(errors)
        self.seen = observed if not first and not last else None
        device_failed = any(not e.startswith(("SetPeer", "RemovePeer")) for e in errors)
        failed = {
            op.peer.allowed.split("/")[0]
            for op in first
            if isinstance(op, wg.SetPeer) and any(e.startswith(wg.describe(op)) for e in errors)
        }
        return last, (given.tunnel if device_failed else frozenset(failed))

    def sync_last(self, last: list[WgOp]) -> WgObserved | None:
        if self.seen is not None and not last:
            return self.seen
        try:
            if last:
                _, errors = self.apply(last)
                self.errors += tuple(errors)
            return self.observe()
        except Exception as exc:
            self.errors += (f"WireGuard: {exc}",)
            return None

    # ---- status -------------------------------------------------------------------------------------------

    def _fresh(self, name: int) -> bool:
        """A handshake with the peer within WireGuard's session lifetime."""
        state = self._state(name)
        return state is not None and 0 < self.wall() - state.handshake < wg.FRESH

    def _state(self, name: int) -> wg.PeerState | None:
        theirs = self.core.theirs.get(name)
        return self.kernel.peer(theirs[1]) if theirs else None

    def peer_status(self, name: int) -> dict[str, Any]:
        link = self.links.get(name)
        if link is None:
            return {}
        state = self._state(name)
        theirs = self.core.theirs.get(name)
        handshake = state.handshake if state is not None else 0.0
        return {
            "by": "wireguard",
            "keyed": self.core.keyed(name) and self._fresh(name),
            "endpoint": f"{link.endpoint}:{self.core.port}",
            "public_key": base64.b64encode(theirs[1]).decode() if theirs else None,
            "handshake_age": round(self.wall() - handshake, 1) if handshake else None,
            "rx_bytes": state.rx_bytes if state else 0,
            "tx_bytes": state.tx_bytes if state else 0,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "wireguard",
            "device": wg.DEVICE,
            "port": self.core.port,
            "public_key": base64.b64encode(self.core.public_key).decode() if self.core.public_key else None,
            "peers": len(self.links),
            "established": len(self.up),
            "ignored_messages": self.core.ignored,
            "garbled_messages": self.garbled,
            "errors": list(self.errors),
        }


def wg_runtime(  # noqa: PLR0917 - the same as esp_runtime, and our name
    me: int, config: Any, fastdp: bool, kernel: Any, clock: Callable[[], float], wake: Callable[[], None]
) -> WgRuntime | None:
    if not (config.encrypt and config.wireguard and fastdp):
        return None
    return WgRuntime(me, kernel.wg_observe, kernel.wg_apply, clock, wake)


def remove_leftovers(kernel: Any) -> bool:
    """Without WireGuard now: our device of an earlier run goes (and its peers with it)."""
    try:
        gone = bool(kernel.wg_remove())
    except Exception as exc:
        log.error("datapath: %s", exc)
        return False
    if gone:
        log.info("WireGuard is not used now: removed %s of an earlier run", wg.DEVICE)
    return gone
