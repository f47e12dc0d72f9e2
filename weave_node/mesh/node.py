"""One peer's gossip core (pure, sans-IO, `now`-driven): the decisions the router takes and the simulation runs.

The shell (router.py, or sim.py's fake network) feeds it events — a connection established or lost, a topology
or digest message received, time passing (`tick`) — and performs the effects it returns, in order: send records
or a digest down connections, send every gossip channel's state, close a connection, dial an address, tell
subscribers that the topology changed. A connection is a key of the shell's choosing (`K`).

Decisions made here:
- duplicate connections: both ends keep the one initiated by the peer with the greater name (a peer with a new
  UID replaces its old connection); the connection limit counts established connections;
- topology gossip: changes go as deltas to every neighbour but the one that taught us; a new connection and the
  periodic anti-entropy send an 8-byte fingerprint (digest) with "echo", answered with the full topology (and
  our digest, without echo) only when the fingerprints differ;
- dial targets: every peer's established outbound connections teach addresses to dial (learned targets, kept
  while a record lists them); the connector paces dials and is told how each connection ended.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

from weave_node.core.address import PeerAddress, parse_peer
from weave_node.core.errors import ConfigError
from weave_node.mesh.connector import Connector
from weave_node.mesh.protocol import OURSELF
from weave_node.mesh.routes import broadcast_next_hops, unicast_routes
from weave_node.mesh.topology import ConnectionInfo, PeerRecord, Topology

K = TypeVar("K", bound=Hashable)

DUPLICATE = "duplicate connection"
PASSWORD_CHANGED = "password changed"  # noqa: S105 - closed by a reload, to be made again with the new passwords at once


@dataclass(frozen=True)
class Link(Generic[K]):
    """An established connection, as the core sees it."""

    key: K
    peer: int
    uid: int  # the peer's UID (a new one means the peer restarted)
    outbound: bool
    address: str  # what we dialled, or where an inbound connection came from
    since: float
    target: PeerAddress | None = None  # what we dialled (outbound only)


@dataclass(frozen=True)
class SendRecords(Generic[K]):
    """A topology message with `records` down each of `to` (encode once)."""

    to: tuple[K, ...]
    records: tuple[PeerRecord, ...]


@dataclass(frozen=True)
class SendDigest(Generic[K]):
    to: K
    fingerprint: int
    echo: bool  # "answer with yours"


@dataclass(frozen=True)
class SendStates(Generic[K]):
    """Every gossip channel's whole state down `to` (`channel` "" = every channel)."""

    to: K
    channel: str = ""


@dataclass(frozen=True)
class Close(Generic[K]):
    key: K
    reason: str
    refused: str = ""  # a counter's name when the connection is refused (e.g. "conn_limit")


@dataclass(frozen=True)
class Dial:
    address: PeerAddress


@dataclass(frozen=True)
class Changed:
    """The topology changed (routes are recomputed): subscribers are told; `left` peers were dropped (name,
    nickname); `learned` is true when a new address to dial was learned."""

    left: tuple[tuple[int, str], ...] = ()
    learned: bool = False


Effect: TypeAlias = "SendRecords[K] | SendDigest[K] | SendStates[K] | Close[K] | Dial | Changed"


@dataclass(frozen=True)
class Ended:
    """What `lost` concluded about a connection that ended (for the shell's log)."""

    was_established: bool
    ourself: bool = False  # the first time a target turned out to be this router's own address
    retry_in: float | None = None


class Node(Generic[K]):
    def __init__(
        self,
        local: PeerRecord,
        *,
        conn_limit: int,
        gossip_interval: float,
        rng: random.Random,
        initial: tuple[PeerAddress, ...] = (),
    ) -> None:
        self.name = local.name
        self.topology = Topology(local)
        self.connector = Connector(initial=initial, conn_limit=conn_limit, rng=rng)
        self.conn_limit = conn_limit
        self.gossip_interval = gossip_interval
        self.rng = rng
        self.links: dict[int, Link[K]] = {}  # established connections by peer
        self._routes: dict[int, int] | None = {}  # None: recompute when asked for
        self.channels: list[str] = []  # gossip channels, for the periodic anti-entropy
        self.next_gossip = 0.0
        self._learned: dict[int, frozenset[tuple[str, int]]] = {}  # per record: what it teaches to dial
        self._teachers: dict[str, int] = {}  # learned address -> how many (record, peer) teach it
        self._taught_peer: dict[str, int] = {}  # learned address -> the peer last taught behind it
        self._recheck = False  # an untaught target was kept while connected: forget it at the next change
        self._relearn: set[str] = set()  # taught addresses the operator forgot: learned again at the next change

    # ---- connections -------------------------------------------------------------------------------------

    def established(self, link: Link[K]) -> list[Effect[K]]:
        """A handshake completed: keep it (or refuse it), announce our new connection, compare fingerprints."""
        existing = self.links.get(link.peer)
        out: list[Effect[K]] = []
        if existing is not None:
            keep_new = existing.uid != link.uid or self._initiated_later(link, existing)
            loser = existing if keep_new else link
            out.append(Close(loser.key, DUPLICATE))
            if not keep_new:
                return out
            del self.links[link.peer]
        elif len(self.links) >= self.conn_limit:  # (a replacement above keeps the count)
            return [Close(link.key, f"too many connections: {len(self.links)} established, the limit", "conn_limit")]
        self.links[link.peer] = link
        if link.target is not None:
            self.connector.succeeded(link.target, link.peer)
        out += self._local_connections_changed()
        out.append(SendDigest(link.key, self.topology.fingerprint(), echo=True))
        # Every channel's whole state goes down a new connection (as Weave's sendAllGossipDown does): a restarted
        # peer learns the others' state at once, not when a periodic gossip happens to come its way.
        out.append(SendStates(link.key))
        return out

    def _initiated_later(self, new: Link[K], old: Link[K]) -> bool:
        """Both sides keep the connection initiated by the peer with the greater name (the newer on a tie)."""

        def initiator(link: Link[K]) -> int:
            return self.name if link.outbound else link.peer

        return initiator(new) > initiator(old) or (initiator(new) == initiator(old) and new.since > old.since)

    def lost(
        self, key: K, peer: int | None, target: PeerAddress | None, reason: str, now: float
    ) -> tuple[list[Effect[K]], Ended]:
        """A connection ended (established or not): forget it, and tell the connector how it went."""
        out: list[Effect[K]] = []
        link = self.links.get(peer) if peer is not None else None
        was = link is not None and link.key == key
        if was and peer is not None:
            del self.links[peer]
            out += self._local_connections_changed()
        if target is None:
            return out, Ended(was)
        if reason == OURSELF:  # a peer list that names every node, ours too: not dialled again
            return out, Ended(was, ourself=self.connector.ourself(target))
        if reason not in (DUPLICATE, PASSWORD_CHANGED):
            return out, Ended(was, retry_in=self.connector.disconnected(target, now, reason))
        self.connector.superseded(target, peer)
        return out, Ended(was)

    def dial_failed(self, address: PeerAddress, now: float, reason: str) -> float:
        """A dial did not connect: the delay until the next attempt."""
        return self.connector.failed(address, now, reason)

    def _local_connections_changed(self) -> list[Effect[K]]:
        conns = [
            ConnectionInfo(peer=name, address=link.address, outbound=link.outbound, established=True)
            for name, link in sorted(self.links.items())
        ]
        if self.topology.set_local_connections(conns):
            return self._topology_changed({self.name}, exclude=None)
        return []

    # ---- messages ------------------------------------------------------------------------------------------

    def on_topology(self, key: K, records: Sequence[PeerRecord]) -> list[Effect[K]]:
        improved = self.topology.merge(records)
        return self._topology_changed(improved, exclude=key) if improved else []

    def on_digest(self, key: K, fingerprint: int, echo: bool) -> list[Effect[K]]:
        ours = self.topology.fingerprint()
        if fingerprint == ours:
            return []
        out: list[Effect[K]] = [SendRecords((key,), tuple(self.topology.records.values()))]
        if echo:  # so they send what we lack; a non-echo digest is never answered with a digest
            out.append(SendDigest(key, ours, echo=False))
        return out

    def _topology_changed(self, improved: set[int], exclude: K | None) -> list[Effect[K]]:
        held = self.topology.records
        records = tuple(held[n] for n in sorted(improved) if n in held)  # (sent even if gc drops them below)
        left = self.topology.collect()
        out: list[Effect[K]] = []
        if records:
            to = tuple(link.key for link in self.links.values() if link.key != exclude)
            if to:
                out.append(SendRecords(to, records))
        self._routes = None
        learned = self._learn_targets(improved | set(left))
        out.append(Changed(tuple((n, left[n].nickname) for n in sorted(left)), learned))
        return out

    @property
    def routes(self) -> dict[int, int]:
        """Unicast next hops (computed when asked for after a change: changes come far more often)."""
        if self._routes is None:
            self._routes = unicast_routes(self.topology.records, self.name)
        return self._routes

    def _learn_targets(self, changed: Iterable[int]) -> bool:
        """Addresses of other peers' established outbound connections become dial targets while listed."""
        held = self.topology.records
        added = forgotten = False
        for name in changed:
            old = self._learned.pop(name, frozenset())
            record = held.get(name) if name != self.name else None
            new = frozenset(_teaches(record, self.name)) if record is not None else frozenset()
            if new:
                self._learned[name] = new
            if new == old:
                continue
            for text, _peer in old - new:
                self._teachers[text] -= 1
                if not self._teachers[text]:
                    del self._teachers[text]
                    self._taught_peer.pop(text, None)
                    forgotten = True
            for text, peer in new - old:
                self._teachers[text] = self._teachers.get(text, 0) + 1
                self._taught_peer[text] = peer
                addr = _address(text)
                if addr is not None:
                    added = self.connector.add(addr, "learned", peer=peer) or added
        for text in self._relearn & self._teachers.keys():
            addr = _address(text)
            if addr is not None:
                added = self.connector.add(addr, "learned", peer=self._taught_peer.get(text)) or added
        self._relearn.clear()
        if forgotten or self._recheck:
            self._recheck = self.connector.forget_learned_except(
                {a for t in self._teachers if (a := _address(t)) is not None}
            )
        return added

    def replace_peers(self, addresses: tuple[PeerAddress, ...]) -> tuple[list[PeerAddress], list[PeerAddress]]:
        """The operator's peer list, replaced (a reload): (added, dropped). A dropped address stays a target only
        while some peer's record teaches it or it is connected (a live peer is not cut off)."""
        added, dropped = self.connector.replace_configured(addresses)
        if dropped:
            self._recheck = self.connector.forget_learned_except(
                {a for t in self._teachers if (a := _address(t)) is not None}
            )
        return added, dropped

    def forget(self, address: PeerAddress) -> bool:
        """The operator's `forget`: the target goes (one still taught by a record comes back at the next change,
        as every learned one did)."""
        self._relearn.add(str(address))
        return self.connector.forget(address)

    # ---- time ------------------------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Effect[K]]:
        """Dial what is due; when it is time, anti-entropy: our fingerprint to one random neighbour and each
        channel's state to one random neighbour."""
        out: list[Effect[K]] = [Dial(a) for a in self.connector.due(now, set(self.links), len(self.links))]
        if now >= self.next_gossip:
            if self.links:
                keys = [link.key for link in self.links.values()]
                out.append(SendDigest(self.rng.choice(keys), self.topology.fingerprint(), echo=True))
                out += [SendStates(self.rng.choice(keys), channel) for channel in self.channels]
            self.next_gossip = now + self.gossip_interval
        return out

    def next_deadline(self) -> float:
        due = self.connector.next_deadline(set(self.links), len(self.links))
        return self.next_gossip if due is None else min(due, self.next_gossip)

    # ---- routing (for the channels' unicasts and broadcasts) ---------------------------------------------------

    def next_hop(self, dst: int) -> K | None:
        hop = self.routes.get(dst)
        link = self.links.get(hop) if hop is not None else None
        return link.key if link is not None else None

    def broadcast_hops(self, src: int) -> list[K]:
        hops = broadcast_next_hops(self.topology.records, src, self.name)
        return [self.links[h].key for h in hops if h in self.links]

    def neighbours_except(self, key: K) -> list[K]:
        return [link.key for link in self.links.values() if link.key != key]


def _teaches(record: PeerRecord, me: int) -> Iterable[tuple[str, int]]:
    """(address, peer) of each established outbound connection the record lists (to others than us)."""
    for c in record.connections:
        if c.outbound and c.established and c.peer != me and c.address:
            addr = _address(c.address)
            if addr is not None:
                yield str(addr), c.peer  # canonical ("host:port"), as `forget` records it


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> PeerAddress | None:
    try:
        return parse_peer(text)
    except ConfigError:
        return None
