"""TCP endpoint: handshake, data both ways, FIN and RST handling (one test per rule)."""

from __future__ import annotations

import os

from wgslirp.net import tcp
from wgslirp.slirp.tcp_endpoint import TcpParams, TcpState
from wgslirp_testkit.tcpconn import Conn, Seg, guest_pkt

ACK, SYN, FIN, RST, PSH = tcp.ACK, tcp.SYN, tcp.FIN, tcp.RST, tcp.PSH


def _ack_everything(c: Conn, segs: list[Seg]) -> bytes:
    """The guest takes in-order data and ACKs it; returns the bytes taken."""
    got = bytearray()
    for s in segs:
        if s.seq == c.gack & 0xFFFFFFFF and s.data:
            got += s.data
            c.gack += len(s.data)
        if s.flags & FIN and (s.seq + len(s.data)) & 0xFFFFFFFF == c.gack & 0xFFFFFFFF:
            c.gack += 1
    if segs:
        c.send(b"", ACK)
    return bytes(got)


def _download(c: Conn, data: bytes, *, max_rounds: int = 100000) -> bytes:
    """Host writes `data`; the guest ACKs every flight until it has it all."""
    got = bytearray()
    pos = 0
    for _ in range(max_rounds):
        if pos < len(data):
            pos += c.ep.write(data[pos:], c.now)
        c.ep.flush(c.now)
        segs = c.out()
        if not segs and pos >= len(data):
            break
        if not segs:
            segs = c.tick(0.5)
        got += _ack_everything(c, segs)
    return bytes(got)


# ------------------------------------------------------------------ handshake


def test_synack_only_after_accept_and_acks_the_syn() -> None:
    c = Conn()
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    c.ep.flush(c.now)
    assert c.egress.packets == []  # still dialing the host
    c.ep.accept(c.now)
    (sa,) = c.out()
    assert sa.has(SYN | ACK) and sa.ack == 100001 and sa.seq == 5000
    assert sa.opts.mss == 1340


def test_syn_retransmit_answered_with_same_synack() -> None:
    c = Conn(syn_opts=tcp.options_bytes(mss=1460, wscale=7, sack_perm=True, ts=(9, 0)))
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    # A retransmitted SYN while the host connect is pending changes nothing.
    c.ep.receive(memoryview(c.syn), len(c.syn), c.now)
    c.ep.flush(c.now)
    assert c.egress.packets == [] and c.ep.state is TcpState.LISTEN_PENDING
    c.ep.accept(c.now)
    (first,) = c.out()
    c.clock.advance(0.3)  # before our own RTO
    c.ep.receive(memoryview(c.syn), len(c.syn), c.now)
    c.ep.flush(c.now)
    (again,) = c.out()
    assert again.has(SYN | ACK)
    assert (again.seq, again.ack, again.window) == (first.seq, first.ack, first.window)
    assert (again.opts.mss, again.opts.wscale, again.opts.sack_perm) == (
        first.opts.mss,
        first.opts.wscale,
        first.opts.sack_perm,
    )
    assert again.opts.ts_ecr == first.opts.ts_ecr == 9
    # ... and the handshake completes normally afterwards.
    c.gseq += 1
    c.gack = first.seq + 1
    c.send(b"", ACK, opts=tcp.options_bytes(ts=(10, first.opts.ts_val or 0)))
    assert c.ep.state is TcpState.ESTABLISHED


def test_synack_retransmitted_on_rto_then_given_up() -> None:
    c = Conn(TcpParams(synack_retries=2))
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    c.ep.accept(c.now)
    c.out()
    assert c.tick(0.99) == []
    (r1,) = c.tick(0.02)  # 1 s initial RTO
    assert r1.has(SYN | ACK)
    (r2,) = c.tick(2.0)  # doubled
    assert r2.has(SYN | ACK)
    assert c.tick(4.1) == []
    assert c.ep.closed and c.ep.timed_out


def test_refuse_sends_rst_ack_for_the_syn() -> None:
    c = Conn()
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    c.ep.refuse(c.now)
    (r,) = c.out()
    assert r.has(RST | ACK) and r.ack == 100001 and r.seq == 0
    assert c.ep.closed and not c.ep.reset


def test_bad_ack_in_syn_received_gets_rst() -> None:
    c = Conn()
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    c.ep.accept(c.now)
    c.out()
    c.gseq += 1
    c.send(b"", ACK, ack=4242)
    (r,) = c.out()
    assert r.has(RST) and r.seq == 4242
    assert c.ep.state is TcpState.SYN_RECEIVED


def test_guest_rst_before_accept_and_in_syn_received() -> None:
    c = Conn()
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    pkt = guest_pkt(100001, 0, RST)
    c.ep.receive(memoryview(pkt), len(pkt), c.now)
    assert c.ep.closed and c.ep.reset
    c = Conn()
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    c.ep.accept(c.now)
    c.ep.receive(memoryview(pkt), len(pkt), c.now)
    assert c.ep.closed and c.ep.reset


def test_options_absent_when_guest_did_not_offer_them() -> None:
    c = Conn(syn_opts=b"")  # no MSS, WS, SACK-permitted or timestamps
    sa = c.handshake()
    assert sa.opts.wscale is None and not sa.opts.sack_perm and sa.opts.ts_val is None
    # RFC 9293 3.7.1: MSS is always announced (otherwise the guest assumes 536).
    assert sa.opts.mss == 1340
    assert sa.window == 65535
    c.ep.write(b"x" * 3000, c.now)
    c.ep.flush(c.now)
    segs = c.out()
    assert [len(s.data) for s in segs] == [536] * 5 + [320]  # RFC 9293 default MSS
    for s in segs:
        assert s.raw[32] >> 4 == 5  # no options at all
        assert s.window <= 65535


def test_options_negotiated_when_offered() -> None:
    c = Conn(
        TcpParams(mss=1380),
        syn_opts=tcp.options_bytes(mss=1460, wscale=8, sack_perm=True, ts=(50, 0)),
        ts=True,
    )
    sa = c.handshake()
    assert (sa.opts.mss, sa.opts.wscale, sa.opts.sack_perm) == (1380, 7, True)
    assert sa.opts.ts_ecr == 50 and sa.opts.ts_val is not None
    c.ep.write(b"y" * 5000, c.now)
    c.ep.flush(c.now)
    segs = c.out()
    assert len(segs[0].data) == 1380 - 12  # the timestamp option comes out of the MSS
    assert all(s.opts.ts_val is not None for s in segs)
    assert all(len(s.raw) <= 1380 + 40 for s in segs)
    # Our window is scaled by 7: 256 KiB >> 7.
    assert segs[0].window == (256 * 1024) >> 7


def test_sack_not_offered_when_disabled() -> None:
    c = Conn(TcpParams(sack=False), syn_opts=tcp.options_bytes(mss=1460, sack_perm=True))
    sa = c.handshake()
    assert not sa.opts.sack_perm


def test_mss_clamp_lowers_segment_size() -> None:
    c = Conn(TcpParams(mss=1000))
    sa = c.handshake()
    assert sa.opts.mss == 1000
    c.ep.write(b"z" * 2500, c.now)
    c.ep.flush(c.now)
    assert [len(s.data) for s in c.out()] == [1000, 1000, 500]


# ------------------------------------------------------------------ data


def test_upload_delivered_in_order_with_delayed_ack() -> None:
    c = Conn()
    c.handshake()
    c.send(b"a" * 1000, ACK | PSH)
    assert c.out() == []  # one segment: ACK delayed
    assert c.ep.readable() == 1000
    assert c.ep.get_timer() == c.now + 0.010
    (a,) = c.tick(0.011)
    assert a.ack == c.gseq
    assert c.read_all() == b"a" * 1000


def test_ack_every_second_full_segment() -> None:
    c = Conn()
    c.handshake()
    acks = []
    for _ in range(6):
        c.send(b"b" * 1340)
        acks += c.out()
    assert len(acks) == 3
    assert acks[-1].ack == c.gseq
    assert c.ep.bytes_in == 6 * 1340


def test_download_respects_byte_counts() -> None:
    c = Conn()
    c.handshake()
    data = os.urandom(100_000)
    assert _download(c, data) == data
    assert c.ep.bytes_out == len(data)
    assert c.ep.in_flight == 0


def test_sequence_wrap_one_megabyte_each_way() -> None:
    c = Conn(iss=0xFFFFFFFF - 3000, guest_iss=0xFFFFFFFF - 5000)
    c.handshake()
    up = os.urandom(1 << 20)
    got = bytearray()
    for i in range(0, len(up), 1340):
        c.send(up[i : i + 1340])
        c.out()
        got += c.read_all()
    assert bytes(got) == up
    assert c.gseq > 0xFFFFFFFF  # the guest's numbers wrapped
    down = os.urandom(1 << 20)
    assert _download(c, down) == down
    assert c.gack > 0xFFFFFFFF  # and ours did
    assert c.ep.in_flight == 0 and c.ep.retransmits == 0


def test_window_respected_to_the_byte() -> None:
    c = Conn(window=4000)
    c.handshake()
    data = os.urandom(50_000)
    c.ep.write(data, c.now)
    outstanding: list[Seg] = []
    got = bytearray()
    for _ in range(500):
        c.ep.flush(c.now)
        outstanding += c.out()
        if not outstanding:
            break
        top = max(s.seq + len(s.data) for s in outstanding)
        assert top - c.gack <= 4000  # never beyond the advertised right edge
        assert c.ep.in_flight <= 4000
        # ACK only the oldest segment, so the window slides by exactly that much.
        first = outstanding.pop(0)
        assert first.seq == c.gack
        c.gack += len(first.data)
        got += first.data
        c.send(b"", ACK)
    assert bytes(got) == data


def test_consume_opens_window_with_update() -> None:
    c = Conn(TcpParams(rcv_buffer=8192, ack_delay=0.5), syn_opts=tcp.options_bytes(mss=1000))
    c.handshake()
    for _ in range(8):
        c.send(b"q" * 1000)
    segs = c.out()
    assert segs[-1].window == 192  # 8192 - 8000
    c.send(b"q" * 192)
    c.tick(0.6)
    c.send(b"q", seq=c.gseq)  # beyond a zero window: dropped and answered
    (z,) = c.out()
    assert z.window == 0 and z.ack == c.gseq
    assert c.ep.readable() == 8192
    view = c.ep.peek_data()
    c.ep.consume(100, c.now)  # too little to announce (SWS avoidance)
    c.ep.flush(c.now)
    assert c.out() == []
    c.ep.consume(len(view) - 100, c.now)
    c.ep.flush(c.now)
    (u,) = c.out()
    assert u.window >= 4096 and u.ack == c.gseq


# ------------------------------------------------------------------ FIN


def test_fin_on_data_segment_is_acked_immediately() -> None:
    c = Conn()
    c.handshake()
    c.send(b"last words", ACK | PSH | FIN)
    (a,) = c.out()  # no delayed ACK for a FIN
    assert a.ack == c.gseq  # covers the data and the FIN
    assert c.ep.state is TcpState.CLOSE_WAIT and c.ep.guest_fin
    assert c.read_all() == b"last words"
    assert c.ep.readable() == 0


def test_half_close_then_download_completes() -> None:
    c = Conn()
    c.handshake()
    c.send(b"GET / HTTP/1.0\r\n\r\n", ACK | PSH)
    c.send(b"", ACK | FIN)  # the guest half-closes after its request
    c.out()
    assert c.ep.guest_fin and c.read_all().startswith(b"GET")
    body = os.urandom(300_000)
    assert _download(c, body) == body
    c.ep.shutdown(c.now)
    c.ep.flush(c.now)
    (fin,) = c.out()
    assert fin.has(FIN | ACK) and c.ep.state is TcpState.LAST_ACK
    c.gack += 1
    c.send(b"", ACK)
    assert c.ep.closed and not c.ep.reset


def test_host_close_first_goes_through_time_wait() -> None:
    c = Conn()
    c.handshake()
    c.ep.write(b"bye", c.now)
    c.ep.shutdown(c.now)
    assert c.ep.send_space() == 0
    c.ep.flush(c.now)
    (s,) = c.out()
    assert s.data == b"bye" and s.has(FIN)  # FIN rides on the last data
    assert c.ep.state is TcpState.FIN_WAIT_1
    c.gack += 4
    c.send(b"", ACK)
    assert c.ep.state is TcpState.FIN_WAIT_2
    c.send(b"more from guest", ACK)  # half-close: the guest may still send
    c.send(b"", ACK | FIN)
    (a,) = c.out()
    assert a.ack == c.gseq and c.ep.state is TcpState.TIME_WAIT
    assert c.read_all() == b"more from guest"
    # A retransmitted FIN (our ACK was lost) is ACKed again and restarts the timer.
    c.clock.advance(1.5)
    c.send(b"", ACK | FIN, seq=c.gseq - 1)
    (again,) = c.out()
    assert again.ack == c.gseq
    c.tick(1.9)
    assert c.ep.state is TcpState.TIME_WAIT
    c.tick(0.2)
    assert c.ep.closed


def test_fin_waits_for_queued_data() -> None:
    c = Conn(window=3000)
    c.handshake()
    c.ep.write(b"d" * 10_000, c.now)
    c.ep.shutdown(c.now)
    c.ep.flush(c.now)
    segs = c.out()
    assert not any(s.flags & FIN for s in segs)
    got = _ack_everything(c, segs)
    while c.ep.state is not TcpState.FIN_WAIT_2:
        c.ep.flush(c.now)
        segs = c.out()
        assert segs
        for s in segs:
            if s.flags & FIN:
                assert s.seq + len(s.data) == 5000 + 1 + 10_000  # after every byte
        got += _ack_everything(c, segs)
    assert got == b"d" * 10_000


def test_simultaneous_close() -> None:
    c = Conn()
    c.handshake()
    c.ep.shutdown(c.now)
    c.ep.flush(c.now)
    (f,) = c.out()
    assert f.has(FIN)
    c.send(b"", ACK | FIN)  # crosses ours, does not ACK it
    assert c.ep.state is TcpState.CLOSING
    c.gack += 1
    c.send(b"", ACK)
    assert c.ep.state is TcpState.TIME_WAIT


def test_out_of_order_fin_waits_for_the_gap() -> None:
    c = Conn()
    c.handshake()
    base = c.gseq
    c.send(b"", ACK | FIN, seq=base + 10)
    assert not c.ep.guest_fin
    c.out()
    c.send(b"0123456789", ACK, seq=base)
    assert c.ep.guest_fin and c.ep.state is TcpState.CLOSE_WAIT
    segs = c.out()
    assert segs[-1].ack == base + 11


# ------------------------------------------------------------------ RST


def test_rst_exactly_in_sequence_resets() -> None:
    c = Conn()
    c.handshake()
    c.send(b"", RST)
    assert c.ep.closed and c.ep.reset
    assert c.out() == []


def test_rst_in_window_but_not_exact_gets_challenge_ack() -> None:
    c = Conn()
    c.handshake()
    c.send(b"", RST, seq=c.gseq + 100)
    assert not c.ep.reset and c.ep.state is TcpState.ESTABLISHED
    (ch,) = c.out()
    assert ch.has(ACK) and ch.ack == c.gseq and not ch.flags & RST
    assert c.ep.challenge_acks == 1


def test_rst_out_of_window_ignored() -> None:
    c = Conn()
    c.handshake()
    c.send(b"", RST, seq=c.gseq + 10_000_000)
    c.send(b"", RST, seq=c.gseq - 1)
    assert c.ep.state is TcpState.ESTABLISHED and c.out() == []


def test_syn_in_established_gets_challenge_ack() -> None:
    c = Conn()
    c.handshake()
    c.send(b"", SYN, seq=c.gseq + 5, ack=0)
    (ch,) = c.out()
    assert ch.ack == c.gseq and ch.flags == ACK
    assert c.ep.state is TcpState.ESTABLISHED


def test_challenge_acks_are_rate_limited() -> None:
    c = Conn()
    c.handshake()
    for i in range(30):
        c.send(b"", RST, seq=c.gseq + 1 + i)
    assert len(c.out()) == 10
    c.clock.advance(1.0)
    c.send(b"", RST, seq=c.gseq + 1)
    assert len(c.out()) == 1


def test_abort_sends_rst() -> None:
    c = Conn()
    c.handshake()
    c.ep.write(b"pending", c.now)
    c.ep.abort(c.now)
    (r,) = c.out()
    assert r.has(RST | ACK) and r.seq == 5001 and r.ack == c.gseq
    assert c.ep.closed and not c.ep.reset
    c.send(b"late", ACK)  # anything after that is answered with a reset
    (r2,) = c.out()
    assert r2.has(RST)


def test_ack_for_unsent_data_is_dropped_and_answered() -> None:
    c = Conn()
    c.handshake()
    c.ep.write(b"abc", c.now)
    c.ep.flush(c.now)
    c.out()
    c.send(b"", ACK, ack=c.gack + 1000)
    (a,) = c.out()
    assert a.flags == ACK
    assert c.ep.in_flight == 3  # nothing was taken as acknowledged


def test_paws_drops_old_timestamp() -> None:
    c = Conn(syn_opts=tcp.options_bytes(mss=1460, ts=(1000, 0)), ts=True)
    c.ts_val = 1000
    c.handshake()
    c.send(b"new", ACK)
    c.send(b"old", ACK, opts=tcp.options_bytes(ts=(500, c.peer_ts_recent)))
    assert c.ep.readable() == 3
    segs = c.out()
    assert segs and segs[-1].ack == c.gseq - 3  # the stale segment was refused and ACKed


def test_egress_full_keeps_state_and_retries() -> None:
    c = Conn()
    c.handshake()
    c.egress.full = True
    c.ep.write(b"w" * 5000, c.now)
    c.ep.flush(c.now)
    assert c.egress.packets == [] and c.ep.in_flight == 0
    t = c.ep.get_timer()
    assert t is not None and t - c.now < 0.01
    c.egress.full = False
    segs = c.tick(0.01)
    assert sum(len(s.data) for s in segs) == 5000


# ------------------------------------------------------------------ bridge-facing details


def test_handshake_ack_carrying_data() -> None:
    c = Conn()
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    c.ep.accept(c.now)
    (sa,) = c.out()
    c.gseq += 1
    c.gack = sa.seq + 1
    c.send(b"early bytes", ACK | PSH)
    assert c.ep.state is TcpState.ESTABLISHED
    assert c.read_all() == b"early bytes"


def test_host_data_queued_before_handshake_completes() -> None:
    c = Conn()
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    c.ep.write(b"SSH-2.0-banner\r\n", c.now)  # a server that speaks first
    c.ep.accept(c.now)
    (sa,) = c.out()
    assert sa.data == b""
    c.gseq += 1
    c.gack = sa.seq + 1
    c.send(b"", ACK)
    (d,) = c.out()
    assert d.data == b"SSH-2.0-banner\r\n"


def test_zero_copy_write_buffer_wraps_the_ring() -> None:
    c = Conn(TcpParams(snd_buffer=4000))
    c.handshake()
    sent = bytearray()
    expected = bytearray()
    for i in range(20):
        chunk = bytes([65 + i]) * 1500
        view = c.ep.write_buffer(1500)
        k = len(view)
        view[:] = chunk[:k]
        c.ep.commit_write(k, c.now)
        expected += chunk[:k]
        c.ep.flush(c.now)
        sent += _ack_everything(c, c.out())
    assert c.ep.send_space() <= 4000
    sent += _download(c, b"")
    assert bytes(sent) == bytes(expected)


def test_commit_beyond_space_refused() -> None:
    c = Conn(TcpParams(snd_buffer=1000))
    c.handshake()
    try:
        c.ep.commit_write(1001, c.now)
    except ValueError:
        return
    raise AssertionError("commit_write accepted more than the buffer holds")


def test_closed_waits_until_host_drained_unread_data() -> None:
    c = Conn()
    c.handshake()
    c.send(b"unread", ACK | FIN)
    c.ep.shutdown(c.now)
    c.ep.flush(c.now)
    c.out()
    c.gack += 1
    c.send(b"", ACK)
    assert c.ep.state is TcpState.CLOSED
    assert not c.ep.closed  # the bridge still has bytes to hand to the host
    assert c.read_all() == b"unread"
    assert c.ep.closed


def test_reset_discards_unread_data() -> None:
    c = Conn()
    c.handshake()
    c.send(b"doomed")
    c.send(b"", RST)
    assert c.ep.reset and c.ep.closed and c.ep.readable() == 0


def test_new_syn_in_time_wait_reopens() -> None:
    c = Conn()
    c.handshake()
    c.ep.shutdown(c.now)
    c.ep.flush(c.now)
    c.out()
    c.gack += 1
    c.send(b"", ACK | FIN)
    assert c.ep.state is TcpState.TIME_WAIT
    syn = guest_pkt(c.gseq + 100_000, 0, SYN, opts=tcp.options_bytes(mss=1460))
    c.ep.receive(memoryview(syn), len(syn), c.now)
    assert c.ep.reopen and c.ep.closed  # the bridge starts a new connection with this SYN


def test_tos_is_copied_into_segments() -> None:
    c = Conn()
    c.handshake()
    c.ep.tos = 0xB8
    c.ep.write(b"t", c.now)
    c.ep.flush(c.now)
    (s,) = c.out()
    assert s.raw[1] == 0xB8


def test_ack_at_the_right_edge_of_a_full_window_is_processed() -> None:
    c = Conn(TcpParams(rcv_buffer=4000), syn_opts=tcp.options_bytes(mss=1000))
    c.handshake()
    for _ in range(4):
        c.send(b"f" * 1000)  # the guest fills our window; the host reads nothing
    c.out()
    c.ep.write(b"reply", c.now)
    c.ep.flush(c.now)
    (d,) = c.out()
    assert d.window == 0 and c.ep.in_flight == 5
    c.gack += 5
    c.send(b"", ACK)  # SEG.SEQ == RCV.NXT + RCV.WND (a zero window): still an ACK
    assert c.ep.in_flight == 0


def test_window_from_a_rolled_back_guest_still_counts_when_it_acks_new_data() -> None:
    c = Conn(window=8000)
    c.handshake()
    top = c.gseq
    c.ep.write(b"d" * 20_000, c.now)
    c.ep.flush(c.now)
    segs = c.out()
    assert sum(len(s.data) for s in segs) <= 8000
    # The guest sent 100 bytes that were lost, then an ACK past them (SND.WL1 moves on).
    c.send(b"", ACK, seq=top + 100)
    # After its timeout it rolls SND.NXT back: an older sequence number, a new ACK and a
    # smaller window. The ACK counts, and so must its window (Linux's rule).
    c.gack += 1340
    c.send(b"", ACK, seq=top, window=1340)
    assert c.ep.snd_wnd == 1340
    c.ep.flush(c.now)
    assert c.out() == []  # everything in flight already covers the new window
    # A reordered older ACK leaves the window alone.
    c.send(b"", ACK, seq=top, ack=c.gack - 1340, window=30_000)
    assert c.ep.snd_wnd == 1340
