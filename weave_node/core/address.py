"""Addresses every layer shares (pure): IPv4 addresses as ints, the allocation range (`IPALLOC_RANGE`, default
10.32.0.0/12), and a peer's underlay address as given on the command line (`weave launch PEER...`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from weave_node.core.errors import ConfigError
from weave_node.core.facts import DEFAULT_MESH_PORT


@dataclass(frozen=True)
class Range:
    """[start, end) of IPv4 addresses as ints, from a CIDR; `prefix` is its length."""

    start: int
    prefix: int

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def size(self) -> int:
        return 1 << (32 - self.prefix)

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, int) and self.start <= ip < self.end

    def usable(self, ip: int) -> bool:
        """In the range and not its network or broadcast address (pods never get those)."""
        return self.start < ip < self.end - 1 if self.size > 2 else ip in self

    def __str__(self) -> str:
        return f"{ip_str(self.start)}/{self.prefix}"


def parse_range(text: str) -> Range:
    try:
        net = ipaddress.IPv4Network(text.strip(), strict=True)
    except ValueError as exc:
        raise ConfigError(f"IPALLOC_RANGE {text!r} is not an IPv4 CIDR with its host bits zero: {exc}") from None
    if net.prefixlen > 30:
        raise ConfigError(f"IPALLOC_RANGE {text} is too small: use a /30 or larger")
    return Range(int(net.network_address), net.prefixlen)


def ip_str(ip: int) -> str:
    return str(ipaddress.IPv4Address(ip))


def parse_ip(text: str) -> int:
    try:
        return int(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise ConfigError(f"{text!r} is not an IPv4 address") from None


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
