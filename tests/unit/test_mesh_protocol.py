"""The connection state machine over an in-memory pipe: two Connection objects feeding each other, fake `now`."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.mesh.crypto import MAX_COUNTER, OVERHEAD, PasswordKey, SecretBoxChannel
from weave_node.mesh.framing import HANDSHAKE_MAX_FRAME, HEADER_SIZE
from weave_node.mesh.protocol import (
    PREAMBLE,
    TAG_HELLO,
    TAG_MESSAGE,
    Connection,
    ConnectionFailed,
    Established,
    Event,
    Identity,
    MessageReceived,
    ProtocolConfig,
)

A = Identity(name=0x0A0000000001, nickname="alpha", uid=1111)
B = Identity(name=0x0B0000000002, nickname="béta", uid=2222)
PASSWORD = PasswordKey.from_password(b"correct horse")
OTHER_PASSWORD = PasswordKey.from_password(b"battery staple")
PLAIN = ProtocolConfig()
SECRET = ProtocolConfig(password_key=PASSWORD)


def rng(seed: int) -> random.Random:
    return random.Random(seed)


def connect(
    config_a: ProtocolConfig = PLAIN,
    config_b: ProtocolConfig | None = None,
    *,
    now: float = 0.0,
    a: Identity = A,
    b: Identity = B,
) -> tuple[Connection, Connection]:
    conn_a = Connection(a, config_a, outbound=True, now=now, rng=rng(1).randbytes)
    conn_b = Connection(b, config_a if config_b is None else config_b, outbound=False, now=now, rng=rng(2).randbytes)
    return conn_a, conn_b


def pump(a: Connection, b: Connection, now: float) -> tuple[list[Event], list[Event]]:
    """Deliver everything in flight, both ways, until both sides are quiet. Returns (events at a, events at b)."""
    events_a: list[Event] = []
    events_b: list[Event] = []
    while True:
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_a and not to_b:
            return events_a, events_b
        if to_b:
            events_b += b.receive_data(to_b, now)
        if to_a:
            events_a += a.receive_data(to_a, now)


def established(
    config_a: ProtocolConfig = PLAIN, config_b: ProtocolConfig | None = None, *, a: Identity = A, b: Identity = B
) -> tuple[Connection, Connection]:
    conn_a, conn_b = connect(config_a, config_b, a=a, b=b)
    return _established(conn_a, conn_b)


def _established(a: Connection, b: Connection) -> tuple[Connection, Connection]:
    events_a, events_b = pump(a, b, 0.0)
    assert [type(e) for e in events_a] == [Established]
    assert [type(e) for e in events_b] == [Established]
    return a, b


def failures(events: list[Event]) -> list[str]:
    return [e.reason for e in events if isinstance(e, ConnectionFailed)]


# -- handshake ------------------------------------------------------------------------------------------------


def test_hello_is_sent_at_once_without_waiting_for_the_peer() -> None:
    a = Connection(A, PLAIN, outbound=True, now=0.0)
    data = a.data_to_send()
    assert data.startswith(PREAMBLE)
    assert data[len(PREAMBLE) + HEADER_SIZE] == TAG_HELLO
    assert a.data_to_send() == b""  # drained
    assert a.state == "handshake"
    assert a.remote is None


@pytest.mark.parametrize("config", [PLAIN, SECRET], ids=["plain", "password"])
def test_handshake(config: ProtocolConfig) -> None:
    a, b = connect(config)
    assert (a.outbound, b.outbound) == (True, False)
    events_a, events_b = pump(a, b, 0.0)
    assert a.state == b.state == "established"
    assert a.remote is not None
    assert b.remote is not None
    assert events_a == [Established(a.remote)]
    assert events_b == [Established(b.remote)]
    assert a.remote.identity == B
    assert b.remote.identity == A
    assert a.remote.version == b.remote.version == 2
    assert a.remote.encrypted is b.remote.encrypted is (config.password_key is not None)
    assert a.password_key == b.password_key == config.password_key


def test_version_negotiation_picks_the_highest_common_version() -> None:
    a, b = established(replace(PLAIN, min_version=1, max_version=3), replace(PLAIN, min_version=2, max_version=5))
    assert a.remote is not None
    assert b.remote is not None
    assert a.remote.version == b.remote.version == 3


def test_no_common_version_fails_on_both_sides() -> None:
    a, b = connect(replace(PLAIN, max_version=1), replace(PLAIN, min_version=3, max_version=4))
    events_a, events_b = pump(a, b, 0.0)
    assert failures(events_a) == ["no common protocol version: we speak 1-1, peer speaks 3-4"]
    assert failures(events_b) == ["no common protocol version: we speak 3-4, peer speaks 1-1"]
    assert a.state == b.state == "closed"


def test_features_are_the_intersection() -> None:
    a, b = established(
        replace(SECRET, features=frozenset({"gossip-v2", "fastdp", "only-a"})),
        replace(SECRET, features=frozenset({"gossip-v2", "fastdp", "only-b"})),
    )
    assert a.remote is not None
    assert b.remote is not None
    assert a.remote.features == b.remote.features == frozenset({"gossip-v2", "fastdp"})


@pytest.mark.parametrize("config", [PLAIN, SECRET], ids=["plain", "password"])
def test_connection_to_ourself_is_rejected(config: ProtocolConfig) -> None:
    a, b = connect(config, b=A)  # the very same router (name and uid): a dial that came back to us
    events_a, events_b = pump(a, b, 0.0)
    assert failures(events_a) == failures(events_b) == ["connection to ourself"]


@pytest.mark.parametrize("config", [PLAIN, SECRET], ids=["plain", "password"])
def test_another_router_with_our_name_is_rejected_as_a_collision_not_as_ourself(config: ProtocolConfig) -> None:
    """Not 'ourself' (which is never dialled again): a copied state directory, which the operator must fix."""
    a, b = connect(config, b=replace(A, uid=9))
    events_a, events_b = pump(a, b, 0.0)
    for events in (events_a, events_b):
        (reason,) = failures(events)
        assert "uses this router's own name" in reason and "copied state directory" in reason


def test_password_on_one_side_only_is_rejected_with_a_clear_reason_on_both_sides() -> None:
    a, b = connect(SECRET, PLAIN)
    events_a, events_b = pump(a, b, 0.0)
    assert events_a == [ConnectionFailed("peer has no password but we require one")]
    assert events_b == [ConnectionFailed("peer requires encryption, we have no password")]
    assert a.remote is None
    assert b.remote is None


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        (1, "authentication failed: wrong password?"),
        (2, "authentication failed: no password in common with the peer (wrong password, or a rotation step skipped?)"),
    ],
)
def test_wrong_password_fails_during_the_handshake(version: int, reason: str) -> None:
    a, b = connect(replace(SECRET, max_version=version), replace(SECRET, password_key=OTHER_PASSWORD))
    events_a, events_b = pump(a, b, 0.0)
    assert events_a == events_b == [ConnectionFailed(reason)]
    assert a.remote is None
    assert b.remote is None
    with pytest.raises(RuntimeError):  # nothing (no topology) can be sent before the handshake
        a.send_message(b"topology", 0.0)


def test_nothing_can_be_sent_before_the_peer_is_verified() -> None:
    a, b = connect(SECRET)
    b.receive_data(a.data_to_send(), 0.0)  # b has a's hello, sends its proof, but has not seen a's proof
    assert b.state == "handshake"
    with pytest.raises(RuntimeError, match="handshake"):
        b.send_message(b"x", 0.0)


@pytest.mark.parametrize("version", [1, 2])
def test_a_tampered_hello_is_detected_by_the_proofs(version: int) -> None:
    a, b = connect(replace(SECRET, max_version=version))
    stream = bytearray(a.data_to_send())
    uid_offset = len(PREAMBLE) + HEADER_SIZE + 1 + 2 + 2 + 6
    stream[uid_offset] ^= 0xFF  # a man in the middle rewrites a's uid
    events_b = b.receive_data(bytes(stream), 0.0)
    events_a: list[Event] = []
    from_a = b""
    for byte in b.data_to_send():  # one byte at a time, so a's proof leaves before a checks b's proof
        events_a += a.receive_data(bytes([byte]), 0.0)
        from_a += a.data_to_send()
    events_b += b.receive_data(from_a, 0.0)
    assert failures(events_a) == ["authentication failed: the handshake was tampered with"]
    assert failures(events_b) == ["authentication failed: the handshake was tampered with"]


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "not a weave-node peer"),
        (b"weave\x01\x02", "not a weave-node peer"),  # Weave Net's own (Go) protocol header
        (b"weave-node\x02", "unsupported handshake format 2 (we speak 1)"),
        (PREAMBLE + b"\x00\x00\x10\x01", "exceeds the limit of 4096"),
        (PREAMBLE + b"\x00\x00\x00\x00", "truncated hello"),
        (PREAMBLE + b"\x00\x00\x00\x01\x04", "expected a hello"),
    ],
)
def test_garbage_fails_the_connection(garbage: bytes, reason: str) -> None:
    a = Connection(A, PLAIN, outbound=True, now=0.0)
    events = a.receive_data(garbage, 0.0)
    assert len(events) == 1
    assert isinstance(events[0], ConnectionFailed)
    assert reason in events[0].reason
    assert a.state == "closed"
    assert a.data_to_send() == b""


def test_the_magic_is_checked_as_soon_as_a_byte_differs() -> None:
    a = Connection(A, PLAIN, outbound=True, now=0.0)
    assert a.receive_data(b"weave", 0.0) == []
    assert failures(a.receive_data(b"-x", 0.0)) == ["not a weave-node peer: the stream starts with b'weave-x'"]


# -- messages -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [PLAIN, SECRET], ids=["plain", "password"])
def test_messages_flow_both_ways_in_order(config: ProtocolConfig) -> None:
    a, b = established(config)
    for i in range(10):
        a.send_message(b"a%d" % i, 1.0)
        b.send_message(b"b%d" % i, 1.0)
    a.send_message(b"", 1.0)
    events_a, events_b = pump(a, b, 1.0)
    assert events_b == [MessageReceived(b"a%d" % i) for i in range(10)] + [MessageReceived(b"")]
    assert events_a == [MessageReceived(b"b%d" % i) for i in range(10)]


def test_encrypted_messages_are_not_readable_on_the_wire() -> None:
    a, b = established(SECRET)
    a.send_message(b"10.32.0.0/12 is mine", 1.0)
    wire = a.data_to_send()
    assert b"10.32.0.0/12" not in wire
    assert b.receive_data(wire, 1.0) == [MessageReceived(b"10.32.0.0/12 is mine")]


@pytest.mark.parametrize("config", [PLAIN, SECRET], ids=["plain", "password"])
def test_large_messages_right_behind_the_handshake(config: ProtocolConfig) -> None:
    """The peer may send big messages in the same segment as its last handshake frame."""
    a, b = connect(config)
    to_b = a.data_to_send()
    if config.password_key is not None:  # b needs a's hello to make its proof
        assert b.receive_data(to_b, 0.0) == []
        to_b = b""
    a.receive_data(b.data_to_send(), 0.0)  # a is established first
    assert a.state == "established"
    big = bytes(range(256)) * 4000  # ~1 MiB, far over the handshake frame limit
    a.send_message(big, 0.0)
    a.send_message(b"small", 0.0)
    events = b.receive_data(to_b + a.data_to_send(), 0.0)  # a's last handshake frame and both messages
    assert [type(e) for e in events] == [Established, MessageReceived, MessageReceived]
    assert events[1:] == [MessageReceived(big), MessageReceived(b"small")]


def test_message_size_limit() -> None:
    a, _ = established(replace(SECRET, max_frame=HANDSHAKE_MAX_FRAME))
    assert a.max_message_size == HANDSHAKE_MAX_FRAME - 1 - OVERHEAD
    a.send_message(bytes(a.max_message_size), 0.0)
    with pytest.raises(ValueError, match="exceeds"):
        a.send_message(bytes(a.max_message_size + 1), 0.0)


def test_a_frame_over_the_peer_limit_fails_the_connection() -> None:
    a, b = established(PLAIN, replace(PLAIN, max_frame=HANDSHAKE_MAX_FRAME))
    a.send_message(bytes(HANDSHAKE_MAX_FRAME), 1.0)
    assert failures(b.receive_data(a.data_to_send(), 1.0)) == ["frame of 4097 bytes exceeds the limit of 4096"]


def test_handshake_frames_after_the_handshake_are_rejected() -> None:
    a, b = established()
    hello = a._hello  # a replayed hello
    events = b.receive_data(len(hello).to_bytes(4, "big") + hello, 1.0)
    assert failures(events) == ["unexpected handshake frame (type 0x01) after the handshake"]


def test_unknown_frame_types_are_rejected() -> None:
    a, b = established()
    events = b.receive_data(b"\x00\x00\x00\x02\x7fx", 1.0)
    assert failures(events) == ["unknown frame type 0x7f"]
    assert failures(a.receive_data(b"\x00\x00\x00\x00", 1.0)) == ["empty frame"]


def test_a_replayed_encrypted_frame_fails_the_connection() -> None:
    a, b = established(SECRET)
    a.send_message(b"once", 1.0)
    wire = a.data_to_send()
    assert b.receive_data(wire, 1.0) == [MessageReceived(b"once")]
    assert failures(b.receive_data(wire, 1.0)) == ["replayed or reordered message: counter 1, expected 2"]


def test_send_counter_exhaustion_fails_the_connection_at_the_next_tick() -> None:
    a, _ = established(SECRET)
    a._send_channel = SecretBoxChannel(bytes(32), counter=MAX_COUNTER + 1)  # after 2**64 messages
    a.send_message(b"one too many", 7.0)
    assert a.state == "closed"
    assert a.next_deadline() == 7.0
    assert failures(a.tick(7.0)) == ["message counter exhausted: the connection must be re-established"]
    assert a.next_deadline() is None
    assert a.tick(8.0) == []


# -- timers ---------------------------------------------------------------------------------------------------


def test_handshake_timeout() -> None:
    a = Connection(A, SECRET, outbound=True, now=100.0)
    assert a.next_deadline() == 110.0
    assert a.tick(109.999) == []
    assert a.tick(110.0) == [ConnectionFailed("handshake timeout: not completed within 10.0 s")]
    assert a.state == "closed"
    assert a.next_deadline() is None


def test_handshake_timeout_while_waiting_for_the_proof() -> None:
    a, b = connect(SECRET, now=0.0)
    b.receive_data(a.data_to_send(), 1.0)  # b waits for a's proof, which never comes
    assert b.tick(10.0) == [ConnectionFailed("handshake timeout: not completed within 10.0 s")]


def test_heartbeat_is_sent_after_heartbeat_interval_of_sending_nothing() -> None:
    a, b = established(SECRET)
    a.data_to_send()
    assert a.next_deadline() == 5.0
    assert a.tick(4.99) == []
    assert a.data_to_send() == b""
    assert a.tick(5.0) == []
    heartbeat = a.data_to_send()
    assert heartbeat
    assert b.receive_data(heartbeat, 5.0) == []  # not delivered as a message
    a.send_message(b"x", 7.0)  # any frame counts as sending
    assert a.next_deadline() == 12.0


@pytest.mark.parametrize("config", [PLAIN, SECRET], ids=["plain", "password"])
def test_heartbeats_keep_an_idle_connection_alive(config: ProtocolConfig) -> None:
    a, b = established(config)
    now = 0.0
    while now < 300.0:
        # each side wakes at its own deadline; the pipe delivers at once
        now = min(d for d in (a.next_deadline(), b.next_deadline()) if d is not None)
        events = a.tick(now) + b.tick(now)
        received_a, received_b = pump(a, b, now)
        assert events == received_a == received_b == []
    assert a.state == b.state == "established"


def test_heartbeat_timeout_fires_at_exactly_heartbeat_timeout_of_silence() -> None:
    a, b = connect(SECRET, now=1000.0)
    pump(a, b, 1000.0)
    a.send_message(b"last words", 1003.0)
    pump(a, b, 1003.0)  # b last spoke at 1000.0 (handshake) and stays silent from now on
    now = 1003.0
    events: list[Event] = []
    while not events:
        deadline = a.next_deadline()
        assert deadline is not None
        assert deadline > now
        now = deadline
        events = a.tick(now)
        a.data_to_send()  # heartbeats go out but b never answers
    assert now == 1015.0
    assert events == [ConnectionFailed("heartbeat timeout: nothing received for 15.0 s")]
    assert a.next_deadline() is None


def test_heartbeat_deadline_counts_from_the_last_bytes_received() -> None:
    a, b = established()
    b.send_message(b"ping", 10.0)
    pump(a, b, 10.0)
    assert a.tick(24.9) == []
    assert failures(a.tick(25.0)) == ["heartbeat timeout: nothing received for 15.0 s"]


# -- closing --------------------------------------------------------------------------------------------------


def test_after_close_nothing_is_received_or_sent() -> None:
    a, b = established()
    b.send_message(b"late", 1.0)
    a.send_message(b"unsent", 1.0)
    a.close("shutting down")
    assert a.state == "closed"
    assert a.close_reason == "shutting down"
    assert a.data_to_send() == b""
    assert a.receive_data(b.data_to_send(), 1.0) == []
    assert a.tick(100.0) == []
    assert a.next_deadline() is None
    with pytest.raises(RuntimeError, match="closed"):
        a.send_message(b"x", 1.0)
    a.close("again")  # idempotent
    assert a.close_reason == "shutting down"


def test_after_a_failure_receive_data_returns_nothing() -> None:
    a = Connection(A, PLAIN, outbound=True, now=0.0)
    assert failures(a.receive_data(b"nope", 0.0))
    assert a.receive_data(b"anything", 0.0) == []


# -- configuration --------------------------------------------------------------------------------------------


def test_bad_configuration_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        ProtocolConfig(min_version=2, max_version=1)
    with pytest.raises(ValueError):
        ProtocolConfig(heartbeat_interval=15.0, heartbeat_timeout=15.0)
    with pytest.raises(ValueError):
        ProtocolConfig(features=frozenset({"x" * 65}))
    with pytest.raises(ValueError):
        ProtocolConfig(max_frame=10)
    with pytest.raises(ValueError):
        Identity(name=1 << 48, nickname="n", uid=1)
    with pytest.raises(ValueError):
        Identity(name=1, nickname="n" * 256, uid=1)


def test_the_largest_hello_fits_the_handshake_frame_limit() -> None:
    features = frozenset(f"{i:02d}" + "f" * 62 for i in range(32))
    _a, b = established(
        ProtocolConfig(features=features), ProtocolConfig(features=features), a=replace(A, nickname="é" * 127)
    )
    assert b.remote is not None
    assert b.remote.identity.nickname == "é" * 127
    assert b.remote.features == features


# -- fuzzing --------------------------------------------------------------------------------------------------

FUZZ_CONFIGS = {
    "plain": ProtocolConfig(max_frame=HANDSHAKE_MAX_FRAME),
    "password": ProtocolConfig(password_key=PASSWORD, max_frame=HANDSHAKE_MAX_FRAME),
    "password-v1": ProtocolConfig(password_key=PASSWORD, max_version=1, max_frame=HANDSHAKE_MAX_FRAME),
    "rotation": ProtocolConfig(password_key=PASSWORD, previous_keys=(OTHER_PASSWORD,), max_frame=HANDSHAKE_MAX_FRAME),
}


def recorded_stream(config: ProtocolConfig) -> bytes:
    """Everything b sends to a in a normal session; replayable to a fresh `a` built with the same seed."""
    a, b = connect(config, now=0.0)
    sent = b""
    while a.state == "handshake" or b.state == "handshake":
        to_a = b.data_to_send()
        sent += to_a
        a.receive_data(to_a, 0.0)
        b.receive_data(a.data_to_send(), 0.0)
    b.send_message(b"first message", 1.0)
    b.send_message(bytes(3000), 1.0)
    b.tick(10.0)  # a heartbeat
    b.send_message(b"", 11.0)
    b.send_message(b"last message", 11.0)
    sent += b.data_to_send()
    assert a.state == b.state == "established"
    return sent


STREAMS = {name: recorded_stream(config) for name, config in FUZZ_CONFIGS.items()}


def fresh_a(config: ProtocolConfig) -> Connection:
    return Connection(A, config, outbound=True, now=0.0, rng=rng(1).randbytes)


def feed_in_pieces(conn: Connection, data: bytes, cuts: list[int], limit: int) -> list[Event]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    events: list[Event] = []
    for start, end in itertools.pairwise(bounds):
        events += conn.receive_data(data[start:end], 1.0)  # must never raise
        assert conn.buffered_input <= limit + HEADER_SIZE
    return events


def check_events(conn: Connection, events: list[Event]) -> None:
    assert all(isinstance(e, Established | MessageReceived | ConnectionFailed) for e in events)
    failed = [i for i, e in enumerate(events) if isinstance(e, ConnectionFailed)]
    assert failed in ([], [len(events) - 1])  # at most one failure, and nothing after it
    assert (conn.state == "closed") == bool(failed)
    if conn.state == "closed":
        left = conn.data_to_send()
        if left:  # only a handshake that failed at the peer's proof: its own hello and proof still go
            assert not any(isinstance(e, Established) for e in events)
            assert left.startswith(PREAMBLE)  # (never drained in these tests)
            assert len(left) <= len(PREAMBLE) + HANDSHAKE_MAX_FRAME * 2
        assert conn.data_to_send() == b""


@pytest.mark.parametrize("name", sorted(FUZZ_CONFIGS))
def test_the_recorded_stream_is_valid(name: str) -> None:
    conn = fresh_a(FUZZ_CONFIGS[name])
    events = feed_in_pieces(conn, STREAMS[name], [], HANDSHAKE_MAX_FRAME)
    assert [type(e) for e in events] == [Established] + [MessageReceived] * 4
    assert conn.state == "established"


@settings(max_examples=300)
@given(
    name=st.sampled_from(sorted(FUZZ_CONFIGS)),
    flips=st.lists(st.integers(min_value=0), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_bit_flips_in_a_valid_stream_never_raise(name: str, flips: list[int], cuts: list[int]) -> None:
    data = bytearray(STREAMS[name])
    for flip in flips:
        bit = flip % (len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
    conn = fresh_a(FUZZ_CONFIGS[name])
    check_events(conn, feed_in_pieces(conn, bytes(data), cuts, HANDSHAKE_MAX_FRAME))


@settings(max_examples=300)
@given(
    name=st.sampled_from(sorted(FUZZ_CONFIGS)),
    length=st.integers(min_value=0),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_truncations_of_a_valid_stream_never_raise(name: str, length: int, cuts: list[int]) -> None:
    data = STREAMS[name][: length % (len(STREAMS[name]) + 1)]
    conn = fresh_a(FUZZ_CONFIGS[name])
    events = feed_in_pieces(conn, data, cuts, HANDSHAKE_MAX_FRAME)
    check_events(conn, events)
    assert failures(events) == []  # a prefix of a valid stream is just incomplete


@settings(max_examples=300)
@given(
    name=st.sampled_from(sorted(FUZZ_CONFIGS)),
    keep=st.integers(min_value=0),
    garbage=st.binary(min_size=1, max_size=600),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_random_bytes_never_raise(name: str, keep: int, garbage: bytes, cuts: list[int]) -> None:
    """Random bytes, alone or after any valid prefix (so the garbage hits every state of the machine)."""
    data = STREAMS[name][: keep % (len(STREAMS[name]) + 1)] + garbage
    conn = fresh_a(FUZZ_CONFIGS[name])
    check_events(conn, feed_in_pieces(conn, data, cuts, HANDSHAKE_MAX_FRAME))


@given(garbage=st.binary(max_size=200))
def test_random_frames_after_the_handshake_never_raise(garbage: bytes) -> None:
    for config in FUZZ_CONFIGS.values():
        _a, b = established(config)
        events = b.receive_data(len(garbage).to_bytes(4, "big") + garbage, 1.0)
        check_events(b, events)
        if config.password_key is not None or (garbage[:1] not in (bytes([TAG_MESSAGE]), b"\x03")):
            assert failures(events)
