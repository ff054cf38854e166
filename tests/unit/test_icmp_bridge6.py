"""The ICMP echo bridge for IPv6 guests against the host's own loopback (no tunnel): ping6
of the gateway alias is answered by [::1], a ping of an IPv4-mapped address goes out as
ICMP and comes back as ICMPv6, and refused destinations are told so."""

from __future__ import annotations

import selectors
import socket
import struct

import pytest

from tests.unit.test_ipv6 import icmp_body, packet
from wgslirp.net import icmpv6, ipv6
from wgslirp.runtime.loop import Loop
from wgslirp.slirp.bridge_context import BridgeContext
from wgslirp.slirp.icmp_bridge import IcmpBridge, probe_mode
from wgslirp.slirp.nat_table import FlowTable
from wgslirp.slirp.policy import EgressPolicy
from wgslirp_testkit.netns import ipv6_unavailable
from wgslirp_testkit.tcpconn import Egress

# These tests talk to real sockets on [::1].
pytestmark = pytest.mark.skipif(ipv6_unavailable() is not None, reason=str(ipv6_unavailable()))

GUEST6, GW6 = ipv6.addr_to_int("fd77::2"), ipv6.addr_to_int("fd77::1")
MODE4, MODE6 = probe_mode(), probe_mode(v6=True)
needs_icmp6 = pytest.mark.skipif(MODE6 is None, reason="no ICMPv6 socket allowed here")


def ping6(dst: int, ident: int, seq: int, data: bytes) -> bytearray:
    body = icmp_body(128, 0, struct.pack(">HH", ident, seq) + data, GUEST6, dst)
    return packet(ipv6.NH_ICMPV6, body, src=GUEST6, dst=dst)


def bridge(policy: EgressPolicy) -> tuple[IcmpBridge, Egress, Loop]:
    eg, loop = Egress(), Loop()
    ctx = BridgeContext(eg, loop, mtu=1380, gateway6=GW6)
    return IcmpBridge(ctx, policy, FlowTable(30.0), MODE4, MODE6), eg, loop


def pump(b: IcmpBridge, eg: Egress, loop: Loop, want: int) -> None:
    """Run the bridge's sockets until `want` packets reached the guest (bounded: 2 s)."""
    sel = selectors.DefaultSelector()
    socks = [s for s in (b._raw, b._raw6) if s is not None]
    socks += [f.sock for f in b.table.values() if f.sock is not None]
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    for _ in range(40):
        if len(eg.packets) >= want:
            break
        for key, _ev in sel.select(0.05):
            sock = key.fileobj
            if sock is b._raw6:
                b._on_raw6(None, 1.0)
            elif sock is b._raw:
                b.on_readable(None, 1.0)
            else:
                flow = next(f for f in b.table.values() if f.sock is sock)
                b.on_readable(flow, 1.0)
    sel.close()


def echo_reply_ok(pkt: bytes | bytearray, src: int, ident: int, seq: int, data: bytes) -> None:
    parsed = icmpv6.parse(pkt, len(pkt))
    assert parsed is not None and parsed[:2] == (icmpv6.ECHO_REPLY, 0)
    assert icmpv6.checksum_ok(pkt, parsed[2], parsed[3])
    assert ipv6.src_dst(pkt) == (src, GUEST6)
    assert icmpv6.echo_id_seq(pkt, parsed[2]) == (ident, seq)
    assert bytes(pkt[parsed[2] + 8 :]) == data


@needs_icmp6
def test_ping6_of_the_gateway_is_answered_by_host_loopback6() -> None:
    b, eg, loop = bridge(EgressPolicy(gateway6="fd77::1"))
    for seq in (1, 2):
        req = ping6(GW6, 0x5151, seq, b"ping6 data")
        b.from_guest(0, memoryview(req), len(req), 0.0)
        pump(b, eg, loop, seq)
        assert len(eg.packets) == seq
        echo_reply_ok(eg.packets[-1], GW6, 0x5151, seq, b"ping6 data")
    (flow,) = b.table.values()
    assert flow.v6 and flow.host_v6 and flow.remote == 1
    assert b.ctx.stats.icmp_echo_requests == 2 and b.ctx.stats.icmp_echo_replies == 2
    b.close()


@needs_icmp6
@pytest.mark.skipif(MODE4 is None, reason="no ICMP socket allowed here")
def test_ping_of_an_ipv4_mapped_address_leaves_as_icmp_and_returns_as_icmpv6() -> None:
    b, eg, loop = bridge(EgressPolicy(allow_cidrs=("127.0.0.1/32",)))
    mapped = ipv6.addr_to_int("::ffff:127.0.0.1")
    req = ping6(mapped, 0x0707, 9, b"mapped")
    b.from_guest(0, memoryview(req), len(req), 0.0)
    pump(b, eg, loop, 1)
    (reply,) = eg.packets
    echo_reply_ok(reply, mapped, 0x0707, 9, b"mapped")
    (flow,) = b.table.values()
    assert flow.v6 and not flow.host_v6
    b.close()


def test_refused_ping6_gets_admin_prohibited() -> None:
    b, eg, _loop = bridge(EgressPolicy())
    for dst in ("fe80::1", "::ffff:127.0.0.1", "64:ff9b::808:808"):
        eg.packets.clear()
        req = ping6(ipv6.addr_to_int(dst), 1, 1, b"x")
        b.from_guest(0, memoryview(req), len(req), 0.0)
        (err,) = eg.packets
        assert err[40:42] == bytes([icmpv6.DEST_UNREACHABLE, icmpv6.ADMIN_PROHIBITED]), dst
    # a multicast destination is refused too, but RFC 4443 2.4 (e.3) forbids the error
    eg.packets.clear()
    req = ping6(ipv6.addr_to_int("ff02::1"), 1, 1, b"x")
    b.from_guest(0, memoryview(req), len(req), 0.0)
    assert eg.packets == [] and b.ctx.stats.policy_denied == 4
    assert len(b.table) == 0
    b.close()


def test_icmpv6_errors_and_other_types_from_the_guest_are_not_forwarded() -> None:
    b, eg, _loop = bridge(EgressPolicy(gateway6="fd77::1"))
    for kind in (icmpv6.DEST_UNREACHABLE, 135, icmpv6.ECHO_REPLY):  # 135: neighbour solicit
        body = icmp_body(kind, 0, bytes(20), GUEST6, GW6)
        pkt = packet(ipv6.NH_ICMPV6, body, src=GUEST6, dst=GW6)
        b.from_guest(0, memoryview(pkt), len(pkt), 0.0)
    assert b.ctx.stats.icmp_unsupported == 3 and not eg.packets and len(b.table) == 0
    b.close()


def test_probe_mode_reports_a_socket_kind_this_process_can_open() -> None:
    for v6, family, proto in (
        (False, socket.AF_INET, socket.IPPROTO_ICMP),
        (True, socket.AF_INET6, socket.IPPROTO_ICMPV6),
    ):
        mode = probe_mode(v6)
        if mode is not None:
            kind = socket.SOCK_DGRAM if mode == "ping" else socket.SOCK_RAW
            socket.socket(family, kind, proto).close()
