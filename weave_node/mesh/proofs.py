"""The handshake's proofs (pure): after the hellos, each side proves it holds a password the other accepts, and
both settle on one without another message. Format of the proof and proof set frames in protocol.py's docstring;
everything here raises only ProtocolError on bad input.

Version 1: one proof (tag + transcript hash) sealed with the primary password's session keys.

Version >= 2 (password rotation without a partition): a router accepts its primary password and up to
``MAX_PREVIOUS_KEYS`` previous ones. Each side derives the session keys of every password it accepts (one
`Candidate` each) and sends one proof set: the same proof sealed under each candidate's send key, primary first.
The receiver trial-decrypts every item with every one of its candidates' receive keys (at most 4 x 4 trials). A
password both sides hold shows up on both sides as the same pair (my index, their position), mirrored; both then
pick the same pair (`choose`): the side with the lower peer name decides by its own preference order, and the
other side knows that order from the positions in the proof set.

Each candidate's send channel has sealed counter 0 (its proof) and the chosen one goes on from counter 1; the
receive channel that opened the chosen proof goes on too: no (key, nonce) pair is ever used twice.

Each sealed proof also carries its position in the set and the set's size, so a man in the middle can neither
reorder nor drop items (which could make the sides pick different passwords, or quietly the old one): a proof
that opens with another position or size fails the handshake as tampered.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from weave_node.mesh.crypto import (
    OVERHEAD,
    TRANSCRIPT_HASH_SIZE,
    EphemeralKey,
    PasswordKey,
    SecretBoxChannel,
    SessionKeys,
    derive_session_keys,
    subkeys,
)
from weave_node.mesh.errors import ProtocolError
from weave_node.mesh.hello import TAG_PROOF, TAG_PROOF_SET

MAX_PROOFS = 4
"""Most items in a proof set, and so most passwords a router accepts at a time."""
MAX_PREVIOUS_KEYS = MAX_PROOFS - 1
PROOF_SIZE = OVERHEAD + 1 + TRANSCRIPT_HASH_SIZE + 2
"""Bytes of one sealed proof: counter + secretbox(TAG_PROOF + transcript hash + position u8 + count u8)."""
NO_COMMON_KEY = (
    "authentication failed: no password in common with the peer (wrong password, or a rotation step skipped?)"
)
WRONG_KEY = "authentication failed: wrong password?"  # version 1
TAMPERED = "authentication failed: the handshake was tampered with"


def accepted_keys(primary: PasswordKey | None, previous: Sequence[PasswordKey]) -> tuple[PasswordKey, ...]:
    """The passwords a router accepts, in preference order (primary first), duplicates dropped: a previous
    password equal to the primary (or to an earlier previous one) is left out, so a configuration that repeats
    one during a rollout stays valid. ValueError: previous passwords without a primary, or too many."""
    if primary is None:
        if previous:
            raise ValueError("previous passwords need a (primary) password")
        return ()
    keys = tuple(dict.fromkeys((primary, *previous)))
    if len(keys) > MAX_PROOFS:
        raise ValueError(f"at most {MAX_PREVIOUS_KEYS} previous passwords, not {len(keys) - 1}")
    return keys


@dataclass(frozen=True)
class Candidate:
    """One accepted password on one connection: its session keys and the send channel that sealed its proof."""

    key: PasswordKey
    session: SessionKeys
    send: SecretBoxChannel

    @classmethod
    def derive(cls, key: PasswordKey, own: EphemeralKey, peer_public: bytes) -> Candidate:
        session = derive_session_keys(key, own, peer_public)
        return cls(key, session, SecretBoxChannel(session.send))


@dataclass(frozen=True)
class Match:
    """A proof of the peer's that one of our candidates opened: our index, its position, the channel that
    opened it (its counter 0 is used)."""

    local: int
    remote: int
    receive: SecretBoxChannel


def encode_proof_set(candidates: Sequence[Candidate], transcript: bytes) -> bytes:
    """The proof set frame payload (tag included); seals counter 0 of every candidate's send channel."""
    if not 1 <= len(candidates) <= MAX_PROOFS:
        raise ValueError(f"a proof set holds 1-{MAX_PROOFS} proofs, not {len(candidates)}")
    parts = [bytes([TAG_PROOF_SET, len(candidates)])]
    for position, candidate in enumerate(candidates):
        sealed = candidate.send.encrypt(bytes([TAG_PROOF]) + transcript + bytes([position, len(candidates)]))
        parts += [len(sealed).to_bytes(2, "big"), sealed]
    return b"".join(parts)


def decode_proof_set(payload: bytes) -> list[bytes]:
    """The sealed proofs of a proof set frame payload (tag included), in the peer's preference order."""
    if not payload or payload[0] != TAG_PROOF_SET:
        got = f"frame type 0x{payload[0]:02x}" if payload else "an empty frame"
        raise ProtocolError(f"expected the handshake proof set, got {got}")
    if len(payload) < 2 or not 1 <= payload[1] <= MAX_PROOFS:
        count = "no count" if len(payload) < 2 else f"{payload[1]} proofs"
        raise ProtocolError(f"malformed proof set: {count} (1-{MAX_PROOFS} expected)")
    proofs, pos = [], 2
    for _ in range(payload[1]):
        if pos + 2 > len(payload):
            raise ProtocolError("malformed proof set: truncated")
        length, pos = int.from_bytes(payload[pos : pos + 2], "big"), pos + 2
        if length != PROOF_SIZE:
            raise ProtocolError(f"malformed proof set: a proof of {length} bytes ({PROOF_SIZE} expected)")
        if pos + length > len(payload):
            raise ProtocolError("malformed proof set: truncated")
        proofs.append(payload[pos : pos + length])
        pos += length
    if pos != len(payload):
        raise ProtocolError(f"malformed proof set: {len(payload) - pos} trailing bytes")
    return proofs


def find_matches(candidates: Sequence[Candidate], proofs: Sequence[bytes], transcript: bytes) -> list[Match]:
    """Every (our candidate, their proof) pair that opens, with a fresh receive channel per trial. A proof that
    opens but carries another transcript (made by a holder of the password for other hellos), or another position
    or set size (items reordered or dropped on the way): tampering."""
    matches = []
    for local, candidate in enumerate(candidates[:MAX_PROOFS]):
        for remote, sealed in enumerate(proofs[:MAX_PROOFS]):
            expected = bytes([TAG_PROOF]) + transcript + bytes([remote, len(proofs)])
            channel = SecretBoxChannel(candidate.session.receive)
            try:
                plaintext = channel.decrypt(sealed)
            except ProtocolError:
                continue
            if not hmac.compare_digest(plaintext, expected):
                raise ProtocolError(TAMPERED)
            matches.append(Match(local, remote, channel))
    return matches


def choose(matches: Sequence[Match], local_name: int, remote_name: int) -> Match:
    """The pair both sides pick: the preference of the side with the lower peer name decides (then the other's)."""
    if not matches:
        raise ProtocolError(NO_COMMON_KEY)
    if local_name < remote_name:
        return min(matches, key=lambda m: (m.local, m.remote))
    return min(matches, key=lambda m: (m.remote, m.local))


@dataclass(frozen=True)
class Chosen:
    """The password a connection goes on with, and its channels (each already past its proof)."""

    key: PasswordKey
    send: SecretBoxChannel
    receive: SecretBoxChannel
    sleeve_keys: SessionKeys


class ProofExchange:
    """The proofs of one encrypted handshake, from the peer's hello (the version is known) to the chosen password.

    `proof` is the frame payload to send (once); `check` takes the peer's (the first frame after its hello).
    """

    def __init__(
        self,
        keys: Sequence[PasswordKey],
        version: int,
        *,
        own: EphemeralKey,
        peer_public: bytes,
        transcript: bytes,
        names: tuple[int, int],
    ) -> None:
        self._version = version
        self._transcript = transcript
        self._names = names  # (ours, the peer's)
        offered = keys[:MAX_PROOFS] if version >= 2 else keys[:1]  # version 1: the primary only
        self._candidates = [Candidate.derive(key, own, peer_public) for key in offered]
        if not self._candidates:
            raise ValueError("an encrypted handshake needs a password")

    def proof(self) -> bytes:
        if self._version >= 2:
            return encode_proof_set(self._candidates, self._transcript)
        return self._candidates[0].send.encrypt(bytes([TAG_PROOF]) + self._transcript)

    def check(self, payload: bytes) -> Chosen:
        if self._version >= 2:
            proofs = decode_proof_set(payload)
            match = choose(find_matches(self._candidates, proofs, self._transcript), *self._names)
            return self._chosen(self._candidates[match.local], match.receive)
        (primary,) = self._candidates
        receive = SecretBoxChannel(primary.session.receive)
        try:
            plaintext = receive.decrypt(payload)
        except ProtocolError:
            raise ProtocolError(WRONG_KEY) from None
        if plaintext[:1] != bytes([TAG_PROOF]):
            got = f"frame type 0x{plaintext[0]:02x}" if plaintext else "an empty frame"
            raise ProtocolError(f"expected the handshake proof, got {got}")
        if not hmac.compare_digest(plaintext[1:], self._transcript):
            raise ProtocolError(TAMPERED)
        return self._chosen(primary, receive)

    @staticmethod
    def _chosen(candidate: Candidate, receive: SecretBoxChannel) -> Chosen:
        return Chosen(candidate.key, candidate.send, receive, subkeys(candidate.session, b"sleeve"))
