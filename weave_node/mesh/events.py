"""What a mesh connection's state machine (protocol.py) reports to its shell: the events of one connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from weave_node.mesh.hello import Identity


@dataclass(frozen=True)
class RemoteInfo:
    identity: Identity
    version: int
    features: frozenset[str]
    encrypted: bool
    peer_password: bool = False  # the peer has one (its hello said so), whether or not this connection is encrypted


@dataclass(frozen=True)
class Established:
    remote: RemoteInfo


@dataclass(frozen=True)
class MessageReceived:
    payload: bytes


@dataclass(frozen=True)
class ConnectionFailed:
    reason: str


Event: TypeAlias = Established | MessageReceived | ConnectionFailed
