"""The "wireguard" channel's one message, unicast between two peers (pure). Version 1:

    KEY  01 01 flags(1) session(8) public key(32)   "this is my WireGuard public key for the connection with these
                                                     keys"; flag 1: "send me yours" (the sender lacks it)

Exact length, a known kind and flags; anything else raises ProtocolError (the message alone is dropped).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from weave_node.mesh.errors import ProtocolError
from weave_node.overlay.wireguard.keys import KEY_BYTES, SESSION_ID_BYTES

VERSION = 1
KIND_KEY = 1
FLAG_REPLY = 1
_KEY = struct.Struct(f">BBB{SESSION_ID_BYTES}s{KEY_BYTES}s")


@dataclass(frozen=True)
class Key:
    session: bytes
    public_key: bytes
    reply: bool  # the sender asks for ours


def encode(message: Key) -> bytes:
    return _KEY.pack(VERSION, KIND_KEY, FLAG_REPLY if message.reply else 0, message.session, message.public_key)


def decode(data: bytes) -> Key:
    if len(data) != _KEY.size or data[0] != VERSION or data[1] != KIND_KEY:
        raise ProtocolError(f"wireguard: not a version {VERSION} KEY message ({len(data)} bytes)")
    _, _, flags, session, key = _KEY.unpack(data)
    if flags & ~FLAG_REPLY:
        raise ProtocolError(f"wireguard: unknown flags {flags:#x}")
    if key == bytes(KEY_BYTES):
        raise ProtocolError("wireguard: an all-zero public key")
    return Key(session, key, bool(flags & FLAG_REPLY))
