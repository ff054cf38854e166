"""TCP bridge: each guest connection is a TcpEndpoint (sans-I/O) plus a host TCP socket.

The guest's SYN starts a non-blocking connect to the destination. The SYN is answered only
once the connect is decided, or after TCP_FAST_DIAL_MS at the latest: a refused port is then
reported the way TCP_ERROR_SIGNAL says instead of a SYN-ACK followed by a reset. The default,
`mirror`, answers with what the host itself was told (see failure_signal), so the guest sees
exactly what it would see talking to the host directly.

Backpressure both ways with bounded memory: bytes from the guest wait in the endpoint's
receive buffer until the host socket takes them (the guest's window shrinks meanwhile), and
the host socket is not read while the endpoint's send buffer is full (the host's TCP window
shrinks meanwhile). Nothing is ever dropped for lack of room.
"""

from __future__ import annotations

import dataclasses
import errno
import heapq
import itertools
import logging
import os
import selectors
import socket
import struct
from collections.abc import Callable, Hashable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Final, Protocol

from wgslirp.net import icmp, ipv4, ipv6, tcp
from wgslirp.net.checksum import fold, ones_sum
from wgslirp.net.ipv4 import PROTO_TCP
from wgslirp.obs.counters import Counters
from wgslirp.slirp.bridge_context import (
    ROUTE_BY_DESTINATION,
    BridgeContext,
    SocketHandler,
    sock_addr,
)
from wgslirp.slirp.nat_table import Flow, FlowTable
from wgslirp.slirp.policy import EgressPolicy, Verdict
from wgslirp.slirp.tcp_buffers import SendBudget
from wgslirp.slirp.tcp_endpoint import TcpEndpoint, TcpParams, synack_into

if TYPE_CHECKING:
    from wgslirp.slirp.forward_bridge import ForwardTally

log = logging.getLogger("wgslirp.tcp")

TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_ACK: Final = 0x10
_PORTS = struct.Struct(">HH")
_ADDRS6 = struct.Struct(">QQQQ")  # an IPv6 header's source and destination, as halves
_NH_TCP: Final = ipv6.NH_TCP
READ_RESUME_FRACTION = 4  # resume reading the host once a quarter of the send buffer is free
RECV_CHUNK = 256 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)
STRAY_RST_INTERVAL = 0.2  # seconds between RSTs answering stray segments of one tuple
STRAY_RST_MEMORY = 4096  # tuples remembered for that (oldest forgotten first)

TcpKey = tuple[int, int, int, int, int]


def _no_handler(_now: float, _mask: int) -> None:
    pass


class TcpFlow(Flow):
    __slots__ = (
        "connecting",
        "dial_deadline",
        "ep",
        "events",
        "forward",
        "handler",
        "heap_at",
        "host_eof",
        "read_paused",
        "shut_wr",
        "slot",
        "sock",
        "syn",
        "synack_sent",
    )

    def __init__(
        self, key: TcpKey, peer: int, now: float, ep: TcpEndpoint, sock: socket.socket
    ) -> None:
        super().__init__(key, peer, now)
        self.ep = ep
        self.sock = sock
        self.connecting = True
        self.synack_sent = False
        self.syn: bytes | None = None  # the guest's SYN, quoted if the dial fails
        self.dial_deadline = 0.0
        self.events = 0
        self.read_paused = False
        self.host_eof = False
        self.shut_wr = False
        self.heap_at = float("inf")
        self.handler: SocketHandler = _no_handler
        self.slot = -1  # this connection's entry in the ConnectionLog
        self.forward: ForwardTally | None = None  # an inbound forward's connection


class _Unsettled:
    """A connection answered in `TcpBridge._answer` and not built yet (`_settle`)."""

    __slots__ = ("at", "iss", "key", "peer", "sock", "syn", "v6", "writer")

    def __init__(
        self,
        key: TcpKey,
        peer: int,
        sock: socket.socket,
        iss: int,
        syn: bytes,
        at: float,
        v6: bool,
        writer: tcp.SegmentWriter | tcp.SegmentWriter6 | None,
    ) -> None:
        self.key = key
        self.peer = peer
        self.sock = sock
        self.iss = iss
        self.syn = syn
        self.at = at  # the SYN's (and the SYN-ACK's) time
        self.v6 = v6
        self.writer = writer  # None: the SYN-ACK is the endpoint's to send


class ConnectionLog(Protocol):
    """Where open connections are recorded for a replacement worker (shm/registry.py)."""

    def record(
        self, peer: int, guest: int, gport: int, remote: int, rport: int, iss: int, irs: int
    ) -> int: ...

    def remove(self, slot: int) -> None: ...

    def clear(self) -> None: ...


class TcpBridge:
    def __init__(
        self,
        ctx: BridgeContext,
        policy: EgressPolicy,
        table: FlowTable[TcpFlow],
        params: TcpParams,
        *,
        error_signal: str = "mirror",
        fast_dial: float = 0.005,
        sock_rcvbuf: int = 0,
        sock_sndbuf: int = 0,
        ack_idle_gate: float = 0.0,
        ack_idle_min_inflight: int = 0,
        gate_log: str = "info",
        iss_source: itertools.count[int] | None = None,
        log: ConnectionLog | None = None,
        send_budget: SendBudget | None = None,
    ) -> None:
        self.ctx = ctx
        self.send_budget = send_budget
        self.policy = policy
        self.table = table
        self.poller = ctx.poller  # host sockets are watched by the worker's loop
        self.params = params
        # IPv6 headers are 20 bytes longer than IPv4's: MSS = MTU - 60 for IPv6
        # connections (TCP_MSS_CLAMP still applies; it can only lower it).
        self.params6 = dataclasses.replace(params, mss=min(params.mss, ctx.mtu - 60))
        self.error_signal = error_signal
        self.fast_dial = fast_dial
        self.sock_rcvbuf = sock_rcvbuf
        self.sock_sndbuf = sock_sndbuf
        # TCP_ACK_IDLE_GATE_MS: stop reading the host while the guest has acknowledged
        # nothing for this long with data in flight; a stalled guest then pins no more.
        self.ack_idle_gate = ack_idle_gate
        self.ack_idle_min_inflight = ack_idle_min_inflight
        self._gate_log = {"off": None, "debug": logging.DEBUG}.get(gate_log, logging.INFO)
        # (deadline, tiebreak, flow key): keys, not flows, so a closed connection is freed
        # at once instead of living on in the heap until its far-off idle deadline.
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._dirty: dict[Hashable, TcpFlow] = {}
        self._rst = bytearray(128)
        # flow key -> time before which no further RST answers a stray segment of it
        self._stray_rst: dict[Hashable, float] = {}
        self.stats = TcpBridgeStats()
        self.log = log
        # Inbound forwards whose guest has not answered yet, by (guest, guest port,
        # gateway, NAT port): their key carries ROUTE_BY_DESTINATION until the guest's
        # first segment says which peer it came through (see open_forwarded).
        self._unbound: dict[tuple[int, int, int, int], TcpFlow] = {}
        self._forward_ports: set[tuple[int, int, int]] = set()  # (guest, port, NAT port)
        # Connections answered in _answer and built in _settle, and when they became
        # due (the SYN's turn).
        self._unsettled: list[_Unsettled] = []
        self._settle_at = 0.0

    # ------------------------------------------------------------- guest -> host

    def from_guest(self, peer: int, pkt: memoryview, n: int, now: float) -> None:
        if self._unsettled:  # a connection answered in this batch: built before the next
            self._settle(now)
        # The TCP header and the segment's end are found once here, for the flow key and
        # for the endpoint (TcpEndpoint.segment): parsing them in both cost an IPv6
        # segment two span6 calls (0.36 us each).
        if pkt[0] >> 4 == 6:
            if pkt[6] == _NH_TCP and n >= 60:
                # TCP right after the IPv6 header, nearly every segment: span6's short path
                # without the call (3.6 % of an IPv6 upload's samples in py-spy, inline).
                ihl = 40
                end = 40 + ((pkt[4] << 8) | pkt[5])
                if end > n:
                    end = 0
            else:
                ihl, end = tcp.span6(pkt, n)
            if end < ihl + 20:
                self.stats.malformed += 1
                return
            sh, sl, dh, dl = _ADDRS6.unpack_from(pkt, 8)
            src = (sh << 64) | sl
            dst = (dh << 64) | dl
        else:
            ihl = (pkt[0] & 0x0F) * 4
            if n < ihl + 20:
                self.stats.malformed += 1
                return
            end = (pkt[2] << 8) | pkt[3]
            if end > n:
                end = n
            src, dst = struct.unpack_from(">II", pkt, 12)
        sport, dport = _PORTS.unpack_from(pkt, ihl)
        key = (peer, src, sport, dst, dport)
        flow = self.table.get(key)
        if flow is None and self._unbound:
            flow = self._unbound.get(key[1:])
            if flow is not None:
                flow = self._bind(flow, key, peer, pkt, ihl, now)
        if flow is None:
            flags = pkt[ihl + 13]
            doff = (pkt[ihl + 12] >> 4) * 4
            if doff < 20 or ihl + doff > n:
                self.stats.malformed += 1  # never dial for a segment we cannot parse
                return
            if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN:
                self._open(key, peer, pkt, n, now)
            elif not flags & TCP_RST:
                # A connection just aborted still has a window of segments in flight from
                # the guest: one RST per tuple per interval says it all, not one per segment.
                quiet_until = self._stray_rst.get(key, 0.0)
                if now < quiet_until:
                    self.stats.rst_suppressed += 1
                    return
                if len(self._stray_rst) >= STRAY_RST_MEMORY:
                    self._stray_rst.pop(next(iter(self._stray_rst)))
                self._stray_rst.pop(key, None)
                self._stray_rst[key] = now + STRAY_RST_INTERVAL
                self._reset_stray(pkt, n, peer)
            return
        flow.last_active = now
        ep = flow.ep
        ep.segment(pkt, ihl, end, now)
        if ep.reopen:  # a new SYN for this 4-tuple while the old one sat in TIME_WAIT
            self._write_host(flow, now)  # hand the host what the old connection still held
            self._drop(flow, rst=False)
            self._open(key, peer, pkt, n, now)
            return
        if ep.reset:
            # The guest reset it: gone now, not at the end of the batch. A guest reusing a
            # port we still held answers our challenge ACK with RST and resends its SYN ms
            # later; in the same batch that SYN met the dead endpoint, drew a RST/ACK, and
            # the guest's connect() failed (ECONNREFUSED).
            self._dirty.pop(key, None)
            try:
                self._pump(flow, now)  # sends what it still owes the guest, and drops it
            except Exception:
                self._fail(flow, now)
            return
        # Pumped once per batch of guest packets (flush_dirty), not per segment: one host
        # send() and one ACK cover every segment of the flow in the batch.
        self._dirty[key] = flow

    def flush_dirty(self, now: float) -> None:
        """End of a drained batch: move each touched flow's data and emit its segments."""
        if self._dirty:
            dirty = self._dirty
            self._dirty = {}
            for flow in dirty.values():
                if self.table.get(flow.key) is flow:
                    try:
                        self._pump(flow, now)
                    except Exception:
                        self._fail(flow, now)

    def _open(self, key: TcpKey, peer: int, pkt: memoryview, n: int, now: float) -> None:
        _, src, sport, dst, dport = key
        ctx = self.ctx
        v6 = pkt[0] >> 4 == 6
        decision = self.policy.decide(PROTO_TCP, dst, dport, v6)
        if decision.verdict is Verdict.DENY:
            ctx.stats.policy_denied += 1
            self._signal_failure(pkt, n, peer, None, icmp.ADMIN_PROHIBITED, now)
            return
        if self._at_cap(peer):
            self.stats.refused_cap += 1
            self._signal_failure(pkt, n, peer, None, None, now, force_rst=True)
            return
        try:
            # Non-blocking from the start (no ioctl after), and no Nagle only once the
            # dial worked (_no_delay): a refused one never sends, an accepted one gets it
            # after its SYN-ACK. In a worker's turn (SYNs 20 ms apart, medians of
            # alternate SYNs): socket() with both 45-53 us, alone 38-45.
            sock = socket.socket(
                socket.AF_INET6 if decision.v6 else socket.AF_INET,
                socket.SOCK_STREAM | socket.SOCK_NONBLOCK,
            )
        except OSError as exc:  # no IPv6 on this host: a refusal the guest can act on
            ctx.stats.socket_errors += 1
            self._connect_failed(pkt, n, peer, exc.errno or errno.EAFNOSUPPORT, now)
            return
        self._size_buffers(sock)
        if _loopback(decision.host, decision.v6):
            _hold_ack(sock)
        err = sock.connect_ex((sock_addr(decision.host, decision.v6), decision.port))
        if err == errno.EINPROGRESS:
            err = self._outcome_known(sock)
        if err not in (0, errno.EINPROGRESS):
            # Refused before connect() returned: a local port, or a LAN host whose RST the
            # kernel handled in the same softirq. Answered in this turn, with no endpoint
            # built and no socket event waited for (and an established one below gets its
            # SYN-ACK in this turn too). With the inline hook order (worker_turn_first) the
            # inline router's SYN-to-RST time fell from 0.67 to 0.43 ms (median, from the
            # client's datagram to the router's answer on loopback; busy 2-core machine).
            sock.close()
            self._connect_failed(pkt, n, peer, err, now)
            return
        iss = _ISN.next()
        if err == 0:
            self._answer(key, peer, sock, iss, pkt, n, now, v6)
            return
        _no_delay(sock)
        ep = TcpEndpoint(
            self.params6 if v6 else self.params,
            local=(dst, dport),
            remote=(src, sport),
            iss=iss,
            now=now,
            egress=ctx.egress,
            peer=peer,
            budget=self.send_budget,
            v6=v6,
        )
        ep.on_syn(pkt, n, now)
        flow = TcpFlow(key, peer, now, ep, sock)
        flow.handler = partial(self._on_event, flow)
        self.table.add(flow, now)
        self.stats.opened += 1
        flow.syn = bytes(pkt[:n])
        flow.dial_deadline = now + self.fast_dial
        if self.log is not None:
            flow.slot = self.log.record(peer, src, sport, dst, dport, iss, ep.irs)
        flow.events = selectors.EVENT_WRITE
        self.poller.register(sock, flow.handler, flow.events)
        self._schedule(flow, flow.dial_deadline)

    def _answer(
        self,
        key: TcpKey,
        peer: int,
        sock: socket.socket,
        iss: int,
        pkt: memoryview,
        n: int,
        now: float,
        v6: bool,
    ) -> None:
        """A host connect established inside connect(): the SYN-ACK now, written without
        an endpoint (tcp_endpoint.synack_into), and the connection itself once it has left
        (`_settle`)."""
        _, src, sport, dst, dport = key
        egress = self.ctx.egress
        slot = egress.reserve()
        writer = None
        if slot is not None:
            k, writer = synack_into(
                slot,
                self.params6 if v6 else self.params,
                local=(dst, dport),
                remote=(src, sport),
                iss=iss,
                syn=pkt,
                n=n,
                now=now,
                v6=v6,
            )
            if k:
                egress.commit(k, peer)
            else:
                writer = None  # not a plain SYN: the endpoint answers it as it always did
        self.stats.opened += 1
        self.stats.dials_ok += 1
        if not self._unsettled:
            self._settle_at = now
        self._unsettled.append(_Unsettled(key, peer, sock, iss, bytes(pkt[:n]), now, v6, writer))

    def _settle(self, now: float) -> None:
        """Build the connections answered in `_answer`: the endpoint (told its SYN-ACK is
        out), the flow, the log row, the socket watch (registered once, for what the pump
        wants: readable; not for writable first and then changed) and the endpoint's timer.

        Deferred to the turn's timers, which the loop runs after its hooks: inline, after
        ingress has encrypted and sent the SYN-ACK; with workers, while ingress does so in
        its own process. Every other way into the bridge settles first (`from_guest`,
        timers, caps, closing), so no code path ever sees a connection half built.

        Measured in a worker's turn (SYNs 20 ms apart to a loopback listener, medians,
        timed in a copy): this takes 120-170 us, which the SYN-ACK used to wait for
        (endpoint, on_syn and accept 83, the log row 19, register 27, the pump's modify
        and timer 20); with the other cuts before the connect, the turn up to the
        published SYN-ACK went from 420-540 to 260-325 us (five interleaved runs)."""
        pending = self._unsettled
        self._unsettled = []
        for u in pending:
            try:
                flow = self._build(u)
            except Exception:
                self.stats.internal_errors += 1
                log.exception("tcp: internal error building an accepted connection")
                u.sock.close()
                continue
            try:
                flow.ep.accept(u.at, sent=u.writer is not None)
                self._pump(flow, now)
            except Exception:
                self._fail(flow, now)
                continue
            _release_ack(flow.sock)  # the SYN-ACK has left (inline) or is leaving

    def _build(self, u: _Unsettled) -> TcpFlow:
        _, src, sport, dst, dport = u.key
        ep = TcpEndpoint(
            self.params6 if u.v6 else self.params,
            local=(dst, dport),
            remote=(src, sport),
            iss=u.iss,
            now=u.at,
            egress=self.ctx.egress,
            peer=u.peer,
            budget=self.send_budget,
            v6=u.v6,
            writer=u.writer,
        )
        ep.on_syn(memoryview(u.syn), len(u.syn), u.at)
        _no_delay(u.sock)  # before any guest byte reaches it
        flow = TcpFlow(u.key, u.peer, u.at, ep, u.sock)
        flow.handler = partial(self._on_event, flow)
        flow.connecting = False
        flow.synack_sent = True
        self.table.add(flow, u.at)
        if self.log is not None:
            flow.slot = self.log.record(u.peer, src, sport, dst, dport, ep.iss, ep.irs)
        return flow

    @staticmethod
    def _outcome_known(sock: socket.socket) -> int:
        """What a non-blocking connect that returned EINPROGRESS already knows: its error,
        0 if it is established (a loopback or same-softirq handshake completes inside
        connect()), else EINPROGRESS (tests replace it to see the outcome arrive later)."""
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return err
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
        return 0 if state[0] == _TCP_ESTABLISHED else errno.EINPROGRESS

    def _tune(self, sock: socket.socket) -> None:
        """An inbound forward's accepted host socket: non-blocking, no Nagle, and
        TCP_SOCK_RCVBUF / SNDBUF if set."""
        sock.setblocking(False)
        _no_delay(sock)
        self._size_buffers(sock)

    def _size_buffers(self, sock: socket.socket) -> None:
        """TCP_SOCK_RCVBUF / SNDBUF, if set: before connect(), as they decide the window
        scale the host's SYN offers."""
        try:
            if self.sock_rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.sock_rcvbuf)
            if self.sock_sndbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sock_sndbuf)
        except OSError:
            pass

    # ------------------------------------------------------- inbound forwards

    def open_forwarded(
        self,
        sock: socket.socket,
        guest: int,
        gport: int,
        nat_port: int,
        params: TcpParams,
        now: float,
        tally: ForwardTally,
    ) -> bool:
        """An accepted host connection of an inbound forward: open one to guest:gport
        from the gateway address and NAT port `nat_port` (chosen by the caller so the
        guest's replies hash to this worker) and bridge the two like any other flow.
        False (the socket is the caller's to reset) when no gateway or the caps say no."""
        gw = self.ctx.gateway
        if gw is None:
            return False
        key = (ROUTE_BY_DESTINATION, guest, gport, gw, nat_port)
        if (guest, gport, nat_port) in self._forward_ports:
            return False
        if self._unsettled:
            self._settle(now)  # counted under the caps
        if self._at_cap(ROUTE_BY_DESTINATION):
            self.stats.refused_cap += 1
            return False
        iss = _ISN.next()
        ep = TcpEndpoint(
            params,
            local=(gw, nat_port),
            remote=(guest, gport),
            iss=iss,
            now=now,
            egress=self.ctx.egress,
            peer=ROUTE_BY_DESTINATION,
            budget=self.send_budget,
        )
        self._tune(sock)
        flow = TcpFlow(key, ROUTE_BY_DESTINATION, now, ep, sock)
        flow.connecting = False
        flow.synack_sent = True
        flow.forward = tally
        self.table.add(flow, now)
        self._unbound[(guest, gport, gw, nat_port)] = flow
        self._forward_ports.add((guest, gport, nat_port))
        self.stats.forwarded += 1
        flow.handler = partial(self._on_event, flow)
        ep.connect(now)
        self._pump(flow, now)
        return True

    def forwarded_port_taken(self, guest: int, gport: int, nat_port: int) -> bool:
        """Whether a forwarded connection to guest:gport already uses `nat_port` (the
        guest could not tell two such connections apart)."""
        return (guest, gport, nat_port) in self._forward_ports

    def _bind(
        self, flow: TcpFlow, key: TcpKey, peer: int, pkt: memoryview, ihl: int, now: float
    ) -> TcpFlow | None:
        """The guest's first segment of a forwarded connection: the peer it came through
        is the flow's peer from now on (and the one whose caps and removal apply)."""
        del self._unbound[key[1:]]
        self.table.remove(flow)
        t = self.table
        if t.max_per_peer and t.peer_count(peer) >= t.max_per_peer:
            self.stats.refused_cap += 1
            flow.ep.abort(now)
            self._drop(flow, rst=True)
            self.ctx.egress.flush(now)
            return None
        flow.key = key
        flow.peer = peer
        flow.ep.peer = peer
        flow.heap_at = float("inf")  # heap entries under the old key are dead now
        t.add(flow, now)
        if self.log is not None:
            irs = struct.unpack_from(">I", pkt, ihl + 4)[0]
            flow.slot = self.log.record(peer, key[1], key[2], key[3], key[4], flow.ep.iss, irs)
        return flow

    def _at_cap(self, peer: int) -> bool:
        t = self.table
        return bool(
            (t.max_flows and len(t) >= t.max_flows)
            or (t.max_per_peer and t.peer_count(peer) >= t.max_per_peer)
        )

    # ------------------------------------------------------- connect outcome

    def _connected(self, flow: TcpFlow, now: float) -> None:
        flow.connecting = False
        flow.syn = None
        self.stats.dials_ok += 1
        if not flow.synack_sent:
            flow.synack_sent = True
            flow.ep.accept(now)
        self._pump(flow, now)
        _release_ack(flow.sock)  # after the SYN-ACK, as _settle does

    def _connect_failed(
        self, pkt: memoryview | None, n: int, peer: int, err: int, now: float
    ) -> None:
        self.stats.dials_failed += 1
        if pkt is not None:
            self._signal_failure(pkt, n, peer, err, _unreachable_code(err), now)

    def _signal_failure(
        self,
        pkt: memoryview,
        n: int,
        peer: int,
        err: int | None,
        code: int | None,
        now: float,
        *,
        force_rst: bool = False,
    ) -> None:
        """Tell the guest its SYN failed, the TCP_ERROR_SIGNAL way."""
        how = "rst" if force_rst else failure_signal(self.error_signal, err)
        if how == "rst":
            self.stats.refused_rst += 1
            self._reset_stray(pkt, n, peer)
        elif how == "icmp" and code is not None:
            self.stats.refused_icmp += 1
            self.ctx.send_unreachable(pkt, n, code, peer, now)

    def _reset_stray(self, pkt: memoryview, n: int, peer: int) -> None:
        """RST for a segment that belongs to no connection (RFC 9293 3.10.7.1)."""
        slot = self.ctx.egress.reserve()
        if slot is None:
            self.ctx.stats.egress_full += 1
            return
        k = rst_reply_into(slot, pkt, n, self.ctx.ttl)
        if k:
            self.ctx.egress.commit(k, peer)
            self.stats.rst_sent += 1

    # --------------------------------------------------------- socket events

    def _on_event(self, flow: TcpFlow, now: float, mask: int) -> None:
        try:
            self._on_event_inner(flow, now, mask)
        except Exception:  # one broken flow must not take the worker's others down
            self._fail(flow, now)

    def _fail(self, flow: TcpFlow, now: float) -> None:
        self.stats.internal_errors += 1
        log.exception("tcp %s: internal error; resetting the connection", _flow_name(flow))
        try:
            flow.ep.abort(now)
        except Exception:
            pass
        if self.table.get(flow.key) is flow:
            self._drop(flow, rst=True)

    def _on_event_inner(self, flow: TcpFlow, now: float, mask: int) -> None:
        if flow.connecting:
            err = flow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                self._connected(flow, now)
            elif err != errno.EINPROGRESS:
                self._dial_error(flow, err, now)
                return
            return
        flow.last_active = now
        if mask & selectors.EVENT_READ:
            self._read_host(flow, now)
        self._pump(flow, now)

    def _dial_error(self, flow: TcpFlow, err: int, now: float) -> None:
        self.stats.dials_failed += 1
        if flow.synack_sent:
            flow.ep.abort(now)  # the guest was already told yes: all we can do is reset
        else:
            how = failure_signal(self.error_signal, err)
            if how == "rst":
                self.stats.refused_rst += 1
                flow.ep.refuse(now)
            elif how == "icmp":
                self.stats.refused_icmp += 1
                syn = flow.syn
                if syn is not None:
                    code = _unreachable_code(err)
                    self.ctx.send_unreachable(memoryview(syn), len(syn), code, flow.peer, now)
        self._drop(flow, rst=False)

    def _gated(self, flow: TcpFlow, now: float) -> bool:
        ep = flow.ep
        return bool(
            self.ack_idle_gate
            and now - ep.last_ack_progress >= self.ack_idle_gate
            and ep.in_flight >= (self.ack_idle_min_inflight or ep.mss)
        )

    def _read_host(self, flow: TcpFlow, now: float) -> None:
        ep, sock = flow.ep, flow.sock
        if self._gated(flow, now):
            if not flow.read_paused and self._gate_log is not None:
                log.log(
                    self._gate_log,
                    "tcp %s: guest acknowledged nothing for %.1f s; pausing reads from the host",
                    _flow_name(flow),
                    now - ep.last_ack_progress,
                )
            flow.read_paused = True
            self.stats.gated += 1
            return
        for _ in range(16):
            space = ep.send_space()
            if space <= 0:
                flow.read_paused = True  # backpressure: let the host's window close
                return
            buf = ep.write_buffer(min(space, RECV_CHUNK))
            try:
                got = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.stats.host_resets += 1
                ep.abort(now)
                flow.host_eof = True
                return
            if got == 0:
                flow.host_eof = True
                ep.shutdown(now)
                return
            ep.commit_write(got, now)
            self.stats.bytes_to_guest += got
            if flow.forward is not None:
                flow.forward.bytes_to_guest += got
            if got < len(buf):
                return

    def _write_host(self, flow: TcpFlow, now: float) -> None:
        ep, sock = flow.ep, flow.sock
        while ep.readable():
            data = ep.peek_data()
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.stats.host_resets += 1
                ep.abort(now)
                return
            ep.consume(sent, now)
            self.stats.bytes_to_host += sent
            if flow.forward is not None:
                flow.forward.bytes_to_host += sent
            if sent < len(data):
                return
        if ep.guest_fin and not flow.shut_wr:
            flow.shut_wr = True
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _pump(self, flow: TcpFlow, now: float) -> None:
        """After anything happened: move data both ways, emit segments, fix interests."""
        ep = flow.ep
        if not flow.connecting:
            self._write_host(flow, now)
            if (
                flow.read_paused
                and ep.send_space() * READ_RESUME_FRACTION >= ep.snd_capacity
                and not self._gated(flow, now)
            ):
                flow.read_paused = False
                self._read_host(flow, now)
        ep.flush(now)
        if ep.reset or ep.closed:
            # A timeout discarded guest data: the host must see a reset, not a clean EOF
            # that would make a truncated upload look complete.
            self._drop(flow, rst=ep.reset or ep.timed_out)
            return
        want = 0
        if flow.connecting or ep.readable():
            want |= selectors.EVENT_WRITE
        if not flow.connecting and not flow.read_paused and not flow.host_eof:
            want |= selectors.EVENT_READ
        if want != flow.events:
            if not flow.events:
                self.poller.register(flow.sock, flow.handler, want)
            elif want:
                self.poller.modify(flow.sock, flow.handler, want)
            else:
                self.poller.unregister(flow.sock)
            flow.events = want
        t = ep.get_timer()
        if t is not None:
            self._schedule(flow, t)

    # ----------------------------------------------------------------- timers

    def _schedule(self, flow: TcpFlow, at: float) -> None:
        if at < flow.heap_at:
            flow.heap_at = at
            heapq.heappush(self._heap, (at, next(self._seq), flow.key))
            if len(self._heap) > 4 * len(self.table) + 1024:
                self._compact()

    def _compact(self) -> None:
        """Superseded entries (a flow rescheduled earlier, or closed) wait for their own
        deadline, which can be an hour away; rebuild once they outnumber live flows."""
        self._heap = [
            (f.heap_at, next(self._seq), f.key)
            for f in self.table.values()
            if f.heap_at != float("inf")
        ]
        heapq.heapify(self._heap)

    def get_timer(self) -> float | None:
        if self._unsettled:
            return self._settle_at
        return self._heap[0][0] if self._heap else None

    def handle_timer(self, now: float) -> None:
        if self._unsettled:
            self._settle(now)
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap))
        # Deadlines rescheduled while handling these wait for the next turn: a deadline
        # that stays "due" without progress costs one call per turn, never a hang.
        for at, _, key in due:
            flow = self.table.get(key)
            if flow is None or at != flow.heap_at:
                continue  # the flow is gone, or this entry was superseded
            flow.heap_at = float("inf")
            try:
                if flow.connecting and not flow.synack_sent and now >= flow.dial_deadline:
                    # A busy loop can reach the deadline and the connect's outcome in the
                    # same turn, timers first: ask the socket, so that a refusal already in
                    # is never answered with a SYN-ACK (the guest would see it connected).
                    err = flow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        self._dial_error(flow, err, now)
                        continue
                    # Fast-dial window over without an answer: say yes optimistically; a
                    # later failure resets the connection.
                    flow.synack_sent = True
                    flow.ep.accept(now)
                t = flow.ep.get_timer()
                if t is not None and t <= now:
                    flow.ep.handle_timer(now)
                self._pump(flow, now)
            except Exception:
                self._fail(flow, now)
        self.ctx.egress.flush(now)  # retransmissions and probes leave now, not next turn

    # ---------------------------------------------------------------- teardown

    def _drop(self, flow: TcpFlow, *, rst: bool) -> None:
        self.table.remove(flow)
        ep, st = flow.ep, self.stats
        tally = flow.forward
        if tally is not None:
            key: TcpKey = flow.key  # type: ignore[assignment]
            if self._unbound.get(key[1:]) is flow:
                del self._unbound[key[1:]]
            self._forward_ports.discard((key[1], key[2], key[4]))
            tally.closed(ep.refused, not ep.syn_acked)
            if ep.refused:
                st.forward_refused += 1
            elif not ep.syn_acked:
                st.forward_unanswered += 1
        ep.release()
        self._tally(ep)
        if self.log is not None and flow.slot >= 0:  # -1: not logged (yet, or log full)
            self.log.remove(flow.slot)
        if flow.events:
            self.poller.unregister(flow.sock)
            flow.events = 0
        if rst:
            try:
                flow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except OSError:
                pass
        flow.sock.close()
        flow.handler = _no_handler  # break flow -> partial -> flow, so refcounting frees it
        self.stats.closed += 1

    def reset_orphans(self, orphans: Iterable[tuple[int, int, int, int, int, int, int]]) -> int:
        """Connections a dead predecessor had open (peer, guest, guest port, remote, remote
        port, its ISS, the guest's ISS): their state is gone, so each guest is made to reset
        its end. A RST needs the exact sequence number the guest expects, which died with
        the predecessor; an ACK below the guest's window makes the guest answer with a
        duplicate ACK that carries it (RFC 9293 3.10.7.4), and that answer, a segment of no
        connection here, draws the RST RFC 9293 3.10.7.1 prescribes (seq = its ACK)."""
        egress = self.ctx.egress
        sent = 0
        for peer, guest, gport, remote, rport, iss, irs in orphans:
            slot = egress.reserve()
            if slot is None:
                self.ctx.stats.egress_full += 1
                break
            k = tcp.build_into(
                slot,
                src=remote,
                dst=guest,
                sport=rport,
                dport=gport,
                seq=iss,  # the SYN's own number: long below the guest's window
                ack=(irs + 1) & 0xFFFFFFFF,
                flags=TCP_ACK,
                window=0,
                ttl=self.ctx.ttl,
            )
            egress.commit(k, peer)
            sent += 1
        self.stats.orphans_probed += sent
        return sent

    def forget_peer(self, peer: int) -> int:
        """The peer is gone: abort its connections toward the host (RST), nothing to send
        the guest."""
        if self._unsettled:
            self._settle(self._settle_at)
        gone = [f for f in self.table.values() if f.peer == peer]
        for flow in gone:
            self._drop(flow, rst=True)
        return len(gone)

    def close(
        self, now: float, *, make_room: Callable[[], bool] | None = None, exiting: bool = False
    ) -> int:
        """The worker stops: reset both ends of every connection; returns how many.

        Every guest is told, with the exact sequence number: more connections than the
        egress ring has slots is the rule here (1,024 slots, 14,000 connections a worker at
        100,000), so when it is full `make_room` is asked to have it drained; once it
        cannot, the RSTs that do not fit are counted (`close_rst_lost`).

        `exiting`: the process ends next, so the per-connection work its exit does anyway
        is skipped: unregistering from the loop, handing rings back to the pool, clearing
        log rows one by one (the log is cleared at once), closing the sockets (each is
        marked to reset the host's end, and the kernel closes it at exit, after the exit
        counters are out). 36 -> 8.5 us a connection (5,000 established, timed in one
        process; the kernel's close at exit, ~11 us each, comes after the counters)."""
        if self._unsettled:
            self._settle(now)
        flows = self.table.values()
        egress = self.ctx.egress
        for flow in flows:
            ep = flow.ep
            if not ep.closed:
                if egress.reserve() is None:
                    egress.flush(now)
                    if make_room is not None and not make_room():
                        make_room = None  # nobody drains the ring: do not ask again
                ep.abort(now)  # RST to the guest
                if ep.rst_unsent:
                    self.stats.close_rst_lost += 1
            if exiting and flow.forward is None:
                self._abandon(flow)
            else:
                self._drop(flow, rst=True)
        egress.flush(now)
        if exiting and self.log is not None:
            self.log.clear()
        return len(flows)

    def _abandon(self, flow: TcpFlow) -> None:
        """`_drop` for a process about to exit: counted and reset, the rest left to exit."""
        self.table.remove(flow)
        self._tally(flow.ep)
        try:
            flow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
        flow.sock.detach()  # the descriptor stays open until the process exits
        flow.handler = _no_handler
        self.stats.closed += 1

    def _tally(self, ep: TcpEndpoint) -> None:
        """How a closed connection recovered from loss, into the bridge's counters."""
        st = self.stats
        st.retransmits += ep.retransmits
        st.fast_retransmits += ep.fast_retransmits
        st.rto_expirations += ep.rto_expirations
        st.tlp_probes += ep.tlp_probes
        st.lost_retransmits += ep.lost_retransmits
        st.spurious_undos += ep.spurious_undos
        st.ecn_reductions += ep.ecn_reductions


class TcpBridgeStats(Counters):
    """TCP bridge counters (merged into the worker's counters)."""

    prefix = "tcp_"

    opened: int
    closed: int
    dials_ok: int
    dials_failed: int
    refused_cap: int
    # SYNs of failed dials (and denied destinations) answered with an RST / ICMP unreachable
    refused_rst: int
    refused_icmp: int
    rst_suppressed: int  # stray segments not answered: their tuple was reset a moment ago
    rst_sent: int
    close_rst_lost: int  # guests not told on the way out: the egress ring stayed full
    orphans_probed: int  # connections of a dead predecessor whose guests were made to reset
    forwarded: int  # connections accepted on an inbound forward's port and opened to a guest
    forward_refused: int  # ... that the guest answered with RST
    forward_unanswered: int  # ... that the guest never answered (WG_FORWARD_CONNECT_TIMEOUT)
    # Summed over closed connections: segments resent, fast retransmits (duplicate ACKs or
    # SACK), retransmission timeouts. Many timeouts per fast retransmit means recovery fails.
    retransmits: int
    fast_retransmits: int
    rto_expirations: int
    tlp_probes: int  # tail loss probes sent (RFC 8985 7): each one a timeout avoided or not needed
    lost_retransmits: int  # retransmissions found lost again and resent before the timeout
    spurious_undos: int  # window reductions taken back: D-SACK or timestamps showed no loss
    ecn_reductions: int  # window reductions for a guest's ECN echo (RFC 3168), no loss
    malformed: int
    host_resets: int
    gated: int
    internal_errors: int
    bytes_to_guest: int
    bytes_to_host: int


_TCP_ESTABLISHED = 1  # tcp_info.tcpi_state (linux/tcp_states.h)


def failure_signal(mode: str, err: int | None) -> str:
    """How a failed dial is told to the guest: "rst", "icmp" or "none".

    `err` is the host connect's errno, None for a destination the policy denied. `mirror`
    answers as the host was answered: a refusal (the host got an RST) with an RST, anything
    else with the matching ICMP (_unreachable_code; admin-prohibited for policy). A refusal
    as ICMP port-unreachable is not equivalent for a Linux guest: ICMP arriving while its
    process holds the socket inside connect() is kept only as a soft error and the SYN is
    retried (measured: connect() to a closed far-host port reported success 1 time in 20);
    an RST has no such window.
    """
    if mode == "mirror":
        return "rst" if err == errno.ECONNREFUSED else "icmp"
    return mode


def _unreachable_code(err: int) -> int:
    """The ICMP destination-unreachable code a router would send for the host's errno."""
    if err == errno.ECONNREFUSED:
        return icmp.PORT_UNREACHABLE
    if err == errno.ENETUNREACH:
        return icmp.NET_UNREACHABLE
    if err in (errno.EACCES, errno.EPERM):  # the host's own firewall said no
        return icmp.ADMIN_PROHIBITED
    return icmp.HOST_UNREACHABLE


def _loopback(host: int, v6: bool) -> bool:
    """A destination on this machine's loopback (the gateway alias's 127.0.0.1 or ::1):
    where holding the handshake's ACK helps (_hold_ack). A remote server would only get
    the ACK one loop pass later, and one that speaks first would greet that much later."""
    return host == 1 if v6 else host >> 24 == 127


def _hold_ack(sock: socket.socket) -> None:
    """Ask the kernel to hold the last ACK of the host handshake (delayed-ACK mode,
    TCP_QUICKACK off, in which Linux "saves one ACK" of a connect): a host service on this
    machine is then woken by that ACK after the guest's SYN-ACK has left, not inside our
    connect(), where on 2 cores its wake-up competed with the SYN-ACK for the CPU. With
    the bench's listener waking late (TCP_DEFER_ACCEPT) `tcp open` took 0.63 ms inline
    instead of 0.76 (bench_latency, 120 samples each). _release_ack sends the ACK after the
    SYN-ACK, on every path that sees the connection established: _settle (answered inside
    connect()) and _connected (answered later); unreleased, the kernel's delayed-ACK timer
    (~200 ms) or the first byte sent would. A kernel that ignores the hint acknowledges at
    once, as before. Loopback destinations only (_loopback)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
    except OSError:
        pass


def _release_ack(sock: socket.socket) -> None:
    """Send the handshake ACK _hold_ack held (TCP_QUICKACK on acknowledges what is
    pending, and leaves delayed-ACK mode)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    except OSError:
        pass


def _no_delay(sock: socket.socket) -> None:
    """No Nagle on a host socket: the guest's own stack already decided when to send."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def _flow_name(flow: TcpFlow) -> str:
    key: TcpKey = flow.key  # type: ignore[assignment]
    v6 = key[1] > 0xFFFFFFFF  # guest addresses in ::/96 never reach a bridge
    return f"[{sock_addr(key[1], v6)}]:{key[2]} -> [{sock_addr(key[3], v6)}]:{key[4]}"


def rst_reply_into(out: memoryview, pkt: memoryview, n: int, ttl: int) -> int:
    """The RST RFC 9293 prescribes for a segment that matches no connection: if it had
    ACK, <SEQ=SEG.ACK><CTL=RST>, else <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>."""
    if pkt[0] >> 4 == 6:
        return _rst_reply6(out, pkt, n, ttl)
    ihl = (pkt[0] & 0x0F) * 4
    total: int = struct.unpack_from(">H", pkt, 2)[0]
    if total > n or total < ihl + 20:
        return 0
    src, dst = struct.unpack_from(">II", pkt, 12)
    sport, dport, seq, ack, off_flags = struct.unpack_from(">HHIIH", pkt, ihl)
    flags = off_flags & 0x3F
    if flags & TCP_RST:
        return 0
    doff = (off_flags >> 12) * 4
    seg_len = total - ihl - doff + (1 if flags & TCP_SYN else 0) + (1 if flags & TCP_FIN else 0)
    if flags & TCP_ACK:
        r_seq, r_ack, r_flags = ack, 0, TCP_RST
    else:
        r_seq, r_ack, r_flags = 0, (seq + seg_len) & 0xFFFFFFFF, TCP_RST | TCP_ACK
    struct.pack_into(">HHIIHHHH", out, 20, dport, sport, r_seq, r_ack, (5 << 12) | r_flags, 0, 0, 0)
    pseudo = (dst >> 16) + (dst & 0xFFFF) + (src >> 16) + (src & 0xFFFF) + PROTO_TCP + 20
    struct.pack_into(">H", out, 36, fold(ones_sum(out[20:40], pseudo)))
    ipv4.write_header(out, total_length=40, proto=PROTO_TCP, src=dst, dst=src, ttl=ttl)
    return 40


def _rst_reply6(out: memoryview, pkt: memoryview, n: int, hop_limit: int) -> int:
    off, end = tcp.span6(pkt, n)
    if end < off + 20:
        return 0
    src, dst = ipv6.src_dst(pkt)
    sport, dport, seq, ack, off_flags = struct.unpack_from(">HHIIH", pkt, off)
    flags = off_flags & 0x3F
    if flags & TCP_RST:
        return 0
    doff = (off_flags >> 12) * 4
    seg_len = end - off - doff + (1 if flags & TCP_SYN else 0) + (1 if flags & TCP_FIN else 0)
    if flags & TCP_ACK:
        r_seq, r_ack, r_flags = ack, 0, TCP_RST
    else:
        r_seq, r_ack, r_flags = 0, (seq + seg_len) & 0xFFFFFFFF, TCP_RST | TCP_ACK
    w = tcp.SegmentWriter6(dst, src, dport, sport, hop_limit)
    return w.write(out, r_seq, r_ack, r_flags, 0, b"", 0)


ISN_BATCH: Final = 1024  # initial sequence numbers read from the OS at once


class _IsnPool:
    """Initial sequence numbers: uniformly random 32-bit values from os.urandom, read
    ISN_BATCH at a time. One getrandom() per SYN took 17.5 us of an accepted SYN's work
    before its SYN-ACK in a worker's turn on a cold CPU (SYNs 20 ms apart, median). A
    forked child starts with an empty pool, so two processes never share numbers."""

    def __init__(self) -> None:
        self._bytes = b""
        self._pos = 0
        os.register_at_fork(after_in_child=self.forget)

    def forget(self) -> None:
        self._bytes = b""
        self._pos = 0

    def next(self) -> int:
        pos = self._pos
        if pos >= len(self._bytes):
            self._bytes = os.urandom(4 * ISN_BATCH)
            pos = 0
        self._pos = pos + 4
        return int.from_bytes(self._bytes[pos : pos + 4], "big")


_ISN = _IsnPool()
