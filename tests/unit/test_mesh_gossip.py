from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weave_node.mesh import gossip
from weave_node.mesh.errors import ProtocolError

names = st.integers(min_value=0, max_value=2**48 - 1)
channels = st.text(min_size=1, max_size=16).filter(lambda s: 0 < len(s.encode()) <= gossip.MAX_CHANNEL)


@given(
    kind=st.sampled_from([gossip.KIND_GOSSIP, gossip.KIND_UNICAST, gossip.KIND_BROADCAST]),
    channel=channels,
    src=names,
    dst=names,
    payload=st.binary(max_size=64),
)
def test_envelopes_round_trip(kind: int, channel: str, src: int, dst: int, payload: bytes) -> None:
    env = gossip.Envelope(
        kind=kind,
        channel=channel,
        src=src if kind != gossip.KIND_GOSSIP else 0,
        dst=dst if kind == gossip.KIND_UNICAST else 0,
        payload=payload,
    )
    assert gossip.decode(gossip.encode(env)) == env


def test_topology_envelope_round_trips() -> None:
    env = gossip.Envelope(kind=gossip.KIND_TOPOLOGY, payload=b"xyz")
    assert gossip.decode(gossip.encode(env)) == env


@given(st.binary(max_size=64))
def test_garbage_raises_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        gossip.decode(data)


def test_every_truncation_of_a_unicast_is_rejected() -> None:
    full = gossip.encode(gossip.Envelope(kind=gossip.KIND_UNICAST, channel="ipam", src=1, dst=2, payload=b""))
    for cut in range(len(full)):
        with pytest.raises(ProtocolError):
            gossip.decode(full[:cut])


@given(fp=st.integers(min_value=0, max_value=2**64 - 1), echo=st.booleans())
def test_digests_round_trip(fp: int, echo: bool) -> None:
    env = gossip.decode(gossip.encode(gossip.encode_digest(fp, echo)))
    assert gossip.decode_digest(env) == (fp, echo)


@pytest.mark.parametrize("payload", [b"", b"\x00" * 8, b"\x00" * 8 + b"\x02", b"\x00" * 10])
def test_bad_digests_are_rejected(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        gossip.decode_digest(gossip.decode(bytes([gossip.KIND_DIGEST]) + payload))


@pytest.mark.parametrize("kind", [gossip.KIND_UNICAST, gossip.KIND_BROADCAST])
@pytest.mark.parametrize("where", [0, 8])
def test_names_beyond_48_bits_are_rejected(kind: int, where: int) -> None:
    names = [1, 2]
    names[where // 8] = 1 << 48
    fields = b"".join(n.to_bytes(8, "big") for n in names[: 2 if kind == gossip.KIND_UNICAST else 1])
    data = bytes([kind, 4]) + b"ipam" + fields + b"payload"
    if kind == gossip.KIND_BROADCAST and where == 8:
        assert gossip.decode(data).src == 1  # (a broadcast has one name: those 8 bytes are payload)
        return
    with pytest.raises(ProtocolError, match="not a 48-bit peer name"):
        gossip.decode(data)
