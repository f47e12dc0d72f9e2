"""The handshake's hello (pure): who a router is (`Identity`), and the hello frame's codec (format in
protocol.py's docstring). Decoding raises only ProtocolError."""

from __future__ import annotations

from dataclasses import dataclass

from weave_node.mesh.crypto import PUBLIC_KEY_SIZE
from weave_node.mesh.errors import ProtocolError

TAG_HELLO = 0x01
TAG_PROOF = 0x02
TAG_HEARTBEAT = 0x03
TAG_MESSAGE = 0x04
TAG_PROOF_SET = 0x05

MAX_NAME = (1 << 48) - 1
MAX_UID = (1 << 64) - 1
MAX_VERSION = 0xFFFF
MAX_NICKNAME_BYTES = 255
MAX_FEATURES = 32
MAX_FEATURE_BYTES = 64
FLAG_ENCRYPTED = 0x01
FLAG_ACCEPTS_PLAIN = 0x02  # has a password but takes peers without one (turning encryption on or off)
NO_PUBLIC_KEY = bytes(PUBLIC_KEY_SIZE)


@dataclass(frozen=True)
class Identity:
    name: int
    """48-bit peer name (Weave's PeerName, usually derived from a MAC address)."""
    nickname: str
    uid: int
    """64-bit random id of this router process (tells a restarted peer from the old one)."""

    def __post_init__(self) -> None:
        if not 0 <= self.name <= MAX_NAME:
            raise ValueError(f"peer name must be a 48-bit number, not {self.name}")
        if not 0 <= self.uid <= MAX_UID:
            raise ValueError(f"peer uid must be a 64-bit number, not {self.uid}")
        if len(self.nickname.encode()) > MAX_NICKNAME_BYTES:
            raise ValueError(f"nickname longer than {MAX_NICKNAME_BYTES} bytes: {self.nickname[:40]!r}...")


@dataclass(frozen=True)
class Hello:
    min_version: int
    max_version: int
    identity: Identity
    encrypted: bool
    public_key: bytes
    features: frozenset[str]
    accepts_plain: bool = False


class _Reader:
    """Bounds-checked reads; running off the end is a ProtocolError."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise ProtocolError(f"truncated {self._what}")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def text(self, what: str, *, ascii_only: bool = False) -> str:
        raw = self.take(self.uint(1))
        try:
            return raw.decode("ascii" if ascii_only else "utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} in {self._what} is not valid {'ASCII' if ascii_only else 'UTF-8'}") from None


def encode_hello(hello: Hello) -> bytes:
    """The hello frame payload (tag included)."""
    nickname = hello.identity.nickname.encode()
    features = sorted(hello.features)
    parts = [
        bytes([TAG_HELLO]),
        hello.min_version.to_bytes(2, "big"),
        hello.max_version.to_bytes(2, "big"),
        hello.identity.name.to_bytes(6, "big"),
        hello.identity.uid.to_bytes(8, "big"),
        bytes([(FLAG_ENCRYPTED if hello.encrypted else 0) | (FLAG_ACCEPTS_PLAIN if hello.accepts_plain else 0)]),
        hello.public_key,
        bytes([len(nickname)]),
        nickname,
        bytes([len(features)]),
    ]
    for feature in features:
        raw = feature.encode("ascii")
        parts += [bytes([len(raw)]), raw]
    return b"".join(parts)


def decode_hello(payload: bytes) -> Hello:
    """Parse a hello frame payload (tag included). ProtocolError on anything malformed."""
    reader = _Reader(payload, "hello")
    tag = reader.uint(1)
    if tag != TAG_HELLO:
        raise ProtocolError(f"expected a hello, got frame type 0x{tag:02x}")
    min_version = reader.uint(2)
    max_version = reader.uint(2)
    name = reader.uint(6)
    uid = reader.uint(8)
    flags = reader.uint(1)
    public_key = reader.take(PUBLIC_KEY_SIZE)
    nickname = reader.text("nickname")
    features = frozenset(reader.text("feature", ascii_only=True) for _ in range(reader.uint(1)))
    if not 1 <= min_version <= max_version:
        raise ProtocolError(f"peer sent a bad protocol version range {min_version}-{max_version}")
    # Trailing bytes are ignored on purpose: room for fields a later release adds within this handshake format.
    return Hello(
        min_version=min_version,
        max_version=max_version,
        identity=Identity(name=name, nickname=nickname, uid=uid),
        encrypted=bool(flags & FLAG_ENCRYPTED),
        public_key=public_key,
        features=features,
        accepts_plain=bool(flags & FLAG_ACCEPTS_PLAIN),
    )
