"""The UDP bridge's host side against real loopback sockets (no tunnel)."""

from __future__ import annotations

import selectors
import socket
import struct
from collections.abc import Iterator

import pytest

from wgslirp.net import icmp, udp
from wgslirp.net.ipv4 import addr_to_int
from wgslirp.runtime.loop import Loop
from wgslirp.slirp.bridge_context import BridgeContext
from wgslirp.slirp.nat_table import FlowTable
from wgslirp.slirp.policy import EgressPolicy
from wgslirp.slirp.udp_bridge import UdpBridge, UdpFlow
from wgslirp_testkit.ports import closed_udp_port
from wgslirp_testkit.tcpconn import Egress

GUEST, GATEWAY = addr_to_int("10.77.0.2"), addr_to_int("10.77.0.1")


def egress(room: int) -> Egress:
    """The shared recording egress; `room=0` is a ring that stays full."""
    eg = Egress()
    eg.full = room == 0
    return eg


@pytest.fixture
def server() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2)
    yield s
    s.close()


def open_flow(server: socket.socket, room: int) -> tuple[UdpBridge, Egress, UdpFlow]:
    eg = egress(room)
    ctx = BridgeContext(eg, Loop(), mtu=1380)
    bridge = UdpBridge(ctx, EgressPolicy(gateway="10.77.0.1"), FlowTable[UdpFlow](60.0))
    port = server.getsockname()[1]
    buf = bytearray(2048)
    n = udp.build_udp_into(buf, GUEST, GATEWAY, 40000, port, b"hello")
    bridge.from_guest(0, memoryview(buf), n, 0.0)
    bridge.flush()  # the end of the worker's batch
    data, _addr = server.recvfrom(100)
    assert data == b"hello"
    (flow,) = bridge.table.values()
    return bridge, eg, flow


def test_replies_reach_the_guest_through_the_gateway_address(server: socket.socket) -> None:
    bridge, eg, flow = open_flow(server, room=10)
    server.sendto(b"world", flow.sock.getsockname())
    sel = selectors.DefaultSelector()
    sel.register(flow.sock, selectors.EVENT_READ)
    assert sel.select(2)
    bridge.on_readable(flow, 1.0)
    parsed = udp.parse(memoryview(eg.packets[0]), len(eg.packets[0]))
    assert parsed is not None
    assert eg.packets[0].endswith(b"world")


def test_a_new_flows_refusal_is_relayed_before_its_first_send_returns_to_the_worker() -> None:
    """Loopback queues the port unreachable during send(): the guest's error leaves with the
    datagram's own handling, and the socket is left with nothing to report later."""
    bridge = plain_bridge()
    eg = bridge.ctx.egress
    assert isinstance(eg, Egress)
    with closed_udp_port() as port:
        guest_datagrams(bridge, [(port, b"anyone?")])
    (pkt,) = eg.packets
    assert pkt[9] == 1 and pkt[20:22] == bytes([icmp.DEST_UNREACHABLE, icmp.PORT_UNREACHABLE])
    (flow,) = bridge.table.values()
    sel = selectors.DefaultSelector()
    sel.register(flow.sock, selectors.EVENT_READ)
    assert sel.select(0.05) == []  # no error left pending to wake the worker again
    sel.close()


def test_a_full_egress_ring_drops_and_counts_instead_of_spinning(server: socket.socket) -> None:
    """With the ring full, a readable host socket must still be drained (tail drop):
    left readable, the level-triggered loop would call the handler again at once, forever."""
    bridge, eg, flow = open_flow(server, room=0)
    for i in range(5):
        server.sendto(b"x%d" % i, flow.sock.getsockname())
    sel = selectors.DefaultSelector()
    sel.register(flow.sock, selectors.EVENT_READ)
    calls = 0
    for _ in range(50):  # each readable report is one loop turn
        if not sel.select(0.2):
            break
        calls += 1
        bridge.on_readable(flow, 1.0)
    assert not sel.select(0)  # drained: the loop can sleep again
    assert calls <= 5 and bridge.ctx.stats.egress_full == 5 and eg.packets == []


@pytest.mark.parametrize(
    ("dst", "want_src"),
    [
        ("127.0.0.1", "10.77.0.1"),
        ("0.1.2.3", "10.77.0.1"),
        ("240.0.0.9", "10.77.0.1"),
        ("192.0.2.80", "192.0.2.80"),
    ],
)
def test_refusal_comes_from_an_address_the_guest_accepts(dst: str, want_src: str) -> None:
    """A denial of a loopback/zero/reserved destination is sent from the gateway: an ICMP
    error with a martian source would be dropped by the guest's stack unseen."""
    from wgslirp.net import icmp
    from wgslirp.net.ipv4 import int_to_addr

    eg = egress(4)
    ctx = BridgeContext(eg, Loop(), mtu=1380, gateway=GATEWAY)
    buf = bytearray(2048)
    n = udp.build_udp_into(buf, GUEST, addr_to_int(dst), 40000, 53, b"q")
    ctx.send_unreachable(buf, n, icmp.ADMIN_PROHIBITED, 0, 0.0)
    (err,) = eg.packets
    assert err[9] == 1 and err[20] == 3 and err[21] == icmp.ADMIN_PROHIBITED
    assert int_to_addr(int.from_bytes(err[12:16], "big")) == want_src
    assert int_to_addr(int.from_bytes(err[16:20], "big")) == "10.77.0.2"


def test_icmp_errors_are_rate_limited_per_worker() -> None:
    """RFC 1812 4.3.2.8: a burst, then the sustained rate; the rest counted, not sent."""
    from wgslirp.net import icmp
    from wgslirp.slirp.bridge_context import ICMP_ERROR_BURST, ICMP_ERROR_RATE

    now = 100.0
    eg = egress(100_000)
    ctx = BridgeContext(eg, Loop(), mtu=1380)
    buf = bytearray(2048)
    n = udp.build_udp_into(buf, GUEST, addr_to_int("192.0.2.80"), 40000, 9, b"q")
    for _ in range(1000):
        ctx.send_unreachable(buf, n, icmp.PORT_UNREACHABLE, 0, now)
    assert len(eg.packets) == ICMP_ERROR_BURST
    assert ctx.stats.icmp_errors_rate_limited == 1000 - ICMP_ERROR_BURST
    now += 0.125  # refills at the sustained rate
    for _ in range(1000):
        ctx.send_unreachable(buf, n, icmp.PORT_UNREACHABLE, 0, now)
    assert len(eg.packets) == ICMP_ERROR_BURST + int(0.125 * ICMP_ERROR_RATE)


def guest_datagrams(bridge: UdpBridge, sends: list[tuple[int, bytes]]) -> None:
    """(destination port, payload) from guest port 40000, as one drained batch."""
    buf = bytearray(4096)
    for port, payload in sends:
        n = udp.build_udp_into(buf, GUEST, GATEWAY, 40000, port, payload)
        bridge.from_guest(0, memoryview(buf), n, 0.0)
    bridge.flush()


def receive_all(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recvfrom(4096)[0] for _ in range(count)]


def plain_bridge() -> UdpBridge:
    ctx = BridgeContext(egress(10), Loop(), mtu=1380)
    return UdpBridge(ctx, EgressPolicy(gateway="10.77.0.1"), FlowTable[UdpFlow](60.0))


def test_a_flows_datagrams_in_one_batch_leave_in_one_gso_send(server: socket.socket) -> None:
    server.setsockopt(17, 104, 1)  # UDP_GRO: a GSO send arrives as one train
    bridge = plain_bridge()
    port = server.getsockname()[1]
    payloads = [bytes([i]) * 100 for i in range(40)] + [b"end"]
    guest_datagrams(bridge, [(port, p) for p in payloads])
    assert server.recv(65535) == payloads[0]  # the first of the batch went at once
    data, anc, _flags, _addr = server.recvmsg(65535, socket.CMSG_SPACE(4))
    (seg,) = [struct.unpack("=i", d)[0] for lvl, kind, d in anc if (lvl, kind) == (17, 104)]
    assert seg == 100 and data == b"".join(payloads[1:])  # the other 40, in order, one train
    assert bridge.ctx.stats.udp_tx_packets == 41
    assert bridge.ctx.stats.udp_tx_bytes == 40 * 100 + 3


def test_order_within_each_flow_survives_batching(server: socket.socket) -> None:
    bridge = plain_bridge()
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.settimeout(2)
    a, b = server.getsockname()[1], other.getsockname()[1]
    # sizes that break runs (a bigger one after smaller, one past a shorter one), a
    # reassembled-size datagram that goes alone, and two flows interleaved
    sizes = [100, 100, 200, 50, 50, 300, 3000, 20, 20]
    sends = []
    for i, size in enumerate(sizes):
        sends.append((a, bytes([i]) * size))
        sends.append((b, bytes([100 + i]) * (size // 2 or 1)))
    guest_datagrams(bridge, sends)
    try:
        assert receive_all(server, len(sizes)) == [p for port, p in sends if port == a]
        assert receive_all(other, len(sizes)) == [p for port, p in sends if port == b]
    finally:
        other.close()
    assert bridge.ctx.stats.udp_tx_packets == 2 * len(sizes)
