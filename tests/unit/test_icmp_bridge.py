"""The IPv4 echo bridge's shared raw socket: what wakes a worker. Each worker's raw socket
takes only echo replies (no ICMP error the host receives) and, with several workers, only
those whose identifier is in that worker's residue class (a socket filter)."""

from __future__ import annotations

import select
import socket
import struct

import pytest

from wgslirp.net import icmp, ipv4
from wgslirp.net.checksum import checksum
from wgslirp.runtime.loop import Loop
from wgslirp.slirp.bridge_context import BridgeContext
from wgslirp.slirp.icmp_bridge import IcmpBridge, echo_id_filter
from wgslirp.slirp.nat_table import FlowTable
from wgslirp.slirp.policy import EgressPolicy
from wgslirp_testkit.pinger import echo_request
from wgslirp_testkit.ports import closed_udp_port
from wgslirp_testkit.tcpconn import Egress


def _raw_allowed() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
        return True
    except OSError:
        return False


needs_raw = pytest.mark.skipif(not _raw_allowed(), reason="no raw ICMP socket allowed here")


GUEST_INT, GATEWAY_INT = ipv4.addr_to_int("10.77.0.2"), ipv4.addr_to_int("10.77.0.1")


def guest_ping(dst: int, ident: int, seq: int, data: bytes) -> bytes:
    """An IPv4 echo request from the guest to `dst`."""
    body = echo_request(ident, seq, data)
    pkt = bytearray(20 + len(body))
    ipv4.write_header(
        pkt, total_length=len(pkt), proto=ipv4.PROTO_ICMP, src=GUEST_INT, dst=dst, ttl=64
    )
    pkt[20:] = body
    return bytes(pkt)


def raw_bridge(index: int, nworkers: int) -> IcmpBridge:
    ctx = BridgeContext(Egress(), Loop(), mtu=1380, worker_index=index, nworkers=nworkers)
    return IcmpBridge(ctx, EgressPolicy(), FlowTable(30.0), "raw")


def identifiers_read(sock: socket.socket | None, sent: tuple[int, ...]) -> list[int]:
    """Echo identifiers among `sent` of what the socket holds (each packet starts with its
    IPv4 header); other tests' pings on this host may come in too, but never an error."""
    assert sock is not None
    out = []
    while select.select([sock], [], [], 0.2)[0]:
        data = sock.recv(65536)
        ihl = (data[0] & 0x0F) * 4
        assert data[ihl] == icmp.ECHO_REPLY
        ident = struct.unpack_from(">H", data, ihl + 4)[0]
        if ident in sent:
            out.append(ident)
    return out


def test_the_filter_program_is_six_instructions_comparing_the_residue() -> None:
    prog = echo_id_filter(1, 3)
    assert len(prog) == 6 * 8
    code, jt, jf, k = struct.unpack_from("=HBBI", prog, 2 * 8)
    assert (code, k) == (0x94, 3)  # A %= nworkers
    code, jt, jf, k = struct.unpack_from("=HBBI", prog, 3 * 8)
    assert (code, jt, jf, k) == (0x15, 0, 1, 1)  # == index: accept, else drop


SENT = (48880, 48881, 48882, 48883, 0xFFFF)


@needs_raw
def test_each_workers_raw_socket_sees_only_the_echo_replies_of_its_identifiers() -> None:
    bridges = [raw_bridge(i, 2) for i in range(2)]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as tx:
            for ident in SENT:
                tx.sendto(echo_request(ident, 1, b"x" * 1400), ("127.0.0.1", 0))
        assert identifiers_read(bridges[0]._raw, SENT) == [48880, 48882]
        assert identifiers_read(bridges[1]._raw, SENT) == [48881, 48883, 0xFFFF]
    finally:
        for b in bridges:
            b.close()


@needs_raw
def test_a_lone_worker_sees_every_echo_reply_and_no_icmp_error() -> None:
    b = raw_bridge(0, 1)
    try:
        with closed_udp_port() as port, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"anyone?", ("127.0.0.1", port))  # draws a port unreachable on lo
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as tx:
            for ident in (48890, 48891):
                tx.sendto(echo_request(ident, 1, b"ping"), ("127.0.0.1", 0))
        # both replies, and the port unreachable never came in
        assert identifiers_read(b._raw, (48890, 48891)) == [48890, 48891]
    finally:
        b.close()


@needs_raw
def test_a_local_hosts_answer_is_relayed_within_the_requests_own_handling() -> None:
    """The host's kernel answers a ping of 127.0.0.1 before sendto() returns: the guest's
    echo reply is in the egress when from_guest returns, with no poll in between."""
    ctx = BridgeContext(Egress(), Loop(), mtu=1380)
    b = IcmpBridge(ctx, EgressPolicy(gateway="10.77.0.1"), FlowTable(30.0), "raw")
    try:
        request = guest_ping(GATEWAY_INT, ident=0x4242, seq=9, data=b"x" * 1000)
        b.from_guest(0, memoryview(request), len(request), 1.0)
        eg = ctx.egress
        assert isinstance(eg, Egress)
        (reply,) = eg.packets
        assert reply[20] == icmp.ECHO_REPLY and struct.unpack_from(">HH", reply, 24) == (
            0x4242,
            9,
        )
        assert checksum(reply[20:]) == 0 and bytes(reply[28:]) == b"x" * 1000
    finally:
        b.close()
