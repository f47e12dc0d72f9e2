"""Pods' addresses in space reclaimed while we were cut off (pure functions over an `Allocator`): asked back from
the new owner, which gives back the free ones and names the ones its pods use (a conflict both ends log). An
orphan's address that is ours again, however it came back (given back, a donation, a reclaim, rmpeer), is the
pod's at once: `take_back` runs after every change of our space, so it is never handed out to another pod."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from weave_node.core.address import ip_str
from weave_node.ipam import messages
from weave_node.ipam.errors import Conflict, Unavailable
from weave_node.ipam.model import DONATION_RETRY, Key, Unicast

CONFLICT_RETRY = 30.0  # seconds between asking again for addresses in conflict (the other pod may be gone)

if TYPE_CHECKING:
    from weave_node.ipam.allocator import Allocator


def refuse(a: Allocator, key: Key) -> None:
    """An allocation or claim for an orphan's pod waits (its address is asked back) or is a conflict."""
    lost = a.orphans.get(key)
    if lost is None:
        return
    if key in a.conflicts:
        raise Conflict(
            f"{ip_str(lost)} of {key.container_id}/{key.ifname} is in use by another pod too (our space was "
            "reclaimed while we were cut off): delete this pod first, then it gets a new address"
        )
    raise Unavailable(f"{ip_str(lost)} of {key.container_id}/{key.ifname} is being asked back from its new owner")


def note_lost(a: Allocator) -> None:
    """After a merge: allocations outside our space (reclaimed while we were unreachable) become orphans."""
    owned = a.owned()
    lost = [k for k, ip in a.allocations.items() if not any(s <= ip < e for s, e in owned)]
    if lost and a.ring is not None:
        by = a.ring.owner_of(a.allocations[lost[0]])
        a._log(
            logging.ERROR,
            f"our space was reclaimed by peer {a.presence.who(by)} while we were unreachable: {len(lost)} pod "
            "address(es) in it are no longer ours; asking for them back (a free one is taken back, one in use "
            "there is a conflict: restart that pod here): "
            + ", ".join(f"{k.container_id}/{k.ifname}={ip_str(a.allocations[k])}" for k in sorted(lost)[:10]),
        )
        for k in lost:
            a.orphans[k] = a._drop(k)
        a._changes.orphans = True
        a.counters["lost"] += len(lost)


def take_back(a: Allocator) -> None:
    """Orphans whose address is in our space again become allocations (the pod keeps its address)."""
    owned = a.owned()
    for k, ip in sorted(a.orphans.items()):
        if any(s <= ip < e for s, e in owned) and ip not in a.by_ip and k not in a.allocations:
            del a.orphans[k]
            a.conflicts.discard(k)
            a._record(k, ip)
            a._changes.orphans = True
            a.counters["taken_back"] += 1
            a._log(logging.WARNING, f"took back {ip_str(ip)} for pod {k.container_id}/{k.ifname}")


def ask_orphans(a: Allocator, now: float) -> None:
    """Ask each address's owner to give back those our pods still use (the ones in conflict too, now and then:
    the pod that had the address there may be gone)."""
    a.orphans_retry = now + DONATION_RETRY
    if a.ring is None or a.fenced(now) or a.leaving is not None:
        return
    recheck = now >= a.conflicts_retry
    if recheck:
        a.conflicts_retry = now + CONFLICT_RETRY
    by_owner: dict[int, list[int]] = {}
    for k, ip in a.orphans.items():
        if k not in a.conflicts or recheck:
            by_owner.setdefault(a.ring.owner_of(ip), []).append(ip)
    for owner, ips in sorted(by_owner.items()):
        if owner in a.reachable and owner != a.me:
            a._effects.append(Unicast(owner, messages.encode_addresses(a.range, messages.KIND_RECLAIMED, ips)))


def give_back(a: Allocator, src: int, ips: tuple[int, ...], now: float) -> None:
    """A returning peer's pods still use these addresses of our space: the free ones go back to it, in runs (a new
    owner needs our quorum, as for a donation, and we never give away our last address); the ones our pods use
    are a conflict it must resolve."""
    if a.ring is None or src == a.me or a.fenced(now) or a.leaving is not None:
        return
    if src not in a.ring.owners() and not a.has_quorum():
        return
    mine = sorted({ip for ip in ips if a.ring.owner_of(ip) == a.me})
    in_use = [ip for ip in mine if ip in a.by_ip]
    runs: list[tuple[int, int]] = []
    for ip in (ip for ip in mine if ip not in a.by_ip):
        if runs and runs[-1][1] == ip and a.ring.entry_at(ip) == a.ring.entry_at(runs[-1][0]):
            runs[-1] = (runs[-1][0], ip + 1)
        else:
            runs.append((ip, ip + 1))
    keep = sum(e - s for s, e in a.owned()) - 1  # never our last address: an owner of nothing stops counting
    given: list[tuple[int, int]] = []
    for start, end in runs:
        if end - start <= keep:
            given.append((start, end))
            keep -= end - start
    if given:
        ring = a.ring.copy()  # all or nothing: a grant that fails part-way must not leave half a change behind
        for start, end in given:
            ring.grant(start, end, src, a.me)
        ring.check_invariants(a.ring)
        a.ring = ring
        n = sum(e - s for s, e in given)
        a.counters["given_back"] += n
        a.free_dirty = True
        a._log(
            logging.WARNING,
            f"gave back {n} address(es) to peer {a.presence.who(src)}, whose pods still use them: "
            + ", ".join(ip_str(s) if e - s == 1 else f"{ip_str(s)}-{ip_str(e - 1)}" for s, e in given[:10]),
        )
        a._changed(ring=True)
        a._effects.append(Unicast(src, a.state_message(now)))
        a._gossip()
    if in_use:
        a._log(
            logging.ERROR,
            f"address conflict: {len(in_use)} address(es) of pods here are also used by pods on peer "
            f"{a.presence.who(src)} (its space was reclaimed while it was cut off); the pods there must be restarted: "
            + ", ".join(f"{ip_str(ip)} ({a.by_ip[ip].container_id})" for ip in in_use[:10]),
        )
        a._effects.append(Unicast(src, messages.encode_addresses(a.range, messages.KIND_IN_USE, in_use)))


def in_use_elsewhere(a: Allocator, src: int, ips: tuple[int, ...]) -> None:
    taken = set(ips)
    for k, ip in sorted(a.orphans.items()):
        if ip in taken and k not in a.conflicts and a.ring is not None and a.ring.owner_of(ip) == src:
            a.conflicts.add(k)
            a.conflicts_retry = a.last_now + CONFLICT_RETRY
            a._log(
                logging.ERROR,
                f"address conflict: {ip_str(ip)} of pod {k.container_id}/{k.ifname} is in use by a pod on peer "
                f"{a.presence.who(src)} too (our space was reclaimed while we were cut off): restart this pod, it "
                "gets a new address",
            )
