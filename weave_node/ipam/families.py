"""IPAM per address family: one IpamService per range (IPv4's on the gossip channel "ipam", kept in ipam.db;
IPv6's, dual-stack or alone, on "ipam6", kept in ipam6.db: a ring, a bootstrap and allocations of its own: a change
between dual-stack and IPv6 alone keeps IPv6's allocations), and what the rest of the router asks of them
together: a pod's address in every family (all or none), releases, lookups.

An IPv6 ring is held back while a connected peer cannot carry it (no `ipam-ipv6` mesh feature: an older router,
which drops the "ipam6" channel and so cannot relay its gossip): its allocations fail at once with the peer named,
rather than waiting out their time or handing out addresses a part of the mesh does not know about. An IPv4 ring
likewise while a connected peer has an IPv6 range alone (it carries no "ipam" channel): a rolling change between
an IPv6 range alone and dual-stack never waits on a ring half the mesh cannot carry. Features are what both ends
have (the intersection), so that peer is one we share `ipam-families` and `ipam-ipv6` but not `ipam-ipv4` with (a
router from before `ipam-families` carries IPv4 whatever it shares).
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
FEATURE_IPV4 = "ipam-ipv4"  # mesh feature: this router carries an IPv4 ring (among FEATURE_FAMILIES routers)
FEATURE_FAMILIES = "ipam-families"  # mesh feature: this router says which rings it carries (the two above)


class Ipam:
    def __init__(
        self,
        v4: IpamService | None,
        v6: IpamService | None = None,
        held6: Callable[[], str] = lambda: "",
        held4: Callable[[], str] = lambda: "",
    ) -> None:
        """IPv4's service, IPv6's, or both (dual-stack); `held6`, `held4`: why that family's ring must wait (""
        when it need not): see the module's note."""
        self.services: tuple[IpamService, ...] = tuple(s for s in (v4, v6) if s is not None)
        if not self.services:
            raise ValueError("IPAM needs a range")
        self.v4 = v4
        self.v6 = v6
        self.held6, self.held4 = held6, held4

    @property
    def primary(self) -> IpamService:
        """The overlay's own family (the bridge's gossiped address): IPv4's, or IPv6's alone."""
        return self.services[0]

    @property
    def dual(self) -> IpamService | None:
        """Dual-stack's second family (IPv6 beside IPv4), or None."""
        return self.services[1] if len(self.services) > 1 else None

    @property
    def ranges(self) -> tuple[Range, ...]:
        return tuple(s.range for s in self.services)

    def family(self, ip: int) -> IpamService:
        """The service whose range holds `ip` (the primary when none does: it says what is wrong)."""
        return next((s for s in self.services if ip in s.range), self.primary)

    async def start(self) -> None:
        for s in self.services:
            await s.start()

    async def stop(self) -> None:
        for s in self.services:
            await s.stop()

    def set_on_change(self, callback: Callable[[], None] | None) -> None:
        for s in self.services:
            s.on_change = callback

    def held(self, service: IpamService) -> str:
        """Why `service`'s ring is held back ("" when it is not)."""
        return self.held6() if service is self.v6 else self.held4()

    def check_held(self, services: Iterable[IpamService] | None = None) -> None:
        for s in self.services if services is None else services:
            if reason := self.held(s):
                raise Unavailable(f"no {'IPv6' if s.range.ipv6 else 'IPv4'} address: {reason}")

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
        self.check_held((service,))
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

    def _dual_ring(self) -> IpamService | None:
        """Dual-stack's IPv6 service once it has a ring (before, nobody holds IPv6 space)."""
        dual = self.dual
        return dual if dual is not None and dual.alloc.ring is not None else None

    def rmpeer(self, text: str) -> tuple[int, int]:
        peer, moved = self.primary.rmpeer(text)
        if (dual := self._dual_ring()) is not None:
            with contextlib.suppress(NotFound):
                moved += dual.rmpeer(text)[1]
        return peer, moved

    async def leave(self, *, force: bool, wait: float = DEFAULT_WAIT) -> dict[str, Any]:
        """Both families' space handed over at once, within the one `wait`; with no IPv6 ring (never agreed,
        or held back) there is no IPv6 space to hand over."""
        dual = self._dual_ring()
        if dual is None:
            return await self.primary.leave(force=force, wait=wait)
        doc, doc6 = await asyncio.gather(self.primary.leave(force=force, wait=wait), dual.leave(force=force, wait=wait))
        doc["addresses"] += doc6["addresses"]
        doc["ipv6"] = doc6
        return doc

    def status(self) -> dict[str, Any]:
        """The primary family's status ("family": "ipv4", or "ipv6" alone); dual-stack's IPv6 one under "ipv6"."""
        docs = []
        for s in self.services:
            doc = {**s.status(), "family": "ipv6" if s.range.ipv6 else "ipv4"}
            if reason := self.held(s):
                doc["ready"], doc["waiting"], doc["held"] = False, reason, True
            docs.append(doc)
        if len(docs) > 1:
            docs[0]["ipv6"] = docs[1]
        return docs[0]

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
