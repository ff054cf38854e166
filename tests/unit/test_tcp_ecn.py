"""ECN (RFC 3168) on the sans-I/O endpoint with a fake clock: negotiated only when the
guest's SYN asks, new data ECT(0) and nothing else, a CE mark echoed until CWR, and the
guest's echo answered by one reduction per window with CWR on the next new data."""

from __future__ import annotations

import pytest

from wgslirp.net import tcp
from wgslirp.slirp.tcp_endpoint import TcpParams
from wgslirp_testkit.tcpconn import Conn, Seg, guest_pkt

MSS = 1340
RTT = 0.040
ECE, CWR, ACK, SYN = tcp.ECE, tcp.CWR, tcp.ACK, tcp.SYN


def _conn(
    ask: bool = True, cc: str = "cubic", ecn: bool = True, v6: bool = False
) -> tuple[Conn, Seg]:
    p = TcpParams(mss=MSS, pacing=False, cc=cc, ecn=ecn)
    c = Conn(p, syn_opts=tcp.options_bytes(mss=MSS, sack_perm=True, wscale=7), v6=v6)
    if ask:
        c.syn = guest_pkt(c.gseq, 0, SYN | ECE | CWR, window=65535, opts=c.syn_opts, v6=v6)
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    c.ep.accept(c.now)
    (sa,) = c.out()
    c.clock.advance(RTT)
    c.gseq += 1
    c.gack = sa.seq + 1
    c.send(b"", ACK)
    return c, sa


def _ecn_bits(s: Seg) -> int:
    return s.raw[1] & 3


def test_ecn_is_agreed_only_when_the_guest_asks_and_it_is_on() -> None:
    _, sa = _conn(ask=True)
    assert sa.has(SYN | ACK | ECE) and not sa.flags & CWR
    _, sa = _conn(ask=False)
    assert not sa.flags & ECE
    _, sa = _conn(ask=True, ecn=False)
    assert not sa.flags & ECE


def test_new_data_is_ect0_but_acks_and_retransmissions_are_not() -> None:
    c, _ = _conn()
    c.ep.write(b"d" * 4 * MSS, c.now)
    c.ep.flush(c.now)
    segs = c.out()
    assert len(segs) == 4 and all(_ecn_bits(s) == 2 for s in segs)  # ECT(0)
    resent = c.tick(c.ep.rto + 0.01)  # nothing acknowledged: a timeout resends
    assert resent and all(_ecn_bits(s) == 0 for s in resent)
    c.send(b"x" * 100, ACK)  # the guest's data: our ACK
    acks = [s for s in c.out() + c.tick(0.05) if not s.data]
    assert acks and all(_ecn_bits(s) == 0 for s in acks)


def test_without_ecn_nothing_is_marked() -> None:
    c, _ = _conn(ask=False)
    c.ep.write(b"d" * 2 * MSS, c.now)
    c.ep.flush(c.now)
    assert all(_ecn_bits(s) == 0 for s in c.out())


def _ce(c: Conn, data: bytes, flags: int = ACK) -> None:
    pkt = guest_pkt(c.gseq, c.gack, flags, data, window=65535)
    pkt[1] |= 3  # CE: the IP checksum is ingress's business, not the endpoint's
    c.gseq += len(data)
    c.ep.receive(memoryview(pkt), len(pkt), c.now)
    c.ep.flush(c.now)


def test_a_ce_mark_is_echoed_until_the_guest_sends_cwr() -> None:
    c, _ = _conn()
    _ce(c, b"a" * 500)
    c.tick(0.05)  # the delayed ACK
    c.send(b"b" * 500, ACK)
    echoed = c.out() + c.tick(0.05)
    assert c.ep.ecn_ce == 1
    assert echoed and all(s.flags & ECE for s in echoed)
    c.send(b"c" * 500, ACK | CWR)  # the guest reduced its window
    after = c.out() + c.tick(0.05)
    assert after and not any(s.flags & ECE for s in after)


def test_ipv6_ecn_lives_in_the_traffic_class_not_the_flow_label() -> None:
    """IPv6 carries ECN in the traffic class's low bits (byte 0's low nibble and byte 1's
    high one); byte 1's low bits are the flow label, which Linux fills with a hash."""
    c, sa = _conn(v6=True)
    assert sa.raw[0] >> 4 == 6 and sa.has(SYN | ACK | ECE)
    c.ep.write(b"d" * 2 * MSS, c.now)
    c.ep.flush(c.now)
    data = c.out()
    assert data and all((s.raw[1] >> 4) & 3 == 2 for s in data)  # ECT(0) in the class
    for flow_label_bits in (0x03, 0x0F):  # not CE: the flow label's top bits
        pkt = guest_pkt(c.gseq, c.gack, ACK, b"a" * 100, v6=True)
        pkt[1] |= flow_label_bits
        c.gseq += 100
        c.ep.receive(memoryview(pkt), len(pkt), c.now)
    assert c.ep.ecn_ce == 0
    pkt = guest_pkt(c.gseq, c.gack, ACK, b"b" * 100, v6=True, tos=3)  # CE
    c.gseq += 100
    c.ep.receive(memoryview(pkt), len(pkt), c.now)
    c.ep.flush(c.now)
    assert c.ep.ecn_ce == 1
    echoed = c.out() + c.tick(0.05)
    assert echoed and all(s.flags & ECE for s in echoed)


@pytest.mark.parametrize("cc", ["cubic", "newreno"])
def test_an_echo_reduces_once_per_window_and_cwr_marks_the_next_new_data(cc: str) -> None:
    c, _ = _conn(cc=cc)
    c.ep.cc.cwnd = c.ep.cc.ssthresh = 20 * MSS
    c.ep.write(b"d" * 60 * MSS, c.now)
    c.ep.flush(c.now)
    first = c.out()
    assert len(first) == 20
    c.clock.advance(RTT)
    c.gack = first[0].seq + MSS
    c.send(b"", ACK | ECE)
    assert c.ep.ecn_reductions == 1
    assert c.ep.cc.cwnd < 20 * MSS
    reduced = c.ep.cc.cwnd
    assert c.out() == []  # 19 segments in flight, above the reduced window
    new: list[Seg] = []
    for s in first[1:12]:  # echoes of the same window (before the guest saw our CWR)
        c.gack = s.seq + MSS
        c.send(b"", ACK | ECE)
        new += c.out()
    assert c.ep.ecn_reductions == 1 and c.ep.cc.cwnd >= reduced  # one cut per window
    assert new and new[0].flags & CWR and not any(s.flags & CWR for s in new[1:])
    assert c.ep.retransmits == 0  # congestion without loss resends nothing


def test_bbr_does_not_reduce_on_an_echo() -> None:
    c, _ = _conn(cc="bbr")
    c.ep.write(b"d" * 10 * MSS, c.now)
    c.ep.flush(c.now)
    first = c.out()
    before = c.ep.cc.cwnd
    c.clock.advance(RTT)
    c.gack = first[0].seq + MSS
    c.send(b"", ACK | ECE)
    assert c.ep.cc.cwnd >= before
