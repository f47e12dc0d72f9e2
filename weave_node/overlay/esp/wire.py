"""The "esp" channel's messages, unicast between two peers (pure). Version 1:

    OFFER  01 01 session(8) generation(4) spi(4)   "my inbound SA for this connection's keys and this generation
                                                     is in my kernel: send to me with this SPI"
    ACK    01 02 session(8) spi(4)                  "my outbound SA with your SPI is in my kernel and is the one I
                                                     send with": the older inbound SAs may go
    REKEY  01 03 session(8)                         "I have no outbound SA for this connection: offer me one"

Exact lengths, known kinds, SPIs in our block; anything else raises ProtocolError (the message alone is dropped).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from weave_node.datapath.xfrm import SPI_MAX, SPI_MIN
from weave_node.mesh.errors import ProtocolError
from weave_node.overlay.esp.keys import SESSION_ID_BYTES

VERSION = 1
KIND_OFFER = 1
KIND_ACK = 2
KIND_REKEY = 3
_OFFER = struct.Struct(f">BB{SESSION_ID_BYTES}sII")
_ACK = struct.Struct(f">BB{SESSION_ID_BYTES}sI")
_REKEY = struct.Struct(f">BB{SESSION_ID_BYTES}s")


@dataclass(frozen=True)
class Offer:
    session: bytes
    generation: int
    spi: int


@dataclass(frozen=True)
class Ack:
    session: bytes
    spi: int


@dataclass(frozen=True)
class Rekey:
    session: bytes


Message = Offer | Ack | Rekey


def encode(message: Message) -> bytes:
    if isinstance(message, Offer):
        return _OFFER.pack(VERSION, KIND_OFFER, message.session, message.generation, message.spi)
    if isinstance(message, Rekey):
        return _REKEY.pack(VERSION, KIND_REKEY, message.session)
    return _ACK.pack(VERSION, KIND_ACK, message.session, message.spi)


def decode(data: bytes) -> Message:
    if len(data) < 2 or data[0] != VERSION:
        raise ProtocolError(f"esp: not a version {VERSION} message")
    if data[1] == KIND_OFFER and len(data) == _OFFER.size:
        _, _, session, generation, spi = _OFFER.unpack(data)
        message: Offer | Ack = Offer(session, generation, spi)
    elif data[1] == KIND_ACK and len(data) == _ACK.size:
        _, _, session, spi = _ACK.unpack(data)
        message = Ack(session, spi)
    elif data[1] == KIND_REKEY and len(data) == _REKEY.size:
        return Rekey(_REKEY.unpack(data)[2])
    else:
        raise ProtocolError(f"esp: bad message (kind {data[1]}, {len(data)} bytes)")
    if not SPI_MIN <= message.spi <= SPI_MAX:
        raise ProtocolError(f"esp: SPI {message.spi:#x} is outside ours")
    return message
