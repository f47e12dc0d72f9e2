"""The sleeve codec: round trips in both modes, segmentation and reassembly (loss, reordering, duplicates, bounds),
the replay window, and a decoder that, fed anything, only ever raises its own verdict."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.overlay.sleeve.codec import (
    INNER,
    MAX_SEGMENTS,
    MODE_AESGCM,
    OUTER,
    Kind,
    Opener,
    ReplayWindow,
    Sealer,
    SleeveDropped,
    aesgcm_available,
    overhead,
)
from weave_node.overlay.sleeve.reassembly import Reassembler

pytestmark = pytest.mark.unit
KEY = bytes(range(32))
A, B = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"


def _deliver(datagrams: list[bytes], opener: Opener, reasm: Reassembler, now: float = 0.0) -> list[bytes]:
    out = []
    for d in datagrams:
        try:
            msg = reasm.add(opener.open(d), now)
        except SleeveDropped:
            continue
        if msg is not None:
            out.append(msg)
    return out


@pytest.mark.parametrize("key", [None, KEY])
@given(message=st.binary(min_size=0, max_size=70000), seg=st.integers(min_value=1200, max_value=9000))
@settings(max_examples=60, deadline=None)
def test_any_message_round_trips_through_segments(key: bytes | None, message: bytes, seg: int) -> None:
    sealer, opener = Sealer(key), Opener(key)
    try:
        datagrams = sealer.datagrams(message, msg_id=7, src=A, dst=B, segment_size=seg)
    except ValueError:
        assert len(message) > (seg - overhead(key is not None)) * MAX_SEGMENTS or len(message) > 65546
        return
    assert all(len(d) <= seg for d in datagrams)
    assert _deliver(datagrams, opener, Reassembler()) == [message]


def test_sealed_datagrams_hide_the_payload_and_the_inner_header() -> None:
    payload = b"KNOWN-PLAINTEXT-" * 50
    for d in Sealer(KEY).datagrams(payload, msg_id=1, src=A, dst=B, segment_size=1400):
        assert b"KNOWN-PLAINTEXT" not in d and A not in d and B not in d
    plain = Sealer(None).datagrams(payload, msg_id=1, src=A, dst=B, segment_size=1400)
    assert b"KNOWN-PLAINTEXT" in plain[0]


def test_replayed_forged_and_wrong_mode_datagrams_are_dropped_and_counted() -> None:
    sealer, opener = Sealer(KEY), Opener(KEY)
    (d,) = sealer.datagrams(b"frame", msg_id=1, src=A, dst=B, segment_size=1400)
    assert opener.open(d).data == b"frame"
    with pytest.raises(SleeveDropped, match="replay"):
        opener.open(d)
    forged = bytearray(sealer.datagrams(b"frame", msg_id=2, src=A, dst=B, segment_size=1400)[0])
    forged[-1] ^= 1
    with pytest.raises(SleeveDropped, match="forged"):
        opener.open(bytes(forged))
    # The seq is bound by the nonce: moving a datagram to another seq does not authenticate either.
    moved = bytearray(sealer.datagrams(b"frame", msg_id=3, src=A, dst=B, segment_size=1400)[0])
    moved[11] ^= 0x40
    with pytest.raises(SleeveDropped, match="forged"):
        opener.open(bytes(moved))
    wrong_password = Sealer(bytes(32), seq=100).datagrams(b"frame", msg_id=4, src=A, dst=B, segment_size=1400)[0]
    with pytest.raises(SleeveDropped, match="forged"):
        opener.open(wrong_password)
    clear = Sealer(None).datagrams(b"frame", msg_id=5, src=A, dst=B, segment_size=1400)[0]
    with pytest.raises(SleeveDropped, match="mode"):
        opener.open(clear)
    with pytest.raises(SleeveDropped, match="mode"):
        Opener(None).open(d)
    assert opener.drops == {"replay": 1, "forged": 3, "mode": 1}
    # A forged datagram does not advance the window: the genuine one with that seq still gets in.
    genuine = sealer.datagrams(b"after", msg_id=6, src=A, dst=B, segment_size=1400)[0]
    assert opener.open(genuine).data == b"after"


def test_the_replay_window_accepts_reordering_within_it_and_nothing_twice() -> None:
    w = ReplayWindow(64)
    order = list(range(200))
    random.Random(3).shuffle(order[:50])
    seen = set()
    for seq in [*order, 5, 150, 199]:
        try:
            w.check(seq)
        except SleeveDropped as exc:
            assert seq in seen or w.highest - seq >= 64, (seq, exc.reason)
            continue
        assert seq not in seen
        w.accept(seq)
        seen.add(seq)
    with pytest.raises(SleeveDropped, match="too_old"):
        w.check(199 - 64)
    w.accept(10_000)  # a jump beyond the window forgets everything older
    with pytest.raises(SleeveDropped, match="too_old"):
        w.check(9000)


def test_reassembly_survives_reordering_and_duplicates_and_gives_up_on_loss() -> None:
    sealer, opener, reasm = Sealer(KEY), Opener(KEY), Reassembler(timeout=1.0)
    message = os.urandom(60000)
    datagrams = sealer.datagrams(message, msg_id=9, src=A, dst=B, segment_size=1472)
    shuffled = datagrams[:]
    random.Random(1).shuffle(shuffled)
    assert _deliver(shuffled, opener, reasm) == [message]
    lossy = sealer.datagrams(message, msg_id=10, src=A, dst=B, segment_size=1472)
    assert _deliver(lossy[:-1], opener, reasm, now=5.0) == []
    assert reasm.pending[0] == 1
    reasm.expire(now=6.5)
    assert reasm.pending == (0, 0) and reasm.drops["timeout"] == 1


def test_reassembly_memory_is_bounded() -> None:
    sealer, opener = Sealer(None), Opener(None)
    reasm = Reassembler(max_messages=4, max_bytes=1 << 20)
    for msg_id in range(50):  # never-completed messages: first segments only
        first = sealer.datagrams(bytes(20000), msg_id=msg_id, src=A, dst=B, segment_size=1472)[0]
        reasm.add(opener.open(first), now=0.0)
        assert reasm.pending[0] <= 4
    assert reasm.drops["overflow"] == 46


def test_inconsistent_segments_are_dropped() -> None:
    opener, reasm = Opener(None), Reassembler()
    sealer = Sealer(None)
    first = sealer.datagrams(bytes(3000), msg_id=1, src=A, dst=B, segment_size=1472)[0]
    other = sealer.datagrams(bytes(9000), msg_id=1, src=A, dst=B, segment_size=1472)[1]  # same id, count 7
    assert reasm.add(opener.open(first), 0.0) is None
    assert reasm.add(opener.open(other), 0.0) is None
    assert reasm.drops["inconsistent"] == 1 and reasm.pending == (0, 0)


@pytest.mark.parametrize("key", [None, KEY])
@given(data=st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_random_datagrams_only_ever_raise_the_codecs_verdict(key: bytes | None, data: bytes) -> None:
    opener, reasm = Opener(key), Reassembler()
    try:
        seg = opener.open(data)
    except SleeveDropped:
        return
    assert key is None  # nothing random authenticates
    reasm.add(seg, 0.0)


@pytest.mark.parametrize("key", [None, KEY])
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=8))
@settings(max_examples=200, deadline=None)
def test_mutated_datagrams_never_deliver_a_frame_when_sealed(key: bytes | None, flips: list[tuple[int, int]]) -> None:
    sealer = Sealer(key)
    datagrams = sealer.datagrams(os.urandom(5000), msg_id=1, src=A, dst=B, segment_size=1472)
    mutated = []
    for i, d in enumerate(datagrams):
        b = bytearray(d)
        for pos, bits in flips:
            if pos % len(datagrams) == i:
                b[pos % len(b)] ^= bits
        mutated.append(bytes(b))
    opener, reasm = Opener(key), Reassembler()
    delivered = _deliver(mutated, opener, reasm)
    if key is not None and mutated != datagrams:
        changed = [m for m, d in zip(mutated, datagrams, strict=True) if m != d]
        # A changed datagram never opens; so the message (which needs every segment) is never delivered.
        assert delivered == [] and sum(opener.drops.values()) >= len(changed)


def test_header_sizes_are_what_the_mtu_arithmetic_assumes() -> None:
    assert (OUTER.size, INNER.size) == (12, 24)
    assert overhead(True) == 52 and overhead(False) == 36
    assert Kind.PROBE == 2


@pytest.mark.skipif(not aesgcm_available(), reason="no AES-NI: AES-256-GCM is not offered")
def test_aes_gcm_round_trips_and_refuses_forgeries_and_the_other_cipher() -> None:
    message = os.urandom(5000)
    datagrams = Sealer(KEY, mode=MODE_AESGCM).datagrams(message, msg_id=3, src=A, dst=B, segment_size=1400)
    assert all(b"\x00" * 64 not in d for d in datagrams)
    assert _deliver(datagrams, Opener(KEY, mode=MODE_AESGCM), Reassembler()) == [message]
    # The clear header is additional data: moving a datagram to another seq breaks it.
    moved = bytearray(datagrams[0])
    moved[11] ^= 1
    opener = Opener(KEY, mode=MODE_AESGCM)
    with pytest.raises(SleeveDropped, match="forged"):
        opener.open(bytes(moved))
    with pytest.raises(SleeveDropped, match="mode"):
        Opener(KEY).open(datagrams[0])  # a secretbox receiver refuses AES-GCM datagrams, and the reverse
    with pytest.raises(SleeveDropped, match="mode"):
        Opener(KEY, mode=MODE_AESGCM).open(Sealer(KEY).datagrams(b"x", msg_id=1, src=A, dst=B, segment_size=100)[0])


@given(message=st.binary(min_size=0, max_size=66000), seg=st.integers(min_value=600, max_value=9000))
@settings(max_examples=60, deadline=None)
def test_gathered_plain_datagrams_are_the_packed_ones(message: bytes, seg: int) -> None:
    try:
        packed = Sealer(None, seq=9).datagrams(message, msg_id=5, src=A, dst=B, segment_size=seg, flags=1)
    except ValueError:
        return
    iov = Sealer(None, seq=9).plain_iovecs(memoryview(message), msg_id=5, src=A, dst=B, segment_size=seg, flags=1)
    assert [bytes(iov[i]) + bytes(iov[i + 1]) for i in range(0, len(iov), 2)] == packed


@given(steps=st.lists(st.tuples(st.integers(1, 200), st.integers(1, 100)), min_size=1, max_size=40))
@settings(max_examples=200, deadline=None)
def test_accepting_a_run_at_once_is_accepting_each_of_it(steps: list[tuple[int, int]]) -> None:
    """`accept_run(first, last)` (a batch's consecutive datagrams marked in one step) leaves the window exactly as
    accepting first..last one by one: the same sequence numbers replayed, too old and new."""
    one, runs = ReplayWindow(64), ReplayWindow(64)
    for gap, length in steps:
        first = runs.highest + gap
        for seq in range(first, first + length):
            one.accept(seq)
        runs.accept_run(first, first + length - 1)
        runs.accept_run(runs.highest + 1, runs.highest)  # an empty run: nothing changes
        assert runs.highest == one.highest
    for seq in range(max(0, one.highest - 70), one.highest + 2):
        verdicts = []
        for w in (one, runs):
            try:
                w.check(seq)
                verdicts.append("new")
            except SleeveDropped as exc:
                verdicts.append(exc.reason)
        assert verdicts[0] == verdicts[1], (seq, verdicts)
