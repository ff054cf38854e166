"""Ingress: the process that owns the WireGuard UDP socket and the Device.

It reads datagrams in batches, decrypts transport messages into a reusable buffer, hands
the plaintext to a data-plane sink, encrypts what the sink returns, and runs the device's
timers. Until the sharded data plane exists the sink answers ICMP echo to the gateway
address itself and counts everything else as not forwarded.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from wgslirp.net import icmp, ipv4
from wgslirp.wireguard.device import (
    Device,
    HandshakeCompleted,
    HandshakeGaveUp,
    KeysZeroed,
)
from wgslirp.wireguard.messages import MSG_TRANSPORT
from wgslirp.wireguard.peer import Peer

log = logging.getLogger("wgslirp.ingress")

RECV_BATCH = 256  # datagrams per readiness event before timers and sends get a turn
SOCKET_BUFFER = 8 << 20
MAX_DATAGRAM = 65535
_DST = struct.Struct(">I")


class PeerSpec(Protocol):
    """What ingress needs of a configured peer (config.PeerConfig satisfies it)."""

    @property
    def public_key(self) -> bytes: ...
    @property
    def preshared_key(self) -> bytes | None: ...
    @property
    def allowed_ips(self) -> tuple[str, ...]: ...
    @property
    def endpoint(self) -> tuple[str, int] | None: ...
    @property
    def keepalive(self) -> int: ...


class IngressSettings(Protocol):
    @property
    def private_key(self) -> bytes | None: ...
    @property
    def listen_addr(self) -> str: ...
    @property
    def listen_port(self) -> int: ...
    @property
    def mtu(self) -> int: ...
    @property
    def peers(self) -> tuple[PeerSpec, ...]: ...
    @property
    def gateway_ip(self) -> str | None: ...


class Sink(Protocol):
    """Data plane: takes a decrypted, source-checked IPv4 packet from `peer`."""

    def handle(self, peer: Peer, packet: memoryview, now: float) -> None: ...


class GatewayResponder:
    """Stand-in data plane: answers pings to the gateway address, counts the rest."""

    def __init__(self, gateway_ip: str | None, send: Callable[[Peer, bytearray, int, float], None]):
        self.gateway = ipv4.addr_to_int(gateway_ip) if gateway_ip else None
        self._send = send
        self._reply = bytearray(MAX_DATAGRAM + 16)
        self.echo_replies = 0
        self.not_forwarded = 0

    def handle(self, peer: Peer, packet: memoryview, now: float) -> None:
        if self.gateway is not None and _DST.unpack_from(packet, 16)[0] == self.gateway:
            n = icmp.echo_reply_into(packet, len(packet), self._reply)
            if n:
                self.echo_replies += 1
                self._send(peer, self._reply, n, now)
                return
        self.not_forwarded += 1


class Ingress:
    def __init__(
        self,
        settings: IngressSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sink: Sink | None = None,
    ) -> None:
        if settings.private_key is None:
            raise ValueError("ingress needs a private key (the CLI fills the embedded default)")
        self.clock = clock
        self.device = Device(settings.private_key)
        now = clock()
        for p in settings.peers:
            self.device.add_peer(
                p.public_key,
                preshared_key=p.preshared_key,
                allowed_ips=p.allowed_ips,
                endpoint=p.endpoint,
                keepalive=p.keepalive,
                now=now,
            )
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _size_buffers(self.sock)
        self.sock.bind((settings.listen_addr, settings.listen_port))
        self.sock.setblocking(False)
        self.address: tuple[str, int] = self.sock.getsockname()
        self._rx = bytearray(MAX_DATAGRAM)
        self._plain = bytearray(MAX_DATAGRAM)
        self._tx = bytearray(MAX_DATAGRAM + 64)
        self.sink: Sink = sink or GatewayResponder(settings.gateway_ip, self.send_packet)
        self.datagrams_received = 0
        self.internal_errors = 0
        self.send_errors = 0
        self._stopping = False
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # ------------------------------------------------------------------ sending

    def send_packet(self, peer: Peer, buf: bytearray, n: int, now: float) -> None:
        """Encrypt an IPv4 packet to `peer` and send it (or stage it until a handshake)."""
        k = self.device.encrypt(peer, buf, n, now, self._tx)
        if k and peer.endpoint is not None:
            self._sendto(memoryview(self._tx)[:k], peer.endpoint)
        self._flush_outbox()

    def _sendto(self, data: bytes | bytearray | memoryview, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, OSError):
            self.send_errors += 1

    def _flush_outbox(self) -> None:
        box = self.device.outbox
        if box:
            for data, addr in box:
                self._sendto(data, addr)
            box.clear()

    # ---------------------------------------------------------------- receiving

    def _drain_socket(self) -> None:
        sock, rx, plain, dev = self.sock, self._rx, self._plain, self.device
        rxv = memoryview(rx)
        plainv = memoryview(plain)
        sink = self.sink
        now = self.clock()
        for _ in range(RECV_BATCH):
            try:
                n, addr = sock.recvfrom_into(rx)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.internal_errors += 1  # e.g. ICMP errors queued on the socket
                continue
            self.datagrams_received += 1
            try:
                if n and rx[0] == MSG_TRANSPORT:
                    res = dev.decrypt(rxv[:n], addr, now, plain)
                    if res is not None and res[1]:
                        sink.handle(res[0], plainv[: res[1]], now)
                else:
                    dev.receive_handshake(rxv[:n], addr, now)
            except Exception:  # a bug must not take the router down with it
                self.internal_errors += 1
                log.exception("error processing a datagram from %s:%d", *addr)
        self._flush_outbox()

    # --------------------------------------------------------------------- loop

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\x00")

    def install_signal_handlers(self) -> None:
        def _handler(signum: int, _frame: object) -> None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)

    def run(self) -> None:
        self._sel.register(self.sock, selectors.EVENT_READ, "wg")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        dev = self.device
        while not self._stopping:
            now = self.clock()
            deadline = dev.get_timer()
            timeout = 1.0 if deadline is None else min(max(deadline - now, 0.0), 1.0)
            for key, _ in self._sel.select(timeout):
                if key.data == "wg":
                    self._drain_socket()
                else:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
            now = self.clock()
            deadline = dev.get_timer()
            if deadline is not None and deadline <= now:
                dev.handle_timer(now)
                self._flush_outbox()
            if dev.events:
                self._log_events(dev.events)
                dev.events.clear()

    def _log_events(self, events: Iterable[object]) -> None:
        from wgslirp.keys import encode_key

        for ev in events:
            if isinstance(ev, HandshakeCompleted):
                log.info("handshake completed with peer %s (%s)", encode_key(ev.peer.public_key),
                         "we initiated" if ev.initiator else "peer initiated")
            elif isinstance(ev, HandshakeGaveUp):
                log.warning("peer %s: handshake gave up after %d attempts",
                            encode_key(ev.peer.public_key), ev.peer.handshake_attempts)
            elif isinstance(ev, KeysZeroed):
                log.info("peer %s: session keys expired and discarded",
                         encode_key(ev.peer.public_key))

    def stats(self) -> dict[str, int]:
        out = dict(self.device.stats.as_dict())
        out["datagrams_received"] = self.datagrams_received
        out["internal_errors"] = self.internal_errors
        out["send_errors"] = self.send_errors
        if isinstance(self.sink, GatewayResponder):
            out["gateway_echo_replies"] = self.sink.echo_replies
            out["not_forwarded"] = self.sink.not_forwarded
        return out

    def close(self) -> None:
        self._sel.close()
        self.sock.close()
        self._wake_r.close()
        self._wake_w.close()


def _size_buffers(sock: socket.socket) -> None:
    """Ask for large socket buffers; as root the FORCE variants bypass rmem_max."""
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
        try:
            if force is None:
                raise PermissionError
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
