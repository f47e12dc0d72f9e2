"""Which ESP SAs we want with each peer, and the messages that agree them (pure: `now` in, messages out).

Each direction is set up by its receiver, so no packet is ever sent with an SA the other end lacks:
1. The receiver picks an SPI (unique among its own), puts the inbound SA in its kernel and, once it sees it
   there, sends OFFER(session, generation, spi) over the mesh.
2. The sender derives the same key, puts the outbound SA in its kernel (the newest SA is the one the kernel uses;
   the older outbound SA goes in the same sync) and, once it sees it there, sends ACK(spi).
3. The receiver then retires its older inbound SAs for that peer after a grace period (packets in flight).
An unanswered OFFER is sent again; a repeated OFFER is answered again. A rekey is step 1 with the next
generation, every `rekey_interval`; a new connection (new session keys) starts again at generation 0. Policies
requiring ESP exist for a peer as long as it has a link here, SAs or not: until both SAs are in place, VXLAN to
and from it is dropped, never sent in the clear.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from weave_node.datapath.xfrm import SPI_MAX, SPI_MIN, Policy, Sa, Xfrm
from weave_node.mesh.crypto import SessionKeys
from weave_node.overlay.esp import wire
from weave_node.overlay.esp.keys import sa_key, session_id

REKEY_INTERVAL = 3600.0
RESEND = 2.0  # an unanswered OFFER is sent again after this long
RETIRE_GRACE = 5.0  # an inbound SA stays this long after its successor was acknowledged (packets in flight)

Send = tuple[int, bytes]  # (peer, message on the "esp" channel)


@dataclass(frozen=True)
class Link:
    """An ESP-capable neighbour now: the underlay addresses of the VXLAN between us, and the connection's ESP keys
    (keys.esp_keys of its sleeve keys)."""

    local: str
    remote: str
    keys: SessionKeys = field(repr=False)


@dataclass
class _Inbound:
    spi: int
    generation: int
    session: bytes  # of the connection whose keys made it: only that session's OFFER names it
    key: bytes = field(repr=False)
    installed: bool = False
    offered_at: float | None = None
    acked: bool = False
    retire_at: float | None = None


@dataclass
class _Outbound:
    spi: int
    generation: int
    key: bytes = field(repr=False)
    installed: bool = False


@dataclass
class _Peer:
    link: Link
    session: bytes
    inbound: list[_Inbound]
    rekey_at: float
    outbound: _Outbound | None = None


@dataclass
class EspSas:
    rng: Callable[[int], bytes] = secrets.token_bytes
    rekey_interval: float = REKEY_INTERVAL
    peers: dict[int, _Peer] = field(default_factory=dict)
    ignored: int = 0  # messages about another connection's keys, or from a peer without a link (stale)
    rekeys: int = 0
    kernel_spis: frozenset[int] = frozenset()  # of our SAs last seen in the kernel (a new SPI avoids them)

    # ---- inputs -------------------------------------------------------------------------------------------

    def set_links(self, now: float, links: Mapping[int, Link]) -> None:
        """The ESP-capable neighbours now. A gone peer loses everything; a new connection (other keys) or other
        addresses start again at generation 0 (the old inbound SAs stay until the new one is acknowledged)."""
        for name in set(self.peers) - set(links):
            del self.peers[name]
        for name, link in links.items():
            session = session_id(link.keys)
            peer = self.peers.get(name)
            if peer is not None and (peer.link.local, peer.link.remote) != (link.local, link.remote):
                peer = None  # SAs are bound to addresses: start over
            if peer is None:
                peer = self.peers[name] = _Peer(link, session, [], now + self.rekey_interval)
                peer.inbound.append(self._inbound(peer, 0))
            elif peer.session != session:
                peer.link, peer.session, peer.rekey_at = link, session, now + self.rekey_interval
                peer.inbound.append(self._inbound(peer, 0))

    def observed(self, now: float, kernel: frozenset[Sa]) -> list[Send]:
        """Our SAs in the kernel after a sync: what became installed is offered (inbound) or acknowledged
        (outbound)."""
        self.kernel_spis = frozenset(sa.spi for sa in kernel)
        out: list[Send] = []
        for name, peer in self.peers.items():
            for sa in peer.inbound:
                if not sa.installed and self._in_sa(peer, sa) in kernel:
                    sa.installed = True
                    if sa.session == peer.session:  # (one of an older connection is never offered)
                        sa.offered_at = now
                        out.append((name, wire.encode(wire.Offer(peer.session, sa.generation, sa.spi))))
            ob = peer.outbound
            if ob is not None and not ob.installed and self._out_sa(peer, ob) in kernel:
                ob.installed = True
                out.append((name, wire.encode(wire.Ack(peer.session, ob.spi))))
        return out

    def on_message(self, now: float, src: int, data: bytes) -> list[Send]:
        """A message from `src` on the "esp" channel (ProtocolError: garbled)."""
        message = wire.decode(data)
        peer = self.peers.get(src)
        if peer is None or message.session != peer.session:
            self.ignored += 1
            return []
        if isinstance(message, wire.Ack):
            acked = next((sa for sa in peer.inbound if sa.spi == message.spi and sa.session == peer.session), None)
            if acked is None:
                self.ignored += 1
                return []
            acked.acked = True
            for sa in peer.inbound[: peer.inbound.index(acked)]:  # older (also of an older connection)
                if sa.retire_at is None:
                    sa.retire_at = now + RETIRE_GRACE
            return []
        ob = peer.outbound
        if ob is not None and ob.spi == message.spi and ob.generation == message.generation:
            # (a repeated OFFER: our ACK was lost, or crossed it)
            return [(src, wire.encode(wire.Ack(peer.session, ob.spi)))] if ob.installed else []
        key = sa_key(peer.link.keys.send, message.generation)
        peer.outbound = _Outbound(message.spi, message.generation, key)
        return []

    def tick(self, now: float) -> list[Send]:
        """Resend unanswered OFFERs, start due rekeys, retire inbound SAs whose grace has passed."""
        out: list[Send] = []
        for name, peer in self.peers.items():
            peer.inbound = [sa for sa in peer.inbound if sa.retire_at is None or sa.retire_at > now]
            newest = peer.inbound[-1] if peer.inbound else None
            if newest is None:
                peer.inbound.append(self._inbound(peer, 0))
                continue
            offered = newest.offered_at  # (the newest is always the current connection's)
            if newest.installed and not newest.acked and offered is not None and now - offered >= RESEND:
                newest.offered_at = now
                out.append((name, wire.encode(wire.Offer(peer.session, newest.generation, newest.spi))))
            if now >= peer.rekey_at and newest.acked:
                peer.inbound.append(self._inbound(peer, newest.generation + 1))
                peer.rekey_at = now + self.rekey_interval
                self.rekeys += 1
        return out

    # ---- outputs ------------------------------------------------------------------------------------------

    def desired(self, port: int) -> Xfrm:
        sas: set[Sa] = set()
        policies: set[Policy] = set()
        for peer in self.peers.values():
            link = peer.link
            policies.add(Policy(link.local, link.remote, "out", port))
            policies.add(Policy(link.remote, link.local, "in", port))
            sas.update(self._in_sa(peer, sa) for sa in peer.inbound)
            if peer.outbound is not None:
                sas.add(self._out_sa(peer, peer.outbound))
        return Xfrm(frozenset(sas), frozenset(policies))

    def established(self, name: int) -> bool:
        """Both directions keyed: our outbound SA is in the kernel and the peer acknowledged one of our inbound."""
        peer = self.peers.get(name)
        return bool(peer and peer.outbound and peer.outbound.installed and any(sa.acked for sa in peer.inbound))

    def status(self, name: int) -> dict[str, Any]:
        peer = self.peers.get(name)
        if peer is None:
            return {}
        ob = peer.outbound
        return {
            "established": self.established(name),
            "spi_in": [f"{sa.spi:#010x}" for sa in peer.inbound],
            "spi_out": f"{ob.spi:#010x}" if ob else None,
            "generation": max((sa.generation for sa in peer.inbound), default=0),
        }

    # ---- helpers ------------------------------------------------------------------------------------------

    def _inbound(self, peer: _Peer, generation: int) -> _Inbound:
        return _Inbound(self._spi(), generation, peer.session, sa_key(peer.link.keys.receive, generation))

    def _spi(self) -> int:
        """A random SPI of our block that none of our inbound SAs has (they all share our addresses as dst), nor
        any SA of ours still in the kernel (one of an earlier run has another key)."""
        used = {sa.spi for peer in self.peers.values() for sa in peer.inbound} | self.kernel_spis
        span = SPI_MAX - SPI_MIN + 1
        while True:
            spi = SPI_MIN + int.from_bytes(self.rng(4), "big") % span
            if spi not in used:
                return spi

    @staticmethod
    def _in_sa(peer: _Peer, sa: _Inbound) -> Sa:
        return Sa(peer.link.remote, peer.link.local, sa.spi, sa.key)

    @staticmethod
    def _out_sa(peer: _Peer, sa: _Outbound) -> Sa:
        return Sa(peer.link.local, peer.link.remote, sa.spi, sa.key)
