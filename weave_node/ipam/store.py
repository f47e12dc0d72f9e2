"""IPAM persistence: one sqlite3 database in WAL mode. Each change set commits in one transaction, before the
router answers or sends anything that depends on it, and survives the router's crash (SIGKILL: the WAL is in the
kernel's page cache).

What peers rely on (the ring, consensus, sightings, orphans, a hand-over) also survives the host's crash (power
loss): those transactions are synchronous=FULL, the WAL fsynced before COMMIT returns, and so is every other
change, with one exception: a pod's ADD (`durable=False`: its allocation alone) is synchronous=NORMAL, no fsync,
~0.3 ms off every ADD here and a disk flush off it on slow disks. That loses nothing that matters: the allocation
names a pod on this host, whose network namespace dies with the kernel, so what a power loss can take back is
the allocation of a pod that is gone after the reboot anyway: it can only leave free an address no living pod
holds, never give one address twice. Releases (DEL, GC) and allocations through the API (which may name anything)
stay FULL. The WAL is written in order, so the next FULL commit (at the latest the sightings' mark, every
MARK_INTERVAL) makes every earlier NORMAL one durable too, and a power loss leaves a prefix of the transactions.
A write error in the background (a failing disk) would surface at that next fsync, and the router stops there
as at any failed commit."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from weave_node.core.address import Range
from weave_node.core.errors import ConfigError
from weave_node.ipam import messages
from weave_node.ipam.allocator import Allocator
from weave_node.ipam.consensus import Claim
from weave_node.ipam.errors import DecodeError
from weave_node.ipam.model import Changes, Key, Leaving
from weave_node.ipam.presence import restored_ago
from weave_node.ipam.ring import Ring

log = logging.getLogger("weave_node.ipam")

STATE_FORMAT = 1
"""The format of ipam.db (meta 'format'): bumped by a release that changes what is stored. A router refuses a state
of a newer format (a downgrade across such a change: its state would be misread); an older one it converts."""
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
    shared: set[str] = field(default_factory=set)  # host names two peers had at once (Presence.shared)
    leaving: Leaving | None = None  # we left the ring (Allocator.leaving)


@dataclass(frozen=True)
class Mark:
    """A moment as the store keeps it: which boot, the boot clock (CLOCK_BOOTTIME: it counts suspend, and NTP
    never steps it) and the wall clock (only to bound the time between two boots)."""

    boot: str
    up: float
    wall: float

    @classmethod
    def now(cls) -> Mark:
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            boot = ""
        return cls(boot, time.clock_gettime(time.CLOCK_BOOTTIME), time.time())

    def surely_since(self, earlier: Mark) -> float:
        """Seconds from `earlier` to now, never more than certain (for vouches): on the same boot the boot clock
        tells; across a reboot, at most our uptime (a wall clock stepped forward must not stretch a vouch)."""
        if earlier.boot and earlier.boot == self.boot:
            return max(0.0, self.up - earlier.up)
        return max(0.0, min(self.wall - earlier.wall, self.up))

    def maybe_since(self, earlier: Mark) -> float:
        """Seconds from `earlier` to now, at least what the clocks say (for "how long were we away"): on the same
        boot the boot clock; across a reboot, the wall clock or our uptime, whichever is longer."""
        if earlier.boot and earlier.boot == self.boot:
            return max(0.0, self.up - earlier.up)
        return max(0.0, self.wall - earlier.wall, self.up)

    def encode(self) -> dict[str, object]:
        return {"boot": self.boot, "up": round(self.up, 3), "wall": round(self.wall, 3)}

    @classmethod
    def decode(cls, doc: dict[str, object]) -> Mark:
        return cls(str(doc["boot"]), float(str(doc["up"])), float(str(doc["wall"])))


def _from_db(value: int | bytes) -> int:
    return int.from_bytes(value, "big") if isinstance(value, bytes) else int(value)


class Store:
    """One range's state. An IPv6 range's addresses are 16-byte BLOBs in its own database (sqlite's INTEGER holds
    64 bits); an IPv4 range's stay INTEGERs, as every release before wrote them."""

    def _to_db(self, ip: int) -> int | bytes:
        return ip.to_bytes(16, "big") if self.span.ipv6 else ip

    def __init__(self, path: Path, *, me: int, span: Range, clock: Callable[[], Mark] = Mark.now) -> None:
        self.path = path
        self.clock = clock
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
        raw = meta.get("format", 1)  # 0.1.0 wrote no format: 1
        found = int(raw) if str(raw).isdigit() else STATE_FORMAT + 1  # unreadable: not ours to guess
        if found > STATE_FORMAT:
            self.db.close()
            raise ConfigError(
                f"the IPAM state in {path} was written by a newer weave-node (state format {found}; this one reads "
                f"up to {STATE_FORMAT}): a downgrade across a state format change is not supported. Install the "
                "newer version again (docs/day2.md, Upgrading)"
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
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (str(STATE_FORMAT),))

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        self._sync_mode = "FULL"
        db.executescript(SCHEMA.replace("ip INTEGER", "ip BLOB") if self.span.ipv6 else SCHEMA)
        return db

    @contextlib.contextmanager
    def _tx(self, full: bool = True) -> Iterator[None]:
        self._synchronous(full)
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
        allocations = {Key(cid, ifname): _from_db(ip) for ip, cid, ifname in rows}
        try:
            orphans = {Key(cid, ifname): int(ip) for cid, ifname, ip in json.loads(meta.get("orphans") or b"[]")}
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"the IPAM state in {self.path} is damaged: orphans: {exc}") from None
        seen_ago, shared = self._sightings(meta.get("seen"))
        return Loaded(ring, claims, allocations, seen_ago, orphans, shared, self._leaving(meta.get("leaving")))

    def _leaving(self, raw: bytes | None) -> Leaving | None:
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            entries = {int(t): (int(r[0]), int(r[1]), int(r[2]), int(r[3])) for t, r in doc["entries"].items()}
            return Leaving(int(doc["receiver"]), int(doc["addresses"]), entries, bool(doc["acknowledged"]))
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise ConfigError(f"the IPAM state in {self.path} is damaged: leaving: {exc}") from None

    def _sightings(self, raw: bytes | None) -> tuple[dict[int, float] | None, set[str]]:
        """The last sightings, as seconds ago now. Peers seen at the last mark may have stayed in sight until we
        stopped, up to two mark intervals later: every sighting counts as that much fresher (the safe error)."""
        if raw is None:
            return None, set()
        try:
            doc = json.loads(raw)
            if "ago" not in doc:
                return None, set()  # written before sightings had a boot clock: as if never kept
            elapsed = self.clock().surely_since(Mark.decode(doc["mark"]))
            seen = {int(name, 16): restored_ago(float(ago) + elapsed) for name, ago in doc["ago"].items()}
            return seen, {str(n) for n in doc.get("shared", [])}
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ConfigError(f"the IPAM state in {self.path} is damaged: sightings: {exc}") from None

    def _synchronous(self, full: bool) -> None:
        mode = "FULL" if full else "NORMAL"
        if self._sync_mode != mode:  # (between transactions: sqlite refuses it inside one)
            self.db.execute(f"PRAGMA synchronous={mode}")
            self._sync_mode = mode

    def commit(self, alloc: Allocator, changes: Changes, *, durable: bool = True) -> None:
        now = time.time()
        # A pod's allocation alone (durable=False): no fsync (the module's docstring says why that loses nothing).
        flags = changes.ring or changes.consensus or changes.seen or changes.orphans or changes.leaving
        full = durable or flags or bool(changes.delete)
        with self._tx(full):  # one transaction: COMMIT (with FULL, an fsync of the WAL) or ROLLBACK
            if changes.seen:
                self._put_seen(alloc)
            if changes.leaving and alloc.leaving is not None:
                lv = alloc.leaving
                doc = {
                    "receiver": lv.receiver,
                    "addresses": lv.addresses,
                    "entries": {str(t): list(r) for t, r in lv.entries.items()},
                    "acknowledged": lv.acknowledged,
                }
                self._put_meta("leaving", json.dumps(doc).encode())
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
                self.db.executemany(
                    "DELETE FROM allocations WHERE ip = ?", [(self._to_db(ip),) for ip in changes.delete]
                )
            if changes.put:
                self.db.executemany(
                    "INSERT OR REPLACE INTO allocations VALUES (?, ?, ?, ?)",
                    [(self._to_db(ip), k.container_id, k.ifname, now) for ip, k in changes.put.items()],
                )

    def mark(self, alloc: Allocator, *, quorum: bool) -> None:
        """Every MARK_INTERVAL, in one transaction: whom we see now (read back as `seen_ago`) and, with `quorum`,
        that we see a quorum of the owners now (read back as `away`)."""
        with self._tx():
            self._put_seen(alloc)
            if quorum:
                self._put_meta("quorum_mark", json.dumps(self.clock().encode()).encode())

    def _put_seen(self, alloc: Allocator) -> None:
        ago = alloc.presence.seen_ago(alloc.last_now)
        doc = {
            "mark": self.clock().encode(),
            "ago": {f"{name:x}": round(seconds, 1) for name, seconds in sorted(ago.items()) if name != alloc.me},
            "shared": sorted(alloc.presence.shared),
        }
        self._put_meta("seen", json.dumps(doc).encode())

    def away(self) -> float | None:
        """Seconds since we last saw a quorum of the owners (None: never, or not known)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'quorum_mark'").fetchone()
        try:
            return self.clock().maybe_since(Mark.decode(json.loads(row[0]))) if row else None
        except (ValueError, TypeError, KeyError):
            return None

    def _put_meta(self, key: str, value: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self.db.close()
