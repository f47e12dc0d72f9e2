"""The sleeve's probe schedule: every size until one is verified or while the verified one goes unanswered, then
the verified size alone, with the larger sizes every GROW_EVERY ticks."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weave_node.mesh.crypto import SessionKeys
from weave_node.overlay.sleeve.config import Config, LinkSpec
from weave_node.overlay.sleeve.forwarder import Forwarder
from weave_node.overlay.sleeve.probing import GROW_EVERY, sizes_to_probe

pytestmark = pytest.mark.unit
SIZES = (1472, 1452, 1422, 1372, 1252, 1024, 548)
ME, PEER = 0x02AA00000001, 0x02AA00000002


def test_every_size_until_one_is_verified_then_the_verified_one() -> None:
    assert sizes_to_probe(SIZES, None, {}, 5.0, 1, stale=2.0) == SIZES
    assert sizes_to_probe(SIZES, 1422, {1422: 4.5}, 5.0, 1, stale=2.0) == (1422,)
    assert sizes_to_probe(SIZES, 1422, {1422: 4.5}, 5.0, GROW_EVERY, stale=2.0) == (1472, 1452, 1422)
    assert sizes_to_probe(SIZES, 1472, {1472: 4.5}, 5.0, GROW_EVERY, stale=2.0) == (1472,)


def test_a_verified_size_unanswered_for_stale_seconds_probes_every_size_again() -> None:
    assert sizes_to_probe(SIZES, 1472, {1472: 3.1}, 5.0, 3, stale=2.0) == (1472,)
    assert sizes_to_probe(SIZES, 1472, {1472: 3.0}, 5.0, 3, stale=2.0) == SIZES  # (the path's MTU fell?)
    assert sizes_to_probe(SIZES, 1472, {1422: 4.9}, 5.0, 3, stale=2.0) == SIZES  # never acked at that size
    # verified on a link whose keys were handed over to one with a smaller maximum: that size is not probed
    assert sizes_to_probe(SIZES[2:], 1472, {1472: 4.9}, 5.0, GROW_EVERY, stale=2.0) == SIZES[2:]


@given(st.integers(1, len(SIZES)), st.one_of(st.none(), st.sampled_from(SIZES)),
       st.dictionaries(st.sampled_from(SIZES), st.floats(0, 10)), st.floats(0, 10), st.integers(0, 100))  # fmt: skip
def test_something_the_link_can_send_is_always_probed_and_nothing_else(
    drop: int, verified: int | None, acked: dict[int, float], now: float, tick: int
) -> None:
    sizes = SIZES[len(SIZES) - drop :]  # (a link's sizes: those up to its maximum)
    out = sizes_to_probe(sizes, verified, acked, now, tick, stale=2.0)
    assert out and set(out) <= set(sizes) and list(out) == sorted(out, reverse=True)
    assert verified not in sizes or verified in out  # the link's liveness rests on it


class CountingSocket:
    def __init__(self) -> None:
        self.sent: list[int] = []

    def sendto(self, data: bytes, _addr: Any) -> int:
        self.sent.append(len(data))
        return len(data)


def test_a_verified_link_costs_one_probe_a_tick() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as real:
        fwd = Forwarder(ME, -1, real)
        fwd._apply(Config(links={PEER: LinkSpec(PEER, "192.0.2.2", SessionKeys(send=bytes(32), receive=bytes(32)))},
                          routes={PEER: PEER}, sleeve=frozenset({PEER})))  # fmt: skip
        counting = CountingSocket()
        fwd.sock = counting  # type: ignore[assignment]
        link = fwd.links[PEER]
        fwd._probe(1.0)
        assert len(counting.sent) == len(link.sizes) >= 5  # nothing verified: every size
        link.acked[1472] = link.last_ack = 1.01  # (as a PROBE_ACK does)
        fwd._verified(link, 1472)
        for tick in range(2, 2 + 3 * GROW_EVERY):
            counting.sent.clear()
            fwd._probe(float(tick))
            link.acked[1472] = link.last_ack = tick + 0.01
            assert counting.sent == [1472], (tick, counting.sent)  # (1472 is the largest size here)
        counting.sent.clear()
        fwd._probe(2 + 3 * GROW_EVERY + 1.5)  # the last tick's probe unanswered
        assert len(counting.sent) == len(link.sizes)
