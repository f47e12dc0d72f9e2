"""What the mesh needs to know from the operator (pure): small typed values the composition root builds from
the daemon's configuration (`MeshSettings` for the router, `ProtocolConfig` for each of its connections), so that
the mesh depends on no configuration parser (nor on what it imports)."""

from __future__ import annotations

from dataclasses import dataclass

from weave_node.core.address import PeerAddress
from weave_node.core.facts import DEFAULT_MESH_PORT
from weave_node.mesh.crypto import PasswordKey
from weave_node.mesh.framing import HANDSHAKE_MAX_FRAME, HEADER_SIZE, MAX_FRAME
from weave_node.mesh.hello import MAX_FEATURE_BYTES, MAX_FEATURES, MAX_VERSION
from weave_node.mesh.proofs import accepted_keys

DEFAULT_CONN_LIMIT = 100
DEFAULT_GOSSIP_INTERVAL = 10.0


@dataclass(frozen=True)
class MeshSettings:
    port: int = DEFAULT_MESH_PORT
    listen_host: str = "0.0.0.0"  # noqa: S104 - peers connect from other hosts by design
    peers: tuple[PeerAddress, ...] = ()  # whom to dial at start (and keep dialling)
    conn_limit: int = DEFAULT_CONN_LIMIT  # established connections at most
    gossip_interval: float = DEFAULT_GOSSIP_INTERVAL  # seconds between anti-entropy rounds


@dataclass(frozen=True)
class ProtocolConfig:
    """How each mesh connection (protocol.Connection) behaves: passwords, versions, features, timers, limits."""

    password_key: PasswordKey | None = None
    """The primary password: the one offered first, and the only one a version-1 peer is offered."""
    previous_keys: tuple[PasswordKey, ...] = ()
    """Also accepted, not preferred (a rotation in progress); at most 3, duplicates of the primary dropped."""
    accept_plaintext: bool = False
    """With a password: peers without one are taken too, over plaintext (turning encryption on or off in a
    running cluster, WEAVE_ACCEPT_UNENCRYPTED). An active attacker can then also make a connection plaintext."""
    min_version: int = 1
    max_version: int = 2
    features: frozenset[str] = frozenset()
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 15.0
    handshake_timeout: float = 10.0
    max_frame: int = MAX_FRAME

    def __post_init__(self) -> None:
        object.__setattr__(self, "previous_keys", accepted_keys(self.password_key, self.previous_keys)[1:])
        if not 1 <= self.min_version <= self.max_version <= MAX_VERSION:
            raise ValueError(f"bad protocol version range {self.min_version}-{self.max_version}")
        if len(self.features) > MAX_FEATURES:
            raise ValueError(f"at most {MAX_FEATURES} features, not {len(self.features)}")
        for feature in self.features:
            if not (0 < len(feature) <= MAX_FEATURE_BYTES and feature.isascii() and feature.isprintable()):
                raise ValueError(f"a feature is 1-{MAX_FEATURE_BYTES} printable ASCII characters, not {feature!r}")
        if not 0 < self.heartbeat_interval < self.heartbeat_timeout:
            raise ValueError("heartbeat_interval must be positive and shorter than heartbeat_timeout")
        if self.handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")
        if not HANDSHAKE_MAX_FRAME <= self.max_frame < 1 << (8 * HEADER_SIZE):
            raise ValueError(f"max_frame must be in {HANDSHAKE_MAX_FRAME}..{(1 << (8 * HEADER_SIZE)) - 1}")

    @property
    def encryption(self) -> str:
        """For the log: "off", "on", or "on, N previous password(s) accepted" (never a password)."""
        if self.password_key is None:
            return "off"
        notes = [f"{len(self.previous_keys)} previous password(s) accepted"] if self.previous_keys else []
        notes += ["peers without a password accepted"] if self.accept_plaintext else []
        return ", ".join(["on", *notes])

    @property
    def accepted_keys(self) -> tuple[PasswordKey, ...]:
        """Every password accepted, primary first (empty without a password)."""
        return () if self.password_key is None else (self.password_key, *self.previous_keys)
