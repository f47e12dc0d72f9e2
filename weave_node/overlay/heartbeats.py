"""The heartbeats' UDP sockets (the shell around overlay.health): bound to our bridge address, they send what
`Health` says is due to each peer's bridge address and hand `Health` what arrives from a peer's own bridge
address and port. The plain socket's packets cross the VXLAN tunnel; the second one (direct mode) is marked
DIRECT_MARK, which one policy rule sends to the table of direct probe routes: over the underlay, unencapsulated,
or nowhere. Both share the port (SO_REUSEPORT); either may receive any heartbeat."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from weave_node.datapath.model import DIRECT_MARK
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
        self._direct: asyncio.DatagramTransport | None = None  # marked: the direct probes

    def receive(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        msg = decode_heartbeat(data)
        # Only from the sender's own bridge address and port: a pod cannot keep a dead peer looking alive.
        if msg is not None and addr[1] == HEARTBEAT_PORT and self.peers.get(msg.src) == addr[0]:
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
            plain = _socket(ip, None)
            try:
                marked = _socket(ip, DIRECT_MARK)
            except OSError:
                plain.close()  # (a socket left open would keep a share of the port's datagrams)
                raise
        except OSError as exc:
            log.error("heartbeats: cannot bind %s:%d: %s", ip, HEARTBEAT_PORT, exc.strerror)
            return
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=plain)
        self._direct, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=marked)
        self.bound = ip

    def send_due(self, now: float) -> None:
        if self._transport is None or self._direct is None:
            return
        for name, payload, direct in self.health.due(now):
            dst = self.peers.get(name)
            if dst:
                (self._direct if direct else self._transport).sendto(payload, (dst, HEARTBEAT_PORT))

    def close(self) -> None:
        for transport in (self._transport, self._direct):
            if transport is not None:
                transport.close()
        self._transport, self._direct, self.bound = None, None, None


def _socket(ip: str, mark: int | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.bind((ip, HEARTBEAT_PORT))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
