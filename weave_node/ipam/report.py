"""The IPAM part of the status document (pure): what `weave-node status ipam`, /status and the metrics show."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from weave_node.core.address import ip_str, span_str
from weave_node.mesh.peer import format_name

if TYPE_CHECKING:
    from weave_node.ipam.allocator import Allocator


def status(a: Allocator, now: float) -> dict[str, Any]:
    owned = a.owned()
    size = sum(a.space.usable_in(s, e) for s, e in owned)
    used = len(a.allocations)
    doc: dict[str, Any] = {
        "range": str(a.range),
        "init": a.init.mode if a.init.mode != "consensus" else f"consensus={a.init.peers}",
        "ready": a.ready(now),
        "waiting": a.waiting_reason(now),
        "owned": size,
        "used": used,
        "free": size - used,
        "used_percent": round(100.0 * used / size, 2) if size else 0.0,
        "counters": dict(a.counters),
        "owners": [],
    }
    if a.ring is not None:
        free = a.ring.reported_free()
        owners = a.ring.owners()
        for owner, n in sorted(a.ring.sizes().items()):
            absent = a.presence.absent_for(owner, now)
            certified = a.presence.certified(owner, owners, now)
            doc["owners"].append(
                {
                    "peer": owner,
                    "nickname": a.presence.nicknames.get(owner, ""),
                    "size": n,
                    "free_reported": free.get(owner, 0),
                    "reachable": owner in a.reachable,
                    # None: never seen by us (we joined after it went away)
                    "unreachable_for": round(absent, 1) if absent != float("inf") else None,
                    "certified_absent": round(certified, 1) if certified != float("inf") else None,
                    "ranges": [span_str(s, e) for s, e in a.ring.owned(owner)][:8],
                }
            )
        doc["orphans"] = [
            {
                "ip": ip_str(ip),
                "container_id": k.container_id,
                "ifname": k.ifname,
                "state": "conflict" if k in a.conflicts else "asking",
                "owner": a.ring.owner_of(ip),
            }
            for k, ip in sorted(a.orphans.items())
        ]
        if a.leaving is not None:
            doc["leaving"] = {
                "handed_to": a.leaving.receiver,
                "addresses": a.leaving.addresses,
                "acknowledged": a.leaving.acknowledged,
            }
    elif a.consensus is not None:
        c = a.consensus
        doc["consensus"] = {
            "quorum": c.quorum,
            "ballot": list(c.highest_ballot()),
            "claims": {format_name(n): [list(cl.promise), list(cl.accepted)] for n, cl in sorted(c.claims.items())},
        }
    return doc
