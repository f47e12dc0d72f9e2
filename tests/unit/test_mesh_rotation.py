"""Password rotation without a partition: the version-2 handshake accepts several passwords (proofs.py), picks the
same one on both sides, and the router closes what a new setting no longer accepts."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_mesh_dispatch import ME, FakeWriter
from tests.unit.test_mesh_protocol import A, B, connect, failures, pump
from weave_node.core.address import parse_peer
from weave_node.mesh.crypto import PasswordKey, SecretBoxChannel
from weave_node.mesh.framing import HANDSHAKE_MAX_FRAME, FrameDecoder
from weave_node.mesh.proofs import PROOF_SIZE, Match, choose, decode_proof_set
from weave_node.mesh.protocol import (
    PREAMBLE,
    TAG_PROOF_SET,
    Connection,
    ConnectionFailed,
    Established,
    Identity,
    MessageReceived,
    ProtocolConfig,
)
from weave_node.mesh.router import Router
from weave_node.mesh.settings import MeshSettings

pytestmark = pytest.mark.unit

KEYS = [PasswordKey(bytes([i + 1]) * 32) for i in range(5)]  # (argon2id is slow: made-up keys)
NEW, OLD, OLDER, OLDEST, STRANGER = KEYS
NO_COMMON = "authentication failed: no password in common with the peer (wrong password, or a rotation step skipped?)"


def cfg(*keys: PasswordKey, max_version: int = 2) -> ProtocolConfig:
    return ProtocolConfig(password_key=keys[0], previous_keys=keys[1:], max_version=max_version)


def check_works(a: Connection, b: Connection, key: PasswordKey) -> None:
    """Both ends established with `key`, messages flow both ways, the sleeve keys agree."""
    assert a.state == b.state == "established"
    assert a.password_key == b.password_key == key
    a.send_message(b"from a", 1.0)
    b.send_message(b"from b", 1.0)
    wire_a, wire_b = a.data_to_send(), b.data_to_send()
    for wire in (wire_a, wire_b):  # counter 0 went with the proof: the first message is sealed with counter 1
        assert wire[4:12] == (1).to_bytes(8, "big")
    assert b.receive_data(wire_a, 1.0) == [MessageReceived(b"from a")]
    assert a.receive_data(wire_b, 1.0) == [MessageReceived(b"from b")]
    assert a.sleeve_keys is not None and b.sleeve_keys is not None
    assert a.sleeve_keys.send == b.sleeve_keys.receive and a.sleeve_keys.receive == b.sleeve_keys.send


# -- configuration --------------------------------------------------------------------------------------------


def test_accepted_keys_put_the_primary_first() -> None:
    assert ProtocolConfig().accepted_keys == ()
    assert cfg(NEW).accepted_keys == (NEW,)
    assert cfg(NEW, OLD, OLDER).accepted_keys == (NEW, OLD, OLDER)
    assert cfg(NEW, OLD).password_key == NEW  # existing callers see the primary


def test_duplicates_of_the_primary_or_of_a_previous_password_are_dropped() -> None:
    config = ProtocolConfig(password_key=NEW, previous_keys=(NEW, OLD, PasswordKey(OLD.key), NEW))
    assert config.previous_keys == (OLD,)
    assert config.accepted_keys == (NEW, OLD)
    assert ProtocolConfig(password_key=NEW, previous_keys=(NEW,)) == cfg(NEW)


def test_bad_password_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="need a"):
        ProtocolConfig(previous_keys=(OLD,))
    with pytest.raises(ValueError, match="at most 3 previous passwords, not 4"):
        cfg(NEW, OLD, OLDER, OLDEST, STRANGER)
    assert len(cfg(NEW, OLD, OLDER, OLDEST).accepted_keys) == 4


# -- the rotation matrix ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys_a", "keys_b", "chosen"),
    [
        ((NEW, OLD), (OLD,), OLD),  # step 1 under way: an updated router and one not yet updated
        ((OLD,), (NEW, OLD), OLD),
        ((NEW,), (NEW, OLD), NEW),  # step 2 under way
        ((NEW, OLD), (NEW,), NEW),
        ((NEW, OLD), (NEW, OLD), NEW),  # between the steps: the new password is used already
        ((NEW, OLD, OLDER), (OLDER, STRANGER), OLDER),
    ],
    ids=["new+old|old", "old|new+old", "new|new+old", "new+old|new", "new+old|new+old", "three|older+stranger"],
)
@pytest.mark.parametrize("swap", [False, True], ids=["a-lower", "b-lower"])
def test_rotation_matrix(
    keys_a: tuple[PasswordKey, ...], keys_b: tuple[PasswordKey, ...], chosen: PasswordKey, swap: bool
) -> None:
    a, b = connect(cfg(*keys_a), cfg(*keys_b), a=B if swap else A, b=A if swap else B)
    events_a, events_b = pump(a, b, 0.0)
    assert [type(e) for e in events_a + events_b] == [Established, Established]
    assert a.remote is not None and a.remote.version == 2
    check_works(a, b, chosen)


@pytest.mark.parametrize("swap", [False, True], ids=["a-lower", "b-lower"])
def test_when_the_preferences_differ_the_lower_peer_name_decides(swap: bool) -> None:
    a, b = connect(cfg(OLD, NEW), cfg(NEW, OLD), a=B if swap else A, b=A if swap else B)
    pump(a, b, 0.0)
    check_works(a, b, NEW if swap else OLD)  # (A's name is the lower one)


def test_a_skipped_rotation_step_fails_on_both_sides_with_a_clear_reason() -> None:
    a, b = connect(cfg(NEW), cfg(OLD))
    events_a, events_b = pump(a, b, 0.0)
    assert events_a == events_b == [ConnectionFailed(NO_COMMON)]
    assert a.password_key is None and b.password_key is None
    assert a.data_to_send() == b.data_to_send() == b""


@pytest.mark.parametrize("max_version", [1, 2])
def test_a_wrong_password_fails_on_both_sides_when_hello_and_proof_arrive_in_one_read(max_version: int) -> None:
    """The side that gets the peer's hello and proof together queues its proof, then fails: its proof still goes
    (the peer must learn why too), and nothing after it."""
    a, b = connect(cfg(NEW, max_version=max_version), cfg(STRANGER, max_version=max_version))
    hello_a = a.data_to_send()
    assert b.receive_data(hello_a, 0.0) == []
    hello_and_proof_b = b.data_to_send()  # b's hello, then (having a's hello) its proof
    events_a = a.receive_data(hello_and_proof_b, 0.0)
    reason = NO_COMMON if max_version >= 2 else "authentication failed: wrong password?"
    assert events_a == [ConnectionFailed(reason)]
    proof_a = a.data_to_send()
    assert proof_a, "a's proof was dropped with the failure"
    assert b.receive_data(proof_a, 0.0) == [ConnectionFailed(reason)]
    assert a.data_to_send() == b.data_to_send() == b""


@pytest.mark.parametrize("v1_side", ["a", "b"])
def test_a_version_1_peer_is_offered_the_primary_only(v1_side: str) -> None:
    # with the primary in common: version 1, as before
    rotating, old_peer = cfg(NEW, OLD), cfg(NEW, max_version=1)
    a, b = connect(*((old_peer, rotating) if v1_side == "a" else (rotating, old_peer)))
    pump(a, b, 0.0)
    assert a.remote is not None and a.remote.version == 1
    check_works(a, b, NEW)
    # with only a previous password in common: rotation needs version 2 at both ends
    rotating, old_peer = cfg(NEW, OLD), cfg(OLD, max_version=1)
    a, b = connect(*((old_peer, rotating) if v1_side == "a" else (rotating, old_peer)))
    events_a, events_b = pump(a, b, 0.0)
    assert events_a == events_b == [ConnectionFailed("authentication failed: wrong password?")]


def test_plaintext_connections_have_no_password_key() -> None:
    a, b = connect(ProtocolConfig())
    assert a.password_key is None
    pump(a, b, 0.0)
    assert a.state == "established" and a.password_key is None and a.sleeve_keys is None


def test_the_password_key_is_known_only_once_established() -> None:
    a, b = connect(cfg(NEW, OLD))
    b.receive_data(a.data_to_send(), 0.0)  # b has sent its proof set, not yet checked a's
    assert b.state == "handshake" and b.password_key is None


@settings(max_examples=60, deadline=None)
@given(
    keys_a=st.lists(st.sampled_from(KEYS[:4]), min_size=1, max_size=4, unique=True),
    keys_b=st.lists(st.sampled_from(KEYS[:4]), min_size=1, max_size=4, unique=True),
    swap=st.booleans(),
)
def test_both_sides_always_agree(keys_a: list[PasswordKey], keys_b: list[PasswordKey], swap: bool) -> None:
    a, b = connect(cfg(*keys_a), cfg(*keys_b), a=B if swap else A, b=A if swap else B)
    events_a, events_b = pump(a, b, 0.0)
    lower, higher = (keys_b, keys_a) if swap else (keys_a, keys_b)
    common = [k for k in lower if k in higher]
    if not common:
        assert failures(events_a) == failures(events_b) == [NO_COMMON]
        return
    check_works(a, b, common[0])  # the lower peer name's first choice among the passwords in common


# -- the proof set on the wire ----------------------------------------------------------------------------------


def frames_of(stream: bytes) -> list[bytes]:
    assert stream.startswith(PREAMBLE)
    return FrameDecoder().feed(stream[len(PREAMBLE) :])


def handshake_of_b(config_a: ProtocolConfig, config_b: ProtocolConfig) -> tuple[Connection, bytes, bytes]:
    """A fresh `a`, b's hello frame and b's proof set (made for that `a`)."""
    a, b = connect(config_a, config_b)
    b.receive_data(a.data_to_send(), 0.0)
    hello, proof_set = frames_of(b.data_to_send())
    return a, hello, proof_set


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def test_the_proof_set_carries_one_proof_per_accepted_password_primary_first() -> None:
    _a, _hello, proof_set = handshake_of_b(cfg(NEW), cfg(NEW, OLD, OLDER))
    assert proof_set[0] == TAG_PROOF_SET and proof_set[1] == 3
    proofs = decode_proof_set(proof_set)
    assert len(proof_set) == 2 + 3 * (2 + PROOF_SIZE)
    assert all(p[:8] == bytes(8) for p in proofs)  # counter 0 under each password's own key


def test_the_largest_proof_set_fits_the_handshake_frame_limit() -> None:
    _a, _hello, proof_set = handshake_of_b(cfg(NEW), cfg(NEW, OLD, OLDER, OLDEST))
    assert len(proof_set) == 2 + 4 * (2 + PROOF_SIZE) <= HANDSHAKE_MAX_FRAME


def test_a_proof_set_with_an_item_inserted_or_dropped_is_tampering() -> None:
    """Positions and the set's size are sealed with each proof: a man in the middle can neither reorder nor drop
    items (the sides could pick different passwords, or quietly the old one)."""
    a, hello, proof_set = handshake_of_b(cfg(NEW), cfg(NEW))
    junk = bytes(PROOF_SIZE)
    events = a.receive_data(
        PREAMBLE
        + frame(hello)
        + frame(bytes([TAG_PROOF_SET, 2]) + PROOF_SIZE.to_bytes(2, "big") + junk + proof_set[2:]),
        0.0,
    )
    assert [type(e) for e in events] == [ConnectionFailed] and "tampered" in events[0].reason  # type: ignore[union-attr]
    a, hello, proof_set = handshake_of_b(cfg(NEW), cfg(NEW, OLD))
    first = proof_set[2 : 4 + PROOF_SIZE]  # B's NEW proof alone, the OLD one dropped
    events = a.receive_data(PREAMBLE + frame(hello) + frame(bytes([TAG_PROOF_SET, 1]) + first), 0.0)
    assert [type(e) for e in events] == [ConnectionFailed] and "tampered" in events[0].reason  # type: ignore[union-attr]


def _flip_last(proof_set: bytes) -> bytes:
    return proof_set[:-1] + bytes([proof_set[-1] ^ 1])


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda p: b"", "expected the handshake proof set, got an empty frame"),
        (lambda p: b"\x02" + p[1:], "expected the handshake proof set, got frame type 0x02"),
        (lambda p: p[:1], "malformed proof set: no count (1-4 expected)"),
        (lambda p: b"\x05\x00", "malformed proof set: 0 proofs (1-4 expected)"),
        (lambda p: b"\x05\x05" + p[2:] * 5, "malformed proof set: 5 proofs (1-4 expected)"),
        (lambda p: b"\x05\xff", "malformed proof set: 255 proofs (1-4 expected)"),
        (lambda p: p[:3], "malformed proof set: truncated"),
        (lambda p: p[:-1], "malformed proof set: truncated"),
        (lambda p: b"\x05\x02" + p[2:], "malformed proof set: truncated"),
        (lambda p: p[:2] + b"\x00\x10" + bytes(16), "malformed proof set: a proof of 16 bytes (59 expected)"),
        (lambda p: p + b"x", "malformed proof set: 1 trailing bytes"),
        (_flip_last, NO_COMMON),  # a forged proof opens with no password
        (
            lambda p: p[:2] + b"\x00\x00" + p[4:],
            "malformed proof set: a proof of 0 bytes (59 expected)",
        ),
    ],
)
def test_a_garbled_proof_set_fails_the_connection(mangle: Callable[[bytes], bytes], reason: str) -> None:
    a, hello, proof_set = handshake_of_b(cfg(NEW), cfg(NEW))
    events = a.receive_data(PREAMBLE + frame(hello) + frame(mangle(proof_set)), 0.0)
    assert events == [ConnectionFailed(reason)]
    assert a.state == "closed" and a.password_key is None


@given(garbage=st.binary(max_size=300), count=st.integers(0, 255))
def test_random_proof_sets_never_raise(garbage: bytes, count: int) -> None:
    a, hello, _proof_set = handshake_of_b(cfg(NEW, OLD), cfg(NEW))
    events = a.receive_data(PREAMBLE + frame(hello) + frame(bytes([TAG_PROOF_SET, count]) + garbage), 0.0)
    assert len(failures(events)) == 1 and a.state == "closed"


def test_a_version_1_proof_where_a_proof_set_is_due_fails_the_connection() -> None:
    """(What a peer that got the version wrong would send: an encrypted frame, not a proof set.)"""
    a, hello, _proof_set = handshake_of_b(cfg(NEW), cfg(NEW))
    sealed = SecretBoxChannel(bytes(32)).encrypt(b"\x02" + bytes(32))
    (failure,) = failures(a.receive_data(PREAMBLE + frame(hello) + frame(sealed), 0.0))
    assert failure.startswith("expected the handshake proof set, got frame type 0x00")


def test_choose_is_the_same_pick_seen_from_both_sides() -> None:
    channel = SecretBoxChannel(bytes(32))
    pairs = [(0, 2), (1, 0), (2, 1)]
    here = [Match(local, remote, channel) for local, remote in pairs]
    there = [Match(remote, local, channel) for local, remote in pairs]
    low, high = choose(here, 1, 2), choose(there, 2, 1)
    assert (low.local, low.remote) == (0, 2) and (high.local, high.remote) == (2, 0)


# -- which connections a new setting keeps -------------------------------------------------------------------------


def test_accepted_by() -> None:
    a, b = connect(cfg(NEW, OLD), cfg(OLD))
    assert a.accepted_by(cfg(NEW, OLD)) and not a.accepted_by(cfg(NEW))  # handshaking: it may still pick OLD
    assert not a.accepted_by(ProtocolConfig())
    pump(a, b, 0.0)
    assert a.password_key == OLD
    assert a.accepted_by(cfg(OLD)) and a.accepted_by(cfg(NEW, OLD)) and a.accepted_by(cfg(NEW, OLDER, OLD))
    assert not a.accepted_by(cfg(NEW)) and not a.accepted_by(ProtocolConfig())
    plain, other = connect(ProtocolConfig())
    assert plain.accepted_by(ProtocolConfig()) and not plain.accepted_by(cfg(NEW))
    pump(plain, other, 0.0)
    assert plain.accepted_by(ProtocolConfig()) and not plain.accepted_by(cfg(NEW))


# -- the router -----------------------------------------------------------------------------------------------


async def _peer(
    router: Router, peer: Identity, config: ProtocolConfig, host: str, *, dialled: bool = False
) -> tuple[FakeWriter, Connection]:
    """A peer's connection to the router (or the router's to it, when `dialled`), as far as the handshake gets."""
    reader = asyncio.StreamReader()
    writer = FakeWriter((host, 6783), reader=reader)
    if dialled:
        serve = router._serve(reader, writer, outbound=True, target=parse_peer(f"{host}:6783"))  # type: ignore[arg-type]
    else:
        serve = router._accept(reader, writer)  # type: ignore[arg-type]
    router._spawn(serve)  # (the router's own task set: stop() ends what is left)
    await asyncio.sleep(0)
    conn = Connection(peer, config, outbound=not dialled, now=router.clock.now())
    for _ in range(3):
        conn.receive_data(writer.take(), router.clock.now())
        if not writer.closed:
            reader.feed_data(conn.data_to_send())
        for _ in range(3):
            await asyncio.sleep(0)
    return writer, conn


def test_set_protocol_config_closes_the_connections_whose_password_is_no_longer_accepted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    p1, p2, p3, p4 = (Identity(0x02AA000000F0 + i, f"p{i}", i) for i in (1, 2, 3, 4))

    async def scenario() -> None:
        router = Router(MeshSettings(port=0), ME, cfg(OLD), rng=random.Random(1))
        w1, c1 = await _peer(router, p1, cfg(OLD), "198.51.100.1")
        assert c1.state == "established" and router.established[p1.name].conn.password_key == OLD
        # step 1: the new password first, the old one still accepted: nothing is closed
        assert router.set_protocol_config(cfg(NEW, OLD)) == 0
        # new connections, inbound and outbound, have the new settings (these peers do not know OLD)
        w2, c2 = await _peer(router, p2, cfg(NEW), "198.51.100.2")
        w4, c4 = await _peer(router, p4, cfg(NEW), "198.51.100.5", dialled=True)
        assert c2.password_key == c4.password_key == NEW
        idle = FakeWriter(("198.51.100.3", 1), reader=asyncio.StreamReader())  # (silent: stays in its handshake)
        router._spawn(router._accept(idle.reader, idle))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert len(router.handshaking) == 1  # made with (NEW, OLD): it may still settle on OLD
        # step 2: the old password goes; so do the connections that use it (or may still pick it)
        assert router.set_protocol_config(cfg(NEW)) == 2
        assert w1.closed and idle.closed and not w2.closed and not w4.closed
        for _ in range(5):
            await asyncio.sleep(0)
        assert set(router.established) == {p2.name, p4.name} and not router.handshaking
        assert router.protocol_config == cfg(NEW)
        w3, _c3 = await _peer(router, p3, cfg(OLD), "198.51.100.4")  # the old password: refused now
        assert w3.closed and set(router.established) == {p2.name, p4.name}
        # no password any more: every encrypted connection goes
        assert router.set_protocol_config(ProtocolConfig()) == 2
        assert w2.closed and w4.closed
        for _ in range(5):
            await asyncio.sleep(0)
        assert not router.established
        await router.stop()

    with caplog.at_level(logging.INFO, logger="weave_node.router"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if "password settings changed" in r.getMessage()]
    assert lines == [
        "password settings changed (encryption on, 1 previous password(s) accepted): 0 connection(s) closed, to be "
        "re-established with them",
        "password settings changed (encryption on): 2 connection(s) closed, to be re-established with them",
        "password settings changed (encryption off): 2 connection(s) closed, to be re-established with them",
    ]
    assert f"<-[198.51.100.4:6783] connection failed: {NO_COMMON}" in caplog.messages
    shut = [r.getMessage() for r in caplog.records if "shut down" in r.getMessage()]
    assert shut and all(line.endswith("connection shut down: password changed") for line in shut)
    assert not any(OLD.key.hex() in r.getMessage() or NEW.key.hex() in r.getMessage() for r in caplog.records)
