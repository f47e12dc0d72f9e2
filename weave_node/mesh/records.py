"""Peer records and their wire format (pure): one versioned record per peer, the order that merges them.

Every peer owns exactly one record (its own): its nickname, its UID (random per process start) and its
connections. Only the owner changes it, bumping `version` each time. Records of other peers arrive by gossip and
are merged per name: the record with the greater `(version, uid)` wins; the rare full tie (same version and uid,
different content — only a misbehaving peer makes one) is broken by comparing the canonical encodings, so the
order is total and `merge` is commutative, associative and idempotent.

Wire format (version 1), all integers big-endian:
    header     u8 format (=1), u32 record count
    record     u48 name, u64 uid, u64 version, u8 len + UTF-8 nickname, u16 connection count, connections
    connection u48 peer, u8 flags (bit 0 outbound, bit 1 established, bit 2 packed), u8 len, address
The address is UTF-8 text ("ip:port" or ""), except that an address in canonical IPv4 form ("10.0.0.1:6783")
is always packed as 4 address bytes + u16 port (flag bit 2, len 6): 6 bytes instead of up to 21.
Every record has exactly one encoding (the decoder rejects the others), so equal records are equal bytes.
Connections are strictly increasing by peer; a record never lists itself; names appear once per message.
A 6-byte name cannot express a name >= 2**48, so that case is excluded by construction on the wire.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from weave_node.mesh.errors import ProtocolError
from weave_node.mesh.peer import NAME_LIMIT

MAX_VERSION = (1 << 64) - 1
MAX_UID = (1 << 64) - 1
MAX_TEXT = 255  # bytes of UTF-8 in a nickname or an address
MAX_CONNECTIONS = 0xFFFF
FORMAT_VERSION = 1

_HEADER = struct.Struct(">BI")
_RECORD = struct.Struct(">HIQQB")  # name (16 + 32 bits), uid, version, nickname length
_NCONN = struct.Struct(">H")
_CONN = struct.Struct(">HIBB")  # peer (16 + 32 bits), flags, address length
_MIN_RECORD = _RECORD.size + _NCONN.size
_OUTBOUND = 0x01
_ESTABLISHED = 0x02
_PACKED = 0x04
_FLAGS = _OUTBOUND | _ESTABLISHED | _PACKED
_DIGITS = frozenset("0123456789")


@dataclass(frozen=True)
class ConnectionInfo:
    """One connection as its owner reports it."""

    peer: int
    address: str  # "ip:port" or ""
    outbound: bool
    established: bool


@dataclass(frozen=True)
class PeerRecord:
    """A peer's own description of itself; `connections` sorted by peer, at most one per remote peer."""

    name: int
    nickname: str
    uid: int
    version: int
    connections: tuple[ConnectionInfo, ...] = ()

    @cached_property
    def established(self) -> frozenset[int]:
        """The peers this record lists as established (one side of a symmetric edge)."""
        return frozenset(c.peer for c in self.connections if c.established)

    @cached_property
    def encoded(self) -> bytes:
        """The canonical wire encoding of this record (without the message header). ValueError if invalid."""
        return _encode_record(self)

    @cached_property
    def digest(self) -> int:
        """A 64-bit hash of `encoded`; topologies XOR these into their fingerprint."""
        return int.from_bytes(hashlib.blake2b(self.encoded, digest_size=8).digest(), "big")


def validate_record(r: PeerRecord) -> None:
    """Raise ValueError unless `r` is a record we may hold or send."""
    if not 0 <= r.name < NAME_LIMIT:
        raise ValueError(f"peer name out of range: {r.name}")
    if not 0 <= r.uid <= MAX_UID:
        raise ValueError(f"uid out of range: {r.uid}")
    if not 1 <= r.version <= MAX_VERSION:
        raise ValueError(f"version out of range: {r.version}")
    if len(r.nickname.encode()) > MAX_TEXT:
        raise ValueError(f"nickname longer than {MAX_TEXT} bytes")
    if len(r.connections) > MAX_CONNECTIONS:
        raise ValueError(f"more than {MAX_CONNECTIONS} connections")
    previous = -1
    for c in r.connections:
        if not 0 <= c.peer < NAME_LIMIT:
            raise ValueError(f"connection peer out of range: {c.peer}")
        if c.peer == r.name:
            raise ValueError("a peer cannot connect to itself")
        if c.peer <= previous:
            raise ValueError("connections must be sorted by peer, one per peer")
        if len(c.address.encode()) > MAX_TEXT:
            raise ValueError(f"address longer than {MAX_TEXT} bytes")
        previous = c.peer


def wins(a: PeerRecord, b: PeerRecord) -> bool:
    """True when record `a` supersedes record `b` of the same peer (a strict total order on distinct records)."""
    if a.version != b.version:
        return a.version > b.version
    if a.uid != b.uid:
        return a.uid > b.uid
    return a.encoded > b.encoded


# ---- codec -----------------------------------------------------------------------------------------------


def _encode_record(r: PeerRecord) -> bytes:
    validate_record(r)
    nickname = r.nickname.encode()
    parts = [_RECORD.pack(r.name >> 32, r.name & 0xFFFFFFFF, r.uid, r.version, len(nickname)), nickname]
    parts.append(_NCONN.pack(len(r.connections)))
    for c in r.connections:
        flags = (_OUTBOUND if c.outbound else 0) | (_ESTABLISHED if c.established else 0)
        packed = _pack_ipv4(c.address)
        if packed is None:
            address = c.address.encode()
        else:
            address, flags = packed, flags | _PACKED
        parts.append(_CONN.pack(c.peer >> 32, c.peer & 0xFFFFFFFF, flags, len(address)))
        parts.append(address)
    return b"".join(parts)


def _decimal(text: str, limit: int) -> int | None:
    """The value of a canonical decimal (no sign, no leading zero) up to `limit`, else None."""
    if not text or not set(text) <= _DIGITS or (len(text) > 1 and text[0] == "0") or len(text) > 5:
        return None
    value = int(text)
    return value if value <= limit else None


def _pack_ipv4(address: str) -> bytes | None:
    """`"10.0.0.1:6783"` -> 6 bytes; None unless the address is exactly in that canonical form."""
    host, sep, port_text = address.rpartition(":")
    octets = host.split(".")
    port = _decimal(port_text, 0xFFFF)
    if not sep or port is None or len(octets) != 4:
        return None
    values = [_decimal(o, 255) for o in octets]
    if any(v is None for v in values):
        return None
    return bytes(v for v in values if v is not None) + port.to_bytes(2, "big")


def encode_records(records: Iterable[PeerRecord]) -> bytes:
    """Encode records (in the given order) as one message. ValueError on an invalid record."""
    bodies = [r.encoded for r in records]
    return _HEADER.pack(FORMAT_VERSION, len(bodies)) + b"".join(bodies)


def encoded_size(records: Iterable[PeerRecord]) -> int:
    """`len(encode_records(records))`, without building the message."""
    return _HEADER.size + sum(len(r.encoded) for r in records)


def decode_records(data: bytes, *, max_records: int = 10000) -> list[PeerRecord]:
    """Decode one message. Raises ProtocolError (and nothing else) on any malformed input."""
    size = len(data)
    if size < _HEADER.size:
        raise ProtocolError("topology message truncated (header)")
    fmt, count = _HEADER.unpack_from(data, 0)
    if fmt != FORMAT_VERSION:
        raise ProtocolError(f"unknown topology format {fmt}")
    if count > max_records:
        raise ProtocolError(f"topology message has {count} records, more than {max_records}")
    pos = _HEADER.size
    if count * _MIN_RECORD > size - pos:
        raise ProtocolError("topology record count exceeds the message")
    out: list[PeerRecord] = []
    seen: set[int] = set()
    for _ in range(count):
        record, pos = _decode_record(data, pos)
        if record.name in seen:
            raise ProtocolError("duplicate peer in topology message")
        seen.add(record.name)
        out.append(record)
    if pos != size:
        raise ProtocolError(f"{size - pos} trailing bytes after topology records")
    return out


def _need(data: bytes, pos: int, n: int, what: str) -> None:
    if n > len(data) - pos:
        raise ProtocolError(f"topology message truncated ({what})")


def _text(data: bytes, pos: int, n: int, what: str) -> str:
    _need(data, pos, n, what)
    try:
        return data[pos : pos + n].decode()
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{what} is not UTF-8") from e


def _decode_record(data: bytes, pos: int) -> tuple[PeerRecord, int]:
    _need(data, pos, _RECORD.size, "record")
    hi, lo, uid, version, nick_len = _RECORD.unpack_from(data, pos)
    pos += _RECORD.size
    name = (hi << 32) | lo
    if version == 0:
        raise ProtocolError("record version 0")
    nickname = _text(data, pos, nick_len, "nickname")
    pos += nick_len
    _need(data, pos, _NCONN.size, "connection count")
    (nconn,) = _NCONN.unpack_from(data, pos)
    pos += _NCONN.size
    if nconn * _CONN.size > len(data) - pos:
        raise ProtocolError("connection count exceeds the message")
    conns: list[ConnectionInfo] = []
    previous = -1
    for _ in range(nconn):
        _need(data, pos, _CONN.size, "connection")
        phi, plo, flags, addr_len = _CONN.unpack_from(data, pos)
        pos += _CONN.size
        peer = (phi << 32) | plo
        if flags & ~_FLAGS:
            raise ProtocolError(f"unknown connection flags {flags:#x}")
        if peer == name:
            raise ProtocolError("record lists a connection to itself")
        if peer <= previous:
            raise ProtocolError("connections not strictly sorted by peer")
        previous = peer
        if flags & _PACKED:
            if addr_len != 6:
                raise ProtocolError("packed address is not 6 bytes")
            _need(data, pos, 6, "address")
            a, b, c, d, port_hi, port_lo = data[pos : pos + 6]
            address = f"{a}.{b}.{c}.{d}:{port_hi << 8 | port_lo}"
        else:
            address = _text(data, pos, addr_len, "address")
            if _pack_ipv4(address) is not None:
                raise ProtocolError("IPv4 address not packed")
        pos += addr_len
        conns.append(ConnectionInfo(peer, address, bool(flags & _OUTBOUND), bool(flags & _ESTABLISHED)))
    return PeerRecord(name, nickname, uid, version, tuple(conns)), pos
