"""The DNS records CRDT (issue 25, first step) and its gossip format: names in their normal form, merge as a
join (commutative, associative, idempotent), a deletion is a newer book, a removed owner stays removed until it
speaks again, our own old book never comes back as ours, and hostile bytes give DecodeError only."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.core.address import parse_ip, parse_ip6
from weave_node.dns import wire
from weave_node.dns.records import (
    MAX_AHEAD_NS,
    MAX_RECORDS,
    Book,
    InvalidRecord,
    Record,
    Records,
    next_version,
    normal_name,
)

pytestmark = pytest.mark.unit
A, B, C = 0x0A, 0x0B, 0x0C
WEB1, WEB2 = parse_ip("10.32.0.5"), parse_ip("10.40.0.9")
WEB6 = parse_ip6("fd32:57::5")
NOW = 10**18


def test_names_are_kept_in_their_normal_form_and_bad_ones_refused() -> None:
    assert normal_name("Web.Weave.Local.") == "web.weave.local"
    assert normal_name("db_1.weave.local") == "db_1.weave.local"
    for bad in ("", ".", "a..b", "-web.weave.local", "web-.weave.local", "we b", "x" * 64 + ".local",
                ".".join(["abc"] * 64), "wéb.local", "a/b"):  # fmt: skip
        with pytest.raises(InvalidRecord):
            normal_name(bad)


def test_lookup_reverse_and_a_deletion_is_a_newer_book() -> None:
    r = Records(A)
    r.set_own([Record("web.weave.local", WEB1, "c1/eth0"), Record("web.weave.local", WEB6, "c1/eth0")], 100)
    r.merge([Book.of(B, 50, [Record("web.weave.local", WEB2, "c2/eth0"), Record("db.weave.local", WEB2, "")])], NOW)
    assert r.lookup("WEB.weave.local.") == [WEB1, WEB2, WEB6]  # every owner's; IPv4 first
    assert r.reverse(WEB2) == ["db.weave.local", "web.weave.local"]
    assert r.lookup("nobody.weave.local") == [] and r.lookup("bad name") == []
    r.merge([Book.of(B, 60, [Record("db.weave.local", WEB2, "")])], NOW)  # B's c2 went (DEL): its new book lacks it
    assert r.lookup("web.weave.local") == [WEB1, WEB6]
    assert r.merge([Book.of(B, 55, [Record("web.weave.local", WEB2, "c2/eth0")])], NOW) == []  # late: ignored
    assert r.lookup("web.weave.local") == [WEB1, WEB6]


def test_a_removed_owner_stays_removed_until_it_is_readmitted() -> None:
    r = Records(A)
    old = Book.of(B, 50, [Record("web.weave.local", WEB2, "c2/eth0")])
    r.merge([old], NOW)
    assert r.remove_owner(B) and r.lookup("web.weave.local") == []
    later = Book.of(B, 60, [Record("web.weave.local", WEB2, "c2/eth0")])  # B's last book, from a peer cut off
    assert r.merge([old, later], NOW) == [] and r.lookup("web.weave.local") == []  # late gossip: refused
    assert not r.remove_owner(C) and r.merge([Book.of(C, 1, [Record("c.weave.local", WEB1, "")])], NOW) == []
    r.readmit(B)  # B is reachable again: its full state, at the very version it had, comes back
    assert r.merge([old], NOW) == [old] and r.lookup("web.weave.local") == [WEB2]
    assert not r.remove_owner(A)  # never ourselves


def test_a_book_from_the_future_is_refused() -> None:
    """No one can pin a book, or ours, at a version no one could pass."""
    r = Records(A)
    assert r.merge([Book.of(B, NOW + MAX_AHEAD_NS + 1, []), Book.of(A, (1 << 63) - 1, [])], NOW) == []
    assert r.books == {}
    with pytest.raises(InvalidRecord, match="version"):
        Book.of(B, 1 << 63, [])


def test_our_old_book_from_before_a_restart_is_answered_not_taken() -> None:
    """A router restarted with its clock behind: peers still hold its older book at a higher version."""
    r = Records(A)
    early = Book.of(A, 9_000, [Record("old.weave.local", WEB2, "c1/eth0")])
    assert r.merge([early], NOW) == []  # before our first book: only remembered, so ours goes above it
    assert r.set_own([Record("new.weave.local", WEB1, "c9/eth0")], now_ns=1_000).version == 9_001
    mine = r.books[A]
    stale = Book.of(A, 9_001, [Record("old.weave.local", WEB2, "c1/eth0")])  # the same version, other records
    (answer,) = r.merge([stale], NOW)
    assert answer.owner == A and answer.version == 9_002 and answer.records == mine.records
    assert r.lookup("old.weave.local") == [] and r.lookup("new.weave.local") == [WEB1]
    assert r.merge([answer], NOW) == []  # our own book back: nothing to do
    assert next_version(5_001, 10) == 5_002 and next_version(1, 10) == 10


books = st.builds(
    Book.of,
    st.sampled_from([A, B, C]),
    st.integers(0, 20),
    st.lists(
        st.builds(
            Record,
            st.sampled_from(["web.weave.local", "db.weave.local"]),
            st.sampled_from([WEB1, WEB2, WEB6]),
            st.sampled_from(["", "c1/eth0"]),
        ),
        max_size=4,
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(books, min_size=1, max_size=6))
def test_merge_is_a_join(batch: list[Book]) -> None:
    """Any order, any repetition: the same books, also where one owner issued two books at one version (a clock
    that went back)."""
    results = []
    for order in itertools.islice(itertools.permutations(batch), 24):
        r = Records(0x0F)
        for book in order:
            r.merge([book], NOW)
            r.merge([book], NOW)
        results.append(r.books)
    assert all(res == results[0] for res in results)


@settings(max_examples=100, deadline=None)
@given(st.lists(books, min_size=1, max_size=6), st.lists(books, max_size=4))
def test_routers_that_hear_the_same_books_agree_owner_included(heard: list[Book], own: list[Book]) -> None:
    """Two routers, one of them A (whose own books come back to it): once each has heard everything the other
    holds, they hold the same books, and A's is A's latest records."""
    a, other = Records(A), Records(0x0F)
    a.set_own([Record("mine.weave.local", WEB1, "")], 1)
    for book in heard + own:
        other.merge([book], NOW)
    for _ in range(3):
        other.merge(a.books.values(), NOW)
        a.merge(other.books.values(), NOW)
    assert a.books == other.books
    assert a.books[A].records == (Record("mine.weave.local", WEB1, ""),)


@settings(max_examples=100, deadline=None)
@given(st.lists(books, max_size=6))
def test_books_survive_the_wire(batch: list[Book]) -> None:
    unique = {b.owner: b for b in batch}
    assert {b.owner: b for b in wire.decode(wire.encode(unique.values()))} == unique
    chunks = wire.encode_chunks(unique.values(), budget=60)  # a small budget: a message per book or two
    assert all(len(c) <= 60 or len(wire.decode(c)) == 1 for c in chunks)
    assert {b.owner: b for c in chunks for b in wire.decode(c)} == unique


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_gives_decode_error_only(data: bytes) -> None:
    with contextlib.suppress(wire.DecodeError):
        for book in wire.decode(data):
            book.check()


@settings(max_examples=300, deadline=None)
@given(flip=st.integers(0, 10_000), value=st.integers(0, 255))
def test_a_corrupted_message_is_refused_or_still_valid(flip: int, value: int) -> None:
    good = wire.encode(
        [Book.of(A, 7, [Record("web.weave.local", WEB1, "c1/eth0"), Record("v6.weave.local", WEB6, "")])]
    )
    data = bytearray(good)
    data[flip % len(data)] = value
    with contextlib.suppress(wire.DecodeError):
        for book in wire.decode(bytes(data)):
            book.check()


def test_a_hostile_peer_is_bounded() -> None:
    """Over the record limit, a record of the other family, an owner twice, a name not in normal form: refused."""
    too_many = [Record(f"n{i}.weave.local", WEB1, "") for i in range(MAX_RECORDS + 1)]
    with pytest.raises(InvalidRecord, match="at most"):
        Book.of(A, 1, too_many)
    forged = wire.encode([Book(A, 1, tuple(too_many[:2]))]).replace(
        b"\x00\x02", bytes([MAX_RECORDS >> 8, 1 + (MAX_RECORDS & 255)]), 1
    )
    with pytest.raises(wire.DecodeError):
        wire.decode(forged)
    one = wire.encode([Book.of(A, 1, [Record("web.weave.local", WEB1, "")])])
    twice = one[:2] + b"\x00\x02" + one[4:] + one[4:]
    with pytest.raises(wire.DecodeError, match="twice"):
        wire.decode(twice)
    upper = one.replace(b"web", b"WEB")
    with pytest.raises(wire.DecodeError, match="normal form"):
        wire.decode(upper)
    other_family = one.replace(b"\x04" + WEB1.to_bytes(4, "big"), b"\x06" + WEB1.to_bytes(16, "big"))
    with pytest.raises(wire.DecodeError, match="other family"):
        wire.decode(other_family)
