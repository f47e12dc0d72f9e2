"""Length-prefixed frames for the mesh control connection (TCP port 6783). Pure: no I/O.

A frame is a 4-byte big-endian payload length followed by the payload. The decoder checks the length against its
limit as soon as the 4 header bytes are in, so a peer announcing a huge frame is rejected before anything of it
is buffered: the decoder never holds more than ``max_frame`` payload bytes plus a partial header.
"""

from __future__ import annotations

from collections.abc import Iterator

from weave_node.mesh.errors import ProtocolError

HEADER_SIZE = 4
MAX_FRAME = 8 * 1024 * 1024
"""Largest frame payload after the handshake (application messages, encrypted or not)."""
HANDSHAKE_MAX_FRAME = 4 * 1024
"""Largest frame payload accepted before the handshake completes (hello, proof)."""
_LENGTH_LIMIT = (1 << (8 * HEADER_SIZE)) - 1


def _check_limit(max_frame: int) -> int:
    if not 0 < max_frame <= _LENGTH_LIMIT:
        raise ValueError(f"max_frame must be in 1..{_LENGTH_LIMIT}, not {max_frame}")
    return max_frame


def encode_frame(payload: bytes, max_frame: int = MAX_FRAME) -> bytes:
    """One frame: header + payload. A payload over ``max_frame`` is a programming error (ValueError)."""
    if len(payload) > _check_limit(max_frame):
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds the limit of {max_frame}")
    return len(payload).to_bytes(HEADER_SIZE, "big") + payload


class FrameDecoder:
    """Incremental decoder: any split of the byte stream yields the same frames.

    ``max_frame`` may be changed between frames (the connection raises it once the handshake is done); the new
    limit applies from the next frame header on. After a ProtocolError the decoder is unusable: every further
    call raises the same error.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._max_frame = _check_limit(max_frame)
        self._header = bytearray()
        self._payload = bytearray()
        self._length: int | None = None  # length of the frame being read, None while reading a header
        self._error: str | None = None

    @property
    def max_frame(self) -> int:
        return self._max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._max_frame = _check_limit(value)

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (never more than ``max_frame + HEADER_SIZE``)."""
        return len(self._header) + len(self._payload)

    def feed(self, data: bytes) -> list[bytes]:
        """All frames completed by ``data``."""
        return list(self.frames(data))

    def frames(self, data: bytes) -> Iterator[bytes]:
        """Lazily yield the frames completed by ``data``.

        Reading stops at the frame being yielded, so the caller may change ``max_frame`` between frames. The
        iterator must be run to its end (or the decoder abandoned): bytes not yet reached are not buffered.
        """
        if self._error is not None:
            raise ProtocolError(self._error)
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._length is None:
                if not self._header and end - pos >= HEADER_SIZE:
                    length = int.from_bytes(view[pos : pos + HEADER_SIZE], "big")
                    pos += HEADER_SIZE
                else:
                    take = min(HEADER_SIZE - len(self._header), end - pos)
                    self._header += view[pos : pos + take]
                    pos += take
                    if len(self._header) < HEADER_SIZE:
                        return
                    length = int.from_bytes(self._header, "big")
                    self._header.clear()
                if length > self._max_frame:
                    self._error = f"frame of {length} bytes exceeds the limit of {self._max_frame}"
                    raise ProtocolError(self._error)
                self._length = length
            need = self._length - len(self._payload)
            if not self._payload and end - pos >= need:
                frame = bytes(view[pos : pos + need])
                pos += need
            else:
                take = min(need, end - pos)
                self._payload += view[pos : pos + take]
                pos += take
                if len(self._payload) < self._length:
                    return
                frame = bytes(self._payload)
                self._payload = bytearray()
            self._length = None
            yield frame
