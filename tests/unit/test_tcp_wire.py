"""net/tcp.py (parse, options, build, checksum) and tcp_seq (serial arithmetic)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from wgslirp.net import tcp
from wgslirp.net.checksum import checksum, ones_sum
from wgslirp.slirp import tcp_seq
from wgslirp_testkit.tcpconn import GUEST_IP, HOST_IP, guest_pkt

U32 = st.integers(min_value=0, max_value=0xFFFFFFFF)


def _reference_tcp_checksum(pkt: bytes) -> int:
    """RFC 793's definition, summed word by word with the slow generic helper."""
    ihl = (pkt[0] & 15) * 4
    total = struct.unpack_from(">H", pkt, 2)[0]
    seg = bytearray(pkt[ihl:total])
    seg[16:18] = b"\x00\x00"
    pseudo = pkt[12:20] + struct.pack(">BBH", 0, 6, len(seg))
    return checksum(bytes(seg), ones_sum(pseudo))


@given(st.binary(max_size=1500), U32, U32, st.integers(0, 0xFF), st.integers(0, 0xFFFF))
def test_checksum_matches_reference(
    data: bytes, seq: int, ack: int, flags: int, window: int
) -> None:
    pkt = guest_pkt(seq, ack, flags, data, window)
    assert struct.unpack_from(">H", pkt, 36)[0] == _reference_tcp_checksum(bytes(pkt))
    assert tcp.checksum_ok(pkt, len(pkt))
    assert checksum(pkt[:20]) == 0  # IPv4 header checksum, computed incrementally


def test_segment_writer_tos_and_ident_change_ip_checksum_correctly() -> None:
    w = tcp.SegmentWriter(HOST_IP, GUEST_IP, 80, 1234, ttl=3, ident=0xFFFE)
    buf = memoryview(bytearray(100))
    for tos in (0, 0xB8, 0xFF):
        w.tos = tos
        n = w.write(buf, 1, 2, tcp.ACK, 100, b"", 0)
        assert n == 40 and buf[1] == tos and buf[8] == 3
        assert checksum(buf[:20]) == 0
        assert tcp.checksum_ok(buf, n)
        assert buf[6] & 0x40  # DF


def test_parse_rejects_malformed() -> None:
    good = guest_pkt(1, 2, tcp.ACK, b"abc")
    assert tcp.parse(good, len(good)) is not None
    assert tcp.parse(good, 39) is None  # truncated
    bad = bytearray(good)
    bad[32] = 0x40  # data offset 16 bytes < 20
    assert tcp.parse(bad, len(bad)) is None
    bad = bytearray(good)
    bad[32] = 0xF0  # data offset 60 bytes > segment
    assert tcp.parse(bad, len(bad)) is None
    bad = bytearray(good)
    bad[9] = 17  # not TCP
    assert tcp.parse(bad, len(bad)) is None
    bad = bytearray(good)
    bad[6] = 0x20  # more fragments
    assert tcp.parse(bad, len(bad)) is None


def test_options_round_trip() -> None:
    raw = tcp.options_bytes(mss=1400, wscale=9, sack_perm=True, ts=(1, 2))
    assert len(raw) == 20 and len(raw) % 4 == 0
    o = tcp.parse_options(raw, 0, len(raw))
    assert o is not None
    assert (o.mss, o.wscale, o.sack_perm, o.ts_val, o.ts_ecr) == (1400, 9, True, 1, 2)
    raw = tcp.options_bytes(ts=(3, 4), sack=[(10, 20), (30, 40), (50, 60)])
    assert len(raw) == 40
    o = tcp.parse_options(raw, 0, len(raw))
    assert o is not None and o.sack == [(10, 20), (30, 40), (50, 60)] and o.ts_val == 3
    assert raw[:4] == tcp.TS_PREFIX


def test_options_malformed_and_unknown() -> None:
    assert tcp.parse_options(b"\x02\x04\x05", 0, 3) is None  # runs past the end
    assert tcp.parse_options(b"\x02\x01\x00\x00", 0, 4) is None  # length below 2
    assert tcp.parse_options(b"\x08\x06\x00\x00\x00\x00", 0, 6) is None  # bad TS length
    o = tcp.parse_options(b"\xfe\x04\xaa\xbb\x03\x03\x20\x00", 0, 8)  # unknown, WS 32
    assert o is not None and o.wscale == 14  # RFC 7323: shifts above 14 are 14
    o = tcp.parse_options(b"\x00\x02\x04\x05\xb4", 0, 5)  # EOL stops parsing
    assert o is not None and o.mss is None


def test_options_too_long_refused() -> None:
    try:
        tcp.options_bytes(ts=(1, 2), sack=[(1, 2)] * 4)
    except ValueError:
        return
    raise AssertionError("44 bytes of options accepted")


@given(U32, st.integers(-(2**31) + 1, 2**31 - 1))
def test_serial_order_across_wrap(a: int, d: int) -> None:
    b = tcp_seq.add(a, d)
    assert tcp_seq.diff(b, a) == d
    assert tcp_seq.lt(a, b) == (d > 0)
    assert tcp_seq.gt(a, b) == (d < 0)
    assert tcp_seq.le(a, b) == (d >= 0)
    assert tcp_seq.ge(a, b) == (d <= 0)


@given(st.integers(0, 2**40), st.integers(-(2**31) + 1, 2**31 - 1))
def test_unwrap_recovers_nearby_value(ref: int, d: int) -> None:
    target = ref + d
    if target < 0:
        return
    assert tcp_seq.unwrap(tcp_seq.wire(target), ref) == target


def test_serial_at_the_wrap() -> None:
    top = 0xFFFFFFFF
    assert tcp_seq.lt(top, 0) and tcp_seq.gt(0, top)
    assert tcp_seq.lt(top - 5, 10)
    assert tcp_seq.diff(3, top) == 4
    assert tcp_seq.in_window(2, top - 1, 10) and not tcp_seq.in_window(top - 2, top - 1, 10)
    assert tcp_seq.unwrap(5, top) == 2**32 + 5
    assert tcp_seq.unwrap(top, 2**32 + 5) == top
