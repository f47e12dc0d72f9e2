"""The IPAM state machine of one peer (pure, driven by `now`): ring, bootstrap, allocations, donation, reclaim.

Inputs are method calls (allocate/claim/release/rmpeer, `receive` for channel messages, `set_reachable` for the
topology, `tick`); outputs are collected in an outbox (`take_effects`: gossip, unicast, log lines) and a change
set for the store (`take_changes`). The shell persists the change set before it sends any effect or answers
any request, so nothing we say was ever forgotten by a crash.

Reclaim and fencing (what Weave lacked): the owners reachable from us have *quorum* when they are more than
half of the ring's owners (exactly half counts when it holds the lowest-named owner), so at most one side of a
partition has it. On the quorum side, the lowest-named reachable owner takes over the space of an owner that a
quorum of owners vouches has been away for `reclaim_after` seconds (presence.py). On the other side a peer stops
allocating after `reclaim_after/2` ("fenced"), before anyone can have reclaimed its space, and allocates again
only after it has merged a peer's ring since quorum returned. A peer whose space was reclaimed learns so, asks
the new owner for the addresses its pods still use (orphans.py), and asks for space anew. Only a peer with
quorum gives space to a peer that owns none (a new owner): otherwise a cut-off minority could grow itself into a
second "majority".

Leaving (`leave`, before a host is removed for good): we hand all our space to a reachable peer, so an identity
that goes away never counts against the quorum. Owners that die without leaving are what reclaim is for.
"""

from __future__ import annotations

import logging
from typing import Any

from weave_node.core.address import Range, ip_str
from weave_node.ipam import churn, donation, messages, report
from weave_node.ipam import orphans as returning
from weave_node.ipam.consensus import Claim, Consensus
from weave_node.ipam.errors import BadRequest, Conflict, DecodeError, NotFound, RingConflict, Unavailable
from weave_node.ipam.model import (
    DONATION_RETRY,
    FREE_REPORT,
    PROPOSE_RETRY,
    VOUCH_INTERVAL,
    Changes,
    Effect,
    Gossip,
    Init,
    Key,
    Leaving,
    Log,
    ring_id_for,
)
from weave_node.ipam.presence import NEVER, Presence, is_quorum
from weave_node.ipam.ring import Ring
from weave_node.ipam.space import Space
from weave_node.mesh.peer import format_name

COUNTERS = (
    "donated",
    "received",
    "reclaimed",
    "lost",
    "bad_messages",
    "conflicts",
    "handed_over",
    "given_back",
    "taken_back",
)


class Allocator:
    def __init__(
        self,
        me: int,
        span: Range,
        init: Init,
        *,
        reclaim_after: float,
        now: float,
        ring: Ring | None = None,
        claims: dict[int, Claim] | None = None,
        allocations: dict[Key, int] | None = None,
        away: float | None = None,
        seen_ago: dict[int, float] | None = None,
        reclaim_replaced: bool = True,
        orphans: dict[Key, int] | None = None,
        shared_nicknames: set[str] | None = None,
        leaving: Leaving | None = None,
    ) -> None:
        """`ring`, `claims`, `allocations`: what the store kept. `away`: seconds since we last saw a quorum of the
        space's owners (the store's wall-clock mark), None if unknown. `seen_ago`: seconds since we last saw each
        peer (the store's marks), None if the store never kept them."""
        self.me = me
        self.range = span
        self.init = init
        self.reclaim_after = reclaim_after
        self.reclaim_replaced = reclaim_replaced
        self.ring = ring
        self.consensus: Consensus | None = None
        self.allocations: dict[Key, int] = {}
        self.by_ip: dict[int, Key] = {}
        self.space = Space(span)
        self.cursor = span.start
        # A fresh identity was never with anyone; an old store without sightings vouches only from now on.
        floor = NEVER if ring is None or seen_ago is not None else now
        self.presence = Presence(me, now, floor=floor, seen_ago=seen_ago, shared=shared_nicknames)
        self.fresh_store = ring is None  # until we first merge a peer's ring
        self.ipam_peers: set[int] = set()  # peers that sent us a ring: receivers of a hand-over besides owners
        self.leaving: Leaving | None = leaving  # we left the ring (persisted: a restart does not rejoin)
        self.next_vouch = 0.0
        # Pods' addresses in space reclaimed while we were cut off: asked back from the new owner (a conflict
        # when it has them in use). Released by DEL/GC like allocations.
        self.orphans: dict[Key, int] = dict(orphans or {})
        self.conflicts: set[Key] = set()
        self.orphans_retry = 0.0
        self.conflicts_retry = 0.0
        self.fence_logged = False
        self.no_quorum_since: float | None = None
        self.resync = False  # fenced until we merge a peer's ring after quorum returned
        self.resync_quorum_since: float | None = None
        self.synced_from: set[int] = set()  # while resyncing: peers whose rings we merged (a majority ends it)
        self.wanted_at: float | None = None  # an allocation is waiting for a ring or for space
        self.donor: int | None = None
        self.donor_deadline = 0.0
        self.next_free_report = 0.0
        self.free_dirty = True
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._effects: list[Effect] = []
        self._changes = Changes()
        self.last_now = now  # the latest `now` of any input (for flags of messages built inside)
        self._start(ring, claims, away, now)
        for key, ip in (allocations or {}).items():
            self._record(key, ip, persist=False)

    def _start(self, ring: Ring | None, claims: dict[int, Claim] | None, away: float | None, now: float) -> None:
        """From what the store kept: a ring (a restart), or how to get one (seed, consensus, observer)."""
        if ring is None:
            if self.init.mode == "seed":
                if self.me in self.init.seeds and set(self.init.seeds) - {self.me}:
                    # We may be a seed whose state was lost, in a network that moved on since: the initial
                    # split may be stale (space donated or reclaimed), and we remember nobody. Allocate only
                    # once synced with a peer (or a majority of the seeds), and vouch only from now.
                    self.resync = True
                    self.presence.memory_lost(now)
                self._set_ring(
                    Ring.initial(self.range, ring_id_for("seed", *sorted(self.init.seeds)), list(self.init.seeds)), now
                )
            elif self.init.mode == "consensus":
                self.consensus = Consensus(self.me, self.init.quorum, claims)
                self.consensus.propose()  # eagerly: IPAM is ready before the first pod asks
                self.consensus.last_progress = now
                self._changed(consensus=True)
                self._think(now)
        else:
            churn.update_presence(self, now)
            if self.reclaim_after > 0 and ring.owners() - {self.me}:
                # Restarted. Away long enough that our space may have been reclaimed: no allocation before we
                # have merged a peer's ring. Back quickly (an upgrade, a crash): carry on, fencing as usual.
                if away is None or away >= self.reclaim_after / 2:
                    self.resync = True
                else:
                    self.no_quorum_since = now - away

    # ---- outbox -------------------------------------------------------------------------------------------

    def take_effects(self) -> list[Effect]:
        out, self._effects = self._effects, []
        return out

    def take_changes(self) -> Changes:
        out, self._changes = self._changes, Changes()
        return out

    def _log(self, level: int, message: str, key: str = "") -> None:
        self._effects.append(Log(level, message, key))

    @property
    def reachable(self) -> set[int]:
        return self.presence.reachable

    def _changed(self, *, ring: bool = False, consensus: bool = False) -> None:
        self._changes.ring |= ring
        self._changes.consensus |= consensus

    def state_message(self, now: float | None = None) -> bytes:
        if self.ring is not None:
            unsynced = self.resync or (now is not None and self.fenced(now))
            # Only the owners we cannot reach: the others' names travel with the topology, and nothing to vouch.
            away = self.ring.owners() - self.reachable
            sightings = self.presence.sightings(away, self.last_now if now is None else now)
            return messages.encode_state(self.range, self.ring, unsynced=unsynced, sightings=sightings)
        if self.consensus is not None:
            return messages.encode_state(self.range, None, self.consensus.quorum, self.consensus.claims)
        return b""

    def _gossip(self) -> None:
        data = self.state_message(self.last_now)
        if data:
            self._effects = [e for e in self._effects if not isinstance(e, Gossip)] + [Gossip(data)]

    # ---- queries ------------------------------------------------------------------------------------------

    def owned(self) -> list[tuple[int, int]]:
        return self.ring.owned(self.me) if self.ring is not None else []

    def has_quorum(self) -> bool:
        return self.ring is not None and is_quorum(self.reachable, self.ring.owners())

    def fenced(self, now: float) -> bool:
        if self.resync:
            return True
        return (
            self.reclaim_after > 0
            and self.no_quorum_since is not None
            and now - self.no_quorum_since >= self.reclaim_after / 2
        )

    def ready(self, now: float) -> bool:
        """Can allocate now, or can expect space: the ring exists and we are not fenced."""
        return self.ring is not None and self.init.mode != "observer" and not self.fenced(now)

    def waiting_reason(self, now: float) -> str:  # noqa: PLR0911 - one answer per state
        if self.init.mode == "observer" and self.ring is None:
            return "observer: waiting for another peer to initialise the ring"
        if self.ring is None and self.consensus is not None:
            c = self.consensus
            have = sum(1 for cl in c.claims.values() if cl.promise == c.highest_ballot())
            return f"awaiting consensus: {c.quorum} of {self.init.peers} peers needed, {have} agree so far"
        if self.ring is None:
            return "waiting for the ring"
        if self.init.mode == "observer":
            return "observer: owns no space"
        if self.leaving is not None:
            lv = self.leaving
            if not lv.receiver:
                return "left the ring (it owned no address space)"
            return f"left the ring: handed {lv.addresses} addresses to peer {churn.who(self, lv.receiver)}"
        if self.fenced(now):
            return "fenced: cut off from a majority of the space's owners" + (
                " (waiting to sync the ring)" if self.resync else ""
            )
        if self.donor is not None:
            return f"out of space: asked peer {format_name(self.donor)} for a donation"
        if self.wanted_at is not None and not self.space.find_free(self.owned(), self.cursor):
            return "out of space: no reachable peer has free space"
        return ""

    # ---- commands -----------------------------------------------------------------------------------------

    def allocate(self, key: Key, now: float) -> int | None:
        """The address of `key` (the same one on every call), or None: not now (see waiting_reason)."""
        key.validate()
        ip = self.allocations.get(key)
        if ip is not None:
            return ip
        self._refuse_orphan(key)
        if self.init.mode == "observer":
            raise Unavailable("this peer is an IPAM observer (IPALLOC_INIT=observer): it owns no space")
        churn.refuse_if_left(self)
        if self.ring is None or self.fenced(now):
            self.wanted_at = now
            return None
        ip = self.space.find_free(self.owned(), self.cursor)
        if ip is None:
            self.wanted_at = now
            donation.ask_for_space(self, now)
            return None
        self._record(key, ip)
        self.cursor = ip + 1
        self.wanted_at = None
        return ip

    def claim(self, key: Key, ip: int, now: float) -> bool:
        """Record that `key` has `ip` (re-adding a container after a restart); False: not now, retry."""
        key.validate()
        if not self.range.usable(ip):
            raise BadRequest(f"{ip_str(ip)} is not a usable address of the range {self.range}")
        have = self.allocations.get(key)
        if have == ip:
            return True
        self._refuse_orphan(key)
        if have is not None:
            raise Conflict(f"{key.container_id}/{key.ifname} already has {ip_str(have)}")
        holder = self.by_ip.get(ip)
        if holder is not None:
            raise Conflict(f"{ip_str(ip)} is in use by {holder.container_id}/{holder.ifname}")
        if self.ring is None:
            return False
        churn.refuse_if_left(self)
        if self.fenced(now):
            raise Unavailable("fenced: cut off from a majority of the space's owners; claims wait until it heals")
        owner = self.ring.owner_of(ip)
        if owner != self.me:
            raise Conflict(f"{ip_str(ip)} is in the space of peer {format_name(owner)}, not ours")
        self._record(key, ip)
        return True

    def _refuse_orphan(self, key: Key) -> None:
        lost = self.orphans.get(key)
        if lost is None:
            return
        if key in self.conflicts:
            raise Conflict(
                f"{ip_str(lost)} of {key.container_id}/{key.ifname} is in use by another pod too (our space was "
                "reclaimed while we were cut off): delete this pod first, then it gets a new address"
            )
        raise Unavailable(f"{ip_str(lost)} of {key.container_id}/{key.ifname} is being asked back from its new owner")

    def release(self, container_id: str, ifname: str | None = None) -> list[int]:
        keys = [k for k in self.allocations if k.container_id == container_id and ifname in (None, k.ifname)]
        lost = [k for k in self.orphans if k.container_id == container_id and ifname in (None, k.ifname)]
        if not keys and not lost:
            raise NotFound(f"no address is allocated to {container_id}" + (f"/{ifname}" if ifname else ""))
        for k in lost:  # not ours to free: the pod is gone, so we stop asking for its address
            self.conflicts.discard(k)
            self._changes.orphans = True
        return [self._drop(k) for k in sorted(keys)] + [self.orphans.pop(k) for k in sorted(lost)]

    def rmpeer(self, peer: int, now: float) -> int:
        """`weave-node ipam rmpeer`: take over an unreachable peer's space at once; the number of addresses."""
        if self.ring is None:
            raise Unavailable("the ring is not initialised yet")
        if peer == self.me:
            raise BadRequest("cannot remove ourselves; run rmpeer on another peer")
        if self.init.mode == "observer":
            raise Conflict("an observer owns no space: run rmpeer on a peer that does")
        if peer in self.reachable:
            raise Conflict(f"peer {format_name(peer)} is reachable: stop it (or cut it off) first")
        before = self.ring.copy()
        moved = self.ring.transfer(peer, self.me)
        if moved:
            self.ring.check_invariants(before)
            self.counters["reclaimed"] += 1
            self._log(logging.WARNING, f"rmpeer: took over {moved} addresses of peer {churn.who(self, peer)}")
            self._ring_changed()
        return moved

    def leave(self, now: float, *, force: bool = False) -> Leaving:
        """Hand all our space to a reachable peer before this peer is removed for good (see churn.leave)."""
        return churn.leave(self, now, force=force)

    # ---- inputs -------------------------------------------------------------------------------------------

    def receive(self, src: int, data: bytes, now: float) -> None:
        """A message from peer `src` on the IPAM channel; a bad one is dropped, counted and logged."""
        self.last_now = now
        try:
            msg = messages.decode(data)
            if msg.span != self.range:
                raise RingConflict(f"peer uses range {msg.span}, we use {self.range}: set the same IPALLOC_RANGE")
            if isinstance(msg, messages.Request):
                donation.donate(self, src, now)
            elif isinstance(msg, messages.Addresses):
                if msg.kind == messages.KIND_RECLAIMED:
                    returning.give_back(self, src, msg.ips, now)
                else:
                    returning.in_use_elsewhere(self, src, msg.ips)
            else:
                self._merge_state(src, msg, now)
        except DecodeError as exc:
            self.counters["bad_messages"] += 1
            self._log(logging.WARNING, f"dropped a bad IPAM message from {format_name(src)}: {exc}", "ipam.bad")
        except RingConflict as exc:
            self.counters["conflicts"] += 1
            self._log(logging.ERROR, f"IPAM conflict with peer {format_name(src)}: {exc}", "ipam.conflict")

    def set_reachable(self, peers: set[int], now: float, nicknames: dict[int, str] | None = None) -> None:
        """The peers in the topology (reachable from us), ourselves included, and their nicknames."""
        self.last_now = now
        grew = bool(peers - self.reachable)
        if nicknames:
            self.presence.learn_nicknames(nicknames)
        self.presence.set_reachable(peers, self.ring.owners() if self.ring is not None else set(), now)
        if self.presence.take_dirty():
            self._changes.seen = True
        churn.update_presence(self, now)
        if grew:
            self._gossip()  # a new or returning neighbour learns our state now, not at the next periodic gossip

    def tick(self, now: float) -> None:
        self.last_now = now
        churn.update_presence(self, now)
        if self.consensus is not None and self.ring is None:
            c = self.consensus
            if now - c.last_progress >= PROPOSE_RETRY and c.decision() is None:
                c.propose()
                c.last_progress = now
                self._changed(consensus=True)
                self._gossip()
            self._think(now)
        if self.ring is None:
            return
        churn.reclaim(self, now)
        churn.note_fence(self, now)
        churn.resend_hand_over(self, now)
        if self.reclaim_after > 0 and now >= self.next_vouch:
            self.next_vouch = now + VOUCH_INTERVAL
            churn.send_vouches(self, now)
        if donation.wants_space(self, now):
            donation.ask_for_space(self, now)
        if self.orphans.keys() - self.conflicts and now >= self.orphans_retry:
            returning.ask_orphans(self, now)
        if self.free_dirty and now >= self.next_free_report and not self.fenced(now):
            self._report_free(now)

    def next_deadline(self, now: float) -> float | None:
        times: list[float] = []
        if self.consensus is not None and self.ring is None:
            times.append(self.consensus.last_progress + PROPOSE_RETRY)
        if self.ring is not None:
            if donation.wants_space(self, now):
                times.append(self.donor_deadline if self.donor is not None else now + DONATION_RETRY)
            if self.free_dirty:
                times.append(self.next_free_report)
            lv = self.leaving
            if lv is not None and not lv.acknowledged and (lv.receiver in self.reachable or not lv.receiver):
                times.append(lv.resend_at)
            if self.orphans.keys() - self.conflicts:
                times.append(self.orphans_retry)
            if self.reclaim_after > 0:
                times += churn.reclaim_deadlines(self, now)
                if self.no_quorum_since is not None:
                    times.append(self.no_quorum_since + self.reclaim_after / 2)
        # What is due now and was not done by tick could not be done (e.g. nobody to send to): not a busy loop.
        future = [t for t in times if t > now]
        return min(future) if future else None

    # ---- internals: allocations ------------------------------------------------------------------------------

    def _record(self, key: Key, ip: int, *, persist: bool = True) -> None:
        self.allocations[key] = ip
        self.by_ip[ip] = key
        self.space.add(ip)
        self.free_dirty = True
        if persist:
            self._changes.put[ip] = key
            self._changes.delete.discard(ip)

    def _drop(self, key: Key) -> int:
        ip = self.allocations.pop(key)
        del self.by_ip[ip]
        self.space.remove(ip)
        self.free_dirty = True
        self._changes.put.pop(ip, None)
        self._changes.delete.add(ip)
        return ip

    def _report_free(self, now: float) -> None:
        if self.ring is None:
            return
        free = {s: self.space.free_in(s, e) for s, e, entry in self.ring.spans() if entry.owner == self.me}
        if self.ring.report_free(self.me, free):
            self._ring_changed()
        self.free_dirty = False
        self.next_free_report = now + FREE_REPORT

    def _ring_changed(self) -> None:
        """We changed the ring (reclaim, rmpeer, hand-over, free counts): store it, tell everyone."""
        returning.take_back(self)
        self._changed(ring=True)
        self._gossip()

    # ---- internals: ring and bootstrap ----------------------------------------------------------------------

    def _set_ring(self, ring: Ring, now: float) -> None:
        self.ring = ring
        self.consensus = None
        churn.update_presence(self, now)
        self._log(logging.INFO, f"IPAM ring ready: {self.range} split among {len(ring.owners())} peer(s)")
        self.free_dirty = True
        self._changed(ring=True, consensus=True)
        self._gossip()

    def _merge_state(self, src: int, msg: messages.State, now: float) -> None:
        if msg.sightings is not None:
            self.presence.merge(src, msg.sightings, now)
        if msg.ring is not None:
            self.ipam_peers.add(src)
            churn.check_hand_over(self, src, msg.ring)
            self._first_ring(msg.ring, now)
            if self.ring is None:
                self._set_ring(msg.ring.copy(), now)
                return
            before_owned = self.owned()
            before = self.ring.copy()
            changed = self.ring.merge(msg.ring)
            try:
                self.ring.check_invariants(before)
            except AssertionError as exc:
                self.ring = before
                raise RingConflict(f"merging the peer's ring would break it ({exc}); ignored") from None
            if self.resync:
                self.synced_from.add(src)
                owners = self.ring.owners()
                heard = len((self.synced_from | {self.me}) & owners)
                if self.has_quorum() and (not msg.unsynced or 2 * heard > len(owners)):
                    self.resync = False
                    self.synced_from.clear()
                    self._log(logging.INFO, "ring synced with a peer: allocating again")
            if changed:
                self._after_merge(before_owned)
                self._changed(ring=True)
                self._gossip()
            return
        if msg.claims is not None and self.consensus is not None and self.ring is None:
            if msg.quorum != self.consensus.quorum:
                raise RingConflict(
                    f"peer bootstraps with a quorum of {msg.quorum}, we with {self.consensus.quorum}: "
                    "give every peer the same IPALLOC_INIT consensus=N"
                )
            if self.consensus.merge(msg.claims):
                self.consensus.last_progress = now
            self._think(now)
        elif self.ring is not None and msg.claims is not None:
            self._gossip()  # a peer still bootstrapping: our ring ends it

    def _first_ring(self, ring: Ring, now: float) -> None:
        if not self.fresh_store:
            return
        self.fresh_store = False
        if self.me in ring.owners() and not self.owned():
            # A peer's ring gives our name space we never had: an identity whose state was lost (a name fixed by
            # --name). Our memory of sightings went with it: vouch only from now.
            self.presence.memory_lost(now)

    def _think(self, now: float) -> None:
        c = self.consensus
        if c is None:
            return
        if c.think():
            c.last_progress = now
            self._changed(consensus=True)
            self._gossip()
        decision = c.decision()
        if decision is not None:
            ring_id = ring_id_for("consensus", *decision.value)  # the value only: two ballots may carry it
            self._set_ring(Ring.initial(self.range, ring_id, list(decision.value)), now)

    def _after_merge(self, before_owned: list[tuple[int, int]]) -> None:
        """Our space may have grown (a donation) or shrunk (reclaimed while we were away)."""
        if self.leaving is not None:  # a donation that was on its way when we left: it goes where the rest went
            churn.hand_over(self, self.last_now)
        owned = self.owned()
        if sum(e - s for s, e in owned) > sum(e - s for s, e in before_owned):
            self.counters["received"] += 1
            if self.donor is not None:
                self._log(logging.INFO, f"received space from peer {churn.who(self, self.donor)}")
            self.donor = None
            self.free_dirty = True
        lost = [k for k, ip in self.allocations.items() if not any(s <= ip < e for s, e in owned)]
        if lost and self.ring is not None:
            by = self.ring.owner_of(self.allocations[lost[0]])
            self._log(
                logging.ERROR,
                f"our space was reclaimed by peer {churn.who(self, by)} while we were unreachable: {len(lost)} pod "
                "address(es) in it are no longer ours; asking for them back (a free one is taken back, one in use "
                "there is a conflict: restart that pod here): "
                + ", ".join(f"{k.container_id}/{k.ifname}={ip_str(self.allocations[k])}" for k in sorted(lost)[:10]),
            )
            for k in lost:
                self.orphans[k] = self._drop(k)
            self._changes.orphans = True
            self.counters["lost"] += len(lost)
        returning.take_back(self)
        self.orphans_retry = 0.0  # ask again at once: the owners may have changed

    # ---- status -------------------------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        return report.status(self, now)
