"""The ring CRDT: splits, grants, transfers, merges in every order, invariants, and its wire codec."""

from __future__ import annotations

import contextlib
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.core.address import Range, parse_range
from weave_node.ipam import messages
from weave_node.ipam.errors import DecodeError, RingConflict
from weave_node.ipam.ring import Entry, Ring

SPAN = parse_range("10.32.0.0/24")
A, B, C = 0xA, 0xB, 0xC


def test_initial_ring_splits_the_range_evenly_in_name_order() -> None:
    ring = Ring.initial(SPAN, 1, [C, A, B])
    ring.check_invariants()
    assert [(s - SPAN.start, e - SPAN.start, x.owner) for s, e, x in ring.spans()] == [
        (0, 85, A),
        (85, 170, B),
        (170, 256, C),
    ]
    assert ring.owner_of(SPAN.start + 100) == B
    assert ring.sizes() == {A: 85, B: 85, C: 86}


def test_grant_inside_an_entry_splits_it_and_bumps_versions() -> None:
    ring = Ring.initial(SPAN, 1, [A])
    before = ring.copy()
    ring.grant(SPAN.start + 100, SPAN.start + 150, B, A)
    ring.check_invariants(before)
    assert ring.owned(B) == [(SPAN.start + 100, SPAN.start + 150)]
    assert ring.owned(A) == [(SPAN.start, SPAN.start + 100), (SPAN.start + 150, SPAN.end)]
    with pytest.raises(ValueError, match="not inside one entry owned"):
        ring.grant(SPAN.start + 120, SPAN.start + 130, C, A)  # A no longer owns it


def test_transfer_moves_every_entry_of_a_peer() -> None:
    ring = Ring.initial(SPAN, 1, [A, B, C])
    before = ring.copy()
    assert ring.transfer(B, C) == 85
    ring.check_invariants(before)
    assert B not in ring.owners()


def test_merge_refuses_another_range_or_bootstrap_and_changes_nothing() -> None:
    ring = Ring.initial(SPAN, 1, [A, B])
    snapshot = ring.copy()
    with pytest.raises(RingConflict, match="another bootstrap"):
        ring.merge(Ring.initial(SPAN, 2, [A, B]))
    with pytest.raises(RingConflict, match="range"):
        ring.merge(Ring.initial(parse_range("10.33.0.0/24"), 1, [A, B]))
    assert ring == snapshot


def test_invariants_catch_broken_rings() -> None:
    with pytest.raises(AssertionError, match="first token"):
        Ring(SPAN, 1, [Entry(SPAN.start + 1, A)]).check_invariants()
    with pytest.raises(AssertionError, match="outside"):
        Ring(SPAN, 1, [Entry(SPAN.start, A), Entry(SPAN.end, B)]).check_invariants()
    old = Ring.initial(SPAN, 1, [A])
    new = old.copy()
    new.entries[SPAN.start] = Entry(SPAN.start, A, version=0, free=0)
    old.entries[SPAN.start] = Entry(SPAN.start, A, version=3, free=0)
    with pytest.raises(AssertionError, match="went backwards"):
        new.check_invariants(old)


def _evolve(seed: int, steps: int, span: Range = SPAN) -> list[Ring]:
    """Three peers changing their own space (grants, free reports) on private copies, with occasional merges."""
    rnd = random.Random(seed)
    base = Ring.initial(span, 1, [A, B, C])
    copies = {p: base.copy() for p in (A, B, C)}
    history = [base.copy()]
    for _ in range(steps):
        me = rnd.choice([A, B, C])
        ring = copies[me]
        if rnd.random() < 0.3:
            other = copies[rnd.choice([A, B, C])]
            ring.merge(other)
        owned = ring.owned(me)
        if owned and rnd.random() < 0.6:
            s, e = rnd.choice(owned)
            entry = ring.entry_at(s)
            end = min(e, ring.end_of(entry.token))
            if end - s >= 2:
                cut = rnd.randrange(s + 1, end)
                ring.grant(cut, end, rnd.choice([x for x in (A, B, C) if x != me]), me)
        else:
            ring.report_free(me, {t: rnd.randrange(0, 2) for t, e in ring.entries.items() if e.owner == me})
        ring.check_invariants()
        history.append(ring.copy())
    return history


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 25))
def test_merge_is_commutative_associative_idempotent_and_monotone(seed: int, steps: int) -> None:
    history = _evolve(seed, steps)
    results = merged_in_every_order(random.Random(seed).sample(history, min(4, len(history))))
    assert all(r == results[0] for r in results)


def merged_in_every_order(picks: list[Ring]) -> list[Ring]:
    """The rings merged in every order, each merge twice (idempotent), checking that versions never go down and
    the range stays covered once."""
    results = []
    for order in itertools.permutations(picks):
        acc = order[0].copy()
        for r in order[1:]:
            before = acc.copy()
            acc.merge(r)
            acc.check_invariants(before)
            acc.merge(r)
        results.append(acc)
    return results


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(0, 15))
def test_ring_survives_the_wire(seed: int, steps: int) -> None:
    ring = _evolve(seed, steps)[-1]
    decoded = messages.decode(messages.encode_state(SPAN, ring))
    assert isinstance(decoded, messages.State) and decoded.ring == ring


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_garbage_decodes_to_decode_error_only(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        messages.decode(data)


@settings(max_examples=200, deadline=None)
@given(flip=st.integers(0, 10_000), value=st.integers(0, 255))
def test_corrupted_ring_is_rejected_or_still_valid(flip: int, value: int) -> None:
    wire = bytearray(messages.encode_state(SPAN, _evolve(1, 8)[-1]))
    wire[flip % len(wire)] = value
    try:
        msg = messages.decode(bytes(wire))
    except DecodeError:
        return
    if isinstance(msg, messages.State) and msg.ring is not None:
        msg.ring.check_invariants()  # whatever gets through is a well-formed ring


def test_range_helpers() -> None:
    r = Range(parse_range("10.32.0.0/30").start, 30)
    assert [r.usable(r.start + i) for i in range(4)] == [False, True, True, False]
    with pytest.raises(Exception, match="IPv4 CIDR"):
        parse_range("10.32.0.1/12")


def test_hostile_names_and_tiny_ranges_are_refused_on_decode() -> None:
    ring = Ring.initial(SPAN, 1, [A, B])
    ring.entries[SPAN.start] = Entry(SPAN.start, 1 << 60, 9)
    with pytest.raises(DecodeError, match="owner"):
        messages.decode(messages.encode_state(SPAN, ring))
    tiny = parse_range("10.32.0.0/30")
    assert len(Ring.initial(tiny, 1, [1, 2, 3, 4, 5, 6])) == 4  # more owners than addresses: first four
