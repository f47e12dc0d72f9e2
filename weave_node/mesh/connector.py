"""Which peers to dial and when (pure): initial peers, peers learned from the topology, backoff with jitter,
and the connection limit. The router asks `due(now)` and reports outcomes; nothing here touches a socket.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from weave_node.core.address import PeerAddress

BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0


@dataclass
class Target:
    address: PeerAddress
    origin: str  # "flag" (given by the operator) or "learned" (from the topology)
    peer: int | None = None  # the peer name behind this address, once known
    state: str = "idle"  # idle | connecting | connected | retrying | ourself (never dialled again)
    attempts: int = 0
    next_try: float = 0.0
    last_error: str = ""


class Connector:
    def __init__(
        self,
        *,
        initial: tuple[PeerAddress, ...],
        conn_limit: int,
        rng: random.Random,
        base: float = BACKOFF_BASE,
        cap: float = BACKOFF_CAP,
    ) -> None:
        self.conn_limit = conn_limit
        self._rng = rng
        self._base = base
        self._cap = cap
        self.targets: dict[PeerAddress, Target] = {}
        for addr in initial:
            self.add(addr, "flag")

    def add(self, address: PeerAddress, origin: str, peer: int | None = None) -> bool:
        """True when there is something new to dial: a new target, or one whose peer changed while it waits (it was
        skipped while its old peer was connected; the router wakes up for it)."""
        target = self.targets.get(address)
        if target is None:
            self.targets[address] = Target(address=address, origin=origin, peer=peer)
            return True
        moved = peer is not None and peer != target.peer and target.state in ("idle", "retrying")
        if peer is not None:
            target.peer = peer
        if origin == "flag":
            target.origin = "flag"
            if target.state == "ourself":  # asked for again (`weave-node connect`): one more try
                target.state, target.next_try = "idle", 0.0
        return moved

    def forget(self, address: PeerAddress) -> bool:
        return self.targets.pop(address, None) is not None

    def replace_configured(self, addresses: tuple[PeerAddress, ...]) -> tuple[list[PeerAddress], list[PeerAddress]]:
        """The operator's list changed (a reload): the new ones are added, the ones no longer listed become
        learned targets (a live peer stays connected; one that left the topology goes with the next change, as
        any learned target does). Returns (added, dropped)."""
        wanted = set(addresses)
        added = [a for a in addresses if a not in self.targets or self.targets[a].origin != "flag"]
        for addr in addresses:
            self.add(addr, "flag")
        dropped = [a for a, t in self.targets.items() if t.origin == "flag" and a not in wanted]
        for addr in dropped:
            self.targets[addr].origin = "learned"
        return added, dropped

    def forget_learned_except(self, keep: set[PeerAddress]) -> bool:
        """Learned targets whose peer left the topology are dropped; operator-given ones stay. True when one
        was kept only because it is connected (it goes when asked again after it is not)."""
        kept = False
        for addr in list(self.targets):
            t = self.targets[addr]
            if t.origin == "learned" and addr not in keep:
                if t.state == "connected":
                    kept = True
                else:
                    del self.targets[addr]
        return kept

    def due(self, now: float, connected_peers: set[int], established: int) -> list[PeerAddress]:
        """Targets to dial now, within the connection limit, skipping peers we are already connected to."""
        in_flight = sum(1 for t in self.targets.values() if t.state == "connecting")
        room = self.conn_limit - established - in_flight
        out: list[PeerAddress] = []
        if room <= 0:
            return out
        for t in sorted(self.targets.values(), key=lambda t: (t.next_try, str(t.address))):
            if room <= 0:
                break
            if t.state in ("connecting", "connected", "ourself") or t.next_try > now:
                continue
            if t.peer is not None and t.peer in connected_peers:
                continue
            t.state = "connecting"
            out.append(t.address)
            room -= 1
        return out

    def succeeded(self, address: PeerAddress, peer: int) -> None:
        t = self.targets.get(address)
        if t is not None:
            t.state, t.attempts, t.peer, t.last_error = "connected", 0, peer, ""

    def superseded(self, address: PeerAddress, peer: int | None) -> None:
        """Our connection lost to a duplicate: idle, skipped while its peer is connected by the other one and
        dialled again after."""
        t = self.targets.get(address)
        if t is not None:
            t.state, t.last_error = "idle", ""
            if peer is not None:
                t.peer = peer

    def failed(self, address: PeerAddress, now: float, reason: str) -> float:
        """Schedule the next attempt: exponential backoff, capped, with equal jitter. Returns the delay."""
        t = self.targets.get(address)
        if t is None:
            return 0.0
        delay = min(self._cap, self._base * 2.0**t.attempts)
        delay = delay / 2 + self._rng.random() * delay / 2
        t.attempts += 1
        t.state, t.next_try, t.last_error = "retrying", now + delay, reason
        return delay

    def ourself(self, address: PeerAddress) -> bool:
        """The address led back to this router (a peer list that names every node, ours too, as a DaemonSet's
        does): it is not dialled again. True the first time."""
        t = self.targets.get(address)
        if t is None or t.state == "ourself":
            return False
        t.state, t.last_error = "ourself", "this router's own address"
        return True

    def disconnected(self, address: PeerAddress, now: float, reason: str) -> float:
        t = self.targets.get(address)
        if t is None:
            return 0.0
        t.attempts = 0
        return self.failed(address, now, reason)

    def next_deadline(self, connected_peers: set[int], established: int) -> float | None:
        """When `due` can next return something: None while nothing can be dialled (a connection that ends or a
        target that is added wakes the router up anyway). A target skipped because its peer is connected by the
        other side's connection, or because the limit is reached, is not a deadline: counted as one, it made the
        router's maintenance loop spin at its 10 ms floor whenever a duplicate connection had been dropped."""
        in_flight = sum(1 for t in self.targets.values() if t.state == "connecting")
        if self.conn_limit - established - in_flight <= 0:
            return None
        times = [
            t.next_try
            for t in self.targets.values()
            if t.state in ("idle", "retrying") and (t.peer is None or t.peer not in connected_peers)
        ]
        return min(times) if times else None
