"""Primitive vectors and handshake-level properties of the Noise implementation."""

from __future__ import annotations

import pytest

from wgslirp.keys import generate_private_key, public_key
from wgslirp.wireguard import crypto, noise


def test_hchacha20_vector() -> None:
    # draft-irtf-cfrg-xchacha-03, section 2.2.1
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert crypto.hchacha20(key, nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    )


def test_xaead_round_trip_and_tamper() -> None:
    key, nonce = b"k" * 32, bytes(range(24))
    sealed = crypto.xaead_encrypt(key, nonce, b"cookie-16-bytes!", b"ad")
    assert crypto.xaead_decrypt(key, nonce, sealed, b"ad") == b"cookie-16-bytes!"
    with pytest.raises(crypto.InvalidTag):
        crypto.xaead_decrypt(key, nonce, sealed, b"other ad")


def test_kdf_is_hmac_chain() -> None:
    import hashlib
    import hmac

    k, d = b"c" * 32, b"input"
    t0 = hmac.new(k, d, hashlib.blake2s).digest()
    t1 = hmac.new(t0, b"\x01", hashlib.blake2s).digest()
    t2 = hmac.new(t0, t1 + b"\x02", hashlib.blake2s).digest()
    assert crypto.kdf2(k, d) == (t1, t2)
    assert crypto.kdf1(k, d) == t1


def test_construction_constants() -> None:
    # The initial chaining key every WireGuard implementation starts from.
    assert noise.CHAIN0.hex() == "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"


def test_tai64n_monotonic_and_whitened() -> None:
    a = crypto.tai64n(1_700_000_000.123)
    b = crypto.tai64n(1_700_000_000.9)
    assert len(a) == 12 and a < b
    assert int.from_bytes(a[8:], "big") % 0x1000000 == 0


def test_handshake_keys_agree_and_low_order_point_rejected() -> None:
    ki, kr = generate_private_key(), generate_private_key()
    ii, ir = noise.Identity(ki), noise.Identity(kr)
    hi = noise.new_handshake(ii, public_key(kr), None)
    hr = noise.new_handshake(ir, public_key(ki), None)
    init = noise.create_initiation(ii, hi, 7, crypto.tai64n(1.0))
    opened = noise.open_initiation(ir, bytes(init))
    assert opened.remote_static == ii.public and opened.sender_index == 7
    ts = noise.finish_initiation(hr, opened, bytes(init))
    noise.commit_initiation(hr, opened, ts)
    resp = noise.create_response(hr, 9)
    noise.consume_response(ii, hi, bytes(resp))
    si, ri, init_flag = noise.derive_transport_keys(hi)
    sr, rr, resp_flag = noise.derive_transport_keys(hr)
    assert (si, ri) == (rr, sr) and init_flag and not resp_flag
    bad = bytearray(init)
    bad[8:40] = bytes(32)  # all-zero ephemeral: a low-order point
    with pytest.raises(noise.HandshakeError):
        noise.open_initiation(ir, bytes(bad))


def test_fast_hchacha20_matches_reference() -> None:
    import os

    for _ in range(100):
        k, n = os.urandom(32), os.urandom(16)
        assert crypto.hchacha20(k, n) == crypto.hchacha20_reference(k, n)
