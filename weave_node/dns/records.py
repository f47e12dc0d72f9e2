"""Name records for the routers' DNS (issue 25), a CRDT the mesh gossips (pure).

Each peer owns the records of the containers it attached: its *book* (owner, version, records). Only the owner
changes its book, and each change is a whole new book with a higher version: a deletion is a book without the
record, so there are no tombstones to keep or collect. The version is the owner's wall clock in nanoseconds, at
least one more than its last (`next_version`), so a restarted router continues above what it gave out before
without storing anything. Should its clock have gone back across the restart, peers would keep its old book: so
a book of our own that comes back newer than ours is never taken as ours; we answer it with our records at a
version above it (`Records.merge`), and that one wins everywhere.

Merge keeps, per owner, the book with the higher version, and at one version the one with the greater records
(`newer`): a total order, so merging is commutative, associative and idempotent, and every peer that has seen the
same books holds the same records. A removed owner (a retired or reclaimed peer: its IPAM space went to another)
is forgotten, and a book of it is refused until the router readmits it (it is reachable again), so a late
gossip cannot bring it back.

Names are DNS names in our domain, lowercase, without the trailing dot: labels of 1-63 of [a-z0-9_-], 253 bytes
in all. What a peer may send is bounded (MAX_RECORDS per book, MAX_BOOKS per message, versions at most a day
ahead of our clock). Books are not signed: a member of the mesh (it has the password) can speak for another; the
mesh's admission is what keeps strangers out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from weave_node.core.address import IPV4_LIMIT

MAX_RECORDS = 1024  # per book: a host's containers' names (Kubernetes allows 110 pods per node by default)
MAX_BOOKS = 4096  # per message: one per peer
MAX_NAME = 253
MAX_CONTAINER = 512  # bytes: IPAM's keys (a container id of up to 256 characters, "/", an interface name)
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
        if not 0 <= self.version < 1 << 63:
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


MAX_AHEAD_NS = 86_400 * 10**9
"""A book more than a day ahead of our clock is refused: no peer can pin a book (or ours) at a version no one can
pass (versions stay far below 2^63)."""


def newer(a: Book, b: Book | None) -> bool:
    """Whether `a` beats `b`: the higher version, and at one version the greater records (an owner whose clock went
    back can issue one version twice; every peer must pick the same of the two)."""
    return b is None or (a.version, a.records) > (b.version, b.records)


@dataclass
class Records:
    """The books a router knows (ours is `me`'s), and the owners it removed.

    `removed` holds until `readmit`: the router removes an owner when it leaves (retired, or its IPAM space
    reclaimed) and readmits it when it is reachable again, whose gossip then brings its book back whatever its
    version. A book of a removed owner is never taken, so a late gossip from a peer that was cut off cannot bring
    one back."""

    me: int
    books: dict[int, Book] = field(default_factory=dict)
    removed: set[int] = field(default_factory=set)
    _floor: int = 0  # the highest version of ours heard before we had a book of our own
    _index: tuple[dict[str, list[int]], dict[int, list[str]], set[str]] | None = field(
        default=None, repr=False, compare=False
    )

    def merge(self, books: Iterable[Book], now_ns: int) -> list[Book]:
        """Take what beats what we have (`newer`); returns what changed here (to pass on). A book of ours that we do
        not hold, at our version or above (sent before a restart), is answered with our records above it."""
        taken = []
        for book in books:
            if book.version > now_ns + MAX_AHEAD_NS or book.owner in self.removed:
                continue
            have = self.books.get(book.owner)
            if book.owner == self.me:
                if have is None:
                    self._floor = max(self._floor, book.version)  # our first set_own goes above it
                elif book != have and book.version >= have.version:
                    taken.append(self._own(Book(self.me, book.version + 1, have.records)))
                continue
            if newer(book, have):
                self.books[book.owner] = book
                self._index = None
                taken.append(book)
        return taken

    def set_own(self, records: Iterable[Record], now_ns: int) -> Book:
        """Our own records, as a new book (the only way our book changes)."""
        have = self.books.get(self.me)
        last = max(have.version if have else 0, self._floor)
        return self._own(Book.of(self.me, next_version(last, now_ns), records))

    def _own(self, book: Book) -> Book:
        self.books[self.me] = book
        self._index = None
        return book

    def remove_owner(self, owner: int) -> bool:
        """Forget a peer that left (its space went to another): its records stop resolving at once, and its books
        are refused until `readmit`. Whether we held one or not."""
        if owner == self.me:
            return False
        self.removed.add(owner)
        if self.books.pop(owner, None) is None:
            return False
        self._index = None
        return True

    def readmit(self, owner: int) -> None:
        """The owner is reachable again: its books are taken again (its next gossip brings them)."""
        self.removed.discard(owner)

    def lookup(self, name: str) -> list[int]:
        """Every address with this name, IPv4 first (the server rotates them), from every owner."""
        try:
            wanted = normal_name(name)
        except InvalidRecord:
            return []
        return list(self._indexes()[0].get(wanted, ()))

    def reverse(self, ip: int) -> list[str]:
        return list(self._indexes()[1].get(ip, ()))

    def below(self, name: str) -> bool:
        """Whether some name ends in ".<name>" (a parent of names exists, RFC 8020: NODATA, not NXDOMAIN)."""
        return name in self._indexes()[2]

    def _indexes(self) -> tuple[dict[str, list[int]], dict[int, list[str]], set[str]]:
        """name -> addresses, address -> names, and the parents of names: built once per change."""
        if self._index is None:
            by_name: dict[str, set[int]] = {}
            by_ip: dict[int, set[str]] = {}
            for b in self.books.values():
                for r in b.records:
                    by_name.setdefault(r.name, set()).add(r.ip)
                    by_ip.setdefault(r.ip, set()).add(r.name)
            parents = {n.split(".", i)[i] for n in by_name for i in range(1, n.count(".") + 1)}
            self._index = (
                {n: sorted(ips, key=lambda ip: (ip >= IPV4_LIMIT, ip)) for n, ips in by_name.items()},
                {ip: sorted(names) for ip, names in by_ip.items()},
                parents,
            )
        return self._index

    def snapshot(self) -> Mapping[int, Book]:
        return dict(self.books)
