"""One TCP connection of the router and its protocol state (the shell's side: a StreamWriter, a closed event)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from weave_node.core.address import PeerAddress
from weave_node.mesh.peer import format_name
from weave_node.mesh.protocol import Connection


@dataclass(eq=False)
class PeerConn:
    """One TCP connection and its protocol state."""

    conn: Connection
    writer: asyncio.StreamWriter
    outbound: bool
    socket_addr: str  # the remote end as seen by the socket
    target: PeerAddress | None = None  # what we dialled (outbound only)
    established_at: float = 0.0
    failure: str = ""
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> int | None:
        """The remote peer, once the handshake is done."""
        remote = self.conn.remote
        return remote.identity.name if remote else None

    @property
    def nickname(self) -> str:
        remote = self.conn.remote
        return remote.identity.nickname if remote else ""

    @property
    def address(self) -> str:
        """What we dialled, or where an inbound connection came from."""
        return str(self.target) if self.target else self.socket_addr

    @property
    def label(self) -> str:
        who = f" {format_name(self.name)}({self.nickname})" if self.name is not None else ""
        return f"{'->' if self.outbound else '<-'}[{self.address}]{who}"


def peerhost(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


def peername(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)
