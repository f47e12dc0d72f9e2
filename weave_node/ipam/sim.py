"""A deterministic simulation of IPAM peers: fake clock, fake network with partitions, simulated disks.

Used by tests/sim, the property tests and bench/. Every peer is a real `Allocator`; after each input its change
set is applied to the peer's simulated disk before its effects are delivered (the shell's rule), so `crash`
(restart from the disk) is exact. A message is delivered at the next `step` if both ends are up and in the same
partition then; a periodic anti-entropy gossip goes to one random reachable peer every `gossip_interval`.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from weave_node.core.address import Range, parse_range
from weave_node.ipam import messages
from weave_node.ipam.allocator import Allocator
from weave_node.ipam.consensus import Claim
from weave_node.ipam.errors import Conflict, Unavailable
from weave_node.ipam.model import Gossip, Init, Key, Leaving, Log, Unicast
from weave_node.ipam.presence import MARK_INTERVAL, restored_ago
from weave_node.ipam.ring import Ring


@dataclass
class Disk:
    ring: bytes = b""
    claims: dict[int, Claim] = field(default_factory=dict)
    allocations: dict[int, Key] = field(default_factory=dict)
    seen: dict[int, float] | None = None  # peer -> simulated time last seen (the store's sightings)
    orphans: dict[Key, int] = field(default_factory=dict)
    shared: set[str] = field(default_factory=set)
    leaving: Leaving | None = None


@dataclass
class Pending:
    src: int
    dst: int  # 0: gossip to every reachable peer
    data: bytes


class IpamSim:
    def __init__(
        self,
        names: Iterable[int],
        *,
        span: Range | None = None,
        init: Init | Callable[[int], Init] | None = None,
        reclaim_after: float = 600.0,
        gossip_interval: float = 1.0,
        seed: int = 0,
        reclaim_replaced: bool = True,
        links: Iterable[tuple[int, int]] | None = None,
    ) -> None:
        """`links`: the mesh's direct connections (default: everyone with everyone). Gossip reaches neighbours
        only, as in the router; unicasts are routed to any reachable peer."""
        self.names = sorted(names)
        self.range = span or parse_range("10.32.0.0/12")
        default = Init("consensus", peers=len(self.names))
        self.init_for: Callable[[int], Init] = init if callable(init) else (lambda _n: init or default)
        self.reclaim_after = reclaim_after
        self.reclaim_replaced = reclaim_replaced
        self.links = None if links is None else {frozenset(pair) for pair in links}
        self.gossip_interval = gossip_interval
        self.rng = random.Random(seed)
        self.now = 0.0
        self.disks: dict[int, Disk] = {n: Disk() for n in self.names}
        self.peers: dict[int, Allocator] = {}
        self.group: dict[int, int] = {}
        self.nickname: dict[int, str] = {}
        self.crashed_at: dict[int, float] = {}  # host names: a replacement on the same host keeps its predecessor's
        self.quorum_at: dict[int, float] = {}  # the store's wall-clock mark: last time it saw a quorum, in sync
        self.queue: list[Pending] = []
        self.logs: list[tuple[int, int, str]] = []
        self.messages = 0
        self.bytes = 0
        self._next_gossip = 0.0
        self._next_mark = 0.0
        for n in self.names:
            self.start(n)

    # ---- membership -------------------------------------------------------------------------------------

    def start(self, name: int, *, group: int = 0, away: float | None = -1.0, nickname: str | None = None) -> Allocator:
        """Start (or restart after `crash`) a peer from its disk. `away`: what its store says about how long ago
        it last saw a quorum; by default the time since its crash; None: unknown. `nickname`: its host name
        (default: one of its own)."""
        self.nickname[name] = nickname or self.nickname.get(name) or f"host-{name:x}"
        if away is not None and away < 0:
            away = self.now - self.quorum_at.get(name, self.now)
        if name not in self.disks:
            self.disks[name] = Disk()
            self.names = sorted([*self.names, name])
        disk = self.disks[name]
        seen = (disk.seen or {}).items()
        ring = None
        if disk.ring:
            state = messages.decode(disk.ring)
            assert isinstance(state, messages.State)
            ring = state.ring
        a = Allocator(
            name,
            self.range,
            self.init_for(name),
            reclaim_after=self.reclaim_after,
            now=self.now,
            ring=ring,
            claims=dict(disk.claims) or None,
            allocations={k: ip for ip, k in disk.allocations.items()},
            away=away,
            seen_ago=None if disk.seen is None else {n: restored_ago(self.now - at) for n, at in seen},
            reclaim_replaced=self.reclaim_replaced,
            orphans=dict(disk.orphans),
            shared_nicknames=set(disk.shared),
            leaving=copy.deepcopy(disk.leaving),
        )
        self.peers[name] = a
        self.group[name] = group
        self._flush(name)
        return a

    def crash(self, name: int) -> None:
        """Stop a peer without warning: only what reached its disk survives."""
        del self.peers[name]
        self.group.pop(name, None)
        self.crashed_at[name] = self.now

    def partition(self, *groups: Iterable[int]) -> None:
        for i, g in enumerate(groups):
            for n in g:
                if n in self.group:
                    self.group[n] = i

    def heal(self) -> None:
        for n in self.group:
            self.group[n] = 0

    def neighbours(self, name: int) -> set[int]:
        near = self.reachable(name) - {name}
        return near if self.links is None else {n for n in near if frozenset((name, n)) in self.links}

    def reachable(self, name: int) -> set[int]:
        g = self.group.get(name)
        return {n for n, gn in self.group.items() if gn == g} if g is not None else set()

    # ---- driving ----------------------------------------------------------------------------------------

    def _flush(self, name: int) -> None:
        a = self.peers[name]
        changes = a.take_changes()
        disk = self.disks[name]
        if changes.ring and a.ring is not None:
            disk.ring = messages.encode_state(self.range, a.ring)
        if changes.consensus and a.consensus is not None:
            disk.claims = dict(a.consensus.claims)
        if changes.seen:
            self._mark_seen(name)
        if changes.orphans:
            disk.orphans = dict(a.orphans)
        if changes.leaving:
            disk.leaving = copy.deepcopy(a.leaving)
        for ip in changes.delete:
            disk.allocations.pop(ip, None)
        disk.allocations.update(changes.put)
        for e in a.take_effects():
            if isinstance(e, Gossip):
                self.queue.append(Pending(name, 0, e.data))
            elif isinstance(e, Unicast):
                self.queue.append(Pending(name, e.dst, e.data))
            elif isinstance(e, Log):
                self.logs.append((name, e.level, e.message))

    def _mark_seen(self, name: int) -> None:
        a = self.peers[name]
        self.disks[name].seen = {n: self.now - ago for n, ago in a.presence.seen_ago(self.now).items() if n != name}
        self.disks[name].shared = set(a.presence.shared)

    def step(self, dt: float = 0.1) -> None:
        self.now += dt
        queue, self.queue = self.queue, []
        for m in queue:
            targets = self.neighbours(m.src) if m.dst == 0 else {m.dst} & self.reachable(m.src)
            for dst in sorted(targets):
                if dst in self.peers:
                    self.messages += 1
                    self.bytes += len(m.data)
                    self.peers[dst].receive(m.src, m.data, self.now)
                    self._flush(dst)
        periodic = self.now >= self._next_gossip
        if periodic:
            self._next_gossip = self.now + self.gossip_interval
        mark = self.now >= self._next_mark
        if mark:
            self._next_mark = self.now + MARK_INTERVAL
        for name in sorted(self.peers):
            a = self.peers[name]
            here = self.reachable(name)
            a.set_reachable(here, self.now, {n: self.nickname[n] for n in here})
            a.tick(self.now)
            if a.has_quorum() and not a.resync:
                self.quorum_at[name] = self.now
            if mark:
                self._mark_seen(name)
            others = sorted(self.neighbours(name))
            if periodic and others:
                data = a.state_message()
                if data:
                    self.queue.append(Pending(name, self.rng.choice(others), data))
            self._flush(name)

    def run(self, seconds: float, dt: float = 0.1) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.step(dt)

    def run_until(self, pred: Callable[[], bool], timeout: float, dt: float = 0.1) -> float:
        """Step until `pred()`; returns the simulated seconds it took. AssertionError on timeout."""
        start = self.now
        while not pred():
            if self.now - start > timeout:
                raise AssertionError(f"not reached within {timeout} simulated seconds")
            self.step(dt)
        return self.now - start

    # ---- operations -------------------------------------------------------------------------------------

    def allocate(self, name: int, key: Key) -> int | None:
        ip = self.peers[name].allocate(key, self.now)
        self._flush(name)
        return ip

    def allocate_wait(self, name: int, key: Key, timeout: float = 30.0, dt: float = 0.1) -> int:
        """Allocate, retrying as a waiting API request would, until it succeeds."""
        got: list[int] = []

        def done() -> bool:
            ip = self.allocate(name, key)
            if ip is not None:
                got.append(ip)
            return bool(got)

        self.run_until(done, timeout, dt)
        return got[0]

    def release(self, name: int, container_id: str) -> list[int]:
        ips = self.peers[name].release(container_id)
        self._flush(name)
        return ips

    def remove(self, name: int) -> None:
        """The host is gone for good, with its disk and its pods (a removal with its state, or a re-imaged host)."""
        self.peers.pop(name, None)
        self.group.pop(name, None)
        self.disks.pop(name, None)

    def leave(self, name: int, *, force: bool = True, timeout: float = 10.0) -> bool:
        """`weave-node ipam leave` then removal: hand the space over, wait for a peer to confirm, remove the host.
        False (and nothing removed) when there is nobody to hand it to or nobody confirmed in time."""
        try:
            leaving = self.peers[name].leave(self.now, force=force)
        except (Conflict, Unavailable):
            return False
        finally:
            self._flush(name)
        try:
            self.run_until(lambda: leaving.acknowledged, timeout)
        except AssertionError:
            return False
        self.remove(name)
        return True

    def rmpeer(self, name: int, gone: int) -> int:
        n = self.peers[name].rmpeer(gone, self.now)
        self._flush(name)
        return n

    # ---- checks -----------------------------------------------------------------------------------------

    def rings(self) -> dict[int, Ring | None]:
        return {n: a.ring for n, a in self.peers.items()}

    def converged(self) -> bool:
        rings = [a.ring for a in self.peers.values()]
        return all(r is not None for r in rings) and all(r == rings[0] for r in rings)

    def check(self, *, include_down: bool = True, stale_ok: bool = False) -> None:
        """Invariants every test asserts after every step: each ring valid; every allocation inside the space
        its peer owns by its own ring; no address allocated by two peers (counting what crashed peers hold on
        disk: their pods still have those addresses).

        `stale_ok`: what the design promises when partitions outlast the grace period. A peer cut off that long
        is fenced (it hands out nothing) and its space is reclaimed; its pods keep their addresses until it is
        back and learns so (see `orphans`). So only peers that may hand out addresses now (not fenced, or down
        for less than half the grace period) are held to "no address twice"."""
        seen: dict[int, tuple[int, Key]] = {}
        if include_down:
            for name, disk in self.disks.items():
                stale = self.now - self.crashed_at.get(name, self.now) >= self.reclaim_after / 2
                if name not in self.peers and not (stale_ok and stale):
                    for ip, key in disk.allocations.items():
                        seen[ip] = (name, key)
        for name, a in self.peers.items():
            if a.ring is not None:
                a.ring.check_invariants()
            owned = a.owned()
            fenced = stale_ok and a.fenced(self.now)
            for key, ip in a.allocations.items():
                assert any(s <= ip < e for s, e in owned), f"{name:x} holds {ip} outside its space"
                if fenced:
                    continue
                assert ip not in seen, f"{ip} allocated twice: {seen[ip]} and {(name, key)}"
                seen[ip] = (name, key)
            for k, ip in a.orphans.items():  # a pod of ours still uses it: never handed out here to another
                assert ip not in a.by_ip, f"{name:x} handed out {ip}, which its pod {k} still uses"
            assert a.by_ip == {ip: k for k, ip in a.allocations.items()}
            assert a.space.used == sorted(a.by_ip)
