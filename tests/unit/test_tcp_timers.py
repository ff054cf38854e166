"""TCP endpoint timers with a fake clock: RTO (RFC 6298), persist, keepalive, idle."""

from __future__ import annotations

import pytest

from wgslirp.net import tcp
from wgslirp.slirp.tcp_endpoint import TcpParams, TcpState
from wgslirp_testkit.tcpconn import Conn

ACK, FIN, RST = tcp.ACK, tcp.FIN, tcp.RST


def _established(params: TcpParams | None = None, rtt: float = 0.0, **kw: object) -> Conn:
    c = Conn(params, **kw)  # type: ignore[arg-type]
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    c.ep.accept(c.now)
    (sa,) = c.out()
    c.clock.advance(rtt)
    c.gseq += 1
    c.gack = sa.seq + 1
    c.send(b"", ACK)
    assert c.ep.state is TcpState.ESTABLISHED
    return c


def test_rto_timing_and_exponential_backoff() -> None:
    c = _established()
    # tiny RTT: the floor (rto_min) above SRTT, as Linux puts it
    assert c.ep.rto == pytest.approx(0.2, abs=1e-4)
    c.ep.write(b"r" * 1000, c.now)
    c.ep.flush(c.now)
    (first,) = c.out()
    sent_at = c.now
    expected = [0.2, 0.4, 0.8, 1.6, 3.2]
    for i, gap in enumerate(expected):
        t = c.ep.get_timer()
        assert t == pytest.approx(sent_at + gap, abs=1e-4)
        assert c.tick(t - c.now - 0.0005) == []
        (r,) = c.tick(0.001)
        assert (r.seq, r.data) == (first.seq, first.data)
        assert c.ep.rto_expirations == i + 1
        sent_at = t
    # Karn: the ACK of a retransmitted segment is no RTT sample; the backed-off RTO stays.
    c.gack += 1000
    c.send(b"", ACK)
    assert c.ep.rto == pytest.approx(6.4, abs=1e-3)
    assert c.ep.get_timer() is None or c.ep.get_timer() > c.now + 100  # nothing in flight
    # A fresh segment ACKed after 50 ms is a valid sample and brings the RTO back down.
    c.ep.write(b"s" * 100, c.now)
    c.ep.flush(c.now)
    c.out()
    c.clock.advance(0.05)
    c.gack += 100
    c.send(b"", ACK)
    assert c.ep.rto < 1.0
    assert c.ep.srtt > 0


def test_rto_from_rtt_samples() -> None:
    c = _established(rtt=0.3)
    # First sample R: SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 RTTVAR = 3R.
    assert c.ep.srtt == pytest.approx(0.3)
    assert c.ep.rto == pytest.approx(0.9)


def test_rto_capped_by_rto_max_and_gives_up() -> None:
    c = _established(TcpParams(rto_max=1.0, max_retries=4))
    c.ep.write(b"x" * 10, c.now)
    c.ep.flush(c.now)
    c.out()
    times = []
    for _ in range(4):
        t = c.ep.get_timer()
        assert t is not None
        times.append(round(t - c.now, 3))
        c.tick(t - c.now)
    assert times == [0.2, 0.4, 0.8, 1.0]
    segs = c.tick(1.0)
    assert len(segs) == 1 and segs[0].has(RST)
    assert c.ep.closed and c.ep.timed_out and not c.ep.reset


def test_rto_collapses_cwnd_and_goes_back() -> None:
    c = _established()
    c.ep.write(b"g" * 20 * 1340, c.now)
    c.ep.flush(c.now)
    segs = c.out()
    assert len(segs) == 10  # RFC 6928 initial window
    rs = c.tick(c.ep.rto)
    assert len(rs) == 1 and rs[0].seq == segs[0].seq  # loss window: one segment
    c.gack += 1340
    c.send(b"", ACK)
    segs2 = c.out()
    assert [s.seq for s in segs2] == [segs[1].seq, segs[2].seq]  # slow start again
    assert c.ep.retransmits >= 3


def test_fin_retransmitted_on_rto() -> None:
    c = _established()
    c.ep.shutdown(c.now)
    c.ep.flush(c.now)
    (f,) = c.out()
    assert f.has(FIN)
    (f2,) = c.tick(c.ep.rto)
    assert f2.has(FIN) and f2.seq == f.seq
    c.gack += 1
    c.send(b"", ACK)
    assert c.ep.state is TcpState.FIN_WAIT_2
    assert c.ep.get_timer() is None or c.ep.get_timer() > c.now + 100


def test_zero_window_probe_and_reopen() -> None:
    c = _established(window=0)
    assert c.ep.snd_wnd == 0
    c.ep.write(b"p" * 5000, c.now)
    c.ep.flush(c.now)
    assert c.out() == []  # window closed: nothing sent
    t = c.ep.get_timer()
    assert t is not None
    first_interval = t - c.now
    assert c.tick(t - c.now - 0.001) == []
    (probe,) = c.tick(0.001)
    # A probe with an already acknowledged number makes the guest repeat its window.
    assert probe.flags == ACK and probe.data == b""
    assert probe.seq == (c.gack - 1) & 0xFFFFFFFF
    c.send(b"", ACK, window=0)  # still closed
    t2 = c.ep.get_timer()
    assert t2 is not None and t2 - t == pytest.approx(2 * first_interval)  # backed off
    (probe2,) = c.tick(t2 - c.now + 0.0005)
    assert probe2.seq == probe.seq
    # The window opens: data flows at once.
    c.send(b"", ACK, window=65535)
    segs = c.out()
    assert sum(len(s.data) for s in segs) == 5000
    assert segs[0].seq == c.gack


def test_window_update_from_guest_resumes_sending() -> None:
    c = _established(window=2000)
    c.ep.write(b"u" * 6000, c.now)
    c.ep.flush(c.now)
    segs = c.out()
    assert sum(len(s.data) for s in segs) == 2000 - 660  # one MSS; the 660 left is an SWS
    c.gack += 1340
    c.send(b"", ACK, window=0)  # ACKs it, window now closed
    assert c.out() == []
    c.send(b"", ACK, window=8000)  # pure window update
    segs = c.out()
    assert sum(len(s.data) for s in segs) == 6000 - 1340


def test_guest_zero_window_probe_answered() -> None:
    c = _established(
        TcpParams(rcv_buffer=2000, ack_delay=0.5), syn_opts=tcp.options_bytes(mss=1000)
    )
    c.send(b"a" * 1000)
    c.send(b"a" * 1000)
    (a,) = c.out()
    assert a.window == 0
    c.send(b"", ACK, seq=c.gseq - 1)  # Linux-style probe
    (pa,) = c.out()
    assert pa.window == 0 and pa.ack == c.gseq
    c.send(b"z", ACK)  # data into a zero window: refused, ACKed
    (za,) = c.out()
    assert za.ack == c.gseq - 1 and c.ep.readable() == 2000


def test_keepalive_probes_then_gives_up() -> None:
    c = _established(TcpParams(keepalive_idle=30.0, keepalive_interval=5.0, keepalive_count=2))
    assert c.tick(29.9) == []
    (k,) = c.tick(0.2)
    assert k.flags == ACK and k.seq == (c.gack - 1) & 0xFFFFFFFF
    c.send(b"", ACK)  # the guest answers: idle again from now
    assert c.tick(29.0) == []
    (k1,) = c.tick(1.1)
    (k2,) = c.tick(5.0)
    assert k1.seq == k2.seq
    (r,) = c.tick(5.0)
    assert r.has(RST) and c.ep.closed and c.ep.timed_out


def test_idle_timeout_resets() -> None:
    c = _established(TcpParams(idle_timeout=100.0))
    c.tick(60)
    c.send(b"hi")  # activity restarts the clock
    c.tick(0.1)
    assert c.tick(99.0) == []
    (r,) = c.tick(1.0)
    assert r.has(RST) and c.ep.timed_out and c.ep.closed


def test_delayed_ack_deadline_not_pushed_by_more_data() -> None:
    c = _established(TcpParams(ack_delay=0.04))
    c.send(b"1")
    deadline = c.ep.get_timer()
    c.clock.advance(0.02)
    c.send(b"2")
    assert c.ep.get_timer() == deadline
    (a,) = c.tick(0.021)
    assert a.ack == c.gseq


def test_no_timer_when_idle_and_nothing_pending() -> None:
    c = _established(TcpParams(idle_timeout=0.0))
    assert c.ep.get_timer() is None


def test_pacing_spaces_new_segments() -> None:
    """TCP_PACE_US: new data leaves one segment per pace interval, on the timer."""
    c = _established(TcpParams(pace=0.001))
    c.ep.write(b"p" * 5000, c.now)
    c.ep.flush(c.now)
    assert len(c.out()) == 1
    t = c.ep.get_timer()
    assert t == pytest.approx(c.now + 0.001)
    assert len(c.tick(0.001)) == 1
    assert len(c.tick(0.001)) == 1
    unpaced = _established()
    unpaced.ep.write(b"p" * 5000, unpaced.now)
    unpaced.ep.flush(unpaced.now)
    assert len(unpaced.out()) == 4  # without pacing the whole window goes at once


def test_ack_idle_fail_resets_a_guest_that_stopped_acknowledging() -> None:
    """TCP_ACK_IDLE_FAIL_SEC: a guest that ACKs nothing while data is in flight is reset
    once the limit passes, even though RTO retries alone would go on for longer."""
    c = _established(TcpParams(ack_idle_fail=5.0, max_retries=100, rto_max=1.0))
    c.ep.write(b"z" * 2000, c.now)
    c.ep.flush(c.now)
    c.out()
    segs: list[object] = []
    for _ in range(20):
        segs = c.tick(0.5)
        if c.ep.closed:
            break
    assert c.ep.closed and c.ep.timed_out
    assert any(getattr(s, "has", lambda f: False)(RST) for s in segs)
    assert c.now - c.ep.last_ack_progress <= 5.5


def test_abort_after_graceful_close_frees_unread_guest_bytes() -> None:
    """Guest sent data + FIN and acknowledged our FIN, but the host side never took the
    data (it reset): abort must finish the connection instead of leaving it half-alive."""
    c = _established()
    c.send(b"unread", ACK | FIN)
    c.ep.shutdown(c.now)  # host EOF: our FIN goes out
    c.ep.flush(c.now)
    fin = [s for s in c.out() if s.has(FIN)]
    assert fin
    c.gack = fin[-1].seq + len(fin[-1].data) + 1
    c.send(b"", ACK)
    assert c.ep.state is TcpState.CLOSED and not c.ep.closed and c.ep.readable() == 6
    c.ep.abort(c.now)
    assert c.ep.closed


def test_closed_with_unread_bytes_expires_on_the_idle_timeout() -> None:
    c = _established(TcpParams(idle_timeout=30.0))
    c.send(b"never read", ACK | FIN)
    c.ep.shutdown(c.now)
    c.ep.flush(c.now)
    fin = [s for s in c.out() if s.has(FIN)]
    c.gack = fin[-1].seq + len(fin[-1].data) + 1
    c.send(b"", ACK)
    assert not c.ep.closed
    t = c.ep.get_timer()
    assert t is not None and t <= c.now + 30.0
    c.tick(t - c.now)
    assert c.ep.closed


def test_every_due_deadline_makes_progress() -> None:
    """After handle_timer(now) nothing may be due at `now` again: a deadline the endpoint
    ignores would spin the worker (here: a small flight below the ACK-idle threshold)."""
    c = _established(TcpParams(ack_idle_fail=5.0, rto_max=60.0, max_retries=100))
    c.ep.write(b"tiny", c.now)  # 4 bytes in flight: under the one-MSS ACK-idle threshold
    c.ep.flush(c.now)
    c.out()
    for _ in range(200):
        t = c.ep.get_timer()
        if t is None or c.ep.closed:
            break
        c.clock.t = max(c.clock.t, t)
        c.ep.handle_timer(c.now)
        c.ep.flush(c.now)
        c.out()
        t2 = c.ep.get_timer()
        assert t2 is None or t2 > c.now, (t, t2)
