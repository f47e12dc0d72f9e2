"""Which link the sleeve sends a peer's frames on (pure): the mesh's unicast routes, computed over the topology
with our own connections limited to those whose sleeve link answers probes. A peer we have a TCP connection to
but no working UDP path (UDP filtered between us) is then reached through a neighbour that reaches both."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from weave_node.mesh.routes import unicast_routes
from weave_node.mesh.topology import PeerRecord


def sleeve_routes(
    records: Mapping[int, PeerRecord], me: int, usable: set[int], plain: frozenset[int] = frozenset()
) -> dict[int, int]:
    """Destination -> next hop, where every next hop is in `usable` (our links that work). A `plain` link (with a
    password, to a peer taken without one while encryption is switched) carries only that peer's own traffic:
    never another peer's, which would cross the wire in the clear."""
    own = records.get(me)
    if own is None:
        return {}
    sealed = usable - plain
    trimmed = dict(records)
    trimmed[me] = replace(own, connections=tuple(c for c in own.connections if c.peer in sealed))
    routes = {dst: hop for dst, hop in unicast_routes(trimmed, me).items() if hop in sealed}
    routes.update({p: p for p in usable & plain})
    return routes
