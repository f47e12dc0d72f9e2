"""The IPAM shell: feeds the Allocator messages, topology changes, requests and time; persists its changes
before anything leaves (a reply, a gossip, a unicast); waits for it on behalf of API requests, and answers the
API's queries (`range`, `lookup`, `held_keys`, `allocations`, `status`): api/ never reaches into the allocator.
The pure state machine is allocator.py, with bootstrap, donation, leaving, reclaim and orphans beside it.

Commits are synchronous in the event loop: an fsync of sqlite's WAL costs ~0.1 ms here, well below what a
thread hand-off would save, and it keeps the order "commit, then speak" trivially true.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from weave_node.core.address import Range, ip_str
from weave_node.core.clock import Clock
from weave_node.core.errors import ConfigError
from weave_node.core.ratelimit import LogLimiter, RateLimitedLog
from weave_node.ipam.allocator import Allocator
from weave_node.ipam.errors import BadRequest, NotFound, Unavailable
from weave_node.ipam.model import Gossip, Key, Log, Unicast
from weave_node.ipam.presence import MARK_INTERVAL
from weave_node.ipam.store import Store
from weave_node.mesh.gossip import GossipChannel
from weave_node.mesh.peer import format_name, parse_name

log = logging.getLogger("weave_node.ipam")
CHANNEL = "ipam"
DEFAULT_WAIT = 10.0  # seconds an API allocation waits for the ring or for space before 503


class Held(NamedTuple):
    """What an attachment holds here: its address, or its address in space reclaimed while we were cut off
    (`orphan`, asked back from the new owner) and whether a pod there uses that one too (`conflict`)."""

    ip: int | None
    orphan: int | None
    conflict: bool


class IpamService:
    def __init__(self, alloc: Allocator, store: Store, clock: Clock) -> None:
        self.alloc = alloc
        self.store = store
        self.clock = clock
        self.channel: GossipChannel | None = None
        self.pending = 0  # API requests waiting (weave_ipam_pending_allocates)
        self._changed = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.rlog = RateLimitedLog(log, LogLimiter(), clock.now)  # what peers can repeat at will (bad messages)
        self.on_change: Callable[[], None] | None = None  # after a ring change (the overlay's direct routes follow)
        self._after()

    def attach(self, channel: GossipChannel) -> None:
        self.channel = channel

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._timer())
        self._after()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.store.close()

    # ---- the one place where state leaves: commit first, then speak -------------------------------------------

    def _after(self, durable: bool = True) -> None:
        changes = self.alloc.take_changes()
        if changes:
            try:
                self.store.commit(self.alloc, changes, durable=durable)
            except Exception:
                # Fail-stop: memory is ahead of the disk, so nothing may be answered or sent from it. systemd
                # restarts us from what is on disk; callers retry.
                log.critical("cannot persist IPAM state to %s: stopping", self.store.path, exc_info=True)
                os._exit(70)
        for effect in self.alloc.take_effects():
            if isinstance(effect, Log) and effect.key:
                self.rlog.log(effect.level, effect.key, "%s", effect.message)
            elif isinstance(effect, Log):
                log.log(effect.level, "%s", effect.message)
            elif self.channel is None:
                continue
            elif isinstance(effect, Gossip):
                self.channel.gossip(effect.data)
            elif isinstance(effect, Unicast):
                self.channel.unicast(effect.dst, effect.data)
        self._changed.set()
        self._changed = asyncio.Event()
        self._wakeup.set()
        if self.on_change is not None and changes.ring:  # an allocation moves no space: not on every pod
            self.on_change()

    async def _timer(self) -> None:
        marked, had_quorum = 0.0, False
        while True:
            now = self.clock.now()
            self.alloc.tick(now)
            self._after()
            self.rlog.flush()
            quorum = self.alloc.has_quorum() and not self.alloc.resync
            # At once when quorum comes (a router killed right after would otherwise look "away, for how long?"
            # on restart and wait for a ring sync), then every MARK_INTERVAL.
            if now - marked >= MARK_INTERVAL or (quorum and not had_quorum):
                had_quorum = quorum
                try:
                    self.store.mark(self.alloc, quorum=quorum)
                except Exception:  # like a failed commit: fail-stop rather than go on with a memory the disk lacks
                    log.critical("cannot persist IPAM marks to %s: stopping", self.store.path, exc_info=True)
                    os._exit(70)
                marked = now
            deadline = self.alloc.next_deadline(now)
            timeout = 1.0 if deadline is None else min(1.0, max(0.005, deadline - self.clock.now()))
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    async def _wait_change(self, until: float) -> bool:
        """Wait for any change (or at most a second, to retry); False once `until` has passed."""
        left = until - self.clock.now()
        if left <= 0:
            return False
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(left, 1.0)):
                await changed.wait()
        return True

    # ---- gossip.Gossiper ----------------------------------------------------------------------------------

    def on_gossip(self, src: int, data: bytes) -> bytes | None:
        self.alloc.receive(src, data, self.clock.now())
        self._after()
        return None  # what we learnt is re-gossiped by the allocator (after it is committed), not forwarded raw

    def on_unicast(self, src: int, data: bytes) -> None:
        self.alloc.receive(src, data, self.clock.now())
        self._after()

    def on_broadcast(self, src: int, data: bytes) -> None:
        return None

    def gossip_state(self) -> bytes | None:
        # Every change is committed synchronously right after it is made, so memory equals the disk here.
        return self.alloc.state_message(self.clock.now()) or None

    def set_reachable(self, peers: dict[int, str]) -> None:
        """The topology changed: `peers` are the reachable peers (name -> nickname), ourselves included."""
        self.alloc.set_reachable(set(peers), self.clock.now(), peers)
        self._after()

    # ---- requests -----------------------------------------------------------------------------------------

    async def allocate(self, key: Key, wait: float = DEFAULT_WAIT, *, durable: bool = True) -> int:
        """`durable=False` for a pod's ADD: its allocation alone is committed without an fsync (store.py: the pod
        dies with the kernel); one made through the API may name anything, so it is fsynced."""
        until = self.clock.now() + wait
        self.pending += 1
        try:
            while True:
                ip = self.alloc.allocate(key, self.clock.now())
                self._after(durable)
                if ip is not None:
                    return ip
                if not await self._wait_change(until):
                    reason = self.alloc.waiting_reason(self.clock.now())
                    raise Unavailable(f"no address for {key.container_id}: {reason}")
        finally:
            self.pending -= 1

    async def claim(self, key: Key, ip: int, wait: float = DEFAULT_WAIT) -> None:
        until = self.clock.now() + wait
        while True:
            done = self.alloc.claim(key, ip, self.clock.now())
            self._after()
            if done:
                return
            if not await self._wait_change(until):
                raise Unavailable(f"cannot claim yet: {self.alloc.waiting_reason(self.clock.now())}")

    def release(self, container_id: str, ifname: str | None = None) -> list[int]:
        ips = self.alloc.release(container_id, ifname)
        self._after()
        return ips

    def rmpeer(self, text: str) -> tuple[int, int]:
        """A peer by name or nickname; returns (name, addresses taken over)."""
        peer = self.resolve(text)
        moved = self.alloc.rmpeer(peer, self.clock.now())
        self._after()
        return peer, moved

    async def leave(self, *, force: bool, wait: float = DEFAULT_WAIT) -> dict[str, Any]:
        """Hand our space to a reachable peer and wait until a peer has it (see Allocator.leave)."""
        until = self.clock.now() + wait
        leaving = self.alloc.leave(self.clock.now(), force=force)
        self._after()
        while not leaving.acknowledged:
            if not await self._wait_change(until):
                raise Unavailable(
                    f"handed our space to peer {format_name(leaving.receiver)} but no peer confirmed it within "
                    f"{wait:g} s: keep this router running a little longer, or run `weave-node ipam rmpeer "
                    f"{format_name(self.alloc.me)}` on a live host after removing this one"
                )
        if not leaving.receiver:
            return {"handed_to": None, "addresses": 0, "acknowledged": True}
        return {
            "handed_to": format_name(leaving.receiver),
            "nickname": self.alloc.presence.nicknames.get(leaving.receiver, ""),
            "addresses": leaving.addresses,
            "acknowledged": True,
        }

    def resolve(self, text: str) -> int:
        try:
            return parse_name(text)
        except ConfigError:
            pass
        found = [n for n, nick in self.alloc.presence.nicknames.items() if nick == text]
        if len(found) > 1:
            raise BadRequest(f"nickname {text!r} is ambiguous: use the peer name")
        if not found:
            raise NotFound(f"no peer named or nicknamed {text!r}")
        return found[0]

    # ---- views --------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        doc = self.alloc.status(self.clock.now())
        doc["pending_allocates"] = self.pending
        wall = time.time()
        for owner in doc["owners"]:
            name = owner["peer"]
            owner["peer"] = format_name(name)
            away = owner["unreachable_for"]
            owner["last_seen"] = None if away is None else _iso(wall - away) if away else "now"
        for orphan in doc.get("orphans", []):
            orphan["owner"] = format_name(orphan["owner"])
        if "leaving" in doc:
            to = doc["leaving"]["handed_to"]
            doc["leaving"]["handed_to"] = format_name(to) if to else None
        return doc

    def spans(self) -> dict[int, list[tuple[int, int]]]:
        """The address space each peer owns in the ring, as [start, end) spans (none before there is a ring)."""
        ring = self.alloc.ring
        return {} if ring is None else {owner: ring.owned(owner) for owner in ring.owners()}

    @property
    def range(self) -> Range:
        return self.alloc.range

    def lookup(self, key: Key) -> Held:
        a = self.alloc
        return Held(a.allocations.get(key), a.orphans.get(key), key in a.conflicts)

    def held_keys(self) -> list[Key]:
        """Every attachment holding an address here, allocations then orphans (what CNI GC weighs)."""
        return [*self.alloc.allocations, *self.alloc.orphans]

    def allocations(self) -> list[dict[str, Any]]:
        return [
            {"ip": ip_str(ip), "container_id": k.container_id, "ifname": k.ifname}
            for ip, k in sorted(self.alloc.by_ip.items())
        ]


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))
