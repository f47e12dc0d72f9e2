"""Make-before-break of a sleeve link whose keys change (a new mesh connection to the same peer: a password
rotation step, a reconnect): the old keys keep opening what the peer still seals with them, we keep sealing with
them until the peer is heard with the new ones, and a link that lost its connection lingers for the new one."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.mesh.crypto import SessionKeys
from weave_node.overlay.sleeve.codec import FLAG_VNET, VNET_HDR_SIZE, Sealer
from weave_node.overlay.sleeve.config import Config, LinkSpec
from weave_node.overlay.sleeve.forwarder import HANDOVER_GENERATIONS, Forwarder, name_bytes
from weave_node.overlay.sleeve.plan import LINGER, with_lingering

pytestmark = pytest.mark.unit
ME, PEER, OTHER = 0x02AA00000001, 0x02AA00000002, 0x02AA00000003
OLD = SessionKeys(send=bytes(range(32)), receive=bytes(range(1, 33)))
NEW = SessionKeys(send=bytes(range(2, 34)), receive=bytes(range(3, 35)))
FRAME = bytes(VNET_HDR_SIZE) + bytes.fromhex("02bb0000000102bb000000020800") + b"payload" * 20


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rig() -> Iterator[tuple[Forwarder, socket.socket, Clock]]:
    tap_ours, tap_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap_ours.setblocking(False)
    tap_theirs.setblocking(False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    clock = Clock()
    fwd = Forwarder(ME, tap_ours.fileno(), sock, clock=clock, handover=5.0)
    fwd._apply(Config(links={PEER: LinkSpec(PEER, "127.0.0.1", OLD)}, routes={PEER: PEER}, sleeve=frozenset({PEER})))
    yield fwd, tap_theirs, clock
    sock.close()
    tap_ours.close()
    tap_theirs.close()


def _from_peer(keys: SessionKeys, seq: int) -> bytes:
    """A frame datagram as the peer seals it: with its send key, our receive key of that session."""
    (datagram,) = Sealer(keys.receive, seq=seq).datagrams(
        FRAME, msg_id=seq, src=name_bytes(PEER), dst=name_bytes(ME), segment_size=1400, flags=FLAG_VNET
    )
    return datagram


def _receive(fwd: Forwarder, datagram: bytes) -> None:
    link = fwd.links[PEER]
    view = memoryview(bytearray(datagram))
    if link.prev is not None:
        fwd._batch_handover(link, link.prev, view, len(datagram), len(datagram))
    else:
        fwd._datagram(link, view)


def test_new_keys_take_over_without_a_gap(rig: tuple[Forwarder, socket.socket, Clock]) -> None:
    fwd, tap, clock = rig
    old_link = fwd.links[PEER]
    old_link.last_ack, old_link.verified = clock.now, 1472
    fwd._apply(Config(links={PEER: LinkSpec(PEER, "127.0.0.1", NEW)}, routes={PEER: PEER}, sleeve=frozenset({PEER})))
    link = fwd.links[PEER]
    assert link is not old_link and link.prev is old_link
    # Until the peer is heard with the new keys: we seal with the old ones (it may not have the new ones yet),
    # the path's state carries over (up, verified size: routes keep using it), probes prove the new keys.
    assert link.sealer.key == OLD.send and link.next_sealer is not None and link.next_sealer.key == NEW.send
    assert link.up(clock.now, fwd.link_timeout) and link.verified == 1472
    assert fwd._routes[name_bytes(PEER)] is link
    _receive(fwd, _from_peer(OLD, 10))  # the peer still seals with the old keys: delivered
    assert tap.recv(1 << 16) == FRAME
    assert link.sealer.key == OLD.send  # (that says nothing about the new keys)
    _receive(fwd, _from_peer(NEW, 1))  # now with the new ones: delivered, and we switch
    assert tap.recv(1 << 16) == FRAME
    assert link.sealer.key == NEW.send and link.next_sealer is None
    _receive(fwd, _from_peer(OLD, 11))  # late datagrams of the old keys still open during the handover
    assert tap.recv(1 << 16) == FRAME
    _receive(fwd, os.urandom(200))  # garbage: one drop, counted once
    assert sum(link.opener.drops.values()) == 1
    clock.now += 5.0
    fwd._end_handovers(clock.now)
    assert link.prev is None
    _receive(fwd, _from_peer(OLD, 12))  # the old keys are done
    with pytest.raises(BlockingIOError):
        tap.recv(1 << 16)
    _receive(fwd, _from_peer(NEW, 2))
    assert tap.recv(1 << 16) == FRAME


def test_a_peer_never_heard_with_the_new_keys_gets_them_when_the_handover_ends(
    rig: tuple[Forwarder, socket.socket, Clock],
) -> None:
    fwd, _tap, clock = rig
    fwd._apply(Config(links={PEER: LinkSpec(PEER, "127.0.0.1", NEW)}))
    link = fwd.links[PEER]
    clock.now += 4.9
    fwd._end_handovers(clock.now)
    assert link.prev is not None and link.sealer.key == OLD.send
    clock.now += 0.1
    fwd._end_handovers(clock.now)
    assert link.prev is None and link.sealer.key == NEW.send


def test_another_address_or_a_clear_link_is_replaced_at_once(rig: tuple[Forwarder, socket.socket, Clock]) -> None:
    fwd, _tap, _clock = rig
    fwd._apply(Config(links={PEER: LinkSpec(PEER, "127.0.0.2", NEW)}))
    assert fwd.links[PEER].prev is None and fwd.links[PEER].sealer.key == NEW.send
    fwd._apply(Config(links={PEER: LinkSpec(PEER, "127.0.0.2", None)}))
    assert fwd.links[PEER].prev is None and fwd.links[PEER].sealer.key is None


def test_a_lost_sealed_link_lingers_for_the_new_connection_then_goes() -> None:
    sealed = {PEER: LinkSpec(PEER, "198.18.0.2", OLD), OTHER: LinkSpec(OTHER, "198.18.0.3", None)}
    before = Config(links=sealed, routes={PEER: PEER, OTHER: OTHER}, sleeve=frozenset({PEER, OTHER}))
    lost = Config(links={}, routes={PEER: OTHER}, sleeve=frozenset({PEER, OTHER}))  # (a relay meanwhile)
    pushed, lingering = with_lingering(lost, before, {}, now=10.0)
    assert pushed.links == {PEER: sealed[PEER]} and pushed.routes == {PEER: PEER}  # a clear link does not linger
    assert lingering == {PEER: (sealed[PEER], 10.0 + LINGER)}
    again, lingering = with_lingering(lost, lost, lingering, now=12.0)  # the overlay's next push: still there
    assert again.links == {PEER: sealed[PEER]}
    back = Config(links={PEER: LinkSpec(PEER, "198.18.0.2", NEW)}, routes={PEER: PEER}, sleeve=frozenset({PEER}))
    pushed, lingering = with_lingering(back, lost, lingering, now=12.5)  # the new connection: its link only
    assert pushed == back and lingering == {}
    _, lingering = with_lingering(lost, before, {}, now=20.0)
    expired, lingering = with_lingering(lost, lost, lingering, now=20.0 + LINGER)
    assert expired == lost and lingering == {}


def test_a_generation_the_peer_never_had_keeps_the_keys_it_still_seals_with(
    rig: tuple[Forwarder, socket.socket, Clock],
) -> None:
    """Two connections raced (both routers dialled at once, a duplicate was dropped): we had a link of the dropped
    one's keys for a moment, the peer never did. It still seals with the old keys, which must still open here."""
    fwd, tap, _clock = rig
    mid = SessionKeys(send=bytes(range(4, 36)), receive=bytes(range(5, 37)))
    fwd._apply(Config(links={PEER: LinkSpec(PEER, "127.0.0.1", mid)}, routes={PEER: PEER}, sleeve=frozenset({PEER})))
    fwd._apply(Config(links={PEER: LinkSpec(PEER, "127.0.0.1", NEW)}, routes={PEER: PEER}, sleeve=frozenset({PEER})))
    link = fwd.links[PEER]
    assert link.sealer.key == OLD.send  # (never heard with mid's keys: still the old ones)
    _receive(fwd, _from_peer(OLD, 10))
    assert tap.recv(1 << 16) == FRAME
    _receive(fwd, _from_peer(mid, 1))
    assert tap.recv(1 << 16) == FRAME
    _receive(fwd, _from_peer(NEW, 1))
    assert tap.recv(1 << 16) == FRAME
    assert link.sealer.key == NEW.send


LAST = 4  # generations after the first: as many as a link keeps (HANDOVER_GENERATIONS)


def _generation(i: int, side: int) -> SessionKeys:
    """Generation i's keys (a mesh connection's) as side 0 (ME) or side 1 (PEER) has them."""
    a, b = bytes([i, 0xA]) * 16, bytes([i, 0xB]) * 16
    return SessionKeys(send=a, receive=b) if side == 0 else SessionKeys(send=b, receive=a)


_STEP = st.one_of(
    st.tuples(st.just("config"), st.integers(0, 1), st.integers(1, LAST)),
    st.tuples(st.just("data"), st.integers(0, 1), st.just(0)),
    st.tuples(st.just("probe"), st.integers(0, 1), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_STEP, max_size=30))
def test_whatever_generations_each_side_had_every_datagram_opens_and_both_end_on_the_last(
    steps: list[tuple[str, int, int]],
) -> None:
    """Two routers' links to each other through reconnections within the handover time: each side has the
    connections (keys) that its mesh saw, in order, some of them never on the other side (a dropped duplicate);
    in the end both have the last one. Every frame either side seals opens on the other, whatever happened, and
    once each side's probe (sealed with the newest keys) reached the other, both seal with the last keys."""
    assert HANDOVER_GENERATIONS >= LAST
    names, last = (ME, PEER), LAST
    sides: list[tuple[Forwarder, socket.socket]] = []
    closers: list[socket.socket] = []
    clock = Clock()
    for side in (0, 1):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        theirs.setblocking(False)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closers += [ours, theirs, sock]
        fwd = Forwarder(names[side], ours.fileno(), sock, clock=clock, handover=5.0)
        sides.append((fwd, theirs))
    gens = [0, 0]
    msg_id = 0

    def configure(side: int, gen: int) -> None:
        peer = names[1 - side]
        spec = LinkSpec(peer, "127.0.0.1", _generation(gen, side))
        sides[side][0]._apply(Config(links={peer: spec}, routes={peer: peer}, sleeve=frozenset({peer})))
        gens[side] = gen

    def send(side: int, *, probe: bool) -> bool:
        """`side` seals a frame (a probe: with the newest keys) and the other receives it: delivered?"""
        nonlocal msg_id
        fwd, other = sides[side][0], sides[1 - side]
        link = fwd.links[names[1 - side]]
        sealer = (link.next_sealer or link.sealer) if probe else link.sealer
        msg_id += 1
        (datagram,) = sealer.datagrams(FRAME, msg_id=msg_id, src=name_bytes(names[side]),
                                       dst=name_bytes(names[1 - side]), segment_size=1400, flags=FLAG_VNET)  # fmt: skip
        peer_link = other[0].links[names[side]]
        view = memoryview(bytearray(datagram))
        if peer_link.prev is not None:
            other[0]._batch_handover(peer_link, peer_link.prev, view, len(datagram), len(datagram))
        else:
            other[0]._datagram(peer_link, view)
        try:
            return other[1].recv(1 << 16) == FRAME
        except BlockingIOError:
            return False

    try:
        for side in (0, 1):
            configure(side, 0)
        for kind, side, gen in steps:
            if kind == "config" and gen > gens[side]:
                configure(side, gen)
            elif kind == "data":
                assert send(side, probe=False), (side, gens)
            elif kind == "probe":
                send(side, probe=True)
        for side in (0, 1):
            if gens[side] < last:
                configure(side, last)
        for side in (0, 1, 0):  # each side's probe with the last keys reaches the other (which answers)
            send(side, probe=True)
        for side in (0, 1):
            assert send(side, probe=False)
            assert sides[side][0].links[names[1 - side]].sealer.key == _generation(last, side).send
    finally:
        for sock in closers:
            sock.close()
