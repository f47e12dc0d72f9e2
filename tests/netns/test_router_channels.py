"""Three in-process routers on loopback, forced into a chain by their connection limits: topology, routes,
and gossip channels (unicast relayed over two hops, broadcast delivered once everywhere, gossip merged)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from weave_node.core.address import PeerAddress
from weave_node.mesh.protocol import Identity, ProtocolConfig
from weave_node.mesh.router import Router
from weave_node.mesh.settings import MeshSettings


class SetGossiper:
    """A grow-only set of ints: the smallest useful GossipData."""

    def __init__(self) -> None:
        self.items: set[int] = set()
        self.unicasts: list[tuple[int, bytes]] = []
        self.broadcasts: list[tuple[int, bytes]] = []

    @staticmethod
    def encode(items: set[int]) -> bytes:
        return b",".join(str(i).encode() for i in sorted(items))

    def on_gossip(self, src: int, data: bytes) -> bytes | None:
        new = {int(x) for x in data.split(b",") if x} - self.items
        self.items |= new
        return self.encode(new) if new else None

    def on_unicast(self, src: int, data: bytes) -> None:
        self.unicasts.append((src, data))

    def on_broadcast(self, src: int, data: bytes) -> None:
        self.broadcasts.append((src, data))

    def gossip_state(self) -> bytes | None:
        return self.encode(self.items) if self.items else None


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def scenario() -> None:
    pc = ProtocolConfig(heartbeat_interval=0.5, heartbeat_timeout=1.5)
    routers: list[Router] = []
    gossipers: list[SetGossiper] = []

    async def start(i: int, limit: int, peer: Router | None) -> Router:
        peers = (PeerAddress("127.0.0.1", peer.listen_port),) if peer else ()
        cfg = MeshSettings(port=0, listen_host="127.0.0.1", peers=peers, conn_limit=limit, gossip_interval=0.5)
        r = Router(cfg, Identity(name=0x020000000000 + i, nickname=f"r{i}", uid=1000 + i), pc, rng=random.Random(i))
        g = SetGossiper()
        r.register_channel("test", g)
        await r.start()
        routers.append(r)
        gossipers.append(g)
        return r

    try:
        r1 = await start(1, 1, None)
        r2 = await start(2, 2, r1)
        r3 = await start(3, 1, r2)
        n1, n2, n3 = (r.identity.name for r in routers)
        await until(lambda: all(len(r.topology.records) == 3 for r in routers), 10, "3 peers everywhere")
        await until(lambda: r1.routes.get(n3) == n2 and r3.routes.get(n1) == n2, 10, "routes via r2")
        assert set(r1.established) == {n2} and set(r3.established) == {n2}  # limits keep it a chain
        for r in routers:
            r.topology.check_invariants()

        ch1 = r1.register_channel("other", SetGossiper())
        assert ch1.name == "other"
        assert r1.send_unicast("test", n3, b"hello r3")
        await until(lambda: gossipers[2].unicasts == [(n1, b"hello r3")], 5, "unicast over two hops")
        assert gossipers[1].unicasts == []  # r2 only relayed it

        r3.send_broadcast("test", b"to all")
        await until(lambda: all(g.broadcasts == [(n3, b"to all")] for g in gossipers[:2]), 5, "broadcast")
        assert gossipers[2].broadcasts == []  # not delivered back to its source

        gossipers[0].items.add(7)
        r1.send_gossip("test", SetGossiper.encode({7}))
        await until(lambda: 7 in gossipers[2].items, 5, "gossip passed on by r2")
        gossipers[2].items.add(9)  # not announced: anti-entropy (periodic gossip) must carry it
        await until(lambda: 9 in gossipers[0].items, 10, "periodic gossip")

        await r2.stop()  # the bridge goes: r1 and r3 lose each other and forget r2
        await until(lambda: len(r1.topology.records) == 1 and len(r3.topology.records) == 1, 10, "gc after loss")
        assert not r1.send_unicast("test", n3, b"x")  # unreachable now
    finally:
        for r in routers:
            await r.stop()


def test_chain_of_three_routes_relays_and_gossips() -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))
