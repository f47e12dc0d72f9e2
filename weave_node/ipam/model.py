"""The IPAM state machine's vocabulary (pure): keys, the bootstrap setting, effects, change sets, timings."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

from weave_node.core.errors import ConfigError
from weave_node.ipam.errors import BadRequest
from weave_node.mesh.peer import parse_name

DONATION_RETRY = 2.0  # seconds before asking another donor
PROPOSE_RETRY = 3.0  # seconds without consensus progress before a new ballot
FREE_REPORT = 1.0  # at most this often, refresh our free counts in the ring
MAX_ID = 256
INTERNAL_PREFIX = "weave:"  # the router's own allocations (the bridge address): never a pod's, never GC'd
WANT_TTL = 10.0  # seconds an unanswered allocation keeps us asking for space
VOUCH_INTERVAL = 10.0  # seconds between our sightings sent to the reclaimer (it may not be a neighbour)
REPLACED_AFTER = 5.0  # seconds an owner is away, while a peer with its host name is here, before it counts replaced
COUNTERS = (
    "donated",
    "received",
    "reclaimed",
    "lost",
    "bad_messages",
    "conflicts",
    "handed_over",
    "given_back",
    "taken_back",
)


@dataclass(frozen=True, order=True)
class Key:
    container_id: str
    ifname: str = "eth0"

    def validate(self) -> None:
        if not 0 < len(self.container_id) <= MAX_ID or not self.container_id.isprintable():
            raise BadRequest("container_id must be 1-256 printable characters")
        if not 0 < len(self.ifname) <= 15 or not self.ifname.isprintable() or "/" in self.ifname:
            raise BadRequest("ifname must be 1-15 printable characters without '/'")


@dataclass(frozen=True)
class Init:
    """`IPALLOC_INIT`: consensus=N (default), seed=NAME,NAME... or observer."""

    mode: Literal["consensus", "seed", "observer"] = "consensus"
    peers: int = 1  # consensus: the number of initial peers
    seeds: tuple[int, ...] = ()

    @property
    def quorum(self) -> int:
        return self.peers // 2 + 1


def parse_init(text: str, default_peers: int) -> Init:
    """`IPALLOC_INIT` as Weave spells it: `consensus[=N]`, `seed=NAME,NAME...` or `observer`."""
    text = text.strip()
    mode, _, arg = text.partition("=")
    if mode in ("", "consensus"):
        if not arg:
            return Init("consensus", peers=max(1, default_peers))
        if not arg.isdigit() or int(arg) < 1:
            raise ConfigError(f"IPALLOC_INIT consensus=N needs N >= 1, not {arg!r}")
        return Init("consensus", peers=int(arg))
    if mode == "seed":
        seeds = tuple(sorted({parse_name(n.strip()) for n in arg.split(",") if n.strip()}))
        if not seeds:
            raise ConfigError("IPALLOC_INIT seed= needs at least one peer name")
        return Init("seed", seeds=seeds)
    if mode == "observer" and not arg:
        return Init("observer")
    raise ConfigError(f"IPALLOC_INIT {text!r}: use consensus[=N], seed=NAME[,NAME...] or observer")


@dataclass(frozen=True)
class Gossip:
    data: bytes


@dataclass(frozen=True)
class Unicast:
    dst: int
    data: bytes


@dataclass(frozen=True)
class Log:
    level: int
    message: str
    key: str = ""  # a kind of message a peer can repeat at will (a flood): the shell rate-limits those per key


Effect = Gossip | Unicast | Log


@dataclass
class Changes:
    ring: bool = False
    consensus: bool = False
    seen: bool = False  # who is reachable changed: persist when we last saw each owner
    orphans: bool = False
    leaving: bool = False
    put: dict[int, Key] = field(default_factory=dict)
    delete: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        flags = self.ring or self.consensus or self.seen or self.orphans or self.leaving
        return flags or bool(self.put) or bool(self.delete)


@dataclass
class Leaving:
    """Our space handed over (`leave`): to whom, which entries at which rank, and whether a peer has them."""

    receiver: int  # 0: we owned nothing
    addresses: int
    entries: dict[int, tuple[int, int, int, int]]
    acknowledged: bool = False
    resend_at: float = 0.0


def ring_id_for(kind: str, *parts: int) -> int:
    digest = hashlib.blake2b(repr((kind, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
