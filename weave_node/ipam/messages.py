"""The IPAM channel's wire format (pure). Decoding validates everything and raises only DecodeError.

b"I" version kind | range: start, prefix u8 | body

Version 1 is an IPv4 range's, version 2 an IPv6 range's: the same messages with every address (the range's start,
a ring token, an address in a list) in 16 bytes instead of 4, and a ring entry's free count in 8. A router that
speaks only version 1 drops version 2 as a message of a version it does not speak. Below, u32 addresses are
version 1's:

STATE   (gossip and unicast): flags u8 (1 ring, 2 consensus, 4 sender not in sync: fenced or resyncing,
        8 sightings)
        ring:      ring_id u64, count u32, count x (token u32, owner u64, epoch u32, version u32, free u32)
        consensus: quorum u16, count u16, count x (node u64, promise (u32, u64), accepted (u32, u64),
                   n u16, n x peer u64)
        sightings: count u32, count x (owner u64, absent u32 (deciseconds; 0 reachable now, 2^32-1 never),
                   n u8, n bytes of nickname, UTF-8)
REQUEST (unicast): "give me some of your free space"
RECLAIMED (unicast): count u16, count x ip u32: "my pods still use these addresses of your space (it was mine
        and was reclaimed while I was cut off): give back the ones that are free"
IN_USE  (unicast): count u16, count x ip u32: "these are in use by pods of mine: yours must go"
"""

from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass

from weave_node.core.address import IPV4_LIMIT, IPV6_PREFIXES, Range
from weave_node.ipam.consensus import Ballot, Claim
from weave_node.ipam.errors import DecodeError
from weave_node.ipam.presence import Sighting
from weave_node.ipam.ring import Entry, Ring

MAGIC = b"I"
VERSION = 1  # an IPv4 range's messages
VERSION6 = 2  # an IPv6 range's
KIND_STATE = 1
KIND_REQUEST = 2
KIND_RECLAIMED = 3
KIND_IN_USE = 4
MAX_ADDRESSES = 4096
_ADDRS = struct.Struct(">H")
_IP = struct.Struct(">I")
MAX_ENTRIES = 1 << 20
MAX_CLAIMS = 4096
_HEAD = struct.Struct(">cBBIB")
_FLAGS = struct.Struct(">B")
_RING = struct.Struct(">QI")
_ENTRY = struct.Struct(">IQIII")
NAME_LIMIT = 1 << 48  # peer names are 48-bit
_CONS = struct.Struct(">HH")
_CLAIM = struct.Struct(">QIQIQH")
_PEER = struct.Struct(">Q")
_COUNT = struct.Struct(">I")
_SIGHTING = struct.Struct(">QIB")
NEVER_SEEN = 0xFFFFFFFF


@dataclass(frozen=True)
class _Layout:
    """How one family's messages lay out their addresses."""

    version: int
    head: struct.Struct  # magic, version, kind, start, prefix
    entry: struct.Struct  # token, owner, epoch, version, free
    ip: struct.Struct
    wide: bool  # addresses as 16 bytes (and the free count as u64)

    def addr(self, ip: int) -> int | bytes:
        return ip.to_bytes(16, "big") if self.wide else ip

    def int(self, raw: int | bytes) -> int:
        return int.from_bytes(raw, "big") if isinstance(raw, bytes) else raw


_V4 = _Layout(VERSION, _HEAD, _ENTRY, _IP, wide=False)
_V6 = _Layout(VERSION6, struct.Struct(">cBB16sB"), struct.Struct(">16sQIIQ"), struct.Struct(">16s"), wide=True)


def _layout(span: Range) -> _Layout:
    return _V6 if span.ipv6 else _V4


def _head(span: Range, kind: int) -> bytes:
    lay = _layout(span)
    return lay.head.pack(MAGIC, lay.version, kind, lay.addr(span.start), span.prefix)


@dataclass(frozen=True)
class State:
    span: Range
    ring: Ring | None = None
    quorum: int = 0
    claims: dict[int, Claim] | None = None
    unsynced: bool = False
    sightings: dict[int, Sighting] | None = None


@dataclass(frozen=True)
class Request:
    span: Range


@dataclass(frozen=True)
class Addresses:
    span: Range
    kind: int  # KIND_RECLAIMED or KIND_IN_USE
    ips: tuple[int, ...]


Message = State | Request | Addresses


def encode_state(
    span: Range,
    ring: Ring | None,
    quorum: int = 0,
    claims: dict[int, Claim] | None = None,
    *,
    unsynced: bool = False,
    sightings: dict[int, Sighting] | None = None,
) -> bytes:
    flags = (
        (1 if ring is not None else 0)
        | (2 if claims is not None else 0)
        | (4 if unsynced else 0)
        | (8 if sightings is not None else 0)
    )
    lay = _layout(span)
    out = [_head(span, KIND_STATE), bytes([flags])]
    if ring is not None:
        out.append(_RING.pack(ring.ring_id, len(ring)))
        out.extend(lay.entry.pack(lay.addr(e.token), e.owner, e.epoch, e.version, e.free) for e in ring)
    if claims is not None:
        out.append(_CONS.pack(quorum, len(claims)))
        for node, c in sorted(claims.items()):
            out.append(_CLAIM.pack(node, *c.promise, *c.accepted, len(c.value)))
            out.extend(_PEER.pack(p) for p in c.value)
    if sightings is not None:
        out.append(_COUNT.pack(len(sightings)))
        for owner, seen in sorted(sightings.items()):
            nick = _nickname(seen.nickname)
            out.append(_SIGHTING.pack(owner, _deciseconds(seen.absent_for), len(nick)))
            out.append(nick)
    return b"".join(out)


def _nickname(text: str) -> bytes:
    """A nickname as sent: printable, at most 255 bytes of UTF-8 (cut at a character boundary)."""
    data = "".join(c for c in text if c.isprintable()).encode()[:255]
    return data.decode(errors="ignore").encode()


def _deciseconds(seconds: float) -> int:
    if seconds == math.inf:
        return NEVER_SEEN
    return min(NEVER_SEEN - 1, max(0, math.floor(seconds * 10)))  # down: a shorter absence is the safe error


def encode_request(span: Range) -> bytes:
    return _head(span, KIND_REQUEST)


def encode_addresses(span: Range, kind: int, ips: list[int]) -> bytes:
    ips = sorted(set(ips))[:MAX_ADDRESSES]
    lay = _layout(span)
    return _head(span, kind) + _ADDRS.pack(len(ips)) + b"".join(lay.ip.pack(lay.addr(ip)) for ip in ips)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DecodeError("truncated IPAM message")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def take(self, s: struct.Struct) -> tuple[int, ...]:
        if self.pos + s.size > len(self.data):
            raise DecodeError("truncated IPAM message")
        values = s.unpack_from(self.data, self.pos)
        self.pos += s.size
        return tuple(values)


def decode(data: bytes) -> Message:
    r = _Reader(data)
    lay = _V6 if data[1:2] == bytes([VERSION6]) else _V4
    magic, version, kind, raw, prefix = r.take(lay.head)
    if magic != MAGIC or version != lay.version:  # type: ignore[comparison-overlap]
        raise DecodeError("not an IPAM message of a version we speak")
    start = lay.int(raw)
    span = Range(start, prefix)
    low, high = IPV6_PREFIXES if lay.wide else (0, 30)
    if not low <= prefix <= high or (start >= IPV4_LIMIT) != lay.wide or start & (span.size - 1):
        raise DecodeError("bad range in IPAM message")
    if kind == KIND_REQUEST:
        if r.pos != len(data):
            raise DecodeError("trailing bytes in IPAM request")
        return Request(span)
    if kind in (KIND_RECLAIMED, KIND_IN_USE):
        (count,) = r.take(_ADDRS)
        if count > MAX_ADDRESSES or r.pos + count * lay.ip.size != len(data):
            raise DecodeError("bad address list in IPAM message")
        ips = tuple(lay.int(r.take(lay.ip)[0]) for _ in range(count))
        if any(not span.usable(ip) for ip in ips):
            raise DecodeError("address outside the range in IPAM message")
        if any(a >= b for a, b in itertools.pairwise(ips)):
            raise DecodeError("addresses in an IPAM message must be sorted and unique")
        return Addresses(span, kind, ips)
    if kind != KIND_STATE:
        raise DecodeError(f"unknown IPAM message kind {kind}")
    (flags,) = r.take(_FLAGS)
    if flags > 15:
        raise DecodeError("bad IPAM state flags")
    ring = _decode_ring(r, span, lay) if flags & 1 else None
    quorum, claims = _decode_claims(r) if flags & 2 else (0, None)
    sightings = _decode_sightings(r) if flags & 8 else None
    if r.pos != len(data):
        raise DecodeError("trailing bytes in IPAM state")
    return State(span, ring, quorum, claims, unsynced=bool(flags & 4), sightings=sightings)


def _decode_sightings(r: _Reader) -> dict[int, Sighting]:
    (count,) = r.take(_COUNT)
    if count > MAX_ENTRIES or r.pos + count * _SIGHTING.size > len(r.data):
        raise DecodeError("bad sightings count")
    out: dict[int, Sighting] = {}
    for _ in range(count):
        owner, ds, n = r.take(_SIGHTING)
        nick = r.raw(n).decode(errors="replace")
        if not nick.isprintable():
            nick = ""  # a name is only shown: one we cannot show is dropped, not the peer's whole state
        if not 0 < owner < NAME_LIMIT or owner in out:
            raise DecodeError("bad sighting")
        out[owner] = Sighting(math.inf if ds == NEVER_SEEN else ds / 10, nick)
    return out


def _decode_ring(r: _Reader, span: Range, lay: _Layout) -> Ring:
    ring_id, count = r.take(_RING)
    if not 0 < count <= min(MAX_ENTRIES, span.size):
        raise DecodeError("bad ring entry count")
    if r.pos + count * lay.entry.size > len(r.data):
        raise DecodeError("truncated ring")
    entries = []
    for _ in range(count):
        token, owner, epoch, version, free = r.take(lay.entry)
        if not 0 < owner < NAME_LIMIT:
            raise DecodeError("bad owner in ring")
        entries.append(Entry(lay.int(token), owner, version, free, epoch))
    ring = Ring(span, ring_id, entries)
    try:
        if len(ring.entries) != count:
            raise AssertionError("duplicate tokens")
        ring.check_invariants()
    except AssertionError as exc:
        raise DecodeError(f"invalid ring: {exc}") from None
    return ring


def _decode_claims(r: _Reader) -> tuple[int, dict[int, Claim]]:
    quorum, count = r.take(_CONS)
    if not 0 < quorum <= MAX_CLAIMS or count > MAX_CLAIMS:
        raise DecodeError("bad consensus header")
    claims: dict[int, Claim] = {}
    for _ in range(count):
        node, pr, pp, ar, ap, n = r.take(_CLAIM)
        if n > MAX_CLAIMS or not 0 < node < NAME_LIMIT or pp >= NAME_LIMIT or ap >= NAME_LIMIT:
            raise DecodeError("bad consensus claim")
        value = tuple(r.take(_PEER)[0] for _ in range(n))
        if list(value) != sorted(set(value)) or 0 in value or any(v >= NAME_LIMIT for v in value):
            raise DecodeError("bad consensus value")
        claim = Claim(Ballot(pr, pp), Ballot(ar, ap), value)
        if claim.accepted > claim.promise or (claim.accepted == Ballot(0, 0)) != (not value):
            raise DecodeError("inconsistent consensus claim")
        claims[node] = claim
    return quorum, claims
