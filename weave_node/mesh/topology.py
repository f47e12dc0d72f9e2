"""The topology CRDT: every known peer record, merged by "greatest (version, uid) wins" (records.py), and what
is reachable from us.

Restart rule: a restarted peer keeps its name but starts again at version 1 with a new UID, so its old record
(higher version) would win everywhere. When a peer receives a record for its own name that differs from its own
current record, it bumps its own version past it (to that version + 1) and reports itself changed, so its live
record wins everywhere. Refinement: a record that differs from ours *only* in its version (same uid and content)
is our own record echoed back, and we adopt its version rather than going one past it; this keeps the local
outcome independent of delivery order (the rule is then "version = max over inputs", a join).

Reachability: an edge A-B counts only when both records list each other as established. `gc()` drops every record
not reachable from the local peer over such edges. The reachable set is maintained incrementally (merges that only
add edges extend it; losing an edge invalidates it) so that calling `gc()` after every merge stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType

from weave_node.mesh.records import (
    MAX_VERSION,
    ConnectionInfo,
    PeerRecord,
    decode_records,
    encode_records,
    encoded_size,
    validate_record,
    wins,
)

__all__ = [
    "ConnectionInfo",
    "PeerRecord",
    "Topology",
    "decode_records",
    "encode_records",
    "encoded_size",
    "validate_record",
    "wins",
]  # (records.py's names stay importable from here)


class Topology:
    """The local peer's record plus every known peer record, merged as a CRDT. Pure: no clock, no I/O."""

    def __init__(self, local: PeerRecord) -> None:
        validate_record(local)
        self._name = local.name
        self._records: dict[int, PeerRecord] = {local.name: local}
        self._view: Mapping[int, PeerRecord] = MappingProxyType(self._records)
        self._reach: set[int] | None = {local.name}
        self._fingerprint = local.digest

    @property
    def name(self) -> int:
        return self._name

    @property
    def local(self) -> PeerRecord:
        return self._records[self._name]

    @property
    def records(self) -> Mapping[int, PeerRecord]:
        """Read-only live view: name -> record (the local record included)."""
        return self._view

    def fingerprint(self) -> int:
        """XOR of every held record's digest: equal fingerprints mean (almost surely) equal record maps."""
        return self._fingerprint

    # ---- local changes -----------------------------------------------------------------------------------

    def set_local_connections(self, connections: Iterable[ConnectionInfo]) -> bool:
        """Replace the local connection list (any order); bump the version when it changed. ValueError if bad."""
        conns = tuple(sorted(connections, key=lambda c: c.peer))
        local = self.local
        if conns == local.connections:
            return False
        self._set_local(replace(local, version=local.version + 1, connections=conns))
        return True

    def set_nickname(self, nickname: str) -> bool:
        """Change the local nickname; bump the version when it changed."""
        local = self.local
        if nickname == local.nickname:
            return False
        self._set_local(replace(local, version=local.version + 1, nickname=nickname))
        return True

    def _set_local(self, record: PeerRecord) -> None:
        validate_record(record)
        self._replace(self.local, record)

    # ---- merging -----------------------------------------------------------------------------------------

    def merge(self, records: Iterable[PeerRecord]) -> set[int]:
        """Merge gossiped records; return the names whose held record changed (the delta to gossip on)."""
        improved: set[int] = set()
        held = self._records
        for r in records:
            name = r.name
            current = held.get(name)
            if current is r:
                continue
            if name == self._name:
                if self._merge_own(r):
                    improved.add(name)
            elif current is None or wins(r, current):
                self._replace(current, r)
                improved.add(name)
        return improved

    def _merge_own(self, r: PeerRecord) -> bool:
        """The restart rule (see the module docstring)."""
        own = self.local
        if r == own:
            return False
        echo = r.uid == own.uid and r.nickname == own.nickname and r.connections == own.connections
        target = min(r.version if echo else r.version + 1, MAX_VERSION)
        if target <= own.version:
            return False
        self._replace(own, replace(own, version=target))
        return True

    def _replace(self, old: PeerRecord | None, new: PeerRecord) -> None:
        name = new.name
        self._records[name] = new
        self._fingerprint ^= (old.digest if old is not None else 0) ^ new.digest
        reach = self._reach
        if reach is None:
            return
        old_est = old.established if old is not None else frozenset()
        new_est = new.established
        if old_est == new_est:
            return
        held = self._records
        if name in reach:
            for m in old_est - new_est:
                other = held.get(m)
                if other is not None and name in other.established:
                    self._reach = None  # a reachable edge is gone: recompute on demand
                    return
        for m in new_est - old_est:
            other = held.get(m)
            if other is not None and name in other.established:
                if name in reach and m not in reach:
                    self._expand(reach, m)
                elif m in reach and name not in reach:
                    self._expand(reach, name)

    def _expand(self, reach: set[int], start: int) -> None:
        held = self._records
        reach.add(start)
        stack = [start]
        while stack:
            x = stack.pop()
            for y in held[x].established:
                if y not in reach:
                    other = held.get(y)
                    if other is not None and x in other.established:
                        reach.add(y)
                        stack.append(y)

    # ---- reachability and gc -----------------------------------------------------------------------------

    def _reachable(self) -> set[int]:
        if self._reach is None:
            reach: set[int] = set()
            self._expand(reach, self._name)
            self._reach = reach
        return self._reach

    def reachable(self) -> set[int]:
        """Names reachable from the local peer over symmetric established edges (the local name included)."""
        return set(self._reachable())

    def gc(self) -> set[int]:
        """Forget every peer not reachable from the local peer; return the forgotten names."""
        return set(self.collect())

    def collect(self) -> dict[int, PeerRecord]:
        """`gc()`, returning the forgotten records."""
        reach = self._reachable()
        if len(reach) == len(self._records):
            return {}
        removed = {n: r for n, r in self._records.items() if n not in reach}
        for r in removed.values():
            self._fingerprint ^= r.digest
            del self._records[r.name]
        return removed

    def check_invariants(self) -> None:
        """Raise AssertionError when the internal state is inconsistent (for tests, after every mutation)."""
        held = self._records
        if held.get(self._name) is None:
            raise AssertionError("the local record is missing")
        fingerprint = 0
        for name, r in held.items():
            if r.name != name:
                raise AssertionError(f"record of {r.name} held under {name}")
            try:
                validate_record(r)
            except ValueError as e:
                raise AssertionError(f"invalid record {name}: {e}") from e
            fingerprint ^= r.digest
        if fingerprint != self._fingerprint:
            raise AssertionError("fingerprint out of date")
        if self._reach is not None:
            fresh: set[int] = set()
            self._expand(fresh, self._name)
            if fresh != self._reach:
                raise AssertionError(f"reachable set out of date: {sorted(fresh ^ self._reach)}")
