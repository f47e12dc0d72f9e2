"""WireGuard's keys and addresses (pure).

- Each router has a static Curve25519 key pair for its `weave-wg` device, made at its first start and kept in the
  kernel's device across restarts (the kernel gives it back to root only). Its public key is sent to each peer over
  the mesh connection ("wireguard" channel): the mesh's password-authenticated handshake vouches for it.
- Each pair's preshared key comes from the connection's session keys (label b"wireguard"), never from the password
  alone: a host without the password has no connection, so no preshared key, so no WireGuard handshake succeeds.
- Each host's address inside the tunnel is a ULA that embeds its 48-bit peer name: unique without any allocation.
"""

from __future__ import annotations

import ipaddress

import nacl.bindings
import nacl.encoding
import nacl.hash
import nacl.utils

from weave_node.mesh.crypto import SessionKeys, subkeys

KEY_BYTES = 32
SESSION_ID_BYTES = 8
PREFIX = ipaddress.IPv6Network("fd57:6561:7665::/64")  # ours: "Weave" in a ULA, one /64 for every host
_PERSON = b"weave-node-wg1"


def address(name: int) -> str:
    """A peer's address inside the tunnels: the prefix and its 48-bit name."""
    return str(PREFIX.network_address + name)


def name_of(addr: str) -> int | None:
    """The peer name in one of our tunnel addresses, or None."""
    try:
        offset = int(ipaddress.IPv6Address(addr)) - int(PREFIX.network_address)
    except ValueError:
        return None
    return offset if 0 <= offset < 1 << 48 else None


def in_tunnel(addr: str) -> bool:
    """One of our tunnel addresses?"""
    return name_of(addr) is not None


def new_private_key() -> bytes:
    """A Curve25519 private key (the kernel clamps it, as X25519 does)."""
    return nacl.utils.random(KEY_BYTES)


def public_key(private: bytes) -> bytes:
    return bytes(nacl.bindings.crypto_scalarmult_base(private))


def wg_keys(sleeve_keys: SessionKeys) -> SessionKeys:
    return subkeys(sleeve_keys, b"wireguard")


def preshared_key(keys: SessionKeys) -> bytes:
    """The same on both ends of a connection (its two direction keys, in order of their bytes)."""
    lo, hi = sorted((keys.send, keys.receive))
    return _hash(b"wg-psk" + lo + hi, KEY_BYTES)


def session_id(keys: SessionKeys) -> bytes:
    """Names a connection's keys without revealing them (a message is acted on only with the keys it was for)."""
    lo, hi = sorted((keys.send, keys.receive))
    return _hash(b"wg-id" + lo + hi, SESSION_ID_BYTES)


def _hash(data: bytes, size: int) -> bytes:
    return nacl.hash.blake2b(data, digest_size=size, person=_PERSON, encoder=nacl.encoding.RawEncoder)
