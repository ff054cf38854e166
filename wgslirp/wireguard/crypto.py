"""Cryptographic primitives of the WireGuard protocol.

WireGuard fixes its primitives (no negotiation): BLAKE2s for hashing, keyed MACs and the
HMAC-based KDF; X25519 for Diffie-Hellman; ChaCha20-Poly1305 for transport and handshake
AEAD; XChaCha20-Poly1305 for cookie replies. The `cryptography` package provides all but
HChaCha20 (needed to build XChaCha20 from ChaCha20), which is written here: it runs only
for cookie replies, a rare path, so a pure-Python core is fast enough.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

__all__ = [
    "AEAD_TAG_SIZE",
    "KEY_SIZE",
    "CryptoError",
    "InvalidTag",
    "aead_decrypt",
    "aead_encrypt",
    "dh",
    "hash_",
    "hchacha20",
    "hmac_",
    "kdf1",
    "kdf2",
    "kdf3",
    "mac",
    "tai64n",
    "xaead_decrypt",
    "xaead_encrypt",
]

KEY_SIZE = 32
AEAD_TAG_SIZE = 16
_ZERO_NONCE = bytes(12)


class CryptoError(Exception):
    """A DH produced the all-zero output (low-order point) or a key is malformed."""


def hash_(*parts: bytes) -> bytes:
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, data: bytes | memoryview) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "blake2s")


def kdf1(key: bytes, data: bytes) -> bytes:
    t0 = hmac_(key, data)
    return hmac_(t0, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    t0 = hmac_(key, data)
    t1 = hmac_(t0, b"\x01")
    t2 = hmac_(t0, t1 + b"\x02")
    return t1, t2


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    t0 = hmac_(key, data)
    t1 = hmac_(t0, b"\x01")
    t2 = hmac_(t0, t1 + b"\x02")
    t3 = hmac_(t0, t2 + b"\x03")
    return t1, t2, t3


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519; a low-order peer point is rejected rather than yielding an all-zero secret."""
    try:
        out = private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # cryptography refuses all-zero shared secrets
        raise CryptoError("x25519 produced a zero shared secret") from exc
    return out


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    nonce = struct.pack("<4xQ", counter)
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Raises InvalidTag when authentication fails."""
    nonce = struct.pack("<4xQ", counter)
    return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, ad)


def _rotl(v: int, c: int) -> int:
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def _quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF
    s[b] = _rotl(s[b] ^ s[c], 7)


_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_ZERO64 = bytes(64)
_WORDS16 = struct.Struct("<16I")
_WORDS4 = struct.Struct("<4I")


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha): 20 ChaCha rounds without the final addition;
    words 0-3 and 12-15 of the state form the derived 256-bit subkey.

    One ChaCha20 keystream block from OpenSSL is exactly those rounds plus the initial
    state, with the 16-byte nonce in the counter+nonce words; subtracting the initial words
    back out gives HChaCha20 at C speed, which matters because cookie replies are what
    the router sends when it is being flooded.
    """
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError("hchacha20 needs a 32-byte key and a 16-byte nonce")
    block = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor().update(_ZERO64)
    w = _WORDS16.unpack(block)
    n = _WORDS4.unpack(nonce16)
    return struct.pack(
        "<8I",
        (w[0] - _SIGMA[0]) & 0xFFFFFFFF,
        (w[1] - _SIGMA[1]) & 0xFFFFFFFF,
        (w[2] - _SIGMA[2]) & 0xFFFFFFFF,
        (w[3] - _SIGMA[3]) & 0xFFFFFFFF,
        (w[12] - n[0]) & 0xFFFFFFFF,
        (w[13] - n[1]) & 0xFFFFFFFF,
        (w[14] - n[2]) & 0xFFFFFFFF,
        (w[15] - n[3]) & 0xFFFFFFFF,
    )


def hchacha20_reference(key: bytes, nonce16: bytes) -> bytes:
    """The same function computed round by round, kept to cross-check the fast one."""
    s = [*_SIGMA, *struct.unpack("<8I", key), *struct.unpack("<4I", nonce16)]
    for _ in range(10):
        _quarter(s, 0, 4, 8, 12)
        _quarter(s, 1, 5, 9, 13)
        _quarter(s, 2, 6, 10, 14)
        _quarter(s, 3, 7, 11, 15)
        _quarter(s, 0, 5, 10, 15)
        _quarter(s, 1, 6, 11, 12)
        _quarter(s, 2, 7, 8, 13)
        _quarter(s, 3, 4, 9, 14)
    return struct.pack("<8I", *s[0:4], *s[12:16])


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).encrypt(b"\x00" * 4 + nonce24[16:], plaintext, ad)


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).decrypt(b"\x00" * 4 + nonce24[16:], ciphertext, ad)


_TAI64_BASE = (1 << 62) + 10  # TAI64 label of the Unix epoch, as wireguard-go encodes it
_TIMESTAMP_WHITEN_NS = 0x1000000  # drop low bits so the stamp does not leak a fine clock


def tai64n(now_unix: float | None = None) -> bytes:
    """12-byte TAI64N timestamp for initiations; monotonic across restarts by wall time."""
    t = time.time() if now_unix is None else now_unix
    secs = int(t)
    nanos = int((t - secs) * 1e9)
    nanos -= nanos % _TIMESTAMP_WHITEN_NS
    return struct.pack(">QI", _TAI64_BASE + secs, nanos)
