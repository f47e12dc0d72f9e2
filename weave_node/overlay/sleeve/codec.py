"""The sleeve's datagram format, sans-IO: sealing, opening, replay window, segmentation and reassembly. Pure.

One datagram carries one segment of one message (a frame, or a TSO super-frame with its virtio-net header):

    outer (12 B, clear):  version u8 | mode u8 (0 plain, 1 secretbox, 2 AES-256-GCM) | reserved u16 | seq u64
    body:                 plain: inner | data          sealed: tag (16 B) + encrypt(inner | data)
    inner (24 B):         kind u8 | flags u8 | count u16 | msg_id u32 | index u16 | ttl u8 | reserved u8 |
                          src peer (6 B) | dst peer (6 B)

- `seq` counts datagrams per sending key (one key per mesh connection and direction, so a nonce never repeats:
  nonce = zero bytes + seq). Ciphers: NaCl secretbox, or AES-256-GCM (with the clear header as additional
  data) when both routers' CPUs have AES-NI (negotiated as a mesh feature): 2.6x faster per datagram here.
  Everything a receiver acts on (kind, flags, reassembly fields, peers) is inside
  the sealed part; only the version, mode and seq are clear, and seq is bound to the ciphertext by the nonce.
- A receiver drops (and counts) a datagram that is short, of another version, of the wrong mode (a clear
  datagram when a password is set, or the reverse), replayed or older than the window, forged (MAC), or whose
  inner header is inconsistent. Only `SleeveDropped` is ever raised.
- Segments of one message share msg_id and count; a message is at most MAX_SEGMENTS segments and MAX_MESSAGE
  bytes (reassembly.py puts them together again). The ciphers themselves are in cipher.py.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from enum import IntEnum

from weave_node.overlay.sleeve.cipher import CIPHERS as CIPHERS  # noqa: PLC0414 - the mode byte's values
from weave_node.overlay.sleeve.cipher import KEY_SIZE, MAC_SIZE, ZERO4, ZERO16, ffi, lib, open_at, seal_at
from weave_node.overlay.sleeve.cipher import MODE_AESGCM as MODE_AESGCM  # noqa: PLC0414
from weave_node.overlay.sleeve.cipher import MODE_PLAIN as MODE_PLAIN  # noqa: PLC0414
from weave_node.overlay.sleeve.cipher import MODE_SECRETBOX as MODE_SECRETBOX  # noqa: PLC0414
from weave_node.overlay.sleeve.cipher import aesgcm_available as aesgcm_available  # noqa: PLC0414

VERSION = 1
OUTER = struct.Struct("!BBHQ")
INNER = struct.Struct("!BBHIHBB6s6s")
HEADERS = struct.Struct("!BBHQBBHIHBB6s6s")  # OUTER + INNER of a plain datagram, unpacked in one call
VNET_HDR_SIZE = 10
MAX_SEGMENTS = 160  # a 64 KiB super-frame at a 548-byte path MTU
MAX_MESSAGE = 65536 + VNET_HDR_SIZE
MAX_TTL = 8
PLAIN_STALE_RESET = 256  # consecutive too-old plain datagrams after which the window starts over
BODY_AT = {MODE_PLAIN: OUTER.size, MODE_SECRETBOX: OUTER.size + MAC_SIZE, MODE_AESGCM: OUTER.size}
"""Where the inner header starts: secretbox puts its tag in front of the ciphertext, AES-GCM after it."""
TAIL = {MODE_PLAIN: 0, MODE_SECRETBOX: 0, MODE_AESGCM: MAC_SIZE}


class Kind(IntEnum):
    FRAME = 1  # an Ethernet frame (or super-frame) for the destination's TAP
    PROBE = 2  # PMTU / reachability probe: data is padding, answered with PROBE_ACK
    PROBE_ACK = 3  # data: the probe's size (u32) and its msg_id echoed in msg_id


_KINDS = {k.value: k for k in Kind}
FLAG_VNET = 0x01  # the message starts with a 10-byte virtio_net_hdr


def overhead(sealed: bool) -> int:
    """Bytes a datagram adds to its segment's data."""
    return OUTER.size + INNER.size + (MAC_SIZE if sealed else 0)


class SleeveDropped(Exception):
    """A datagram (or segment) that is not delivered; `reason` is the counter it lands in."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Segment:
    kind: Kind
    flags: int
    msg_id: int
    index: int
    count: int
    ttl: int
    src: bytes
    dst: bytes
    data: bytes | memoryview  # a view into the datagram's buffer: no copy (keep the buffer, don't reuse it)
    seq: int


class ReplayWindow:
    """RFC 6479-style sliding window over 64-bit sequence numbers (bitmap as a Python int)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.highest = -1
        self._bits = 0
        self._mask = (1 << size) - 1

    def check(self, seq: int) -> None:
        if seq > self.highest:
            return
        if self.highest - seq >= self.size:
            raise SleeveDropped("too_old")
        if self._bits >> (self.highest - seq) & 1:
            raise SleeveDropped("replay")

    def accept(self, seq: int) -> None:
        """Mark seq seen; call only after the datagram authenticated."""
        if seq > self.highest:
            shift = seq - self.highest
            bits = (self._bits << shift) | 1 if shift < self.size else 1
            # Trim lazily (bits beyond the window are never read): one mask per `size` datagrams, not per one.
            self._bits = bits & self._mask if bits.bit_length() > 2 * self.size else bits
            self.highest = seq
        else:
            self._bits |= 1 << (self.highest - seq)

    def accept_run(self, first: int, last: int) -> None:
        """Mark first..last seen, all newer than `highest` (a batch of consecutive datagrams): one shift, not one
        per datagram. Call only after every one of them authenticated. An empty run (last < first) changes nothing."""
        if last < first:
            return
        shift = last - self.highest
        run = (1 << min(last - first + 1, self.size)) - 1
        bits = (self._bits << shift) | run if shift < self.size else run
        self._bits = bits & self._mask if bits.bit_length() > 2 * self.size else bits
        self.highest = last


class Sealer:
    """The sending side of one direction of one peer connection. key=None: plain (no password).

    `pack` lays a message's datagrams out back to back in one buffer, every one but the last exactly
    `segment_size` bytes: the layout UDP GSO (UDP_SEGMENT) sends with one syscall. Sealing is done in place
    (libsodium's secretbox_easy through PyNaCl's cffi binding): one copy of the data per datagram, no more.
    """

    def __init__(self, key: bytes | None, *, seq: int = 0, mode: int = MODE_SECRETBOX) -> None:
        if key is not None and len(key) != KEY_SIZE:
            raise ValueError("a sleeve key is 32 bytes")
        if mode not in CIPHERS:
            raise ValueError(f"unknown cipher mode {mode}")
        self.key = key
        self.seq = seq
        self.mode = MODE_PLAIN if key is None else mode
        self.key_c = None if key is None else ffi.from_buffer(key)

    def seal(self, inner: bytes, data: bytes | memoryview) -> bytes:
        out = bytearray(OUTER.size + MAC_SIZE + len(inner) + len(data))
        return bytes(out[: self.pack_one(out, 0, inner, memoryview(data))])

    def pack_one(self, out: bytearray, offset: int, inner: bytes, data: memoryview) -> int:
        """One datagram at out[offset:]; returns its length."""
        seq = self.seq
        self.seq += 1
        if self.key is None:
            end = offset + OUTER.size + INNER.size + len(data)
            OUTER.pack_into(out, offset, VERSION, MODE_PLAIN, 0, seq)
            out[offset + OUTER.size : offset + OUTER.size + INNER.size] = inner
            out[offset + OUTER.size + INNER.size : end] = data
            return end - offset
        body = offset + BODY_AT[self.mode]
        end = body + INNER.size + len(data)
        OUTER.pack_into(out, offset, VERSION, self.mode, 0, seq)
        out[body : body + INNER.size] = inner
        out[body + INNER.size : end] = data
        end += TAIL[self.mode]
        seal_at(self.mode, ffi.from_buffer(out), offset, end - offset, seq, self.key_c, OUTER.size)
        return end - offset

    def pack(
        self,
        out: bytearray,
        message: bytes | memoryview,
        *,
        msg_id: int,
        src: bytes,
        dst: bytes,
        segment_size: int,
        kind: Kind = Kind.FRAME,
        flags: int = 0,
        ttl: int = MAX_TTL,
    ) -> tuple[int, int]:
        """The message's datagrams into `out` (big enough: see `packed_size`); returns (count, total length)."""
        view = memoryview(message)
        room, count = _cut(len(view), segment_size - overhead(self.key is not None), segment_size)
        offset = 0
        msg_id &= 0xFFFFFFFF
        if self.key is None:
            for i in range(count):
                inner = INNER.pack(kind, flags, count, msg_id, i, ttl, 0, src, dst)
                offset += self.pack_one(out, offset, inner, view[i * room : (i + 1) * room])
            return count, offset
        # Sealed, the hot path: one cffi buffer for the whole message, libsodium called here (no call per
        # datagram in Python besides it), the sequence numbers taken in one step.
        mode, key, cbuf, seq = self.mode, self.key_c, ffi.from_buffer(out), self.seq
        self.seq += count
        body_at, tail, inner_pack, outer_pack = BODY_AT[mode], TAIL[mode], INNER.pack_into, OUTER.pack_into
        aes = mode == MODE_AESGCM
        encrypt, secretbox, null = lib.crypto_aead_aes256gcm_encrypt, lib.crypto_secretbox_easy, ffi.NULL
        for i in range(count):
            data = view[i * room : (i + 1) * room]
            outer_pack(out, offset, VERSION, mode, 0, seq + i)
            body = offset + body_at
            inner_pack(out, body, kind, flags, count, msg_id, i, ttl, 0, src, dst)
            end = body + INNER.size + len(data)
            out[body + INNER.size : end] = data
            length = end - body  # bytes to encrypt
            if aes:  # in place (c == m), tag appended; the clear header is additional data
                p = cbuf + body
                encrypt(
                    p,
                    null,
                    p,
                    length,
                    cbuf + offset,
                    OUTER.size,
                    null,
                    ZERO4 + (seq + i).to_bytes(8, "big"),
                    key,
                )
            else:  # secretbox_easy writes tag + ciphertext from c, reading m: overlap allowed
                secretbox(
                    cbuf + (body - MAC_SIZE),
                    cbuf + body,
                    length,
                    ZERO16 + (seq + i).to_bytes(8, "big"),
                    key,
                )
            offset = end + tail
        return count, offset

    def plain_iovecs(
        self, message: memoryview, *, msg_id: int, src: bytes, dst: bytes, segment_size: int, flags: int = 0
    ) -> list[bytes | memoryview]:
        """Plain mode, scatter/gather: [header, data view, header, data view, ...] — the same datagrams as
        `pack` (every one but the last `segment_size` bytes) for sendmsg to gather, without copying the data."""
        room, count = _cut(len(message), segment_size - HEADERS.size, segment_size)
        seq, pack, msg_id = self.seq, HEADERS.pack, msg_id & 0xFFFFFFFF
        self.seq += count
        out: list[bytes | memoryview] = []
        for i in range(count):
            out.append(pack(VERSION, MODE_PLAIN, 0, seq + i, Kind.FRAME, flags, count, msg_id, i, MAX_TTL, 0, src, dst))
            out.append(message[i * room : (i + 1) * room])
        return out

    def datagrams(
        self,
        message: bytes | memoryview,
        *,
        msg_id: int,
        src: bytes,
        dst: bytes,
        segment_size: int,
        kind: Kind = Kind.FRAME,
        flags: int = 0,
        ttl: int = MAX_TTL,
    ) -> list[bytes]:
        """The message cut into datagrams of at most `segment_size` bytes each (headers included)."""
        out = bytearray(packed_size(len(message), segment_size))
        count, total = self.pack(
            out, message, msg_id=msg_id, src=src, dst=dst, segment_size=segment_size, kind=kind, flags=flags, ttl=ttl
        )
        return [bytes(out[i * segment_size : min(total, (i + 1) * segment_size)]) for i in range(count)]

    def forward(self, seg: Segment) -> bytes:
        """A received segment re-sealed for the next hop (relaying), its TTL one less."""
        inner = INNER.pack(seg.kind, seg.flags, seg.count, seg.msg_id, seg.index, seg.ttl - 1, 0, seg.src, seg.dst)
        return self.seal(inner, seg.data)


def _cut(length: int, room: int, segment_size: int) -> tuple[int, int]:
    """(data bytes per segment, segments) for a message of `length` bytes; ValueError if it cannot be sent."""
    if room <= 0:
        raise ValueError(f"segment size {segment_size} leaves no room for data")
    count = max(1, -(-length // room))
    if count > MAX_SEGMENTS or length > MAX_MESSAGE:
        raise ValueError(f"a message of {length} B does not fit {MAX_SEGMENTS} segments of {segment_size} B")
    return room, count


def packed_size(message_len: int, segment_size: int) -> int:
    """An upper bound of `pack`'s output for a message of this length."""
    return (message_len // max(1, segment_size - overhead(True) - MAC_SIZE) + 2) * segment_size + message_len


class Opener:
    """The receiving side of one direction of one peer connection. key=None: plain datagrams only.
    A sealed datagram given as a writable buffer is decrypted in place."""

    def __init__(self, key: bytes | None, *, window: int = 4096, mode: int = MODE_SECRETBOX) -> None:
        if mode not in CIPHERS:
            raise ValueError(f"unknown cipher mode {mode}")
        self.key = key
        self.mode = MODE_PLAIN if key is None else mode
        self.window = ReplayWindow(window)
        self.drops: Counter[str] = Counter()
        self.key_c = None if key is None else ffi.from_buffer(key)
        self._stale = 0

    def fresh(self) -> None:
        """Fresh datagrams were accepted (by the forwarder's fast path): the run of stale ones is over."""
        self._stale = 0

    def open(self, datagram: bytes | bytearray | memoryview) -> Segment:
        try:
            seg = self._open(memoryview(datagram))
        except SleeveDropped as exc:
            self.drops[exc.reason] += 1
            if self.key is None and exc.reason == "too_old":
                # Plain datagrams are not authenticated: one with a huge seq (or a peer whose clock went back
                # across a restart) must not silence the link for good. Start over after a run of stale ones.
                self._stale += 1
                if self._stale >= PLAIN_STALE_RESET:
                    self.window = ReplayWindow(self.window.size)
                    self._stale = 0
                    self.drops["window_reset"] += 1
            raise
        self._stale = 0
        return seg

    def open_quietly(self, datagram: bytes | bytearray | memoryview) -> Segment:
        """`open` without counting a drop: for a caller that tries another opener first (a link taking over)."""
        return self._open(memoryview(datagram))

    def _open(self, view: memoryview) -> Segment:
        if len(view) < OUTER.size + INNER.size:
            raise SleeveDropped("short")
        version, mode, reserved, seq = OUTER.unpack_from(view)
        if version != VERSION:
            raise SleeveDropped("version")
        if reserved:  # the clear header is not authenticated: nothing in it may be ignored
            raise SleeveDropped("malformed")
        if mode != self.mode:
            raise SleeveDropped("mode")
        self.window.check(seq)
        if self.key is None:
            body = view[OUTER.size :]
        else:
            if len(view) < OUTER.size + MAC_SIZE + INNER.size:
                raise SleeveDropped("short")
            if view.readonly:
                view = memoryview(bytearray(view))
            if not open_at(self.mode, ffi.from_buffer(view), 0, len(view), seq, self.key_c, OUTER.size):
                raise SleeveDropped("forged")
            body = view[BODY_AT[self.mode] : len(view) - TAIL[self.mode]]
        kind, flags, count, msg_id, index, ttl, _r, src, dst = INNER.unpack_from(body)
        if kind not in _KINDS or not 1 <= count <= MAX_SEGMENTS or index >= count or ttl > MAX_TTL:
            raise SleeveDropped("malformed")
        self.window.accept(seq)
        return Segment(_KINDS[kind], flags, msg_id, index, count, ttl, src, dst, body[INNER.size :], seq)
