"""Loss recovery toward the guest: duplicate ACKs, fast retransmit, NewReno (RFC 6582),
SACK-guided retransmission, limited transmit; and the congestion controllers (tcp_cc)."""

from __future__ import annotations

import pytest

from wgslirp.net import tcp
from wgslirp.slirp import tcp_cc
from wgslirp.slirp.tcp_endpoint import TcpParams
from wgslirp_testkit.tcpconn import Conn, Seg
from wgslirp_testkit.tcpconn import SackReceiver as Receiver

ACK = tcp.ACK
MSS = 1340


def _setup(sack: bool = False, cc: str = "newreno") -> tuple[Conn, Receiver, list[Seg]]:
    syn = tcp.options_bytes(mss=MSS, sack_perm=True) if sack else tcp.options_bytes(mss=MSS)
    c = Conn(TcpParams(cc=cc), syn_opts=syn, window=65535)
    c.handshake()
    c.ep.write(bytes(range(256)) * 200, c.now)  # 51200 bytes, 39 segments
    c.ep.flush(c.now)
    segs = c.out()
    assert len(segs) == 10 and all(len(s.data) == MSS for s in segs)
    return c, Receiver(c, sack), segs


def test_three_duplicate_acks_trigger_fast_retransmit() -> None:
    c, rx, segs = _setup()
    lost = segs[0]
    limited: list[Seg] = []
    for i, s in enumerate(segs[1:4]):
        rx.take(s)
        rx.ack()
        out = c.out()
        if i < 2:
            # RFC 3042 limited transmit: one new segment per early duplicate ACK.
            assert len(out) == 1 and out[0].seq == segs[-1].seq + MSS * (i + 1)
            limited += out
        else:
            assert [o.seq for o in out] == [lost.seq]  # the third: fast retransmit
            assert out[0].data == lost.data
    assert c.ep.dup_acks == 3 and c.ep.fast_retransmits == 1
    flight = 12 * MSS
    assert c.ep.cc.ssthresh == flight // 2
    assert c.ep.cc.cwnd == flight // 2 + 3 * MSS
    # Further duplicates inflate the window until new data may go out again.
    new: list[Seg] = []
    for s in segs[4:] + limited:
        rx.take(s)
        rx.ack()
        new += c.out()
    assert new and all(s.seq >= segs[-1].seq + 3 * MSS for s in new)
    # The retransmission arrives: a full ACK ends recovery with a deflated window.
    rx.take(lost)
    for s in new:
        rx.take(s)
    rx.ack()
    assert not c.ep._in_recovery
    assert c.ep.cc.cwnd <= c.ep.cc.ssthresh
    assert c.ep.fast_retransmits == 1 and c.ep.rto_expirations == 0


def test_two_duplicate_acks_do_not_retransmit() -> None:
    c, rx, segs = _setup()
    for s in segs[1:3]:
        rx.take(s)
        rx.ack()
    assert c.ep.fast_retransmits == 0
    assert all(o.seq > segs[-1].seq for o in c.out())


def test_newreno_partial_ack_retransmits_next_hole() -> None:
    c, rx, segs = _setup()
    lost = {0, 4}
    sent_later: list[Seg] = []
    for i, s in enumerate(segs):
        if i in lost:
            continue
        rx.take(s)
        rx.ack()
        sent_later += c.out()
    rexmits = [s for s in sent_later if s.seq < segs[-1].seq + MSS]
    assert [s.seq for s in rexmits] == [segs[0].seq]  # without SACK only the first
    rx.take(segs[0])
    rx.ack()  # partial ACK: up to the second hole
    assert c.gack == segs[4].seq
    out = c.out()
    assert out[0].seq == segs[4].seq  # RFC 6582: retransmit the next hole at once
    assert c.ep._in_recovery
    rx.take(out[0])
    for s in sent_later + out[1:]:
        rx.take(s)
    rx.ack()
    assert not c.ep._in_recovery
    assert c.ep.fast_retransmits == 1 and c.ep.rto_expirations == 0


def test_sack_retransmits_every_hole_without_waiting_for_partial_acks() -> None:
    c, rx, segs = _setup(sack=True)
    lost = {0, 4, 7}
    out: list[Seg] = []
    for i, s in enumerate(segs):
        if i in lost:
            continue
        rx.take(s)
        rx.ack()
        out += c.out()
    retransmitted = sorted({s.seq for s in out if s.seq <= segs[-1].seq})
    assert retransmitted == [segs[i].seq for i in sorted(lost)]
    for s in out + [segs[i] for i in lost]:
        rx.take(s)
    rx.ack()
    assert c.gack >= segs[-1].seq + MSS
    assert c.ep.fast_retransmits == 1 and c.ep.rto_expirations == 0


def test_sack_recovery_resends_several_holes_per_partial_ack() -> None:
    """A burst loss takes most of a window. NewReno resends one hole per partial ACK, one
    per round trip (34 round trips here); with SACK, PRR's slow start reduction bound
    (RFC 6937: the pipe is far below ssthresh) lets each ACK that advances SND.UNA
    release one segment more than it delivered, so the resends double per round trip."""
    c, rx, segs = _setup(sack=True)
    c.ep.cc.ssthresh = c.ep.cc.cwnd = 40 * MSS  # room for all of them, as after slow start
    c.ep.flush(c.now)
    segs += c.out()
    assert len(segs) >= 30
    kept = {0, 1, 2, 3, len(segs) - 1}  # the rest of the window is lost in one burst
    for i in sorted(kept):
        rx.take(segs[i])
        rx.ack()
    first = c.out()
    assert c.ep.fast_retransmits == 0  # only one duplicate ACK so far
    # Two more duplicate ACKs (the guest repeats itself, e.g. for a window probe).
    rx.ack()
    rx.ack()
    resent = c.out()
    assert c.ep.fast_retransmits == 1
    holes = [s.seq for s in segs[4:-1]]
    got = {s.seq for s in first + resent if s.seq in holes}
    assert got == {holes[0]}  # these ACKs delivered nothing: only the fast retransmit
    rounds = 1
    out = first + resent
    per_round = [len(got)]
    while c.gack < segs[-1].seq + len(segs[-1].data):
        for s in out:
            rx.take(s)
            rx.ack()
        out = c.out()
        per_round.append(len({s.seq for s in out if s.seq in holes}))
        rounds += 1
        assert rounds <= 7, f"holes left after {rounds} round trips: {per_round}"
    assert c.ep.rto_expirations == 0
    assert per_round[1] >= 2 * per_round[0] and per_round[2] >= 2 * per_round[1], per_round


def test_dup_ack_requires_unchanged_window_and_no_data() -> None:
    c, _rx, _segs = _setup()
    for w in (60000, 50000, 40000):  # window updates are not duplicate ACKs
        c.send(b"", ACK, window=w)
    c.send(b"data", ACK)  # nor is a data segment
    assert c.ep.dup_acks == 0 and c.ep.fast_retransmits == 0


def test_no_second_reduction_for_losses_of_the_same_window_after_rto() -> None:
    c, rx, segs = _setup()
    c.tick(0.21)  # RTO: everything outstanding is considered lost
    assert c.ep.rto_expirations == 1
    for s in segs[1:5]:
        rx.take(s)
        rx.ack()  # duplicates from the pre-timeout flight
    assert c.ep.fast_retransmits == 0  # RFC 6582 "recover" guard


# ------------------------------------------------------------------ controllers


def test_newreno_slow_start_and_avoidance() -> None:
    cc = tcp_cc.make("newreno", 1000, 10_000)
    cc.on_ack(1000, 10_000, 0.0, 0.05)
    assert cc.cwnd == 11_000  # one MSS per MSS acked
    cc.on_ack(5000, 11_000, 0.0, 0.05)
    assert cc.cwnd == 13_000  # at most two MSS per ACK (RFC 3465 L=2)
    cc.on_ack(1000, 1000, 0.0, 0.05)
    assert cc.cwnd == 13_000  # not using the window: no growth (RFC 7661)
    cc.on_fast_retransmit(20_000, 1.0)
    assert cc.ssthresh == 10_000 and cc.cwnd == 13_000
    cc.on_recovery_end(0, 1.1)
    assert cc.cwnd == 2000  # unpaced: min(ssthresh, flight + MSS) with nothing in flight
    cc.paced = True
    cc.on_recovery_end(0, 1.1)
    assert cc.cwnd == 10_000  # paced: back at ssthresh, not at one segment
    cc.cwnd = cc.ssthresh
    before = cc.cwnd
    for _ in range(10):
        cc.on_ack(1000, cc.cwnd, 2.0, 0.05)
    assert cc.cwnd == before + 1000  # one MSS per window in avoidance
    cc.on_rto(8000, 3.0)
    assert cc.cwnd == 1000 and cc.ssthresh == 4000


def test_cubic_backs_off_by_beta_and_grows_cubically() -> None:
    cc = tcp_cc.make("cubic", 1000, 100_000)
    assert isinstance(cc, tcp_cc.Cubic)
    cc.on_fast_retransmit(100_000, 10.0)
    assert cc.ssthresh == 70_000
    cc.on_recovery_end(70_000, 10.1)
    assert cc.cwnd == 70_000
    t = 10.1
    sizes = []
    for _ in range(400):  # 4 s of ACKs, one window per 100 ms RTT
        t += 0.01
        cc.on_ack(cc.cwnd // 10, cc.cwnd, t, 0.1)
        sizes.append(cc.cwnd)
    # Concave approach to W_max = 100 segments (K = cbrt(30/0.4) ~ 4.2 s), then a plateau.
    assert 85_000 < sizes[200] < 100_000
    assert 95_000 < sizes[-1] < 110_000
    assert sizes[100] - sizes[0] > sizes[300] - sizes[200]


def test_cubic_endpoint_transfers() -> None:
    c, rx, segs = _setup(cc="cubic")
    for s in segs:
        rx.take(s)
    rx.ack()
    assert c.ep.cc.name == "cubic" and len(c.out()) > 10


def test_cc_off_limits_only_by_window() -> None:
    c = Conn(TcpParams(cc="off"), window=65535)
    c.handshake()
    c.ep.write(b"o" * 200_000, c.now)
    c.ep.flush(c.now)
    segs = c.out()
    assert sum(len(s.data) for s in segs) == 65535 - 65535 % MSS  # SWS: no runt at the end
    assert len(segs) > 10  # not held to an initial window


def test_unknown_cc_refused() -> None:
    with pytest.raises(ValueError):
        tcp_cc.make("vegas", 1000, 10_000)
