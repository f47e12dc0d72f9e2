"""The DNS records' gossip format (pure). Decoding validates everything and raises only DecodeError (a
ProtocolError: the mesh drops that one message and counts it).

    b"D" version u8 | count u16 | count x book
    book:   owner u64, version u64, n u16, n x record (sorted, unique)
    record: name (u8 length + ASCII, normal form), family u8 (4 or 6) + address (4 or 16 bytes),
            container (u16 length + UTF-8, printable)

The whole state goes in several messages when it is large (`encode_chunks`: whole books, at most BUDGET bytes
each unless one book alone is larger; a book is at most ~800 KB, well under the mesh's frame limit).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from weave_node.core.address import IPV4_LIMIT
from weave_node.dns.records import MAX_BOOKS, MAX_RECORDS, Book, InvalidRecord, Record
from weave_node.mesh.errors import ProtocolError

MAGIC = b"D"
VERSION = 1
_HEAD = struct.Struct(">cBH")
_BOOK = struct.Struct(">QQH")
_LEN16 = struct.Struct(">H")


class DecodeError(ProtocolError):
    """A DNS gossip message we do not take (malformed, over a limit, or holding a record we would not keep)."""


BUDGET = 1 << 20
_MIN_RECORD = 1 + 1 + 1 + 4 + 2


def encode(books: Iterable[Book]) -> bytes:
    """One message with these books (at most MAX_BOOKS: more is the caller's error)."""
    parts = [_book(b) for b in sorted(books, key=lambda b: b.owner)]
    if len(parts) > MAX_BOOKS:
        raise ValueError(f"at most {MAX_BOOKS} books in one message")
    return _HEAD.pack(MAGIC, VERSION, len(parts)) + b"".join(parts)


def encode_chunks(books: Iterable[Book], budget: int = BUDGET) -> list[bytes]:
    """The books in as few messages as fit `budget` bytes each (whole books; a larger book alone)."""
    out: list[bytes] = []
    group: list[bytes] = []
    size = _HEAD.size
    for book in sorted(books, key=lambda b: b.owner):
        part = _book(book)
        if group and (size + len(part) > budget or len(group) == MAX_BOOKS):
            out.append(_HEAD.pack(MAGIC, VERSION, len(group)) + b"".join(group))
            group, size = [], _HEAD.size
        group.append(part)
        size += len(part)
    if group:
        out.append(_HEAD.pack(MAGIC, VERSION, len(group)) + b"".join(group))
    return out


def _book(book: Book) -> bytes:
    out = [_BOOK.pack(book.owner, book.version, len(book.records))]
    for r in book.records:
        name, container = r.name.encode(), r.container.encode()
        ip = r.ip.to_bytes(16, "big") if r.ip >= IPV4_LIMIT else r.ip.to_bytes(4, "big")
        family = bytes([6 if len(ip) == 16 else 4])
        out += [bytes([len(name)]), name, family, ip, _LEN16.pack(len(container)), container]
    return b"".join(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def raw(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise DecodeError("DNS gossip truncated")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def take(self, s: struct.Struct) -> tuple[int, ...]:
        return tuple(s.unpack(self.raw(s.size)))


def decode(data: bytes) -> list[Book]:
    r = _Reader(data)
    magic, version, count = r.take(_HEAD)
    if magic != MAGIC or version != VERSION:  # type: ignore[comparison-overlap]
        raise DecodeError("not a DNS gossip message of a version we speak")
    if count > MAX_BOOKS or count * _BOOK.size > len(data) - r.pos:
        raise DecodeError("bad book count in DNS gossip")
    books: dict[int, Book] = {}
    for _ in range(count):
        owner, version_, n = r.take(_BOOK)
        if n > MAX_RECORDS or n * _MIN_RECORD > len(data) - r.pos:
            raise DecodeError("bad record count in DNS gossip")
        records = tuple(_record(r) for _ in range(n))
        try:
            book = Book(owner, version_, records)
            book.check()
        except InvalidRecord as exc:
            raise DecodeError(f"DNS gossip: {exc}") from None
        if owner in books:
            raise DecodeError("DNS gossip holds one owner twice")
        books[owner] = book
    if r.pos != len(data):
        raise DecodeError("trailing bytes in DNS gossip")
    return list(books.values())


def _record(r: _Reader) -> Record:
    try:
        name = r.raw(r.raw(1)[0]).decode("ascii")
        family = r.raw(1)[0]
        if family not in (4, 6):
            raise DecodeError("bad address family in DNS gossip")
        ip = int.from_bytes(r.raw(4 if family == 4 else 16), "big")
        if (family == 6) != (ip >= IPV4_LIMIT):
            raise DecodeError("an address of the other family in DNS gossip")
        container = r.raw(r.take(_LEN16)[0]).decode()
    except UnicodeDecodeError:
        raise DecodeError("DNS gossip: text that is not UTF-8") from None
    return Record(name, ip, container)
