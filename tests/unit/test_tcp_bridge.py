"""The TCP bridge: segments of no connection, orphans of a dead worker, the connection log."""

from __future__ import annotations

import socket
import struct

from wgslirp.net import tcp
from wgslirp.runtime.loop import Loop
from wgslirp.slirp.bridge_context import BridgeContext
from wgslirp.slirp.nat_table import FlowTable
from wgslirp.slirp.policy import EgressPolicy
from wgslirp.slirp.tcp_bridge import STRAY_RST_INTERVAL, TcpBridge, TcpFlow
from wgslirp.slirp.tcp_endpoint import TcpParams
from wgslirp_testkit.tcpconn import GUEST_IP, GUEST_PORT, HOST_IP, HOST_PORT, Egress, guest_pkt


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
