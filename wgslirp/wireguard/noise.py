"""Noise_IKpsk2 handshake of WireGuard, as initiator and as responder.

Pure computation: each function takes the handshake state and message bytes and returns
new message bytes or raises HandshakeError. The device decides when to call them and owns
indices, timers and MACs. The chaining key and hash follow the whitepaper's notation
(C, H); the static-static DH of each peer is computed once when the peer is added because
it never changes and is the most expensive step of every handshake.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wgslirp.wireguard import crypto
from wgslirp.wireguard.messages import (
    INIT_EPHEMERAL,
    INIT_MAC1,
    INIT_STATIC,
    INIT_TIMESTAMP,
    INITIATION_SIZE,
    MSG_INITIATION,
    MSG_RESPONSE,
    RESP_EMPTY,
    RESP_EPHEMERAL,
    RESP_MAC1,
    RESPONSE_SIZE,
)

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
CHAIN0 = crypto.hash_(CONSTRUCTION)
HASH0 = crypto.hash_(CHAIN0, IDENTIFIER)
ZERO_PSK = bytes(32)


class HandshakeError(Exception):
    """A handshake message failed to authenticate or arrived in the wrong state."""


class State(enum.Enum):
    ZEROED = 0
    INITIATION_CREATED = 1
    INITIATION_CONSUMED = 2
    RESPONSE_CREATED = 3
    RESPONSE_CONSUMED = 4


class Identity:
    """Our static key pair with the values every handshake derives from it."""

    def __init__(self, private: bytes) -> None:
        self.private_bytes = private
        self.private = X25519PrivateKey.from_private_bytes(private)
        self.public = self.private.public_key().public_bytes_raw()
        self.hash0 = crypto.hash_(HASH0, self.public)  # H after mixing the responder static


@dataclass(slots=True)
class Handshake:
    """Per-peer handshake state (one in flight at a time, as in WireGuard)."""

    remote_static: bytes
    precomputed_ss: bytes  # DH(our static, their static)
    psk: bytes = ZERO_PSK
    state: State = State.ZEROED
    chain: bytes = b""
    hash: bytes = b""
    local_ephemeral: X25519PrivateKey | None = None
    remote_ephemeral: bytes = b""
    local_index: int = 0
    remote_index: int = 0
    last_timestamp: bytes = bytes(12)  # newest TAI64N accepted from this peer
    last_initiation_consumed: float = float("-inf")
    hash0_remote: bytes = field(default=b"")  # H after mixing the remote static (we initiate)

    def zero(self) -> None:
        self.state = State.ZEROED
        self.chain = self.hash = b""
        self.local_ephemeral = None
        self.remote_ephemeral = b""
        self.local_index = self.remote_index = 0


def new_handshake(identity: Identity, remote_static: bytes, psk: bytes | None) -> Handshake:
    ss = crypto.dh(identity.private, remote_static)
    hs = Handshake(remote_static=remote_static, precomputed_ss=ss, psk=psk or ZERO_PSK)
    hs.hash0_remote = crypto.hash_(HASH0, remote_static)
    return hs


def create_initiation(
    identity: Identity, hs: Handshake, local_index: int, timestamp: bytes
) -> bytearray:
    """Build an initiation (MACs left zero for the cookie generator to stamp)."""
    eph = X25519PrivateKey.generate()
    e_pub = eph.public_key().public_bytes_raw()
    c = crypto.kdf1(CHAIN0, e_pub)
    h = crypto.hash_(hs.hash0_remote, e_pub)
    c, k = crypto.kdf2(c, crypto.dh(eph, hs.remote_static))
    enc_static = crypto.aead_encrypt(k, 0, identity.public, h)
    h = crypto.hash_(h, enc_static)
    c, k = crypto.kdf2(c, hs.precomputed_ss)
    enc_ts = crypto.aead_encrypt(k, 0, timestamp, h)
    h = crypto.hash_(h, enc_ts)
    msg = bytearray(INITIATION_SIZE)
    struct.pack_into("<II", msg, 0, MSG_INITIATION, local_index)
    msg[INIT_EPHEMERAL:INIT_STATIC] = e_pub
    msg[INIT_STATIC:INIT_TIMESTAMP] = enc_static
    msg[INIT_TIMESTAMP:INIT_MAC1] = enc_ts
    hs.state = State.INITIATION_CREATED
    hs.chain, hs.hash = c, h
    hs.local_ephemeral = eph
    hs.local_index = local_index
    return msg


@dataclass(slots=True)
class OpenedInitiation:
    """An initiation whose static key decrypted; the peer lookup happens between the halves."""

    remote_static: bytes
    chain: bytes
    hash: bytes
    remote_ephemeral: bytes
    sender_index: int


def open_initiation(identity: Identity, msg: bytes | memoryview) -> OpenedInitiation:
    """First half of consuming an initiation: reveals which peer claims to send it."""
    if len(msg) != INITIATION_SIZE:
        raise HandshakeError("initiation has the wrong size")
    sender: int = struct.unpack_from("<I", msg, 4)[0]
    e = bytes(msg[INIT_EPHEMERAL:INIT_STATIC])
    c = crypto.kdf1(CHAIN0, e)
    h = crypto.hash_(identity.hash0, e)
    try:
        c, k = crypto.kdf2(c, crypto.dh(identity.private, e))
        enc_static = bytes(msg[INIT_STATIC:INIT_TIMESTAMP])
        static = crypto.aead_decrypt(k, 0, enc_static, h)
    except (crypto.InvalidTag, crypto.CryptoError) as exc:
        raise HandshakeError("initiation static key does not decrypt") from exc
    h = crypto.hash_(h, enc_static)
    return OpenedInitiation(static, c, h, e, sender)


def finish_initiation(hs: Handshake, opened: OpenedInitiation, msg: bytes | memoryview) -> bytes:
    """Second half: authenticate the timestamp with the peer's static-static DH.

    Returns the timestamp; the caller checks it is newer than the last one before it
    commits the state with `commit_initiation`, so a replayed initiation changes nothing.
    """
    c, k = crypto.kdf2(opened.chain, hs.precomputed_ss)
    enc_ts = bytes(msg[INIT_TIMESTAMP:INIT_MAC1])
    try:
        ts = crypto.aead_decrypt(k, 0, enc_ts, opened.hash)
    except crypto.InvalidTag as exc:
        raise HandshakeError("initiation timestamp does not decrypt") from exc
    opened.chain = c
    opened.hash = crypto.hash_(opened.hash, enc_ts)
    return ts


def commit_initiation(hs: Handshake, opened: OpenedInitiation, timestamp: bytes) -> None:
    hs.state = State.INITIATION_CONSUMED
    hs.chain, hs.hash = opened.chain, opened.hash
    hs.remote_ephemeral = opened.remote_ephemeral
    hs.remote_index = opened.sender_index
    hs.last_timestamp = timestamp
    hs.local_ephemeral = None


def create_response(hs: Handshake, local_index: int) -> bytearray:
    if hs.state is not State.INITIATION_CONSUMED:
        raise HandshakeError("no consumed initiation to respond to")
    eph = X25519PrivateKey.generate()
    e_pub = eph.public_key().public_bytes_raw()
    c = crypto.kdf1(hs.chain, e_pub)
    h = crypto.hash_(hs.hash, e_pub)
    c = crypto.kdf1(c, crypto.dh(eph, hs.remote_ephemeral))
    c = crypto.kdf1(c, crypto.dh(eph, hs.remote_static))
    c, t, k = crypto.kdf3(c, hs.psk)
    h = crypto.hash_(h, t)
    empty = crypto.aead_encrypt(k, 0, b"", h)
    h = crypto.hash_(h, empty)
    msg = bytearray(RESPONSE_SIZE)
    struct.pack_into("<III", msg, 0, MSG_RESPONSE, local_index, hs.remote_index)
    msg[RESP_EPHEMERAL:RESP_EMPTY] = e_pub
    msg[RESP_EMPTY:RESP_MAC1] = empty
    hs.state = State.RESPONSE_CREATED
    hs.chain, hs.hash = c, h
    hs.local_index = local_index
    return msg


def consume_response(identity: Identity, hs: Handshake, msg: bytes | memoryview) -> None:
    """Initiator: authenticate the response; on success the state is RESPONSE_CONSUMED."""
    if hs.state is not State.INITIATION_CREATED or hs.local_ephemeral is None:
        raise HandshakeError("response without an initiation in flight")
    if len(msg) != RESPONSE_SIZE:
        raise HandshakeError("response has the wrong size")
    sender: int = struct.unpack_from("<I", msg, 4)[0]
    e = bytes(msg[RESP_EPHEMERAL:RESP_EMPTY])
    c = crypto.kdf1(hs.chain, e)
    h = crypto.hash_(hs.hash, e)
    try:
        c = crypto.kdf1(c, crypto.dh(hs.local_ephemeral, e))
        c = crypto.kdf1(c, crypto.dh(identity.private, e))
    except crypto.CryptoError as exc:
        raise HandshakeError("response ephemeral is a low-order point") from exc
    c, t, k = crypto.kdf3(c, hs.psk)
    h = crypto.hash_(h, t)
    empty = bytes(msg[RESP_EMPTY:RESP_MAC1])
    try:
        crypto.aead_decrypt(k, 0, empty, h)
    except crypto.InvalidTag as exc:
        raise HandshakeError("response does not authenticate") from exc
    h = crypto.hash_(h, empty)
    hs.state = State.RESPONSE_CONSUMED
    hs.chain, hs.hash = c, h
    hs.remote_index = sender
    hs.local_ephemeral = None


def derive_transport_keys(hs: Handshake) -> tuple[bytes, bytes, bool]:
    """(send key, receive key, we_initiated) from a completed handshake; then zero it."""
    if hs.state is State.RESPONSE_CONSUMED:
        initiator = True
    elif hs.state is State.RESPONSE_CREATED:
        initiator = False
    else:
        raise HandshakeError("handshake not complete")
    t1, t2 = crypto.kdf2(hs.chain, b"")
    send, recv = (t1, t2) if initiator else (t2, t1)
    hs.state = State.ZEROED
    hs.chain = hs.hash = b""
    hs.local_ephemeral = None
    hs.remote_ephemeral = b""
    return send, recv, initiator
