"""TCP endpoint, active open (inbound forwards): SYN-SENT, SYN retransmission, refusal,
option negotiation from the SYN-ACK, simultaneous open, then data and closes both ways."""

from __future__ import annotations

import os

import pytest

from wgslirp.net import tcp
from wgslirp.slirp.tcp_endpoint import TcpParams, TcpState
from wgslirp_testkit.tcpconn import Conn, Seg, guest_pkt

ACK, SYN, FIN, RST, PSH = tcp.ACK, tcp.SYN, tcp.FIN, tcp.RST, tcp.PSH
ALL_OPTS = tcp.options_bytes(mss=1460, wscale=8, sack_perm=True, ts=(50, 0))


def _drain(c: Conn, segs: list[Seg]) -> bytes:
    """The guest takes in-order data (and a FIN) and ACKs; returns the bytes taken."""
    got = bytearray()
    for s in segs:
        if s.seq == c.gack and s.data:
            got += s.data
            c.gack += len(s.data)
        if s.flags & FIN and s.seq + len(s.data) == c.gack:
            c.gack += 1
    if segs:
        c.send(b"", ACK)
    return bytes(got)


def _download(c: Conn, data: bytes) -> bytes:
    got = bytearray()
    pos = 0
    for _ in range(100_000):
        if pos < len(data):
            pos += c.ep.write(data[pos:], c.now)
        c.ep.flush(c.now)
        segs = c.out() or ([] if pos >= len(data) else c.tick(0.5))
        if not segs and pos >= len(data):
            break
        got += _drain(c, segs)
    return bytes(got)


# ------------------------------------------------------------------ SYN-SENT


def test_connect_sends_syn_offering_every_option() -> None:
    c = Conn(TcpParams(mss=1380, wscale=7))
    c.ep.connect(c.now)
    (syn,) = c.out()
    assert syn.flags == SYN and syn.seq == 5000 and syn.ack == 0
    assert (syn.opts.mss, syn.opts.wscale, syn.opts.sack_perm) == (1380, 7, True)
    assert syn.opts.ts_val is not None and syn.opts.ts_ecr == 0
    assert syn.window == 65535  # never scaled in a SYN
    assert c.ep.state is TcpState.SYN_SENT
    c.ep.connect(c.now)  # a second call is ignored
    assert c.out() == []


def test_syn_without_sack_when_disabled() -> None:
    c = Conn(TcpParams(sack=False))
    c.ep.connect(c.now)
    (syn,) = c.out()
    assert not syn.opts.sack_perm


def test_syn_retransmitted_with_backoff_then_given_up_without_rst() -> None:
    c = Conn(TcpParams(syn_retries=3))
    c.ep.connect(c.now)
    (first,) = c.out()
    assert c.tick(0.99) == []
    times = []
    start = c.now - 0.99
    for _ in range(3):
        segs: list[Seg] = []
        for _ in range(100):
            segs = c.tick(0.05)
            if segs:
                break
        (again,) = segs
        assert again.flags == SYN and again.seq == first.seq
        times.append(c.now - start)
    # RTO 1 s doubling: resent at 1, 3, 7 s (each tick may land up to 50 ms late)
    for got, want in zip(times, (1.0, 3.0, 7.0), strict=True):
        assert want <= got < want + 0.06
    assert c.ep.state is TcpState.SYN_SENT
    assert c.tick(7.9) == [] and c.ep.state is TcpState.SYN_SENT
    assert c.tick(0.2) == []  # 8 s after the last try: given up, silently
    assert c.ep.closed and c.ep.timed_out and not c.ep.refused
    assert c.ep.retransmits == 3


def test_syn_timeout_bounds_syn_sent() -> None:
    c = Conn(TcpParams(syn_retries=10, syn_timeout=2.5))
    c.ep.connect(c.now)
    c.out()
    assert len(c.tick(2.4)) == 1  # the retransmission at 1 s
    assert c.ep.state is TcpState.SYN_SENT
    c.tick(0.2)
    assert c.ep.closed and c.ep.timed_out
    assert c.out() == []


def test_rst_acking_our_syn_is_a_refusal() -> None:
    c = Conn()
    c.ep.connect(c.now)
    (syn,) = c.out()
    c.send(b"", RST | ACK, seq=0, ack=syn.seq + 1)
    assert c.ep.closed and c.ep.refused and c.ep.reset
    assert c.out() == []


@pytest.mark.parametrize(("flags", "ack"), [(RST, 0), (RST | ACK, 4242)])
def test_rst_not_acking_our_syn_is_ignored(flags: int, ack: int) -> None:
    c = Conn()
    c.ep.connect(c.now)
    c.out()
    c.send(b"", flags, seq=0, ack=ack)
    assert c.ep.state is TcpState.SYN_SENT and not c.ep.refused
    assert c.out() == []


def test_bad_ack_in_syn_sent_gets_rst_and_keeps_waiting() -> None:
    c = Conn()
    c.ep.connect(c.now)
    c.out()
    c.send(b"", SYN | ACK, ack=4242)
    (r,) = c.out()
    assert r.flags == RST and r.seq == 4242
    assert c.ep.state is TcpState.SYN_SENT


def test_plain_ack_in_syn_sent_is_dropped() -> None:
    c = Conn()
    c.ep.connect(c.now)
    (syn,) = c.out()
    c.send(b"", ACK, ack=syn.seq + 1)
    assert c.ep.state is TcpState.SYN_SENT and c.out() == []


def test_abort_in_syn_sent_sends_rst_after_the_syn() -> None:
    c = Conn()
    c.ep.connect(c.now)
    (syn,) = c.out()
    c.ep.abort(c.now)
    (r,) = c.out()
    assert r.flags == RST and r.seq == syn.seq + 1
    assert c.ep.closed


# ------------------------------------------------------------------ SYN-ACK options


def test_synack_with_every_option() -> None:
    c = Conn(TcpParams(mss=1380), ts=True)
    syn, ack = c.open_active(ALL_OPTS)
    assert ack.flags == ACK and ack.seq == syn.seq + 1 and ack.ack == c.gseq
    assert ack.opts.ts_ecr == 50  # the guest's TSval echoed
    assert ack.window == (256 * 1024) >> 7  # scaled: the guest sent WS too
    c.ep.write(b"y" * 5000, c.now)
    c.ep.flush(c.now)
    segs = c.out()
    assert len(segs[0].data) == 1380 - 12  # the timestamp comes out of the MSS
    assert all(s.opts.ts_val is not None for s in segs)
    # The guest's window (65535 in the SYN-ACK, unscaled) allows 5000 bytes at once ...
    assert sum(len(s.data) for s in segs) == 5000
    # ... and later windows are scaled by its shift 8.
    c.gack = segs[-1].seq + len(segs[-1].data)
    c.send(b"", ACK, window=2)
    assert c.ep.snd_wnd == 2 << 8


def test_synack_without_options() -> None:
    c = Conn()
    _, ack = c.open_active(b"")
    assert ack.opts.ts_val is None and ack.raw[32] >> 4 == 5  # no options at all
    assert ack.window == 65535  # no scaling: our field is the plain window, capped
    c.ep.write(b"x" * 3000, c.now)
    c.ep.flush(c.now)
    segs = c.out()
    assert [len(s.data) for s in segs] == [536] * 5 + [320]  # RFC 9293 default MSS
    c.gack = segs[2].seq + len(segs[2].data)
    c.send(b"", ACK, window=1000)
    assert c.ep.snd_wnd == 1000  # the guest's window is not scaled


@pytest.mark.parametrize("option", ["mss", "wscale", "sack", "ts"])
def test_synack_with_one_option(option: str) -> None:
    opts = tcp.options_bytes(
        mss=1200 if option == "mss" else None,
        wscale=3 if option == "wscale" else None,
        sack_perm=option == "sack",
        ts=(9, 0) if option == "ts" else None,
    )
    c = Conn(ts=option == "ts")
    _, ack = c.open_active(opts)
    assert (ack.opts.ts_val is not None) == (option == "ts")
    assert (ack.window == (256 * 1024) >> 7) == (option == "wscale")
    c.ep.write(b"z" * 4000, c.now)
    c.ep.flush(c.now)
    segs = c.out()
    want = {"mss": 1200, "ts": 536 - 12}.get(option, 536)
    assert len(segs[0].data) == want
    # SACK: a report from the guest is believed only if SACK was negotiated.
    first = segs[0]
    c.gack = first.seq + len(first.data)
    hole_end = segs[2].seq + len(segs[2].data)
    c.send(b"", ACK, opts=tcp.options_bytes(sack=[(segs[2].seq, hole_end)]))
    sacked = c.ep._sack.ranges  # the scoreboard is the thing checked
    assert bool(sacked) == (option == "sack")


# ------------------------------------------------------------------ simultaneous open


def test_simultaneous_open_then_ack() -> None:
    c = Conn(ts=True)
    c.ep.connect(c.now)
    (syn,) = c.out()
    c.send(b"", SYN, ack=0, opts=ALL_OPTS)  # the guest's own SYN crosses ours
    (sa,) = c.out()
    assert sa.has(SYN | ACK) and sa.seq == syn.seq and sa.ack == c.gseq
    assert (sa.opts.wscale, sa.opts.sack_perm, sa.opts.ts_ecr) == (7, True, 50)
    assert c.ep.state is TcpState.SYN_RECEIVED
    c.gack = syn.seq + 1
    c.send(b"", ACK)
    assert c.ep.state is TcpState.ESTABLISHED
    assert _download(c, b"q" * 20_000) == b"q" * 20_000


def test_simultaneous_open_then_the_guests_synack() -> None:
    c = Conn()
    c.ep.connect(c.now)
    (syn,) = c.out()
    c.send(b"", SYN, ack=0, opts=tcp.options_bytes(mss=1460))
    (sa,) = c.out()
    assert sa.has(SYN | ACK)
    # RFC 9293 figure 7: the guest's SYN-ACK (same ISN, ACKing our SYN) establishes.
    c.gack = syn.seq + 1
    c.send(b"", SYN | ACK, seq=c.gseq - 1)
    assert c.ep.state is TcpState.ESTABLISHED
    c.send(b"hello", ACK | PSH)
    assert c.read_all() == b"hello"


def test_synack_lost_in_simultaneous_open_is_resent() -> None:
    c = Conn()
    c.ep.connect(c.now)
    c.out()
    c.send(b"", SYN, ack=0, opts=tcp.options_bytes(mss=1460))
    (sa,) = c.out()
    (again,) = c.tick(1.01)
    assert again.has(SYN | ACK) and again.seq == sa.seq


# ------------------------------------------------------------------ data and closes


def test_host_data_written_in_syn_sent_goes_after_the_handshake() -> None:
    c = Conn()
    c.ep.connect(c.now)
    (syn,) = c.out()
    assert c.ep.write(b"early", c.now) == 5
    c.ep.flush(c.now)
    assert c.out() == []  # nothing before the SYN-ACK
    c.gack = syn.seq + 1
    c.send(b"", SYN | ACK, opts=tcp.options_bytes(mss=1460))
    segs = c.out()
    assert b"".join(s.data for s in segs) == b"early"
    assert segs[0].seq == syn.seq + 1


def test_data_both_ways_one_megabyte() -> None:
    c = Conn(TcpParams(rcv_buffer=1 << 20, snd_buffer=1 << 20), ts=True)
    c.open_active(ALL_OPTS)
    up = os.urandom(1 << 20)
    got = bytearray()
    for i in range(0, len(up), 1200):
        c.send(up[i : i + 1200], ACK | PSH)
        got += c.read_all()
    c.out()
    assert bytes(got) == up
    down = os.urandom(1 << 20)
    assert _download(c, down) == down
    assert c.ep.bytes_in == c.ep.bytes_out == 1 << 20


def test_guest_closes_first() -> None:
    c = Conn()
    c.open_active()
    c.send(b"reply", ACK | PSH | FIN)
    (a,) = c.out()
    assert a.ack == c.gseq and c.ep.state is TcpState.CLOSE_WAIT and c.ep.guest_fin
    assert c.read_all() == b"reply"
    assert _download(c, b"still talking") == b"still talking"  # half-close: we may send
    c.ep.shutdown(c.now)
    c.ep.flush(c.now)
    (fin,) = c.out()
    assert fin.has(FIN | ACK) and c.ep.state is TcpState.LAST_ACK
    c.gack += 1
    c.send(b"", ACK)
    assert c.ep.closed and not c.ep.reset


def test_host_closes_first() -> None:
    c = Conn()
    c.open_active()
    c.ep.write(b"request", c.now)
    c.ep.shutdown(c.now)
    c.ep.flush(c.now)
    (s,) = c.out()
    assert s.data == b"request" and s.has(FIN)
    c.gack += len(b"request") + 1
    c.send(b"", ACK)
    assert c.ep.state is TcpState.FIN_WAIT_2
    c.send(b"answer after our FIN", ACK | PSH)  # half-close: the guest may still send
    c.send(b"", ACK | FIN)
    (a,) = c.out()
    assert a.ack == c.gseq and c.ep.state is TcpState.TIME_WAIT
    assert c.read_all() == b"answer after our FIN"
    c.tick(2.1)
    assert c.ep.closed


def test_syn_rtt_sampled_only_when_not_retransmitted() -> None:
    c = Conn()
    c.ep.connect(c.now)
    (syn,) = c.out()
    c.clock.advance(0.05)
    c.gack = syn.seq + 1
    c.send(b"", SYN | ACK, opts=tcp.options_bytes(mss=1460))
    assert 0.049 < c.ep.srtt < 0.051
    c = Conn()
    c.ep.connect(c.now)
    c.out()
    c.tick(1.01)  # resent: the SYN-ACK cannot be matched to one of the two (Karn)
    c.gack = syn.seq + 1
    pkt = guest_pkt(c.gseq, c.gack, SYN | ACK, opts=tcp.options_bytes(mss=1460))
    c.ep.receive(memoryview(pkt), len(pkt), c.now)
    assert c.ep.state is TcpState.ESTABLISHED and c.ep.srtt == 0
