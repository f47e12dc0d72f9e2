"""Who of the ring's owners is around, and for how long a quorum of owners can vouch that one was not (pure).

Reclaiming an owner's space is safe only if that owner stopped allocating first. It stops by itself ("fences")
`reclaim_after/2` after it last had a quorum of the owners with it. So the reclaimer must know that the absent
owner has not been with a quorum for `reclaim_after`. No single peer knows that: the absent owner may have been
with a quorum elsewhere until a moment ago. But any quorum it was with shares at least one member with any other
quorum. Hence the rule here:

- Every peer keeps, for each owner it cannot reach, since when it has not seen it (`absent_since`, on its own
  monotonic clock) and gossips these as durations ("I have not seen X for d seconds"): a *vouch*.
- The *certified* absence of X is the largest d such that owners vouching for at least d make a quorum. If X had
  been with a quorum of owners within d, one of those would be among the vouchers and could not vouch for d.

A vouch is only as good as the voucher's memory, so the last time each owner was seen is persisted (the store
writes it on every change of who is reachable, and every couple of seconds): a restarted router still vouches
for the time before its restart, and an unrelated restart no longer postpones a reclaim. A fresh identity (a new
state directory) was never with anyone before, so it vouches for all of the past; an identity that finds itself
owning space it does not remember (its state was lost) vouches only from the moment it knew.

A vouch received from peer Q stays valid while Q stays reachable (it grows with time: Q cannot meet X without X
becoming reachable from us as well) and is dropped when Q goes away or X comes back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from weave_node.mesh.peer import format_name

NEVER = -math.inf  # "since the beginning of time": a fresh identity has never seen anyone
SINCE_SLACK = 0.5  # seconds a voucher's "not seen since" may move later before we take it (wire rounding)
MARK_INTERVAL = 2.0  # seconds between the shell's marks of whom it sees (persisted; a mark may be this old)


def restored_ago(seconds: float) -> float:
    """A persisted "not seen for `seconds`", read back after a restart: a peer in sight at the last mark may have
    stayed so until we stopped, up to two mark intervals later (the timer can be late), so every sighting counts
    as that much fresher (the safe error)."""
    return max(0.0, seconds - 2 * MARK_INTERVAL)


@dataclass(frozen=True)
class Sighting:
    """What a peer says about one owner: `absent_for` seconds not seen (0.0: it reaches it now; math.inf: never
    seen, as a fresh identity), and the owner's nickname if known ("" otherwise)."""

    absent_for: float
    nickname: str = ""


def is_quorum(members: Iterable[int], owners: set[int]) -> bool:
    """More than half of `owners`, or exactly half holding the lowest-named owner: two disjoint sets never both are."""
    live = set(members) & owners
    if not owners:
        return False
    return 2 * len(live) > len(owners) or (2 * len(live) == len(owners) and min(owners) in live)


class Presence:
    def __init__(
        self,
        me: int,
        now: float,
        *,
        floor: float = NEVER,
        seen_ago: dict[int, float] | None = None,
        shared: set[str] | None = None,
    ) -> None:
        """`floor`: the earliest time we can vouch for (NEVER for a fresh identity or one whose memory of sightings
        was kept; `now` for an old store without it). `seen_ago`: seconds since we last saw each owner, as the
        store kept them (an owner missing there was never seen by us). `shared`: nicknames seen on two peers at
        once, as the store kept them."""
        self.me = me
        self.floor = floor
        self.reachable: set[int] = {me}
        self.absent_since: dict[int, float] = {}
        self.last_seen = {n: now - max(0.0, ago) for n, ago in (seen_ago or {}).items()}  # not counting now
        self.nicknames: dict[int, str] = {}
        self.shared: set[str] = set(shared or ())  # host names two live peers had at once: not a host's identity
        # owner -> voucher -> since when (our clock) the voucher has not seen it; a voucher's view only moves later
        self.vouched: dict[int, dict[int, float]] = {}
        self._certified: dict[int, float | None] = {}  # owner -> since when a quorum vouches (see since_quorum)
        self._owners: frozenset[int] = frozenset()  # the owners the cache was computed for
        self._dirty = True  # the persisted sightings are behind (who is reachable changed)

    # ---- inputs ---------------------------------------------------------------------------------------------

    def set_reachable(self, peers: set[int], owners: set[int], now: float) -> None:
        peers = set(peers) | {self.me}
        if peers != self.reachable:
            self._dirty = True
        for gone in self.reachable - peers:
            for by in self.vouched.values():
                by.pop(gone, None)
            self.last_seen[gone] = now
        for back in peers - self.reachable:  # X reachable again: every vouch about it is stale
            self.vouched.pop(back, None)
        if peers != self.reachable:
            self._certified.clear()
        self.reachable = peers
        self.update(owners, now)

    def update(self, owners: set[int], now: float) -> None:
        """Start or stop the absence clocks of the ring's owners."""
        for owner in owners:
            if owner in self.reachable:
                self.absent_since.pop(owner, None)
            elif owner not in self.absent_since:
                self.absent_since[owner] = max(self.floor, self.last_seen.get(owner, NEVER))
                self._certified.pop(owner, None)
        for gone in set(self.absent_since) - owners:
            del self.absent_since[gone]
            self.vouched.pop(gone, None)

    def memory_lost(self, now: float) -> None:
        """We own space we do not remember: we cannot vouch for any time before now."""
        self.floor = max(self.floor, now)
        for owner, since in self.absent_since.items():
            self.absent_since[owner] = max(since, now)
        self._certified.clear()

    def merge(self, src: int, sightings: dict[int, Sighting], now: float) -> None:
        """A reachable peer's sightings: its nicknames fill gaps; its absences become its vouches."""
        for owner, s in sightings.items():
            if s.nickname and owner not in self.nicknames:
                self.nicknames[owner] = s.nickname
        here = [s.nickname for o, s in sightings.items() if s.absent_for == 0 and s.nickname] + [
            self.nicknames.get(src, "")
        ]
        self._note_shared([n for n in here if n])
        if src not in self.reachable or src == self.me:
            return
        for owner, s in sightings.items():
            if owner in self.reachable:
                continue
            by = self.vouched.setdefault(owner, {})
            if s.absent_for <= 0:  # src sees it: no vouch (and it will be reachable for us in a moment)
                if by.pop(src, None) is not None:
                    self._certified.pop(owner, None)
                continue
            since = now - s.absent_for
            old = by.get(src)
            # A voucher's "not seen since" only moves later while it stays reachable, but each message rounds its
            # duration down to 0.1 s, so messages jitter: a move of less than SINCE_SLACK is not worth recomputing
            # for (it makes an absence look that much longer at most: far inside the reclaim_after/2 margin).
            if old is None or since > old + SINCE_SLACK:
                by[src] = since
                self._certified.pop(owner, None)

    def learn_nicknames(self, nicknames: dict[int, str]) -> None:
        """The topology's nicknames (of reachable peers: two with one name share it)."""
        self.nicknames.update({n: nick for n, nick in nicknames.items() if nick})
        self._note_shared([nick for nick in nicknames.values() if nick])

    def _note_shared(self, names: list[str]) -> None:
        twice = {n for n in names if names.count(n) > 1} - self.shared
        if twice:
            self.shared |= twice
            self._dirty = True

    def take_dirty(self) -> bool:
        """True once after what the store keeps (sightings, shared names) changed."""
        dirty, self._dirty = self._dirty, False
        return dirty

    def prune(self, owners: set[int], now: float, horizon: float) -> None:
        """Forget sightings of peers that own nothing and were last seen more than `horizon` ago: a vouch that
        long is as good as "never" for any reclaim, so nothing is lost."""
        for peer, at in list(self.last_seen.items()):
            if peer not in owners and peer not in self.reachable and now - at > horizon:
                del self.last_seen[peer]

    # ---- queries ----------------------------------------------------------------------------------------------

    def absent_for(self, owner: int, now: float) -> float:
        """Our own vouch: seconds we have not seen `owner` (0.0 if reachable, math.inf if never)."""
        since = self.absent_since.get(owner)
        return 0.0 if since is None else now - since

    def certified(self, owner: int, owners: set[int], now: float) -> float:
        """The longest absence of `owner` that a quorum of `owners` vouches for (0.0 if none does)."""
        if owner in self.reachable:
            return 0.0
        since = self.since_quorum(owner, owners)
        return 0.0 if since is None else now - since

    def since_quorum(self, owner: int, owners: set[int]) -> float | None:
        """Since when (our clock) a quorum of `owners` has not seen `owner`, None if no quorum vouches. Every vouch
        grows with time at the same rate, so this moves only when a vouch or the owners change: it is cached."""
        if frozenset(owners) != self._owners:
            self._owners = frozenset(owners)
            self._certified.clear()
        if owner in self._certified:
            return self._certified[owner]
        ours = self.absent_since.get(owner)
        pairs = [(since, v) for v, since in self.vouched.get(owner, {}).items() if v in owners and v != self.me]
        if ours is not None and self.me in owners:
            pairs.append((ours, self.me))
        pairs.sort()
        lowest, needed = min(owners), len(owners)
        has_lowest, found = False, None
        for count, (since, voucher) in enumerate(pairs, 1):  # the longest absences first, until a quorum
            has_lowest |= voucher == lowest
            if 2 * count > needed or (2 * count == needed and has_lowest):
                found = since
                break
        self._certified[owner] = found
        return found

    def who(self, peer: int) -> str:
        """A peer's name for log lines, with its nickname (its host name) when we know it."""
        nick = self.nicknames.get(peer)
        return f"{format_name(peer)} ({nick})" if nick else format_name(peer)

    def sightings(self, owners: Iterable[int], now: float) -> dict[int, Sighting]:
        return {o: Sighting(self.absent_for(o, now), self.nicknames.get(o, "")) for o in owners}

    def seen_ago(self, now: float) -> dict[int, float]:
        """What the store keeps: seconds since we last saw each owner we have seen (never-seen ones left out)."""
        out = {n: now - at for n, at in self.last_seen.items() if math.isfinite(at)}
        for owner, since in self.absent_since.items():
            if math.isfinite(since):
                out[owner] = min(out.get(owner, math.inf), now - since)
        for owner in self.reachable - {self.me}:
            out[owner] = 0.0
        return out
