"""The sans-IO state machine of one mesh connection between two routers (TCP port 6783).

In the style of aioquic's ``connection.py``: no sockets, no asyncio, no threads, no clock. The shell feeds
received bytes to ``receive_data``, writes out ``data_to_send()``, and calls ``tick`` at ``next_deadline()``;
every method takes ``now``. Randomness (the ephemeral key) comes from an injected ``rng``.

Wire format (both sides send their preamble and hello at once, without waiting for the other side, and their
proof, or proof set, as soon as they have the peer's hello)::

    preamble   b"weave-node" + handshake format (1 byte, = 1), unframed, once at the start of the stream
    frame      length (4 bytes, big-endian) + payload; payload <= 4 KiB until established, then max_frame
    payload    tag (1 byte) + body; when a password is set, every payload after the hello (version 1) or after the
               proof set (version >= 2) is sent as counter (8 bytes) + secretbox(tag + body) (see crypto.py)
    0x01 hello      min_version u16, max_version u16, name u48, uid u64, flags u8 (bit 0: encrypted, bit 1:
                    takes peers without a password too, in plaintext), ephemeral X25519 public key (32 bytes, zero
                    without a password), nickname (u8 length + UTF-8), features (u8 count, each u8 length +
                    ASCII); trailing bytes are ignored
    0x02 proof      blake2b hash of both hellos (encrypted: only a peer with the same password can make it);
                    a frame of its own in version 1 only, sealed with the primary password's keys
    0x03 heartbeat  empty body
    0x04 message    opaque application bytes (the router defines them)
    0x05 proof set  version >= 2 with a password, instead of the proof; unencrypted: count u8 (1-4), then per
                    accepted password, primary first: u16 length + (a proof frame's payload + its position u8 +
                    the count u8) sealed with that password's keys (counter 0). Both ends pick the same common
                    password (proofs.py) and go on with its keys from counter 1. Rotation needs version 2: a
                    version-1 peer gets the primary's proof only.

Any bad input closes the connection with a ``ConnectionFailed`` event; ``receive_data`` never raises.
"""

from __future__ import annotations

import enum
import secrets
from typing import Literal

from weave_node.mesh.crypto import (
    OVERHEAD,
    EphemeralKey,
    PasswordKey,
    Rng,
    SecretBoxChannel,
    SessionKeys,
    transcript_hash,
)
from weave_node.mesh.errors import ProtocolError
from weave_node.mesh.events import ConnectionFailed, Established, Event, MessageReceived, RemoteInfo
from weave_node.mesh.framing import HANDSHAKE_MAX_FRAME, FrameDecoder, encode_frame
from weave_node.mesh.hello import (
    NO_PUBLIC_KEY,
    TAG_HEARTBEAT,
    TAG_HELLO,
    TAG_MESSAGE,
    TAG_PROOF,
    TAG_PROOF_SET,
    Hello,
    Identity,
    decode_hello,
    encode_hello,
)
from weave_node.mesh.proofs import ProofExchange
from weave_node.mesh.settings import ProtocolConfig

__all__ = [  # (Identity, the tags, the hello codec: hello.py; ProtocolConfig: settings.py; callers know them here)
    "HANDSHAKE_FORMAT", "MAGIC", "OURSELF", "PREAMBLE", "TAG_HEARTBEAT", "TAG_HELLO", "TAG_MESSAGE", "TAG_PROOF",
    "TAG_PROOF_SET", "Connection", "ConnectionFailed", "Established", "Event", "Hello", "Identity", "MessageReceived",
    "ProtocolConfig", "RemoteInfo", "State", "decode_hello", "encode_hello",
]  # fmt: skip

MAGIC = b"weave-node"
HANDSHAKE_FORMAT = 1
PREAMBLE = MAGIC + bytes([HANDSHAKE_FORMAT])
OURSELF = "connection to ourself"  # the failure of a dial that reached this very router


State = Literal["handshake", "established", "closed"]


class _Phase(enum.Enum):
    AWAIT_HELLO = enum.auto()
    AWAIT_PROOF = enum.auto()  # encrypted only: hellos exchanged, the peer's proof (or proof set) not yet checked
    ESTABLISHED = enum.auto()
    CLOSED = enum.auto()


class Connection:
    """One mesh connection, from the first byte to close. See the module docstring for the wire format."""

    def __init__(
        self, local: Identity, config: ProtocolConfig, *, outbound: bool, now: float, rng: Rng = secrets.token_bytes
    ) -> None:
        self._local = local
        self._config = config
        self._outbound = outbound
        self._phase = _Phase.AWAIT_HELLO
        self._started = now
        self._last_received = now
        self._last_sent = now
        self._preamble_seen = bytearray()
        self._decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
        self._out = bytearray()
        self._ephemeral = EphemeralKey.generate(rng) if config.password_key is not None else None
        self._send_channel: SecretBoxChannel | None = None
        self._recv_channel: SecretBoxChannel | None = None
        self._proofs: ProofExchange | None = None  # encrypted, from the peer's hello to its proof
        self._password_key: PasswordKey | None = None
        self._sleeve_keys: SessionKeys | None = None
        self._negotiated: RemoteInfo | None = None
        self._remote: RemoteInfo | None = None
        self._close_reason: str | None = None
        self._pending: list[Event] = []  # a failure found outside receive_data/tick, reported by the next call
        self._pending_since = now
        self._hello = encode_hello(
            Hello(
                min_version=config.min_version,
                max_version=config.max_version,
                identity=local,
                encrypted=self._ephemeral is not None,
                public_key=self._ephemeral.public if self._ephemeral is not None else NO_PUBLIC_KEY,
                features=config.features,
                accepts_plain=config.accept_plaintext and config.password_key is not None,
            )
        )
        self._out += PREAMBLE
        self._out += encode_frame(self._hello, HANDSHAKE_MAX_FRAME)

    # -- public state -------------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        if self._phase is _Phase.ESTABLISHED:
            return "established"
        if self._phase is _Phase.CLOSED:
            return "closed"
        return "handshake"

    @property
    def remote(self) -> RemoteInfo | None:
        """What the peer told us, once established (kept after close)."""
        return self._remote

    @property
    def sleeve_keys(self) -> SessionKeys | None:
        """Keys for this connection's sleeve datagrams (encrypted connections, once established); None otherwise."""
        return self._sleeve_keys if self._phase is _Phase.ESTABLISHED else None

    @property
    def password_key(self) -> PasswordKey | None:
        """The password this connection uses, once established (kept after close); None for a plaintext one."""
        return self._password_key if self._remote is not None else None

    @property
    def config(self) -> ProtocolConfig:
        """The settings this connection was made with."""
        return self._config

    def accepted_by(self, config: ProtocolConfig) -> bool:
        """Whether ``config`` accepts this connection's password: the one in use once established, or every one
        it may still settle on while in its handshake. A plaintext connection: whether ``config`` has no password
        or accepts peers without one."""
        accepted = config.accepted_keys
        plain_ok = not accepted or config.accept_plaintext
        if self._remote is not None:
            return self._password_key in accepted if self._password_key is not None else plain_ok
        own = self._config.accepted_keys
        if self._config.accept_plaintext and own and not config.accept_plaintext:
            return False  # it may still settle on plaintext
        return bool(own) == bool(accepted) and set(own) <= set(accepted)

    @property
    def outbound(self) -> bool:
        return self._outbound

    @property
    def local(self) -> Identity:
        return self._local

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    @property
    def max_message_size(self) -> int:
        """Largest payload ``send_message`` accepts."""
        overhead = 1 + (OVERHEAD if self._config.password_key is not None else 0)
        return self._config.max_frame - overhead

    @property
    def buffered_input(self) -> int:
        """Received bytes held for an incomplete frame (at most the frame limit + header)."""
        return len(self._preamble_seen) if len(self._preamble_seen) < len(PREAMBLE) else self._decoder.buffered

    # -- the shell's entry points ---------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        events = self._take_pending()
        if self._phase is _Phase.CLOSED:
            return events
        if data:
            self._last_received = now
        try:
            rest = self._consume_preamble(data)
            for frame in self._decoder.frames(rest):
                self._handle_frame(frame, now, events)
        except ProtocolError as exc:
            self._fail(str(exc), events)
        return events

    def send_message(self, payload: bytes, now: float) -> None:
        if self._phase is not _Phase.ESTABLISHED:
            raise RuntimeError(f"cannot send a message: the connection is {self.state}")
        if len(payload) > self.max_message_size:
            raise ValueError(f"message of {len(payload)} bytes exceeds the limit of {self.max_message_size}")
        try:
            self._send(TAG_MESSAGE, payload, now)
        except ProtocolError as exc:  # counter exhausted: report it from the next tick
            self._pending_since = now
            self._fail(str(exc), self._pending)

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def tick(self, now: float) -> list[Event]:
        events = self._take_pending()
        if self._phase is _Phase.CLOSED:
            return events
        try:
            if self._phase is not _Phase.ESTABLISHED:
                if now >= self._started + self._config.handshake_timeout:
                    timeout = float(self._config.handshake_timeout)
                    self._fail(f"handshake timeout: not completed within {timeout} s", events)
            elif now >= self._last_received + self._config.heartbeat_timeout:
                self._fail(f"heartbeat timeout: nothing received for {now - self._last_received:.1f} s", events)
            elif now >= self._last_sent + self._config.heartbeat_interval:
                self._send(TAG_HEARTBEAT, b"", now)
        except ProtocolError as exc:
            self._fail(str(exc), events)
        return events

    def next_deadline(self) -> float | None:
        if self._pending:
            return self._pending_since
        if self._phase is _Phase.CLOSED:
            return None
        if self._phase is not _Phase.ESTABLISHED:
            return self._started + self._config.handshake_timeout
        return min(
            self._last_sent + self._config.heartbeat_interval,
            self._last_received + self._config.heartbeat_timeout,
        )

    def close(self, reason: str) -> None:
        """Close locally (no event: the caller knows). Idempotent."""
        if self._phase is not _Phase.CLOSED:
            self._close(reason)

    # -- internals ---------------------------------------------------------------------------------------------

    def _take_pending(self) -> list[Event]:
        events, self._pending = self._pending, []
        return events

    def _close(self, reason: str) -> None:
        self._phase = _Phase.CLOSED
        self._close_reason = reason
        self._out.clear()
        self._send_channel = self._recv_channel = None
        self._ephemeral = None
        self._proofs = None

    def _fail(self, reason: str, events: list[Event]) -> None:
        # A proof queued before the frame that failed the handshake still goes (the shell flushes before it
        # closes): when the peer's hello and proof arrive in one read, the peer must still get ours and learn
        # why the handshake failed on its side too. Nothing else is ever sent after a failure.
        keep = bytes(self._out) if self._phase is _Phase.AWAIT_PROOF else b""
        self._close(reason)
        self._out += keep
        events.append(ConnectionFailed(reason))

    def _consume_preamble(self, data: bytes) -> bytes:
        seen = len(self._preamble_seen)
        if seen >= len(PREAMBLE):
            return data
        take = min(len(PREAMBLE) - seen, len(data))
        self._preamble_seen += data[:take]
        got = bytes(self._preamble_seen)
        if got != PREAMBLE[: len(got)]:
            if got[: len(MAGIC)] != MAGIC[: min(len(got), len(MAGIC))]:
                raise ProtocolError(f"not a weave-node peer: the stream starts with {got!r}")
            raise ProtocolError(f"unsupported handshake format {got[len(MAGIC)]} (we speak {HANDSHAKE_FORMAT})")
        return data[take:]

    def _send(self, tag: int, body: bytes, now: float) -> None:
        plaintext = bytes([tag]) + body
        payload = self._send_channel.encrypt(plaintext) if self._send_channel is not None else plaintext
        self._out += encode_frame(payload, self._config.max_frame)
        self._last_sent = now

    def _handle_frame(self, frame: bytes, now: float, events: list[Event]) -> None:
        if self._phase is _Phase.AWAIT_HELLO:
            self._on_hello(frame, now, events)
            return
        if self._phase is _Phase.AWAIT_PROOF:
            if self._proofs is None or self._negotiated is None:
                raise RuntimeError("awaiting a proof without a handshake in progress")  # unreachable
            chosen = self._proofs.check(frame)
            self._proofs = None
            self._password_key, self._sleeve_keys = chosen.key, chosen.sleeve_keys
            self._send_channel, self._recv_channel = chosen.send, chosen.receive
            self._establish(self._negotiated, events)
            return
        plaintext = self._recv_channel.decrypt(frame) if self._recv_channel is not None else frame
        if not plaintext:
            raise ProtocolError("empty frame")
        tag, body = plaintext[0], plaintext[1:]
        if tag == TAG_MESSAGE:
            events.append(MessageReceived(body))
        elif tag == TAG_HEARTBEAT:
            pass  # its arrival already counted as "received"
        elif tag in (TAG_HELLO, TAG_PROOF, TAG_PROOF_SET):
            raise ProtocolError(f"unexpected handshake frame (type 0x{tag:02x}) after the handshake")
        else:
            raise ProtocolError(f"unknown frame type 0x{tag:02x}")

    def _on_hello(self, frame: bytes, now: float, events: list[Event]) -> None:
        hello = decode_hello(frame)
        if hello.identity.name == self._local.name:
            if hello.identity.uid == self._local.uid:
                raise ProtocolError(OURSELF)
            # Another router with our name: a copied state directory (or a machine-id baked into an image).
            raise ProtocolError(
                f"a peer uses this router's own name ({hello.identity.nickname or '?'}): a copied state directory?"
            )
        config = self._config
        low, high = max(config.min_version, hello.min_version), min(config.max_version, hello.max_version)
        if low > high:
            raise ProtocolError(
                f"no common protocol version: we speak {config.min_version}-{config.max_version}, "
                f"peer speaks {hello.min_version}-{hello.max_version}"
            )
        if config.password_key is not None and not hello.encrypted and not config.accept_plaintext:
            raise ProtocolError("peer has no password but we require one")
        if config.password_key is None and hello.encrypted and not hello.accepts_plain:
            raise ProtocolError("peer requires encryption, we have no password")
        # Both with a password: encrypted. One without: plaintext, when the one with accepts it (a switch of
        # encryption on or off in a running cluster: WEAVE_ACCEPT_UNENCRYPTED).
        encrypted = config.password_key is not None and hello.encrypted
        self._negotiated = RemoteInfo(
            identity=hello.identity,
            version=high,
            features=config.features & hello.features,
            encrypted=encrypted,
            peer_password=hello.encrypted,
        )
        if not encrypted or self._ephemeral is None:
            self._establish(self._negotiated, events)
            return
        transcript = transcript_hash(self._ephemeral.public, self._hello, hello.public_key, frame)
        self._proofs = ProofExchange(
            config.accepted_keys,
            high,
            own=self._ephemeral,
            peer_public=hello.public_key,
            transcript=transcript,
            names=(self._local.name, hello.identity.name),
        )
        self._ephemeral = None  # the private key is not needed any more
        self._phase = _Phase.AWAIT_PROOF
        self._out += encode_frame(self._proofs.proof(), HANDSHAKE_MAX_FRAME)  # (sealed already, or a proof set)
        self._last_sent = now

    def _establish(self, remote: RemoteInfo, events: list[Event]) -> None:
        self._phase = _Phase.ESTABLISHED
        self._decoder.max_frame = self._config.max_frame  # from the next frame on
        self._remote = remote
        events.append(Established(remote))
