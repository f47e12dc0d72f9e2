"""The store's memory of time: sightings and "how long were we away" are measured on the boot clock, so a wall
clock stepped forward (NTP after a reboot, a VM restored from a snapshot) can never stretch a vouch."""

from __future__ import annotations

from pathlib import Path

import pytest

from weave_node.core.address import parse_range
from weave_node.ipam import messages
from weave_node.ipam.allocator import Allocator
from weave_node.ipam.model import Init
from weave_node.ipam.presence import MARK_INTERVAL, Sighting
from weave_node.ipam.store import Mark, Store

pytestmark = pytest.mark.unit
ME, X = 0x0200000000A1, 0x0200000000A2
SPAN = parse_range("10.32.0.0/24")


class Clock:
    def __init__(self) -> None:
        self.mark = Mark("boot-1", 1000.0, 1_700_000_000.0)

    def __call__(self) -> Mark:
        return self.mark


def stored(tmp_path: Path, clock: Clock, x_absent_for: float) -> Store:
    store = Store(tmp_path / "ipam.db", me=ME, span=SPAN, clock=clock)
    alloc = Allocator(ME, SPAN, Init("seed", seeds=(ME,)), reclaim_after=60, now=0.0)
    alloc.presence.last_seen[X] = -x_absent_for
    store.mark(alloc, quorum=True)
    return store


def test_same_boot_the_boot_clock_tells_and_a_wall_clock_step_changes_nothing(tmp_path: Path) -> None:
    clock = Clock()
    stored(tmp_path, clock, x_absent_for=100.0).close()
    clock.mark = Mark("boot-1", 1030.0, 1_700_000_000.0 + 30 + 3600)  # 30 s later; the wall clock jumped 1 h
    store = Store(tmp_path / "ipam.db", me=ME, span=SPAN, clock=clock)
    seen = store.load().seen_ago
    assert seen is not None and seen[X] == pytest.approx(100.0 + 30 - 2 * MARK_INTERVAL)
    assert store.away() == pytest.approx(30.0)


def test_after_a_reboot_a_vouch_is_at_most_the_uptime_and_away_at_least_it(tmp_path: Path) -> None:
    clock = Clock()
    stored(tmp_path, clock, x_absent_for=100.0).close()
    clock.mark = Mark("boot-2", 50.0, 1_700_000_000.0 + 3600)  # rebooted 50 s ago; the wall clock says 1 h
    store = Store(tmp_path / "ipam.db", me=ME, span=SPAN, clock=clock)
    seen = store.load().seen_ago
    assert seen is not None and seen[X] == pytest.approx(100.0 + 50 - 2 * MARK_INTERVAL)
    assert store.away() == pytest.approx(3600.0), "away: the longer of the two (being away too long is safe)"
    clock.mark = Mark("boot-2", 50.0, 1_700_000_000.0 - 10)  # and the wall clock went back: still the uptime
    assert store.away() == pytest.approx(50.0)


def test_a_nickname_that_cannot_be_shown_is_dropped_not_the_message() -> None:
    data = messages.encode_state(SPAN, None, 1, {}, sightings={X: Sighting(5.0, "node\u00a03\x07")})
    msg = messages.decode(data)
    assert isinstance(msg, messages.State) and msg.sightings == {X: Sighting(5.0, "node3")}
    raw = bytearray(messages.encode_state(SPAN, None, 1, {}, sightings={X: Sighting(5.0, "ab")}))
    raw[-2:] = b"\x07\xff"  # a bell and a byte that is not UTF-8, as another implementation might send
    msg = messages.decode(bytes(raw))
    assert isinstance(msg, messages.State) and msg.sightings == {X: Sighting(5.0, "")}


def test_the_state_format_is_recorded_and_a_newer_one_refused(tmp_path: Path) -> None:
    import sqlite3

    from weave_node.core.errors import ConfigError
    from weave_node.ipam.store import STATE_FORMAT

    path = tmp_path / "ipam.db"
    Store(path, me=ME, span=SPAN).db.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() == (str(STATE_FORMAT),)
    db.execute("DELETE FROM meta WHERE key = 'format'")  # as 0.1.0 left it: converted
    db.commit()
    Store(path, me=ME, span=SPAN).db.close()
    db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (str(STATE_FORMAT + 1),))
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match=f"written by a newer weave-node \\(state format {STATE_FORMAT + 1}"):
        Store(path, me=ME, span=SPAN)
