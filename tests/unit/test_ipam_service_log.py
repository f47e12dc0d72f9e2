"""The IPAM shell's log: what a peer can repeat at will (bad messages, ring conflicts) is rate-limited per kind,
with a summary of what was left out; everything else is logged as it comes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from weave_node.core.address import parse_range
from weave_node.core.clock import FakeClock
from weave_node.ipam.allocator import Allocator
from weave_node.ipam.model import Init
from weave_node.ipam.service import IpamService
from weave_node.ipam.store import Store

pytestmark = pytest.mark.unit
ME, PEER = 0x0200000000A1, 0x0200000000A2


def test_a_flood_of_bad_messages_logs_a_burst_then_one_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    span = parse_range("10.32.0.0/24")
    clock = FakeClock(100.0)
    alloc = Allocator(ME, span, Init("seed", seeds=(ME,)), reclaim_after=60, now=clock.now())
    service = IpamService(alloc, Store(tmp_path / "ipam.db", me=ME, span=span), clock)
    caplog.set_level(logging.INFO, logger="weave_node.ipam")
    for _ in range(1000):
        service.on_unicast(PEER, b"garbage")
    assert alloc.counters["bad_messages"] == 1000, "every one is counted"
    bad = [r for r in caplog.records if "dropped a bad IPAM message" in r.getMessage()]
    assert len(bad) == 5
    clock.advance(61)
    service.rlog.flush()
    summary = [r.getMessage() for r in caplog.records if "suppressed" in r.getMessage()]
    assert summary and "suppressed 995 similar messages" in summary[0]
    service.store.close()
