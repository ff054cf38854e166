"""The TCP endpoint test helpers (wgslirp_testkit.tcpconn) checked themselves."""

from __future__ import annotations

from wgslirp.net import tcp
from wgslirp_testkit.tcpconn import Conn, guest_pkt


def test_guest_packets_parse_and_checksum() -> None:
    pkt = guest_pkt(1, 2, tcp.ACK | tcp.PSH, b"hello", opts=tcp.options_bytes(ts=(5, 6)))
    parsed = tcp.parse(pkt, len(pkt))
    assert parsed is not None and parsed[10] == 5
    assert tcp.checksum_ok(pkt, len(pkt))
    pkt[-1] ^= 1
    assert not tcp.checksum_ok(pkt, len(pkt))


def test_handshake_helper() -> None:
    c = Conn()
    synack = c.handshake()
    assert synack.ack == 100001
    assert synack.seq == 5000
