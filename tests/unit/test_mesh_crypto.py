from __future__ import annotations

import random

import nacl.secret
import pytest
from hypothesis import given
from hypothesis import strategies as st

from weave_node.mesh.crypto import (
    COUNTER_SIZE,
    MAX_COUNTER,
    OVERHEAD,
    EphemeralKey,
    PasswordKey,
    SecretBoxChannel,
    SessionKeys,
    derive_session_keys,
    nonce_for,
    transcript_hash,
)
from weave_node.mesh.errors import ProtocolError

PASSWORD = PasswordKey.from_password(b"correct horse")
OTHER = PasswordKey.from_password(b"battery staple")


def seeded(seed: int) -> EphemeralKey:
    return EphemeralKey.generate(random.Random(seed).randbytes)


def pair(pw_a: PasswordKey = PASSWORD, pw_b: PasswordKey = PASSWORD) -> tuple[SessionKeys, SessionKeys]:
    a, b = seeded(1), seeded(2)
    return derive_session_keys(pw_a, a, b.public), derive_session_keys(pw_b, b, a.public)


def channels(keys: SessionKeys) -> tuple[SecretBoxChannel, SecretBoxChannel]:
    return SecretBoxChannel(keys.send), SecretBoxChannel(keys.receive)


def test_password_key_is_deterministic_cached_and_secret() -> None:
    assert PasswordKey.from_password(b"correct horse") == PASSWORD
    assert PASSWORD != OTHER
    assert len(PASSWORD.key) == 32
    assert PASSWORD.key.hex() not in repr(PASSWORD)
    with pytest.raises(ValueError):
        PasswordKey.from_password(b"")
    with pytest.raises(ValueError):
        PasswordKey(b"short")


def test_ephemeral_keys_come_from_the_injected_rng() -> None:
    assert seeded(7) == seeded(7)
    assert seeded(7).public != seeded(8).public
    assert seeded(7).private.hex() not in repr(seeded(7))


def test_same_password_both_directions_decrypt() -> None:
    keys_a, keys_b = pair()
    assert keys_a.send == keys_b.receive
    assert keys_a.receive == keys_b.send
    assert keys_a.send != keys_a.receive  # separate keys per direction
    a_send, a_recv = channels(keys_a)
    b_send, b_recv = channels(keys_b)
    for i in range(5):
        assert b_recv.decrypt(a_send.encrypt(b"a->b %d" % i)) == b"a->b %d" % i
        assert a_recv.decrypt(b_send.encrypt(b"b->a %d" % i)) == b"b->a %d" % i


def test_wrong_password_derives_keys_that_do_not_decrypt() -> None:
    keys_a, keys_b = pair(PASSWORD, OTHER)
    assert keys_a.send != keys_b.receive
    proof = SecretBoxChannel(keys_a.send).encrypt(b"\x02" + bytes(32))
    with pytest.raises(ProtocolError, match="decryption failed"):
        SecretBoxChannel(keys_b.receive).decrypt(proof)


def test_keys_depend_on_both_ephemeral_keys() -> None:
    a, b, c = seeded(1), seeded(2), seeded(3)
    assert derive_session_keys(PASSWORD, a, b.public) != derive_session_keys(PASSWORD, a, c.public)


def test_replay_is_rejected() -> None:
    keys_a, keys_b = pair()
    send, recv = SecretBoxChannel(keys_a.send), SecretBoxChannel(keys_b.receive)
    first = send.encrypt(b"one")
    assert recv.decrypt(first) == b"one"
    with pytest.raises(ProtocolError, match="replayed or reordered"):
        recv.decrypt(first)


def test_reorder_and_drop_are_rejected() -> None:
    keys_a, keys_b = pair()
    send = SecretBoxChannel(keys_a.send)
    m0, m1 = send.encrypt(b"zero"), send.encrypt(b"one")
    with pytest.raises(ProtocolError, match="counter 1, expected 0"):
        SecretBoxChannel(keys_b.receive).decrypt(m1)
    recv = SecretBoxChannel(keys_b.receive)
    assert recv.decrypt(m0) == b"zero"
    assert recv.decrypt(m1) == b"one"


@given(data=st.data())
def test_any_forged_bit_is_rejected(data: st.DataObject) -> None:
    keys_a, keys_b = pair()
    sealed = bytearray(SecretBoxChannel(keys_a.send).encrypt(b"topology update"))
    bit = data.draw(st.integers(min_value=0, max_value=len(sealed) * 8 - 1))
    sealed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ProtocolError):
        SecretBoxChannel(keys_b.receive).decrypt(bytes(sealed))


def test_a_forged_counter_does_not_authenticate() -> None:
    keys_a, keys_b = pair()
    send = SecretBoxChannel(keys_a.send)
    send.encrypt(b"zero")
    m1 = send.encrypt(b"one")
    relabelled = (0).to_bytes(COUNTER_SIZE, "big") + m1[COUNTER_SIZE:]
    with pytest.raises(ProtocolError, match="forged or corrupted"):
        SecretBoxChannel(keys_b.receive).decrypt(relabelled)


def test_truncated_ciphertext_is_a_protocol_error() -> None:
    recv = SecretBoxChannel(pair()[1].receive)
    for n in range(OVERHEAD):
        with pytest.raises(ProtocolError, match="shorter"):
            recv.decrypt(bytes(n))


def test_nonces_never_repeat() -> None:
    keys = pair()[0]
    send = SecretBoxChannel(keys.send)
    box = nacl.secret.SecretBox(keys.send)
    nonces = set()
    for i in range(2000):
        sealed = send.encrypt(b"m%d" % i)
        counter = int.from_bytes(sealed[:COUNTER_SIZE], "big")
        nonce = nonce_for(counter)
        # the nonce really is the one the box was sealed with
        assert box.decrypt(sealed[COUNTER_SIZE:], nonce) == b"m%d" % i
        nonces.add(nonce)
    assert len(nonces) == 2000
    assert send.counter == 2000


def test_counter_exhaustion_is_a_protocol_error() -> None:
    keys_a, keys_b = pair()
    send = SecretBoxChannel(keys_a.send, counter=MAX_COUNTER)
    recv = SecretBoxChannel(keys_b.receive, counter=MAX_COUNTER)
    assert recv.decrypt(send.encrypt(b"last")) == b"last"
    with pytest.raises(ProtocolError, match="exhausted"):
        send.encrypt(b"one too many")
    with pytest.raises(ProtocolError, match="exhausted"):
        recv.decrypt(bytes(OVERHEAD + 1))


def test_weak_or_reflected_public_keys_are_rejected() -> None:
    a = seeded(1)
    with pytest.raises(ProtocolError, match="weak"):
        derive_session_keys(PASSWORD, a, bytes(32))
    with pytest.raises(ProtocolError, match="reflected"):
        derive_session_keys(PASSWORD, a, a.public)
    with pytest.raises(ProtocolError, match="bytes"):
        derive_session_keys(PASSWORD, a, b"short")


def test_transcript_hash_is_the_same_on_both_sides_and_binds_both_hellos() -> None:
    a, b = seeded(1), seeded(2)
    h = transcript_hash(a.public, b"hello a", b.public, b"hello b")
    assert h == transcript_hash(b.public, b"hello b", a.public, b"hello a")
    assert h != transcript_hash(a.public, b"hello A", b.public, b"hello b")
    assert h != transcript_hash(a.public, b"hello a", b.public, b"hello B")
