"""IPv6 fragmentation and reassembly (RFC 8200 4.5, RFC 5722, RFC 6946, RFC 7112) in the
Reassembler IPv4 uses, under the same memory bounds."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_ipv6 import GUEST, REMOTE, ext, frag_hdr, packet, udp_body
from wgslirp.net import ipv4, ipv6, udp
from wgslirp.net.fragment import DATAGRAM_OVERHEAD, PIECE_OVERHEAD, Reassembler, fragment6


def datagram(size: int, *, hbh: bool = False) -> bytearray:
    """A whole UDP datagram with `size` payload bytes (optionally behind a hop-by-hop
    header, which belongs to the unfragmentable part)."""
    payload = bytes((i * 131 + size) & 0xFF for i in range(size))
    body = udp_body(4000, 5000, payload)
    if hbh:
        return packet(ipv6.NH_HOP_BY_HOP, ext(ipv6.NH_UDP) + body)
    return packet(ipv6.NH_UDP, body)


def split(whole: bytes, unfrag: int, piece: int, ident: int = 77) -> list[bytearray]:
    """Fragments of `whole` (whose unfragmentable part is `unfrag` bytes) carrying `piece`
    data bytes each, written by hand so the reassembler is not tested against its twin."""
    nh_at = 6 if unfrag == 40 else 40
    nh = whole[nh_at]
    data = whole[unfrag:]
    out = []
    for pos in range(0, len(data), piece):
        chunk = data[pos : pos + piece]
        more = pos + piece < len(data)
        head = bytearray(whole[:unfrag])
        head[nh_at] = ipv6.NH_FRAGMENT
        frag = head + frag_hdr(nh, pos, more, ident) + chunk
        struct.pack_into(">H", frag, 4, len(frag) - 40)
        out.append(frag)
    return out


def feed_all(r: Reassembler, frags: list[bytearray], now: float = 0.0) -> list[bytearray]:
    return [w for f in frags if (w := r.feed(f, len(f), now)) is not None]


def test_in_order_and_out_of_order() -> None:
    whole = datagram(3000, hbh=True)
    frags = split(whole, 48, 1232)
    assert len(frags) == 3
    for order in (frags, frags[::-1], [frags[1], frags[2], frags[0]]):
        r = Reassembler()
        got = feed_all(r, order)
        assert got == [whole]
        assert r.pending_datagrams == 0 and r.pending_bytes == 0 and r.completed == 1
        assert udp.parse(got[0], len(got[0])) is not None


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 4000), st.integers(1, 40), st.randoms(use_true_random=False))
def test_any_order_any_size(size: int, units: int, rnd: random.Random) -> None:
    whole = datagram(size)
    frags = split(whole, 40, units * 8)
    rnd.shuffle(frags)
    r = Reassembler()
    assert feed_all(r, frags) == [whole]
    assert r.pending_bytes == 0


def test_overlap_drops_the_whole_datagram() -> None:
    whole = datagram(2000)
    a, b = split(whole, 40, 1024)
    # a second piece that starts 8 bytes inside the first one
    sneaky = split(whole, 40, 1016)[1]
    r = Reassembler()
    assert r.feed(a, len(a), 0) is None
    assert r.feed(sneaky, len(sneaky), 0) is None
    assert r.dropped_overlap == 1 and r.pending_datagrams == 0 and r.pending_bytes == 0
    # the legitimate rest alone no longer completes anything
    assert r.feed(b, len(b), 0) is None
    assert r.completed == 0


def test_exact_duplicate_is_ignored() -> None:
    whole = datagram(2000)
    a, b = split(whole, 40, 1024)
    r = Reassembler()
    assert r.feed(a, len(a), 0) is None
    assert r.feed(a, len(a), 0) is None
    assert r.duplicates == 1
    assert r.feed(b, len(b), 0) == whole


def test_middle_piece_not_a_multiple_of_eight_is_invalid() -> None:
    whole = datagram(2000)
    a = split(whole, 40, 1024)[0]
    bad = a[:-3]
    struct.pack_into(">H", bad, 4, len(bad) - 40)
    r = Reassembler()
    assert r.feed(bad, len(bad), 0) is None
    assert r.dropped_invalid == 1 and r.pending_datagrams == 0


def test_beyond_65535_is_invalid() -> None:
    frag = packet(ipv6.NH_FRAGMENT, frag_hdr(ipv6.NH_UDP, 65528, False, 5) + bytes(16))
    r = Reassembler()
    assert r.feed(frag, len(frag), 0) is None
    assert r.dropped_invalid == 1 and r.pending_datagrams == 0


def test_first_fragment_without_the_upper_header_is_dropped() -> None:
    # RFC 7112: a first fragment whose chain does not reach the UDP header
    body = frag_hdr(ipv6.NH_DEST_OPTS, 0, True, 9) + ext(ipv6.NH_UDP, 16)[:8]
    frag = packet(ipv6.NH_FRAGMENT, body)
    r = Reassembler()
    assert r.feed(frag, len(frag), 0) is None
    assert r.dropped_invalid == 1 and r.pending_datagrams == 0


def test_atomic_fragment_is_a_whole_datagram() -> None:
    whole = datagram(100)
    (frag,) = split(whole, 40, 4096)
    r = Reassembler()
    got = r.feed(frag, len(frag), 0)
    assert got == whole and r.pending_datagrams == 0


def test_unfragmented_packet_comes_back_as_a_copy() -> None:
    whole = datagram(100)
    r = Reassembler()
    got = r.feed(whole, len(whole), 0)
    assert got == whole and got is not whole


def test_timeout_and_memory_bounds_are_shared_with_ipv4() -> None:
    r = Reassembler(timeout=5.0, max_bytes=DATAGRAM_OVERHEAD * 3 + 3 * (1024 + 48 + PIECE_OVERHEAD))
    for ident in range(10):
        first = split(datagram(2000), 40, 1024, ident=ident)[0]
        r.feed(first, len(first), float(ident) * 0.1)
    assert r.pending_datagrams <= 3
    assert r.pending_bytes <= r.max_bytes
    assert r.dropped_memory >= 7
    # an IPv4 fragment competes for the same bytes
    v4 = bytearray(
        struct.pack(">BBHHHBBHII", 0x45, 0, 20 + 16, 1, ipv4.FLAG_MF, 64, 17, 0, 1, 2) + bytes(16)
    )
    struct.pack_into(">H", v4, 10, 0)
    from wgslirp.net.checksum import checksum

    struct.pack_into(">H", v4, 10, checksum(v4[:20]))
    assert r.feed(v4, len(v4), 1.0) is None
    assert r.pending_bytes <= r.max_bytes
    assert r.get_timer() is not None
    r.handle_timer(100.0)
    assert r.pending_datagrams == 0 and r.pending_bytes == 0


def test_same_addresses_and_ident_do_not_mix_families() -> None:
    # An IPv6 pair inside ::/96 equals an IPv4 pair as ints; the keys still differ.
    src, dst = 0x0A4D0002, 0x08080808
    v6 = packet(
        ipv6.NH_FRAGMENT,
        frag_hdr(ipv6.NH_UDP, 0, True, 0x1234) + udp_body(1, 2, bytes(8), src, dst),
        src=src,
        dst=dst,
    )
    r = Reassembler()
    assert r.feed(v6, len(v6), 0) is None
    keys = list(r._pending)
    assert keys == [(src, dst, 0x100, 0x1234)]


def test_fragment6_round_trips_through_the_reassembler() -> None:
    out = bytearray(70000)
    n = udp.build_udp_into6(out, REMOTE, GUEST, 53, 4000, bytes(range(256)) * 12)
    frags = fragment6(out, n, 1420, ident=0xABCDEF01)
    assert len(frags) == 3 and all(len(f) <= 1420 for f in frags)
    for f in frags:
        chain = ipv6.Chain()
        assert ipv6.walk(f, len(f), chain) and chain.frag == 40
        assert ipv6.fragment_fields(f, 40)[3] == 0xABCDEF01
    r = Reassembler()
    assert feed_all(r, frags[::-1]) == [out[:n]]
    assert udp.checksum_ok(out, n)
    assert fragment6(out, n, 9000, ident=1) == [out[:n]]
