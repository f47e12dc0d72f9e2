"""Pods' addresses in space reclaimed while we were cut off (pure; a mixin of `Allocator`): asked back from the
new owner, which gives back the free ones and names the ones its pods use (a conflict both ends log)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from weave_node.ipam import churn, messages
from weave_node.ipam.address import ip_str
from weave_node.ipam.model import DONATION_RETRY, Unicast

if TYPE_CHECKING:
    from weave_node.ipam.allocator import Allocator


def ask_orphans(a: Allocator, now: float) -> None:
    """Ask each address's owner now to give back those our pods still use."""
    a.orphans_retry = now + DONATION_RETRY
    if a.ring is None or a.fenced(now):
        return
    by_owner: dict[int, list[int]] = {}
    for k, ip in a.orphans.items():
        if k not in a.conflicts:
            by_owner.setdefault(a.ring.owner_of(ip), []).append(ip)
    for owner, ips in sorted(by_owner.items()):
        if owner in a.reachable and owner != a.me:
            data = messages.encode_addresses(a.range, messages.KIND_RECLAIMED, ips)
            a._effects.append(Unicast(owner, data))


def give_back(a: Allocator, src: int, ips: tuple[int, ...], now: float) -> None:
    """A returning peer's pods still use these addresses of our space: the free ones go back to it (a new
    owner needs our quorum, as for a donation); the ones our pods use are a conflict it must resolve."""
    if a.ring is None or src == a.me or a.fenced(now) or a.leaving is not None:
        return
    if src not in a.ring.owners() and not a.has_quorum():
        return
    mine = [ip for ip in ips if a.ring.owner_of(ip) == a.me]
    in_use = [ip for ip in mine if ip in a.by_ip]
    free = [ip for ip in mine if ip not in a.by_ip]
    if free:
        before = a.ring.copy()
        for ip in free:
            a.ring.grant(ip, ip + 1, src, a.me)
        a.ring.check_invariants(before)
        a.counters["given_back"] += len(free)
        a.free_dirty = True
        a._log(
            logging.WARNING,
            f"gave back {len(free)} address(es) to peer {churn.who(a, src)}, whose pods still use them: "
            + ", ".join(ip_str(ip) for ip in free[:10]),
        )
        a._changed(ring=True)
        a._effects.append(Unicast(src, a.state_message(now)))
        a._gossip()
    if in_use:
        a._log(
            logging.ERROR,
            f"address conflict: {len(in_use)} address(es) of pods here are also used by pods on peer "
            f"{churn.who(a, src)} (its space was reclaimed while it was cut off); the pods there must be restarted: "
            + ", ".join(f"{ip_str(ip)} ({a.by_ip[ip].container_id})" for ip in in_use[:10]),
        )
        a._effects.append(Unicast(src, messages.encode_addresses(a.range, messages.KIND_IN_USE, in_use)))


def in_use_elsewhere(a: Allocator, src: int, ips: tuple[int, ...]) -> None:
    taken = set(ips)
    for k, ip in sorted(a.orphans.items()):
        if ip in taken and k not in a.conflicts and a.ring is not None and a.ring.owner_of(ip) == src:
            a.conflicts.add(k)
            a._log(
                logging.ERROR,
                f"address conflict: {ip_str(ip)} of pod {k.container_id}/{k.ifname} is in use by a pod on peer "
                f"{churn.who(a, src)} too (our space was reclaimed while we were cut off): restart this pod, it "
                "gets a new address",
            )
