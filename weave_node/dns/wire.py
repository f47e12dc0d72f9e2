"""The DNS records' gossip format (pure). Decoding validates everything and raises only DecodeError (a
ProtocolError: the mesh drops that one message and counts it).

    b"D" version u8 | count u16 | count x book
    book:   owner u64, version u64, n u16, n x record (sorted, unique)
    record: name (u8 length + ASCII, normal form), family u8 (4 or 6) + address (4 or 16 bytes),
            container (u8 length + UTF-8, printable)
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


class DecodeError(ProtocolError):
    """A DNS gossip message we do not take (malformed, over a limit, or holding a record we would not keep)."""


def encode(books: Iterable[Book]) -> bytes:
    books = sorted(books, key=lambda b: b.owner)[:MAX_BOOKS]
    out = [_HEAD.pack(MAGIC, VERSION, len(books))]
    for book in books:
        out.append(_BOOK.pack(book.owner, book.version, len(book.records)))
        for r in book.records:
            name, container = r.name.encode(), r.container.encode()
            ip = r.ip.to_bytes(16, "big") if r.ip >= IPV4_LIMIT else r.ip.to_bytes(4, "big")
            out += [
                bytes([len(name)]),
                name,
                bytes([6 if len(ip) == 16 else 4]),
                ip,
                bytes([len(container)]),
                container,
            ]
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
        if n > MAX_RECORDS or n * 8 > len(data) - r.pos:  # a record is at least 8 bytes
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
        container = r.raw(r.raw(1)[0]).decode()
    except UnicodeDecodeError:
        raise DecodeError("DNS gossip: text that is not UTF-8") from None
    return Record(name, ip, container)
