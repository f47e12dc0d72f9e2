"""The ring: the allocation range split into entries owned by peers, merged as a CRDT (pure).

Entry i owns [token_i, token_{i+1}) (the last one up to the end of the range); the first token is the start of
the range, so the range is always covered exactly once. Only an entry's owner changes it (hand its span over,
split it, report its free count), and every change bumps the entry's version. Merge is the union of tokens and,
per token, the entry with the greatest (version, owner, free): a join, so merging is commutative, associative and
idempotent, and every peer that has seen the same changes holds the same ring. The one exception to "only the
owner changes it" is reclaim (and rmpeer), which happens only under the quorum rules in reclaim.py and presence.py.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, replace

from weave_node.core.address import Range
from weave_node.ipam.errors import RingConflict


@dataclass(frozen=True)
class Entry:
    token: int
    owner: int
    version: int = 0
    free: int = 0  # addresses the owner last reported free in this entry (a hint for choosing donors)
    epoch: int = 0  # bumped by reclaim/rmpeer: beats any version the old owner reached meanwhile

    def rank(self) -> tuple[int, int, int, int]:
        return (self.epoch, self.version, self.owner, self.free)


class Ring:
    def __init__(self, span: Range, ring_id: int, entries: list[Entry]) -> None:
        self.range = span
        self.ring_id = ring_id  # which bootstrap made it: rings of two bootstraps never merge
        self.tokens = [e.token for e in entries]
        self.entries = {e.token: e for e in entries}

    @classmethod
    def initial(cls, span: Range, ring_id: int, owners: list[int]) -> Ring:
        """The range split evenly, in name order, among `owners` (every peer computes the same ring);
        with more owners than addresses, only the first `span.size` names get one."""
        names = sorted(set(owners))[: span.size]
        if not names:
            raise ValueError("a ring needs at least one owner")
        step = span.size // len(names)
        entries = []
        for i, name in enumerate(names):
            start = span.start + i * step
            end = span.end if i == len(names) - 1 else start + step
            entries.append(Entry(start, name, 0, _usable(span, start, end)))
        return cls(span, ring_id, entries)

    def copy(self) -> Ring:
        return Ring(self.range, self.ring_id, list(self))

    def __iter__(self) -> Iterator[Entry]:
        return (self.entries[t] for t in self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ring) and (self.range, self.ring_id, list(self)) == (
            other.range,
            other.ring_id,
            list(other),
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __len__(self) -> int:
        return len(self.tokens)

    # ---- queries ----------------------------------------------------------------------------------------

    def end_of(self, token: int) -> int:
        i = bisect.bisect_right(self.tokens, token)
        return self.tokens[i] if i < len(self.tokens) else self.range.end

    def entry_at(self, ip: int) -> Entry:
        i = bisect.bisect_right(self.tokens, ip) - 1
        return self.entries[self.tokens[i]]

    def owner_of(self, ip: int) -> int:
        return self.entry_at(ip).owner

    def spans(self) -> Iterator[tuple[int, int, Entry]]:
        for i, t in enumerate(self.tokens):
            end = self.tokens[i + 1] if i + 1 < len(self.tokens) else self.range.end
            yield t, end, self.entries[t]

    def owned(self, peer: int) -> list[tuple[int, int]]:
        """The spans `peer` owns, adjacent ones joined."""
        out: list[tuple[int, int]] = []
        for start, end, e in self.spans():
            if e.owner != peer:
                continue
            if out and out[-1][1] == start:
                out[-1] = (out[-1][0], end)
            else:
                out.append((start, end))
        return out

    def owners(self) -> set[int]:
        return {e.owner for e in self.entries.values()}

    def reported_free(self) -> dict[int, int]:
        free: dict[int, int] = {}
        for e in self.entries.values():
            free[e.owner] = free.get(e.owner, 0) + e.free
        return free

    def sizes(self) -> dict[int, int]:
        size: dict[int, int] = {}
        for start, end, e in self.spans():
            size[e.owner] = size.get(e.owner, 0) + end - start
        return size

    # ---- changes by an owner ----------------------------------------------------------------------------

    def grant(self, start: int, end: int, to: int, me: int) -> None:
        """Hand [start, end), which must lie inside one entry owned by `me`, over to `to`."""
        e = self.entry_at(start)
        if e.owner != me or end > self.end_of(e.token) or not start < end:
            raise ValueError(f"cannot grant [{start}, {end}): not inside one entry owned by {me:x}")
        if end < self.end_of(e.token):
            self._put(Entry(end, me, e.version + 1, 0, e.epoch))
        if start != e.token:  # the part left below `start` stays ours; its free count is reported afresh
            self._put(replace(e, version=e.version + 1, free=0))
        self._put(Entry(start, to, e.version + 1, 0, e.epoch))

    def transfer(self, old: int, new: int) -> int:
        """Every entry of `old` to `new` (reclaim, rmpeer); returns the number of addresses moved."""
        moved = 0
        for start, end, e in list(self.spans()):
            if e.owner == old:
                self._put(Entry(e.token, new, 0, 0, e.epoch + 1))
                moved += end - start
        return moved

    def hand_over(self, me: int, to: int) -> int:
        """Every entry of ours to `to`, all of it free (we are leaving); returns the number of addresses. A change
        by the owner, so it needs no quorum: it outranks our older versions and loses to a reclaim's epoch."""
        moved = 0
        for start, end, e in list(self.spans()):
            if e.owner == me:
                self._put(Entry(e.token, to, e.version + 1, _usable(self.range, start, end), e.epoch))
                moved += end - start
        return moved

    def report_free(self, me: int, free: dict[int, int]) -> bool:
        """Update the free counts of our entries (token -> free); True when something changed."""
        changed = False
        for token, n in free.items():
            e = self.entries.get(token)
            if e is not None and e.owner == me and e.free != n:
                self._put(replace(e, version=e.version + 1, free=max(0, n)))
                changed = True
        return changed

    def _put(self, e: Entry) -> None:
        if e.token not in self.entries:
            bisect.insort(self.tokens, e.token)
        self.entries[e.token] = e

    # ---- the CRDT merge ----------------------------------------------------------------------------------

    def merge(self, other: Ring) -> set[int]:
        """Merge `other` into this ring; returns the tokens whose entry changed. Raises RingConflict for a ring
        of another range or bootstrap (nothing changes then)."""
        if other.range != self.range:
            raise RingConflict(f"peer's range {other.range} is not ours ({self.range})")
        if other.ring_id != self.ring_id:
            raise RingConflict(
                f"peer's ring {other.ring_id:016x} was created by another bootstrap than ours ({self.ring_id:016x}): "
                "two separately initialised networks were connected"
            )
        changed = set()
        for e in other.entries.values():
            mine = self.entries.get(e.token)
            if mine is None or e.rank() > mine.rank():
                self._put(e)
                changed.add(e.token)
        return changed

    def check_invariants(self, previous: Ring | None = None) -> None:
        """Raise AssertionError unless: tokens sorted and unique, the first is the range start, all inside the
        range (so the range is covered exactly once), owners set, and no entry went down since `previous`.
        Free counts are hints (a merge can split an entry after its owner counted it) and are not checked."""
        if not self.tokens or self.tokens[0] != self.range.start:
            raise AssertionError("the first token is not the start of the range")
        if any(a >= b for a, b in zip(self.tokens, self.tokens[1:], strict=False)):
            raise AssertionError("tokens not strictly increasing")
        if self.tokens[-1] >= self.range.end:
            raise AssertionError("token outside the range")
        if set(self.tokens) != set(self.entries):
            raise AssertionError("token index and entries disagree")
        for e in self.entries.values():
            if e.owner <= 0 or e.version < 0 or e.free < 0 or e.epoch < 0:
                raise AssertionError(f"bad entry {e}")
        if previous is not None:
            for e in previous.entries.values():
                now = self.entries.get(e.token)
                if now is None or now.rank() < e.rank():
                    raise AssertionError(f"entry {e} went backwards")


def _usable(span: Range, start: int, end: int) -> int:
    """How many of [start, end) pods can get (Range.usable: not the range's first address, nor IPv4's last)."""
    n = end - start
    if span.size > 2:
        n -= (start == span.start) + (end == span.end and not span.ipv6)
    return n
