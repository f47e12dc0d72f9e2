"""Reassembly of segmented sleeve messages, with bounded memory (pure): at most `max_messages` partial messages
and `max_bytes` held, each for `timeout` s; `drops` counts what was given up."""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from weave_node.overlay.sleeve.codec import MAX_MESSAGE, MAX_SEGMENTS, Segment

SEGMENT_COST = 128  # what the reassembler charges per held segment on top of its data (objects, dict entry)


@dataclass
class _Partial:
    count: int
    first_seen: float
    parts: dict[int, bytes | memoryview] = field(default_factory=dict)
    size: int = 0


class Reassembler:
    """Segments -> whole messages, with bounded memory; `drops` counts what was given up."""

    def __init__(self, *, max_messages: int = 256, max_bytes: int = 8 << 20, timeout: float = 1.0) -> None:
        self.max_messages, self.max_bytes, self.timeout = max_messages, max_bytes, timeout
        self._partial: OrderedDict[tuple[bytes, int], _Partial] = OrderedDict()
        self._bytes = 0
        self.drops: Counter[str] = Counter()

    def add(self, seg: Segment, now: float) -> bytes | None:
        parts = self.add_parts(seg, now)
        return None if parts is None else b"".join(parts)

    def add_parts(self, seg: Segment, now: float) -> list[bytes | memoryview] | None:
        """The whole message as its segments' data in order (for writev: no copy), once the last one is in."""
        if seg.count == 1:
            return [seg.data]
        key = (seg.src, seg.msg_id)
        partial = self._partial.get(key)
        if partial is None:
            partial = self._partial[key] = _Partial(seg.count, now)
        if partial.count != seg.count:
            self._forget(key, "inconsistent")
            return None
        if seg.index in partial.parts:
            self.drops["duplicate"] += 1
            return None
        # Held for later: a copy (a view would pin its whole 64 KiB receive buffer), charged with a per-segment
        # overhead so that empty segments count too.
        size = len(seg.data) + SEGMENT_COST
        if partial.size + size > MAX_MESSAGE + MAX_SEGMENTS * SEGMENT_COST:
            self._forget(key, "oversize")
            return None
        partial.parts[seg.index] = bytes(seg.data)
        partial.size += size
        self._bytes += size
        if len(partial.parts) == partial.count:
            del self._partial[key]
            self._bytes -= partial.size
            parts = partial.parts
            return [parts[i] for i in range(partial.count)]
        while len(self._partial) > self.max_messages or self._bytes > self.max_bytes:
            self._forget(next(iter(self._partial)), "overflow")
        return None

    def holds(self, src: bytes, msg_id: int) -> bool:
        """Whether part of this message is waiting here."""
        return (src, msg_id) in self._partial

    def expire(self, now: float) -> None:
        for key in [k for k, p in self._partial.items() if now - p.first_seen > self.timeout]:
            self._forget(key, "timeout")

    def _forget(self, key: tuple[bytes, int], reason: str) -> None:
        partial = self._partial.pop(key)
        self._bytes -= partial.size
        self.drops[reason] += 1

    @property
    def pending(self) -> tuple[int, int]:
        """(partial messages, bytes held)."""
        return len(self._partial), self._bytes
