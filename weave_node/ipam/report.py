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


def waiting_reason(a: Allocator, now: float) -> str:  # noqa: PLR0911 - one answer per state
    """Why `a` cannot allocate now ("" if it can): the status's "waiting", and what a request that timed out says."""
    if a.init.mode == "observer" and a.ring is None:
        return "observer: waiting for another peer to initialise the ring"
    if a.ring is None and a.consensus is not None:
        c = a.consensus
        have = sum(1 for cl in c.claims.values() if cl.promise == c.highest_ballot())
        return f"awaiting consensus: {c.quorum} of {a.init.peers} peers needed, {have} agree so far"
    if a.ring is None:
        return "waiting for the ring"
    if a.init.mode == "observer":
        return "observer: owns no space"
    if a.leaving is not None:
        lv = a.leaving
        if not lv.receiver:
            return "left the ring (it owned no address space)"
        return f"left the ring: handed {lv.addresses} addresses to peer {a.presence.who(lv.receiver)}"
    if a.fenced(now):
        return "fenced: cut off from a majority of the space's owners" + (
            " (waiting to sync the ring)" if a.resync else ""
        )
    if a.donor is not None:
        return f"out of space: asked peer {format_name(a.donor)} for a donation"
    if a.wanted_at is not None and not a.space.find_free(a.owned(), a.cursor):
        return "out of space: no reachable peer has free space"
    return ""
