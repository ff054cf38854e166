"""A WireGuard device with no I/O: datagrams and time in, datagrams and plaintext out.

The shell (ingress) feeds every received datagram to `receive_handshake` or `decrypt` by
type, hands plaintext to the data plane, encrypts outbound plaintext with `encrypt`, sends
whatever accumulates in `outbox`, and calls `handle_timer` when `get_timer` says so. Every
method takes `now` (a monotonic clock in seconds); wall time is only used for the TAI64N
timestamp and the "latest handshake" shown to operators, through an injectable callable.
"""

from __future__ import annotations

import os
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from wgslirp.obs.counters import Counters
from wgslirp.wireguard import crypto, noise
from wgslirp.wireguard.allowedips import AllowedIPs
from wgslirp.wireguard.cookie import CookieChecker
from wgslirp.wireguard.keypair import Keypair
from wgslirp.wireguard.load import HandshakeGuard, source_key
from wgslirp.wireguard.messages import (
    INIT_MAC1,
    INIT_MAC2,
    INITIATION_SIZE,
    MSG_COOKIE_REPLY,
    MSG_INITIATION,
    MSG_RESPONSE,
    MSG_TRANSPORT,
    RESP_MAC1,
    RESP_MAC2,
    RESPONSE_SIZE,
    TRANSPORT_HDR,
    TRANSPORT_MIN_SIZE,
    message_type,
)
from wgslirp.wireguard.peer import Addr, Peer
from wgslirp.wireguard.timers import (
    INITIATION_MIN_INTERVAL,
    KEEPALIVE_TIMEOUT,
    MAX_HANDSHAKE_ATTEMPTS,
    MAX_STAGED_PACKETS,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ON_RECEIVE_AGE,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEYS_AFTER,
)

_NONCE = struct.Struct("<4xQ")
_IPV4_LEN_SRC = struct.Struct(">2xH8xI")  # total length, then source address at offset 12
_IPV6_LEN_SRC = struct.Struct(">4xH2xQQ")  # payload length, then the source's two halves
_ZEROS = bytes(16)


class DeviceStats(Counters):
    """Drop and traffic counters; plain ints so the hot path pays one add each."""

    cookie_replies_sent: int
    handshake_invalid: int
    handshake_rate_limited: int
    handshake_shed: int  # under load, dropped before any work: the source's budgets were spent
    handshake_replayed: int
    handshakes_completed: int
    invalid_datagrams: int
    keepalives_received: int
    mac1_invalid: int
    no_endpoint: int
    no_session_dropped: int
    not_ipv4: int
    rx_bytes: int
    rx_packets: int
    source_rejected: int
    transport_auth_failed: int
    transport_expired: int
    transport_replayed: int
    tx_bytes: int
    tx_packets: int
    unknown_index: int
    unknown_peer: int


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    peer: Peer
    initiator: bool


@dataclass(frozen=True, slots=True)
class HandshakeGaveUp:
    peer: Peer


@dataclass(frozen=True, slots=True)
class KeysZeroed:
    peer: Peer


Event = HandshakeCompleted | HandshakeGaveUp | KeysZeroed


class Device:
    def __init__(
        self,
        private_key: bytes,
        *,
        wall: Callable[[], float] = time.time,
        random_bytes: Callable[[int], bytes] = os.urandom,
        rng: random.Random | None = None,
        guard: HandshakeGuard | None = None,
        mtu: int = 1420,
    ) -> None:
        self.mtu = mtu  # padding never takes a packet past the tunnel MTU
        self.identity = noise.Identity(private_key)
        self.public_key = self.identity.public
        self.peers: dict[bytes, Peer] = {}
        self.by_index: dict[int, Peer] = {}
        self._next_peer_index = 1
        self.allowed: AllowedIPs[Peer] = AllowedIPs()
        self._hs_index: dict[int, Peer] = {}
        self._kp_index: dict[int, Keypair] = {}
        self._wall = wall
        self._rng = rng or random.SystemRandom()  # session indices: unpredictable
        # Timer jitter needs no secrecy, and SystemRandom costs a getrandom() syscall per
        # call (0.85 us): it ran once per packet received and answered (every ACK of an
        # upload, every other segment of a download) when the jitter drew from it.
        self._jitter = rng or random.Random(int.from_bytes(random_bytes(16), "big"))
        self._random_bytes = random_bytes
        self.cookies = CookieChecker(self.identity.public, random_bytes)
        self.guard = guard if guard is not None else HandshakeGuard()
        # Called with each removed peer (UAPI, reload): the shell tells whoever holds state
        # keyed by the peer (the workers' flows) to let go of it.
        self.on_peer_removed: list[Callable[[Peer], None]] = []
        self.outbox: list[tuple[bytes | bytearray, Addr]] = []
        self.events: deque[Event] = deque(maxlen=1024)
        self.stats = DeviceStats()
        self.roams = 0  # endpoint changes learned from authenticated packets

    # ----------------------------------------------------------------- peers

    def add_peer(
        self,
        public_key: bytes,
        *,
        preshared_key: bytes | None = None,
        allowed_ips: tuple[str, ...] | list[str] = (),
        endpoint: Addr | None = None,
        keepalive: int = 0,
        now: float = 0.0,
        index: int | None = None,
    ) -> Peer:
        """`index`: the number this peer had in a previous incarnation of the process, so
        state elsewhere keyed by it (the workers' flows) still means this peer."""
        if public_key in self.peers:
            raise ValueError("peer already present")
        if public_key == self.public_key:
            raise ValueError("a peer cannot have the device's own public key")
        if index is not None and (index < 1 or index in self.by_index):
            raise ValueError(f"peer index {index} is invalid or taken")
        hs = noise.new_handshake(self.identity, public_key, preshared_key)
        if index is None:
            index = self._next_peer_index
        peer = Peer(public_key, hs, endpoint, keepalive, index)
        # never reused: a stale ring slot cannot reach a new peer
        self._next_peer_index = max(self._next_peer_index, index + 1)
        self.peers[public_key] = peer
        self.by_index[peer.index] = peer
        for cidr in allowed_ips:
            self.allowed.insert(cidr, peer)
        if keepalive:
            peer.t_persistent = now  # a persistent-keepalive peer connects right away
        return peer

    @property
    def next_peer_index(self) -> int:
        return self._next_peer_index

    def reserve_peer_indices(self, below: int) -> None:
        """Never hand out an index under `below` (used before a restart) to a new peer."""
        self._next_peer_index = max(self._next_peer_index, below)

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        del self.by_index[peer.index]
        self.allowed.remove_owner(peer)
        self._zero_peer(peer)
        for hook in self.on_peer_removed:
            hook(peer)

    def set_private_key(self, private_key: bytes) -> None:
        """Take a new static identity while running (UAPI `private_key=`).

        Every peer's precomputed static-static DH and the MAC1/cookie keys derive from it, so
        they are recomputed, and every session and handshake in flight is dropped: they were
        authenticated with the old identity. A peer whose public key is the new device key is
        removed, as a device cannot be its own peer. Replay state (newest timestamp) stays.
        """
        if private_key == self.identity.private_bytes:
            return
        identity = noise.Identity(private_key)
        self.remove_peer(identity.public)
        self.identity = identity
        self.public_key = identity.public
        self.cookies = CookieChecker(identity.public, self._random_bytes)
        for peer in self.peers.values():
            self._zero_peer(peer)
            peer.handshake.precomputed_ss = crypto.dh(identity.private, peer.public_key)

    def set_keepalive(self, peer: Peer, interval: int, now: float) -> None:
        peer.keepalive = interval
        peer.t_persistent = now if interval else None

    def route(self, dst: int) -> Peer | None:
        """Peer that owns destination address `dst` (an int) by longest prefix."""
        return self.allowed.lookup(dst)

    def route6(self, dst: int) -> Peer | None:
        """`route` for an IPv6 destination."""
        return self.allowed.lookup6(dst)

    # ------------------------------------------------------------ handshakes

    def _drop_hs_index(self, peer: Peer) -> None:
        """Forget the peer's in-flight handshake index, but only if it is still this
        peer's: once a session took the index over, the number may belong to another."""
        idx = peer.handshake.local_index
        if self._hs_index.get(idx) is peer:
            del self._hs_index[idx]

    def _new_index(self) -> int:
        while True:
            idx = self._rng.getrandbits(32)
            if idx not in self._hs_index and idx not in self._kp_index:
                return idx

    def receive_handshake(self, data: bytes | memoryview, addr: Addr, now: float) -> Peer | None:
        """Process an initiation, response or cookie reply; replies go to `outbox`.

        Returns the peer that authenticated, if any.
        """
        t = message_type(data)
        try:
            if t == MSG_INITIATION:
                return self._on_initiation(data, addr, now)
            if t == MSG_RESPONSE:
                return self._on_response(data, addr, now)
            if t == MSG_COOKIE_REPLY:
                return self._on_cookie_reply(data, now)
        except noise.HandshakeError:
            self.stats.handshake_invalid += 1
            return None
        self.stats.invalid_datagrams += 1
        return None

    def _check_macs(
        self,
        data: bytes | memoryview,
        sender: int,
        mac1_off: int,
        mac2_off: int,
        addr: Addr,
        now: float,
    ) -> bool:
        """Whether a handshake message may cost a Diffie-Hellman; under load the order is
        cheapest check first (wireguard/load.py says why)."""
        guard = self.guard
        if not guard.under_load(now):
            if self.cookies.check_mac1(data, mac1_off):
                return True
            self.stats.mac1_invalid += 1
            return False
        ip = source_key(addr[0])
        has_mac2 = data[mac2_off : mac2_off + 16] != _ZEROS
        if not has_mac2 and guard.spent(ip, now):
            self.stats.handshake_shed += 1
            return False
        if not self.cookies.check_mac1(data, mac1_off):
            self.stats.mac1_invalid += 1
            return False
        if has_mac2 and self.cookies.check_mac2(data, mac2_off, addr, now):
            if guard.allow_dh(ip, now):
                return True
            self.stats.handshake_rate_limited += 1
            return False
        if guard.admit_fresh(ip, now):
            return True
        if guard.allow_cookie(ip, now):
            reply = self.cookies.create_reply(data, sender, mac1_off, addr, now)
            self.outbox.append((reply, addr))
            self.stats.cookie_replies_sent += 1
            return False
        self.stats.handshake_shed += 1
        return False

    def _on_initiation(self, data: bytes | memoryview, addr: Addr, now: float) -> Peer | None:
        if len(data) != INITIATION_SIZE:
            self.stats.invalid_datagrams += 1
            return None
        sender: int = struct.unpack_from("<I", data, 4)[0]
        if not self._check_macs(data, sender, INIT_MAC1, INIT_MAC2, addr, now):
            return None
        opened = noise.open_initiation(self.identity, data)
        peer = self.peers.get(opened.remote_static)
        if peer is None:
            self.stats.unknown_peer += 1
            return None
        hs = peer.handshake
        ts = noise.finish_initiation(hs, opened, data)
        if ts <= hs.last_timestamp or now - hs.last_initiation_consumed < INITIATION_MIN_INTERVAL:
            self.stats.handshake_replayed += 1
            return None
        self._drop_hs_index(peer)
        noise.commit_initiation(hs, opened, ts)
        hs.last_initiation_consumed = now
        peer.endpoint = addr
        self._authenticated_received(peer, now)
        idx = self._new_index()
        resp = noise.create_response(hs, idx)
        peer.cookie.stamp(resp, RESP_MAC1, now)
        send, recv, initiator = noise.derive_transport_keys(hs)
        kp = Keypair(peer, send, recv, initiator, idx, hs.remote_index, now)
        self._install_keypair(peer, kp, now)
        self.outbox.append((resp, addr))
        peer.last_initiation_sent = now  # no initiation of ours may cross this response
        self._authenticated_sent(peer, now)
        return peer

    def _on_response(self, data: bytes | memoryview, addr: Addr, now: float) -> Peer | None:
        if len(data) != RESPONSE_SIZE:
            self.stats.invalid_datagrams += 1
            return None
        sender, receiver = struct.unpack_from("<II", data, 4)
        if not self._check_macs(data, sender, RESP_MAC1, RESP_MAC2, addr, now):
            return None
        peer = self._hs_index.get(receiver)
        if peer is None or peer.handshake.local_index != receiver:
            self.stats.unknown_index += 1
            return None
        hs = peer.handshake
        noise.consume_response(self.identity, hs, data)
        del self._hs_index[receiver]
        peer.endpoint = addr
        send, recv, initiator = noise.derive_transport_keys(hs)
        kp = Keypair(peer, send, recv, initiator, receiver, hs.remote_index, now)
        self._install_keypair(peer, kp, now)
        self._authenticated_received(peer, now)
        self._handshake_complete(peer, now, initiator=True)
        self._send_staged(peer, now, keepalive_if_empty=True)
        return peer

    def _on_cookie_reply(self, data: bytes | memoryview, now: float) -> Peer | None:
        receiver: int = struct.unpack_from("<I", data, 4)[0] if len(data) >= 8 else 0
        peer = self._hs_index.get(receiver)
        if peer is None:
            kp = self._kp_index.get(receiver)
            peer = kp.peer if kp is not None else None
        if peer is None:
            self.stats.unknown_index += 1
            return None
        if not peer.cookie.consume_reply(data, now):
            self.stats.handshake_invalid += 1
            return None
        return peer

    def _install_keypair(self, peer: Peer, kp: Keypair, now: float) -> None:
        """Rotate keypair slots the way WireGuard does on a new session."""
        self._kp_index[kp.local_index] = kp
        if kp.initiator:
            if peer.next is not None:
                self._drop_keypair(peer.previous)
                self._drop_keypair(peer.current)
                peer.previous, peer.next = peer.next, None
            else:
                self._drop_keypair(peer.previous)
                peer.previous = peer.current
            peer.current = kp
        else:
            self._drop_keypair(peer.next)
            self._drop_keypair(peer.previous)
            peer.previous = None
            peer.next = kp
        peer.t_zero_keys = now + ZERO_KEYS_AFTER
        if kp.initiator:
            self._confirmed(peer)

    def _confirmed(self, peer: Peer) -> None:
        """A session both sides provably hold: what operators see as a handshake."""
        peer.last_handshake_wall = self._wall()
        peer.handshakes += 1
        peer.rekey_on_receive_sent = False
        self.stats.handshakes_completed += 1

    def _drop_keypair(self, kp: Keypair | None) -> None:
        if kp is not None:
            self._kp_index.pop(kp.local_index, None)

    def _handshake_complete(self, peer: Peer, now: float, *, initiator: bool) -> None:
        peer.t_retransmit = None
        peer.handshake_attempts = 0
        if initiator:
            self.events.append(HandshakeCompleted(peer, True))

    def initiate(self, peer: Peer, now: float, *, retry: bool = False) -> bool:
        """Send a handshake initiation unless one went out less than REKEY_TIMEOUT ago."""
        if not retry:
            peer.handshake_attempts = 0
        if now - peer.last_initiation_sent < REKEY_TIMEOUT:
            return False
        if peer.endpoint is None:
            self.stats.no_endpoint += 1
            return False
        hs = peer.handshake
        self._drop_hs_index(peer)
        idx = self._new_index()
        msg = noise.create_initiation(self.identity, hs, idx, crypto.tai64n(self._wall()))
        peer.cookie.stamp(msg, INIT_MAC1, now)
        self._hs_index[idx] = peer
        peer.last_initiation_sent = now
        self.outbox.append((msg, peer.endpoint))
        self._authenticated_sent(peer, now)
        peer.t_retransmit = now + REKEY_TIMEOUT + self._jitter.random() * REKEY_TIMEOUT_JITTER_MAX
        return True

    # ------------------------------------------------------------- transport

    def decrypt(
        self, data: bytes | memoryview, addr: Addr, now: float, out: bytearray | memoryview
    ) -> tuple[Peer, int] | None:
        """Open a transport message into `out`; returns (peer, inner packet length).

        Length 0 is a keepalive. The inner packet's source must be routed to the peer that
        sent it (cryptokey routing); otherwise it is dropped and counted.
        """
        n = len(data)
        if n < TRANSPORT_MIN_SIZE:
            self.stats.invalid_datagrams += 1
            return None
        typ, idx, ctr = TRANSPORT_HDR.unpack_from(data, 0)
        kp = self._kp_index.get(idx)
        if kp is None or typ != MSG_TRANSPORT:
            self.stats.unknown_index += 1
            return None
        if now - kp.created >= REJECT_AFTER_TIME:
            self.stats.transport_expired += 1
            return None
        replay = kp.replay
        if not replay.check(ctr):
            self.stats.transport_replayed += 1
            return None
        plen = n - TRANSPORT_MIN_SIZE
        src = data[16:] if type(data) is memoryview else memoryview(data)[16:]
        dst = out[:plen] if type(out) is memoryview else memoryview(out)[:plen]
        try:
            kp.recv.decrypt_into(_NONCE.pack(ctr), src, None, dst)
        except InvalidTag:
            self.stats.transport_auth_failed += 1
            return None
        if not replay.accept(ctr):
            self.stats.transport_replayed += 1
            return None
        peer = kp.peer
        if peer.endpoint != addr:
            peer.endpoint = addr
            self.roams += 1  # the shell reports endpoints so a restart can reach peers
        if kp is peer.next:
            self._drop_keypair(peer.previous)
            peer.previous, peer.current, peer.next = peer.current, kp, None
            self._confirmed(peer)
            self.events.append(HandshakeCompleted(peer, False))
            self._handshake_complete(peer, now, initiator=False)
            self._send_staged(peer, now, keepalive_if_empty=False)
        # any authenticated packet received / traversal
        peer.t_new_handshake = None
        if peer.keepalive:
            peer.t_persistent = now + peer.keepalive
        peer.rx_bytes += n
        peer.rx_packets += 1
        if (
            kp.initiator
            and not peer.rekey_on_receive_sent
            and kp is peer.current
            and now - kp.created >= REKEY_ON_RECEIVE_AGE
        ):
            peer.rekey_on_receive_sent = True
            self.initiate(peer, now)
        if plen == 0:
            self.stats.keepalives_received += 1
            return peer, 0
        # data received: answer with a keepalive if we have nothing to send for a while
        if peer.t_keepalive is None:
            peer.t_keepalive = now + KEEPALIVE_TIMEOUT
        else:
            peer.need_another_keepalive = True
        if plen < 20 or (out[0] >> 4) != 4:
            if plen >= 40 and out[0] >> 4 == 6:
                return self._check_source6(peer, out, plen)
            self.stats.not_ipv4 += 1
            return None
        total, src = _IPV4_LEN_SRC.unpack_from(out, 0)
        if total > plen or total < 20:
            self.stats.invalid_datagrams += 1
            return None
        if self.allowed.lookup(src) is not peer:
            self.stats.source_rejected += 1
            return None
        self.stats.rx_packets += 1
        self.stats.rx_bytes += total
        return peer, total

    def _check_source6(
        self, peer: Peer, out: bytearray | memoryview, plen: int
    ) -> tuple[Peer, int] | None:
        """The IPv6 half of the inbound checks: whole packet, and a source routed back to
        the sending peer by its IPv6 AllowedIPs (longest prefix)."""
        payload, hi, lo = _IPV6_LEN_SRC.unpack_from(out, 0)
        total = 40 + payload
        if total > plen:
            self.stats.invalid_datagrams += 1
            return None
        if self.allowed.lookup6((hi << 64) | lo) is not peer:
            self.stats.source_rejected += 1
            return None
        self.stats.rx_packets += 1
        self.stats.rx_bytes += total
        return peer, total

    def encrypt(
        self,
        peer: Peer,
        buf: bytearray | memoryview,
        n: int,
        now: float,
        out: bytearray | memoryview,
    ) -> int:
        """Seal the `n`-byte packet at the start of `buf` into `out`; returns bytes written.

        `buf` should have up to 15 spare bytes after the packet for WireGuard's padding to a
        multiple of 16 (they are zeroed here); without them the packet is copied. Returns 0
        when there is no usable session: the packet is staged (bounded) and a handshake is
        started; it will come out of `outbox` once the session is up.
        """
        kp = peer.current
        if (
            kp is None
            or now - kp.created >= REJECT_AFTER_TIME
            or kp.send_counter >= REJECT_AFTER_MESSAGES
        ):
            self._stage(peer, bytes(memoryview(buf)[:n]), now)
            return 0
        padded = (n + 15) & ~15
        if padded > self.mtu:
            padded = max(n, self.mtu)
        mv = memoryview(buf)
        if padded != n:
            if len(mv) >= padded:
                mv[n:padded] = _ZEROS[: padded - n]
            else:
                mv = memoryview(bytes(mv[:n]) + _ZEROS[: padded - n])
        ctr = kp.send_counter
        kp.send_counter = ctr + 1
        o = memoryview(out)
        TRANSPORT_HDR.pack_into(o, 0, MSG_TRANSPORT, kp.remote_index, ctr)
        kp.send.encrypt_into(_NONCE.pack(ctr), mv[:padded], None, o[16 : 32 + padded])
        total = padded + 32
        peer.tx_bytes += total
        peer.tx_packets += 1
        # timers: any authenticated packet sent / traversal / data sent
        peer.t_keepalive = None
        if peer.keepalive:
            peer.t_persistent = now + peer.keepalive
        if n and peer.t_new_handshake is None:
            peer.t_new_handshake = (
                now
                + KEEPALIVE_TIMEOUT
                + REKEY_TIMEOUT
                + self._jitter.random() * REKEY_TIMEOUT_JITTER_MAX
            )
        if kp.initiator and (
            ctr + 1 >= REKEY_AFTER_MESSAGES or now - kp.created >= REKEY_AFTER_TIME
        ):
            self.initiate(peer, now)
        self.stats.tx_packets += 1
        self.stats.tx_bytes += n
        return total

    def _stage(self, peer: Peer, packet: bytes, now: float) -> None:
        if len(peer.staged) >= MAX_STAGED_PACKETS:
            peer.staged.popleft()
            self.stats.no_session_dropped += 1
        peer.staged.append(packet)
        self.initiate(peer, now)

    def _send_staged(self, peer: Peer, now: float, *, keepalive_if_empty: bool) -> None:
        if not peer.staged:
            if keepalive_if_empty:
                self.send_keepalive(peer, now)
            return
        staged = list(peer.staged)
        peer.staged.clear()
        for pkt in staged:
            self._encrypt_to_outbox(peer, pkt, now)

    def _encrypt_to_outbox(self, peer: Peer, packet: bytes, now: float) -> None:
        out = bytearray(len(packet) + 48)
        buf = bytearray(packet) + bytearray(16)
        n = self.encrypt(peer, buf, len(packet), now, out)
        if n and peer.endpoint is not None:
            self.outbox.append((out[:n], peer.endpoint))

    def send_keepalive(self, peer: Peer, now: float) -> None:
        self._encrypt_to_outbox(peer, b"", now)

    def _authenticated_received(self, peer: Peer, now: float) -> None:
        peer.t_new_handshake = None
        if peer.keepalive:
            peer.t_persistent = now + peer.keepalive

    def _authenticated_sent(self, peer: Peer, now: float) -> None:
        peer.t_keepalive = None
        if peer.keepalive:
            peer.t_persistent = now + peer.keepalive

    # ----------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        best: float | None = None
        for peer in self.peers.values():
            t = peer.next_deadline()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def handle_timer(self, now: float) -> None:
        for peer in list(self.peers.values()):
            self._peer_timers(peer, now)

    def _peer_timers(self, peer: Peer, now: float) -> None:
        if peer.t_retransmit is not None and peer.t_retransmit <= now:
            peer.t_retransmit = None
            if peer.handshake_attempts > MAX_HANDSHAKE_ATTEMPTS:
                self.stats.no_session_dropped += len(peer.staged)
                peer.staged.clear()
                # The handshake state is kept: a late response still completes it.
                peer.t_keepalive = None
                if peer.t_zero_keys is None:
                    peer.t_zero_keys = now + ZERO_KEYS_AFTER
                self.events.append(HandshakeGaveUp(peer))
            else:
                peer.handshake_attempts += 1
                self.initiate(peer, now, retry=True)
        if peer.t_keepalive is not None and peer.t_keepalive <= now:
            peer.t_keepalive = None
            self.send_keepalive(peer, now)
            if peer.need_another_keepalive:
                peer.need_another_keepalive = False
                peer.t_keepalive = now + KEEPALIVE_TIMEOUT
        if peer.t_new_handshake is not None and peer.t_new_handshake <= now:
            peer.t_new_handshake = None
            self.initiate(peer, now)
        if peer.t_zero_keys is not None and peer.t_zero_keys <= now:
            peer.t_zero_keys = None
            self._zero_peer(peer)
            self.events.append(KeysZeroed(peer))
        if peer.t_persistent is not None and peer.t_persistent <= now:
            peer.t_persistent = None
            self.send_keepalive(peer, now)

    def _zero_peer(self, peer: Peer) -> None:
        for kp in peer.keypairs():
            self._drop_keypair(kp)
        peer.current = peer.previous = peer.next = None
        self._drop_hs_index(peer)
        peer.handshake.zero()
        peer.t_retransmit = None
        self.stats.no_session_dropped += len(peer.staged)
        peer.staged.clear()
