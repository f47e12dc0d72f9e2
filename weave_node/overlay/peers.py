"""What each router tells the others about its end of the overlay, gossiped on the "overlay" channel (pure).

A `PeerInfo` is owned by the peer it describes (only that peer bumps its version), so the table is a
last-writer-wins map per peer: merge keeps the higher version, is commutative and idempotent. The underlay
address is the peer's own view (the local address of its mesh connections); a direct connection's address
wins over it where we have one. `merge` is what the shell does with gossip: filter, merge, re-assert our own.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from weave_node.core.address import Range
from weave_node.datapath.model import bridge_mac as model_bridge_mac
from weave_node.mesh.errors import ProtocolError

_HEAD = struct.Struct(">BH")  # format version, count
_ENTRY = struct.Struct(">QQ4sB6sB")  # name, version, bridge ip, prefix, bridge mac, underlay address length
_ENTRY2 = struct.Struct(">QQ16sB6sB")  # format 2: the bridge address is 16 bytes (IPv4 as ::ffff:a.b.c.d)
FORMAT = 1  # what every router reads; sent while no bridge address is IPv6's (so older routers keep reading it)
FORMAT2 = 2  # a bridge address of IPv6 (an IPv6 range alone): only routers that can carry one have one
MAX_ENTRIES = 4096
MAX_VERSION = 2**63  # versions are wall-clock ns: far below; the headroom lets an owner always go one higher


class DecodeError(ProtocolError):
    """A garbled or hostile overlay message; the router drops it."""


@dataclass(frozen=True)
class PeerInfo:
    name: int
    version: int  # wall-clock nanoseconds when the owner last changed it: survives the owner's restart
    bridge_ip: str  # "" while the owner's IPAM has not given it one
    prefix: int
    bridge_mac: str
    underlay: str  # "" when the owner has no mesh connection yet


def encode(infos: Iterable[PeerInfo]) -> bytes:
    items = list(infos)
    wide = any(":" in i.bridge_ip for i in items)
    out = [_HEAD.pack(FORMAT2 if wide else FORMAT, len(items))]
    for i in items:
        ip = _packed(i.bridge_ip, wide)
        mac = bytes.fromhex(i.bridge_mac.replace(":", "")) if i.bridge_mac else bytes(6)
        under = ipaddress.ip_address(i.underlay).packed if i.underlay else b""
        out.append((_ENTRY2 if wide else _ENTRY).pack(i.name, i.version, ip, i.prefix, mac, len(under)) + under)
    return b"".join(out)


def _packed(bridge_ip: str, wide: bool) -> bytes:
    if not bridge_ip:
        return bytes(16 if wide else 4)
    addr = ipaddress.ip_address(bridge_ip)
    if wide and isinstance(addr, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{addr}").packed
    return addr.packed


def _unpacked(raw: bytes) -> tuple[str, int]:
    """(bridge address or "", its prefix limit); IPv4-mapped is IPv4."""
    if raw == bytes(len(raw)):
        return "", 8 * len(raw)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw)), 32
    addr = ipaddress.IPv6Address(raw)
    if addr.ipv4_mapped is not None:  # (::ffff:0.0.0.0 is no address, as IPv4's 0.0.0.0 is none)
        return (str(addr.ipv4_mapped) if int(addr.ipv4_mapped) else ""), 32
    return str(addr), 128


def decode(data: bytes) -> list[PeerInfo]:
    """Raises DecodeError (and only that) on anything malformed."""
    if len(data) < _HEAD.size:
        raise DecodeError("overlay message too short")
    fmt, count = _HEAD.unpack_from(data)
    if fmt not in (FORMAT, FORMAT2):
        raise DecodeError(f"overlay message format {fmt} unknown")
    entry = _ENTRY2 if fmt == FORMAT2 else _ENTRY
    if count > MAX_ENTRIES:
        raise DecodeError(f"overlay message with {count} entries")
    pos, infos = _HEAD.size, []
    for _ in range(count):
        if pos + entry.size > len(data):
            raise DecodeError("overlay message truncated")
        name, version, ip, prefix, mac, ulen = entry.unpack_from(data, pos)
        pos += entry.size
        bridge_ip, max_prefix = _unpacked(ip)
        if ulen not in (0, 4, 16) or pos + ulen > len(data) or prefix > max_prefix or name >> 48:
            raise DecodeError("overlay entry malformed")
        if version >= MAX_VERSION:
            raise DecodeError("overlay entry malformed")
        under = vtep_address(data[pos : pos + ulen]) if ulen else ""
        pos += ulen
        bridge_mac = ":".join(f"{b:02x}" for b in mac) if mac != bytes(6) else ""
        if bridge_mac and bridge_mac != model_bridge_mac(name):
            raise DecodeError("overlay entry with a bridge MAC that is not derived from its peer name")
        infos.append(PeerInfo(name, version, bridge_ip, prefix, bridge_mac, under))
    if pos != len(data):
        raise DecodeError("trailing bytes in overlay message")
    return infos


class PeerTable:
    """The last-writer-wins map of every peer's PeerInfo."""

    def __init__(self) -> None:
        self.infos: dict[int, PeerInfo] = {}

    def merge(self, infos: Iterable[PeerInfo]) -> list[PeerInfo]:
        """Keep the newer version of each; return the entries that were news to us."""
        news = []
        for info in infos:
            old = self.infos.get(info.name)
            if old is None or (info.version, _key(info)) > (old.version, _key(old)):
                self.infos[info.name] = info
                news.append(info)
        return news

    def forget(self, keep: Iterable[int]) -> None:
        wanted = set(keep)
        for name in [n for n in self.infos if n not in wanted]:
            del self.infos[name]


def _key(info: PeerInfo) -> tuple[str, int, str, str]:
    # A tie-break for equal versions (never produced by one honest owner) so merge stays order-independent.
    return (info.bridge_ip, info.prefix, info.bridge_mac, info.underlay)


def vtep_address(raw: bytes | str) -> str:
    """A usable VTEP address (IPv4, or IPv6 of an IPv6 underlay), or "" (special addresses: loopback, multicast,
    link-local, ...). IPv4-mapped IPv6 addresses (a dual-stack listener's view of an IPv4 peer) become IPv4."""
    try:
        addr = ipaddress.ip_address(raw)
    except ValueError:
        return ""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback or addr.is_multicast or addr.is_unspecified or addr.is_link_local or addr == _BROADCAST:
        return ""
    if isinstance(addr, ipaddress.IPv6Address) and (addr.is_site_local or addr.is_reserved or addr.scope_id):
        return ""
    return str(addr)


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def choose_underlay(local: Sequence[str], current: str) -> str:
    """Our underlay address (what we gossip; its family is our VXLAN device's) from the local addresses of our
    mesh connections, one per connection. Sticky: the current one while a connection still uses it, else the
    most common of its family, else the most common (IPv4 first on a tie): a connection coming or going never
    flips the family back and forth (each flip makes the VXLAN device anew)."""
    if not local or current in local:
        return current
    family = [a for a in local if current and (":" in a) == (":" in current)]
    pool = family or list(local)
    return min(set(pool), key=lambda a: (-pool.count(a), ":" in a, a))


def underlay_of(name: int, infos: Mapping[int, PeerInfo], direct: Mapping[int, str], ipv6: bool | None = None) -> str:
    """Where a peer's VTEP is: the address of our direct connection to it, else what it says about itself.
    `ipv6`: our VXLAN device's family: an address of it comes first (a dual-stack peer we reach over one family
    may say it is at the other)."""
    info = infos.get(name)
    found = [a for a in (direct.get(name, ""), info.underlay if info else "") if a]
    same = [a for a in found if ipv6 is None or (":" in a) == ipv6]
    return (same or found or [""])[0]


def in_range(address: str, pod_range: Range) -> bool:
    """Whether an address, or a CIDR's address ("10.32.0.1/12"), is in the pod range (of its family)."""
    return int(ipaddress.ip_interface(address).ip) in pod_range


def accepted(infos: Iterable[PeerInfo], mine: PeerInfo, pod_range: Range) -> list[PeerInfo]:
    """Others' entries whose bridge address is outside the pod range (or is ours) are dropped: they would install
    a neighbour entry for an address that is not the overlay's."""
    return [
        i
        for i in infos
        if i.name == mine.name
        or not i.bridge_ip
        or (in_range(i.bridge_ip, pod_range) and i.bridge_ip != mine.bridge_ip)
    ]


@dataclass(frozen=True)
class Merged:
    news: list[PeerInfo]  # others' entries that were news to us: gossiped on, and a reason to reconcile
    mine: PeerInfo | None  # ours again with a higher version, to gossip: someone had a newer one than ours


def merge(table: PeerTable, infos: Iterable[PeerInfo], mine: PeerInfo, pod_range: Range) -> Merged:
    """Merge gossip into `table`. An entry about us that wins over ours (an older incarnation of us, or a clock
    that went back) is answered by re-asserting ours with a version one above it."""
    news = table.merge(accepted(infos, mine, pod_range))
    if not any(i.name == mine.name for i in news):
        return Merged(news, None)
    reasserted = replace(mine, version=table.infos[mine.name].version + 1)
    table.infos[mine.name] = reasserted
    return Merged([i for i in news if i.name != mine.name], reasserted)


def updated(mine: PeerInfo, new: PeerInfo, wall_ns: int) -> PeerInfo | None:
    """`new` with a version above `mine`'s (the wall clock's when that is later), or None if nothing changed."""
    if new == mine:
        return None
    return replace(new, version=max(wall_ns, mine.version + 1))
