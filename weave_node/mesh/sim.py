"""A deterministic simulation of topology gossip: a fake network, rounds instead of a clock, a seeded Random.

Used by tests/sim and bench/mesh_convergence.py. Each simulated peer holds a `Topology`; the connection graph is
given (the model: every connection is established at both ends). A message sent in round r is delivered at the
start of round r+1; a message over a connection that no longer exists is dropped. Bytes are the lengths of the
encoded payloads (`encode_records`, 8 for a digest); with `wire=True` payloads are really encoded and decoded.

Gossip protocol ("delta" mode, the design the router should follow):
1. Handshake: when a connection comes up, each end sends an 8-byte digest (HELLO) of its topology leaving out
   the two endpoints' own records (a new connection changes both, and each end sends its own as a delta anyway).
   Only when the digests differ does the receiver answer with its full topology (FULL): a new connection inside
   a converged mesh costs 16 bytes; a joining, restarted or healed peer gets everything.
2. Deltas: the records that changed in a round (merge wins, local changes, restart bumps) are sent at the end of
   that round to every neighbour, except the neighbours that sent us that very record (they have it).
   `gc()` runs after every merge that changed something; only records that survive it are forwarded.
3. Anti-entropy by digest: a peer that has been quiet for QUIET_ROUNDS rounds (nothing improved, nothing sent)
   sends its 8-byte topology fingerprint to one random neighbour. A quiet receiver whose fingerprint differs
   replies with its full topology (PUSH); the digest's sender merges it and answers with the records the PUSH
   lacked or held older (PULL). A wave of deltas passes a peer within one round, so two quiet neighbours differ
   only after a loss or a gc race: the steady state costs 8 bytes per peer per round, and a full exchange
   happens only to repair a real divergence (instead of a full topology per peer per round).

"flood" mode is the naive baseline: every round, every peer sends its full topology to every neighbour.
"""

from __future__ import annotations

import enum
import random
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from weave_node.mesh.peer import NAME_LIMIT, new_uid
from weave_node.mesh.topology import (
    ConnectionInfo,
    PeerRecord,
    Topology,
    decode_records,
    encode_records,
    encoded_size,
    wins,
)

QUIET_ROUNDS = 2
DIGEST_SIZE = 8
_DIGEST = struct.Struct(">Q")


class Kind(enum.Enum):
    HELLO = "hello"  # handshake: 8-byte fingerprint, once per new connection
    FULL = "full"  # handshake: the whole topology, answering a HELLO that differs
    DELTA = "delta"  # records that changed last round
    DIGEST = "digest"  # anti-entropy: 8-byte fingerprint
    PUSH = "push"  # anti-entropy: full topology, answering a digest that differs
    PULL = "pull"  # anti-entropy: what the PUSH lacked, answering a PUSH
    FLOOD = "flood"  # baseline: full topology every round


@dataclass(frozen=True)
class Message:
    kind: Kind
    src: int
    dst: int
    size: int
    records: tuple[PeerRecord, ...] = ()
    digest: int = 0
    payload: bytes | None = None  # the real bytes when the network runs with wire=True


@dataclass
class PeerStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0


@dataclass
class SimPeer:
    name: int
    topology: Topology
    neighbours: set[int] = field(default_factory=set)
    pending: dict[int, set[int]] = field(default_factory=dict)  # changed name -> neighbours known to have it
    busy_round: int = 0  # last round something improved or was sent
    stats: PeerStats = field(default_factory=PeerStats)


def address_of(name: int) -> str:
    """A made-up but stable underlay address for a simulated peer."""
    return f"10.{(name >> 16) & 0xFF}.{(name >> 8) & 0xFF}.{name & 0xFF}:6783"


def sparse_graph(n: int, rng: random.Random, links: int = 3) -> tuple[list[int], list[tuple[int, int]]]:
    """`n` random distinct names; peer i connects to `links` random earlier peers (sparse and connected)."""
    names: list[int] = []
    taken: set[int] = set()
    while len(names) < n:
        name = rng.randrange(1, NAME_LIMIT)
        if name not in taken:
            taken.add(name)
            names.append(name)
    edges = [(names[i], names[j]) for i in range(1, n) for j in rng.sample(range(i), min(i, links))]
    return names, edges


class Network:
    """The simulated mesh. Drive it with `step()` / `run_until_agreed()`; inspect `peers` and `counters`."""

    def __init__(self, rng: random.Random, *, mode: str = "delta", wire: bool = False, loss: float = 0.0) -> None:
        if mode not in ("delta", "flood"):
            raise ValueError(f"unknown mode {mode!r}")
        self.rng = rng
        self.mode = mode
        self.wire = wire
        self.loss = loss
        self.round = 0
        self.peers: dict[int, SimPeer] = {}
        self.counters: Counter[str] = Counter()  # messages sent per kind, "lost"
        self._in_flight: list[Message] = []

    # ---- building and changing the graph ---------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        names: Sequence[int],
        edges: Iterable[tuple[int, int]],
        rng: random.Random,
        *,
        mode: str = "delta",
        wire: bool = False,
        loss: float = 0.0,
    ) -> Network:
        """A network of `names` with `edges` up: every peer knows only itself, then handshakes on every edge."""
        net = cls(rng, mode=mode, wire=wire, loss=loss)
        for name in names:
            net.add_peer(name)
        pairs = list(edges)
        for a, b in pairs:
            net.peers[a].neighbours.add(b)
            net.peers[b].neighbours.add(a)
        for a, b in pairs:
            net._handshake(a, b)
        for peer in net.peers.values():
            net._update_local(peer)
        return net

    def add_peer(self, name: int, uid: int | None = None) -> SimPeer:
        uid = new_uid(self.rng) if uid is None else uid
        peer = SimPeer(name, Topology(PeerRecord(name, f"host-{len(self.peers)}", uid, 1, ())))
        self.peers[name] = peer
        return peer

    def connect(self, a: int, b: int) -> None:
        self.peers[a].neighbours.add(b)
        self.peers[b].neighbours.add(a)
        self._handshake(a, b)  # fingerprints as they were: peers of one converged mesh exchange no records
        self._update_local(self.peers[a])
        self._update_local(self.peers[b])

    def disconnect(self, a: int, b: int) -> None:
        for x, y in ((a, b), (b, a)):
            peer = self.peers.get(x)
            if peer is not None and y in peer.neighbours:
                peer.neighbours.discard(y)
                self._update_local(peer)

    def kill(self, name: int) -> None:
        """The peer dies: its neighbours see their connections to it drop."""
        peer = self.peers.pop(name)
        for nb in sorted(peer.neighbours):
            self.disconnect(nb, name)

    def restart(self, name: int) -> None:
        """The peer's process restarts (new UID, version 1, empty topology) and reconnects to the same peers."""
        old = self.peers[name]
        peer = SimPeer(name, Topology(PeerRecord(name, old.topology.local.nickname, new_uid(self.rng), 1, ())))
        peer.neighbours = set(old.neighbours)
        self.peers[name] = peer
        self._in_flight = [m for m in self._in_flight if name not in (m.src, m.dst)]  # old connections' data
        for nb in sorted(peer.neighbours):
            self._handshake(name, nb)
        self._update_local(peer)

    def _update_local(self, peer: SimPeer) -> None:
        conns = [ConnectionInfo(nb, address_of(nb), nb < peer.name, True) for nb in peer.neighbours]
        if peer.topology.set_local_connections(conns):
            self._changed(peer, {peer.name}, peer.topology.gc())

    def _handshake(self, a: int, b: int) -> None:
        if self.mode == "delta":
            self._send(Kind.HELLO, a, b, digest=self._hello_digest(self.peers[a], b))
            self._send(Kind.HELLO, b, a, digest=self._hello_digest(self.peers[b], a))

    @staticmethod
    def _hello_digest(peer: SimPeer, other: int) -> int:
        """The fingerprint without the two endpoints' own records (each sends its own as a delta anyway)."""
        held = peer.topology.records
        digest = peer.topology.fingerprint() ^ held[peer.name].digest
        return digest ^ held[other].digest if other in held else digest

    # ---- rounds ----------------------------------------------------------------------------------------------

    def step(self) -> None:
        """One round: deliver what was sent last round, then every peer sends."""
        self.round += 1
        inbox, self._in_flight = self._in_flight, []
        for msg in inbox:
            self._deliver(msg)
        order = sorted(self.peers)
        if self.mode == "flood":
            for name in order:
                peer = self.peers[name]
                full = tuple(peer.topology.records.values())
                for nb in sorted(peer.neighbours):
                    self._send(Kind.FLOOD, name, nb, full)
            return
        for name in order:
            self._flush(self.peers[name])
        for name in order:
            peer = self.peers[name]
            if peer.neighbours and self._quiet(peer):
                nb = self.rng.choice(sorted(peer.neighbours))
                self._send(Kind.DIGEST, name, nb, digest=peer.topology.fingerprint())

    def run_until_agreed(self, max_rounds: int) -> int:
        """Step until `agreed()`; return the rounds taken. RuntimeError after `max_rounds`."""
        start = self.round
        while not self.agreed():
            if self.round - start >= max_rounds:
                raise RuntimeError(f"no agreement after {max_rounds} rounds")
            self.step()
        return self.round - start

    def run_until_quiet(self, max_rounds: int) -> int:
        """Step until nothing but digests is in flight or pending (delta mode); return the rounds taken."""
        start = self.round
        while any(m.kind is not Kind.DIGEST for m in self._in_flight) or any(p.pending for p in self.peers.values()):
            if self.round - start >= max_rounds:
                raise RuntimeError(f"still busy after {max_rounds} rounds")
            self.step()
        return self.round - start

    def components(self) -> list[set[int]]:
        """Connected components of the live connection graph."""
        seen: set[int] = set()
        out = []
        for start in sorted(self.peers):
            if start in seen:
                continue
            comp = {start}
            stack = [start]
            while stack:
                for y in self.peers[stack.pop()].neighbours:
                    if y not in comp and y in self.peers:
                        comp.add(y)
                        stack.append(y)
            seen |= comp
            out.append(comp)
        return out

    def agreed(self) -> bool:
        """Every peer holds exactly the live records of its component (checked by fingerprint and count)."""
        for comp in self.components():
            truth = 0
            for name in comp:
                truth ^= self.peers[name].topology.local.digest
            for name in comp:
                topo = self.peers[name].topology
                if topo.fingerprint() != truth or len(topo.records) != len(comp):
                    return False
        return True

    def reset_stats(self) -> None:
        for peer in self.peers.values():
            peer.stats = PeerStats()
        self.counters.clear()

    # ---- the protocol ----------------------------------------------------------------------------------------

    def _quiet(self, peer: SimPeer) -> bool:
        return self.round - peer.busy_round >= QUIET_ROUNDS

    def _send(self, kind: Kind, src: int, dst: int, records: tuple[PeerRecord, ...] = (), digest: int = 0) -> None:
        payload = None
        if kind in (Kind.DIGEST, Kind.HELLO):
            size = DIGEST_SIZE
            if self.wire:
                payload = _DIGEST.pack(digest)
        elif self.wire:
            payload = encode_records(records)
            size = len(payload)
        else:
            size = encoded_size(records)
        stats = self.peers[src].stats
        stats.bytes_sent += size
        stats.messages_sent += 1
        self.counters[kind.value] += 1
        self._in_flight.append(Message(kind, src, dst, size, records, digest, payload))

    def _deliver(self, msg: Message) -> None:
        peer = self.peers.get(msg.dst)
        if peer is None or msg.src not in peer.neighbours:
            return  # the connection is gone
        if self.loss and self.rng.random() < self.loss:
            self.counters["lost"] += 1
            return
        peer.stats.bytes_received += msg.size
        peer.stats.messages_received += 1
        if msg.kind in (Kind.DIGEST, Kind.HELLO):
            digest = _DIGEST.unpack(msg.payload)[0] if msg.payload is not None else msg.digest
            if msg.kind is Kind.HELLO:
                if digest == self._hello_digest(peer, msg.src):
                    return
                self._send(Kind.FULL, peer.name, msg.src, tuple(peer.topology.records.values()))
                for known in peer.pending.values():
                    known.add(msg.src)  # the FULL carries the current version of every pending record
            elif self._quiet(peer) and digest != peer.topology.fingerprint():
                self._send(Kind.PUSH, peer.name, msg.src, tuple(peer.topology.records.values()))
            return
        records = tuple(decode_records(msg.payload)) if msg.payload is not None else msg.records
        self._receive(peer, msg.src, records)
        if msg.kind is Kind.PUSH:
            pushed = {r.name: r for r in records}
            reply = []
            for name, r in peer.topology.records.items():
                theirs = pushed.get(name)
                if theirs is None or wins(r, theirs):
                    reply.append(r)
            if reply:
                self._send(Kind.PULL, peer.name, msg.src, tuple(reply))

    def _receive(self, peer: SimPeer, src: int, records: Sequence[PeerRecord]) -> None:
        topo = peer.topology
        improved = topo.merge(records)
        if improved:
            self._changed(peer, improved, topo.gc())
        if peer.pending:
            held = topo.records
            for r in records:
                known = peer.pending.get(r.name)
                if known is not None:
                    current = held.get(r.name)
                    if current is r or current == r:
                        known.add(src)

    def _changed(self, peer: SimPeer, improved: set[int], removed: set[int]) -> None:
        peer.busy_round = self.round
        if self.mode == "flood":
            return  # the baseline sends everything every round anyway
        for name in improved - removed:
            peer.pending[name] = set()
        for name in removed:
            peer.pending.pop(name, None)

    def _flush(self, peer: SimPeer) -> None:
        if not peer.pending:
            return
        held = peer.topology.records
        names = sorted(peer.pending)
        for nb in sorted(peer.neighbours):
            batch = tuple(held[n] for n in names if nb not in peer.pending[n])
            if batch:
                self._send(Kind.DELTA, peer.name, nb, batch)
        peer.pending.clear()
        peer.busy_round = self.round
