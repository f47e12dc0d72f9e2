"""IPv4 addresses as ints and the allocation range (`IPALLOC_RANGE`, default 10.32.0.0/12). Pure."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from weave_node.core.errors import ConfigError

DEFAULT_RANGE = "10.32.0.0/12"


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
