"""ESP keys from a mesh connection's session keys (pure). Never the password: each connection's X25519 handshake
gives two direction keys (mesh/crypto.py); the sleeve's keys are derived from them, ours from the sleeve's
with the label b"esp", and each SA's key from its direction's key and its generation:

    sa_key(direction key, generation, spi) = blake2b(b"esp-sa" || generation || spi, key=direction key, 36 bytes)

A rekey is a new generation: a fresh key without a new handshake. The SPI (the receiver's random pick) is in it
too, so an SA made again for the same generation (its peer entry started over) never has an earlier SA's key.
Both ends compute the same key for a direction (our send key is the peer's receive key). `session_id` names a
connection's keys without revealing them, so a message about an SA is only acted on with the keys it was meant
for.
"""

from __future__ import annotations

import nacl.encoding
import nacl.hash

from weave_node.datapath.xfrm import KEY_BYTES
from weave_node.mesh.crypto import SessionKeys, subkeys

SESSION_ID_BYTES = 8
_PERSON = b"weave-node-esp1"


def esp_keys(sleeve_keys: SessionKeys) -> SessionKeys:
    return subkeys(sleeve_keys, b"esp")


def sa_key(direction_key: bytes, generation: int, spi: int) -> bytes:
    return nacl.hash.blake2b(
        b"esp-sa" + generation.to_bytes(8, "big") + spi.to_bytes(4, "big"),
        digest_size=KEY_BYTES,
        key=direction_key,
        person=_PERSON,
        encoder=nacl.encoding.RawEncoder,
    )


def session_id(keys: SessionKeys) -> bytes:
    """The same on both ends of a connection (the two direction keys, in order of their bytes)."""
    lo, hi = sorted((keys.send, keys.receive))
    return nacl.hash.blake2b(
        b"esp-id" + lo + hi, digest_size=SESSION_ID_BYTES, person=_PERSON, encoder=nacl.encoding.RawEncoder
    )
