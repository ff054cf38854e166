"""The TCP bridge's handling of segments that belong to no connection (no host sockets)."""

from __future__ import annotations

from wgslirp.net import tcp
from wgslirp.runtime.loop import Loop
from wgslirp.slirp.bridge_context import BridgeContext
from wgslirp.slirp.nat_table import FlowTable
from wgslirp.slirp.policy import EgressPolicy
from wgslirp.slirp.tcp_bridge import STRAY_RST_INTERVAL, TcpBridge, TcpFlow
from wgslirp.slirp.tcp_endpoint import TcpParams
from wgslirp_testkit.tcpconn import Egress, guest_pkt


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
    import struct

    b, eg = bridge()
    for port in range(40000, 40010):
        pkt = guest_pkt(1, 7, tcp.ACK)
        struct.pack_into(">H", pkt, 20, port)  # another guest port: another tuple
        b.from_guest(0, memoryview(pkt), len(pkt), 1.0)
    assert b.stats.rst_sent == 10 and b.stats.rst_suppressed == 0
    assert len(eg.packets) == 10
