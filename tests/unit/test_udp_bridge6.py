"""The UDP bridge for IPv6 guests against real loopback sockets (no tunnel): the gateway
alias to [::1], replies and their fragments, ICMPv6 errors from the host relayed, refused
destinations, and an IPv4-mapped destination reached through an IPv4 socket."""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterator

import pytest

from wgslirp.net import fragment, icmpv6, ipv6, udp
from wgslirp.net.ipv4 import addr_to_int
from wgslirp.runtime.loop import Loop
from wgslirp.slirp.bridge_context import BridgeContext
from wgslirp.slirp.nat_table import FlowTable
from wgslirp.slirp.policy import EgressPolicy
from wgslirp.slirp.udp_bridge import UdpBridge, UdpFlow
from wgslirp_testkit.netns import ipv6_unavailable
from wgslirp_testkit.tcpconn import Egress

# These tests talk to real sockets on [::1].
pytestmark = pytest.mark.skipif(ipv6_unavailable() is not None, reason=str(ipv6_unavailable()))

GUEST6, GW6 = ipv6.addr_to_int("fd77::2"), ipv6.addr_to_int("fd77::1")
MTU = 1380


def bridge(policy: EgressPolicy | None = None) -> tuple[UdpBridge, Egress]:
    eg = Egress()
    ctx = BridgeContext(eg, Loop(), mtu=MTU, gateway6=GW6)
    pol = policy or EgressPolicy(gateway6="fd77::1")
    return UdpBridge(ctx, pol, FlowTable[UdpFlow](60.0)), eg


def send(b: UdpBridge, dst: int, port: int, payload: bytes, sport: int = 40000) -> None:
    buf = bytearray(70000)
    n = udp.build_udp_into6(buf, GUEST6, dst, sport, port, payload)
    b.from_guest(0, memoryview(buf), n, 0.0)


def wait_readable(sock: socket.socket) -> None:
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    assert sel.select(2), "nothing arrived within 2 s"
    sel.close()


@pytest.fixture
def server6() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::1", 0))
    s.settimeout(2)
    yield s
    s.close()


def test_gateway6_reaches_host_loopback6_and_replies_come_back(server6: socket.socket) -> None:
    b, eg = bridge()
    port = server6.getsockname()[1]
    send(b, GW6, port, b"hello6")
    data, peer_addr = server6.recvfrom(100)
    assert data == b"hello6"
    (flow,) = b.table.values()
    assert flow.sock.family == socket.AF_INET6
    server6.sendto(b"world6", peer_addr)
    wait_readable(flow.sock)
    b.on_readable(flow, 1.0)
    (pkt,) = eg.packets
    assert udp.parse(pkt, len(pkt)) == (GW6, GUEST6, port, 40000, 48, 6)
    assert udp.checksum_ok(pkt, len(pkt))
    # a reply above the tunnel MTU leaves in IPv6 fragments the router originates
    eg.packets.clear()
    big = bytes(range(256)) * 12
    server6.sendto(big, peer_addr)
    wait_readable(flow.sock)
    b.on_readable(flow, 2.0)
    assert len(eg.packets) == 3 and all(len(p) <= MTU for p in eg.packets)
    r = fragment.Reassembler()
    whole = [w for p in eg.packets if (w := r.feed(p, len(p), 0.0)) is not None]
    assert len(whole) == 1 and udp.checksum_ok(whole[0], len(whole[0]))
    assert bytes(whole[0][48:]) == big


def test_closed_port_is_relayed_as_icmpv6_port_unreachable() -> None:
    probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    probe.bind(("::1", 0))
    port = probe.getsockname()[1]
    probe.close()  # now nobody listens there
    b, eg = bridge()
    send(b, GW6, port, b"anyone?")
    (flow,) = b.table.values()
    if not eg.packets:  # loopback relays it during the first send; a slower path later
        wait_readable(flow.sock)
        b.on_readable(flow, 1.0)
    (err,) = eg.packets
    parsed = icmpv6.parse(err, len(err))
    assert parsed is not None
    assert parsed[:2] == (icmpv6.DEST_UNREACHABLE, icmpv6.PORT_UNREACHABLE)
    assert icmpv6.checksum_ok(err, parsed[2], parsed[3])
    assert ipv6.src_dst(err) == (GW6, GUEST6)
    assert icmpv6.quoted_flow(err, len(err)) == (GUEST6, GW6, 17, 40000, port)
    assert b.ctx.stats.udp_icmp_errors_relayed == 1


def test_denied_destinations_get_admin_prohibited_and_nothing_is_sent(
    server6: socket.socket,
) -> None:
    port = server6.getsockname()[1]
    v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v4.bind(("127.0.0.1", 0))
    v4.settimeout(0.3)
    b, eg = bridge()
    for dst, p in (
        (ipv6.addr_to_int("::1"), port),
        (ipv6.addr_to_int("::ffff:127.0.0.1"), v4.getsockname()[1]),
        (ipv6.addr_to_int("fe80::1"), port),
    ):
        eg.packets.clear()
        send(b, dst, p, b"sneak")
        (err,) = eg.packets
        assert err[40:42] == bytes([icmpv6.DEST_UNREACHABLE, icmpv6.ADMIN_PROHIBITED])
    assert b.ctx.stats.policy_denied == 3 and len(b.table) == 0
    server6.settimeout(0.3)
    with pytest.raises(TimeoutError):
        server6.recvfrom(100)
    with pytest.raises(TimeoutError):
        v4.recvfrom(100)
    v4.close()


def test_ipv4_mapped_destination_is_reached_through_an_ipv4_socket() -> None:
    v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v4.bind(("127.0.0.1", 0))
    v4.settimeout(2)
    port = v4.getsockname()[1]
    b, eg = bridge(EgressPolicy(allow_cidrs=("127.0.0.1/32",)))
    mapped = ipv6.addr_to_int("::ffff:127.0.0.1")
    send(b, mapped, port, b"via v4")
    data, peer_addr = v4.recvfrom(100)
    assert data == b"via v4"
    (flow,) = b.table.values()
    assert flow.sock.family == socket.AF_INET and flow.v6
    v4.sendto(b"back", peer_addr)
    wait_readable(flow.sock)
    b.on_readable(flow, 1.0)
    (pkt,) = eg.packets
    # the guest spoke IPv6 to the mapped address, and hears back from it in IPv6
    assert udp.parse(pkt, len(pkt)) == (mapped, GUEST6, port, 40000, 48, 4)
    assert udp.checksum_ok(pkt, len(pkt))
    assert addr_to_int("127.0.0.1") == mapped & 0xFFFFFFFF
    v4.close()
