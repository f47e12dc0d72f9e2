"""The sleeve's ciphers: libsodium through PyNaCl's cffi binding, sealing and opening a datagram in place. Pure.

A key seals one direction of one mesh connection; the nonce is zero bytes + the datagram's seq (u64, big-endian),
so it never repeats for a key. NaCl secretbox (XSalsa20-Poly1305) everywhere; AES-256-GCM, with the clear
header as additional data, where both routers' CPUs have AES-NI.
"""

from __future__ import annotations

from typing import Any

import nacl.bindings  # noqa: F401 - its import runs sodium_init(): CPU-specific (fast) crypto implementations
from nacl._sodium import ffi as ffi  # type: ignore[import-not-found]  # noqa: PLC0414 - re-exported (cffi, no stubs)
from nacl._sodium import lib as lib  # noqa: PLC0414 - re-exported

ZERO16 = bytes(16)  # secretbox nonce = these zero bytes + seq
ZERO4 = bytes(4)  # AES-GCM nonce = these zero bytes + seq
MAC_SIZE = 16
KEY_SIZE = 32
MODE_PLAIN, MODE_SECRETBOX, MODE_AESGCM = 0, 1, 2
CIPHERS = {MODE_SECRETBOX: "NaCl secretbox (XSalsa20-Poly1305)", MODE_AESGCM: "AES-256-GCM"}


def aesgcm_available() -> bool:
    """libsodium's AES-256-GCM needs the CPU's AES-NI and CLMUL instructions."""
    return bool(lib.crypto_aead_aes256gcm_is_available())


def seal_at(  # noqa: PLR0917 - hot path
    mode: int, buf: object, offset: int, length: int, seq: int, key: object, clear: int
) -> None:
    """Seal in place the datagram at buf[offset:offset + length]: its first `clear` bytes (the clear header,
    written) stay clear, the rest (room for the tag included: before the body for secretbox, after it for
    AES-GCM) is sealed."""
    b: Any = buf
    if mode == MODE_SECRETBOX:  # secretbox_easy writes tag + ciphertext from c, reading m: overlap allowed
        lib.crypto_secretbox_easy(b + offset + clear, b + offset + clear + MAC_SIZE,
                                  length - clear - MAC_SIZE, ZERO16 + seq.to_bytes(8, "big"), key)  # fmt: skip
    else:  # AES-GCM in place (c == m), tag appended; the clear header is additional data (authenticated too)
        body = b + offset + clear
        lib.crypto_aead_aes256gcm_encrypt(body, ffi.NULL, body, length - clear - MAC_SIZE, b + offset,
                                          clear, ffi.NULL, ZERO4 + seq.to_bytes(8, "big"), key)  # fmt: skip


def open_at(  # noqa: PLR0917 - hot path
    mode: int, buf: object, offset: int, length: int, seq: int, key: object, clear: int
) -> bool:
    """Authenticate and decrypt in place the datagram sealed by seal_at; False if it is forged."""
    b: Any = buf
    if mode == MODE_SECRETBOX:
        nonce = ZERO16 + seq.to_bytes(8, "big")
        c = b + offset + clear
        return bool(lib.crypto_secretbox_open_easy(c + MAC_SIZE, c, length - clear, nonce, key) == 0)
    body = b + offset + clear
    return bool(lib.crypto_aead_aes256gcm_decrypt(body, ffi.NULL, ffi.NULL, body, length - clear, b + offset,
                                                  clear, ZERO4 + seq.to_bytes(8, "big"), key) == 0)  # fmt: skip
