"""IPAM per address family: one IpamService per range (IPv4's on the gossip channel "ipam", kept in ipam.db;
dual-stack's IPv6 one on "ipam6", kept in ipam6.db: a ring, a bootstrap and allocations of its own), and what the
rest of the router asks of them together: a pod's address in every family (all or none), releases, lookups.

An IPv6 ring is held back while a connected peer cannot carry it (no `ipam-ipv6` mesh feature: an older router,
which drops the "ipam6" channel and so cannot relay its gossip): its allocations fail at once with the peer named,
rather than waiting out their time or handing out addresses a part of the mesh does not know about.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from weave_node.core.address import Range
from weave_node.ipam.errors import IpamError, NotFound, Unavailable
from weave_node.ipam.model import Key
from weave_node.ipam.service import DEFAULT_WAIT, Held, IpamService

CHANNEL6 = "ipam6"
FEATURE_IPV6 = "ipam-ipv6"  # mesh feature: this router carries an IPv6 ring (the "ipam6" channel)


class Ipam:
    def __init__(self, v4: IpamService, v6: IpamService | None = None, held6: Callable[[], str] = lambda: "") -> None:
        """`held6`: why the IPv6 ring must wait ("" when it need not): see the module's note."""
        self.v4 = v4
        self.v6 = v6
        self.held6 = held6

    @property
    def services(self) -> tuple[IpamService, ...]:
        return (self.v4,) if self.v6 is None else (self.v4, self.v6)

    @property
    def ranges(self) -> tuple[Range, ...]:
        return tuple(s.range for s in self.services)

    def family(self, ip: int) -> IpamService:
        """The service whose range holds `ip` (the IPv4 one when none does: it says what is wrong)."""
        return next((s for s in self.services if ip in s.range), self.v4)

    async def start(self) -> None:
        for s in self.services:
            await s.start()

    async def stop(self) -> None:
        for s in self.services:
            await s.stop()

    def set_on_change(self, callback: Callable[[], None] | None) -> None:
        for s in self.services:
            s.on_change = callback

    def check_held(self) -> None:
        reason = self.held6() if self.v6 is not None else ""
        if reason:
            raise Unavailable(f"no IPv6 address: {reason}")

    async def allocate(self, key: Key, wait: float = DEFAULT_WAIT, *, durable: bool = True) -> tuple[int, ...]:
        """An address in every family, or none: what this call allocated is released again when a family fails
        (an address an earlier ADD got stays)."""
        self.check_held()
        got: list[tuple[IpamService, int, bool]] = []  # (family, address, allocated by this call)
        try:
            for s in self.services:
                fresh = s.lookup(key).ip is None
                got.append((s, await s.allocate(key, wait, durable=durable), fresh))
        except BaseException:
            for s, _ip, fresh in got:
                if fresh:
                    with contextlib.suppress(IpamError):
                        s.release(key.container_id, key.ifname)
            raise
        return tuple(ip for _s, ip, _fresh in got)

    async def claim(self, key: Key, ip: int, wait: float = DEFAULT_WAIT) -> None:
        service = self.family(ip)
        if service is self.v6:
            self.check_held()
        await service.claim(key, ip, wait)

    def release_new(self, key: Key, before: tuple[Held, ...]) -> None:
        """Undo an allocation: release the families that held nothing `before` it (an earlier ADD's stay)."""
        for s, held in zip(self.services, before, strict=True):
            if held.ip is None:
                with contextlib.suppress(IpamError):
                    s.release(key.container_id, key.ifname)

    def release(self, container_id: str, ifname: str | None = None) -> list[int]:
        """Every family's addresses of the attachment(s); NotFound only when no family held any."""
        out: list[int] = []
        missing: NotFound | None = None
        for s in self.services:
            try:
                out += s.release(container_id, ifname)
            except NotFound as exc:
                missing = exc
        if not out and missing is not None:
            raise missing
        return out

    def lookup(self, key: Key) -> tuple[Held, ...]:
        return tuple(s.lookup(key) for s in self.services)

    def held_keys(self) -> list[Key]:
        return list(dict.fromkeys(k for s in self.services for k in s.held_keys()))

    def _has_ring6(self) -> bool:
        return self.v6 is not None and self.v6.alloc.ring is not None

    def rmpeer(self, text: str) -> tuple[int, int]:
        peer, moved = self.v4.rmpeer(text)
        if self.v6 is not None and self._has_ring6():  # (no IPv6 ring yet: nobody holds IPv6 space)
            with contextlib.suppress(NotFound):
                moved += self.v6.rmpeer(text)[1]
        return peer, moved

    async def leave(self, *, force: bool, wait: float = DEFAULT_WAIT) -> dict[str, Any]:
        """Both families' space handed over at once, within the one `wait`; with no IPv6 ring (never agreed,
        or held back) there is no IPv6 space to hand over."""
        if self.v6 is None or not self._has_ring6():
            return await self.v4.leave(force=force, wait=wait)
        doc, doc6 = await asyncio.gather(self.v4.leave(force=force, wait=wait), self.v6.leave(force=force, wait=wait))
        doc["addresses"] += doc6["addresses"]
        doc["ipv6"] = doc6
        return doc

    def status(self) -> dict[str, Any]:
        """IPv4's status; with an IPv6 range, its own beside it under "ipv6"."""
        doc = self.v4.status()
        if self.v6 is not None:
            doc6 = self.v6.status()
            reason = self.held6()
            if reason:
                doc6["ready"], doc6["waiting"], doc6["held"] = False, reason, True
            doc["ipv6"] = doc6
        return doc

    def ready(self) -> tuple[bool, str]:
        doc = self.status()
        for d in (doc, doc.get("ipv6")):
            if d is not None and not d["ready"]:
                return False, d["waiting"]
        return True, ""

    def owners_with_space(self) -> Iterable[int]:
        return {o for s in self.services for o, held in s.spans().items() if held}

    def allocations(self) -> list[dict[str, Any]]:
        return [a for s in self.services for a in s.allocations()]
