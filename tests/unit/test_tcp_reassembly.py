"""Out-of-order reassembly, SACK blocks we send (RFC 2018), window scaling and timestamps
(RFC 7323) on the receive side of the endpoint."""

from __future__ import annotations

import os

from wgslirp.net import tcp
from wgslirp.slirp.tcp_endpoint import TcpParams
from wgslirp.slirp.tcp_recovery import MAX_OOO_RANGES
from wgslirp_testkit.tcpconn import Conn

ACK, FIN = tcp.ACK, tcp.FIN
SACK_SYN = tcp.options_bytes(mss=1460, sack_perm=True)


def test_out_of_order_acked_at_once_with_sack_then_delivered() -> None:
    c = Conn(syn_opts=SACK_SYN)
    c.handshake()
    base = c.gseq
    c.send(b"B" * 100, seq=base + 100)
    (dup,) = c.out()  # immediate duplicate ACK, not delayed
    assert dup.ack == base and dup.opts.sack == [(base + 100, base + 200)]
    assert c.ep.readable() == 0 and c.ep.ooo_segments == 1
    c.send(b"A" * 100, seq=base)
    (a,) = c.out()  # the gap is filled: ACK at once, no SACK block left
    assert a.ack == base + 200 and a.opts.sack == []
    assert c.read_all() == b"A" * 100 + b"B" * 100


def test_sack_blocks_most_recent_first_and_merged() -> None:
    c = Conn(syn_opts=tcp.options_bytes(mss=1460, sack_perm=True, ts=(1, 0)), ts=True)
    c.ts_val = 10
    c.handshake()
    b = c.gseq
    for start in (1000, 3000, 5000, 7000):
        c.send(b"x" * 500, seq=b + start)
    segs = c.out()
    last = segs[-1]
    # With timestamps only three blocks fit; the newest comes first.
    assert last.opts.sack == [(b + 7000, b + 7500), (b + 5000, b + 5500), (b + 3000, b + 3500)]
    c.send(b"y" * 500, seq=b + 3500)  # joins 3000-3500 and abuts nothing else
    (m,) = c.out()
    assert m.opts.sack[0] == (b + 3000, b + 4000)
    c.send(b"z" * 1000, seq=b + 4000)  # bridges to 5000-5500
    (m2,) = c.out()
    assert m2.opts.sack[0] == (b + 3000, b + 5500)
    assert len(m2.raw) <= 40 + 40


def test_reassembly_with_overlaps_and_duplicates() -> None:
    c = Conn(syn_opts=SACK_SYN)
    c.handshake()
    b = c.gseq
    data = os.urandom(5000)
    for lo, hi in (
        (3000, 4000),
        (3500, 4500),
        (1000, 2000),
        (4500, 5000),
        (3000, 4000),
        (0, 1500),
        (1200, 3100),
    ):
        c.send(data[lo:hi], seq=b + lo)
    assert c.ep.readable() == 5000
    assert c.read_all() == data
    c.out()


def test_fin_after_gap_with_data_out_of_order() -> None:
    c = Conn(syn_opts=SACK_SYN)
    c.handshake()
    b = c.gseq
    c.send(b"tail", ACK | FIN, seq=b + 4)
    assert not c.ep.guest_fin
    c.send(b"head", seq=b)
    assert c.ep.guest_fin and c.read_all() == b"headtail"
    segs = c.out()
    assert segs[-1].ack == b + 9


def test_out_of_order_buffer_is_bounded_by_bytes() -> None:
    c = Conn(TcpParams(max_ooo_bytes=4000), syn_opts=SACK_SYN)
    c.handshake()
    b = c.gseq
    c.send(b"k" * 1000, seq=b + 3500)  # only 3500..4000 is kept
    c.send(b"j" * 1000, seq=b + 6000)  # entirely beyond the bound: dropped
    segs = c.out()
    assert segs[-1].opts.sack == [(b + 3500, b + 4000)]
    c.send(b"i" * 3500, seq=b)
    assert c.ep.readable() == 4000


def test_out_of_order_buffer_is_bounded_by_ranges() -> None:
    c = Conn(syn_opts=SACK_SYN)
    c.handshake()
    b = c.gseq
    for i in range(MAX_OOO_RANGES + 5):
        c.send(b"r", seq=b + 10 + 2 * i)
    c.out()
    assert len(c.ep._ooo.ranges) == MAX_OOO_RANGES  # the bound itself is the point
    # Filling everything still delivers what was kept, and later data is accepted in order.
    data = bytearray(2 * (MAX_OOO_RANGES + 5) + 10)
    for i in range(MAX_OOO_RANGES + 5):
        data[10 + 2 * i] = ord("r")
    c.send(bytes(data), seq=b)
    assert c.read_all() == bytes(data)


def test_no_sack_blocks_without_sack_permitted() -> None:
    c = Conn()
    c.handshake()
    c.send(b"x" * 10, seq=c.gseq + 10)
    (d,) = c.out()
    assert d.opts.sack == [] and d.ack == c.gseq


def test_guest_window_scale_applies_after_syn() -> None:
    c = Conn(syn_opts=tcp.options_bytes(mss=1460, wscale=4), window=1000)
    c.handshake()  # handshake ACK carries window 1000 << 4
    assert c.ep.snd_wnd == 16000
    c.send(b"", ACK, window=100)
    assert c.ep.snd_wnd == 1600


def test_unscaled_window_in_syn() -> None:
    c = Conn(syn_opts=tcp.options_bytes(mss=1460, wscale=4), window=1000)
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    assert c.ep.snd_wnd == 1000  # RFC 7323 2.2: a SYN's window is never scaled


def test_our_window_scaled_and_large() -> None:
    c = Conn(
        TcpParams(rcv_buffer=1 << 20, wscale=5), syn_opts=tcp.options_bytes(mss=1460, wscale=2)
    )
    sa = c.handshake()
    assert sa.window == 65535 and sa.opts.wscale == 5
    c.send(b"x")
    c.tick(0.02)
    c.send(b"y" * 1340)
    c.send(b"y" * 1340)
    (a,) = c.out()
    # Rounded down to the scale, and the edge moved only in steps of at least the SWS
    # threshold, so up to two scale units short of the free space.
    assert (1 << 20) - 2681 - 64 < a.window << 5 <= (1 << 20) - 2681


def test_timestamps_echo_earliest_unacked_segment() -> None:
    # RFC 7323 4.3: with delayed ACKs the echo is the TSval of the first segment ACKed.
    c = Conn(syn_opts=tcp.options_bytes(mss=1460, ts=(100, 0)), ts=True)
    c.ts_val = 200
    c.handshake()
    c.send(b"a" * 1340, opts=tcp.options_bytes(ts=(300, c.peer_ts_recent)))
    c.send(b"b" * 1340, opts=tcp.options_bytes(ts=(301, c.peer_ts_recent)))
    (a,) = c.out()
    assert a.opts.ts_ecr == 300
    c.send(b"c" * 10, opts=tcp.options_bytes(ts=(302, c.peer_ts_recent)))
    (d,) = c.tick(0.02)
    assert d.opts.ts_ecr == 302


def test_timestamp_rtt_measurement_after_retransmission() -> None:
    # Karn's rule forbids timing a retransmitted segment; its echoed timestamp does not.
    c = Conn(syn_opts=tcp.options_bytes(mss=1460, ts=(100, 0)), ts=True)
    c.ts_val = 200
    c.handshake()  # RTT ~0: SRTT ~0
    c.ep.write(b"m" * 1000, c.now)
    c.ep.flush(c.now)
    c.out()
    (r,) = c.tick(0.2005)
    assert r.data == b"m" * 1000
    c.clock.advance(0.050)
    c.gack += 1000
    c.send(b"", ACK, opts=tcp.options_bytes(ts=(201, r.opts.ts_val or 0)))
    # SRTT = 7/8 * ~0 + 1/8 * 50 ms (the timestamp clock ticks in milliseconds).
    assert abs(c.ep.srtt - 0.050 / 8) < 0.0003
