"""The sleeve forwarder's receive path and its routes, without a network: the TAP is a pipe, the socket an
unconnected UDP socket on loopback. Fed random or mutated datagrams, the forwarder never raises and never
writes a frame to the TAP; a genuine datagram does reach it (so the assertion could fail)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_mesh_routes import graph
from weave_node.mesh.crypto import SessionKeys
from weave_node.overlay.sleeve.codec import FLAG_VNET, VNET_HDR_SIZE, Kind, Sealer
from weave_node.overlay.sleeve.forwarder import Config, Forwarder, LinkSpec, name_bytes
from weave_node.overlay.sleeve.routing import sleeve_routes

pytestmark = pytest.mark.unit
ME, PEER = 0x02AA00000001, 0x02AA00000002
K1, K2 = bytes(range(32)), bytes(range(1, 33))
FRAME = bytes(VNET_HDR_SIZE) + bytes.fromhex("02bb0000000102bb000000020800") + b"payload" * 20


@pytest.fixture(scope="module")
def rig() -> Iterator[tuple[Forwarder, int]]:
    r, w = os.pipe2(os.O_NONBLOCK)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    fwd = Forwarder(ME, w, sock)
    # Our receive key is the peer's send key.
    fwd._apply(Config(links={PEER: LinkSpec(PEER, "127.0.0.1", SessionKeys(send=K1, receive=K2))}))
    yield fwd, r
    sock.close()
    for fd in (r, w):
        os.close(fd)


def _tap_is_empty(r: int) -> bool:
    try:
        os.read(r, 1 << 16)
    except BlockingIOError:
        return True
    return False


def _genuine(seq: int) -> list[bytes]:
    return Sealer(K2, seq=seq).datagrams(
        FRAME, msg_id=seq, src=name_bytes(PEER), dst=name_bytes(ME), segment_size=1400, flags=FLAG_VNET
    )


def test_a_genuine_frame_reaches_the_tap(rig: tuple[Forwarder, int]) -> None:
    fwd, r = rig
    link = fwd.links[PEER]
    for d in _genuine(1_000_000):
        fwd._datagram(link, memoryview(bytearray(d)))
    assert os.read(r, 1 << 16) == FRAME
    assert fwd._macs[bytes.fromhex("02bb00000002")] == name_bytes(PEER)  # learned for the way back


@given(data=st.binary(max_size=3000))
@settings(max_examples=300, deadline=None)
def test_random_datagrams_never_raise_nor_reach_the_tap(rig: tuple[Forwarder, int], data: bytes) -> None:
    fwd, r = rig
    fwd._datagram(fwd.links[PEER], memoryview(bytearray(data)))
    assert _tap_is_empty(r)


@given(seq=st.integers(min_value=2_000_000, max_value=1 << 40), flips=st.lists(st.integers(0, 10_000), min_size=1))
@settings(max_examples=300, deadline=None)
def test_mutated_datagrams_never_raise_nor_reach_the_tap(
    rig: tuple[Forwarder, int], seq: int, flips: list[int]
) -> None:
    fwd, r = rig
    (d,) = _genuine(seq)
    mutated = bytearray(d)
    for f in flips:
        mutated[f % len(mutated)] ^= 1 << (f % 8)
    if bytes(mutated) == d:
        return
    fwd._datagram(fwd.links[PEER], memoryview(mutated))
    assert _tap_is_empty(r)


def test_a_replayed_datagram_is_dropped(rig: tuple[Forwarder, int]) -> None:
    fwd, r = rig
    (d,) = _genuine(5_000_000_000_000)
    fwd._datagram(fwd.links[PEER], memoryview(bytearray(d)))
    assert os.read(r, 1 << 16) == FRAME
    before = fwd.links[PEER].opener.drops["replay"]
    fwd._datagram(fwd.links[PEER], memoryview(bytearray(d)))
    assert _tap_is_empty(r) and fwd.links[PEER].opener.drops["replay"] == before + 1


def test_a_probe_is_answered_and_a_probe_ack_marks_the_link_up(rig: tuple[Forwarder, int]) -> None:
    fwd, _r = rig
    link = fwd.links[PEER]
    ack = Sealer(K2, seq=9_000_000_000_000).datagrams(
        (1472).to_bytes(4, "big"), msg_id=1, src=name_bytes(PEER), dst=name_bytes(ME), segment_size=1472,
        kind=Kind.PROBE_ACK,
    )[0]  # fmt: skip
    fwd._datagram(link, memoryview(bytearray(ack)))
    assert link.up(fwd.clock(), fwd.link_timeout) and link.acked[1472]


def test_routes_avoid_links_that_do_not_answer() -> None:
    records = graph([(1, 2), (2, 3), (1, 3)])
    assert sleeve_routes(records, 1, {2, 3}) == {2: 2, 3: 3}
    assert sleeve_routes(records, 1, {2}) == {2: 2, 3: 2}  # UDP to 3 blocked: through 2
    assert sleeve_routes(records, 1, set()) == {}
    assert sleeve_routes(records, 9, {2}) == {}
