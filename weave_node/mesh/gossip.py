"""Gossip channels: the small interface other subsystems (IPAM next) use to talk over the mesh (pure).

A subsystem registers a `Gossiper` under a channel name and gets a `GossipChannel` to send with:
- `gossip(data)`: merge-able state to neighbours (periodic and on change), passed on when it taught us something;
- `unicast(dst, data)`: to one peer, relayed hop by hop along the unicast routes;
- `broadcast(data)`: to every reachable peer exactly once, along the broadcast trees.

Every router message is one of the envelopes below (the first byte is its kind). Decoding raises only
ProtocolError, and a decoded envelope holds only valid values: peer names (8 bytes on the wire) below 2**48.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from weave_node.mesh.errors import ProtocolError
from weave_node.mesh.peer import NAME_LIMIT

KIND_TOPOLOGY = 1
KIND_GOSSIP = 2
KIND_UNICAST = 3
KIND_BROADCAST = 4
KIND_DIGEST = 5  # topology fingerprint: 8 bytes + 1 flag byte (1 = "answer with yours")
MAX_CHANNEL = 64
_NAME = struct.Struct(">Q")


class GossipData(Protocol):
    """A merge-able value ("think log-structured data")."""

    def encode(self) -> bytes: ...

    def merge(self, other: GossipData) -> GossipData: ...


class Gossiper(Protocol):
    """What a subsystem implements to receive on its channel. Raising ProtocolError drops that message only."""

    def on_gossip(self, src: int, data: bytes) -> bytes | None:
        """Merge received state; return the part that was new to us (passed on to neighbours) or None."""
        ...

    def on_unicast(self, src: int, data: bytes) -> None: ...

    def on_broadcast(self, src: int, data: bytes) -> None: ...

    def gossip_state(self) -> bytes | None:
        """The full state, sent periodically to a random neighbour (anti-entropy); None when there is none."""
        ...


class Sender(Protocol):
    def send_gossip(self, channel: str, data: bytes) -> None: ...

    def send_unicast(self, channel: str, dst: int, data: bytes) -> bool: ...

    def send_broadcast(self, channel: str, data: bytes) -> None: ...


@dataclass
class GossipChannel:
    """The handle a subsystem holds to send on its channel."""

    name: str
    sender: Sender

    def gossip(self, data: bytes) -> None:
        self.sender.send_gossip(self.name, data)

    def unicast(self, dst: int, data: bytes) -> bool:
        """False when dst is unreachable right now."""
        return self.sender.send_unicast(self.name, dst, data)

    def broadcast(self, data: bytes) -> None:
        self.sender.send_broadcast(self.name, data)


@dataclass(frozen=True)
class Envelope:
    kind: int
    channel: str = ""
    src: int = 0  # originating peer (unicast, broadcast)
    dst: int = 0  # destination peer (unicast)
    payload: bytes = b""


def encode_digest(fingerprint: int, echo: bool) -> Envelope:
    return Envelope(kind=KIND_DIGEST, payload=_NAME.pack(fingerprint) + bytes([1 if echo else 0]))


def decode_digest(env: Envelope) -> tuple[int, bool]:
    if len(env.payload) != 9 or env.payload[8] > 1:
        raise ProtocolError("bad topology digest")
    return _NAME.unpack_from(env.payload, 0)[0], env.payload[8] == 1


def encode(env: Envelope) -> bytes:
    if env.kind in (KIND_TOPOLOGY, KIND_DIGEST):
        return bytes([env.kind]) + env.payload
    channel = env.channel.encode()
    if not 0 < len(channel) <= MAX_CHANNEL:
        raise ValueError(f"bad channel name {env.channel!r}")
    head = bytes([env.kind, len(channel)]) + channel
    if env.kind == KIND_GOSSIP:
        return head + env.payload
    if env.kind == KIND_UNICAST:
        return head + _NAME.pack(env.src) + _NAME.pack(env.dst) + env.payload
    if env.kind == KIND_BROADCAST:
        return head + _NAME.pack(env.src) + env.payload
    raise ValueError(f"unknown envelope kind {env.kind}")


def decode(data: bytes) -> Envelope:
    if not data:
        raise ProtocolError("empty router message")
    kind = data[0]
    if kind in (KIND_TOPOLOGY, KIND_DIGEST):
        return Envelope(kind=kind, payload=data[1:])
    if kind not in (KIND_GOSSIP, KIND_UNICAST, KIND_BROADCAST):
        raise ProtocolError(f"unknown router message kind {kind}")
    if len(data) < 2:
        raise ProtocolError("truncated router message")
    n = data[1]
    if not 0 < n <= MAX_CHANNEL or len(data) < 2 + n:
        raise ProtocolError("bad channel name length")
    try:
        channel = data[2 : 2 + n].decode()
    except UnicodeDecodeError:
        raise ProtocolError("channel name is not UTF-8") from None
    rest = data[2 + n :]
    if kind == KIND_GOSSIP:
        return Envelope(kind=kind, channel=channel, payload=rest)
    if kind == KIND_UNICAST:
        if len(rest) < 16:
            raise ProtocolError("truncated unicast message")
        src, dst = _peer(rest, 0, "source"), _peer(rest, 8, "destination")
        return Envelope(kind=kind, channel=channel, src=src, dst=dst, payload=rest[16:])
    if len(rest) < 8:
        raise ProtocolError("truncated broadcast message")
    return Envelope(kind=kind, channel=channel, src=_peer(rest, 0, "source"), payload=rest[8:])


def _peer(data: bytes, offset: int, what: str) -> int:
    (name,) = _NAME.unpack_from(data, offset)
    if name >= NAME_LIMIT:  # 8 bytes on the wire, 48 bits in a peer name
        raise ProtocolError(f"{what} {name:#x} of a router message is not a 48-bit peer name")
    return int(name)
