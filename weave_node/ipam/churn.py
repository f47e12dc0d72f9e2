"""Membership through churn (pure functions over an `Allocator`): leaving with a hand-over, presence and fencing,
reclaim of owners that are gone (vouched by a quorum, or replaced on their host). The rules: allocator.py's
module docstring and docs/architecture.md ("IPAM through host churn")."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from weave_node.ipam.errors import Conflict, Unavailable
from weave_node.ipam.model import DONATION_RETRY, INTERNAL_PREFIX, REPLACED_AFTER, Leaving, Unicast
from weave_node.ipam.ring import Ring
from weave_node.mesh.peer import format_name

if TYPE_CHECKING:
    from weave_node.ipam.allocator import Allocator


def leave(a: Allocator, now: float, *, force: bool = False) -> Leaving:
    """Hand all our space to a reachable peer before this peer is removed for good (Weave's `weave reset`):
    the identity then owns nothing, so its going away costs the others no quorum and no reclaim wait. Done once
    a peer's ring shows the hand-over (`leaving.acknowledged`); a peer that owned nothing is done at once. Kept
    in the store: a router restarted before the end carries on, and a peer that left never asks for space."""
    if a.leaving is not None:
        return a.leaving
    if a.ring is None:
        raise Unavailable("the ring is not initialised yet: there is no space to hand over")
    pods = sorted(k for k in a.allocations if not k.container_id.startswith(INTERNAL_PREFIX))
    if pods and not force:
        raise Conflict(
            f"{len(pods)} address(es) here are still in use by pods ({', '.join(k.container_id for k in pods[:5])}"
            f"{', ...' if len(pods) > 5 else ''}): remove those pods first, or force it (their pods must not keep "
            "running, or their addresses answer twice)"
        )
    owned = a.owned()
    size = sum(e - s for s, e in owned)
    receiver = choose_receiver(a, a.ring, now) if owned else 0
    if receiver is None:
        raise Conflict(
            f"no reachable peer to hand our {size} addresses to. Once this host is gone, they return "
            f"{a.reclaim_after:g} s later if a majority of the space's owners stays connected, or at once "
            f"with `weave-node ipam rmpeer {format_name(a.me)}` on a live host"
        )
    for key in sorted(a.allocations):
        a._drop(key)
    # Space may still be on its way to us (a donation we asked for, addresses asked back): wait for it a moment,
    # to hand it on, before we call it done. And never ask for space again.
    in_flight = a.donor is not None or bool(a.orphans)
    a.wanted_at = a.donor = None
    a.orphans.clear()
    a.conflicts.clear()
    a._changes.orphans = True
    a.leaving = Leaving(receiver, 0, {}, acknowledged=not owned and not in_flight, resend_at=now + DONATION_RETRY)
    a._changes.leaving = True
    if owned:
        hand_over(a, now)
    else:
        a._log(logging.WARNING, "left the ring: this peer owns no address space")
    return a.leaving


def hand_over(a: Allocator, now: float) -> None:
    """Our space (all of it, or what reached us since we left) to the leaving receiver."""
    lv = a.leaving
    if lv is None or a.ring is None or not a.owned():
        return
    if lv.receiver == 0:  # owned nothing when we left, and a donation reached us since: to anyone who can take it
        receiver = choose_receiver(a, a.ring, now)
        if receiver is None:
            return
        lv.receiver = receiver
    size = sum(e - s for s, e in a.owned())
    lv.addresses += size
    before = a.ring.copy()
    a.ring.hand_over(a.me, lv.receiver)
    a.ring.check_invariants(before)
    lv.entries.update(
        {e.token: e.rank() for e in a.ring if e.owner == lv.receiver and before.entries.get(e.token) != e}
    )
    lv.acknowledged = False
    lv.resend_at = now + DONATION_RETRY
    a._changes.leaving = True
    a.counters["handed_over"] += 1
    a._log(logging.WARNING, f"leaving: handed our {size} addresses to peer {who(a, lv.receiver)}")
    a._ring_changed()
    a._effects.append(Unicast(lv.receiver, a.state_message(now)))


def resend_hand_over(a: Allocator, now: float) -> None:
    lv = a.leaving
    if lv is None or lv.acknowledged or now < lv.resend_at:
        return
    if lv.receiver == 0 and not a.owned():  # nothing arrived while we waited: done
        lv.acknowledged = True
        a._changes.leaving = True
    elif lv.receiver in a.reachable:
        lv.resend_at = now + DONATION_RETRY
        a._effects.append(Unicast(lv.receiver, a.state_message(now)))


def choose_receiver(a: Allocator, ring: Ring, now: float) -> int | None:
    """Who takes our space when we leave: the reachable owner with the least space (it fills up first), else a
    reachable peer that has a ring (a non-owner: then the number of owners stays the same)."""
    sizes = ring.sizes()
    owners = sorted((sizes[p], p) for p in (ring.owners() & a.reachable) - {a.me})
    if owners:
        return owners[0][1]
    others = sorted((a.ipam_peers & a.reachable) - {a.me})
    # A new owner for an old one: only with a quorum, as for a donation (the lowest name, which breaks ties
    # between halves, could change sides).
    return others[0] if others and a.has_quorum() and not a.fenced(now) else None


def refuse_if_left(a: Allocator) -> None:
    if a.leaving is not None:
        to = f"handed its space to peer {who(a, a.leaving.receiver)}" if a.leaving.receiver else "it owned nothing"
        raise Unavailable(
            f"this peer left the ring ({to}): to join again, start it as a new peer (remove its state directory)"
        )


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


def who(a: Allocator, peer: int) -> str:
    nick = a.presence.nicknames.get(peer)
    return f"{format_name(peer)} ({nick})" if nick else format_name(peer)


def check_hand_over(a: Allocator, src: int, ring: Ring) -> None:
    lv = a.leaving
    if lv is None or lv.acknowledged or src == a.me or not lv.entries:
        return
    if all(t in ring.entries and ring.entries[t].rank() >= rank for t, rank in lv.entries.items()):
        lv.acknowledged = True
        a._changes.leaving = True
        a._log(logging.INFO, f"hand-over acknowledged: peer {who(a, src)} has our former space")


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
    listed = ", ".join(f"{who(a, o)} (unseen for {ago(a.presence.absent_for(o, now))})" for o in away[:8]) + (
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
                f"replaced by peer {who(a, successor)}, which runs on its host (the same host name; "
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
        a._log(logging.WARNING, f"reclaimed {moved} addresses of peer {who(a, owner)}: {why}")
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
