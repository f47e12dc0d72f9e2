"""Routes over the topology: unicast next hops and broadcast trees. Pure functions of the records.

An edge A-B exists only when A's record lists B as established *and* B's record lists A as established: a
one-sided claim (a connection still being set up, or a stale record of a dead peer) never carries traffic.

Ties are broken by the lowest peer name, so every peer computes the same trees from the same records:
- unicast: among all shortest paths from `local` to a peer, the next hop is the lowest-named first hop;
- broadcast: the tree rooted at `source` gives every peer, as parent, its lowest-named neighbour one hop closer
  to `source`. Each peer forwards a broadcast from `source` to its children in that tree only, so every peer
  reachable from `source` receives it exactly once, whatever the shape of the mesh.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from weave_node.mesh.topology import PeerRecord


def neighbours(records: Mapping[int, PeerRecord], name: int) -> list[int]:
    """The peers with a symmetric established edge to `name`, sorted."""
    record = records.get(name)
    if record is None:
        return []
    out = []
    for m in record.established:
        other = records.get(m)
        if other is not None and name in other.established:
            out.append(m)
    out.sort()
    return out


def _distances(records: Mapping[int, PeerRecord], root: int) -> tuple[dict[int, int], dict[int, list[int]]]:
    """BFS from `root`: hop counts of every reachable peer, and the neighbour lists computed on the way."""
    dist = {root: 0}
    adj: dict[int, list[int]] = {}
    queue = deque([root])
    while queue:
        x = queue.popleft()
        adj[x] = neighbours(records, x)
        for y in adj[x]:
            if y not in dist:
                dist[y] = dist[x] + 1
                queue.append(y)
    return dist, adj


def unicast_routes(records: Mapping[int, PeerRecord], local: int) -> dict[int, int]:
    """Next hop (a direct neighbour of `local`) for every peer reachable from `local`; `local` itself excluded."""
    if local not in records:
        return {}
    dist, adj = _distances(records, local)
    hop: dict[int, int] = {}
    for x in sorted(dist, key=dist.__getitem__):  # by distance: every predecessor is done first
        d = dist[x]
        if d == 1:
            hop[x] = x
        elif d > 1:
            hop[x] = min(hop[y] for y in adj[x] if dist[y] == d - 1)
    return hop


def broadcast_next_hops(records: Mapping[int, PeerRecord], source: int, local: int) -> list[int]:
    """The neighbours `local` forwards a broadcast from `source` to: its children in the tree rooted at `source`."""
    if source not in records or local not in records:
        return []
    dist, adj = _distances(records, source)
    if local not in dist:
        return []
    d = dist[local]
    children = []
    for x in adj[local]:
        if dist.get(x) == d + 1 and min(y for y in adj[x] if dist[y] == d) == local:
            children.append(x)
    return children
