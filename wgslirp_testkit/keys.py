"""WireGuard keys for test clients, in the base64 text form ``wg`` uses.

A malformed key otherwise surfaces as an opaque ``wg set`` failure deep inside a test, so
keys are normalised and checked where they enter.
"""

from __future__ import annotations

import base64
import dataclasses
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from wgslirp_testkit.proc import run


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A Curve25519 key pair in WireGuard's base64 text form."""

    private: str
    public: str

    @property
    def private_bytes(self) -> bytes:
        return base64.b64decode(self.private)

    @property
    def public_bytes(self) -> bytes:
        return base64.b64decode(self.public)


def key_to_base64(key: bytes | str) -> str:
    """Normalise a 32-byte key given raw or as base64 text; reject anything else early."""
    raw = key if isinstance(key, bytes) else base64.b64decode(key.strip(), validate=True)
    if len(raw) != 32:
        raise ValueError(f"WireGuard keys are 32 bytes, got {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def public_key_of(private_key: bytes | str, *, use_wg: bool = False) -> str:
    """Public key (base64) for a private key; ``use_wg`` cross-checks with ``wg pubkey``."""
    priv = key_to_base64(private_key)
    if use_wg:
        return run(["wg", "pubkey"], input=priv + "\n", timeout=10, check=True).stdout.strip()
    sk = X25519PrivateKey.from_private_bytes(base64.b64decode(priv))
    return base64.b64encode(sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def generate_keypair(*, use_wg: bool = False) -> KeyPair:
    """New key pair from the cryptography package (default) or ``wg genkey``/``wg pubkey``.

    The private key is clamped the way ``wg genkey`` does so both sources look alike.
    """
    if use_wg:
        priv = run(["wg", "genkey"], timeout=10, check=True).stdout.strip()
    else:
        raw = bytearray(os.urandom(32))
        raw[0] &= 248
        raw[31] = (raw[31] & 127) | 64
        priv = base64.b64encode(bytes(raw)).decode()
    return KeyPair(private=priv, public=public_key_of(priv, use_wg=use_wg))


def generate_preshared_key() -> str:
    """Random 32-byte preshared key, base64 (what ``wg genpsk`` prints)."""
    return base64.b64encode(os.urandom(32)).decode()
