"""Password-authenticated session keys and per-direction secretbox channels for the mesh connection. Pure.

Key schedule (one TCP connection):

    password_key = argon2id(password, fixed salt)                       # once per router (PasswordKey)
    shared       = X25519(own ephemeral private, peer ephemeral public)  # fresh keys per connection
    lo, hi       = the two ephemeral public keys, sorted
    key(label)   = blake2b(shared || lo || hi || label, key=password_key, person="weave-node-kdf1")
                   label "lo->hi" encrypts what the side holding ``lo`` sends, "hi->lo" the other direction

Both sides derive the same two keys only if they share the password; the first encrypted frame (the proof, a
hash of both hellos) fails to decrypt otherwise.
Randomness comes from an injected ``rng`` (default secrets.token_bytes).
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.pwhash.argon2id
import nacl.secret

from weave_node.mesh.errors import ProtocolError

Rng = Callable[[int], bytes]

KEY_SIZE = 32
PUBLIC_KEY_SIZE = 32
COUNTER_SIZE = 8
MAC_SIZE = nacl.secret.SecretBox.MACBYTES
OVERHEAD = COUNTER_SIZE + MAC_SIZE
"""Bytes an encrypted frame adds to its plaintext: the 64-bit counter and the Poly1305 tag."""
MAX_COUNTER = (1 << (8 * COUNTER_SIZE)) - 1
TRANSCRIPT_HASH_SIZE = 32

_PERSON_KDF = b"weave-node-kdf1"
_PERSON_TRANSCRIPT = b"weave-node-hs1"
_PERSON_SUB = b"weave-node-sub1"
_PASSWORD_SALT = nacl.hash.blake2b(
    b"weave-node mesh password", digest_size=nacl.pwhash.argon2id.SALTBYTES, encoder=nacl.encoding.RawEncoder
)
_NONCE_PREFIX = bytes(nacl.secret.SecretBox.NONCE_SIZE - COUNTER_SIZE)


@functools.lru_cache(maxsize=8)
def _derive_password_key(password: bytes) -> bytes:
    # argon2id "interactive" (~50 ms, 64 MiB): paid once per router, never per connection. The salt is fixed
    # because every router of a network must derive the same key from the same password.
    return nacl.pwhash.argon2id.kdf(
        KEY_SIZE,
        password,
        _PASSWORD_SALT,
        opslimit=nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
        memlimit=nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE,
    )


@dataclass(frozen=True)
class PasswordKey:
    """The network password stretched into a 32-byte key. Build it once at startup with ``from_password``."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_SIZE:
            raise ValueError(f"a password key is {KEY_SIZE} bytes, not {len(self.key)}")

    @classmethod
    def from_password(cls, password: bytes) -> PasswordKey:
        """argon2id of the password (slow on purpose; cached, so a second call with the same password is free)."""
        if not password:
            raise ValueError("the password must not be empty")
        return cls(_derive_password_key(bytes(password)))


@dataclass(frozen=True)
class EphemeralKey:
    """An X25519 key pair used for one connection only."""

    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls, rng: Rng = secrets.token_bytes) -> EphemeralKey:
        private = rng(KEY_SIZE)
        if len(private) != KEY_SIZE:
            raise ValueError(f"rng returned {len(private)} bytes, asked for {KEY_SIZE}")
        return cls(private, nacl.bindings.crypto_scalarmult_base(private))


@dataclass(frozen=True)
class SessionKeys:
    send: bytes = field(repr=False)
    receive: bytes = field(repr=False)


def _kdf(password_key: PasswordKey, material: bytes, label: bytes) -> bytes:
    return nacl.hash.blake2b(
        material + label,
        digest_size=KEY_SIZE,
        key=password_key.key,
        person=_PERSON_KDF,
        encoder=nacl.encoding.RawEncoder,
    )


def derive_session_keys(password_key: PasswordKey, own: EphemeralKey, peer_public: bytes) -> SessionKeys:
    """The two per-direction keys of a connection. ProtocolError if the peer's public key is unusable."""
    if len(peer_public) != PUBLIC_KEY_SIZE:
        raise ProtocolError(f"peer sent an ephemeral public key of {len(peer_public)} bytes")
    if hmac.compare_digest(peer_public, own.public):
        # Equal keys would make the two directions' keys equal: a reflected handshake.
        raise ProtocolError("peer sent our own ephemeral public key back (reflected handshake)")
    try:
        shared = nacl.bindings.crypto_scalarmult(own.private, peer_public)
    except nacl.exceptions.CryptoError:  # libsodium refuses low-order points (all-zero shared secret)
        raise ProtocolError("peer sent a weak ephemeral public key") from None
    lo, hi = sorted((own.public, peer_public))
    material = shared + lo + hi
    lo_to_hi = _kdf(password_key, material, b"lo->hi")
    hi_to_lo = _kdf(password_key, material, b"hi->lo")
    if own.public == lo:
        return SessionKeys(send=lo_to_hi, receive=hi_to_lo)
    return SessionKeys(send=hi_to_lo, receive=lo_to_hi)


def subkeys(keys: SessionKeys, label: bytes) -> SessionKeys:
    """Independent keys for another use of the same connection (e.g. label b"sleeve" for the UDP datapath), so
    no (key, nonce) pair is ever shared with the TCP channel: blake2b(label, key=direction key)."""
    return SessionKeys(send=_subkey(keys.send, label), receive=_subkey(keys.receive, label))


def _subkey(key: bytes, label: bytes) -> bytes:
    return nacl.hash.blake2b(label, digest_size=KEY_SIZE, key=key, person=_PERSON_SUB, encoder=nacl.encoding.RawEncoder)


def transcript_hash(own_public: bytes, own_hello: bytes, peer_public: bytes, peer_hello: bytes) -> bytes:
    """Hash of both hellos in a canonical order (the side with the lower public key first): what proofs carry."""
    pairs = sorted(((own_public, own_hello), (peer_public, peer_hello)))
    data = b"".join(len(hello).to_bytes(4, "big") + hello for _, hello in pairs)
    return nacl.hash.blake2b(
        data, digest_size=TRANSCRIPT_HASH_SIZE, person=_PERSON_TRANSCRIPT, encoder=nacl.encoding.RawEncoder
    )


def nonce_for(counter: int) -> bytes:
    """The 24-byte secretbox nonce of message number ``counter`` (keys are per direction, so no prefix)."""
    return _NONCE_PREFIX + counter.to_bytes(COUNTER_SIZE, "big")


class SecretBoxChannel:
    """One direction of an encrypted connection: ``counter(8, big-endian) || secretbox(plaintext)``.

    The counter is the nonce: it starts at 0 and grows by one per message, so a nonce is never reused under a
    key. The receiver accepts exactly the next counter (a replayed, dropped or reordered message is an error).
    """

    def __init__(self, key: bytes, *, counter: int = 0) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"a channel key is {KEY_SIZE} bytes, not {len(key)}")
        if not 0 <= counter <= MAX_COUNTER + 1:
            raise ValueError(f"counter out of range: {counter}")
        self._box = nacl.secret.SecretBox(key)
        self._counter = counter

    @property
    def counter(self) -> int:
        """The counter of the next message to encrypt (or expected to decrypt)."""
        return self._counter

    def encrypt(self, plaintext: bytes) -> bytes:
        counter = self._counter
        if counter > MAX_COUNTER:
            raise ProtocolError("message counter exhausted: the connection must be re-established")
        self._counter = counter + 1
        sealed = self._box.encrypt(plaintext, nonce_for(counter))
        return counter.to_bytes(COUNTER_SIZE, "big") + sealed.ciphertext

    def decrypt(self, data: bytes) -> bytes:
        if len(data) < OVERHEAD:
            raise ProtocolError(f"encrypted frame of {len(data)} bytes is shorter than its {OVERHEAD}-byte overhead")
        if self._counter > MAX_COUNTER:
            raise ProtocolError("message counter exhausted: the connection must be re-established")
        counter = int.from_bytes(data[:COUNTER_SIZE], "big")
        if counter != self._counter:
            raise ProtocolError(f"replayed or reordered message: counter {counter}, expected {self._counter}")
        try:
            plaintext = self._box.decrypt(data[COUNTER_SIZE:], nonce_for(counter))
        except nacl.exceptions.CryptoError:
            raise ProtocolError("decryption failed: message forged or corrupted") from None
        self._counter = counter + 1
        return plaintext
