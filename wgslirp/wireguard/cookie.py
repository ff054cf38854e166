"""MAC1/MAC2 and cookie replies: WireGuard's defence against handshake floods.

Every handshake message carries MAC1, keyed by the receiver's public key, so a sender that
does not know that key is dropped before any Diffie-Hellman work. Under load the responder
also demands MAC2, keyed by a cookie bound to the sender's IP and port and handed out in an
encrypted cookie reply: an attacker spoofing sources cannot receive it, so it cannot make
the responder do expensive work.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import struct
from collections.abc import Callable

from wgslirp.wireguard import crypto
from wgslirp.wireguard.messages import (
    COOKIE_ENCRYPTED,
    COOKIE_NONCE,
    COOKIE_RECEIVER,
    COOKIE_REPLY_SIZE,
    MSG_COOKIE_REPLY,
)

LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
COOKIE_REFRESH_TIME = 120.0  # seconds a secret (responder) or cookie (initiator) stays valid

Addr = tuple[str, int]


def mac1_key(public: bytes) -> bytes:
    return crypto.hash_(LABEL_MAC1, public)


def cookie_key(public: bytes) -> bytes:
    return crypto.hash_(LABEL_COOKIE, public)


def _addr_bytes(addr: Addr) -> bytes:
    return ipaddress.ip_address(addr[0]).packed + struct.pack(">H", addr[1])


class CookieChecker:
    """Responder side, one per device: verifies MACs and issues cookie replies."""

    def __init__(self, local_public: bytes, random_bytes: Callable[[int], bytes] = os.urandom):
        self._mac1_key = mac1_key(local_public)
        self._cookie_key = cookie_key(local_public)
        self._random = random_bytes
        self._secret = b""
        self._secret_born = float("-inf")

    def check_mac1(self, msg: bytes | memoryview, mac1_off: int) -> bool:
        expect = crypto.mac(self._mac1_key, msg[:mac1_off])
        return hmac.compare_digest(expect, bytes(msg[mac1_off : mac1_off + 16]))

    def _cookie(self, addr: Addr, now: float) -> bytes:
        if now - self._secret_born >= COOKIE_REFRESH_TIME:
            self._secret = self._random(32)
            self._secret_born = now
        return crypto.mac(self._secret, _addr_bytes(addr))

    def check_mac2(self, msg: bytes | memoryview, mac2_off: int, addr: Addr, now: float) -> bool:
        if now - self._secret_born >= COOKIE_REFRESH_TIME:
            return False  # no live secret: nobody can hold a valid cookie
        expect = crypto.mac(self._cookie(addr, now), msg[:mac2_off])
        return hmac.compare_digest(expect, bytes(msg[mac2_off : mac2_off + 16]))

    def create_reply(
        self, msg: bytes | memoryview, sender_index: int, mac1_off: int, addr: Addr, now: float
    ) -> bytes:
        """Cookie reply to the sender of `msg`, bound to the MAC1 it used (as AD)."""
        nonce = self._random(24)
        tau = self._cookie(addr, now)  # one BLAKE2s; the expensive part was HChaCha20
        mac1 = bytes(msg[mac1_off : mac1_off + 16])
        sealed = crypto.xaead_encrypt(self._cookie_key, nonce, tau, mac1)
        out = struct.pack("<II", MSG_COOKIE_REPLY, sender_index) + nonce + sealed
        assert len(out) == COOKIE_REPLY_SIZE
        return out


class CookieGenerator:
    """Initiator side, one per peer: stamps MACs on our handshake messages to that peer."""

    def __init__(self, remote_public: bytes):
        self._mac1_key = mac1_key(remote_public)
        self._cookie_key = cookie_key(remote_public)
        self._cookie = b""
        self._cookie_born = float("-inf")
        self._last_mac1 = b""

    def stamp(self, msg: bytearray, mac1_off: int, now: float) -> None:
        """Fill MAC1 and, when we hold a fresh cookie, MAC2 (else zeros) in place."""
        mac1 = crypto.mac(self._mac1_key, memoryview(msg)[:mac1_off])
        msg[mac1_off : mac1_off + 16] = mac1
        self._last_mac1 = mac1
        mac2_off = mac1_off + 16
        if self._cookie and now - self._cookie_born < COOKIE_REFRESH_TIME:
            msg[mac2_off : mac2_off + 16] = crypto.mac(self._cookie, memoryview(msg)[:mac2_off])
        else:
            msg[mac2_off : mac2_off + 16] = bytes(16)

    def consume_reply(self, msg: bytes | memoryview, now: float) -> bool:
        """Accept a cookie reply for the last message we stamped; False if it does not open."""
        if not self._last_mac1 or len(msg) != COOKIE_REPLY_SIZE:
            return False
        nonce = bytes(msg[COOKIE_NONCE : COOKIE_NONCE + 24])
        try:
            cookie = crypto.xaead_decrypt(
                self._cookie_key, nonce, bytes(msg[COOKIE_ENCRYPTED:]), self._last_mac1
            )
        except crypto.InvalidTag:
            return False
        self._cookie = cookie
        self._cookie_born = now
        return True


def cookie_receiver_index(msg: bytes | memoryview) -> int:
    idx: int = struct.unpack_from("<I", msg, COOKIE_RECEIVER)[0]
    return idx
