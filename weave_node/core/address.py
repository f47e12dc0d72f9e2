"""Addresses every layer shares (pure): addresses as ints, the allocation range (`IPALLOC_RANGE`, default
10.32.0.0/12), and a peer's underlay address as given on the command line (`weave launch PEER...`).

An address is an int of either family, and the int says which: IPv4 addresses are below 2^32, and an IPv6 range
must lie above ::1:0:0 (parse_range refuses ::/96, the deprecated IPv4-compatible space, and below), so every
IPv6 address we hand out is at least 2^32. `ip_str` and `Range` need no family argument."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from weave_node.core.errors import ConfigError
from weave_node.core.facts import DEFAULT_MESH_PORT

IPV4_LIMIT = 1 << 32  # every IPv4 address is below it, every IPv6 address we use at or above it
IPV6_PREFIXES = (64, 120)  # the largest and the smallest IPv6 range (see parse_range)


@dataclass(frozen=True)
class Range:
    """[start, end) of addresses as ints, from a CIDR; `prefix` is its length. Its family is its start's."""

    start: int
    prefix: int

    @property
    def bits(self) -> int:
        return 128 if self.start >= IPV4_LIMIT else 32

    @property
    def ipv6(self) -> bool:
        return self.start >= IPV4_LIMIT

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def size(self) -> int:
        return 1 << (self.bits - self.prefix)

    @property
    def usable_end(self) -> int:
        """The end of the addresses pods can get, which start at start + 1: IPv4's broadcast address is not one."""
        return self.end if self.ipv6 else self.end - 1

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, int) and self.start <= ip < self.end

    def usable(self, ip: int) -> bool:
        """In the range, and not its network address (IPv6's subnet-router anycast) nor, in IPv4, its broadcast
        address: pods never get those."""
        if self.ipv6:
            return self.start < ip < self.end
        return self.start < ip < self.end - 1 if self.size > 2 else ip in self

    def __str__(self) -> str:
        return f"{ip_str(self.start)}/{self.prefix}"


def parse_range(text: str, ipv6: bool = False) -> Range:
    """An allocation range. IPv6 only where the caller carries it (`ipv6`): from a /64 (the largest: one on-link
    subnet, as pods see it, and every count of addresses fits in 64 bits) to a /120 (256 addresses), above ::/96."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        kind = "an IPv4 or IPv6" if ipv6 else "an IPv4"
        raise ConfigError(f"IPALLOC_RANGE {text!r} is not {kind} CIDR with its host bits zero: {exc}") from None
    if net.version == 6:
        if not ipv6:
            raise ConfigError(f"IPALLOC_RANGE {text}: IPv6 ranges are not supported here yet; use an IPv4 range")
        low, high = IPV6_PREFIXES
        if not low <= net.prefixlen <= high:
            raise ConfigError(f"IPALLOC_RANGE {text}: an IPv6 range must be a /{low} to a /{high}")
        if int(net.network_address) < IPV4_LIMIT:
            raise ConfigError(f"IPALLOC_RANGE {text} lies in ::/96 (IPv4-compatible, deprecated): use another")
        mapped = net.network_address.ipv4_mapped is not None
        special = [("multicast", net.is_multicast), ("link-local", net.is_link_local), ("loopback", net.is_loopback)]
        for what, yes in [*special, ("IPv4-mapped", mapped)]:
            if yes:
                raise ConfigError(f"IPALLOC_RANGE {text} is {what}: use a unique local (fd00::/8) or global range")
        return Range(int(net.network_address), net.prefixlen)
    if net.prefixlen > 30:
        raise ConfigError(f"IPALLOC_RANGE {text} is too small: use a /30 or larger")
    return Range(int(net.network_address), net.prefixlen)


def parse_ranges(text: str, ipv6: bool = True) -> tuple[Range, ...]:
    """One range, or one of each family separated by a comma (dual-stack): IPv4 first whatever the order given."""
    parts = [p for p in text.replace(" ", ",").split(",") if p.strip()]
    if not parts:
        raise ConfigError("IPALLOC_RANGE is empty")
    ranges = sorted((parse_range(p, ipv6=ipv6) for p in parts), key=lambda r: r.bits)
    if len(ranges) > 2 or len({r.bits for r in ranges}) != len(ranges):
        raise ConfigError(f"IPALLOC_RANGE {text!r}: at most one range of each family (IPv4, IPv6)")
    return tuple(ranges)


def ip_str(ip: int) -> str:
    return str(ipaddress.IPv6Address(ip) if ip >= IPV4_LIMIT else ipaddress.IPv4Address(ip))


def parse_ip(text: str) -> int:
    try:
        return int(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise ConfigError(f"{text!r} is not an IPv4 address") from None


def parse_ip6(text: str) -> int:
    """An IPv6 address of ours (at or above ::1:0:0, see the module's note)."""
    try:
        ip = int(ipaddress.IPv6Address(text.strip()))
    except ValueError:
        raise ConfigError(f"{text!r} is not an IPv6 address") from None
    if ip < IPV4_LIMIT:
        raise ConfigError(f"{text!r} lies in ::/96 (IPv4-compatible, deprecated)")
    return ip


def span_str(start: int, end: int) -> str:
    """[start, end) as Weave prints ranges: 10.32.0.0-10.39.255.255."""
    return f"{ip_str(start)}-{ip_str(end - 1)}"


@dataclass(frozen=True)
class PeerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_peer(text: str, default_port: int = DEFAULT_MESH_PORT) -> PeerAddress:
    """`weave launch PEER...` semantics: an IP or host name, with or without a port ("[v6]:port" for IPv6)."""
    text = text.strip()
    if not text:
        raise ConfigError("empty peer address")
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"bad peer address {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"bad peer address {text!r}")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    port = default_port
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise ConfigError(f"bad port in peer address {text!r}")
        port = int(port_text)
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"bad peer address {text!r}")
    return PeerAddress(host, port)


def parse_peers(text: str) -> tuple[PeerAddress, ...]:
    """WEAVE_PEERS: peers separated by spaces or commas."""
    return tuple(parse_peer(p) for p in text.replace(",", " ").split())


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    addr = parse_peer(text, default_port=-1)
    if addr.port < 0:
        raise ConfigError(f"{what} needs host:port, not {text!r}")
    return addr.host, addr.port
