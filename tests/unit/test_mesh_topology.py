"""The topology CRDT: merge rule, restart rule, gc and reachability, and the wire codec."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.mesh.errors import ProtocolError
from weave_node.mesh.topology import (
    MAX_VERSION,
    ConnectionInfo,
    PeerRecord,
    Topology,
    decode_records,
    encode_records,
    encoded_size,
    wins,
)

LOCAL = 1
POOL = [1, 2, 3, 4, 5, 6]


def conn(peer: int, established: bool = True, address: str = "", outbound: bool = False) -> ConnectionInfo:
    return ConnectionInfo(peer, address, outbound, established)


def rec(name: int, *peers: int, version: int = 1, uid: int = 1, nick: str = "") -> PeerRecord:
    return PeerRecord(name, nick, uid, version, tuple(conn(p) for p in sorted(peers)))


def topo(*peers: int, version: int = 1, uid: int = 1) -> Topology:
    return Topology(rec(LOCAL, *peers, version=version, uid=uid))


def merged(t: Topology, *batches: Iterable[PeerRecord]) -> Topology:
    for batch in batches:
        t.merge(batch)
        t.check_invariants()
    return t


# ---- strategies --------------------------------------------------------------------------------------------


octet = st.integers(0, 300).map(str) | st.sampled_from(["00", "01", "1a", ""])
addresses = st.one_of(
    st.text(max_size=12),
    st.builds(lambda a, b, c, d, p: f"{a}.{b}.{c}.{d}:{p}", octet, octet, octet, octet, st.integers(0, 70000)),
    st.sampled_from(["10.0.0.1:6783", "010.0.0.1:1", "1.2.3.4:01", "1.2.3:4", ":", "1.2.3.4:", "[::1]:6783"]),
)


@st.composite
def records(draw: st.DrawFn, names: Sequence[int] = POOL, name: int | None = None, big: bool = False) -> PeerRecord:
    """Small mode: a few names, versions and uids, so merges collide. Big mode: any valid field values."""
    if name is None:
        name = draw(st.sampled_from(names))
    others = sorted(set(names) - {name})
    peers = sorted(draw(st.sets(st.sampled_from(others)))) if others else []
    text = st.text(max_size=12) if big else st.sampled_from(["", "a", "é"])
    address = addresses if big else text
    established = st.booleans() if big else st.sampled_from([True, True, False])
    connections = tuple(ConnectionInfo(p, draw(address), draw(st.booleans()), draw(established)) for p in peers)
    uid = draw(st.integers(0, 2**64 - 1) if big else st.integers(1, 3))
    version = draw(st.integers(1, MAX_VERSION) if big else st.integers(1, 4))
    return PeerRecord(name, draw(text), uid, version, connections)


@st.composite
def unique_records(draw: st.DrawFn) -> list[PeerRecord]:
    """A valid message: distinct names, each record connecting only to names of the message."""
    names = draw(st.lists(st.integers(0, 2**48 - 1), unique=True, max_size=6))
    return [draw(records(names, name=n, big=True)) for n in names]


batches = st.lists(st.lists(records(), max_size=6), max_size=5)


# ---- merge rule --------------------------------------------------------------------------------------------


def test_greater_version_wins_then_uid() -> None:
    t = topo(2)
    assert t.merge([rec(2, 1, version=2, uid=5)]) == {2}
    assert t.merge([rec(2, 1, version=1, uid=9)]) == set()  # older version, whatever its uid
    assert t.merge([rec(2, 1, version=2, uid=6)]) == {2}  # same version: greater uid
    assert t.records[2].uid == 6
    assert t.merge([rec(2, 1, version=2, uid=6)]) == set()  # equal: nothing to gossip
    t.check_invariants()


def test_full_tie_is_broken_by_content() -> None:
    a, b = rec(2, 1, nick="a"), rec(2, 1, nick="b")
    assert wins(b, a) and not wins(a, b) and not wins(a, a)
    assert merged(topo(2), [a], [b]).records[2] == merged(topo(2), [b], [a]).records[2] == b


@settings(max_examples=300, deadline=None)
@given(batches, st.randoms(use_true_random=False))
def test_merge_is_order_independent(bs: list[list[PeerRecord]], rnd: random.Random) -> None:
    """Commutative: any permutation of every record gives the same state (like weave's ring_test)."""
    flat = [r for b in bs for r in b]
    expected = merged(topo(2, 3), *bs)
    for _ in range(5):
        shuffled = list(flat)
        rnd.shuffle(shuffled)
        assert dict(merged(topo(2, 3), *[[r] for r in shuffled]).records) == dict(expected.records)


@settings(max_examples=300, deadline=None)
@given(batches)
def test_merge_is_associative(bs: list[list[PeerRecord]]) -> None:
    """Grouping does not matter: batch by batch, all at once, or joined from two partial states."""
    one_by_one = merged(topo(2, 3), *bs)
    all_at_once = merged(topo(2, 3), [r for b in bs for r in b])
    assert dict(one_by_one.records) == dict(all_at_once.records)
    half = len(bs) // 2
    left, right = merged(topo(2, 3), *bs[:half]), merged(topo(2, 3), *bs[half:])
    joined_lr = merged(topo(2, 3), left.records.values(), right.records.values())
    joined_rl = merged(topo(2, 3), right.records.values(), left.records.values())
    assert dict(joined_lr.records) == dict(joined_rl.records) == dict(one_by_one.records)


@settings(max_examples=300, deadline=None)
@given(batches)
def test_merge_is_idempotent_and_reports_exactly_the_changes(bs: list[list[PeerRecord]]) -> None:
    t = topo(2, 3)
    for batch in bs:
        before = dict(t.records)
        improved = t.merge(batch)
        t.check_invariants()
        assert improved == {n for n, r in t.records.items() if before.get(n) != r}
        assert t.merge(batch) == set()
        assert t.merge(t.records.values()) == set()


# ---- restart rule ------------------------------------------------------------------------------------------


def test_restart_rule_bumps_past_an_old_incarnation() -> None:
    t = topo(2, uid=7)  # we restarted: version 1, new uid 7
    assert t.merge([rec(LOCAL, 2, 3, version=40, uid=3)]) == {LOCAL}
    assert (t.local.version, t.local.uid, t.local.established) == (41, 7, frozenset({2}))
    assert t.records[LOCAL] is t.local
    assert t.merge([rec(LOCAL, 2, 3, version=40, uid=3)]) == set()  # now older than ours
    t.check_invariants()


def test_restart_rule_equal_version_different_content() -> None:
    t = topo(2, uid=7)
    assert t.merge([rec(LOCAL, version=1, uid=3)]) == {LOCAL}
    assert t.local.version == 2


def test_restart_rule_ignores_older_and_identical() -> None:
    t = topo(2, version=5, uid=7)
    assert t.merge([rec(LOCAL, version=4, uid=9)]) == set()
    assert t.merge([rec(LOCAL, 2, version=5, uid=7)]) == set()  # identical (a copy of ours)
    assert t.local.version == 5


def test_restart_rule_adopts_an_echo_of_our_own_content() -> None:
    t = topo(2, version=2, uid=7)
    assert t.merge([rec(LOCAL, 2, version=9, uid=7)]) == {LOCAL}
    assert t.local == rec(LOCAL, 2, version=9, uid=7)


def test_restart_rule_saturates_at_max_version() -> None:
    t = topo(uid=7)
    assert t.merge([rec(LOCAL, version=MAX_VERSION, uid=3)]) == {LOCAL}
    assert t.local.version == MAX_VERSION
    t.check_invariants()


# ---- local changes -----------------------------------------------------------------------------------------


def test_set_local_connections_sorts_and_bumps_only_on_change() -> None:
    t = topo()
    assert t.set_local_connections([conn(5), conn(2, address="10.0.0.2:6783")]) is True
    assert [c.peer for c in t.local.connections] == [2, 5]
    assert t.local.version == 2
    assert t.set_local_connections([conn(2, address="10.0.0.2:6783"), conn(5)]) is False
    assert t.local.version == 2
    assert t.set_local_connections([]) is True
    assert t.local.version == 3
    t.check_invariants()


@pytest.mark.parametrize("bad", [[conn(2), conn(2, established=False)], [conn(LOCAL)], [conn(2**48)]])
def test_set_local_connections_rejects_bad_lists(bad: list[ConnectionInfo]) -> None:
    t = topo(3)
    before = t.local
    with pytest.raises(ValueError):
        t.set_local_connections(bad)
    assert t.local is before
    t.check_invariants()


def test_set_nickname() -> None:
    t = topo()
    assert t.set_nickname("host-a") is True
    assert (t.local.nickname, t.local.version) == ("host-a", 2)
    assert t.set_nickname("host-a") is False
    with pytest.raises(ValueError):
        t.set_nickname("x" * 256)
    assert t.local.nickname == "host-a"


def test_records_view_is_read_only_and_live() -> None:
    t = topo(2)
    view = t.records
    with pytest.raises(TypeError):
        view[9] = rec(9)  # type: ignore[index]
    t.merge([rec(2, 1)])
    assert 2 in view


def test_invalid_local_record_rejected() -> None:
    with pytest.raises(ValueError):
        Topology(rec(LOCAL, version=0))


# ---- reachability and gc -----------------------------------------------------------------------------------


def test_gc_keeps_only_peers_reachable_over_symmetric_edges() -> None:
    t = topo(2)
    t.merge([rec(2, 1, 3), rec(3, 2, 4), rec(4), rec(5, 6), rec(6, 5)])
    # 1-2-3 symmetric; 3->4 one-sided (4 does not list 3); 5-6 is an island
    assert t.reachable() == {1, 2, 3}
    assert t.gc() == {4, 5, 6}
    assert set(t.records) == {1, 2, 3}
    assert t.gc() == set()
    t.check_invariants()


def test_gc_never_removes_local_and_follows_edge_loss() -> None:
    t = topo(2)
    t.merge([rec(2, 1, 3), rec(3, 2)])
    assert t.reachable() == {1, 2, 3}
    t.merge([rec(2, 3, version=2)])  # 2 drops its connection to us
    t.check_invariants()
    assert t.gc() == {2, 3}
    assert set(t.records) == {LOCAL}
    t.set_local_connections([])
    assert t.gc() == set()


def test_not_established_connections_do_not_count() -> None:
    t = Topology(PeerRecord(LOCAL, "", 1, 1, (conn(2, established=False),)))
    t.merge([rec(2, 1)])
    assert t.reachable() == {LOCAL}


op = st.one_of(
    st.tuples(st.just("merge"), st.lists(records(), max_size=4)),
    st.tuples(st.just("local"), st.sets(st.sampled_from(POOL[1:]))),
    st.tuples(st.just("gc"), st.none()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=25))
def test_incremental_reachability_matches_a_fresh_search(ops: list[tuple[str, object]]) -> None:
    t = topo(2)
    for kind, arg in ops:
        if kind == "merge":
            t.merge(arg)  # type: ignore[arg-type]
        elif kind == "local":
            t.set_local_connections(conn(p) for p in arg)  # type: ignore[attr-defined]
        else:
            removed = t.gc()
            assert LOCAL not in removed
            assert set(t.records) == t.reachable()
        t.check_invariants()  # compares the cached reachable set and fingerprint with fresh ones


def test_fingerprint_depends_only_on_the_records() -> None:
    rs = [rec(2, 1, 3), rec(3, 2), rec(4, 3)]
    a, b = merged(topo(2), rs), merged(topo(2), reversed(rs))
    assert a.fingerprint() == b.fingerprint()
    b.merge([rec(4, 3, version=2)])
    assert a.fingerprint() != b.fingerprint()


# ---- codec -------------------------------------------------------------------------------------------------

SAMPLE = [
    PeerRecord(0x0A0000000001, "host-a", 2**64 - 1, 3, (ConnectionInfo(0x0A0000000002, "10.0.0.2:6783", True, True),)),
    PeerRecord(0x0A0000000002, "hôte-b", 1, 1, (ConnectionInfo(0x0A0000000001, "", False, False),)),
    PeerRecord(2**48 - 1, "", 0, MAX_VERSION, ()),
]


@pytest.mark.parametrize(
    ("address", "size"),
    [
        ("10.0.0.1:6783", 6),
        ("255.255.255.255:65535", 6),
        ("0.0.0.0:0", 6),
        ("010.0.0.1:6783", 14),  # not canonical: kept as text, and still round-trips exactly
        ("10.0.0.1:06783", 14),
        ("10.0.0.1:65536", 14),
        ("10.0.0.256:1", 12),
        ("[fd00::1]:6783", 14),
        ("", 0),
    ],
)
def test_ipv4_addresses_are_packed(address: str, size: int) -> None:
    r = PeerRecord(1, "", 1, 1, (ConnectionInfo(2, address, True, True),))
    assert len(r.encoded) == len(PeerRecord(1, "", 1, 1, (ConnectionInfo(2, "", True, True),)).encoded) + size
    assert decode_records(encode_records([r])) == [r]


def test_codec_round_trip_sample() -> None:
    data = encode_records(SAMPLE)
    assert data[0] == 1  # format version
    assert decode_records(data) == SAMPLE
    assert encoded_size(SAMPLE) == len(data)
    assert decode_records(encode_records([])) == []


@given(unique_records())
def test_codec_round_trip(rs: list[PeerRecord]) -> None:
    data = encode_records(rs)
    assert decode_records(data) == rs
    assert encoded_size(rs) == len(data)


@pytest.mark.parametrize(
    "bad",
    [
        PeerRecord(2**48, "", 1, 1, ()),
        PeerRecord(-1, "", 1, 1, ()),
        PeerRecord(1, "", 2**64, 1, ()),
        PeerRecord(1, "", 1, 0, ()),
        PeerRecord(1, "x" * 256, 1, 1, ()),
        PeerRecord(1, "", 1, 1, (conn(2, address="a" * 256),)),
        PeerRecord(1, "", 1, 1, (conn(3), conn(2))),
        PeerRecord(1, "", 1, 1, (conn(1),)),
    ],
)
def test_encoder_rejects_invalid_records(bad: PeerRecord) -> None:
    with pytest.raises(ValueError):
        encode_records([bad])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decode_random_bytes_raises_protocol_error_only(data: bytes) -> None:
    try:
        decoded = decode_records(data)
    except ProtocolError:
        return
    assert encode_records(decoded) == data  # what decodes is canonical


def test_every_truncation_raises_protocol_error() -> None:
    data = encode_records(SAMPLE)
    for end in range(len(data)):
        with pytest.raises(ProtocolError):
            decode_records(data[:end])


@settings(max_examples=500, deadline=None)
@given(unique_records(), st.data())
def test_mutated_encodings_raise_protocol_error_or_decode_canonically(
    rs: list[PeerRecord], data: st.DataObject
) -> None:
    buf = bytearray(encode_records(rs))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(buf)))
        buf[i:i] = data.draw(st.binary(min_size=1, max_size=3))
    try:
        decoded = decode_records(bytes(buf))
    except ProtocolError:
        return
    assert encode_records(decoded) == bytes(buf)


def _raw_record(
    name: int = 1, uid: int = 1, version: int = 1, nick: bytes = b"", conns: Sequence[tuple[int, int, bytes]] = ()
) -> bytes:
    out = struct.pack(">HIQQB", name >> 32, name & 0xFFFFFFFF, uid, version, len(nick)) + nick
    out += struct.pack(">H", len(conns))
    for peer, flags, addr in conns:
        out += struct.pack(">HIBB", peer >> 32, peer & 0xFFFFFFFF, flags, len(addr)) + addr
    return out


def _message(*bodies: bytes, count: int | None = None, fmt: int = 1) -> bytes:
    return struct.pack(">BI", fmt, len(bodies) if count is None else count) + b"".join(bodies)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated"),
        (_message(fmt=2), "unknown topology format"),
        (_message(count=10001), "more than 10000"),
        (_message(count=0xFFFFFFFF), "more than"),
        (_message(count=3), "exceeds the message"),
        (_message(_raw_record(), count=2), "exceeds the message"),
        (_message(_raw_record()) + b"\x00", "trailing"),
        (_message(_raw_record(nick=b"\xff\xfe")), "nickname is not UTF-8"),
        (_message(_raw_record(conns=[(2, 3, b"\xc3")])), "address is not UTF-8"),
        (_message(_raw_record()[:-2] + b"\xff\xff"), "connection count exceeds"),
        (_message(_raw_record(name=1), _raw_record(name=1)), "duplicate peer"),
        (_message(_raw_record(conns=[(3, 3, b""), (2, 3, b"")])), "not strictly sorted"),
        (_message(_raw_record(conns=[(2, 3, b""), (2, 3, b"")])), "not strictly sorted"),
        (_message(_raw_record(name=5, conns=[(5, 3, b"")])), "itself"),
        (_message(_raw_record(conns=[(2, 8, b"")])), "unknown connection flags"),
        (_message(_raw_record(conns=[(2, 4, b"\x0a\x00\x00\x01\x1a")])), "packed address is not 6 bytes"),
        (_message(_raw_record(conns=[(2, 4, b"\x0a\x00\x00\x01\x1a\x7f\x00")])), "packed address is not 6 bytes"),
        (_message(_raw_record(conns=[(2, 0, b"10.0.0.1:6783")])), "IPv4 address not packed"),
        (_message(_raw_record(version=0)), "version 0"),
        (_message(_raw_record(nick=b"abc"))[:-4] + b"\x00\x00", "truncated"),
    ],
)
def test_decoder_rejects(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_records(data)


def test_decoder_max_records_is_configurable() -> None:
    data = encode_records(SAMPLE)
    assert len(decode_records(data, max_records=3)) == 3
    with pytest.raises(ProtocolError, match="more than 2"):
        decode_records(data, max_records=2)


def test_decoder_accepts_the_largest_fields() -> None:
    body = _raw_record(name=2**48 - 1, uid=2**64 - 1, version=2**64 - 1, nick=b"n" * 255, conns=[(0, 3, b"a" * 255)])
    (r,) = decode_records(_message(body))
    assert (r.name, r.uid, r.version, len(r.nickname), r.connections[0].address) == (
        2**48 - 1,
        2**64 - 1,
        2**64 - 1,
        255,
        "a" * 255,
    )
