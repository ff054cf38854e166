"""New full segments leave in trains whose payloads are summed in one call
(`checksum.run_sums`): every segment must still carry the right checksum and bytes, over
both families, where the send ring wraps, where pacing cuts a train short, and with
timestamps (options change the payload size per segment)."""

from __future__ import annotations

import pytest

from wgslirp.net import tcp
from wgslirp.slirp import tcp_endpoint
from wgslirp.slirp.tcp_endpoint import TcpParams
from wgslirp_testkit.tcpconn import Conn

MSS = 1340


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("ts", [False, True], ids=["plain", "timestamps"])
@pytest.mark.parametrize("pacing", [False, True], ids=["unpaced", "paced"])
def test_every_segment_of_a_train_carries_its_own_checksum_and_bytes(
    v6: bool, ts: bool, pacing: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    trains: list[int] = []
    real = tcp_endpoint.run_sums

    def counting(buf: memoryview, off: int, size: int, count: int) -> list[int]:
        trains.append(count)
        return real(buf, off, size, count)

    monkeypatch.setattr(tcp_endpoint, "run_sums", counting)
    # A 64 KiB ring, so 300 KB of data wraps it several times; cwnd far above the ring.
    p = TcpParams(mss=MSS, snd_buffer=1 << 16, snd_buffer_max=1 << 16, pacing=pacing)
    opts = tcp.options_bytes(mss=1460, wscale=7, ts=(1, 0) if ts else None)
    c = Conn(p, window=65535, syn_opts=opts, ts=ts, v6=v6)
    c.handshake()
    c.ep.cc.cwnd = 1 << 30
    data = bytes((i * 7919 + (i >> 8)) & 0xFF for i in range(300_000))
    got = bytearray()
    pos = 0
    for _ in range(2000):  # bounded: each turn writes, ticks 1 ms and ACKs all it got
        if pos < len(data):
            pos += c.ep.write(data[pos : pos + 20_000], c.now)
        c.ep.flush(c.now)
        segs = c.out() + c.tick(0.001)
        for s in segs:  # Seg parsing asserts the checksum (tcpconn.parse_seg)
            assert s.seq == c.gack, "out of order or resent: the test needs a clean path"
            got += s.data
            c.gack += len(s.data)
        if segs:
            c.send(b"")
        if len(got) == len(data):
            break
    assert bytes(got) == data
    assert trains and max(trains) >= 2, "no train was summed in one call"
