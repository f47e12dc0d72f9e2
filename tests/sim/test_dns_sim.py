"""The DNS records CRDT across many routers, simulated (fake network, no clock): every message goes through the
gossip format; partitions come and go while owners change their records; after healing everyone converges to
exactly the live records, and a peer that left stays gone even where a late gossip of it arrives."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.dns import wire
from weave_node.dns.records import Book, Record, Records

pytestmark = pytest.mark.sim
BASE = 0x0200_0000_0000


class DnsSim:
    def __init__(self, count: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.names = [BASE + i for i in range(1, count + 1)]
        self.peers = {n: Records(n) for n in self.names}
        self.groups = {n: 0 for n in self.names}
        self.clock = 1_000
        self.sent = 0

    def reachable(self, a: int, b: int) -> bool:
        return a != b and self.groups[a] == self.groups[b] and a in self.peers and b in self.peers

    def change(self, owner: int, names: list[str]) -> Book:
        self.clock += self.rng.randrange(1, 50)
        records = [Record(f"{name}.weave.local", 0x0A20_0000 + (owner & 0xFFFF) * 16 + i, f"c{i}/eth0")
                   for i, name in enumerate(names)]  # fmt: skip
        book = self.peers[owner].set_own(records, self.clock)
        self._spread(owner, [book])
        return book

    def _spread(self, src: int, books: list[Book]) -> None:
        """What changed goes to every reachable neighbour, and on from those it taught (gossip on change)."""
        queue = [(src, books)]
        while queue:
            at, news = queue.pop()
            for n in self.names:
                if self.reachable(at, n):
                    self.sent += 1
                    taken = self.peers[n].merge(wire.decode(wire.encode(news)), self.clock)
                    if taken:
                        queue.append((n, taken))

    def anti_entropy(self) -> None:
        """Each peer sends its whole state to one random reachable peer (the periodic gossip)."""
        for a in self.names:
            if a not in self.peers:
                continue
            others = [b for b in self.names if self.reachable(a, b)]
            if others:
                b = self.rng.choice(others)
                for message in wire.encode_chunks(self.peers[a].books.values(), budget=200):
                    taken = self.peers[b].merge(wire.decode(message), self.clock)
                    if taken:
                        self._spread(b, taken)

    def converged(self) -> bool:
        states = [p.books for p in self.peers.values()]
        return all(s == states[0] for s in states)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(5, 40))
def test_records_converge_after_partitions_and_every_live_name_resolves(seed: int, steps: int) -> None:
    sim = DnsSim(6, seed)
    rng = random.Random(seed)
    live: dict[int, list[str]] = {}
    for _ in range(steps):
        action = rng.random()
        if action < 0.1:  # a router restarts with its clock far behind: its records are what it says now
            owner = rng.choice(sim.names)
            sim.peers[owner] = Records(owner)
            sim.clock -= 10_000
            names = rng.sample(["web", "db", "cache", "api"], rng.randrange(0, 4))
            sim.change(owner, names)
            live[owner] = names
        elif action < 0.5:
            owner = rng.choice(sim.names)
            names = rng.sample(["web", "db", "cache", "api"], rng.randrange(0, 4))
            sim.change(owner, names)
            live[owner] = names
        elif action < 0.7:
            for n in sim.names:
                sim.groups[n] = rng.randrange(2)
        elif action < 0.8:
            sim.groups = dict.fromkeys(sim.names, 0)
        else:
            sim.anti_entropy()
    sim.groups = dict.fromkeys(sim.names, 0)
    for _ in range(20):
        if sim.converged():
            break
        sim.anti_entropy()
    assert sim.converged()
    for peer in sim.peers.values():
        for name in ("web", "db", "cache", "api"):
            want = sorted(
                0x0A20_0000 + (o & 0xFFFF) * 16 + names.index(name) for o, names in live.items() if name in names
            )
            assert peer.lookup(f"{name}.weave.local") == want


def test_a_peer_that_left_stays_gone_though_a_partitioned_peer_still_gossips_it() -> None:
    sim = DnsSim(4, 1)
    gone, cut = sim.names[3], sim.names[2]
    book = sim.change(gone, ["web"])
    assert all(p.lookup("web.weave.local") for p in sim.peers.values())
    sim.groups[cut] = 1  # `cut` is away while the others forget `gone` (its space reclaimed)
    del sim.peers[gone]
    for n, p in sim.peers.items():
        if n != cut:
            assert p.remove_owner(gone)
    sim.groups[cut] = 0  # back, still holding gone's book: it must not come back
    for _ in range(10):
        sim.anti_entropy()
    for n, p in sim.peers.items():
        if n != cut:
            assert p.lookup("web.weave.local") == []
    sim.peers[cut].remove_owner(gone)  # (the returning peer learns of the removal from the ring, as IPAM does)
    sim.anti_entropy()
    assert sim.converged() and all(p.lookup("web.weave.local") == [] for p in sim.peers.values())
    # The peer was not gone after all: it comes back with its pods, and its unchanged book (the version the
    # others removed) resolves again once they readmit it.
    sim.peers[gone] = Records(gone)
    sim.peers[gone].books[gone] = book
    for p in sim.peers.values():
        p.readmit(gone)
    for _ in range(10):
        sim.anti_entropy()
    assert sim.converged() and all(p.lookup("web.weave.local") for p in sim.peers.values())
