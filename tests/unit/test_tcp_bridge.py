"""The TCP bridge: segments of no connection, orphans of a dead worker, the connection log,
how failed dials are told to the guest."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct

import pytest

from wgslirp.net import icmp, tcp
from wgslirp.runtime.loop import Handler, Loop
from wgslirp.slirp import tcp_bridge
from wgslirp.slirp.bridge_context import BridgeContext
from wgslirp.slirp.nat_table import FlowTable
from wgslirp.slirp.policy import EgressPolicy
from wgslirp.slirp.tcp_bridge import (
    STRAY_RST_INTERVAL,
    TcpBridge,
    TcpFlow,
    failure_signal,
)
from wgslirp.slirp.tcp_endpoint import TcpParams, TcpState
from wgslirp_testkit.ports import closed_tcp_port
from wgslirp_testkit.tcpconn import (
    GUEST_IP,
    GUEST_PORT,
    HOST_IP,
    HOST_PORT,
    Egress,
    guest_pkt,
)


def bridge() -> tuple[TcpBridge, Egress]:
    eg = Egress()
    ctx = BridgeContext(eg, Loop(), mtu=1380)
    return TcpBridge(ctx, EgressPolicy(), FlowTable[TcpFlow](float("inf")), TcpParams(mss=1340)), eg


def test_a_burst_of_stray_segments_draws_one_rst_per_interval() -> None:
    """After an abort the guest still has a window of segments in flight; answering each
    with its own RST is a storm. One per tuple per interval tells the guest all it needs."""
    b, eg = bridge()
    now = 50.0
    for i in range(100):
        pkt = guest_pkt(1000 + i * 1340, 7, tcp.ACK, b"x" * 1340)
        b.from_guest(0, memoryview(pkt), len(pkt), now)
    segs = eg.take()
    assert len(segs) == 1 and segs[0].has(tcp.RST)
    assert segs[0].seq == 7  # RFC 9293: a RST for an ACK segment takes its sequence from it
    assert b.stats.rst_sent == 1 and b.stats.rst_suppressed == 99
    pkt = guest_pkt(999_999, 7, tcp.ACK)
    b.from_guest(0, memoryview(pkt), len(pkt), now + STRAY_RST_INTERVAL)
    assert [s.has(tcp.RST) for s in eg.take()] == [True]  # still unanswered: say it again


def test_stray_rsts_are_per_tuple() -> None:
    b, eg = bridge()
    for port in range(40000, 40010):
        pkt = guest_pkt(1, 7, tcp.ACK)
        struct.pack_into(">H", pkt, 20, port)  # another guest port: another tuple
        b.from_guest(0, memoryview(pkt), len(pkt), 1.0)
    assert b.stats.rst_sent == 10 and b.stats.rst_suppressed == 0
    assert len(eg.packets) == 10


class Log:
    def __init__(self) -> None:
        self.open: dict[int, tuple[int, ...]] = {}
        self._next = 0

    def record(self, *entry: int) -> int:
        self._next += 1
        self.open[self._next] = entry
        return self._next

    def remove(self, slot: int) -> None:
        del self.open[slot]

    def clear(self) -> None:
        self.open.clear()


def test_orphans_of_a_dead_worker_are_probed_and_the_guests_answer_draws_an_exact_rst() -> None:
    b, eg = bridge()
    iss, irs = 5000, 100000
    assert b.reset_orphans([(3, GUEST_IP, GUEST_PORT, HOST_IP, HOST_PORT, iss, irs)]) == 1
    (probe,) = eg.take()
    # An ACK far below the guest's window (the SYN's own number): the guest must answer it.
    assert probe.flags == tcp.ACK and probe.seq == iss and probe.ack == irs + 1
    # The guest's duplicate ACK carries the sequence number it expects next ...
    expected = iss + 1 + 123_456
    dupack = guest_pkt(irs + 1 + 789, expected, tcp.ACK)
    b.from_guest(3, memoryview(dupack), len(dupack), 1.0)
    (rst,) = eg.take()
    # ... and the RST for a segment of no connection uses exactly that: accepted, not
    # answered with a challenge ACK (RFC 5961).
    assert rst.has(tcp.RST) and rst.seq == expected
    assert b.stats.orphans_probed == 1


def test_every_open_connection_is_in_the_log_until_it_is_dropped() -> None:
    log = Log()
    eg = Egress()
    ctx = BridgeContext(eg, Loop(), mtu=1380, gateway=HOST_IP)
    b = TcpBridge(
        ctx,
        EgressPolicy(gateway="93.184.216.34", gateway_host="127.0.0.1"),
        FlowTable[TcpFlow](float("inf")),
        TcpParams(mss=1340),
        log=log,
    )
    with socket.create_server(("127.0.0.1", 0)) as srv:
        syn = guest_pkt(99, 0, tcp.SYN)
        struct.pack_into(">H", syn, 22, srv.getsockname()[1])  # the listener's port
        b.from_guest(4, memoryview(syn), len(syn), 1.0)
        b.handle_timer(1.0)  # the turn's timers: logged once the SYN-ACK has left
        assert len(log.open) == 1
        ((peer, guest, gport, remote, rport, _iss, irs),) = log.open.values()
        assert (peer, guest, gport, remote, rport, irs) == (
            4,
            GUEST_IP,
            GUEST_PORT,
            HOST_IP,
            srv.getsockname()[1],
            99,
        )
        assert rport != HOST_PORT
        b.forget_peer(4)
        assert log.open == {}


@pytest.mark.parametrize(
    ("mode", "err", "how"),
    [
        ("mirror", errno.ECONNREFUSED, "rst"),
        ("mirror", errno.EHOSTUNREACH, "icmp"),
        ("mirror", errno.ENETUNREACH, "icmp"),
        ("mirror", errno.ETIMEDOUT, "icmp"),
        ("mirror", None, "icmp"),  # policy
        ("icmp", errno.ECONNREFUSED, "icmp"),
        ("icmp", None, "icmp"),
        ("rst", errno.EHOSTUNREACH, "rst"),
        ("rst", None, "rst"),
        ("none", errno.ECONNREFUSED, "none"),
    ],
)
def test_failure_signal_per_mode(mode: str, err: int | None, how: str) -> None:
    assert failure_signal(mode, err) == how


def dial_bridge(mode: str, **policy: object) -> tuple[TcpBridge, Egress]:
    eg = Egress()
    ctx = BridgeContext(eg, Loop(), mtu=1380, gateway=HOST_IP)
    pol = EgressPolicy(**policy) if policy else EgressPolicy(gateway="93.184.216.34")  # type: ignore[arg-type]
    b = TcpBridge(
        ctx, pol, FlowTable[TcpFlow](float("inf")), TcpParams(mss=1340), error_signal=mode
    )
    return b, eg


def syn_to(port: int) -> bytearray:
    buf = bytearray(40)
    tcp.build_into(
        buf,
        src=GUEST_IP,
        dst=HOST_IP,
        sport=GUEST_PORT,
        dport=port,
        seq=99,
        ack=0,
        flags=tcp.SYN,
        window=65535,
    )
    return buf


def rst_flags_ack(pkt: bytes) -> tuple[int, int]:
    parsed = tcp.parse(pkt, len(pkt))
    assert parsed is not None and tcp.checksum_ok(pkt, len(pkt))
    return parsed[6], parsed[5]


def icmp_unreachable(pkt: bytes) -> int | None:
    """The code of an ICMP destination unreachable, None for anything else."""
    if pkt[9] != 1 or pkt[20] != icmp.DEST_UNREACHABLE:
        return None
    return pkt[21]


def refused_dial(mode: str) -> tuple[TcpBridge, list[bytes]]:
    """A guest SYN to a closed port through the gateway, the loop arriving late: the host's
    refusal is in the socket when the fast-dial deadline is handled, before any socket
    event (timers and ring hooks can run first in one turn of a busy worker)."""
    b, eg = dial_bridge(mode)
    b._outcome_known = lambda _sock: errno.EINPROGRESS  # type: ignore[method-assign]
    with closed_tcp_port() as closed:
        syn = syn_to(closed)
        b.from_guest(0, memoryview(syn), len(syn), 1.0)
        assert len(b.table) == 1  # connecting: EINPROGRESS, the outcome not yet read
        b.handle_timer(1.0 + 1.0)
    assert len(b.table) == 0 and b.stats.dials_failed == 1 and b.stats.dials_ok == 0
    return b, list(eg.packets)


@pytest.mark.parametrize("mode", ["mirror", "rst"])
def test_a_refused_host_connect_is_answered_with_rst_never_a_synack(mode: str) -> None:
    b, packets = refused_dial(mode)
    (pkt,) = packets
    assert rst_flags_ack(pkt) == (tcp.RST | tcp.ACK, 100)  # RST/ACK for the SYN (ISN 99)
    assert b.stats.refused_rst == 1 and b.stats.refused_icmp == 0


def test_a_refusal_known_when_connect_returns_is_answered_in_the_same_call() -> None:
    """A loopback (or same-softirq) refusal is in the socket before connect() returns: the
    RST leaves with the SYN's own handling, no connection is built, nothing is watched."""
    b, eg = dial_bridge("mirror")
    registered: list[object] = []
    b.poller.register = lambda *a: registered.append(a)  # type: ignore[method-assign]
    with closed_tcp_port() as closed:
        syn = syn_to(closed)
        b.from_guest(0, memoryview(syn), len(syn), 1.0)
    (pkt,) = eg.packets
    assert rst_flags_ack(pkt) == (tcp.RST | tcp.ACK, 100)
    assert len(b.table) == 0 and registered == [] and b.get_timer() is None
    assert b.stats.dials_failed == 1 and b.stats.refused_rst == 1 and b.stats.opened == 0


def test_a_connect_established_when_connect_returns_is_answered_in_the_same_call() -> None:
    """A loopback listener completes the handshake inside connect(): the guest's SYN-ACK
    leaves with the SYN's own handling, not after the next poll."""
    b, eg = dial_bridge("mirror")
    with socket.create_server(("127.0.0.1", 0)) as srv:
        syn = syn_to(srv.getsockname()[1])
        b.from_guest(0, memoryview(syn), len(syn), 1.0)
        (pkt,) = eg.packets
        assert rst_flags_ack(pkt) == (tcp.SYN | tcp.ACK, 100)
        assert b.stats.dials_ok == 1
        b.handle_timer(1.0)  # the turn's timers build the connection (see _settle)
        assert len(b.table) == 1 and eg.packets == [pkt]


class RecordingLoop(Loop):
    """A loop that lists every change to what it watches: (call, events)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def register(
        self, fileobj: int | object, handler: Handler, events: int = selectors.EVENT_READ
    ) -> None:
        self.calls.append(("register", events))
        super().register(fileobj, handler, events)

    def modify(self, fileobj: int | object, handler: Handler, events: int) -> None:
        self.calls.append(("modify", events))
        super().modify(fileobj, handler, events)


def settling_bridge() -> tuple[TcpBridge, Egress, RecordingLoop, Log]:
    eg, loop, log = Egress(), RecordingLoop(), Log()
    ctx = BridgeContext(eg, loop, mtu=1380, gateway=HOST_IP)
    pol = EgressPolicy(gateway="93.184.216.34", gateway_host="127.0.0.1")
    b = TcpBridge(ctx, pol, FlowTable[TcpFlow](float("inf")), TcpParams(mss=1340), log=log)
    return b, eg, loop, log


def test_a_connect_established_when_connect_returns_is_built_after_its_synack() -> None:
    """What the SYN-ACK does not need waits for the turn's timers, which the loop runs
    after its hooks (inline: after ingress sent the SYN-ACK): the endpoint and the flow,
    the log row, watching the host socket. The socket is then watched once, for what it
    is watched for from then on (readable), not first for writable and then changed."""
    b, eg, loop, log = settling_bridge()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        syn = syn_to(srv.getsockname()[1])
        b.from_guest(0, memoryview(syn), len(syn), 1.0)
        (synack,) = eg.packets
        assert rst_flags_ack(synack) == (tcp.SYN | tcp.ACK, 100)
        assert len(b.table) == 0 and loop.calls == [] and log.open == {}
        assert b.get_timer() == 1.0  # due in this turn
        b.handle_timer(1.0)
        (flow,) = b.table.values()
        assert flow.ep.state is TcpState.SYN_RECEIVED and not flow.connecting
        assert loop.calls == [("register", selectors.EVENT_READ)]
        assert len(log.open) == 1
        timer = b.get_timer()
        assert timer is not None and timer > 1.0  # the SYN-ACK's retransmission, no sooner
        assert eg.packets == [synack] and b.stats.internal_errors == 0
        b.close(2.0)


def _accept_ready(srv: socket.socket, wait: float = 0.0) -> bool:
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    try:
        return bool(sel.select(wait))
    finally:
        sel.close()


def test_a_local_host_service_is_woken_after_the_synack_not_inside_connect() -> None:
    """The host handshake's last ACK is held (TCP_QUICKACK off) and sent when the
    connection is settled, after the guest's SYN-ACK: until then the listener has nothing
    to accept, so it is not woken while the router answers. Loopback runs the handshake
    inside the syscalls, so both checks are exact."""
    b, eg, _, _ = settling_bridge()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        syn = syn_to(srv.getsockname()[1])
        b.from_guest(0, memoryview(syn), len(syn), 1.0)
        assert len(eg.packets) == 1  # the SYN-ACK
        assert not _accept_ready(srv), "the host was woken before the guest's SYN-ACK left"
        b.handle_timer(1.0)
        assert _accept_ready(srv, 1.0), "the held ACK was never sent"
        b.close(2.0)


def test_a_dial_answered_later_releases_the_held_ack_when_it_completes() -> None:
    """The same for a connect whose outcome comes as a socket event (a remote host): the
    ACK goes when the bridge sees the connection up, with the SYN-ACK."""
    b, eg, _, _ = settling_bridge()
    b._outcome_known = lambda _sock: errno.EINPROGRESS  # type: ignore[method-assign]
    with socket.create_server(("127.0.0.1", 0)) as srv:
        syn = syn_to(srv.getsockname()[1])
        b.from_guest(0, memoryview(syn), len(syn), 1.0)
        (flow,) = b.table.values()
        assert eg.packets == [] and not _accept_ready(srv)
        b._on_event(flow, 1.001, selectors.EVENT_WRITE)
        assert len(eg.packets) == 1 and _accept_ready(srv, 1.0)
        b.close(2.0)


def test_only_loopback_destinations_hold_the_handshake_ack() -> None:
    """A remote server would get its ACK a loop pass later for nothing (its wake-up does
    not compete with ours), and one that speaks first would greet that much later."""
    v4 = tcp_bridge._loopback
    assert v4(0x7F000001, False) and v4(0x7F0A0B0C, False)
    assert not v4(0x0A4D0001, False) and not v4(0xC0A80001, False)
    assert v4(1, True) and not v4(0xFD77 << 112 | 1, True)


def test_host_sockets_are_non_blocking_and_without_nagle_once_connected() -> None:
    """Both set where they cost least (socket() creates it non-blocking; no Nagle once
    the dial worked), and both still set, accepted at once or dialled."""
    for outcome in ("at once", "later"):
        b, _, _, _ = settling_bridge()
        if outcome == "later":
            b._outcome_known = lambda _sock: errno.EINPROGRESS  # type: ignore[method-assign]
        with socket.create_server(("127.0.0.1", 0)) as srv:
            syn = syn_to(srv.getsockname()[1])
            b.from_guest(0, memoryview(syn), len(syn), 1.0)
            b.handle_timer(1.0)
            (flow,) = b.table.values()
            assert flow.sock.gettimeout() == 0.0 and not flow.sock.getblocking()
            assert flow.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            b.close(2.0)


def test_a_segment_before_the_connection_is_settled_has_it_watched_once() -> None:
    """The guest's ACK can be in the SYN's own batch: the pump at the batch's end watches
    the socket, and settling it afterwards must not watch it again (a second register
    raises, and would reset the connection)."""
    b, eg, loop, log = settling_bridge()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        syn = syn_to(port)
        b.from_guest(0, memoryview(syn), len(syn), 1.0)
        ((iss, _, _),) = sent(eg)
        ack = seg_to(port, 100, iss + 1, tcp.ACK)
        b.from_guest(0, memoryview(ack), len(ack), 1.0)
        b.flush_dirty(1.0)
        b.handle_timer(1.0)
        assert [c for c, _ in loop.calls].count("register") == 1
        assert len(b.table) == 1 and len(log.open) == 1 and b.stats.internal_errors == 0
        b.close(2.0)


def test_a_connection_reset_in_its_syns_batch_leaves_nothing_behind() -> None:
    """The guest's RST in the SYN's own batch meets the connection built (every way into
    the bridge builds what was answered first), which it closes: nothing left watched,
    logged or timed."""
    b, eg, loop, log = settling_bridge()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        syn = syn_to(port)
        b.from_guest(0, memoryview(syn), len(syn), 1.0)
        assert len(sent(eg)) == 1  # the SYN-ACK
        rst = seg_to(port, 100, 0, tcp.RST)
        b.from_guest(0, memoryview(rst), len(rst), 1.0)
        b.handle_timer(1.0)
    assert len(b.table) == 0 and loop.selector.get_map() == {} and log.open == {}
    assert b.stats.internal_errors == 0 and sent(eg) == []


def test_a_dial_still_in_progress_is_watched_and_timed() -> None:
    """Only an outcome already known short-cuts the dial: one still in progress keeps its
    flow, its socket watch and its fast-dial deadline, and the guest hears nothing yet."""
    b, eg = dial_bridge("mirror")
    b._outcome_known = lambda _sock: errno.EINPROGRESS  # type: ignore[method-assign]
    with socket.create_server(("127.0.0.1", 0)) as srv:
        syn = syn_to(srv.getsockname()[1])
        b.from_guest(0, memoryview(syn), len(syn), 1.0)
        assert len(b.table) == 1 and b.stats.opened == 1 and b.stats.dials_ok == 0
        assert b.get_timer() == pytest.approx(1.0 + b.fast_dial)
        assert eg.packets == []


def test_icmp_mode_reports_a_refusal_as_port_unreachable() -> None:
    b, packets = refused_dial("icmp")
    assert [icmp_unreachable(p) for p in packets] == [icmp.PORT_UNREACHABLE]
    assert b.stats.refused_icmp == 1 and b.stats.refused_rst == 0


def test_none_mode_tells_the_guest_nothing() -> None:
    _, packets = refused_dial("none")
    assert packets == []


@pytest.mark.parametrize(("mode", "answer"), [("mirror", "icmp"), ("icmp", "icmp"), ("rst", "rst")])
def test_a_denied_destination_is_admin_prohibited_when_mirrored(mode: str, answer: str) -> None:
    b, eg = dial_bridge(mode, deny_cidrs=("93.184.216.0/24",))
    syn = guest_pkt(99, 0, tcp.SYN)
    b.from_guest(0, memoryview(syn), len(syn), 1.0)
    (pkt,) = eg.packets
    if answer == "icmp":
        assert icmp_unreachable(pkt) == icmp.ADMIN_PROHIBITED
    else:
        assert rst_flags_ack(pkt) == (tcp.RST | tcp.ACK, 100)
    assert len(b.table) == 0 and b.ctx.stats.policy_denied == 1


def seg_to(port: int, seq: int, ack: int, flags: int) -> bytearray:
    buf = bytearray(40)
    tcp.build_into(
        buf,
        src=GUEST_IP,
        dst=HOST_IP,
        sport=GUEST_PORT,
        dport=port,
        seq=seq & 0xFFFFFFFF,
        ack=ack & 0xFFFFFFFF,
        flags=flags,
        window=65535,
    )
    return buf


def sent(eg: Egress) -> list[tuple[int, int, int]]:
    """(seq, ack, flags) of every segment emitted since the last call."""
    out = []
    for p in eg.packets:
        parsed = tcp.parse(p, len(p))
        assert parsed is not None
        out.append((parsed[4], parsed[5], parsed[6]))
    eg.packets.clear()
    return out


def test_a_syn_retried_in_the_batch_that_reset_its_stale_tuple_opens_a_new_connection() -> None:
    """The guest reuses a port whose old connection we still hold (it closed, the host never
    did, its FIN_WAIT2 expired). Our challenge ACK draws its RST, and Linux resends the SYN
    a few ms later: under load both arrive in one drained batch. The SYN must open a new
    connection, not meet the reset one and draw a RST/ACK (the guest's connect() then fails
    with ECONNREFUSED: 140-468 of 100,000 in bench_flows, the warm-up's reused ports)."""
    eg = Egress()
    ctx = BridgeContext(eg, Loop(), mtu=1380, gateway=HOST_IP)
    pol = EgressPolicy(gateway="93.184.216.34", gateway_host="127.0.0.1")
    b = TcpBridge(ctx, pol, FlowTable[TcpFlow](float("inf")), TcpParams(mss=1340))
    b._outcome_known = lambda _sock: errno.EINPROGRESS  # type: ignore[method-assign]
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]

        def batch(*segs: bytearray, now: float) -> list[tuple[int, int, int]]:
            for s in segs:
                b.from_guest(0, memoryview(s), len(s), now)
            b.flush_dirty(now)
            return sent(eg)

        batch(seg_to(port, 99, 0, tcp.SYN), now=1.0)
        b.handle_timer(2.0)  # the fast-dial deadline: SYN-ACK
        ((iss, ack, flags),) = sent(eg)
        assert flags == tcp.SYN | tcp.ACK and ack == 100
        batch(seg_to(port, 100, iss + 1, tcp.ACK), now=2.1)
        batch(seg_to(port, 100, iss + 1, tcp.FIN | tcp.ACK), now=2.2)  # guest closes
        assert len(b.table) == 1  # the host has not: CLOSE-WAIT, held
        new_isn = 99 + 50_000_000
        ((_, chal_ack, chal_flags),) = batch(seg_to(port, new_isn, 0, tcp.SYN), now=70.0)
        assert chal_flags == tcp.ACK and chal_ack == 101  # challenge ACK (RFC 5961 4.2)
        # The guest's RST for it (SEQ = its ACK) and the resent SYN, in one batch
        out = batch(seg_to(port, 101, 0, tcp.RST), seg_to(port, new_isn, 0, tcp.SYN), now=70.01)
        assert not [f for _, _, f in out if f & tcp.RST]
        (flow,) = b.table.values()
        assert flow.ep.irs == new_isn and b.stats.opened == 2
        b.handle_timer(71.0)
        assert [(a, f) for _, a, f in sent(eg)] == [(new_isn + 1, tcp.SYN | tcp.ACK)]
        b.close(72.0)


class SmallRing(Egress):
    """An egress ring of `slots` that only a drain (ingress, elsewhere) empties."""

    def __init__(self, slots: int) -> None:
        super().__init__()
        self.slots = slots
        self.queued: list[bytes] = []

    def reserve(self) -> memoryview | None:
        return None if len(self.queued) >= self.slots else super().reserve()

    def commit(self, length: int, peer: int) -> None:
        super().commit(length, peer)
        self.queued.append(self.packets[-1])

    def drain(self) -> bool:
        self.queued.clear()
        return True


class CountingLoop(Loop):
    def __init__(self) -> None:
        super().__init__()
        self.unregistered = 0

    def unregister(self, fileobj: int | object) -> None:
        self.unregistered += 1
        super().unregister(fileobj)


def pending_connections(n: int, slots: int) -> tuple[TcpBridge, SmallRing, CountingLoop, Log]:
    """`n` guest connections, each dialling the host, behind an egress ring of `slots`."""
    eg = SmallRing(slots)
    loop = CountingLoop()
    log = Log()
    ctx = BridgeContext(eg, loop, mtu=1380, gateway=HOST_IP)
    pol = EgressPolicy(gateway="93.184.216.34", gateway_host="127.0.0.1")
    b = TcpBridge(ctx, pol, FlowTable[TcpFlow](float("inf")), TcpParams(mss=1340), log=log)
    # Still dialling: a loopback connect completes inside connect(), which would answer
    # each SYN at once (see refused_dial).
    b._outcome_known = lambda _sock: errno.EINPROGRESS  # type: ignore[method-assign]
    with socket.create_server(("127.0.0.1", 0)) as srv:
        for i in range(n):
            syn = seg_to(srv.getsockname()[1], 1000 + i, 0, tcp.SYN)
            struct.pack_into(">H", syn, 20, 20000 + i)  # guest port
            b.from_guest(1, memoryview(syn), len(syn), 1.0)
    assert len(b.table) == n and not eg.packets
    return b, eg, loop, log


def test_stopping_tells_every_guest_even_with_more_connections_than_ring_slots() -> None:
    """At 100,000 connections a worker holds ~14,000 and its egress ring 1,024 slots: the
    RSTs that did not fit were lost, and those guests kept a connection nobody served."""
    b, eg, loop, log = pending_connections(300, 64)
    drains = 0

    def make_room() -> bool:
        nonlocal drains
        drains += 1
        return eg.drain()

    fds = [f.sock.fileno() for f in b.table.values()]
    try:
        assert b.close(2.0, make_room=make_room, exiting=True) == 300
        # On the way out the process exit does the rest: no per-connection unregistering
        # or closing (the descriptors stay open, each marked to reset the host's end)
        assert loop.unregistered == 0
        assert all(os.fstat(fd) for fd in fds)
    finally:
        for fd in fds:
            os.close(fd)
    acked = sorted(rst_flags_ack(p)[1] for p in eg.packets)
    assert acked == [1001 + i for i in range(300)]  # one RST/ACK for each guest's SYN
    assert all(rst_flags_ack(p)[0] == tcp.RST | tcp.ACK for p in eg.packets)
    assert drains == 300 // 64  # a drain only when the ring is full
    assert b.stats.close_rst_lost == 0 and len(b.table) == 0 and log.open == {}


def test_stopping_counts_the_guests_it_could_not_tell() -> None:
    b, eg, _, _ = pending_connections(100, 64)
    assert b.close(2.0, make_room=lambda: False) == 100
    assert len(eg.packets) == 64 and b.stats.close_rst_lost == 36
    assert len(b.table) == 0


def test_initial_sequence_numbers_come_from_one_os_read_per_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A getrandom() per SYN was on the way to every SYN-ACK; the numbers are as random
    read in a batch."""
    reads: list[int] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        reads.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", urandom)
    tcp_bridge._ISN.forget()
    b, _ = dial_bridge("mirror")
    b._outcome_known = lambda _sock: errno.EINPROGRESS  # type: ignore[method-assign]
    with socket.create_server(("127.0.0.1", 0)) as srv:
        for i in range(3):
            syn = seg_to(srv.getsockname()[1], 1000, 0, tcp.SYN)
            struct.pack_into(">H", syn, 20, 20000 + i)  # guest port
            b.from_guest(0, memoryview(syn), len(syn), 1.0)
        isns = {f.ep.iss for f in b.table.values()}
        b.close(2.0)
    assert reads == [4 * tcp_bridge.ISN_BATCH] and len(isns) == 3


def test_a_forked_process_draws_its_own_initial_sequence_numbers() -> None:
    """Workers are forked: a pool copied into the child would hand both processes the
    same numbers."""
    tcp_bridge._ISN.next()  # the pool holds numbers now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next number and leave at once
        try:
            os.write(w, tcp_bridge._ISN.next().to_bytes(4, "big"))
        finally:
            os._exit(0)
    os.close(w)
    try:
        child = int.from_bytes(os.read(r, 4), "big")
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert child != tcp_bridge._ISN.next()
