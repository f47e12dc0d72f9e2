"""The router's name records: our own (kept in <state-dir>/dns.json, so a restarted router keeps its pods'
names), everyone's (the `Records` CRDT on the mesh's "dns" gossip channel), and who is gone (from IPAM: a peer
whose space went to others takes its names with it).

Our book is sent whole at every change and in the periodic full state; a peer's book we learn is passed on
(`on_gossip` returns it). The file is written atomically (temp file, rename) before a change is gossiped; it is
not fsynced: pods do not outlive a crash of the kernel, and their names need not either.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from weave_node.core.address import ip_str, parse_ip, parse_ip6
from weave_node.core.errors import ConfigError
from weave_node.dns import wire
from weave_node.dns.records import MAX_NAME, MAX_RECORDS, InvalidRecord, Record, Records, normal_name
from weave_node.mesh.gossip import GossipChannel

log = logging.getLogger("weave_node.dns")
CHANNEL = "dns"
MANUAL = ""  # the container of a record added through the API


class DnsRecords:
    def __init__(
        self, me: int, path: Path, clock_ns: Callable[[], int] = time.time_ns, *, max_name: int = MAX_NAME
    ) -> None:
        self.max_name = max_name  # 253 - len(".<domain>"): a name must fit under our domain
        self.records = Records(me)
        self.path = path
        self.clock_ns = clock_ns
        self.channel: GossipChannel | None = None
        self.own: set[Record] = set()
        self._owners_with_space: set[int] = set()
        self._chunks: list[bytes] = []
        self.generation = 0  # moves at every change of the names anyone holds (the server's answers follow it)
        self.counters = {"gossip_received": 0, "books_taken": 0, "owners_removed": 0}

    def attach(self, channel: GossipChannel) -> None:
        self.channel = channel

    # ---- our records --------------------------------------------------------------------------------------

    def start(self, held: Iterable[str]) -> None:
        """Our records as the file left them, without those of attachments that no longer hold an address."""
        alive = set(held)
        loaded = self._load()
        self.own = {r for r in loaded if r.container == MANUAL or r.container in alive}
        if len(self.own) != len(loaded):
            log.info("DNS: %d name(s) of pods gone while the router was down dropped", len(loaded) - len(self.own))
        self._publish()

    def set_container(self, container: str, names: Iterable[str], ips: Iterable[int]) -> list[str]:
        """The names of one attachment (ADD), one record per name and address (A, and AAAA when dual-stack): what
        it had before is replaced. Invalid names are skipped (logged): a name must never fail a pod's ADD.
        Returns the names kept."""
        records = set()
        for name in names:
            try:
                made = [Record(self._name(name), ip, container) for ip in ips]
                for record in made:
                    record.check()
            except InvalidRecord as exc:
                log.warning("DNS: no record for %s: %s", container, exc)
                continue
            records.update(made)
        others = {r for r in self.own if r.container != container}
        if len(others) + len(records) > MAX_RECORDS:  # (each name counts once per address family)
            log.warning("DNS: no names for %s: this host already holds %d records, at most %d", container,
                        len(others), MAX_RECORDS)  # fmt: skip
            records = set()
        self._replace(others | records)
        return sorted({r.name for r in records})

    def drop_container(self, container: str) -> int:
        """DEL or GC of an attachment: its names go."""
        return self._replace({r for r in self.own if r.container != container})

    def add(self, name: str, ip: int) -> Record:
        """A record by hand (the API). InvalidRecord when the name or address is not one we keep."""
        record = Record(self._name(name), ip, MANUAL)
        record.check()
        if record not in self.own and len(self.own) >= MAX_RECORDS:
            raise InvalidRecord(f"this host already holds {MAX_RECORDS} records")
        self._replace(self.own | {record})
        return record

    def remove(self, name: str, ip: int | None = None) -> int:
        """Records by hand of a name (and address): how many went."""
        wanted = normal_name(name)
        return self._replace(
            {r for r in self.own if not (r.container == MANUAL and r.name == wanted and ip in (None, r.ip))}
        )

    def _replace(self, records: set[Record]) -> int:
        """Our records become `records`, published when they differ; how many of the old ones went."""
        if records == self.own:
            return 0
        gone = len(self.own - records)
        self.own = records
        self._publish()
        return gone

    def _name(self, text: str) -> str:
        name = normal_name(text)
        if len(name) > self.max_name:
            raise InvalidRecord(f"{name[:40]}...: longer than {self.max_name} characters, too long under our domain")
        return name

    def _publish(self) -> None:
        """Our records as they are now: to the file (a failure is logged: the names still go out, and the file
        follows at the next change), then a new book, gossiped."""
        records = sorted(self.own)
        try:
            self._save(records)
        except OSError as exc:
            log.error("DNS: cannot write %s (%s): our names are not kept across a restart", self.path, exc)
        book = self.records.set_own(records, self.clock_ns())
        self._chunks = []
        self.generation += 1
        if self.channel is not None:
            self.channel.gossip(wire.encode([book]))

    # ---- who is gone --------------------------------------------------------------------------------------

    def space_changed(self, owners: Iterable[int]) -> None:
        """IPAM's ring changed: a peer that held space and holds none now was retired or reclaimed, and its
        names go with its addresses; one that holds space again is readmitted."""
        now = set(owners)
        for gone in self._owners_with_space - now:
            if self.records.remove_owner(gone):
                self.counters["owners_removed"] += 1
                self.generation += 1
                log.info("DNS: the names of peer %x are gone with its address space", gone)
        for back in now:
            self.records.readmit(back)
        self._owners_with_space = now

    # ---- gossip.Gossiper ----------------------------------------------------------------------------------

    def on_gossip(self, src: int, data: bytes) -> bytes | None:
        books = wire.decode(data)
        self.counters["gossip_received"] += 1
        changed = self.records.merge(books, self.clock_ns())
        if not changed:
            return None
        self.counters["books_taken"] += len(changed)
        self._chunks = []
        self.generation += 1
        return wire.encode(changed)

    def on_unicast(self, src: int, data: bytes) -> None:
        return None

    def on_broadcast(self, src: int, data: bytes) -> None:
        return None

    def gossip_state(self) -> bytes | None:
        """The full state, a chunk at a time when it is larger than a message (each call the next one)."""
        if not self.records.books:
            return None
        if not self._chunks:
            self._chunks = wire.encode_chunks(self.records.snapshot().values())
        return self._chunks.pop(0)

    # ---- reading ------------------------------------------------------------------------------------------

    def lookup(self, name: str) -> list[int]:
        return self.records.lookup(name)

    def reverse(self, ip: int) -> list[str]:
        return self.records.reverse(ip)

    def listing(self) -> list[dict[str, Any]]:
        me = self.records.me
        return [
            {
                "name": r.name,
                "ip": ip_str(r.ip),
                "container": r.container,
                "owner": f"{b.owner:x}",
                "ours": b.owner == me,
            }
            for b in sorted(self.records.snapshot().values(), key=lambda b: b.owner)
            for r in b.records
        ]

    def status(self) -> dict[str, Any]:
        books = self.records.snapshot()
        return {
            "records": sum(len(b.records) for b in books.values()),
            "own_records": len(self.own),
            "owners": len(books),
            **self.counters,
        }

    # ---- the file -----------------------------------------------------------------------------------------

    def _load(self) -> set[Record]:
        try:
            doc = json.loads(self.path.read_text())
            return {_record(r) for r in doc["records"]}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError, InvalidRecord, ConfigError) as exc:
            log.error("DNS: %s is unreadable (%s): starting without our records", self.path, exc)
            return set()

    def _save(self, records: list[Record]) -> None:
        doc = {"version": 1, "records": [[r.name, ip_str(r.ip), r.container] for r in records]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".dns-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _record(raw: Any) -> Record:
    name, ip, container = raw
    record = Record(str(name), any_ip(str(ip)), str(container))
    record.check()
    return record


def any_ip(text: str) -> int:
    """An address of either family (ConfigError when it is neither)."""
    return parse_ip6(text) if ":" in text else parse_ip(text)
