"""The heartbeats' UDP socket (the shell around overlay.health): bound to our bridge address, it sends what
`Health` says is due to each peer's bridge address and hands `Health` what arrives from a peer's own bridge
address and port. Inside the overlay only: the packets cross the VXLAN tunnel, never the underlay as such."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from weave_node.overlay.health import Health
from weave_node.overlay.health import decode as decode_heartbeat

log = logging.getLogger("weave_node.overlay")
HEARTBEAT_PORT = 6785


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: HeartbeatSocket) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner.receive(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("heartbeat socket: %s", exc)


class HeartbeatSocket:
    def __init__(self, health: Health, clock: Callable[[], float]) -> None:
        self.health = health
        self.clock = clock
        self.peers: dict[int, str] = {}  # peer -> its bridge address: whom we send to and hear from
        self.bound: str | None = None
        self._transport: asyncio.DatagramTransport | None = None

    def receive(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        msg = decode_heartbeat(data)
        # Only from the sender's own bridge address and port: a pod cannot keep a dead peer looking alive.
        if msg is not None and addr[1] == HEARTBEAT_PORT and self.peers.get(msg[0]) == addr[0]:
            self.health.receive(data, self.clock())

    async def bind(self, ip: str | None) -> None:
        """Listen on `ip` (None: not at all); a no-op when already there."""
        if ip == self.bound:
            return
        self.close()
        if ip is None:
            return
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(ip, HEARTBEAT_PORT))
        except OSError as exc:
            log.error("heartbeats: cannot bind %s:%d: %s", ip, HEARTBEAT_PORT, exc.strerror)
            return
        self._transport, self.bound = transport, ip

    def send_due(self, now: float) -> None:
        if self._transport is None:
            return
        for name, payload in self.health.due(now):
            dst = self.peers.get(name)
            if dst:
                self._transport.sendto(payload, (dst, HEARTBEAT_PORT))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport, self.bound = None, None
