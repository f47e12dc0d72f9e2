"""Donation (pure): a peer out of space asks the reachable owner with the most free space, which gives half of
its largest free run. A peer that owns nothing becomes an owner this way, so that needs the donor's quorum; and
a donor never gives away its last address (an owner with nothing left stops counting towards the quorum)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from weave_node.core.address import span_str
from weave_node.ipam import messages
from weave_node.ipam.model import DONATION_RETRY, FREE_REPORT, WANT_TTL, Unicast
from weave_node.mesh.peer import format_name

if TYPE_CHECKING:
    from weave_node.ipam.allocator import Allocator


def wants_space(a: Allocator, now: float) -> bool:
    """An allocation asked recently (its caller retries), and our own space is full."""
    return (
        a.wanted_at is not None
        and a.leaving is None
        and now - a.wanted_at < WANT_TTL
        and a.ring is not None
        and not a.fenced(now)
        and a.space.find_free(a.owned(), a.cursor) is None
    )


def ask_for_space(a: Allocator, now: float) -> None:
    if a.ring is None or a.leaving is not None or (a.donor is not None and now < a.donor_deadline):
        return
    free = a.ring.reported_free()
    tried = a.donor
    candidates = sorted(
        (p for p in a.ring.owners() & a.reachable if p not in (a.me, tried) and free.get(p, 0) > 0),
        key=lambda p: (-free.get(p, 0), p),
    )
    if not candidates and tried is not None and tried in a.reachable and free.get(tried, 0) > 0:
        candidates = [tried]
    if not candidates:
        a.donor = None
        return
    a.donor = candidates[0]
    a.donor_deadline = now + DONATION_RETRY
    a._effects.append(Unicast(a.donor, messages.encode_request(a.range)))
    a._log(logging.INFO, f"out of space: asking peer {format_name(a.donor)} for a donation")


def note_received(a: Allocator, before: list[tuple[int, int]]) -> None:
    """After a merge: our space grew beyond `before` (what we owned), so a donation reached us."""
    if sum(e - s for s, e in a.owned()) > sum(e - s for s, e in before):
        a.counters["received"] += 1
        if a.donor is not None:
            a._log(logging.INFO, f"received space from peer {a.presence.who(a.donor)}")
        a.donor = None
        a.free_dirty = True


def donate(a: Allocator, src: int, now: float) -> None:
    if a.ring is None or src == a.me or a.fenced(now) or a.init.mode == "observer":
        return
    if src not in a.ring.owners() and not a.has_quorum():
        return  # a new owner needs a quorum's blessing: a cut-off minority must not grow into a "majority"
    run = a.space.largest_free_run([(s, e) for s, e, x in a.ring.spans() if x.owner == a.me])
    if run is None:
        report_free(a, now)
        return
    start, end = run
    if end - start >= 2:
        start += (end - start) // 2
    if sum(e - s for s, e in a.owned()) <= end - start:
        return  # never our last address: a peer that owns nothing stops counting towards the quorum
    before = a.ring.copy()
    a.ring.grant(start, end, src, a.me)
    a.ring.check_invariants(before)
    a.counters["donated"] += 1
    report_free(a, now)
    a._log(logging.INFO, f"donated {span_str(start, end)} ({end - start} addresses) to peer {format_name(src)}")
    a._changed(ring=True)
    a._effects.append(Unicast(src, a.state_message()))
    a._gossip()


def report_free(a: Allocator, now: float) -> None:
    """Our free counts into the ring (what donors are chosen by), at most every FREE_REPORT."""
    if a.ring is None:
        return
    free = {s: a.space.free_in(s, e) for s, e, entry in a.ring.spans() if entry.owner == a.me}
    if a.ring.report_free(a.me, free):
        a._ring_changed()
    a.free_dirty = False
    a.next_free_report = now + FREE_REPORT
