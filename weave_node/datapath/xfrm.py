"""IPsec ESP for the fast datapath: our xfrm states (SAs) and policies as values, the plan that brings the kernel's
to them, and the `ip xfrm` text both ways (pure). netlink.py runs the text with `ip -batch -` on stdin, so keys
never appear in a process list, and reads the kernel's back with `nokeys`.

What is ours: every SA and every policy template carries REQID; nothing else is ever touched. The VXLAN between two
hosts (UDP to the VXLAN port, any source port) is carried in ESP transport mode with rfc4106(gcm(aes)) (AES-256,
a 32-bit salt, 128-bit tag) and 64-bit sequence numbers (ESN). A policy per direction and peer requires ESP
(`level required`): with no SA in place the kernel drops the packet, so nothing leaves or is taken in the clear
while an SA is being set up or replaced. The plan adds policies before SAs and removes SAs before policies.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

REQID = 0x5745  # "WE": ours
AEAD = "rfc4106(gcm(aes))"
KEY_BYTES = 36  # AES-256 key + 4-byte salt (RFC 4106)
ICV_BITS = 128
REPLAY_WINDOW = 128
SPI_MIN = 0x5700_0000  # ours come from this block (any SPI would do: reqid says what is ours; this reads well)
SPI_MAX = 0x57FF_FFFF


@dataclass(frozen=True)
class Sa:
    """One direction's ESP security association: packets src -> dst with this SPI. Its identity is (src, dst,
    spi); the key is not compared (the kernel's are read back without keys) and never shown."""

    src: str
    dst: str
    spi: int
    key: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True)
class Policy:
    """VXLAN (UDP to `port`) from src to dst must be in ESP, `direction` "out" (we send) or "in" (we take)."""

    src: str
    dst: str
    direction: str
    port: int


@dataclass(frozen=True)
class Xfrm:
    sas: frozenset[Sa] = frozenset()
    policies: frozenset[Policy] = frozenset()
    other_spis: frozenset[int] = frozenset()  # observed: the SPIs of everyone else's SAs (ours avoid them)


@dataclass(frozen=True)
class AddPolicy:
    policy: Policy


@dataclass(frozen=True)
class DeletePolicy:
    policy: Policy


@dataclass(frozen=True)
class AddSa:
    sa: Sa
    port: int  # the SA's selector: UDP to the VXLAN port only


@dataclass(frozen=True)
class DeleteSa:
    sa: Sa


XfrmOp = AddPolicy | DeletePolicy | AddSa | DeleteSa


def plan(desired: Xfrm, observed: Xfrm, port: int) -> tuple[list[XfrmOp], list[XfrmOp]]:
    """(first, last): what to do before the rest of the datapath's plan (block, then key: a peer's FDB entries come
    after its policies) and what after it (a departed peer's SAs, then its policies: after its FDB entries went)."""
    first: list[XfrmOp] = [AddPolicy(p) for p in sorted(desired.policies - observed.policies, key=_policy_key)]
    first += [AddSa(sa, port) for sa in sorted(desired.sas - observed.sas, key=_sa_key)]
    last: list[XfrmOp] = [DeleteSa(sa) for sa in sorted(observed.sas - desired.sas, key=_sa_key)]
    last += [DeletePolicy(p) for p in sorted(observed.policies - desired.policies, key=_policy_key)]
    return first, last


def removal(observed: Xfrm) -> list[XfrmOp]:
    """`weave-node reset`, or encryption turned off: every SA of ours, then every policy."""
    return plan(Xfrm(), observed, 0)[1]


def _sa_key(sa: Sa) -> tuple[str, str, int]:
    return sa.src, sa.dst, sa.spi


def _policy_key(p: Policy) -> tuple[str, str, str, int]:
    return p.src, p.dst, p.direction, p.port


def _host(address: str) -> str:
    return f"{address}/{ipaddress.ip_address(address).max_prefixlen}"


def command(op: XfrmOp) -> str:
    """The `ip -batch` line of one operation (with the key, for stdin only)."""
    if isinstance(op, AddPolicy | DeletePolicy):
        p = op.policy
        sel = f"src {_host(p.src)} dst {_host(p.dst)} proto udp dport {p.port} dir {p.direction}"
        if isinstance(op, DeletePolicy):
            return f"xfrm policy delete {sel}"
        return f"xfrm policy add {sel} tmpl proto esp mode transport reqid {REQID} level required"
    if isinstance(op, DeleteSa):
        return f"xfrm state delete src {op.sa.src} dst {op.sa.dst} proto esp spi {op.sa.spi:#010x}"
    sa = op.sa
    if len(sa.key) != KEY_BYTES:
        raise ValueError(f"an ESP key is {KEY_BYTES} bytes, not {len(sa.key)}")
    return (
        f"xfrm state add src {sa.src} dst {sa.dst} proto esp spi {sa.spi:#010x} reqid {REQID} mode transport "
        f"replay-window {REPLAY_WINDOW} flag esn aead {AEAD} 0x{sa.key.hex()} {ICV_BITS} "
        f"sel src {_host(sa.src)} dst {_host(sa.dst)} proto udp dport {op.port}"
    )


def describe(op: XfrmOp) -> str:
    """For the log: never the key."""
    if isinstance(op, AddSa | DeleteSa):
        return f"{type(op).__name__} {op.sa.src} -> {op.sa.dst} spi {op.sa.spi:#010x}"
    return f"{type(op).__name__} {op.policy.direction} {op.policy.src} -> {op.policy.dst}"


_BLOCK_START = re.compile(r"^src (\S+) dst (\S+)(.*)$")
_SA = re.compile(r"\bproto esp spi (0x[0-9a-f]+) reqid (\d+)")
_DIR = re.compile(r"\bdir (in|out|fwd)\b")
_DPORT = re.compile(r"\bdport (\d+)")
_TMPL_REQID = re.compile(r"\bproto esp reqid (\d+)")


def _blocks(text: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("src "):
            blocks.append([line])
        elif blocks and line[:1].isspace():
            blocks[-1].append(line)
    return blocks


def parse_states(text: str) -> frozenset[Sa]:
    """Our SAs in `ip xfrm state list nokeys`."""
    found = set()
    for block in _blocks(text):
        head = _BLOCK_START.match(block[0])
        body = " ".join(block[1:])
        sa = _SA.search(body)
        if head and sa and int(sa.group(2)) == REQID and int(sa.group(1), 16):  # (SPI 0: a larval state)
            found.add(Sa(head.group(1), head.group(2), int(sa.group(1), 16)))
    return frozenset(found)


_ANY_SPI = re.compile(r"\bspi (0x[0-9a-f]+) reqid (\d+)")


def parse_other_spis(text: str) -> frozenset[int]:
    """The SPIs of the SAs that are not ours in `ip xfrm state list nokeys` (any protocol)."""
    return frozenset(int(m.group(1), 16) for m in _ANY_SPI.finditer(text) if int(m.group(2)) != REQID)


def parse_policies(text: str) -> frozenset[Policy]:
    """Our policies in `ip xfrm policy list`."""
    found = set()
    for block in _blocks(text):
        head = _BLOCK_START.match(block[0])
        body = " ".join(block[1:])
        direction, reqid, dport = _DIR.search(body), _TMPL_REQID.search(body), _DPORT.search(block[0])
        if not (head and direction and reqid and dport) or int(reqid.group(1)) != REQID:
            continue
        src, dst = (a.split("/")[0] for a in (head.group(1), head.group(2)))
        found.add(Policy(src, dst, direction.group(1), int(dport.group(1))))
    return frozenset(found)


def batch(ops: Sequence[XfrmOp]) -> str:
    return "".join(command(op) + "\n" for op in ops)


def spis_in_use(states: Iterable[Sa]) -> frozenset[int]:
    return frozenset(sa.spi for sa in states)
