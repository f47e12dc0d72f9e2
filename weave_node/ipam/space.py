"""The addresses one peer has handed out, inside the spans it owns (pure helpers over a sorted list)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from weave_node.core.address import Range


class Space:
    def __init__(self, span: Range, used: Iterable[int] = ()) -> None:
        self.range = span
        self.used: list[int] = sorted(set(used))

    def add(self, ip: int) -> None:
        i = bisect.bisect_left(self.used, ip)
        if i < len(self.used) and self.used[i] == ip:
            raise ValueError(f"address {ip} is already in use")
        self.used.insert(i, ip)

    def remove(self, ip: int) -> None:
        i = bisect.bisect_left(self.used, ip)
        if i == len(self.used) or self.used[i] != ip:
            raise ValueError(f"address {ip} is not in use")
        del self.used[i]

    def used_in(self, start: int, end: int) -> int:
        return bisect.bisect_left(self.used, end) - bisect.bisect_left(self.used, start)

    def usable_in(self, start: int, end: int) -> int:
        lo, hi = max(start, self.range.start + 1), min(end, self.range.usable_end)
        return max(0, hi - lo)

    def free_in(self, start: int, end: int) -> int:
        return self.usable_in(start, end) - self.used_in(start, end)

    def find_free(self, spans: list[tuple[int, int]], cursor: int) -> int | None:
        """The first free usable address at or after `cursor` in `spans` (sorted), wrapping around once."""
        pieces = [(max(s, cursor), e) for s, e in spans if e > cursor]
        pieces += [(s, min(e, cursor)) for s, e in spans if s < cursor]
        for start, end in pieces:
            found = self._first_gap(start, end)
            if found is not None:
                return found
        return None

    def _first_gap(self, start: int, end: int) -> int | None:
        ip = max(start, self.range.start + 1)
        end = min(end, self.range.usable_end)
        i = bisect.bisect_left(self.used, ip)
        while ip < end:
            if i < len(self.used) and self.used[i] == ip:
                ip += 1
                i += 1
                continue
            return ip
        return None

    def largest_free_run(self, spans: list[tuple[int, int]]) -> tuple[int, int] | None:
        """The longest run of free usable addresses inside one of `spans`."""
        best: tuple[int, int] | None = None
        for start, end in spans:
            lo, hi = max(start, self.range.start + 1), min(end, self.range.usable_end)
            i, j = bisect.bisect_left(self.used, lo), bisect.bisect_left(self.used, hi)
            at = lo
            for ip in [*self.used[i:j], hi]:
                if ip > at and (best is None or ip - at > best[1] - best[0]):
                    best = (at, ip)
                at = ip + 1
        return best
