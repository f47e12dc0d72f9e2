"""The overlay's gossip shell (a mesh.gossip.Gossiper on the "overlay" channel): what we tell the other routers
about our end of the overlay (our PeerInfo: bridge address, bridge MAC, underlay address) and what they told us,
merged by overlay.peers. News is reported to `on_news` (the overlay reconciles)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from weave_node.core.address import Range
from weave_node.datapath.model import bridge_mac
from weave_node.mesh.gossip import GossipChannel
from weave_node.overlay import peers as overlay_peers
from weave_node.overlay.peers import PeerInfo, PeerTable


class PeerGossip:
    def __init__(self, me: int, pod_range: Range, wall_ns: Callable[[], int], on_news: Callable[[], None]) -> None:
        self.me, self.pod_range, self.wall_ns, self.on_news = me, pod_range, wall_ns, on_news
        self.table = PeerTable()
        self.mine = PeerInfo(me, wall_ns(), "", 0, bridge_mac(me), "")
        self.table.merge([self.mine])
        self.channel: GossipChannel | None = None

    def attach(self, channel: GossipChannel) -> None:
        self.channel = channel

    def on_gossip(self, src: int, data: bytes) -> bytes | None:
        news = self._merge(overlay_peers.decode(data))
        return overlay_peers.encode(news) if news else None

    def on_broadcast(self, src: int, data: bytes) -> None:
        self._merge(overlay_peers.decode(data))

    on_unicast = on_broadcast

    def gossip_state(self) -> bytes | None:
        return overlay_peers.encode(self.table.infos.values())

    def _merge(self, infos: list[PeerInfo]) -> list[PeerInfo]:
        merged = overlay_peers.merge(self.table, infos, self.mine, self.pod_range)
        if merged.mine is not None:
            self._set_mine(merged.mine)
        if merged.news:
            self.on_news()
        return merged.news

    def _set_mine(self, info: PeerInfo) -> None:
        self.mine = info
        self.table.infos[self.me] = info
        if self.channel is not None:
            self.channel.gossip(overlay_peers.encode([info]))

    def update_mine(self, **changes: Any) -> None:
        """Our PeerInfo changed (a version above the last, gossiped), or nothing when nothing did."""
        new = overlay_peers.updated(self.mine, replace(self.mine, **changes), self.wall_ns())
        if new is not None:
            self._set_mine(new)

    def advertise(self, bridge_cidr: str | None) -> None:
        """Our bridge address in our PeerInfo (peers install entries for it: the shell calls it with fastdp)."""
        if bridge_cidr:
            ip, prefix = bridge_cidr.split("/")
            self.update_mine(bridge_ip=ip, prefix=int(prefix))
