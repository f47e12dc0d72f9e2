"""What the routers' DNS server says to a query (pure): its wire bytes in; out the answer's wire bytes, or the
verdict to forward it upstream as it is, or to drop it.

Ours: names in the domain (A, AAAA, ANY; NXDOMAIN for a name no one holds, NODATA with our SOA for other types),
and reverse names of the pod ranges (PTR). Everything else is forwarded. dnspython parses and writes the wire
(compression loops, truncated and oversized packets are its errors, answered FORMERR when the header is whole);
only the FORMERR/SERVFAIL of a query it cannot parse is built here, from the 12-byte header. Responses (QR set)
are never answered: two servers cannot ping-pong errors.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from weave_node.core.address import IPV4_LIMIT, ip_str

UDP_SIZE = 512  # without EDNS (RFC 1035)
EDNS_SIZE = 1232  # what we offer and cap answers at over UDP (the DNS flag day 2020 figure: no fragments)
TCP_SIZE = 65535
_HEADER = struct.Struct(">HHHHHH")
_REVERSE = (dns.name.from_text("in-addr.arpa."), dns.name.from_text("ip6.arpa."))


@dataclass(frozen=True)
class Zone:
    domain: dns.name.Name  # absolute
    ttl: int
    lookup: Callable[[str], list[int]]  # a name (relative, normal form) -> its addresses, IPv4 first
    reverse: Callable[[int], list[str]]  # an address -> the names that hold it
    ours: Callable[[int], bool]  # whether an address is in our pod ranges (its reverse names are ours)
    below: Callable[[str], bool] = lambda _name: False  # whether some name ends in ".<name>" (RFC 8020)

    @classmethod
    def of(cls, domain: str, ttl: int, lookup: Callable[[str], list[int]], reverse: Callable[[int], list[str]],
           ours: Callable[[int], bool], *, below: Callable[[str], bool] = lambda _n: False) -> Zone:  # fmt: skip
        return cls(dns.name.from_text(domain + "."), ttl, lookup, reverse, ours, below)


@dataclass(frozen=True)
class Reply:
    wire: bytes
    kind: str  # answered | nxdomain | nodata | refused | error | truncated
    turns: int = 1  # how many different answers round-robin gives (the server caches each)


FORWARD = "forward"  # the verdict for a name that is not ours


def respond(wire: bytes, zone: Zone, *, tcp: bool = False, turn: int = 0) -> Reply | str | None:
    """Our reply, FORWARD, or None (drop: not a query, or not even a header). `turn` rotates the addresses of a
    name with several (round-robin: the server passes a counter)."""
    query = _parse(wire)
    if not isinstance(query, dns.message.Message):
        return query
    if query.opcode() != dns.opcode.QUERY:
        return _finish(_response(query, dns.rcode.NOTIMP), query, tcp, "error")
    if len(query.question) != 1:
        return _finish(_response(query, dns.rcode.FORMERR), query, tcp, "error")
    q = query.question[0]
    if q.name.is_subdomain(zone.domain):
        return _names(query, zone, tcp, turn) if q.rdclass == dns.rdataclass.IN else _refused(query, tcp)
    if any(q.name.is_subdomain(r) for r in _REVERSE):
        return _reverse(query, zone, tcp)
    return FORWARD


def _parse(wire: bytes) -> dns.message.Message | Reply | None:
    if len(wire) < _HEADER.size or struct.unpack_from(">H", wire, 2)[0] & dns.flags.QR:
        return None  # not even a header, or a response: never answered
    try:
        return dns.message.from_wire(wire, one_rr_per_rrset=True)
    except (dns.exception.DNSException, ValueError, UnicodeError, IndexError):
        return Reply(error_reply(wire, dns.rcode.FORMERR), "error")


def _response(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = dns.message.make_response(query, our_payload=EDNS_SIZE)
    response.flags |= dns.flags.RA  # others' names are forwarded: recursion is available
    response.set_rcode(rcode)
    return response


def _soa(zone: Zone) -> dns.rrset.RRset:
    return dns.rrset.from_text(
        zone.domain, zone.ttl, "IN", "SOA",
        f"ns.{zone.domain} hostmaster.{zone.domain} 1 3600 600 86400 {zone.ttl}",
    )  # fmt: skip


def _names(query: dns.message.Message, zone: Zone, tcp: bool, turn: int) -> Reply:
    q = query.question[0]
    response = _response(query, dns.rcode.NOERROR)
    response.flags |= dns.flags.AA
    relative = q.name.relativize(zone.domain)
    text = relative.to_text(omit_final_dot=True).lower()
    ips = zone.lookup(text) if relative != dns.name.empty else []
    if not ips and relative != dns.name.empty and not zone.below(text):  # (a parent of names is NODATA)
        return _negative(response, query, zone, tcp, dns.rcode.NXDOMAIN)
    v4 = [ip for ip in ips if ip < IPV4_LIMIT]
    v6 = [ip for ip in ips if ip >= IPV4_LIMIT]
    rdtype = q.rdtype
    parts = []
    if rdtype in (dns.rdatatype.A, dns.rdatatype.ANY) and v4:
        parts.append(("A", v4))
    if rdtype in (dns.rdatatype.AAAA, dns.rdatatype.ANY) and v6:
        parts.append(("AAAA", v6))
    if not parts:
        return _negative(response, query, zone, tcp, dns.rcode.NOERROR)
    for kind, addrs in parts:
        rotated = [ip_str(a) for a in _rotate(addrs, turn)]
        response.answer.append(dns.rrset.from_text_list(q.name, zone.ttl, "IN", kind, rotated))
    reply = _finish(response, query, tcp, "answered")
    return Reply(reply.wire, reply.kind, math.lcm(*(len(addrs) for _, addrs in parts)))


def _reverse(query: dns.message.Message, zone: Zone, tcp: bool) -> Reply | str:
    q = query.question[0]
    try:
        addr = ipaddress.ip_address(dns.reversename.to_address(q.name))
    except (dns.exception.DNSException, ValueError):
        return FORWARD  # a partial reverse name (a delegation question): not one we hold
    ip = int(addr)
    if (addr.version == 6 and ip < IPV4_LIMIT) or not zone.ours(ip):
        return FORWARD  # only the pod ranges' reverse names are ours (not an address someone named by hand)
    response = _response(query, dns.rcode.NOERROR)
    response.flags |= dns.flags.AA
    names = zone.reverse(ip)
    if not names:
        return _negative(response, query, zone, tcp, dns.rcode.NXDOMAIN)
    if q.rdtype not in (dns.rdatatype.PTR, dns.rdatatype.ANY):
        return _negative(response, query, zone, tcp, dns.rcode.NOERROR)
    targets = []
    for name in names:
        with contextlib.suppress(dns.exception.DNSException):  # (a name too long under our domain: not one)
            targets.append(dns.name.from_text(name, zone.domain).to_text())
    if not targets:
        return _negative(response, query, zone, tcp, dns.rcode.NOERROR)
    response.answer.append(dns.rrset.from_text_list(q.name, zone.ttl, "IN", "PTR", targets))
    return _finish(response, query, tcp, "answered")


def _negative(
    response: dns.message.Message, query: dns.message.Message, zone: Zone, tcp: bool, rcode: dns.rcode.Rcode
) -> Reply:
    """NXDOMAIN (no such name), or NODATA (NOERROR, no records of that type): with our SOA, whose minimum is how
    long resolvers may keep the negative answer."""
    response.set_rcode(rcode)
    response.authority.append(_soa(zone))
    return _finish(response, query, tcp, "nxdomain" if rcode == dns.rcode.NXDOMAIN else "nodata")


def _refused(query: dns.message.Message, tcp: bool) -> Reply:
    return _finish(_response(query, dns.rcode.REFUSED), query, tcp, "refused")


def _rotate(items: list[int], turn: int) -> list[int]:
    k = turn % len(items)
    return items[k:] + items[:k]


def _finish(response: dns.message.Message, query: dns.message.Message, tcp: bool, kind: str) -> Reply:
    """The response's wire, within what the client takes (512 bytes, its EDNS size up to ours, 64 KiB over TCP):
    a UDP answer too big goes without its records and with TC set (the client asks again over TCP)."""
    limit = TCP_SIZE if tcp else max(UDP_SIZE, min(query.payload, EDNS_SIZE)) if query.edns >= 0 else UDP_SIZE
    try:
        return Reply(response.to_wire(max_size=limit, want_shuffle=False), kind)
    except dns.exception.TooBig:
        response.answer.clear()
        response.authority.clear()
        response.flags |= dns.flags.TC
        return Reply(response.to_wire(max_size=limit), "truncated")


def servfail(query: bytes) -> bytes:
    """SERVFAIL for a query we meant to forward (no upstream answered): with its question, as resolvers match."""
    try:
        parsed = dns.message.from_wire(query)
        return _finish(_response(parsed, dns.rcode.SERVFAIL), parsed, False, "error").wire
    except dns.exception.DNSException:
        return error_reply(query, dns.rcode.SERVFAIL)


def error_reply(query: bytes, rcode: int) -> bytes:
    """A header-only reply (no question) to a query we could not parse, or could not get an answer for."""
    ident, flags = struct.unpack_from(">HH", query)
    opcode_rd = flags & 0x7900  # the opcode and RD, as the query had them
    return _HEADER.pack(ident, dns.flags.QR | dns.flags.RA | opcode_rd | (rcode & 0xF), 0, 0, 0, 0)
