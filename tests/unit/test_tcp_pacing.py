"""Pacing of new data at cwnd / srtt (TCP_PACING), driven by a fake clock."""

from __future__ import annotations

import pytest

from wgslirp.net import tcp
from wgslirp.net.tcp import ACK
from wgslirp.slirp.tcp_endpoint import PACE_QUANTUM, TcpParams, TcpState
from wgslirp_testkit.tcpconn import Conn

MSS = 1340


def established(rtt: float, **params: object) -> Conn:
    p = TcpParams(mss=MSS, snd_buffer=4 << 20, **params)  # type: ignore[arg-type]
    # A scaled window (64 KiB << 7) far above anything sent here: only cwnd and pacing limit.
    c = Conn(p, window=65535, syn_opts=tcp.options_bytes(mss=1460, wscale=7))
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    c.ep.accept(c.now)
    (sa,) = c.out()
    c.clock.advance(rtt)  # the SYN-ACK's round trip is the first RTT sample
    c.gseq += 1
    c.gack = sa.seq + 1
    c.send(b"", ACK)
    assert c.ep.state is TcpState.ESTABLISHED
    return c


def test_a_window_leaves_in_bursts_of_one_quantum_at_the_pacing_rate() -> None:
    c = established(0.040)
    c.ep.cc.cwnd = 200 * MSS  # a window far larger than one quantum's worth
    c.ep.cc.ssthresh = 100 * MSS  # congestion avoidance: 1.2 x cwnd per srtt
    rate = 1.2 * c.ep.cc.cwnd / c.ep.srtt  # bytes per second
    c.ep.write(b"d" * (200 * MSS), c.now)
    c.ep.flush(c.now)
    first = c.out()
    # One quantum of credit now (plus the catch-up allowance): nowhere near the window.
    assert 0 < sum(len(s.data) for s in first) <= 2 * PACE_QUANTUM * rate + MSS
    t = c.ep.get_timer()
    assert t is not None and t - c.now <= PACE_QUANTUM + 1e-9
    # Over the next 20 ms the data keeps leaving at about the rate, not all at once.
    total = sum(len(s.data) for s in first)
    for _ in range(20):
        total += sum(len(s.data) for s in c.tick(0.001))
        c.ep.flush(c.now)
        total += sum(len(s.data) for s in c.out())
    assert total == pytest.approx(0.021 * rate, rel=0.15)
    assert total < 200 * MSS  # the window did not go out in one go


def test_slow_start_paces_at_twice_the_window_per_rtt() -> None:
    c = established(0.040)
    c.ep.cc.cwnd = 100 * MSS  # below ssthresh (infinite at start)
    c.ep.write(b"d" * (100 * MSS), c.now)
    total = 0
    c.ep.flush(c.now)
    total += sum(len(s.data) for s in c.out())
    for _ in range(10):
        total += sum(len(s.data) for s in c.tick(0.001))
        c.ep.flush(c.now)
        total += sum(len(s.data) for s in c.out())
    assert total == pytest.approx(0.011 * 2 * 100 * MSS / c.ep.srtt, rel=0.15)


def test_on_a_short_path_pacing_never_holds_anything_back() -> None:
    """Loopback round trips (0.3 ms): the rate is far above what a window can use."""
    c = established(0.0003)
    c.ep.cc.cwnd = 40 * MSS
    c.ep.write(b"d" * (40 * MSS), c.now)
    c.ep.flush(c.now)
    assert sum(len(s.data) for s in c.out()) == 40 * MSS


def test_pacing_off_sends_the_whole_window_at_once() -> None:
    c = established(0.040, pacing=False)
    c.ep.cc.cwnd = 40 * MSS
    c.ep.write(b"d" * (40 * MSS), c.now)
    c.ep.flush(c.now)
    assert sum(len(s.data) for s in c.out()) == 40 * MSS


def test_acks_are_not_held_back_while_data_waits_for_the_rate() -> None:
    """A paced sender still acknowledges the guest's data at once (ACKs are not paced)."""
    c = established(0.040)
    c.ep.cc.cwnd = 200 * MSS
    c.ep.cc.ssthresh = 100 * MSS
    c.ep.write(b"d" * (200 * MSS), c.now)
    c.ep.flush(c.now)
    c.out()
    assert c.ep.get_timer() is not None  # data is waiting for the pacing rate
    assert c.ep.get_timer() - c.now > 0  # not due yet
    c.send(b"g" * 1460)
    c.send(b"g" * 1460)  # two full segments: acknowledged at once (RFC 9293 3.8.6.3)
    segs = c.out()
    assert segs and segs[-1].ack == c.gseq
