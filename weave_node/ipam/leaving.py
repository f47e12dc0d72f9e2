"""Leaving (pure functions over an `Allocator`): before a host is removed for good, we hand all our space to a
reachable peer, so an identity that goes away never counts against the quorum (owners that die without leaving
are what reclaim.py is for). The rules: docs/architecture.md ("IPAM through host churn")."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from weave_node.ipam.errors import Conflict, Unavailable
from weave_node.ipam.model import DONATION_RETRY, INTERNAL_PREFIX, Leaving, Unicast
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
    a._log(logging.WARNING, f"leaving: handed our {size} addresses to peer {a.presence.who(lv.receiver)}")
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
    lv = a.leaving
    if lv is not None:
        to = f"handed its space to peer {a.presence.who(lv.receiver)}" if lv.receiver else "it owned nothing"
        raise Unavailable(
            f"this peer left the ring ({to}): to join again, start it as a new peer (remove its state directory)"
        )


def check_hand_over(a: Allocator, src: int, ring: Ring) -> None:
    lv = a.leaving
    if lv is None or lv.acknowledged or src == a.me or not lv.entries:
        return
    if all(t in ring.entries and ring.entries[t].rank() >= rank for t, rank in lv.entries.items()):
        lv.acknowledged = True
        a._changes.leaving = True
        a._log(logging.INFO, f"hand-over acknowledged: peer {a.presence.who(src)} has our former space")
