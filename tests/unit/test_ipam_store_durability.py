"""What the store fsyncs: a change peers rely on (the ring, consensus, sightings, orphans, a hand-over) commits with
synchronous=FULL, and so does a release or an allocation made through the API; a pod's allocation alone with NORMAL
(no fsync: the pod dies with the kernel, see weave_node/ipam/store.py), which still survives the router's own
crash (the WAL is in the page cache)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from weave_node.core.address import parse_ip, parse_range
from weave_node.ipam.allocator import Allocator
from weave_node.ipam.model import Changes, Init, Key
from weave_node.ipam.store import Store

pytestmark = pytest.mark.unit
ME = 0x0200000000A1
SPAN = parse_range("10.32.0.0/24")
POD = Key("c0ffee", "eth0")


def _alloc() -> Allocator:
    return Allocator(ME, SPAN, Init("seed", seeds=(ME,)), reclaim_after=60, now=0.0)


def _modes(store: Store, alloc: Allocator, changes: Changes, durable: bool = True) -> list[str]:
    """The synchronous mode each statement of one commit ran under (PRAGMAs and the transaction's own)."""
    seen: list[str] = []
    store.db.set_trace_callback(seen.append)
    try:
        store.commit(alloc, changes, durable=durable)
    finally:
        store.db.set_trace_callback(None)
    mode = store.db.execute("PRAGMA synchronous").fetchone()[0]
    return [s for s in seen if s.startswith("PRAGMA")] + [{1: "NORMAL", 2: "FULL"}[mode]]


@pytest.mark.parametrize(
    "changes",
    [Changes(ring=True), Changes(consensus=True), Changes(seen=True), Changes(orphans=True), Changes(leaving=True),
     Changes(ring=True, put={parse_ip("10.32.0.5"): POD})],
    ids=["ring", "consensus", "seen", "orphans", "leaving", "ring-and-allocation"],
)  # fmt: skip
def test_what_peers_rely_on_is_fsynced(tmp_path: Path, changes: Changes) -> None:
    store, alloc = Store(tmp_path / "ipam.db", me=ME, span=SPAN), _alloc()
    store.commit(alloc, Changes(put={parse_ip("10.32.0.4"): POD}), durable=False)  # (NORMAL before)
    assert _modes(store, alloc, changes, durable=False)[-1] == "FULL"


def test_a_pods_allocation_alone_is_not_fsynced_and_a_later_full_commit_switches_back(tmp_path: Path) -> None:
    store, alloc = Store(tmp_path / "ipam.db", me=ME, span=SPAN), _alloc()
    pod = Changes(put={parse_ip("10.32.0.4"): POD})
    assert _modes(store, alloc, pod, durable=False) == ["PRAGMA synchronous=NORMAL", "NORMAL"]
    assert _modes(store, alloc, Changes(put={parse_ip("10.32.0.5"): POD}), durable=False) == ["NORMAL"]  # (once)
    assert _modes(store, alloc, Changes(seen=True)) == ["PRAGMA synchronous=FULL", "FULL"]
    # an allocation through the API (it may name anything) and a release (DEL, GC): fsynced
    assert _modes(store, alloc, Changes(put={parse_ip("10.32.0.6"): POD})) == ["FULL"]
    assert _modes(store, alloc, Changes(delete={parse_ip("10.32.0.4")}), durable=False) == ["FULL"]
    store.mark(alloc, quorum=True)  # every other transaction: FULL
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2


def _commit_and_die(path: str) -> None:
    store = Store(Path(path), me=ME, span=SPAN)
    store.commit(_alloc(), Changes(put={parse_ip("10.32.0.7"): POD}), durable=False)
    os._exit(0)  # no close, no checkpoint: as a SIGKILL right after the answer


def test_an_allocation_survives_the_routers_crash(tmp_path: Path) -> None:
    path = tmp_path / "ipam.db"
    Store(path, me=ME, span=SPAN).close()
    child = multiprocessing.get_context("fork").Process(target=_commit_and_die, args=(str(path),))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert Store(path, me=ME, span=SPAN).load().allocations == {POD: parse_ip("10.32.0.7")}
