"""Losses recovered without waiting for the retransmission timeout: the tail loss probe
(RFC 8985 7), RFC 6675's IsLost before the third duplicate ACK, a lost retransmission
found a round trip later (RACK, RFC 8985 6.2), and a timeout that resends only what the
guest did not SACK (RFC 6675 5.1). Fake clock; the guest is tcpconn.SackReceiver."""

from __future__ import annotations

from wgslirp.net import tcp
from wgslirp.slirp.tcp_endpoint import RACK_PEEK, TcpParams
from wgslirp_testkit.tcpconn import Conn, SackReceiver, Seg

MSS = 1340
RTT = 0.040


def _setup(total: int = 10 * MSS, **params: object) -> tuple[Conn, SackReceiver, list[Seg]]:
    p = TcpParams(mss=MSS, pacing=False, **params)  # type: ignore[arg-type]
    c = Conn(p, syn_opts=tcp.options_bytes(mss=MSS, sack_perm=True), window=65535)
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    c.ep.accept(c.now)
    (sa,) = c.out()
    c.clock.advance(RTT)  # srtt = 40 ms from the handshake
    c.gseq += 1
    c.gack = sa.seq + 1
    c.send(b"", tcp.ACK)
    c.ep.write(bytes(i % 251 for i in range(total)), c.now)
    c.ep.flush(c.now)
    segs = c.out()
    return c, SackReceiver(c, True), segs


def test_a_lost_tail_is_probed_and_repaired_without_a_timeout() -> None:
    c, rx, segs = _setup()
    assert len(segs) == 10
    c.clock.advance(RTT)
    for s in segs[:8]:  # the last two are lost
        rx.take(s)
    rx.ack()
    assert c.out() == []
    rto_at = c.now + c.ep.rto
    # Two round trips later (not the 200 ms+ of the RTO) the last segment goes again.
    probe = c.tick(3 * RTT)
    assert [s.seq for s in probe] == [segs[9].seq]
    assert c.ep.tlp_probes == 1 and c.now < rto_at
    # Its SACK shows the segment before it missing: recovery starts at once.
    c.clock.advance(RTT)
    rx.take(probe[0])
    rx.ack()
    resent = c.out()
    assert segs[8].seq in [s.seq for s in resent]
    assert c.ep.fast_retransmits == 1
    for s in resent:
        rx.take(s)
    rx.ack()
    assert c.gack == segs[9].seq + MSS
    assert c.ep.rto_expirations == 0


def test_no_probe_while_everything_is_acknowledged_or_without_sack() -> None:
    c, rx, segs = _setup()
    for s in segs:
        rx.take(s)
    rx.ack()
    c.tick(1.0)
    assert c.ep.tlp_probes == 0
    p = TcpParams(mss=MSS, pacing=False)
    plain = Conn(p, syn_opts=tcp.options_bytes(mss=MSS), window=65535)
    plain.handshake()
    plain.ep.write(b"x" * 5 * MSS, plain.now)
    plain.ep.flush(plain.now)
    plain.out()
    plain.tick(0.15)
    assert plain.ep.tlp_probes == 0  # RACK-TLP needs SACK to learn anything


def test_one_ack_sacking_three_segments_starts_recovery_before_three_dupacks() -> None:
    """RFC 6675 IsLost: more than two segments SACKed above the hole. A guest that ACKs
    in stretches (GRO, delayed ACKs) may never send three duplicates."""
    c, rx, segs = _setup()
    c.clock.advance(RTT)  # the ACK comes a round trip after the segments left
    for s in segs[1:5]:
        rx.take(s)
    rx.ack()  # one duplicate ACK, four segments SACKed
    out = c.out()
    assert segs[0].seq in [s.seq for s in out]
    assert c.ep.fast_retransmits == 1 and c.ep.dup_acks == 1


def test_a_lost_retransmission_is_resent_a_round_trip_later_not_after_a_timeout() -> None:
    c, rx, segs = _setup(total=60 * MSS, init_cwnd=20)
    assert len(segs) == 20
    c.clock.advance(RTT)
    out: list[Seg] = []
    for s in segs[1:]:  # the first segment is lost
        rx.take(s)
        rx.ack()
        out += c.out()
    first_resend = [s for s in out if s.seq == segs[0].seq]
    assert len(first_resend) == 1 and c.ep.fast_retransmits == 1
    # That retransmission is lost too; new data sent in recovery keeps being SACKed.
    pending = [s for s in out if s.seq != segs[0].seq]
    second: list[Seg] = []
    for _ in range(20):
        c.clock.advance(0.005)
        if pending:
            rx.take(pending.pop(0))
        rx.ack()
        got = c.out()
        second += [s for s in got if s.seq == segs[0].seq]
        pending += [s for s in got if s.seq != segs[0].seq]
        if second:
            break
    assert second, "the lost retransmission was not resent before the timeout"
    assert c.ep.lost_retransmits == 1
    assert c.ep.rto_expirations == 0
    rx.take(second[0])
    rx.ack()
    assert c.gack > segs[-1].seq


def test_a_timeout_resends_only_what_the_guest_did_not_sack() -> None:
    c, rx, segs = _setup(total=10 * MSS)
    c.clock.advance(RTT)
    for s in segs[1:]:
        rx.take(s)
    rx.ack()  # recovery: segment 0 resent ...
    assert [s.seq for s in c.out() if s.seq == segs[0].seq] == [segs[0].seq]
    # ... and lost; no ACK comes back at all now, so the timer expires.
    out = c.tick(c.ep.rto + 0.001)
    assert c.ep.rto_expirations == 1
    # Go-back-N from SND.UNA, but the nine SACKed segments are not sent again.
    assert [s.seq for s in out] == [segs[0].seq]
    rx.take(out[0])
    rx.ack()
    assert c.gack == segs[-1].seq + MSS


def test_a_second_timeout_in_a_row_forgets_the_sacks_in_case_the_guest_reneged() -> None:
    c, rx, segs = _setup(total=6 * MSS)
    c.clock.advance(RTT)
    for s in segs[1:]:
        rx.take(s)
    rx.ack()
    c.out()
    c.tick(c.ep.rto + 0.001)
    assert c.ep.rto_expirations == 1 and c.ep._sacked
    c.tick(c.ep.rto + 0.001)  # nothing answered again
    assert c.ep.rto_expirations == 2 and not c.ep._sacked


def test_holes_are_resent_at_the_pacing_rate_not_in_one_burst() -> None:
    """A burst loss of 60 segments: their retransmissions leave spread over time, as the
    new data would, so a shallow bottleneck that dropped them once does not again."""
    # CUBIC: its recovery window (ssthresh, 70 % of 100) lets all the holes go at once
    p = TcpParams(mss=MSS, pacing=True, cc="cubic", snd_buffer=1 << 20)
    c = Conn(p, syn_opts=tcp.options_bytes(mss=MSS, sack_perm=True, wscale=7), window=65535)
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    c.ep.accept(c.now)
    (sa,) = c.out()
    c.clock.advance(RTT)
    c.gseq += 1
    c.gack = sa.seq + 1
    c.send(b"", tcp.ACK)
    c.ep.cc.cwnd = 100 * MSS
    c.ep.write(b"z" * 100 * MSS, c.now)
    segs: list[Seg] = []
    for _ in range(200):
        segs += c.tick(0.001)
        c.ep.flush(c.now)
        segs += c.out()
        if len(segs) >= 100:
            break
    assert len(segs) == 100
    rx = SackReceiver(c, True)
    c.clock.advance(RTT)  # their ACKs come a round trip later
    for s in segs[60:]:  # the first 60 are lost
        rx.take(s)
    rx.ack()
    first = [s for s in c.out() if s.seq < segs[60].seq]
    assert 0 < len(first) < 30  # not all 60 holes in the same instant
    later = []
    for _ in range(100):
        later += [s for s in c.tick(0.001) if s.seq < segs[60].seq]
    assert len(first) + len(later) >= 40  # the rest follow at the rate


def test_acks_that_sack_new_data_are_duplicates_even_as_the_window_grows() -> None:
    """A Linux guest autotuning its receive buffer opens its window on nearly every ACK;
    RFC 5681's duplicate (same window) never happens then, RFC 6675's (new SACK) does."""
    c, _rx, segs = _setup()
    c.clock.advance(RTT)
    held: list[tuple[int, int]] = []
    for i, s in enumerate(segs[1:4]):
        lo, hi = s.seq, s.seq + len(s.data)
        held = [(held[0][0], hi)] if held else [(lo, hi)]
        c.send(b"", tcp.ACK, window=30000 + 1000 * i, opts=tcp.options_bytes(sack=held))
    assert c.ep.fast_retransmits == 1
    assert segs[0].seq in [s.seq for s in c.out()]
    assert c.ep.rto_expirations == 0


def test_a_lost_retransmission_is_found_by_a_later_one_delivered_without_new_data() -> None:
    """RACK by send time (RFC 8985 6.2): with nothing new to send, no new data can be
    SACKed past a lost resend; the resends sent after it and delivered show it lost."""
    c, rx, segs = _setup(total=20 * MSS, init_cwnd=20)
    assert len(segs) == 20
    holes = {0, 2, 4, 6}
    c.clock.advance(RTT)
    out: list[Seg] = []
    for i, s in enumerate(segs):
        if i not in holes:
            rx.take(s)
            rx.ack()
            out += c.out()
    resent = [s.seq for s in out]
    assert [segs[i].seq for i in sorted(holes)] == sorted(set(resent))
    assert c.ep.fast_retransmits == 1 and c.ep.lost_retransmits == 0
    # A round trip later the resends arrive, all but the first.
    c.clock.advance(RTT)
    again: list[Seg] = []
    for s in out:
        if s.seq != segs[0].seq:
            rx.take(s)
            rx.ack()
            again += c.out()
    assert [s.seq for s in again] == [segs[0].seq], "the lost resend waits for the timer"
    assert c.ep.lost_retransmits == 1 and c.ep.rto_expirations == 0
    rx.take(again[0])
    rx.ack()
    assert c.gack == segs[-1].seq + MSS


def test_going_back_n_after_a_timeout_finds_a_resend_lost_again() -> None:
    """After a timeout the window is resent in order from SND.UNA; one of those resends
    lost again is found when a later one is SACKed, not by a second (doubled) timeout."""
    c, rx, segs = _setup(total=10 * MSS)
    # Every segment lost, and the tail loss probe too: the timer expires.
    first = [s for s in c.tick(c.ep.rto + 0.001) if s.seq != segs[-1].seq]
    assert c.ep.rto_expirations == 1 and [s.seq for s in first] == [segs[0].seq]
    c.clock.advance(RTT)
    rx.take(first[0])
    rx.ack()
    nxt = c.out()  # the window grew: the next resends
    assert len(nxt) >= 2 and nxt[0].seq == segs[1].seq
    c.clock.advance(RTT)
    found: list[Seg] = []
    for s in nxt[1:]:  # segment 1 lost again, the ones after it arrive
        rx.take(s)
        rx.ack()
        found += [o for o in c.out() if o.seq == segs[1].seq]
    assert found, "the resend lost again waits for a second timeout"
    assert c.ep.lost_retransmits == 1 and c.ep.rto_expirations == 1


def test_a_burst_of_lost_retransmissions_longer_than_the_lookahead_is_found() -> None:
    """More resends lost in a row than RACK_PEEK looks past: the ACK that delivers the
    resend after them was sent for a segment that left after them, as the round trip
    says."""
    c, rx, segs = _setup(total=60 * MSS, init_cwnd=60)
    lost = RACK_PEEK + 4  # segments 0..lost-1 lost twice; segment `lost` once
    c.clock.advance(RTT)
    out: list[Seg] = []
    for s in segs[lost + 1 :]:
        rx.take(s)
        rx.ack()
        out += c.out()
    assert [s.seq for s in out] == [segs[i].seq for i in range(lost + 1)]
    c.clock.advance(1.5 * RTT)
    rx.take(out[-1])  # only the last resend arrives
    rx.ack()
    again = c.out()
    assert [s.seq for s in again] == [segs[i].seq for i in range(lost)]
    assert c.ep.lost_retransmits == lost and c.ep.rto_expirations == 0


def test_resending_the_oldest_segment_restarts_the_timer() -> None:
    """Each resend of the oldest segment is recovery's progress (RACK finds it lost again
    a round trip later), so the timer runs from the latest one, as Linux's does; from the
    first send it expired while the resends went on (pathsim: a segment lost four times
    in a row at a full queue)."""
    c, rx, segs = _setup(total=60 * MSS, init_cwnd=20)
    head = segs[0].seq
    c.clock.advance(RTT)
    pending: list[Seg] = []
    for s in segs[1:]:
        rx.take(s)
        rx.ack()
        pending += c.out()
    assert [s.seq for s in pending].count(head) == 1  # the fast retransmission
    c.clock.advance(RTT)
    again: list[Seg] = []
    for s in pending:
        if s.seq != head:  # the resend is lost, what was sent after it arrives
            rx.take(s)
            rx.ack()
            again += c.out()
    assert [s.seq for s in again].count(head) == 1 and c.ep.lost_retransmits == 1
    resent_at = c.now
    rto = c.ep.rto
    fired_at = 0.0
    for _ in range(200):  # nothing more arrives: step the clock to the timeout
        c.tick(0.002)
        if c.ep.rto_expirations:
            fired_at = c.now
            break
    assert fired_at >= resent_at + rto
