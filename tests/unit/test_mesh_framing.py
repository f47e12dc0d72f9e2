from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weave_node.mesh.errors import ProtocolError
from weave_node.mesh.framing import HANDSHAKE_MAX_FRAME, HEADER_SIZE, MAX_FRAME, FrameDecoder, encode_frame


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_limits_are_sane() -> None:
    assert MAX_FRAME == 8 * 1024 * 1024
    assert HEADER_SIZE < HANDSHAKE_MAX_FRAME <= 64 * 1024


def test_encode_is_length_prefixed_big_endian() -> None:
    assert encode_frame(b"abc", 16) == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"", 16) == b"\x00\x00\x00\x00"


def test_encode_refuses_a_payload_over_the_limit() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(b"x" * 17, 16)


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
)
def test_any_split_of_the_stream_yields_the_same_frames(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p, 300) for p in payloads)
    decoder = FrameDecoder(300)
    frames = [frame for chunk in split(stream, cuts) for frame in decoder.feed(chunk)]
    assert frames == payloads
    assert decoder.buffered == 0


@given(payloads=st.lists(st.binary(max_size=50), min_size=1, max_size=10))
def test_byte_by_byte(payloads: list[bytes]) -> None:
    stream = b"".join(encode_frame(p, 50) for p in payloads)
    decoder = FrameDecoder(50)
    frames: list[bytes] = []
    for i in range(len(stream)):
        frames += decoder.feed(stream[i : i + 1])
        assert decoder.buffered <= 50 + HEADER_SIZE
    assert frames == payloads


def test_oversized_length_is_rejected_from_the_header_alone() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(b"\x00\x00") == []
    with pytest.raises(ProtocolError, match="exceeds the limit of 1024"):
        decoder.feed(b"\x04\x01")  # 1025: rejected without waiting for (or buffering) any payload
    assert decoder.buffered <= HEADER_SIZE
    with pytest.raises(ProtocolError):  # a failed decoder stays failed
        decoder.feed(encode_frame(b"ok", 1024))


def test_a_huge_announced_length_never_buffers() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    with pytest.raises(ProtocolError):
        decoder.feed(b"\xff\xff\xff\xff" + b"x" * 100_000)
    assert decoder.buffered <= HEADER_SIZE


def test_exactly_max_frame_is_accepted() -> None:
    decoder = FrameDecoder(1000)
    assert decoder.feed(encode_frame(b"y" * 1000, 1000)) == [b"y" * 1000]


def test_frames_before_an_oversized_one_are_delivered_lazily() -> None:
    decoder = FrameDecoder(10)
    it = decoder.frames(encode_frame(b"good", 10) + b"\x00\x00\x00\x0b")
    assert next(it) == b"good"
    with pytest.raises(ProtocolError):
        next(it)


def test_limit_may_change_between_frames() -> None:
    decoder = FrameDecoder(8)
    stream = encode_frame(b"small", 8) + encode_frame(b"z" * 100, 100)
    frames = []
    for frame in decoder.frames(stream):
        frames.append(frame)
        decoder.max_frame = 100
    assert frames == [b"small", b"z" * 100]


@given(
    data=st.binary(max_size=2000),
    limit=st.integers(min_value=1, max_value=200),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_garbage_yields_frames_or_protocol_error_and_stays_bounded(data: bytes, limit: int, cuts: list[int]) -> None:
    decoder = FrameDecoder(limit)
    try:
        for chunk in split(data, cuts):
            for frame in decoder.feed(chunk):
                assert len(frame) <= limit
            assert decoder.buffered <= limit + HEADER_SIZE
    except ProtocolError:
        pass


def test_bad_limits_are_programming_errors() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(0)
    with pytest.raises(ValueError):
        FrameDecoder(1 << 32)
