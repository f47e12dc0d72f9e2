"""Getting a ring (pure functions over an `Allocator`): the initial split among the seeds (`IPALLOC_INIT seed=`),
a consensus of the initial peers (`consensus=N`, proposed eagerly at start so IPAM is ready before the first pod
asks), or a peer's ring (an observer, a newcomer). A ring the store kept is a restart: reclaim.restarted."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from weave_node.ipam import messages
from weave_node.ipam.consensus import Claim, Consensus
from weave_node.ipam.errors import RingConflict
from weave_node.ipam.model import PROPOSE_RETRY, ring_id_for
from weave_node.ipam.reclaim import update_presence
from weave_node.ipam.ring import Ring

if TYPE_CHECKING:
    from weave_node.ipam.allocator import Allocator


def start(a: Allocator, claims: dict[int, Claim] | None, now: float) -> None:
    """No ring in the store: how to get one (seed, consensus, observer: from a peer)."""
    if a.init.mode == "seed":
        if a.me in a.init.seeds and set(a.init.seeds) - {a.me}:
            # We may be a seed whose state was lost, in a network that moved on since: the initial split may be
            # stale (space donated or reclaimed), and we remember nobody. Allocate only once synced with a peer
            # (or a majority of the seeds), and vouch only from now.
            a.resync = True
            a.presence.memory_lost(now)
        set_ring(a, Ring.initial(a.range, ring_id_for("seed", *sorted(a.init.seeds)), list(a.init.seeds)), now)
    elif a.init.mode == "consensus":
        a.consensus = Consensus(a.me, a.init.quorum, claims)
        a.consensus.propose()  # eagerly: IPAM is ready before the first pod asks
        a.consensus.last_progress = now
        a._changed(consensus=True)
        think(a, now)


def set_ring(a: Allocator, ring: Ring, now: float) -> None:
    a.ring = ring
    a.consensus = None
    update_presence(a, now)
    a._log(logging.INFO, f"IPAM ring ready: {a.range} split among {len(ring.owners())} peer(s)")
    a.free_dirty = True
    a._changed(ring=True, consensus=True)
    a._gossip()


def first_ring(a: Allocator, ring: Ring, now: float) -> None:
    """The first peer's ring we merge since our store was fresh."""
    if not a.fresh_store:
        return
    a.fresh_store = False
    if a.me in ring.owners() and not a.owned():
        # A peer's ring gives our name space we never had: an identity whose state was lost (a name fixed by
        # --name). Our memory of sightings went with it: vouch only from now.
        a.presence.memory_lost(now)


def merge_claims(a: Allocator, msg: messages.State, now: float) -> None:
    """A peer's state without a ring: its consensus claims while we bootstrap too, or (when we have a ring) a
    peer still bootstrapping, which our ring ends."""
    if msg.claims is not None and a.consensus is not None and a.ring is None:
        if msg.quorum != a.consensus.quorum:
            raise RingConflict(
                f"peer bootstraps with a quorum of {msg.quorum}, we with {a.consensus.quorum}: "
                "give every peer the same IPALLOC_INIT consensus=N"
            )
        if a.consensus.merge(msg.claims):
            a.consensus.last_progress = now
        think(a, now)
    elif a.ring is not None and msg.claims is not None:
        a._gossip()  # a peer still bootstrapping: our ring ends it


def tick(a: Allocator, now: float) -> None:
    """While bootstrapping by consensus: a new ballot after PROPOSE_RETRY without progress."""
    c = a.consensus
    if c is None or a.ring is not None:
        return
    if now - c.last_progress >= PROPOSE_RETRY and c.decision() is None:
        c.propose()
        c.last_progress = now
        a._changed(consensus=True)
        a._gossip()
    think(a, now)


def think(a: Allocator, now: float) -> None:
    c = a.consensus
    if c is None:
        return
    if c.think():
        c.last_progress = now
        a._changed(consensus=True)
        a._gossip()
    decision = c.decision()
    if decision is not None:
        ring_id = ring_id_for("consensus", *decision.value)  # the value only: two ballots may carry it
        set_ring(a, Ring.initial(a.range, ring_id, list(decision.value)), now)
