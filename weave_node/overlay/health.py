"""Per-peer health of the fast datapath and the choice of mode (pure, driven by `now`).

Every `interval` each router sends a small UDP heartbeat from its bridge address to each peer's bridge address;
the packet crosses the VXLAN tunnel, so receiving it proves the kernel path from that peer to us. Like BFD,
each heartbeat says whether we have heard from the receiver lately, so both ends learn that both directions
work. A peer is `fastdp` while both hold within `timeout`.

The mode switch is designed for the userspace fallback (sleeve): `choose_mode` picks sleeve for a peer whose
fast path failed when sleeve is available, and reports `down` with the reason otherwise.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import StrEnum

MAGIC = b"WNHB"
_MSG = struct.Struct(">4sBQQB")  # magic, version, src name, dst name, flags (1 = "I hear you")
HEARD = 1


class Mode(StrEnum):
    PENDING = "pending"  # not confirmed yet (just appeared, or no bridge address yet)
    FASTDP = "fastdp"
    SLEEVE = "sleeve"
    DOWN = "down"


def encode(src: int, dst: int, heard: bool) -> bytes:
    return _MSG.pack(MAGIC, 1, src, dst, HEARD if heard else 0)


def decode(data: bytes) -> tuple[int, int, bool] | None:
    """(src, dst, heard), or None for anything that is not one of our heartbeats."""
    if len(data) != _MSG.size:
        return None
    magic, version, src, dst, flags = _MSG.unpack(data)
    if magic != MAGIC or version != 1:
        return None
    return src, dst, bool(flags & HEARD)


@dataclass
class PeerHealth:
    since: float  # when we started watching this peer
    last_rx: float | None = None  # last heartbeat from it
    last_ack: float | None = None  # last heartbeat from it that said it hears us
    next_send: float = 0.0
    mode: Mode = Mode.PENDING
    reason: str = "waiting for the first heartbeat"
    changed_at: float = 0.0


@dataclass(frozen=True)
class Switch:
    peer: int
    old: Mode
    new: Mode
    reason: str


@dataclass
class Health:
    me: int
    interval: float = 1.0
    timeout: float = 4.0
    sleeve_available: bool = False
    peers: dict[int, PeerHealth] = field(default_factory=dict)

    def watch(self, names: set[int], now: float) -> None:
        """The peers we have a fast path to (forwarding entries and a bridge address)."""
        for name in names - set(self.peers):
            self.peers[name] = PeerHealth(since=now, next_send=now, changed_at=now)
        for name in set(self.peers) - names:
            del self.peers[name]

    def receive(self, data: bytes, now: float) -> None:
        msg = decode(data)
        if msg is None:
            return
        src, dst, heard = msg
        peer = self.peers.get(src)
        if dst != self.me or peer is None:
            return
        if peer.last_rx is None or now - peer.last_rx >= self.timeout:
            peer.next_send = now  # answer a peer we had not heard at once: both ends confirm in one round trip
        peer.last_rx = now
        if heard:
            peer.last_ack = now

    def due(self, now: float) -> list[tuple[int, bytes]]:
        """Heartbeats to send now: (peer, payload)."""
        out = []
        for name, peer in sorted(self.peers.items()):
            if now >= peer.next_send:
                heard = peer.last_rx is not None and now - peer.last_rx < self.timeout
                out.append((name, encode(self.me, name, heard)))
                peer.next_send = now + self.interval
        return out

    def evaluate(self, now: float) -> list[Switch]:
        """Recompute every peer's mode; return the switches (each is logged by the shell)."""
        switches = []
        for name, peer in sorted(self.peers.items()):
            mode, reason = choose_mode(self._fastdp_ok(peer, now), self.sleeve_available, self.timeout)
            if mode != peer.mode:
                switches.append(Switch(name, peer.mode, mode, reason))
                peer.mode, peer.changed_at = mode, now
            peer.reason = reason
        return switches

    def _fastdp_ok(self, peer: PeerHealth, now: float) -> bool | None:
        rx = peer.last_rx is not None and now - peer.last_rx < self.timeout
        ack = peer.last_ack is not None and now - peer.last_ack < self.timeout
        if rx and ack:
            return True
        if now - peer.since < self.timeout:
            return None  # too early to say
        return False

    def next_deadline(self) -> float | None:
        return min((p.next_send for p in self.peers.values()), default=None)


def choose_mode(fastdp_ok: bool | None, sleeve_available: bool, timeout: float) -> tuple[Mode, str]:
    if fastdp_ok:
        return Mode.FASTDP, "heartbeats through VXLAN in both directions"
    if fastdp_ok is None:
        return Mode.PENDING, "waiting for the first heartbeats through VXLAN"
    why = f"no heartbeat through VXLAN in both directions for {timeout:g}s (is UDP 6784 blocked?)"
    if sleeve_available:
        return Mode.SLEEVE, why
    return Mode.DOWN, why
