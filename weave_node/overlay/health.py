"""Per-peer health of the fast datapath and the choice of mode (pure, driven by `now`).

Every `interval` each router sends a small UDP heartbeat from its bridge address to each peer's bridge address;
the packet crosses the VXLAN tunnel, so receiving it proves the kernel path from that peer to us. Like BFD,
each heartbeat says whether we have heard from the receiver lately, so both ends learn that both directions
work. A peer is `fastdp` while both hold within `timeout`.

The mode switch is designed for the userspace fallback (sleeve): `choose_mode` picks sleeve for a peer whose
fast path failed when sleeve is available, and reports `down` with the reason otherwise.

Direct mode (overlay.direct) adds a second path to the same peers: to a *candidate* (an L2 neighbour) the same
heartbeats also go marked, over the underlay without encapsulation (version 2 messages, which routers without
direct mode ignore), and every heartbeat says whether we hear the peer's direct ones. A peer whose fast path
holds and whose direct heartbeats hold both ways is `direct`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import StrEnum

MAGIC = b"WNHB"
_MSG = struct.Struct(">4sBQQB")  # magic, version, src name, dst name, flags
HEARD = 1  # "I hear your heartbeats through VXLAN"
HEARD_DIRECT = 4  # "I hear your direct heartbeats"
VXLAN_VERSION, DIRECT_VERSION = 1, 2  # a direct heartbeat is version 2: routers without direct mode drop it


class Mode(StrEnum):
    PENDING = "pending"  # not confirmed yet (just appeared, or no bridge address yet)
    FASTDP = "fastdp"
    DIRECT = "direct"  # fastdp healthy, and unicast to its pods routed over the underlay without encapsulation
    SLEEVE = "sleeve"
    DOWN = "down"


@dataclass(frozen=True)
class Heartbeat:
    src: int
    dst: int
    heard: bool  # the sender hears our VXLAN heartbeats
    heard_direct: bool = False  # ... and our direct ones
    direct: bool = False  # this one was sent over the direct path


def encode(src: int, dst: int, heard: bool, heard_direct: bool = False, *, direct: bool = False) -> bytes:
    flags = (HEARD if heard else 0) | (HEARD_DIRECT if heard_direct else 0)
    return _MSG.pack(MAGIC, DIRECT_VERSION if direct else VXLAN_VERSION, src, dst, flags)


def decode(data: bytes) -> Heartbeat | None:
    """The heartbeat, or None for anything that is not one of ours."""
    if len(data) != _MSG.size:
        return None
    magic, version, src, dst, flags = _MSG.unpack(data)
    if magic != MAGIC or version not in (VXLAN_VERSION, DIRECT_VERSION):
        return None
    return Heartbeat(src, dst, bool(flags & HEARD), bool(flags & HEARD_DIRECT), version == DIRECT_VERSION)


@dataclass
class PeerHealth:
    since: float  # when we started watching this peer
    last_rx: float | None = None  # last heartbeat from it
    last_ack: float | None = None  # last heartbeat from it that said it hears us
    next_send: float = 0.0
    mode: Mode = Mode.PENDING
    reason: str = "waiting for the first heartbeat"
    changed_at: float = 0.0
    direct_since: float | None = None  # since when it is a direct candidate (None: it is not)
    direct_rx: float | None = None  # its last direct heartbeat
    direct_ack: float | None = None  # its last heartbeat saying it hears our direct ones


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

    def watch_direct(self, names: set[int], now: float) -> None:
        """The direct candidates among the watched peers (overlay.direct)."""
        for name, peer in self.peers.items():
            if name in names and peer.direct_since is None:
                peer.direct_since, peer.next_send = now, now
            elif name not in names and peer.direct_since is not None:
                peer.direct_since = peer.direct_rx = peer.direct_ack = None

    def receive(self, data: bytes, now: float) -> None:
        msg = decode(data)
        if msg is None:
            return
        peer = self.peers.get(msg.src)
        if msg.dst != self.me or peer is None:
            return
        last = peer.direct_rx if msg.direct else peer.last_rx
        expected = not msg.direct or peer.direct_since is not None
        if expected and (last is None or now - last >= self.timeout):
            peer.next_send = now  # answer a peer we had not heard at once: both ends confirm in one round trip
        if msg.direct:
            peer.direct_rx = now if peer.direct_since is not None else None
        else:
            peer.last_rx = now
        if msg.heard:
            peer.last_ack = now
        if msg.heard_direct and peer.direct_since is not None:
            peer.direct_ack = now

    def due(self, now: float) -> list[tuple[int, bytes, bool]]:
        """Heartbeats to send now: (peer, payload, over the direct path)."""
        out = []
        for name, peer in sorted(self.peers.items()):
            if now >= peer.next_send:
                heard = _fresh(peer.last_rx, now, self.timeout)
                heard_direct = _fresh(peer.direct_rx, now, self.timeout)
                out.append((name, encode(self.me, name, heard, heard_direct), False))
                if peer.direct_since is not None:
                    out.append((name, encode(self.me, name, heard, heard_direct, direct=True), True))
                peer.next_send = now + self.interval
        return out

    def evaluate(self, now: float) -> list[Switch]:
        """Recompute every peer's mode; return the switches (each is logged by the shell)."""
        switches = []
        for name, peer in sorted(self.peers.items()):
            mode, reason = choose_mode(self._fastdp_ok(peer, now), self.sleeve_available, self.timeout)
            if mode == Mode.FASTDP and peer.direct_since is not None:
                mode, reason = self._direct(peer, now, reason)
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

    def _direct(self, peer: PeerHealth, now: float, reason: str) -> tuple[Mode, str]:
        if _fresh(peer.direct_rx, now, self.timeout) and _fresh(peer.direct_ack, now, self.timeout):
            return Mode.DIRECT, "direct heartbeats over the underlay in both directions (and VXLAN's)"
        assert peer.direct_since is not None  # noqa: S101 - only called for candidates
        if now - peer.direct_since < self.timeout:
            return Mode.FASTDP, f"{reason}; direct path: waiting for its first heartbeats"
        return Mode.FASTDP, (
            f"{reason}; direct path: no heartbeat in both directions for {self.timeout:g}s (does the underlay drop "
            "pod addresses, or is rp_filter strict?)"
        )

    def direct_peers(self) -> set[int]:
        return {name for name, peer in self.peers.items() if peer.mode == Mode.DIRECT}

    def next_deadline(self) -> float | None:
        return min((p.next_send for p in self.peers.values()), default=None)


def _fresh(when: float | None, now: float, timeout: float) -> bool:
    return when is not None and now - when < timeout


def choose_mode(fastdp_ok: bool | None, sleeve_available: bool, timeout: float) -> tuple[Mode, str]:
    if fastdp_ok:
        return Mode.FASTDP, "heartbeats through VXLAN in both directions"
    if fastdp_ok is None:
        return Mode.PENDING, "waiting for the first heartbeats through VXLAN"
    why = f"no heartbeat through VXLAN in both directions for {timeout:g}s (is UDP 6784 blocked?)"
    if sleeve_available:
        return Mode.SLEEVE, why
    return Mode.DOWN, why
