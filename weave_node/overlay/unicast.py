"""A mesh channel used for unicast messages between two peers only (the ESP and WireGuard runtimes): nothing is
gossiped or broadcast on it."""

from __future__ import annotations

from collections.abc import Iterable

from weave_node.mesh.gossip import GossipChannel


class UnicastOnly:
    channel: GossipChannel | None

    def on_gossip(self, src: int, data: bytes) -> bytes | None:
        return None

    def on_broadcast(self, src: int, data: bytes) -> None:
        return None

    def gossip_state(self) -> bytes | None:
        return None

    def _send(self, sends: Iterable[tuple[int, bytes]]) -> None:
        if self.channel is None:
            return
        for dst, data in sends:
            self.channel.unicast(dst, data)
