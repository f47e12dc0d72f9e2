"""Name records for the routers' DNS (issue 25), a CRDT the mesh gossips (pure).

Each peer owns the records of the containers it attached: its *book* (owner, version, records). Only the owner
changes its book, and each change is a whole new book with a higher version: a deletion is a book without the
record, so there are no tombstones to keep or collect. The version is the owner's wall clock in nanoseconds, at
least one more than its last (`next_version`), so a restarted router continues above what it gave out before
without storing anything. Should its clock have gone back across the restart, peers would keep its old book: so
a book of our own that comes back newer than ours is never taken as ours; we answer it with our records at a
version above it (`Records.merge`), and that one wins everywhere.

Merge keeps, per owner, the book with the higher version (an owner's books at one version are one book): a join,
so merging is commutative, associative and idempotent, and every peer that has seen the same books holds the same
records. A removed owner (a retired or reclaimed peer: its IPAM space went to another) is forgotten, and a book
of it at or below the version we had then is refused afterwards, so a late gossip cannot bring it back; a newer
one (the peer is back after all) is taken.

Names are DNS names in our domain, lowercase, without the trailing dot: labels of 1-63 of [a-z0-9_-], 253 bytes
in all. What a peer may send is bounded (MAX_RECORDS per book, MAX_BOOKS per message): a hostile peer fills at
most its own book.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from weave_node.core.address import IPV4_LIMIT

MAX_RECORDS = 4096  # per book: a host's containers' names
MAX_BOOKS = 4096  # per message: one per peer
MAX_NAME = 253
MAX_CONTAINER = 128
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


class InvalidRecord(ValueError):
    """A name, address or container id that is not one we keep (the API answers 400, a peer's book is refused)."""


def normal_name(text: str) -> str:
    """`text` as we keep it (lowercase, no trailing dot), or InvalidRecord saying why."""
    name = text.strip().lower().removesuffix(".")
    if not name or len(name) > MAX_NAME:
        raise InvalidRecord(f"a name has 1 to {MAX_NAME} characters: {text[:80]!r}")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise InvalidRecord(f"{text[:80]!r}: each label is 1-63 of a-z, 0-9, '_' and '-' (not first or last)")
    return name


@dataclass(frozen=True, order=True)
class Record:
    name: str
    ip: int  # either family (core.address: the int says which)
    container: str  # the attachment that holds it: "container_id/ifname", or "" for one added by hand

    def check(self) -> None:
        if normal_name(self.name) != self.name:
            raise InvalidRecord(f"name {self.name!r} is not in its normal form")
        if not 0 < self.ip < 1 << 128:
            raise InvalidRecord(f"address {self.ip} is not one")
        if len(self.container.encode()) > MAX_CONTAINER or not self.container.isprintable():
            raise InvalidRecord(f"container {self.container[:40]!r}: printable, at most {MAX_CONTAINER} bytes")


@dataclass(frozen=True)
class Book:
    """One owner's records at one version. `records` is sorted and without duplicates."""

    owner: int
    version: int
    records: tuple[Record, ...] = ()

    @classmethod
    def of(cls, owner: int, version: int, records: Iterable[Record]) -> Book:
        book = cls(owner, version, tuple(sorted(set(records))))
        book.check()
        return book

    def check(self) -> None:
        if not 0 < self.owner < 1 << 48:
            raise InvalidRecord(f"owner {self.owner} is not a peer name")
        if not 0 <= self.version < 1 << 64:
            raise InvalidRecord("version out of range")
        if len(self.records) > MAX_RECORDS:
            raise InvalidRecord(f"a book holds at most {MAX_RECORDS} records")
        if list(self.records) != sorted(set(self.records)):
            raise InvalidRecord("records must be sorted and unique")
        for record in self.records:
            record.check()


def next_version(last: int, now_ns: int) -> int:
    """The version of an owner's next book: its clock, and always above its last."""
    return max(last + 1, now_ns)


@dataclass
class Records:
    """The books a router knows (ours is `me`'s), and the owners it removed (with the version it had then)."""

    me: int
    books: dict[int, Book] = field(default_factory=dict)
    removed: dict[int, int] = field(default_factory=dict)
    _index: dict[str, list[int]] | None = field(default=None, repr=False, compare=False)

    def merge(self, books: Iterable[Book]) -> list[Book]:
        """Take what is newer; returns the books that were (what to pass on). A book of ours newer than the one we
        hold (sent before a restart) is answered with our records above its version, never taken."""
        taken = []
        for book in books:
            have = self.books.get(book.owner)
            floor = max(have.version if have else -1, self.removed.get(book.owner, -1))
            if book.version <= floor:
                continue
            if book.owner == self.me:
                mine = have.records if have else ()
                taken.append(self._own(Book(self.me, book.version + 1, mine)))
                continue
            self.books[book.owner] = book
            self.removed.pop(book.owner, None)
            self._index = None
            taken.append(book)
        return taken

    def set_own(self, records: Iterable[Record], now_ns: int) -> Book:
        """Our own records, as a new book (the only way our book changes)."""
        have = self.books.get(self.me)
        return self._own(Book.of(self.me, next_version(have.version if have else 0, now_ns), records))

    def _own(self, book: Book) -> Book:
        self.books[self.me] = book
        self._index = None
        return book

    def remove_owner(self, owner: int) -> bool:
        """Forget a peer that left (its space went to another): its records stop resolving at once."""
        book = self.books.pop(owner, None) if owner != self.me else None
        if book is None:
            return False
        self.removed[owner] = max(book.version, self.removed.get(owner, 0))
        self._index = None
        return True

    def lookup(self, name: str) -> list[int]:
        """Every address with this name, IPv4 first (the server rotates them), from every owner."""
        try:
            wanted = normal_name(name)
        except InvalidRecord:
            return []
        if self._index is None:
            index: dict[str, set[int]] = {}
            for b in self.books.values():
                for r in b.records:
                    index.setdefault(r.name, set()).add(r.ip)
            self._index = {n: sorted(ips, key=lambda ip: (ip >= IPV4_LIMIT, ip)) for n, ips in index.items()}
        return list(self._index.get(wanted, ()))

    def reverse(self, ip: int) -> list[str]:
        return sorted({r.name for b in self.books.values() for r in b.records if r.ip == ip})

    def snapshot(self) -> Mapping[int, Book]:
        return dict(self.books)
