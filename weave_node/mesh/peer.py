"""Peer identity: 48-bit peer names (shown like MAC addresses), the per-host id they derive from, and UIDs.

A peer *name* is stable across restarts: it is derived from a random per-host id kept in a file (hostid.py
reads and creates it; nothing here does I/O). A peer *UID* is random per process start (`new_uid`): the topology
uses it to tell a restarted peer from its previous incarnation.
"""

from __future__ import annotations

import hashlib
import random

from weave_node.core.errors import ConfigError

PeerName = int
"""A peer name: an int in [0, 2**48)."""

NAME_BITS = 48
NAME_LIMIT = 1 << NAME_BITS
UID_BITS = 64


def format_name(name: PeerName) -> str:
    """`0x0a0b0c0d0e0f` -> `"0a:0b:0c:0d:0e:0f"`. Raises ValueError when `name` is not in [0, 2**48)."""
    if not 0 <= name < NAME_LIMIT:
        raise ValueError(f"peer name out of range: {name}")
    return ":".join(f"{b:02x}" for b in name.to_bytes(6, "big"))


def parse_name(text: str) -> PeerName:
    """`"aa:bb:cc:dd:ee:ff"` (any case) -> int. Raises ConfigError on anything else."""
    octets = text.split(":")
    if len(octets) != 6 or not all(len(o) == 2 and all(c in "0123456789abcdefABCDEF" for c in o) for o in octets):
        raise ConfigError(f"bad peer name {text!r}: expected six hex octets like aa:bb:cc:dd:ee:ff")
    return int("".join(octets), 16)


def name_from_host_id(host_id: bytes) -> PeerName:
    """A stable name from a host id: sha256, first 6 bytes, locally administered and unicast (like a MAC)."""
    digest = bytearray(hashlib.sha256(host_id).digest()[:6])
    digest[0] = (digest[0] | 0x02) & ~0x01 & 0xFF
    return int.from_bytes(digest, "big")


def new_uid(rng: random.Random) -> int:
    """A random nonzero 64-bit UID for this process start."""
    while True:
        uid = rng.getrandbits(UID_BITS)
        if uid:
            return uid
