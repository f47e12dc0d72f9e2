"""What the overlay tells the sleeve's forwarder (`Config`, a `LinkSpec` per direct neighbour) and what the
forwarder reports about each link (`LinkStatus`): values, shared by the forwarder, sleeve/plan.py and status."""

from __future__ import annotations

from dataclasses import dataclass, field

from weave_node.mesh.crypto import SessionKeys
from weave_node.overlay.sleeve.codec import MODE_SECRETBOX

PORT = 6783  # UDP, every router


@dataclass(frozen=True)
class LinkSpec:
    """A direct neighbour in the mesh: where its sleeve listens and the keys of our connection to it."""

    peer: int
    address: str
    keys: SessionKeys | None = None  # None: no password, plain datagrams
    max_datagram: int = 1472  # from the underlay route's MTU
    cipher: int = MODE_SECRETBOX  # or MODE_AESGCM when both ends have it (a mesh feature)

    def same_session(self, other: LinkSpec) -> bool:
        return self.address == other.address and self.keys == other.keys and self.cipher == other.cipher


@dataclass(frozen=True)
class Config:
    links: dict[int, LinkSpec] = field(default_factory=dict)
    routes: dict[int, int] = field(default_factory=dict)  # destination peer -> the link (next hop) to use
    sleeve: frozenset[int] = frozenset()  # destinations whose frames the TAP hands us (flooded to all of them)
    blocked_macs: frozenset[bytes] = frozenset()  # bridges' MACs: their traffic (heartbeats) stays in VXLAN
    # Peers whose pod traffic the kernel carries here (fastdp or direct, confirmed): a frame of theirs arriving
    # through the sleeve is late, and is not given to the bridge (it would learn their pod's MAC behind the TAP).
    kernel_peers: frozenset[int] = frozenset()


@dataclass
class LinkStatus:
    up: bool
    segment_size: int
    verified: int | None
    last_ack_ago: float | None
    cipher: str
