"""A deterministic simulation of the router's gossip: the router's own core (`node.Node`) in every simulated
peer, a fake network, a fake clock, a seeded Random.

Used by tests/sim and bench/mesh_convergence.py. Every peer is a `Node` — the object `router.Router` drives —
so duplicate-connection resolution, the connection limit, deltas, digest/echo anti-entropy and learned dial
targets are the router's decisions; only sockets and asyncio are replaced. A connection is an int; it is
established at both ends at once when the graph says so (`connect`). A round is one hop: what is sent in round r
is delivered at the start of round r+1, then every peer's `tick` runs at `now = round * round_seconds` (10 ms
by default: a hop across a WAN), so the periodic anti-entropy (the router's 10 s) fires every 1000 rounds, each
peer from a random phase; tests of repairs shorten the hop to meet it sooner. A message over a connection that
was closed is dropped. Bytes are router messages (kind byte + payload, as `gossip.encode` makes them, without
the 5-byte frame header); with `wire=True` they are really encoded and decoded. Dials the cores ask for are
counted (`counters["dial"]`) and, with `dials=True`, performed (the graph then grows as the router's would).

"flood" mode is the naive baseline: the same peers, but every round every peer sends its full topology to every
neighbour (and the core's own messages are not sent).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from weave_node.core.address import PeerAddress
from weave_node.mesh import gossip
from weave_node.mesh.node import DUPLICATE, Close, Dial, Effect, Link, Node, SendDigest, SendRecords
from weave_node.mesh.peer import NAME_LIMIT, new_uid
from weave_node.mesh.settings import DEFAULT_CONN_LIMIT, DEFAULT_GOSSIP_INTERVAL
from weave_node.mesh.topology import PeerRecord, Topology, decode_records, encode_records, encoded_size

ROUND_SECONDS = 0.01
GOSSIP_INTERVAL = DEFAULT_GOSSIP_INTERVAL
DIGEST_SIZE = 10  # kind, fingerprint, echo flag
PEER_CLOSED = "connection closed by peer"


@dataclass(frozen=True)
class Message:
    kind: str  # "delta" | "full" (records answering a digest) | "digest" | "flood"
    conn: int
    src: int
    dst: int
    size: int
    records: tuple[PeerRecord, ...] = ()
    digest: int = 0
    echo: bool = False
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
    node: Node[int]
    conns: dict[int, int] = field(default_factory=dict)  # open connection -> the peer at its other end
    stats: PeerStats = field(default_factory=PeerStats)

    @property
    def topology(self) -> Topology:
        return self.node.topology

    @property
    def neighbours(self) -> set[int]:
        return set(self.conns.values())


def address_of(name: int) -> PeerAddress:
    """A made-up but stable underlay address for a simulated peer."""
    return PeerAddress(f"10.{(name >> 16) & 0xFF}.{(name >> 8) & 0xFF}.{name & 0xFF}", 6783)


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

    def __init__(
        self,
        rng: random.Random,
        *,
        mode: str = "delta",
        wire: bool = False,
        loss: float = 0.0,
        dials: bool = False,
        conn_limit: int = DEFAULT_CONN_LIMIT,
        round_seconds: float = ROUND_SECONDS,
    ) -> None:
        if mode not in ("delta", "flood"):
            raise ValueError(f"unknown mode {mode!r}")
        self.rng = rng
        self.mode = mode
        self.wire = wire
        self.loss = loss
        self.dials = dials
        self.conn_limit = conn_limit
        self.round_seconds = round_seconds
        self.round = 0
        self.peers: dict[int, SimPeer] = {}
        self.counters: Counter[str] = Counter()  # messages sent per kind, "lost", "dial"
        self._conns: dict[int, tuple[int, int]] = {}  # open connection -> (dialler, acceptor)
        self._next_conn = 1
        self._by_address: dict[PeerAddress, int] = {}
        self._in_flight: list[Message] = []

    @property
    def now(self) -> float:
        return self.round * self.round_seconds

    # ---- building and changing the graph ---------------------------------------------------------------------

    @classmethod
    def build(
        cls, names: Sequence[int], edges: Iterable[tuple[int, int]], rng: random.Random, **options: object
    ) -> Network:
        """A network of `names` (every peer knows only itself), then every edge (a, b) connected: a dials b."""
        net = cls(rng, **options)  # type: ignore[arg-type]
        for name in names:
            net.add_peer(name)
        for a, b in edges:
            net.connect(a, b)
        return net

    def add_peer(self, name: int, uid: int | None = None, nickname: str = "") -> SimPeer:
        uid = new_uid(self.rng) if uid is None else uid
        record = PeerRecord(name, nickname or f"host-{len(self.peers)}", uid, 1, ())
        node: Node[int] = Node(record, conn_limit=self.conn_limit, gossip_interval=GOSSIP_INTERVAL, rng=self.rng)
        node.next_gossip = self.now + self.rng.uniform(0.0, GOSSIP_INTERVAL)  # peers start at different times
        peer = SimPeer(name, node)
        self.peers[name] = peer
        self._by_address[address_of(name)] = name
        return peer

    def connect(self, a: int, b: int) -> int:
        """`a` dials `b`; the handshake completes at both ends at once (then each core decides what to keep)."""
        conn, self._next_conn = self._next_conn, self._next_conn + 1
        self._conns[conn] = (a, b)
        pa, pb = self.peers[a], self.peers[b]
        pa.conns[conn], pb.conns[conn] = b, a
        inbound_address = f"{address_of(a).host}:{40000 + conn % 20000}"  # the dialler's ephemeral port
        out_a = pa.node.established(Link(conn, b, pb.topology.local.uid, True, str(address_of(b)), self.now,
                                         address_of(b)))  # fmt: skip
        out_b = pb.node.established(Link(conn, a, pa.topology.local.uid, False, inbound_address, self.now))
        self._perform(pa, out_a)
        self._perform(pb, out_b)
        return conn

    def disconnect(self, a: int, b: int) -> None:
        """Every connection between `a` and `b` breaks."""
        for conn, ends in list(self._conns.items()):
            if set(ends) == {a, b}:
                self._close(conn, a, PEER_CLOSED)

    def kill(self, name: int) -> None:
        """The peer dies: its neighbours see their connections to it drop."""
        peer = self.peers[name]
        for conn in sorted(peer.conns):
            self._close(conn, name, PEER_CLOSED)
        del self.peers[name]

    def restart(self, name: int) -> None:
        """The peer's process restarts (new UID, version 1, empty topology) and dials the same peers again."""
        old = self.peers[name]
        neighbours = sorted(old.neighbours)
        self.kill(name)
        self.add_peer(name, nickname=old.topology.local.nickname)
        for nb in neighbours:
            self.connect(name, nb)

    def settle(self) -> None:
        """A shortcut for large meshes: every peer merges the live records of its component at once, as if the
        initial gossip had run its course; what was in flight is dropped and the statistics are reset."""
        self._in_flight.clear()
        for comp in self.components():
            truth = [self.peers[name].topology.local for name in sorted(comp)]
            for name in sorted(comp):
                self.peers[name].node.on_topology(0, truth)  # (key 0 is no connection: the deltas go nowhere)
        self.reset_stats()

    def _close(self, conn: int, closer: int, reason: str) -> None:
        """Close a connection at both ends; each core learns how it ended (both ends resolve a duplicate alike)."""
        ends = self._conns.pop(conn, None)
        if ends is None:
            return
        for end in ends:
            peer = self.peers.get(end)
            if peer is None:
                continue
            other = peer.conns.pop(conn)
            why = reason if end == closer or reason == DUPLICATE else PEER_CLOSED
            target = address_of(other) if end == ends[0] else None
            effects, _ = peer.node.lost(conn, other, target, why, self.now)
            self._perform(peer, effects)

    # ---- rounds ----------------------------------------------------------------------------------------------

    def step(self) -> None:
        """One round: deliver what was sent last round, then every peer's core ticks (or floods)."""
        self.round += 1
        inbox, self._in_flight = self._in_flight, []
        for msg in inbox:
            self._deliver(msg)
        for name in sorted(self.peers):
            peer = self.peers[name]
            if self.mode == "flood":
                full = tuple(peer.topology.records.values())
                for conn in sorted(peer.conns):
                    self._send(peer, "flood", conn, records=full)
            else:
                self._perform(peer, peer.node.tick(self.now))

    def run_until_agreed(self, max_rounds: int) -> int:
        """Step until `agreed()`; return the rounds taken. RuntimeError after `max_rounds`."""
        start = self.round
        while not self.agreed():
            if self.round - start >= max_rounds:
                raise RuntimeError(f"no agreement after {max_rounds} rounds")
            self.step()
        return self.round - start

    def run_until_quiet(self, max_rounds: int) -> int:
        """Step until nothing but digests is in flight; return the rounds taken."""
        start = self.round
        while any(m.kind != "digest" for m in self._in_flight):
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

    # ---- the wire ------------------------------------------------------------------------------------------------

    def _perform(self, peer: SimPeer, effects: list[Effect[int]], kind: str = "delta") -> None:
        if self.mode == "flood":
            return
        for effect in effects:
            if isinstance(effect, SendRecords):
                for conn in effect.to:
                    self._send(peer, kind, conn, records=effect.records)
            elif isinstance(effect, SendDigest):
                self._send(peer, "digest", effect.to, digest=effect.fingerprint, echo=effect.echo)
            elif isinstance(effect, Close):
                self._close(effect.key, peer.name, effect.reason)
            elif isinstance(effect, Dial):
                self.counters["dial"] += 1
                to = self._by_address.get(effect.address)
                if self.dials and to in self.peers and to != peer.name:
                    self.connect(peer.name, to)
            # SendStates: simulated peers have no gossip channels; Changed: nobody subscribes

    def _send(
        self, peer: SimPeer, kind: str, conn: int, *, records: tuple[PeerRecord, ...] = (), digest: int = 0,
        echo: bool = False,
    ) -> None:  # fmt: skip
        dst = peer.conns.get(conn)
        if dst is None:
            return  # closed meanwhile (as a router's send on a closed connection is not made)
        payload = None
        if kind == "digest":
            size = DIGEST_SIZE
            if self.wire:
                payload = gossip.encode(gossip.encode_digest(digest, echo))
        elif self.wire:
            payload = gossip.encode(gossip.Envelope(kind=gossip.KIND_TOPOLOGY, payload=encode_records(records)))
            size = len(payload)
        else:
            size = 1 + encoded_size(records)
        peer.stats.bytes_sent += size
        peer.stats.messages_sent += 1
        self.counters[kind] += 1
        self._in_flight.append(Message(kind, conn, peer.name, dst, size, records, digest, echo, payload))

    def _deliver(self, msg: Message) -> None:
        peer = self.peers.get(msg.dst)
        if peer is None or msg.conn not in peer.conns:
            return  # the connection is gone
        if self.loss and self.rng.random() < self.loss:
            self.counters["lost"] += 1
            return
        peer.stats.bytes_received += msg.size
        peer.stats.messages_received += 1
        if msg.payload is not None:
            env = gossip.decode(msg.payload)
            if env.kind == gossip.KIND_DIGEST:
                digest, echo = gossip.decode_digest(env)
                self._perform(peer, peer.node.on_digest(msg.conn, digest, echo), kind="full")
            else:
                self._perform(peer, peer.node.on_topology(msg.conn, decode_records(env.payload)))
        elif msg.kind == "digest":
            self._perform(peer, peer.node.on_digest(msg.conn, msg.digest, msg.echo), kind="full")
        else:
            effects = peer.node.on_topology(msg.conn, msg.records)
            self._perform(peer, effects)
