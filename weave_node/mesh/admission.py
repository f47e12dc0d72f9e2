"""Which inbound connections may start a handshake (pure): what keeps idle or hostile TCP connections from taking
the slots real peers need.

An inbound connection is *unauthenticated* until its handshake completes (hello, and with a password the proof).
Those connections have limits of their own, apart from CONN_LIMIT (which counts established connections only):

- at most `per_source` at a time from one source (an IPv4 address, or an IPv6 /64);
- at most `total` at a time from everywhere. When they are all taken, a newcomer takes the place of the oldest
  connection of the source that holds the most, provided that source holds more than the newcomer's does: a
  source with few addresses cannot keep a peer from another address out, however many connections it opens.

Every unauthenticated connection also has a deadline (the protocol's handshake timeout, 10 s by default).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

MAX_HANDSHAKES = 64
MAX_HANDSHAKES_PER_SOURCE = 8


@dataclass(frozen=True)
class Limits:
    total: int = MAX_HANDSHAKES
    per_source: int = MAX_HANDSHAKES_PER_SOURCE

    def __post_init__(self) -> None:
        if not 1 <= self.per_source <= self.total:
            raise ValueError(f"need 1 <= per_source ({self.per_source}) <= total ({self.total})")


@dataclass(frozen=True)
class Pending:
    """An inbound connection still in its handshake."""

    source: str
    since: float


@dataclass(frozen=True)
class Verdict(Generic[K]):
    admit: bool
    evict: K | None = None  # the pending connection to close to make room (admit only)
    code: str = ""  # why not, for counters: "per_source" or "total" (refused only)
    reason: str = ""  # why not, for the log


def source_of(host: str) -> str:
    """The unit a per-source limit counts: the IPv4 address, or the IPv6 /64 (an IPv4-mapped address is IPv4).
    Anything that is not an address (a unix socket, a test's fake) counts as itself."""
    try:
        addr = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def admit(pending: Mapping[K, Pending], source: str, limits: Limits) -> Verdict[K]:
    """May a new inbound connection from `source` start its handshake, given those in theirs (`pending`)?"""
    counts = Counter(p.source for p in pending.values())
    mine = counts[source]
    if mine >= limits.per_source:
        return Verdict(False, code="per_source", reason=f"{mine} handshakes from this address already")
    if len(pending) < limits.total:
        return Verdict(True)
    top = max(counts.values())
    if top <= mine:
        return Verdict(False, code="total", reason=f"{len(pending)} handshakes in progress already")
    # The oldest connection among those of the sources holding the most.
    oldest = min((p.since, i) for i, p in enumerate(pending.values()) if counts[p.source] == top)[1]
    return Verdict(True, evict=list(pending)[oldest])
