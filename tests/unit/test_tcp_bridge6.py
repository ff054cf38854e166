"""The TCP bridge and endpoint for IPv6 guests against a real [::1] listener: the same
sans-I/O endpoint with 60-byte headers and MSS = MTU - 60, refusals and stray segments
answered in IPv6."""

from __future__ import annotations

import selectors
import socket
from dataclasses import dataclass

import pytest

from wgslirp.net import icmpv6, ipv6, tcp
from wgslirp.runtime.loop import Loop
from wgslirp.slirp.bridge_context import BridgeContext
from wgslirp.slirp.nat_table import FlowTable
from wgslirp.slirp.policy import EgressPolicy
from wgslirp.slirp.tcp_bridge import TcpBridge, TcpFlow
from wgslirp.slirp.tcp_endpoint import TcpParams
from wgslirp_testkit.netns import ipv6_unavailable
from wgslirp_testkit.tcpconn import Egress

# These tests talk to real sockets on [::1].
pytestmark = pytest.mark.skipif(ipv6_unavailable() is not None, reason=str(ipv6_unavailable()))

GUEST6, GW6 = ipv6.addr_to_int("fd77::2"), ipv6.addr_to_int("fd77::1")
MTU = 1380
GPORT = 40000


@dataclass
class Seg6:
    src: int
    dst: int
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    opts: tcp.Options
    data: bytes


def parse6(pkt: bytes) -> Seg6:
    assert pkt[0] >> 4 == 6, "not an IPv6 segment"
    parsed = tcp.parse(pkt, len(pkt))
    assert parsed is not None and tcp.checksum_ok(pkt, len(pkt))
    src, dst, sport, dport, seq, ack, flags, _w, ooff, poff, plen = parsed
    opts = tcp.parse_options(pkt, ooff, poff)
    assert opts is not None
    return Seg6(src, dst, sport, dport, seq, ack, flags, opts, bytes(pkt[poff : poff + plen]))


def guest6(
    dport: int, seq: int, ack: int, flags: int, data: bytes = b"", opts: bytes = b""
) -> bytearray:
    buf = bytearray(60 + len(opts) + len(data))
    n = tcp.build_into(
        buf, src=GUEST6, dst=GW6, sport=GPORT, dport=dport, seq=seq, ack=ack, flags=flags,
        window=65535, options=opts, payload=data,
    )  # fmt: skip
    return buf[:n]


def bridge(error_signal: str = "icmp") -> tuple[TcpBridge, Egress]:
    eg = Egress()
    ctx = BridgeContext(eg, Loop(), mtu=MTU, gateway6=GW6)
    b = TcpBridge(
        ctx,
        EgressPolicy(gateway6="fd77::1"),
        FlowTable[TcpFlow](float("inf")),
        TcpParams(mss=MTU - 40),
        error_signal=error_signal,
    )
    return b, eg


def until(cond: object, sock: socket.socket, b: TcpBridge, flow: TcpFlow, now: float) -> None:
    """Feed the flow's socket events and timers to the bridge until `cond()` holds
    (bounded: 100 turns of at most 20 ms; the bridge's clock advances 20 ms per turn)."""
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    for turn in range(100):
        if cond():  # type: ignore[operator]
            break
        t = now + turn * 0.02
        for _key, mask in sel.select(0.02):
            assert flow.handler is not None
            flow.handler(t, mask)
        b.handle_timer(t)
        b.flush_dirty(t)
    sel.close()
    assert cond(), "condition not reached within 2 s"  # type: ignore[operator]


def test_connection_to_host_loopback6_through_gateway6() -> None:
    b, eg = bridge()
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as srv:
        port = srv.getsockname()[1]
        mss_opt = tcp.options_bytes(mss=1440)  # the guest's own, larger than ours
        syn = guest6(port, 1000, 0, tcp.SYN, opts=mss_opt)
        b.from_guest(0, memoryview(syn), len(syn), 1.0)
        b.handle_timer(1.0)  # the turn's timers: the connection is built once answered
        (flow,) = b.table.values()
        assert flow.sock.family == socket.AF_INET6
        until(lambda: eg.packets, flow.sock, b, flow, 1.0)
        synack = parse6(eg.packets.pop(0))
        assert synack.flags == tcp.SYN | tcp.ACK and synack.ack == 1001
        assert (synack.src, synack.dst, synack.sport, synack.dport) == (GW6, GUEST6, port, GPORT)
        assert synack.opts.mss == MTU - 60  # IPv6 headers: MSS from MTU - 60
        conn, _ = srv.accept()
        conn.settimeout(2)
        ack = guest6(port, 1001, synack.seq + 1, tcp.ACK, b"hello over ipv6")
        b.from_guest(0, memoryview(ack), len(ack), 1.1)
        b.flush_dirty(1.1)
        assert conn.recv(100) == b"hello over ipv6"
        # host -> guest: full-sized segments fit the tunnel MTU with their IPv6 header
        conn.sendall(bytes(range(256)) * 20)
        got = bytearray()

        def enough() -> bool:
            for p in eg.packets:
                assert len(p) <= MTU
                got.extend(parse6(p).data)
            eg.packets.clear()
            return len(got) >= 5120

        until(enough, flow.sock, b, flow, 1.2)
        assert bytes(got) == bytes(range(256)) * 20
        conn.close()


def test_closed_port_is_refused_at_once_with_icmpv6_port_unreachable() -> None:
    b, eg = bridge()
    probe = socket.create_server(("::1", 0), family=socket.AF_INET6)
    port = probe.getsockname()[1]
    probe.close()
    syn = guest6(port, 5, 0, tcp.SYN)
    b.from_guest(0, memoryview(syn), len(syn), 1.0)
    flows = list(b.table.values())
    if flows:  # connect in progress: its failure shows as a socket event
        until(lambda: eg.packets, flows[0].sock, b, flows[0], 1.0)
    (err,) = eg.packets
    parsed = icmpv6.parse(err, len(err))
    assert parsed is not None
    assert parsed[:2] == (icmpv6.DEST_UNREACHABLE, icmpv6.PORT_UNREACHABLE)
    assert icmpv6.quoted_flow(err, len(err)) == (GUEST6, GW6, 6, GPORT, port)


def test_closed_port_with_rst_signalling() -> None:
    b, eg = bridge("rst")
    probe = socket.create_server(("::1", 0), family=socket.AF_INET6)
    port = probe.getsockname()[1]
    probe.close()
    syn = guest6(port, 5, 0, tcp.SYN)
    b.from_guest(0, memoryview(syn), len(syn), 1.0)
    flows = list(b.table.values())
    if flows:
        until(lambda: eg.packets, flows[0].sock, b, flows[0], 1.0)
    rst = parse6(eg.packets[-1])
    assert rst.flags & tcp.RST and rst.ack == 6


@pytest.mark.parametrize("dst", ["::ffff:127.0.0.1", "fe80::1", "64:ff9b::7f00:1"])
def test_denied_destination_gets_admin_prohibited(dst: str) -> None:
    b, eg = bridge()
    buf = bytearray(80)
    n = tcp.build_into(
        buf, src=GUEST6, dst=ipv6.addr_to_int(dst), sport=GPORT, dport=22, seq=1, ack=0,
        flags=tcp.SYN, window=65535,
    )  # fmt: skip
    b.from_guest(0, memoryview(buf), n, 1.0)
    (err,) = eg.packets
    assert err[40:42] == bytes([icmpv6.DEST_UNREACHABLE, icmpv6.ADMIN_PROHIBITED])
    assert len(b.table) == 0


def test_stray_segment_gets_an_ipv6_rst() -> None:
    b, eg = bridge()
    seg = guest6(443, 77, 1234, tcp.ACK, b"late data")
    b.from_guest(0, memoryview(seg), len(seg), 1.0)
    rst = parse6(eg.packets[0])
    assert rst.flags == tcp.RST and rst.seq == 1234
    assert (rst.src, rst.dst, rst.sport, rst.dport) == (GW6, GUEST6, 443, GPORT)


def test_orphans_of_a_dead_worker_are_probed_in_ipv6() -> None:
    b, eg = bridge()
    assert b.reset_orphans([(3, GUEST6, GPORT, GW6, 443, 5000, 100000)]) == 1
    probe = parse6(eg.packets[0])
    assert probe.flags == tcp.ACK and probe.seq == 5000 and probe.ack == 100001
    assert (probe.src, probe.dst, probe.sport, probe.dport) == (GW6, GUEST6, 443, GPORT)


@pytest.mark.parametrize("how", ["payload length past the datagram", "no room for a TCP header"])
def test_a_truncated_ipv6_segment_is_counted_malformed_and_never_dialed(how: str) -> None:
    b, eg = bridge()
    syn = guest6(9, 1000, 0, tcp.SYN)
    if how == "payload length past the datagram":
        n = len(syn) - 1  # the header says one byte more than arrived
    else:
        syn[4:6] = (12).to_bytes(2, "big")  # 12 bytes after the IPv6 header: no TCP header
        n = len(syn)
    b.from_guest(0, memoryview(syn), n, 1.0)
    assert b.stats.malformed == 1
    assert not list(b.table.values()) and not eg.packets
