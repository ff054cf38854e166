"""Sealing and opening throwaway packets between real ones, so the next real one finds the
cipher's code in the CPU's caches.

Why: a round trip after a few milliseconds of quiet runs cold. On the 2-core development VM
(cpuidle haltpoll, guest halt polling off) an idle vCPU halts and its caches do not survive
the pause: one ChaCha20-Poly1305 open of 80 bytes takes ~1.5 us in a loop, 11-35 us after a
5-20 ms sleep, and 3.3 us when the same kind of call was made on another key every 5 ms of
that sleep (3.1 us every 1 ms; a standalone script, medians of 150). Every transport
message is opened once and every answer sealed once, so a request answered after a quiet
gap paid that twice. The rehearsal touches the same native code (OpenSSL's ChaCha20 and
Poly1305 for a small and a tunnel-sized packet) with a key of its own: no peer, counter or
replay window is involved, and nothing it produces leaves the process.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

_TAG = 16
# A TCP SYN or a small datagram, and a packet of the tunnel MTU: OpenSSL takes different
# code paths for short and long inputs, and both kinds of round trip are common.
SIZES = (80, 1420)


class CipherRehearsal:
    """Callable: one open and one seal per size, into buffers allocated once."""

    __slots__ = ("_aead", "_nonce", "_opened", "_plain", "_resealed", "_sealed", "calls")

    def __init__(self) -> None:
        self._aead = ChaCha20Poly1305(os.urandom(32))
        self._nonce = bytes(12)
        self._plain = [os.urandom(n) for n in SIZES]
        self._sealed = [self._aead.encrypt(self._nonce, p, None) for p in self._plain]
        self._opened = [memoryview(bytearray(n)) for n in SIZES]
        self._resealed = [memoryview(bytearray(n + _TAG)) for n in SIZES]
        self.calls = 0

    def __call__(self) -> None:
        aead, nonce = self._aead, self._nonce
        for i in range(len(SIZES)):
            aead.decrypt_into(nonce, self._sealed[i], None, self._opened[i])
            aead.encrypt_into(nonce, self._plain[i], None, self._resealed[i])
        self.calls += 1

    def outputs(self, i: int) -> tuple[bytes, bytes]:
        """(what the last call opened + sealed, the plaintext + its first sealing) for
        size `SIZES[i]`: equal only if the call really ran the cipher (for tests)."""
        return bytes(self._opened[i]) + bytes(self._resealed[i]), self._plain[i] + self._sealed[i]
