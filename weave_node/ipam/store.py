"""IPAM persistence: one sqlite3 database in WAL mode with synchronous=FULL, so a committed change survives a
crash (SIGKILL, power loss). Each change set commits in one transaction, before the router answers or sends
anything that depends on it."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from weave_node.core.errors import ConfigError
from weave_node.ipam import messages
from weave_node.ipam.address import Range
from weave_node.ipam.allocator import Allocator
from weave_node.ipam.consensus import Claim
from weave_node.ipam.errors import DecodeError
from weave_node.ipam.model import Changes, Key
from weave_node.ipam.presence import MARK_INTERVAL
from weave_node.ipam.ring import Ring

log = logging.getLogger("weave_node.ipam")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS allocations (
    ip INTEGER PRIMARY KEY,
    container_id TEXT NOT NULL,
    ifname TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (container_id, ifname)
);
"""


@dataclass
class Loaded:
    ring: Ring | None
    claims: dict[int, Claim] | None
    allocations: dict[Key, int]
    seen_ago: dict[int, float] | None  # seconds since we last saw each peer; None: an old store without it
    orphans: dict[Key, int]  # pods' addresses in space reclaimed while we were cut off (Allocator.orphans)


class Store:
    def __init__(self, path: Path, *, me: int, span: Range) -> None:
        self.path = path
        self.span = span
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = self._open()
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if "range" in meta and meta["range"] != str(span):
            self.db.close()
            raise ConfigError(
                f"the IPAM state in {path} is for the range {meta['range']}, not {span}: keep IPALLOC_RANGE "
                f"the same on every peer, or remove {path} on every peer to start a new network"
            )
        if "peer" in meta and meta["peer"] != str(me):
            aside = path.with_name(f"{path.name}.peer-{meta['peer']}.{int(time.time())}")
            log.warning("IPAM state in %s belongs to another peer name; moved it to %s", path, aside)
            self.db.close()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(str(path) + suffix).rename(str(aside) + suffix)
            self.db = self._open()
        with self._tx():
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('range', ?), ('peer', ?)", (str(span), str(me)))

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        return db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def load(self) -> Loaded:
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        ring: Ring | None = None
        claims: dict[int, Claim] | None = None
        try:
            if meta.get("ring"):
                state = messages.decode(meta["ring"])
                ring = state.ring if isinstance(state, messages.State) else None
            if meta.get("consensus"):
                state = messages.decode(meta["consensus"])
                claims = state.claims if isinstance(state, messages.State) else None
        except DecodeError as exc:
            raise ConfigError(f"the IPAM state in {self.path} is damaged: {exc}") from None
        rows = self.db.execute("SELECT ip, container_id, ifname FROM allocations")
        allocations = {Key(cid, ifname): ip for ip, cid, ifname in rows}
        try:
            orphans = {Key(cid, ifname): int(ip) for cid, ifname, ip in json.loads(meta.get("orphans") or b"[]")}
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"the IPAM state in {self.path} is damaged: orphans: {exc}") from None
        return Loaded(ring, claims, allocations, self._seen_ago(meta.get("seen"), time.time()), orphans)

    def _seen_ago(self, raw: bytes | None, wall: float) -> dict[int, float] | None:
        """The last sightings, as seconds ago. A mark is up to MARK_INTERVAL old when we stop: counted as fresh."""
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            return {int(name, 16): max(0.0, wall - float(at) - MARK_INTERVAL) for name, at in doc.items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"the IPAM state in {self.path} is damaged: sightings: {exc}") from None

    def commit(self, alloc: Allocator, changes: Changes) -> None:
        now = time.time()
        with self._tx():  # one transaction: COMMIT (fsync of the WAL) or ROLLBACK
            if changes.seen:
                self._put_seen(alloc, now)
            if changes.orphans:
                rows = [[k.container_id, k.ifname, ip] for k, ip in sorted(alloc.orphans.items())]
                self._put_meta("orphans", json.dumps(rows).encode())
            if changes.ring and alloc.ring is not None:
                self._put_meta("ring", messages.encode_state(self.span, alloc.ring))
            if changes.consensus:
                if alloc.consensus is not None:
                    c = alloc.consensus
                    self._put_meta("consensus", messages.encode_state(self.span, None, c.quorum, c.claims))
                else:
                    self.db.execute("DELETE FROM meta WHERE key = 'consensus'")
            if changes.delete:
                self.db.executemany("DELETE FROM allocations WHERE ip = ?", [(ip,) for ip in changes.delete])
            if changes.put:
                self.db.executemany(
                    "INSERT OR REPLACE INTO allocations VALUES (?, ?, ?, ?)",
                    [(ip, k.container_id, k.ifname, now) for ip, k in changes.put.items()],
                )

    def mark_quorum(self, wall: float) -> None:
        """We see a quorum of the space's owners at wall-clock time `wall` (read back as `away` on restart)."""
        with self._tx():
            self._put_meta("quorum_at", repr(wall).encode())

    def mark_seen(self, alloc: Allocator) -> None:
        """Every MARK_INTERVAL: the peers we see now were seen now (read back as `seen_ago` on restart)."""
        with self._tx():
            self._put_seen(alloc, time.time())

    def _put_seen(self, alloc: Allocator, wall: float) -> None:
        ago = alloc.presence.seen_ago(alloc.last_now)
        doc = {f"{name:x}": round(wall - seconds, 1) for name, seconds in sorted(ago.items()) if name != alloc.me}
        self._put_meta("seen", json.dumps(doc).encode())

    def away(self, wall: float) -> float | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'quorum_at'").fetchone()
        try:
            return max(0.0, wall - float(row[0])) if row else None
        except ValueError:
            return None

    def _put_meta(self, key: str, value: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self.db.close()
