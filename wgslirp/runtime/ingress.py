"""Ingress: the process that owns the WireGuard UDP socket and the Device.

It reads datagrams in batches, decrypts transport messages, answers pings to the router's
own addresses, reassembles fragments, and hands each packet to the worker that owns its
flow through that worker's inbound ring; it drains the workers' outbound rings, encrypts
and sends. Handshake messages and device timers are handled here too, so keys never leave
this process.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from wgslirp.config import Config, PeerConfig, changed_settings
from wgslirp.keys import encode_key
from wgslirp.obs.metrics import MetricsBlock, PeerSample, Publisher
from wgslirp.obs.pcap import open_capture
from wgslirp.router.forward import (
    DELIVER,
    DELIVER_WHOLE,
    OVERLAY,
    REPLY,
    Forwarder,
    ForwardStats,
)
from wgslirp.runtime.loop import Loop
from wgslirp.runtime.readgate import CHECK_EVERY, ReadGate
from wgslirp.runtime.uapi_server import UapiServer
from wgslirp.runtime.worker import FORWARDS_MESSAGE
from wgslirp.shm.ring import BatchWriter, Consumer, Producer
from wgslirp.slirp.bridge_context import ROUTE_BY_DESTINATION
from wgslirp.wireguard import peerset
from wgslirp.wireguard.device import (
    Device,
    DeviceStats,
    HandshakeCompleted,
    HandshakeGaveUp,
    KeysZeroed,
)
from wgslirp.wireguard.endpoint import Addr, SockAddr, format_endpoint, from_sockaddr, to_sockaddr6
from wgslirp.wireguard.messages import MSG_TRANSPORT
from wgslirp.wireguard.peer import Peer
from wgslirp.wireguard.peerset import PeerSpec
from wgslirp.wireguard.timers import REJECT_AFTER_TIME

log = logging.getLogger("wgslirp.ingress")

STATE_REPORT_INTERVAL = 1.0  # seconds between session/endpoint reports to the supervisor
TIMER_CACHE = 0.05  # seconds a computed device deadline is reused
RECV_BATCH = 256  # datagrams per readiness event before other work gets a turn
DRAIN_BUDGET = 512  # packets per outbound ring per turn
SOCKET_BUFFER = 8 << 20
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: GSO segment size for a sendmsg of several datagrams
GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS
GSO_MAX_BYTES = 65507  # all datagrams of one GSO send together, like one UDP payload
MAX_DATAGRAM_OUT = 9216 + 48  # one sealed packet at the largest MTU we accept
MAX_DATAGRAM = 65535
# Socket addresses of a dual-stack socket remembered with their canonical endpoint (and back):
# a bound, since a flood from spoofed sources must not grow them; past it they start over.
ADDR_CACHE_MAX = 4096
UDP_GRO = 104  # linux/udp.h: coalesce a train of datagrams into one receive
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
_GRO_SIZE = struct.Struct("=i")
GRO_QUIET = 1024  # datagrams received without one train before GRO is switched off
GRO_PROBE_INTERVAL = 1.0  # seconds with GRO off before it is tried again
_DST = struct.Struct(">I")
_U16 = struct.Struct("=H")
_FRAG = struct.Struct(">H")


class IngressSettings(Protocol):
    @property
    def private_key(self) -> bytes | None: ...
    @property
    def mtu(self) -> int: ...
    @property
    def peers(self) -> tuple[PeerSpec, ...]: ...
    @property
    def gateway_ip(self) -> str | None: ...
    @property
    def dns_ip(self) -> str | None: ...
    @property
    def gateway_ip6(self) -> str | None: ...
    @property
    def dns_ip6(self) -> str | None: ...
    @property
    def ip_ttl(self) -> int: ...
    @property
    def overlay_routing(self) -> bool: ...
    @property
    def overlay_exclude_cidrs(self) -> tuple[str, ...]: ...
    @property
    def interface_name(self) -> str: ...
    @property
    def pcap_path(self) -> str | None: ...
    @property
    def state_dir(self) -> str: ...


def open_wg_socket(
    addr: str, port: int, *, make: Callable[[int, int], socket.socket] = socket.socket
) -> socket.socket:
    """The WireGuard socket, opened by the supervisor so a restarted ingress inherits it.

    `::` is one dual-stack socket (IPV6_V6ONLY off, whatever net.ipv6.bindv6only says):
    IPv4 peers arrive on it as IPv4-mapped addresses, which the ingress turns back into
    IPv4 endpoints. On a host without IPv6 (a kernel booted with ipv6.disable=1 has no
    AF_INET6 sockets at all) `::` falls back to 0.0.0.0 with a warning: it asks for every
    address, and the IPv4 ones are all there are. A specific IPv6 address listens on IPv6
    only. `make` is the socket constructor (a test replaces it to play such a host).
    """
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        sock = make(family, socket.SOCK_DGRAM)
    except OSError as exc:
        if addr == "::" and exc.errno == errno.EAFNOSUPPORT:
            log.warning("no IPv6 on this host (%s): WG_LISTEN_ADDR=:: listens on 0.0.0.0", exc)
            return open_wg_socket("0.0.0.0", port, make=make)
        raise
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if addr == "::" else 1)
        _size_buffers(sock)
        sock.bind((addr, port))
    except OSError as exc:
        sock.close()
        if addr == "::" and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            log.warning("cannot bind [::] (%s): WG_LISTEN_ADDR=:: listens on 0.0.0.0", exc)
            return open_wg_socket("0.0.0.0", port, make=make)
        raise
    sock.setblocking(False)
    return sock


def local_endpoint(sock: socket.socket) -> Addr:
    """The socket's own address as (host, port), whichever family it has."""
    name = sock.getsockname()
    return (str(name[0]), int(name[1]))


def forwards_of(settings: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (getattr(settings, "forward_tcp", ()), getattr(settings, "forward_udp", ()))


class GroSwitch:
    """UDP GRO on the WireGuard socket, on only while it pays.

    With UDP_GRO a train of datagrams from one sender (a GSO send, or what NIC GRO
    coalesced) is one recvmsg: ~0.15 µs a datagram instead of ~1.8 µs for recvfrom_into
    (measured here, 128-byte datagrams in trains of 32). But recvmsg with room for the
    segment size costs ~2.9 µs for a datagram that came alone, so after GRO_QUIET
    datagrams without a train it is switched off and recvfrom_into used again, and every
    GRO_PROBE_INTERVAL it is tried for another GRO_QUIET. Coalesced datagrams queued
    before the switch are read with recvmsg until the queue is once empty (`reading`).
    """

    __slots__ = ("on", "probe_at", "quiet", "reading")

    def __init__(self, now: float) -> None:
        self.on = True  # the socket option
        self.reading = True  # receive with recvmsg (on, or coalesced data may be queued)
        self.quiet = 0
        self.probe_at = now

    @classmethod
    def try_enable(cls, sock: socket.socket, now: float) -> GroSwitch | None:
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError:
            return None  # a kernel before 5.0: one datagram per receive
        return cls(now)

    def switch(self, sock: socket.socket, on: bool, now: float) -> None:
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1 if on else 0)
        except OSError:
            return
        self.on = on
        self.quiet = 0
        if on:
            self.reading = True
        else:
            self.probe_at = now + GRO_PROBE_INTERVAL

    def segment_size(
        self, anc: list[tuple[int, int, bytes]], n: int, sock: socket.socket, now: float
    ) -> int:
        """The datagram size of what one recvmsg returned (n itself for a lone one)."""
        for level, kind, data in anc:
            if level == SOL_UDP and kind == UDP_GRO:
                self.quiet = 0
                seg: int = _GRO_SIZE.unpack_from(data)[0]
                return seg if seg > 0 else n
        if self.on:
            self.quiet += 1
            if self.quiet >= GRO_QUIET:
                self.switch(sock, False, now)
        return n


class Ingress:
    def __init__(
        self,
        settings: IngressSettings,
        sock: socket.socket,
        loop: Loop,
        to_workers: list[Producer],
        from_workers: list[Consumer],
        to_workers_big: list[Producer] | None = None,
        metrics: MetricsBlock | None = None,
        reload: Callable[[], IngressSettings] | None = None,
        peer_indices: Mapping[bytes, int] | None = None,
        next_peer_index: int = 1,
        resume: Iterable[tuple[bytes, float]] = (),
    ) -> None:
        """`peer_indices`/`next_peer_index`: what a previous ingress numbered its peers, so a
        replacement keeps the numbers the workers' flows are keyed by. `resume`: (public key,
        unix time of its last handshake) of the peers a previous ingress had sessions with;
        their sessions died with it, so this one initiates to each at once instead of
        leaving them dark until their own timers give up on the old keys (~15 s)."""
        if settings.private_key is None:
            raise ValueError("ingress needs a private key (the CLI fills the embedded default)")
        self.loop = loop
        self.clock = loop.clock
        self.device = Device(settings.private_key, mtu=settings.mtu)
        now = self.clock()
        known = peer_indices or {}
        self.device.reserve_peer_indices(next_peer_index)
        peerset.add_configured(self.device, settings.peers, known, now)
        self.sock = sock
        self.address: Addr = local_endpoint(sock)
        # A dual-stack socket's addresses are translated (wireguard/endpoint.py) between
        # what the kernel says and the canonical endpoint the device keeps; an AF_INET
        # socket's are canonical already and skip it all. The cost, one dict lookup per
        # datagram received and per send run: router CPU per GB of TCP through the tunnel
        # (200 MB each way, PROCESSOR_WORKERS=0, median of 4 on the 2-core machine) was
        # 9.73 s listening on [::] against 9.66 s on 127.0.0.1, within the run-to-run
        # spread (8.9-10.4 s).
        self._v6 = sock.family == socket.AF_INET6
        self._from_sa: dict[SockAddr, Addr] = {}
        self._to_sa: dict[Addr, SockAddr] = {}
        self._rx = bytearray(MAX_DATAGRAM)
        self._plain = bytearray(MAX_DATAGRAM + 64)
        self._tx = bytearray(MAX_DATAGRAM + 64)
        self._batch = memoryview(bytearray(GSO_MAX_BYTES + MAX_DATAGRAM_OUT))
        self._gso = True
        self._rx_bufs = [self._rx]
        self._gro = GroSwitch.try_enable(sock, self.clock())
        self.writers = [BatchWriter(p) for p in to_workers]
        # Reassembled datagrams larger than a slot travel on a small ring of 64 KiB slots.
        self.big_writers = [BatchWriter(p) for p in (to_workers_big or [])]
        self.slot_size = self.writers[0].slot_size if self.writers else 0
        # Back-pressure (runtime/readgate.py): read only while the rings have room, so
        # what a busy worker cannot take stays in the socket instead of being decrypted
        # and dropped.
        self._gate = ReadGate(self.writers) if self.writers else None
        self._muted = False
        self._next_check = 0.0
        self.nworkers = len(self.writers)
        # Peers removed whose "forget" message a full ring has not taken yet: (worker, peer)
        self._forget: list[tuple[int, int, int]] = []  # (ring set, worker, peer index)
        self.device.on_peer_removed.append(self._peer_removed)
        self._last_shard = 0
        self._timer: float | None = None
        self._timer_fresh_until = 0.0
        self._reload = reload
        self._reloading: threading.Thread | None = None
        self._reload_result: tuple[str, Any] | None = None  # set by the reload thread
        # Asked for again while a reload was reading: the file may have changed after it was
        # read, so one more reload follows (however many requests came meanwhile).
        self._reload_again = False
        self._started_with = settings  # what reload compares restart-only settings against
        self.forwards = forwards_of(settings)  # the workers listen on these (after reloads)
        self.forward: Forwarder[Peer] = Forwarder(
            self.device.route,
            nworkers=self.nworkers,
            mtu=settings.mtu,
            ttl=settings.ip_ttl,
            own=[
                a
                for a in (
                    settings.gateway_ip,
                    settings.dns_ip,
                    settings.gateway_ip6,
                    settings.dns_ip6,
                )
                if a
            ],
            gateway=settings.gateway_ip,
            gateway6=settings.gateway_ip6,
            routes6=self.device.route6,
            overlay=settings.overlay_routing,
            overlay_exclude=settings.overlay_exclude_cidrs,
        )
        self._next_error_log = 0.0
        self.from_workers = from_workers
        self.datagrams_received = 0
        self.internal_errors = 0
        self.send_errors = 0
        self.unknown_peer_index = 0
        loop.register(sock, self._on_readable)
        for cons in from_workers:
            loop.add_ring(cons)
        loop.hooks.append(self._drain_workers)
        loop.hooks.append(self.after_turn)
        loop.timers.append(self)
        loop.timers.append(self.forward)
        loop.timers.append(_Unmuter(self))
        # wg(8) and `wgslirp peer` talk to the Device here (/var/run/wireguard where
        # permitted, the state directory always); each server closes when the loop stops
        self.uapi = UapiServer.start_all(
            settings.interface_name,
            settings.state_dir,
            self.device,
            loop,
            listen_port=self.address[1],
        )
        # Called after the peer set or key changed at run time (wg set, reload): the
        # supervisor keeps the result so a restarted ingress does not revert to the
        # configuration it was started with.
        self.config_changed: list[Callable[[], None]] = []
        for server in self.uapi:
            server.on_change.append(self._config_changed)
        self._roams_reported = 0
        self._sessions_changed = False
        self._next_state_report = 0.0
        self._resume(resume, now)
        # WG_PCAP: the code path is chosen here, once; without a capture nothing is wrapped.
        self.pcap = pcap = open_capture(settings.pcap_path)
        self._encrypt = self.device.encrypt if pcap is None else pcap.tap(self.device.encrypt)
        self._deliver_pkt = self._deliver if pcap is None else pcap.tap(self._deliver)
        if pcap is not None:
            loop.timers.append(pcap)
        if metrics is not None:
            self.publisher: Publisher | None = Publisher(
                metrics.ingress,
                self.stats,
                lambda: loop.turns,
                peers=self.peer_samples,
                block=metrics,
            )
            loop.timers.append(self.publisher)
        else:
            self.publisher = None

    # ------------------------------------------------------------------ sending

    def send_packet(self, peer: Peer, buf: bytearray | memoryview, n: int, now: float) -> None:
        """Encrypt an IPv4 packet to `peer` and send it (or stage it until a handshake)."""
        k = self._encrypt(peer, buf, n, now, self._tx)
        if k and peer.endpoint is not None:
            self._sendto(memoryview(self._tx)[:k], peer.endpoint)

    def _sendto(self, data: bytes | bytearray | memoryview, addr: Addr) -> None:
        try:
            self.sock.sendto(data, self._sockaddr(addr) if self._v6 else addr)
        except OSError:  # also an IPv6 endpoint on an IPv4 socket (gaierror)
            self.send_errors += 1

    def _sockaddr(self, addr: Addr) -> SockAddr:
        sa = self._to_sa.get(addr)
        if sa is None:
            if len(self._to_sa) >= ADDR_CACHE_MAX:
                self._to_sa.clear()
            try:
                sa = to_sockaddr6(addr)
            except OSError:  # a zone naming no interface (any more): sendto will say so
                return addr
            self._to_sa[addr] = sa
        return sa

    def _endpoint_of(self, sa: SockAddr) -> Addr:
        addr = self._from_sa.get(sa)
        if addr is None:
            if len(self._from_sa) >= ADDR_CACHE_MAX:
                self._from_sa.clear()
            addr = self._from_sa[sa] = from_sockaddr(sa)
        return addr

    def _flush_outbox(self) -> None:
        box = self.device.outbox
        if box:
            for data, addr in box:
                self._sendto(data, addr)
            box.clear()

    def _drain_workers(self, now: float) -> None:
        """Encrypt what the workers queued and send it. Runs of equal-sized datagrams to
        the same endpoint (a bulk download is exactly that) leave in one sendmsg with UDP
        GSO: the kernel splits them into datagrams, so the peer sees nothing different but
        we pay one syscall per run instead of one per packet."""
        by_index = self.device.by_index
        encrypt = self._encrypt
        batch = self._batch
        for cons in self.from_workers:
            k = cons.available()
            if not k:
                continue
            if k > DRAIN_BUDGET:
                k = DRAIN_BUDGET
            off = 0
            seg = 0
            count = 0
            dest: Addr | None = None
            for i in range(k):
                slot, length, peer_index = cons.peek_slot(i)
                peer = by_index.get(peer_index)
                if peer is None:
                    if peer_index == ROUTE_BY_DESTINATION and length >= 20:
                        # an inbound forward's first SYN: the worker cannot know the peer
                        peer = self.device.route(int.from_bytes(slot[16:20], "big"))
                    if peer is None:
                        self.unknown_peer_index += 1  # removed while its packets were queued
                        continue
                n = encrypt(peer, slot, length, now, batch[off:])
                if not n or peer.endpoint is None:
                    continue
                if count and (
                    peer.endpoint != dest
                    or n > seg
                    or count >= GSO_MAX_SEGMENTS
                    or off + n > GSO_MAX_BYTES
                ):
                    self._send_run(batch, off, seg, count, dest)
                    batch[0:n] = bytes(batch[off : off + n])  # may overlap
                    off = count = 0
                if not count:
                    seg, dest = n, peer.endpoint
                off += n
                count += 1
                if n < seg:  # a short datagram can only end a run
                    self._send_run(batch, off, seg, count, dest)
                    off = count = 0
            if count:
                self._send_run(batch, off, seg, count, dest)
            cons.release(k)
        self._flush_outbox()

    def _send_run(
        self, batch: memoryview, size: int, seg: int, count: int, dest: Addr | None
    ) -> None:
        assert dest is not None
        sa = self._sockaddr(dest) if self._v6 else dest
        try:
            if count == 1 or not self._gso:
                if count == 1:
                    self.sock.sendto(batch[:size], sa)
                else:
                    for o in range(0, size, seg):
                        self.sock.sendto(batch[o : min(o + seg, size)], sa)
            else:
                self.sock.sendmsg([batch[:size]], [(SOL_UDP, UDP_SEGMENT, _U16.pack(seg))], 0, sa)
        except OSError as exc:
            if count > 1 and self._gso:
                if exc.errno in (errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT):
                    self._gso = False  # no GSO on this kernel: one datagram per call
                    log.info("UDP GSO unavailable (%s): sending datagrams one by one", exc)
                # Otherwise (e.g. a segment over one destination's path MTU) only this run
                # goes out datagram by datagram.
                gso, self._gso = self._gso, False
                try:
                    self._send_run(batch, size, seg, count, dest)
                finally:
                    self._gso = gso
                return
            self.send_errors += count

    # ---------------------------------------------------------------- receiving

    def _on_readable(self, now: float, _mask: int = 0) -> None:
        sock, rx, dev = self.sock, self._rx, self.device
        rxv = memoryview(rx)
        plain = self._plain
        plainv = memoryview(plain)
        deliver = self._deliver_pkt
        debug = log.isEnabledFor(logging.DEBUG)
        writers = self.writers
        v6 = self._v6
        gro = self._gro
        if gro is not None and not gro.reading and now >= gro.probe_at:
            gro.switch(sock, True, now)
        budget = RECV_BATCH
        if self._gate is not None:
            budget = self._gate.credit(now, RECV_BATCH)
            if budget <= 0:
                self._mute(now)
                return
        while budget > 0:
            try:
                if gro is not None and gro.reading:
                    n, anc, _flags, addr = sock.recvmsg_into(self._rx_bufs, _GRO_CMSG_SPACE)
                    seg = gro.segment_size(anc, n, sock, now)
                else:
                    n, addr = sock.recvfrom_into(rx)
                    seg = n
            except (BlockingIOError, InterruptedError):
                if gro is not None and not gro.on:
                    gro.reading = False  # nothing coalesced is left in the queue
                break
            except OSError:
                self.internal_errors += 1  # e.g. ICMP errors queued on the socket
                budget -= 1
                continue
            if v6:
                addr = self._endpoint_of(addr)
            off = 0
            while True:  # one datagram, or a GRO train of `seg`-byte ones (the last shorter)
                m = n - off if n - off < seg else seg
                budget -= 1
                self.datagrams_received += 1
                try:
                    if m and rx[off] == MSG_TRANSPORT:
                        # Decrypt straight into a slot of the ring the last packet went to:
                        # a bulk flow keeps hitting the same worker, so the plaintext is
                        # never copied; a guess that turns out wrong costs one copy.
                        slot = writers[self._last_shard].reserve() if writers else None
                        if slot is not None and m - 32 <= len(slot):
                            res = dev.decrypt(rxv[off : off + m], addr, now, slot)
                            if res is not None and res[1]:
                                deliver(res[0], slot, res[1], now, True)
                        else:
                            res = dev.decrypt(rxv[off : off + m], addr, now, plain)
                            if res is not None and res[1]:
                                deliver(res[0], plainv, res[1], now, False)
                    else:
                        got = dev.receive_handshake(rxv[off : off + m], addr, now)
                        if debug:
                            log.debug(
                                "handshake message type %d from %s: %s",
                                rx[off] if m else 0,
                                format_endpoint(addr),
                                "peer " + encode_key(got.public_key) if got else "dropped",
                            )
                except Exception:  # a bug must not take the router down with it
                    self.internal_errors += 1
                    if now >= self._next_error_log:
                        self._next_error_log = now + 10.0
                        log.exception(
                            "error processing a datagram from %s (more errors in "
                            "the next 10 s are only counted)",
                            format_endpoint(addr),
                        )
                off += m
                if off >= n:
                    break
        for w in self.writers:
            w.flush()
        for w in self.big_writers:
            w.flush()
        self._flush_outbox()
        if self._forget:
            self._send_forget()

    def _mute(self, now: float) -> None:
        """A ring is full: stop watching the socket (a readable socket not read would make
        the loop spin) until the gate opens again."""
        self.loop.unregister(self.sock)
        self._muted = True
        self._next_check = now + CHECK_EVERY

    def try_unmute(self, now: float) -> None:
        if not self._muted:
            return
        assert self._gate is not None
        if self._gate.ready(now):
            self._muted = False
            self.loop.register(self.sock, self._on_readable)
        else:
            self._next_check = now + CHECK_EVERY

    def _deliver(self, peer: Peer, pkt: memoryview, n: int, now: float, in_slot: bool) -> None:
        """Act on the forwarder's verdict for one decrypted packet; `in_slot` says it
        already sits in the reserved slot of `writers[_last_shard]`."""
        fwd = self.forward
        verdict = fwd.route(peer, pkt, n, now)
        if verdict == DELIVER:
            shard = fwd.shard
            if in_slot and shard == self._last_shard:
                self.writers[shard].commit(n, peer.index)
                return
        elif verdict == DELIVER_WHOLE:
            shard = fwd.shard
            pkt, n = memoryview(fwd.whole), len(fwd.whole)
        elif verdict == REPLY:
            for reply in fwd.replies:
                self.send_packet(peer, reply, len(reply), now)
            return
        elif verdict == OVERLAY:
            assert fwd.target is not None
            self.send_packet(fwd.target, pkt, n, now)
            return
        else:  # DROP, HELD
            return
        self._last_shard = shard
        if n > self.slot_size and self.big_writers:
            self.big_writers[shard].push(pkt, n, peer.index)
        else:
            self.writers[shard].push(pkt, n, peer.index)

    def finish(self, now: float) -> None:
        """Stopping, after the workers: send what they queued last (the RSTs of the guest
        connections they reset), so no guest is left waiting on a dead connection."""
        self._drain_workers(now)

    def close(self) -> None:
        """Flush and close the packet capture, if any (the loop has stopped)."""
        if self.pcap is not None:
            self.pcap.close()

    def reload(self, now: float) -> None:
        """SIGHUP: re-read the configuration and apply the peer set (and private key) live,
        like `wg syncconf`; settings that need a restart are reported, not half-applied.

        Reading happens in a thread: it may resolve peer host names, and a slow resolver
        must not stall forwarding (nor look like a hung loop to the supervisor). The result
        is applied by the loop, in `after_turn`.
        """
        if self._reload is None:
            return
        if self._reloading is not None and (
            self._reloading.is_alive() or self._reload_result is not None
        ):
            if not self._reload_again:
                log.info("reload already in progress; another one follows it")
            self._reload_again = True
            return
        load = self._reload

        def read() -> None:
            try:
                self._reload_result = ("ok", load())
            except Exception as exc:  # ConfigError and friends: keep the old config
                self._reload_result = ("error", exc)

        self._reloading = threading.Thread(target=read, name="reload", daemon=True)
        self._reloading.start()

    def _finish_reload(self, now: float) -> None:
        result, self._reload_result = self._reload_result, None
        if result is None:
            return
        if self._reloading is not None:
            self._reloading.join(1.0)  # setting the result was its last act
        if result[0] == "error":
            log.error("reload failed, keeping the running configuration: %s", result[1])
        else:
            self.apply_reload(result[1], now)
        if self._reload_again:
            self._reload_again = False
            self.reload(now)

    def apply_reload(self, new: IngressSettings, now: float) -> None:
        if isinstance(new, Config) and isinstance(self._started_with, Config):
            waiting = changed_settings(self._started_with, new)
            if waiting:
                log.warning(
                    "reload: %s changed; that takes effect only after a restart "
                    "(peers and the private key were applied)",
                    ", ".join(waiting),
                )
        dev = self.device
        req = peerset.sync_request(dev, new.private_key, new.peers)
        before = set(dev.peers)
        try:
            for line in peerset.apply_set(dev, req, now=now):
                log.info("reload: %s", line)
        except peerset.PeerSetError as exc:
            log.error("reload stopped part-way: %s", exc)
        after = set(dev.peers)
        updated = sum(1 for pc in req.peers if pc.update_only and pc.public_key in after)
        log.info(
            "reload: %d peer(s) added, %d removed, %d updated",
            len(after - before),
            len(before - after),
            updated,
        )
        self._flush_outbox()
        forwards = forwards_of(new)
        if forwards != self.forwards:
            self.forwards = forwards
            self._send_forwards(forwards)
        self._config_changed()

    def _send_forwards(self, forwards: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
        """A reload changed WG_FORWARD_*: tell every worker (see worker.FORWARDS_MESSAGE)."""
        msg = FORWARDS_MESSAGE + json.dumps({"tcp": forwards[0], "udp": forwards[1]}).encode()
        writers = self.big_writers or self.writers
        for w, writer in enumerate(writers):
            if len(msg) <= writer.slot_size and writer.push(
                memoryview(msg), len(msg), ROUTE_BY_DESTINATION
            ):
                writer.flush()
            else:
                log.error("reload: worker %d could not be given the new forwards", w)
        log.info(
            "reload: forwarding %d TCP and %d UDP entries",
            len(forwards[0]),
            len(forwards[1]),
        )

    def _config_changed(self) -> None:
        for hook in self.config_changed:
            try:
                hook()
            except Exception:
                log.exception(
                    "could not hand the changed configuration to the supervisor; "
                    "a restart of this process would revert the change"
                )

    def effective_peers(self) -> tuple[PeerConfig, ...]:
        """The peers as they are now (after wg set / reload), in configuration form."""
        dev = self.device
        cidrs: dict[int, list[str]] = {}
        for cidr, owner in dev.allowed:  # one pass, not one trie walk per peer
            cidrs.setdefault(owner.index, []).append(cidr)
        return tuple(
            PeerConfig(
                public_key=p.public_key,
                preshared_key=None if p.handshake.psk == bytes(32) else p.handshake.psk,
                allowed_ips=tuple(sorted(cidrs.get(p.index, ()))),
                endpoint=p.endpoint,
                keepalive=p.keepalive,
            )
            for p in dev.peers.values()
        )

    def active_peers(self) -> list[tuple[bytes, float]]:
        """(public key, unix time of the last handshake) of every peer that had one."""
        return [
            (k, p.last_handshake_wall)
            for k, p in self.device.peers.items()
            if p.last_handshake_wall > 0
        ]

    def _resume(self, resume: Iterable[tuple[bytes, float]], now: float) -> None:
        wall = time.time()
        started = 0
        for key, last in resume:
            peer = self.device.peers.get(key)
            if peer is not None and wall - last < REJECT_AFTER_TIME:
                started += self.device.initiate(peer, now)
        if started:
            log.info("re-establishing %d session(s) the previous ingress had", started)
            self._flush_outbox()

    def _report_sessions(self, now: float) -> None:
        """Sessions and endpoints change without any configuration change (handshakes,
        roaming); the supervisor keeps them for a replacement at most once a second."""
        dev = self.device
        if (self._sessions_changed or dev.roams != self._roams_reported) and (
            now >= self._next_state_report
        ):
            self._sessions_changed = False
            self._roams_reported = dev.roams
            self._next_state_report = now + STATE_REPORT_INTERVAL
            self._config_changed()

    def peer_indices(self) -> dict[bytes, int]:
        return {k: p.index for k, p in self.device.peers.items()}

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """The device's next deadline, recomputed at most every TIMER_CACHE seconds: it
        walks every peer, and the loop asks twice per turn. WireGuard's timers are seconds
        long, so acting up to TIMER_CACHE late changes nothing."""
        now = self.clock()
        if now >= self._timer_fresh_until:
            self._timer = self.device.get_timer()
            self._timer_fresh_until = now + TIMER_CACHE
        return self._timer

    def _peer_removed(self, peer: Peer) -> None:
        """A removed peer's flows must not hold host sockets (and flow-cap places) until
        they idle out: every worker gets a zero-length message carrying the peer index.
        Peer indices are never reused, so a late message cannot hit a newer peer."""
        # On both rings of each worker: a large packet of this peer queued on the big ring
        # before the removal is handled after the small ring's message, and could open a
        # flow again; the big ring's own message, behind it, closes that too.
        rings = [self.writers, *([self.big_writers] if self.big_writers else [])]
        self._forget.extend(
            (r, w, peer.index) for r in range(len(rings)) for w in range(self.nworkers)
        )
        self._send_forget()

    def _send_forget(self) -> None:
        rings = [self.writers, *([self.big_writers] if self.big_writers else [])]
        left = []
        for r, w, index in self._forget:
            writer = rings[r][w]
            if writer.push(memoryview(b""), 0, index):
                writer.flush()
            else:
                left.append((r, w, index))
        self._forget = left

    def handle_timer(self, now: float) -> None:
        self._timer_fresh_until = 0.0
        self.device.handle_timer(now)
        if self._forget:
            self._send_forget()
        self._flush_outbox()
        if self.device.events:
            self._log_events(self.device.events)
            self.device.events.clear()

    def _log_events(self, events: Iterable[object]) -> None:
        for ev in events:
            if isinstance(ev, HandshakeCompleted):
                self._sessions_changed = True
                log.info(
                    "handshake completed with peer %s (%s)",
                    encode_key(ev.peer.public_key),
                    "we initiated" if ev.initiator else "peer initiated",
                )
            elif isinstance(ev, HandshakeGaveUp):
                log.warning(
                    "peer %s: handshake gave up after %d attempts",
                    encode_key(ev.peer.public_key),
                    ev.peer.handshake_attempts,
                )
            elif isinstance(ev, KeysZeroed):
                log.info(
                    "peer %s: session keys expired and discarded", encode_key(ev.peer.public_key)
                )

    def after_turn(self, now: float) -> None:
        if self._muted:
            self.try_unmute(now)
        if self._reload_result is not None:
            self._finish_reload(now)
        if self.config_changed:
            self._report_sessions(now)
        if self.device.events:
            self._log_events(self.device.events)
            self.device.events.clear()

    def stats(self) -> dict[str, int]:
        out = dict(self.device.stats.as_dict())
        out["datagrams_received"] = self.datagrams_received
        out["internal_errors"] = self.internal_errors
        out["send_errors"] = self.send_errors
        out["ring_full_dropped"] = sum(w.dropped for w in (*self.writers, *self.big_writers))
        gate = self._gate
        out["read_pauses"] = gate.pauses if gate else 0
        out["read_paused_ms"] = int(gate.paused_seconds * 1000) if gate else 0
        out["ring_passed_over"] = gate.passed_over if gate else 0
        out["fragments_reassembled_timeouts"] = self.forward.reassembler.timed_out
        out["unknown_peer_index"] = self.unknown_peer_index
        out["peers"] = len(self.device.peers)
        out.update(self.forward.stats.as_dict())
        return out

    def peer_samples(self) -> list[PeerSample]:
        return [
            PeerSample(
                p.public_key,
                p.index,
                p.rx_bytes,
                p.tx_bytes,
                p.rx_packets,
                p.tx_packets,
                p.handshakes,
                p.last_handshake_wall,
            )
            for p in self.device.peers.values()
        ]


INGRESS_COUNTERS: tuple[str, ...] = (
    *DeviceStats.__annotations__,
    "datagrams_received",
    "internal_errors",
    "send_errors",
    "ring_full_dropped",
    "read_pauses",
    "read_paused_ms",
    "ring_passed_over",
    "fragments_reassembled_timeouts",
    "unknown_peer_index",
    "peers",
    *ForwardStats.names(),
)


class _Unmuter:
    """The loop's timer for a muted socket: looks at the rings every CHECK_EVERY, also when
    no doorbell or packet wakes the loop."""

    def __init__(self, ingress: Ingress) -> None:
        self._ingress = ingress

    def get_timer(self) -> float | None:
        ing = self._ingress
        return ing._next_check if ing._muted else None

    def handle_timer(self, now: float) -> None:
        self._ingress.try_unmute(now)


def _size_buffers(sock: socket.socket) -> None:
    """Ask for large socket buffers; as root the FORCE variants bypass rmem_max."""
    for force, plain in (
        (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
        (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF),
    ):
        try:
            if force is None:
                raise PermissionError
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
