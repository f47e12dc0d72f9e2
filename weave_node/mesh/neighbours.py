"""What the mesh tells other subsystems about its neighbours (pure): immutable values, no sockets or
connection state, so that the overlay reads addresses and keys without reaching into the router."""

from __future__ import annotations

from dataclasses import dataclass

from weave_node.mesh.crypto import SessionKeys


@dataclass(frozen=True)
class Neighbour:
    """One established connection, as seen when it was asked for."""

    name: int  # the peer
    remote_address: str  # the peer's IP address as our socket sees it ("" when not an IP connection)
    local_address: str  # our IP address on that connection ("" likewise)
    features: frozenset[str]  # what both ends can do (the intersection)
    sleeve_keys: SessionKeys | None  # per-connection keys for the sleeve (encrypted connections only)
    encrypted: bool = True  # the connection is encrypted (with a password, only a peer taken while
    # WEAVE_ACCEPT_UNENCRYPTED is on has a plaintext one); True unless known otherwise (the safe side)
    peer_password: bool = False  # the peer has a password (ours is a plaintext connection to it: no fastdp there)


def socket_host(info: object) -> str:
    """The host of a socket address as asyncio reports it (a tuple), or "" for anything else."""
    return str(info[0]) if isinstance(info, tuple) and info else ""
