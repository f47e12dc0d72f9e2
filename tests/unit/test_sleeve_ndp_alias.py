"""The sleeve's host-MAC alias for IPv6: our bridge's neighbour solicitations and advertisements leave through
the sleeve with the alias in their link-layer address option, and a checksum that still verifies."""

from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from weave_node.overlay.sleeve.codec import VNET_HDR_SIZE
from weave_node.overlay.sleeve.forwarder import _to_alias, checksum_replace

OWN = bytes.fromhex("02aabbccddee")
ALIAS = bytes.fromhex("00aabbccddee")
SRC = socket.inet_pton(socket.AF_INET6, "fd32:57::1")
DST = socket.inet_pton(socket.AF_INET6, "fd32:57::9")


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(icmp_type: int, options: bytes, body: bytes = b"") -> bytearray:
    icmp = bytes([icmp_type, 0, 0, 0]) + struct.pack("!I", 0x60000000) + DST + options + body
    pseudo = SRC + DST + struct.pack("!I", len(icmp)) + b"\0\0\0\x3a"
    icmp = icmp[:2] + struct.pack("!H", _checksum(pseudo + icmp)) + icmp[4:]
    ip6 = struct.pack("!IHBB", 0x60000000, len(icmp), 58, 255) + SRC + DST
    eth = bytes.fromhex("333300000001") + OWN + b"\x86\xdd"
    return bytearray(bytes(VNET_HDR_SIZE) + eth + ip6 + icmp)


def _verifies(frame: bytearray) -> bool:
    icmp = bytes(frame[VNET_HDR_SIZE + 54 :])
    pseudo = SRC + DST + struct.pack("!I", len(icmp)) + b"\0\0\0\x3a"
    return _checksum(pseudo + icmp) == 0


def test_an_advertisement_and_a_solicitation_carry_the_alias_and_still_verify() -> None:
    for icmp_type, option in ((136, 2), (135, 1)):
        frame = _frame(icmp_type, bytes([option, 1]) + OWN)
        assert _verifies(frame)
        _to_alias(memoryview(frame), OWN, ALIAS)
        assert frame[VNET_HDR_SIZE + 6 : VNET_HDR_SIZE + 12] == ALIAS  # the Ethernet source
        assert frame[-6:] == ALIAS and _verifies(frame)


def test_other_options_and_other_messages_are_left_as_they_are() -> None:
    other = bytes.fromhex("0255aa55aa55")
    frame = _frame(136, bytes([2, 1]) + other)
    before = bytes(frame[VNET_HDR_SIZE + 14 :])
    _to_alias(memoryview(frame), OWN, ALIAS)
    assert bytes(frame[VNET_HDR_SIZE + 14 :]) == before  # a pod's MAC, not ours
    echo = _frame(128, b"", OWN * 3)  # an echo request that happens to hold our MAC
    before = bytes(echo[VNET_HDR_SIZE + 14 :])
    _to_alias(memoryview(echo), OWN, ALIAS)
    assert bytes(echo[VNET_HDR_SIZE + 14 :]) == before
    padded = _frame(136, b"") + bytearray(bytes([2, 1]) + OWN)  # bytes after the IPv6 payload are not options
    _to_alias(memoryview(padded), OWN, ALIAS)
    assert padded[-6:] == OWN and _verifies(padded[:-8])
    broken = _frame(136, bytes([2, 0]) + OWN)  # a zero-length option: left alone, no endless loop
    _to_alias(memoryview(broken), OWN, ALIAS)
    assert broken[-6:] == OWN


@given(st.binary(min_size=2, max_size=40).filter(lambda b: len(b) % 2 == 0), st.data())
def test_the_incremental_checksum_equals_a_full_one(data: bytes, draw: st.DataObject) -> None:
    at = draw.draw(st.integers(0, (len(data) - 2) // 2)) * 2
    new = draw.draw(st.binary(min_size=2, max_size=2))
    changed = data[:at] + new + data[at + 2 :]
    got, want = checksum_replace(_checksum(data), data[at : at + 2], new), _checksum(changed)
    assert got == want or {got, want} == {0, 0xFFFF}  # (one's complement has two zeros)
