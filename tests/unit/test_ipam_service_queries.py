"""The IPAM shell's queries for the API (api/ never reaches into the allocator): the range, what an attachment
holds (an address, or an orphan's and whether it is in conflict), and every attachment that holds one."""

from __future__ import annotations

from pathlib import Path

import pytest

from weave_node.core.address import parse_ip, parse_range
from weave_node.core.clock import FakeClock
from weave_node.ipam.allocator import Allocator
from weave_node.ipam.model import Init, Key
from weave_node.ipam.service import Held, IpamService
from weave_node.ipam.store import Store

pytestmark = pytest.mark.unit
ME = 0x0200000000A1


def test_range_lookup_and_held_keys(tmp_path: Path) -> None:
    span = parse_range("10.32.0.0/24")
    clock = FakeClock(100.0)
    alloc = Allocator(ME, span, Init("seed", seeds=(ME,)), reclaim_after=60, now=clock.now())
    service = IpamService(alloc, Store(tmp_path / "ipam.db", me=ME, span=span), clock)
    try:
        assert service.range == span
        pod, orphan, conflicted, nobody = Key("pod"), Key("orphan"), Key("conflicted"), Key("nobody")
        ip = alloc.allocate(pod, clock.now())
        assert ip is not None
        alloc.orphans.update({orphan: parse_ip("10.33.0.5"), conflicted: parse_ip("10.33.0.6")})
        alloc.conflicts.add(conflicted)
        assert service.lookup(pod) == Held(ip, None, False)
        assert service.lookup(orphan) == Held(None, parse_ip("10.33.0.5"), False)
        assert service.lookup(conflicted) == Held(None, parse_ip("10.33.0.6"), True)
        assert service.lookup(nobody) == Held(None, None, False)
        assert service.held_keys() == [pod, orphan, conflicted]
    finally:
        service.store.close()
