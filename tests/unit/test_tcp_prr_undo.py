"""Proportional rate reduction (RFC 6937) and undoing reductions that were not needed
(D-SACK, RFC 2883, and the timestamp test of RFC 3522) against the sans-I/O endpoint with a
fake clock; the guest is tcpconn.SackReceiver, which reports duplicates and echoes
timestamps the way RFC 7323 says."""

from __future__ import annotations

import pytest

from wgslirp.net import tcp
from wgslirp.slirp.tcp_endpoint import TcpParams
from wgslirp.slirp.tcp_prr import Prr
from wgslirp_testkit.tcpconn import Conn, SackReceiver, Seg

MSS = 1340
RTT = 0.040


# ----------------------------------------------------------------- PRR arithmetic


def test_prr_spreads_the_reduction_over_the_round_trip() -> None:
    """Above ssthresh every ACK releases ssthresh/RecoverFS of what it delivered, so when
    the whole old window has been delivered, 70 % of it has been sent: never a silence,
    never more than a segment per segment."""
    prr = Prr()
    prr.start(100 * MSS, mark=0, una=0)
    prr.out = MSS  # the fast retransmission
    sent = [0]
    mark = 0
    for _ in range(99):
        mark += MSS
        q = prr.quota(pipe=90 * MSS, ssthresh=70 * MSS, mark=mark, una=0, mss=MSS)
        assert q <= MSS
        prr.out += q
        sent.append(q)
    assert 68 * MSS <= prr.out <= 71 * MSS
    assert all(s > 0 for s in sent[2:])  # something on (nearly) every ACK


def test_prr_below_ssthresh_grows_like_slow_start_and_no_further() -> None:
    prr = Prr()
    prr.start(40 * MSS, mark=0, una=0)
    prr.out = MSS
    # An ACK that advances SND.UNA and delivered one segment: one more than delivered.
    assert prr.quota(pipe=2 * MSS, ssthresh=20 * MSS, mark=MSS, una=MSS, mss=MSS) == 2 * MSS
    prr.out += 2 * MSS
    # One that does not advance it (it may be reporting more losses): what it delivered.
    assert prr.quota(pipe=2 * MSS, ssthresh=20 * MSS, mark=2 * MSS, una=MSS, mss=MSS) == MSS
    prr.out += MSS
    # Never beyond ssthresh - pipe.
    assert prr.quota(pipe=19 * MSS, ssthresh=20 * MSS, mark=12 * MSS, una=8 * MSS, mss=MSS) == MSS


def test_prr_first_retransmission_and_reneging() -> None:
    prr = Prr()
    prr.start(10 * MSS, mark=5 * MSS, una=0)
    # Nothing delivered yet and nothing sent: the fast retransmission still goes.
    assert prr.quota(pipe=9 * MSS, ssthresh=7 * MSS, mark=5 * MSS, una=0, mss=MSS) == MSS
    prr.out = MSS
    # A guest that takes back a SACK delivered nothing (not a negative amount).
    assert prr.quota(pipe=9 * MSS, ssthresh=7 * MSS, mark=3 * MSS, una=0, mss=MSS) == 0
    assert prr.delivered == 0


# ---------------------------------------------------------------- the endpoint


def _conn(
    cc: str, *, ts: bool = False, segments: int = 100, cwnd: int = 40
) -> tuple[Conn, list[Seg]]:
    p = TcpParams(mss=MSS, pacing=False, cc=cc, snd_buffer=1 << 20)
    syn = tcp.options_bytes(mss=MSS, sack_perm=True, wscale=7, ts=(1, 0) if ts else None)
    c = Conn(p, syn_opts=syn, window=65535, ts=ts)
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    c.ep.accept(c.now)
    (sa,) = c.out()
    if sa.opts.ts_val is not None:
        c.peer_ts_recent = sa.opts.ts_val
    c.clock.advance(RTT)
    c.gseq += 1
    c.gack = sa.seq + 1
    c.send(b"", tcp.ACK)
    c.ep.cc.cwnd = cwnd * MSS
    c.ep.cc.ssthresh = cwnd * MSS  # congestion avoidance: no growth in between
    c.ep.write(bytes(i % 251 for i in range(segments * MSS)), c.now)
    c.ep.flush(c.now)
    segs = c.out()
    assert len(segs) == cwnd
    return c, segs


@pytest.mark.parametrize("cc", ["cubic", "newreno"])
def test_one_loss_sends_on_every_ack_of_the_recovery(cc: str) -> None:
    """RFC 6675 alone sends nothing until the pipe has fallen to ssthresh, then one
    segment per ACK; PRR sends from the first ACKs, ssthresh/RecoverFS of a segment per
    segment delivered (RFC 6937 3)."""
    c, segs = _conn(cc)
    rx = SackReceiver(c, True)
    c.clock.advance(RTT)
    flight = len(segs)
    per_ack: list[int] = []
    for s in segs[1:]:  # the first segment is lost
        rx.take(s)
        rx.ack()
        out = c.out()
        if c.ep.fast_retransmits:
            per_ack.append(len(out))
        else:
            flight += len(out)  # limited transmit (RFC 3042) before recovery
    assert c.ep.fast_retransmits == 1 and c.ep._in_recovery
    assert sum(per_ack[1:11]) >= 4, per_ack  # sending from the start (RFC 6675 alone: 0)
    assert max(per_ack) <= 1, per_ack  # and never a burst
    # Each ACK in recovery delivered one segment (the first one also SACKed, so counts).
    expected = c.ep.cc.ssthresh / MSS * len(per_ack) / flight
    assert abs(sum(per_ack) - expected) <= 1.0, (per_ack, expected)


def _reordered_episode(c: Conn, segs: list[Seg], rx: SackReceiver) -> tuple[Seg, list[Seg]]:
    """The first segment is overtaken by the rest (held back, not lost): the SACKs make
    the endpoint resend it. Returns the retransmission and the new segments sent meanwhile
    (limited transmit, recovery), which are added to `segs`."""
    c.clock.advance(RTT)
    resent: list[Seg] = []
    new: list[Seg] = []
    for s in segs[1:8]:
        rx.take(s)
        rx.ack()
        for o in c.out():
            (resent if o.seq < segs[-1].seq + len(segs[-1].data) else new).append(o)
    assert c.ep.fast_retransmits == 1 and [o.seq for o in resent] == [segs[0].seq]
    return resent[0], new


def test_a_dsack_for_the_only_retransmission_undoes_the_reduction() -> None:
    c, segs = _conn("cubic")
    before = c.ep.cc.cwnd
    rx = SackReceiver(c, True, dsack=True)
    again, new = _reordered_episode(c, segs, rx)
    assert c.ep.cc.cwnd < before
    for s in [segs[0], *segs[8:], *new]:  # the original arrives late: recovery ends
        rx.take(s)
    rx.ack()
    c.out()
    assert c.ep.spurious_undos == 0
    rx.take(again)  # then the needless copy: the guest reports it as a duplicate
    rx.ack()
    assert c.ep.spurious_undos == 1
    assert c.ep.cc.cwnd >= before


def test_an_ack_echoing_the_original_timestamp_undoes_at_recovery_end() -> None:
    c, segs = _conn("cubic", ts=True)
    before = c.ep.cc.cwnd
    rx = SackReceiver(c, True, ts=True)
    _, new = _reordered_episode(c, segs, rx)
    c.clock.advance(0.005)
    for s in [segs[0], *segs[8:], *new]:  # the original fills the hole: its timestamp is echoed
        rx.take(s)
    rx.ack()
    assert c.ep.spurious_undos == 1
    assert c.ep.cc.cwnd >= before


def test_a_real_loss_is_not_undone() -> None:
    c, segs = _conn("cubic", ts=True)
    before = c.ep.cc.cwnd
    rx = SackReceiver(c, True, ts=True, dsack=True)
    again, new = _reordered_episode(c, segs, rx)  # this time segs[0] never arrives
    c.clock.advance(RTT)
    for s in [again, *segs[8:], *new]:
        rx.take(s)
    rx.ack()
    for s in c.out():
        rx.take(s)
    rx.ack()
    assert c.ep.spurious_undos == 0
    assert c.ep.cc.cwnd < before


@pytest.mark.parametrize("cc", ["cubic", "bbr"])
def test_a_spurious_timeout_is_undone_and_does_not_go_back_n(cc: str) -> None:
    """A delay spike longer than the RTO: the ACKs that then arrive echo the originals'
    timestamps, so the timeout was spurious (RFC 3522): the window comes back and the data
    still in flight is not all sent again."""
    c, segs = _conn(cc, ts=True, segments=20, cwnd=10)
    rx = SackReceiver(c, True, ts=True)
    before = c.ep.cc.cwnd
    timeout = c.tick(c.ep.rto + 0.001)  # nothing came back in time
    assert c.ep.rto_expirations == 1
    assert timeout[-1].seq == segs[0].seq  # (after a tail loss probe)
    assert c.ep.cc.cwnd < before
    for s in segs[:5]:  # the delayed originals arrive after all
        rx.take(s)
    rx.ack()
    after = c.out()
    assert c.ep.spurious_undos == 1
    assert c.ep.cc.cwnd >= before
    assert not [s for s in after if segs[5].seq <= s.seq < segs[-1].seq + len(segs[-1].data)]


def test_a_dsack_shows_reordering_so_the_next_hole_waits_a_reordering_window() -> None:
    """A D-SACK for a resend says the path delivered what was judged lost; the hole
    never filled by itself (it was resent), so that is the only sign of reordering. The
    next overtaken segment is then given srtt / 4 before it is judged lost (RFC 8985
    6.2.3), and arriving within it, is never resent."""
    c, segs = _conn("cubic")
    rx = SackReceiver(c, True, dsack=True)
    again, new = _reordered_episode(c, segs, rx)
    c.clock.advance(RTT)  # (a round trip for the samples, as on a path)
    for s in [segs[0], *segs[8:], *new]:
        rx.take(s)
    rx.ack()
    pending = c.out()
    rx.take(again)  # the needless copy, reported as a duplicate
    rx.ack()
    pending += c.out()
    assert c.ep.spurious_undos == 1 and len(pending) >= 5
    c.clock.advance(RTT)
    for s in pending[1:5]:  # the next segment is overtaken by four after it
        rx.take(s)
        rx.ack()
        assert all(o.seq != pending[0].seq for o in c.out()), "resent at once"
    c.clock.advance(0.002)
    c.tick(0.0)
    rx.take(pending[0])  # it arrives 2 ms late, within the window
    rx.ack()
    assert all(o.seq != pending[0].seq for o in c.out())
    assert c.ep.fast_retransmits == 1  # the first episode's only
