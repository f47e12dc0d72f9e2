"""Space: finding free addresses and free runs, checked against brute force."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.core.address import Range
from weave_node.ipam.space import Space

SPAN = Range(0x0A200000, 26)  # 64 addresses: 0 and 63 unusable


def _spans(cuts: list[int], mask: list[bool]) -> list[tuple[int, int]]:
    points = sorted({0, 64, *cuts})
    pairs = itertools.pairwise(points)
    return [(SPAN.start + a, SPAN.start + b) for (a, b), keep in zip(pairs, mask, strict=False) if keep]


@settings(max_examples=300, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 63), max_size=5),
    mask=st.lists(st.booleans(), min_size=6, max_size=6),
    used=st.sets(st.integers(1, 62), max_size=40),
    cursor=st.integers(0, 64),
)
def test_find_free_and_runs_match_brute_force(cuts: list[int], mask: list[bool], used: set[int], cursor: int) -> None:
    spans = _spans(cuts, mask)
    inside = [ip for s, e in spans for ip in range(s, e) if SPAN.usable(ip)]
    space = Space(SPAN, [SPAN.start + u for u in used if any(s <= SPAN.start + u < e for s, e in spans)])
    free = [ip for ip in inside if ip not in space.used]
    at = SPAN.start + cursor
    expected = next((ip for ip in free if ip >= at), free[0] if free else None)
    assert space.find_free(spans, at) == expected
    assert sum(space.free_in(s, e) for s, e in spans) == len(free)
    run = space.largest_free_run(spans)
    longest = 0
    for s, e in spans:
        n = 0
        for ip in range(s, e):
            n = n + 1 if ip in free else 0
            longest = max(longest, n)
    assert (run[1] - run[0] if run else 0) == longest
    if run:
        assert all(ip in free for ip in range(*run))
