"""Curve25519 keys in the form WireGuard tools exchange them.

Keys travel through environment variables, wg-quick files and the state
directory as the 44-character base64 text that ``wg genkey`` prints, so every
entry point decodes through :func:`decode_key` and reports failures against the
setting the user actually wrote.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wgslirp.errors import ConfigError

KEY_LEN = 32


def generate_private_key() -> bytes:
    """Return a fresh private key clamped like ``wg genkey`` output.

    X25519 clamps internally anyway; storing the clamped form keeps our files
    byte-identical to what the WireGuard tools would write for the same secret.
    """
    raw = bytearray(os.urandom(KEY_LEN))
    raw[0] &= 248
    raw[31] &= 127
    raw[31] |= 64
    return bytes(raw)


def public_key(priv: bytes) -> bytes:
    """Derive the public key that peers must list for ``priv``."""
    if len(priv) != KEY_LEN:
        raise ValueError(f"private key must be {KEY_LEN} bytes, got {len(priv)}")
    return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes_raw()


def encode_key(b: bytes) -> str:
    """Render a key the way WireGuard tools print it, for configs and logs."""
    return base64.b64encode(b).decode("ascii")


def decode_key(s: str, setting: str) -> bytes:
    """Parse base64 key text; blame ``setting`` in the error so users know what to fix.

    Non-canonical encodings (stray bits in the padding character) are refused
    as wg(8) refuses them, so a key accepted here is accepted everywhere else.
    """
    text = s.strip()
    if not text:
        raise ConfigError(setting, "key is empty")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            setting, "not valid base64 (expected 44 characters as printed by `wg genkey`)"
        ) from None
    if len(raw) != KEY_LEN:
        raise ConfigError(setting, f"key decodes to {len(raw)} bytes, expected {KEY_LEN}")
    if encode_key(raw) != text:
        raise ConfigError(setting, "key is not canonical base64 (check the last characters)")
    return raw
