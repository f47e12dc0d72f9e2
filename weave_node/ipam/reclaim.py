"""Reclaim and fencing (pure functions over an `Allocator`): what Weave lacked, taking over the space of owners
that are gone without two peers ever handing out one address.

The owners reachable from us have *quorum* when they are more than half of the ring's owners (exactly half counts
when it holds the lowest-named owner), so at most one side of a partition has it. On the quorum side, the
lowest-named reachable owner takes over the space of an owner that a quorum of owners vouches has been away for
`reclaim_after` seconds (presence.py), or of one replaced on its host (a peer with its host name is here). On the
other side a peer stops allocating after `reclaim_after/2` ("fenced"), before anyone can have reclaimed its space,
and allocates again only after it has merged a peer's ring since quorum returned (a resync). A peer whose space
was reclaimed learns so and asks the new owner for the addresses its pods still use (orphans.py). The rules in
full: docs/architecture.md ("IPAM through host churn").
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from weave_node.ipam.errors import BadRequest, Conflict, Unavailable
from weave_node.ipam.model import REPLACED_AFTER, Unicast
from weave_node.mesh.peer import format_name

if TYPE_CHECKING:
    from weave_node.ipam.allocator import Allocator


def restarted(a: Allocator, away: float | None, now: float) -> None:
    """Back with the ring the store kept. Away long enough that our space may have been reclaimed: no allocation
    before we have merged a peer's ring. Back quickly (an upgrade, a crash): carry on, fencing as usual."""
    update_presence(a, now)
    if a.reclaim_after > 0 and a.ring is not None and a.ring.owners() - {a.me}:
        if away is None or away >= a.reclaim_after / 2:
            a.resync = True
        else:
            a.no_quorum_since = now - away


def note_sync(a: Allocator, src: int, unsynced: bool) -> None:
    """After merging `src`'s ring while resyncing: done once we have quorum and the peer was in sync itself (or we
    have merged the rings of a majority of the owners, ours included)."""
    if not a.resync or a.ring is None:
        return
    a.synced_from.add(src)
    owners = a.ring.owners()
    heard = len((a.synced_from | {a.me}) & owners)
    if a.has_quorum() and (not unsynced or 2 * heard > len(owners)):
        a.resync = False
        a.synced_from.clear()
        a._log(logging.INFO, "ring synced with a peer: allocating again")


def rmpeer(a: Allocator, peer: int, now: float) -> int:
    """`weave-node ipam rmpeer`: take over an unreachable peer's space at once; the number of addresses."""
    if a.ring is None:
        raise Unavailable("the ring is not initialised yet")
    if peer == a.me:
        raise BadRequest("cannot remove ourselves; run rmpeer on another peer")
    if a.init.mode == "observer":
        raise Conflict("an observer owns no space: run rmpeer on a peer that does")
    if peer in a.reachable:
        raise Conflict(f"peer {format_name(peer)} is reachable: stop it (or cut it off) first")
    before = a.ring.copy()
    moved = a.ring.transfer(peer, a.me)
    if moved:
        a.ring.check_invariants(before)
        a.counters["reclaimed"] += 1
        a._log(logging.WARNING, f"rmpeer: took over {moved} addresses of peer {a.presence.who(peer)}")
        a._ring_changed()
    return moved


def send_vouches(a: Allocator, now: float) -> None:
    """Our sightings to the reclaimer, every VOUCH_INTERVAL while an owner is away: gossip reaches neighbours
    only, and in a partial mesh the lowest-named owner may not be one of ours."""
    if a.ring is None:
        return
    owners = a.ring.owners()
    reclaimer = min(owners & a.reachable, default=None)
    if owners - a.reachable and reclaimer not in (None, a.me):
        a._effects.append(Unicast(reclaimer, a.state_message(now)))
    a.presence.prune(owners, now, 2 * a.reclaim_after)


def update_presence(a: Allocator, now: float) -> None:
    if a.ring is None:
        return
    a.presence.update(a.ring.owners(), now)
    end_lonely_resync(a, now)
    if a.has_quorum():
        # Absence clocks carry on: whether we were away or not, a reclaim waits for a quorum's vouches.
        if a.no_quorum_since is not None:
            if a.fenced(now):
                a.resync = True
                a._log(logging.INFO, "quorum of space owners reachable again: allocating after a ring sync")
            a.no_quorum_since = None
    elif a.no_quorum_since is None:
        a.no_quorum_since = now


def note_fence(a: Allocator, now: float) -> None:
    """One log line when we fence (with what the operator can do) and one when we allocate again."""
    fenced = a.ring is not None and a.fenced(now) and a.leaving is None
    if fenced == a.fence_logged or a.ring is None:
        return
    a.fence_logged = fenced
    if not fenced:
        a._log(logging.INFO, "IPAM unfenced: allocating again")
        return
    if a.resync:
        a._log(
            logging.WARNING,
            "IPAM fenced: away long enough that our space may have been reclaimed; allocating once the ring "
            "is synced with a peer",
        )
        return
    owners = a.ring.owners()
    away = sorted(owners - a.reachable)
    listed = ", ".join(f"{a.presence.who(o)} (unseen for {ago(a.presence.absent_for(o, now))})" for o in away[:8]) + (
        f" and {len(away) - 8} more" if len(away) > 8 else ""
    )
    a._log(
        logging.ERROR,
        f"IPAM fenced: only {len(owners & a.reachable)} of the {len(owners)} owners of the address space are "
        f"reachable, no allocation until a majority is back. Unreachable: {listed}. If those hosts are gone "
        "for good, run `weave-node ipam rmpeer <name>` for each of them on one live host",
    )


def ago(seconds: float) -> str:
    return "ever" if seconds == float("inf") else f"{seconds:.0f} s"


def end_lonely_resync(a: Allocator, now: float) -> None:
    if a.ring is None or not a.resync:
        a.resync_quorum_since = None
        return
    if a.ring.owners() <= {a.me}:
        a.resync = False  # nobody else owns space: nobody can have taken ours
    elif a.has_quorum() and a.reclaim_after > 0:
        # Quorum but nobody in sync to sync with: after a full grace period uncontradicted, trust our ring.
        if a.resync_quorum_since is None:
            a.resync_quorum_since = now
        if now - a.resync_quorum_since >= a.reclaim_after:
            a.resync = False
            a._log(logging.WARNING, "no peer to sync the ring with for a grace period: trusting ours")
    else:
        a.resync_quorum_since = None


def reclaim(a: Allocator, now: float) -> None:
    if a.reclaim_after <= 0 or a.ring is None or not a.has_quorum() or a.fenced(now):
        return
    if min(a.ring.owners() & a.reachable, default=None) != a.me:
        return
    here = reachable_by_name(a)
    for owner in sorted(a.ring.owners() - a.reachable):
        if not a.has_quorum():
            return
        successor = successor_of(a, owner, now, here)
        if successor is not None:
            why = (
                f"replaced by peer {a.presence.who(successor)}, which runs on its host (the same host name; "
                "WEAVE_NO_IPAM_RECLAIM_REPLACED=1 turns this off)"
            )
        else:
            away = a.presence.certified(owner, a.ring.owners(), now)
            if away < a.reclaim_after:
                continue
            why = (
                f"unreachable for {ago(away)}, as a majority of owners vouches "
                f"(--ipam-reclaim-after {a.reclaim_after:g})"
            )
        before = a.ring.copy()
        moved = a.ring.transfer(owner, a.me)
        a.ring.check_invariants(before)
        a.presence.update(a.ring.owners(), now)
        a.counters["reclaimed"] += 1
        a.free_dirty = True
        a._log(logging.WARNING, f"reclaimed {moved} addresses of peer {a.presence.who(owner)}: {why}")
        a._ring_changed()


def reclaim_deadlines(a: Allocator, now: float) -> list[float]:
    """When reclaim has something to do next: vouches to send; for the reclaimer, certified absences reaching
    reclaim_after (they grow with time until a vouch changes) and replaced owners' waits."""
    if a.ring is None:
        return []
    owners = a.ring.owners()
    away = owners - a.reachable
    if not away:
        return []
    times = [a.next_vouch]
    if min(owners & a.reachable, default=None) == a.me:  # only the reclaimer weighs vouches
        for owner in away:
            since = a.presence.since_quorum(owner, owners)
            if since is not None:
                times.append(since + a.reclaim_after)
            if a.reclaim_replaced and owner in a.presence.nicknames:
                times.append(now + REPLACED_AFTER - a.presence.absent_for(owner, now))
    return times


def reachable_by_name(a: Allocator) -> dict[str, list[int]]:
    here: dict[str, list[int]] = {}
    for p in a.reachable:
        here.setdefault(a.presence.nicknames.get(p, ""), []).append(p)
    return here


def successor_of(a: Allocator, owner: int, now: float, here: dict[str, list[int]]) -> int | None:
    """The one reachable peer (`here`: reachable peers by nickname) with the host name of the absent `owner`: the
    same host, re-imaged or re-installed with a new identity, so the old one can never come back. Host names must
    be unique in the cluster (as Kubernetes requires of node names); a name ever seen on two live peers at once
    (`presence.shared`) never names a successor."""
    nick = a.presence.nicknames.get(owner, "")
    if not a.reclaim_replaced or not nick or nick in a.presence.shared:
        return None
    if a.presence.absent_for(owner, now) < REPLACED_AFTER:
        return None
    same = [p for p in here.get(nick, ()) if p != owner]
    return same[0] if len(same) == 1 else None
