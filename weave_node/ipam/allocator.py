"""The IPAM state machine of one peer (pure, driven by `now`): ring, bootstrap, allocations, donation, reclaim.

Inputs are method calls (allocate/claim/release/rmpeer, `receive` for channel messages, `set_reachable` for the
topology, `tick`); outputs are collected in an outbox (`take_effects`: gossip, unicast, log lines) and a change
set for the store (`take_changes`). The shell persists the change set before it sends any effect or answers
any request, so nothing we say was ever forgotten by a crash.

Around it, pure functions over it, one concern a module: bootstrap.py (getting a ring), donation.py (space
between peers), leaving.py (handing our space over), reclaim.py (reclaim of owners that are gone, and the fencing
that makes it safe), orphans.py (pods' addresses in space reclaimed while we were cut off), report.py (status).
Vocabulary (keys, IPALLOC_INIT, effects, change sets, timings): model.py.
"""

from __future__ import annotations

import logging
from typing import Any

from weave_node.core.address import Range, ip_str
from weave_node.ipam import bootstrap, donation, leaving, messages, reclaim, report
from weave_node.ipam import orphans as returning
from weave_node.ipam.consensus import Claim, Consensus
from weave_node.ipam.errors import BadRequest, Conflict, DecodeError, NotFound, RingConflict, Unavailable
from weave_node.ipam.model import (
    COUNTERS,
    DONATION_RETRY,
    PROPOSE_RETRY,
    VOUCH_INTERVAL,
    Changes,
    Effect,
    Gossip,
    Init,
    Key,
    Leaving,
    Log,
)
from weave_node.ipam.presence import NEVER, Presence, is_quorum
from weave_node.ipam.ring import Ring
from weave_node.ipam.space import Space
from weave_node.mesh.peer import format_name


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
        if ring is None:
            bootstrap.start(self, claims, now)
        else:
            reclaim.restarted(self, away, now)
        for key, ip in (allocations or {}).items():
            self._record(key, ip, persist=False)

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

    def waiting_reason(self, now: float) -> str:
        """Why we cannot allocate now ("" if we can)."""
        return report.waiting_reason(self, now)

    # ---- commands -----------------------------------------------------------------------------------------

    def allocate(self, key: Key, now: float) -> int | None:
        """The address of `key` (the same one on every call), or None: not now (see waiting_reason)."""
        key.validate()
        ip = self.allocations.get(key)
        if ip is not None:
            return ip
        returning.refuse(self, key)
        if self.init.mode == "observer":
            raise Unavailable("this peer is an IPAM observer (IPALLOC_INIT=observer): it owns no space")
        leaving.refuse_if_left(self)
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
        returning.refuse(self, key)
        if have is not None:
            raise Conflict(f"{key.container_id}/{key.ifname} already has {ip_str(have)}")
        holder = self.by_ip.get(ip)
        if holder is not None:
            raise Conflict(f"{ip_str(ip)} is in use by {holder.container_id}/{holder.ifname}")
        if self.ring is None:
            return False
        leaving.refuse_if_left(self)
        if self.fenced(now):
            raise Unavailable("fenced: cut off from a majority of the space's owners; claims wait until it heals")
        owner = self.ring.owner_of(ip)
        if owner != self.me:
            raise Conflict(f"{ip_str(ip)} is in the space of peer {format_name(owner)}, not ours")
        self._record(key, ip)
        return True

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
        return reclaim.rmpeer(self, peer, now)

    def leave(self, now: float, *, force: bool = False) -> Leaving:
        """Hand all our space to a reachable peer before this peer is removed for good (see leaving.leave)."""
        return leaving.leave(self, now, force=force)

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
        reclaim.update_presence(self, now)
        if grew:
            self._gossip()  # a new or returning neighbour learns our state now, not at the next periodic gossip

    def tick(self, now: float) -> None:
        self.last_now = now
        reclaim.update_presence(self, now)
        bootstrap.tick(self, now)
        if self.ring is None:
            return
        reclaim.reclaim(self, now)
        reclaim.note_fence(self, now)
        leaving.resend_hand_over(self, now)
        if self.reclaim_after > 0 and now >= self.next_vouch:
            self.next_vouch = now + VOUCH_INTERVAL
            reclaim.send_vouches(self, now)
        if donation.wants_space(self, now):
            donation.ask_for_space(self, now)
        if self.orphans.keys() - self.conflicts and now >= self.orphans_retry:
            returning.ask_orphans(self, now)
        if self.free_dirty and now >= self.next_free_report and not self.fenced(now):
            donation.report_free(self, now)

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
                times += reclaim.reclaim_deadlines(self, now)
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

    def _ring_changed(self) -> None:
        """We changed the ring (reclaim, rmpeer, hand-over, free counts): store it, tell everyone."""
        returning.take_back(self)
        self._changed(ring=True)
        self._gossip()

    # ---- internals: merging a peer's state ----------------------------------------------------------------

    def _merge_state(self, src: int, msg: messages.State, now: float) -> None:
        if msg.sightings is not None:
            self.presence.merge(src, msg.sightings, now)
        if msg.ring is None:
            bootstrap.merge_claims(self, msg, now)
            return
        self.ipam_peers.add(src)
        leaving.check_hand_over(self, src, msg.ring)
        bootstrap.first_ring(self, msg.ring, now)
        if self.ring is None:
            bootstrap.set_ring(self, msg.ring.copy(), now)
            return
        before_owned = self.owned()
        before = self.ring.copy()
        changed = self.ring.merge(msg.ring)
        try:
            self.ring.check_invariants(before)
        except AssertionError as exc:
            self.ring = before
            raise RingConflict(f"merging the peer's ring would break it ({exc}); ignored") from None
        reclaim.note_sync(self, src, msg.unsynced)
        if changed:
            self._after_merge(before_owned)
            self._changed(ring=True)
            self._gossip()

    def _after_merge(self, before_owned: list[tuple[int, int]]) -> None:
        """Our space may have grown (a donation) or shrunk (reclaimed while we were away)."""
        if self.leaving is not None:  # a donation that was on its way when we left: it goes where the rest went
            leaving.hand_over(self, self.last_now)
        donation.note_received(self, before_owned)
        returning.note_lost(self)
        returning.take_back(self)
        self.orphans_retry = 0.0  # ask again at once: the owners may have changed

    # ---- status -------------------------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        return report.status(self, now)
