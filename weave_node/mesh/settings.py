"""What the mesh needs to know from the operator (pure): a small typed value the composition root builds from
the daemon's configuration, so that the mesh depends on no configuration parser (nor on what it imports)."""

from __future__ import annotations

from dataclasses import dataclass

from weave_node.core.address import PeerAddress
from weave_node.core.facts import DEFAULT_MESH_PORT

DEFAULT_CONN_LIMIT = 100
DEFAULT_GOSSIP_INTERVAL = 10.0


@dataclass(frozen=True)
class MeshSettings:
    port: int = DEFAULT_MESH_PORT
    listen_host: str = "0.0.0.0"  # noqa: S104 - peers connect from other hosts by design
    peers: tuple[PeerAddress, ...] = ()  # whom to dial at start (and keep dialling)
    conn_limit: int = DEFAULT_CONN_LIMIT  # established connections at most
    gossip_interval: float = DEFAULT_GOSSIP_INTERVAL  # seconds between anti-entropy rounds
