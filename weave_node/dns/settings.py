"""The DNS server's settings and the host's upstream resolvers (pure: text in, values or ConfigError out).

WEAVE_NO_DNS=1            no server, no records (the CNI result then carries no `dns` either)
WEAVE_DNS_DOMAIN          the domain the router answers for (default weave.local)
WEAVE_DNS_TTL             seconds answers may be cached (default 5: pods come and go)
WEAVE_DNS_UPSTREAMS       resolvers for every other name ("10.0.0.2 [2001:db8::53]:5353"); default: the
                          nameservers of WEAVE_DNS_RESOLV_CONF (default /etc/resolv.conf), re-read on change
WEAVE_DNS_PORT            default 53
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from weave_node.core.errors import ConfigError
from weave_node.dns.records import InvalidRecord, normal_name

DEFAULT_DOMAIN = "weave.local"
DEFAULT_TTL = 5
MAX_TTL = 86_400
DEFAULT_CLIENT_RATE = 1000
MAX_UPSTREAMS = 3  # as glibc (MAXNS): the first ones answer, later ones only when those fail


@dataclass(frozen=True)
class DnsSettings:
    enabled: bool = True
    domain: str = DEFAULT_DOMAIN  # normal form: lowercase, no trailing dot
    ttl: int = DEFAULT_TTL
    port: int = 53
    upstreams: tuple[tuple[str, int], ...] = ()  # given ones; () = the resolv.conf's
    resolv_conf: str = "/etc/resolv.conf"
    client_rate: int = DEFAULT_CLIENT_RATE  # 0: no limit (dns/limit.py)


def parse_upstream(text: str) -> tuple[str, int]:
    """ "10.0.0.2", "10.0.0.2:5353", "2001:db8::53" or "[2001:db8::53]:5353" -> (address, port)."""
    host, port = text.strip(), 53
    if host.startswith("["):
        inner, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"upstream resolver {text!r}: expected [address]:port")
        host, port = inner, _port(rest[1:], text) if rest else 53
    elif host.count(":") == 1:
        host, raw = host.split(":")
        port = _port(raw, text)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"upstream resolver {text!r} is not an IP address (with an optional port)") from None
    return str(addr), port


def _port(raw: str, text: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"upstream resolver {text!r}: the port must be 1-65535")
    return int(raw)


def nameservers(resolv_conf: str, exclude: Iterable[str] = ()) -> list[tuple[str, int]]:
    """The `nameserver` lines of a resolv.conf, as glibc reads them (the first MAX_UPSTREAMS; a scoped IPv6
    address keeps no scope, so it is skipped), without `exclude` (our own address: forwarding to ourselves loops)."""
    skip = set(exclude)
    found: list[tuple[str, int]] = []
    for line in resolv_conf.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "nameserver" or "%" in words[1]:
            continue
        try:
            addr = str(ipaddress.ip_address(words[1]))
        except ValueError:
            continue
        if addr not in skip and (addr, 53) not in found:
            found.append((addr, 53))
    return found[:MAX_UPSTREAMS]


def from_pick(pick: Callable[[str, str], object], off: Callable[[object], bool]) -> DnsSettings:
    """The settings from flags/environment (`pick(flag, VAR)`); `off(value)` reads a WEAVE_NO_* switch."""
    enabled = off(pick("no_dns", "WEAVE_NO_DNS"))
    raw_domain = str(pick("dns_domain", "WEAVE_DNS_DOMAIN") or DEFAULT_DOMAIN)
    try:
        domain = normal_name(raw_domain)
    except InvalidRecord as exc:
        raise ConfigError(f"WEAVE_DNS_DOMAIN: {exc}") from None
    if domain.endswith(("in-addr.arpa", "ip6.arpa")) or domain == "arpa":
        raise ConfigError(f"WEAVE_DNS_DOMAIN {raw_domain!r} is a reverse-lookup domain")
    raw_ttl = str(pick("dns_ttl", "WEAVE_DNS_TTL") or DEFAULT_TTL)
    if not raw_ttl.isdigit() or not 0 <= int(raw_ttl) <= MAX_TTL:
        raise ConfigError(f"WEAVE_DNS_TTL must be 0-{MAX_TTL} seconds, not {raw_ttl!r}")
    raw_port = str(pick("dns_port", "WEAVE_DNS_PORT") or 53)
    if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
        raise ConfigError(f"WEAVE_DNS_PORT must be 1-65535, not {raw_port!r}")
    raw_up = pick("dns_upstreams", "WEAVE_DNS_UPSTREAMS") or ""
    words = raw_up if isinstance(raw_up, list) else str(raw_up).replace(",", " ").split()
    upstreams = tuple(parse_upstream(str(w)) for w in words)
    if len(upstreams) > MAX_UPSTREAMS:
        raise ConfigError(f"WEAVE_DNS_UPSTREAMS: at most {MAX_UPSTREAMS} resolvers")
    resolv = str(pick("dns_resolv_conf", "WEAVE_DNS_RESOLV_CONF") or "/etc/resolv.conf")
    raw_rate = str(pick("dns_client_rate", "WEAVE_DNS_CLIENT_RATE") or DEFAULT_CLIENT_RATE)
    if not raw_rate.isdigit():
        raise ConfigError(f"WEAVE_DNS_CLIENT_RATE must be a whole number of queries per second, not {raw_rate!r}")
    return DnsSettings(enabled, domain, int(raw_ttl), int(raw_port), upstreams, resolv, int(raw_rate))
