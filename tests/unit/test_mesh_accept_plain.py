"""Turning encryption on or off in a running cluster: a router with a password and WEAVE_ACCEPT_UNENCRYPTED takes
peers without a password, in plaintext; two routers with passwords still encrypt; without the setting nothing
changes (each refuses the other with a clear reason). The router closes plaintext connections once the setting
goes."""

from __future__ import annotations

import pytest

from tests.unit.test_mesh_protocol import connect, pump
from tests.unit.test_mesh_rotation import NEW, OLD
from weave_node.mesh.hello import Hello, Identity, decode_hello, encode_hello
from weave_node.mesh.protocol import ConnectionFailed, Established, MessageReceived, ProtocolConfig

pytestmark = pytest.mark.unit
PLAIN = ProtocolConfig()
ACCEPTING = ProtocolConfig(password_key=NEW, accept_plaintext=True)
STRICT = ProtocolConfig(password_key=NEW)


@pytest.mark.parametrize(
    ("a", "b", "encrypted"),
    [
        (ACCEPTING, PLAIN, False),
        (PLAIN, ACCEPTING, False),
        (ACCEPTING, ACCEPTING, True),  # both have the password: encrypted, as always
        (ACCEPTING, STRICT, True),
        (ProtocolConfig(password_key=NEW, previous_keys=(OLD,), accept_plaintext=True), PLAIN, False),
    ],
    ids=["accepting|plain", "plain|accepting", "accepting|accepting", "accepting|strict", "rotating|plain"],
)
def test_who_talks_to_whom_while_encryption_is_switched(a: ProtocolConfig, b: ProtocolConfig, encrypted: bool) -> None:
    ca, cb = connect(a, b)
    events_a, events_b = pump(ca, cb, 0.0)
    assert [type(e) for e in events_a + events_b] == [Established, Established]
    assert ca.remote is not None and cb.remote is not None
    assert ca.remote.encrypted is cb.remote.encrypted is encrypted
    assert (ca.sleeve_keys is None) is (cb.sleeve_keys is None) is (not encrypted)
    assert (ca.password_key is None) is (not encrypted)
    ca.send_message(b"hello", 1.0)
    wire = ca.data_to_send()
    assert (b"hello" in wire) is (not encrypted)  # plaintext really is plaintext, and encrypted is not
    assert cb.receive_data(wire, 1.0) == [MessageReceived(b"hello")]


@pytest.mark.parametrize(
    ("a", "b", "reason_a", "reason_b"),
    [
        (STRICT, PLAIN, "peer has no password but we require one", "peer requires encryption, we have no password"),
        (PLAIN, STRICT, "peer requires encryption, we have no password", "peer has no password but we require one"),
    ],
)
def test_without_the_setting_a_password_and_none_still_refuse_each_other(
    a: ProtocolConfig, b: ProtocolConfig, reason_a: str, reason_b: str
) -> None:
    ca, cb = connect(a, b)
    events_a, events_b = pump(ca, cb, 0.0)
    assert events_a == [ConnectionFailed(reason_a)] and events_b == [ConnectionFailed(reason_b)]


def test_the_flag_is_in_the_hello_and_an_old_router_ignores_it() -> None:
    hello = Hello(1, 2, Identity(1, "n", 2), True, bytes(32), frozenset(), accepts_plain=True)
    raw = encode_hello(hello)
    assert decode_hello(raw) == hello
    assert raw[1 + 2 + 2 + 6 + 8] == 0x03  # flags: encrypted | accepts plaintext
    assert decode_hello(raw).encrypted  # bit 0 as before: what 0.1.0 reads


def test_dropping_the_setting_closes_the_plaintext_connections_only() -> None:
    plain, _ = connect(ACCEPTING, PLAIN)
    enc, _peer = connect(ACCEPTING, ACCEPTING)
    pump(plain, _, 0.0)
    pump(enc, _peer, 0.0)
    assert plain.accepted_by(ACCEPTING) and enc.accepted_by(ACCEPTING)
    assert not plain.accepted_by(STRICT) and enc.accepted_by(STRICT)
    assert plain.accepted_by(PLAIN) and not enc.accepted_by(PLAIN)
