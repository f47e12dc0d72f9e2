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
RESEND = 2.0  # an unanswered OFFER (or REKEY request) is sent again after this long
RETIRE_GRACE = 5.0  # an inbound SA stays this long after its successor was acknowledged (packets in flight)
STALE = 120.0  # an offered, never acknowledged inbound SA of an older connection goes after this long
REDRAW_AFTER = 3  # syncs without the inbound SA showing in the kernel: another SPI (a foreign SA may hold it)

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
    syncs: int = 0  # syncs that did not show it in the kernel


@dataclass
class _Outbound:
    spi: int
    generation: int
    session: bytes  # of the OFFER it answers
    key: bytes = field(repr=False)
    installed: bool = False


@dataclass
class _Peer:
    link: Link
    session: bytes
    inbound: list[_Inbound]
    rekey_at: float
    outbound: _Outbound | None = None
    sending: bool = False  # an outbound SA of ours is in the kernel (a rekey's new one replaces it there)
    generation: int = 0  # the next inbound generation: never one twice with a session's keys
    asked_at: float | None = None  # when we last asked the peer for an OFFER (REKEY)
    rekey_started: float = -1e18


@dataclass
class EspSas:
    rng: Callable[[int], bytes] = secrets.token_bytes
    rekey_interval: float = REKEY_INTERVAL
    peers: dict[int, _Peer] = field(default_factory=dict)
    ignored: int = 0  # messages about another connection's keys, or from a peer without a link (stale)
    rekeys: int = 0
    kernel_spis: frozenset[int] = frozenset()  # of every SA last seen in the kernel (a new SPI avoids them)
    version: int = 0  # raised whenever `desired` may have changed

    # ---- inputs -------------------------------------------------------------------------------------------

    def set_links(self, now: float, links: Mapping[int, Link]) -> None:
        """The ESP-capable neighbours now. A gone peer loses everything; a new connection (other keys) or other
        addresses start again at generation 0 (the old inbound SAs stay until the new one is acknowledged)."""
        for name in set(self.peers) - set(links):
            del self.peers[name]
            self.version += 1
        for name, link in links.items():
            session = session_id(link.keys)
            peer = self.peers.get(name)
            if peer is not None and (peer.link.local, peer.link.remote) != (link.local, link.remote):
                peer = None  # SAs are bound to addresses: start over (new SPIs, so new keys)
            if peer is None:
                peer = self.peers[name] = _Peer(link, session, [], now + self.rekey_interval)
                self._new_inbound(peer)
            elif peer.session != session:
                peer.link, peer.session, peer.rekey_at = link, session, now + self.rekey_interval
                peer.generation, peer.asked_at = 0, None
                # Never offered (the peer cannot know them): gone now. Offered, never acknowledged: STALE.
                peer.inbound = [sa for sa in peer.inbound if sa.acked or sa.offered_at is not None]
                for sa in peer.inbound:
                    if not sa.acked and sa.retire_at is None:
                        sa.retire_at = now + STALE
                self._new_inbound(peer)

    def observed(self, now: float, kernel: frozenset[Sa], others: frozenset[int] = frozenset()) -> list[Send]:
        """Our SAs in the kernel after a sync (`others`: the SPIs of everyone else's): what became installed is
        offered (inbound) or acknowledged (outbound); one of ours that vanished (someone flushed it) is not put
        back with its key (its sequence numbers would start again): an inbound one is replaced by a new
        generation, an outbound one dropped (the peer is asked for a new OFFER)."""
        self.kernel_spis = frozenset(sa.spi for sa in kernel) | others
        out: list[Send] = []
        for name, peer in self.peers.items():
            for sa in list(peer.inbound):
                there = self._in_sa(peer, sa) in kernel
                if sa.installed and not there:
                    peer.inbound.remove(sa)
                    self.version += 1
                elif not sa.installed and there:
                    sa.installed = True
                    if sa.session == peer.session:  # (one of an older connection is never offered)
                        sa.offered_at = now
                        out.append((name, wire.encode(wire.Offer(peer.session, sa.generation, sa.spi))))
                elif not sa.installed:
                    sa.syncs += 1
                    if sa.syncs >= REDRAW_AFTER and sa.session == peer.session:
                        peer.inbound.remove(sa)  # its SPI taken by someone else's SA, say: another one
                        self.version += 1
            if not any(sa.session == peer.session and sa.retire_at is None for sa in peer.inbound):
                self._new_inbound(peer)
            ob = peer.outbound
            if ob is not None:
                there = self._out_sa(peer, ob) in kernel
                if ob.installed and not there:
                    peer.outbound, peer.sending = None, False
                    self.version += 1
                elif not ob.installed and there:
                    ob.installed = peer.sending = True
                    out.append((name, wire.encode(wire.Ack(ob.session, ob.spi))))
        return out

    def on_message(self, now: float, src: int, data: bytes) -> list[Send]:
        """A message from `src` on the "esp" channel (ProtocolError: garbled)."""
        message = wire.decode(data)
        peer = self.peers.get(src)
        if peer is None or message.session != peer.session:
            self.ignored += 1
            return []
        if isinstance(message, wire.Rekey):
            return self._on_rekey(now, src, peer)
        if isinstance(message, wire.Ack):
            self._on_ack(now, peer, message)
            return []
        return self._on_offer(src, peer, message)

    def _on_rekey(self, now: float, src: int, peer: _Peer) -> list[Send]:
        """The peer has no outbound SA for this connection: a fresh inbound one (or our pending OFFER again)."""
        newest = peer.inbound[-1] if peer.inbound else None
        if newest is not None and newest.acked and now - peer.rekey_started >= RESEND:
            self._rekey(peer, now)
        elif newest is not None and newest.installed and not newest.acked:
            return [(src, wire.encode(wire.Offer(peer.session, newest.generation, newest.spi)))]
        return []

    def _on_ack(self, now: float, peer: _Peer, message: wire.Ack) -> None:
        acked = next((sa for sa in peer.inbound if sa.spi == message.spi and sa.session == peer.session), None)
        if acked is None:
            self.ignored += 1
            return
        acked.acked, acked.retire_at = True, None
        for sa in peer.inbound[: peer.inbound.index(acked)]:  # older (also of an older connection)
            if sa.retire_at is None or sa.retire_at > now + RETIRE_GRACE:
                sa.retire_at = now + RETIRE_GRACE

    def _on_offer(self, src: int, peer: _Peer, message: wire.Offer) -> list[Send]:
        ob = peer.outbound
        if ob is not None and ob.session == peer.session:
            if (ob.spi, ob.generation) == (message.spi, message.generation):
                # (a repeated OFFER: our ACK was lost, or crossed it)
                return [(src, wire.encode(wire.Ack(peer.session, ob.spi)))] if ob.installed else []
            if message.generation < ob.generation:
                self.ignored += 1  # an older OFFER, late (or replayed): never back to a retired SA
                return []
        key = sa_key(peer.link.keys.send, message.generation, message.spi)
        peer.outbound = _Outbound(message.spi, message.generation, peer.session, key)
        self.version += 1
        return []

    def tick(self, now: float) -> list[Send]:
        """Resend unanswered OFFERs, ask for an OFFER while we have no outbound SA, start due rekeys, retire inbound
        SAs whose grace has passed."""
        out: list[Send] = []
        for name, peer in self.peers.items():
            kept = [sa for sa in peer.inbound if sa.retire_at is None or sa.retire_at > now]
            if len(kept) != len(peer.inbound):
                peer.inbound = kept
                self.version += 1
            if not any(sa.session == peer.session and sa.retire_at is None for sa in peer.inbound):
                self._new_inbound(peer)
            newest = peer.inbound[-1]
            offered = newest.offered_at
            if newest.installed and not newest.acked and offered is not None and now - offered >= RESEND:
                newest.offered_at = now
                out.append((name, wire.encode(wire.Offer(peer.session, newest.generation, newest.spi))))
            ob = peer.outbound
            if (ob is None or ob.session != peer.session) and (peer.asked_at is None or now - peer.asked_at >= RESEND):
                if peer.asked_at is not None:  # (not at once: the peer's own OFFER is on its way)
                    out.append((name, wire.encode(wire.Rekey(peer.session))))
                peer.asked_at = now
            if now >= peer.rekey_at and newest.acked:
                self._rekey(peer, now)
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
        """Both directions keyed: an outbound SA of ours is in the kernel and the peer acknowledged one of our
        inbound ones (and stays so through rekeys: the old SAs work until their successors are in place)."""
        peer = self.peers.get(name)
        return bool(peer and peer.sending and any(sa.acked for sa in peer.inbound))

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

    def _new_inbound(self, peer: _Peer) -> None:
        spi = self._spi()
        key = sa_key(peer.link.keys.receive, peer.generation, spi)
        peer.inbound.append(_Inbound(spi, peer.generation, peer.session, key))
        peer.generation += 1
        self.version += 1

    def _rekey(self, peer: _Peer, now: float) -> None:
        self._new_inbound(peer)
        peer.rekey_at, peer.rekey_started = now + self.rekey_interval, now
        self.rekeys += 1

    def _spi(self) -> int:
        """A random SPI of our block that none of our inbound SAs has (they all share our addresses as dst), nor
        any SA still in the kernel (ours of an earlier run, or anyone else's)."""
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
