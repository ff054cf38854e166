"""Fragmentation and the bounded, time-injected Reassembler."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgslirp.net import ipv4
from wgslirp.net.checksum import checksum
from wgslirp.net.fragment import DATAGRAM_OVERHEAD, PIECE_OVERHEAD, Reassembler, fragment

SRC = ipv4.addr_to_int("10.77.0.2")
DST = ipv4.addr_to_int("198.51.100.7")

# Router alert (copied into every fragment) then record route (first fragment only).
OPTIONS = bytes([0x94, 4, 0, 0, 0x07, 7, 4, 0, 0, 0, 0, 0])


def datagram(
    size: int,
    *,
    ident: int = 0x4242,
    options: bytes = b"",
    flags: int = 0,
    proto: int = ipv4.PROTO_UDP,
    src: int = SRC,
) -> bytearray:
    ihl = 20 + len(options)
    body = bytes((i * 131 + size) & 0xFF for i in range(size))
    pkt = bytearray(
        struct.pack(
            ">BBHHHBBHII", 0x40 | ihl // 4, 0, ihl + size, ident, flags, 64, proto, 0, src, DST
        )
        + options
        + body
    )
    struct.pack_into(">H", pkt, 10, checksum(memoryview(pkt)[:ihl]))
    return pkt


def frag(data: bytes, offset: int, *, more: bool, ident: int = 1, src: int = SRC) -> bytearray:
    """A hand-made fragment: `offset` in bytes, need not be consistent with anything."""
    word = (ipv4.FLAG_MF if more else 0) | (offset // 8)
    pkt = bytearray(
        struct.pack(
            ">BBHHHBBHII", 0x45, 0, 20 + len(data), ident, word, 64, ipv4.PROTO_UDP, 0, src, DST
        )
        + data
    )
    struct.pack_into(">H", pkt, 10, checksum(memoryview(pkt)[:20]))
    return pkt


def frag_fields(f: bytes) -> tuple[int, int, bool]:
    """(data offset, data length, more fragments) of a fragment."""
    ihl = (f[0] & 0x0F) * 4
    word = struct.unpack_from(">H", f, 6)[0]
    return (word & 0x1FFF) * 8, len(f) - ihl, bool(word & ipv4.FLAG_MF)


# --- fragment() --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(0, 9000),
    mtu=st.integers(68, 1500),
    with_options=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_fragments_fit_align_and_reassemble(
    size: int, mtu: int, with_options: bool, seed: int
) -> None:
    original = datagram(size, options=OPTIONS if with_options else b"")
    pieces = fragment(memoryview(original), len(original), mtu)
    assert pieces is not None
    if len(original) <= mtu:
        assert pieces == [original]
        return
    expected_offset = 0
    for i, piece in enumerate(pieces):
        assert len(piece) <= mtu
        assert ipv4.header_valid(piece, len(piece))
        assert struct.unpack_from(">H", piece, 4)[0] == 0x4242
        offset, length, more = frag_fields(piece)
        assert offset == expected_offset and offset % 8 == 0
        assert more == (i < len(pieces) - 1)
        if more:
            assert length % 8 == 0
        ihl = (piece[0] & 0x0F) * 4
        if with_options:
            assert piece[20:ihl] == (OPTIONS if i == 0 else OPTIONS[:4])
        expected_offset += length
    assert expected_offset == size

    # Any order, with duplicates, as long as they arrive before the datagram completes (a
    # later one would rightly start a new, never-finished datagram).
    rng = random.Random(seed)
    order = list(pieces)
    rng.shuffle(order)
    completing = order.pop()
    for dup in (order[0], order[-1]):
        order.insert(rng.randint(0, len(order)), dup)
    order.append(completing)
    r = Reassembler()
    results = [r.feed(memoryview(p), len(p), now=1.0) for p in order]
    done = [x for x in results if x is not None]
    assert done == [original]
    assert r.completed == 1 and r.pending_datagrams == 0 and r.pending_bytes == 0
    assert r.duplicates == 2
    assert r.dropped_overlap == r.dropped_invalid == r.dropped_memory == 0


def test_dont_fragment_is_reported_not_split() -> None:
    pkt = datagram(2000, flags=ipv4.FLAG_DF)
    assert fragment(pkt, len(pkt), 1420) is None
    assert fragment(pkt, len(pkt), 2020) == [pkt]  # fits: DF does not matter


def test_refragmenting_a_fragment_keeps_offsets_and_mf() -> None:
    original = datagram(4000)
    first = fragment(original, len(original), 1500)
    assert first is not None and len(first) == 3
    again = fragment(first[1], len(first[1]), 300)
    assert again is not None and len(again) > 1
    assert all(frag_fields(p)[2] for p in again)  # the middle piece's MF survives on its last
    tail = fragment(first[2], len(first[2]), 300)
    assert tail is not None and not frag_fields(tail[-1])[2]
    r = Reassembler()
    pieces = [first[0], *again, *tail]
    random.Random(5).shuffle(pieces)
    out = [r.feed(p, len(p), 0.0) for p in pieces]
    assert [x for x in out if x is not None] == [original]


def test_fragment_refuses_bad_input() -> None:
    pkt = datagram(1000, options=bytes(40))
    with pytest.raises(ValueError):
        fragment(pkt, len(pkt), 64)  # 60-byte header leaves less than 8 bytes
    with pytest.raises(ValueError):
        fragment(pkt, 10, 576)
    with pytest.raises(ValueError):
        fragment(pkt, len(pkt) - 1, 576)  # total length beyond the buffer


def test_fragment_takes_the_length_argument_not_the_buffer_size() -> None:
    pkt = datagram(1000)
    buf = bytearray(4096)
    buf[: len(pkt)] = pkt
    pieces = fragment(memoryview(buf), len(pkt), 576)
    assert pieces is not None
    assert sum(frag_fields(p)[1] for p in pieces) == 1000


# --- Reassembler -------------------------------------------------------------------------


def test_non_fragment_comes_straight_back() -> None:
    pkt = datagram(100)
    r = Reassembler()
    assert r.feed(pkt + b"junk", len(pkt), 0.0) == pkt
    assert r.pending_datagrams == 0


def test_timeout_with_fake_clock() -> None:
    r = Reassembler(timeout=30.0)
    assert r.get_timer() is None
    assert r.feed(frag(bytes(8), 0, more=True), 28, now=100.0) is None
    assert r.get_timer() == 130.0
    assert r.expire(129.9) == 0 and r.pending_datagrams == 1
    r.handle_timer(130.0)
    assert r.timed_out == 1 and r.pending_datagrams == 0 and r.pending_bytes == 0
    assert r.get_timer() is None

    # Expiry is also checked on feed: the late last piece starts a new, incomplete datagram.
    r.feed(frag(bytes(8), 0, more=True), 28, now=200.0)
    assert r.feed(frag(bytes(8), 8, more=False), 28, now=230.5) is None
    assert r.timed_out == 2 and r.completed == 0 and r.pending_datagrams == 1


def test_timeout_is_configurable_and_per_datagram() -> None:
    r = Reassembler(timeout=5.0)
    r.feed(frag(bytes(8), 0, more=True, ident=1), 28, now=0.0)
    r.feed(frag(bytes(8), 0, more=True, ident=2), 28, now=3.0)
    assert r.expire(5.0) == 1 and r.get_timer() == 8.0
    out = r.feed(frag(b"abcd", 8, more=False, ident=2), 24, now=7.9)
    assert out is not None and out[20:] == bytes(8) + b"abcd"
    assert r.completed == 1 and r.timed_out == 1


def test_memory_bound_evicts_oldest() -> None:
    r = Reassembler(max_bytes=4000)
    r.feed(frag(bytes(1600), 0, more=True, ident=1), 1620, 0.0)
    r.feed(frag(bytes(800), 0, more=True, ident=2), 820, 0.0)
    assert r.pending_bytes == 1620 + 820 + 2 * (PIECE_OVERHEAD + DATAGRAM_OVERHEAD)
    # Datagram 3 needs room: datagram 1, the oldest, goes.
    r.feed(frag(bytes(800), 0, more=True, ident=3), 820, 0.0)
    assert r.dropped_memory == 1 and r.pending_datagrams == 2
    assert r.pending_bytes <= 4000
    out = r.feed(frag(b"end!", 800, more=False, ident=2), 24, 0.0)
    assert out is not None and len(out) == 20 + 804
    assert r.completed == 1


def test_datagram_larger_than_the_bound_is_dropped() -> None:
    r = Reassembler(max_bytes=2500)
    r.feed(frag(bytes(1600), 0, more=True, ident=9), 1620, 0.0)
    assert r.pending_datagrams == 1
    assert r.feed(frag(bytes(1600), 1600, more=False, ident=9), 1620, 0.0) is None
    assert r.dropped_memory == 1 and r.pending_datagrams == 0 and r.pending_bytes == 0


@given(st.lists(st.integers(1, 3000), min_size=1, max_size=60))
def test_memory_bound_holds_under_any_load(sizes: list[int]) -> None:
    r = Reassembler(max_bytes=8000, max_datagrams=5)
    for ident, size in enumerate(sizes):
        size -= size % 8
        if size:
            r.feed(frag(bytes(size), 0, more=True, ident=ident), 20 + size, 0.0)
        assert r.pending_bytes <= 8000 and r.pending_datagrams <= 5


def test_datagram_count_bound() -> None:
    r = Reassembler(max_datagrams=2)
    for ident in (1, 2, 3):
        r.feed(frag(bytes(8), 0, more=True, ident=ident), 28, 0.0)
    assert r.pending_datagrams == 2 and r.dropped_memory == 1
    assert r.feed(frag(b"x", 8, more=False, ident=1), 21, 0.0) is None  # 1 was evicted
    assert r.feed(frag(b"x", 8, more=False, ident=3), 21, 0.0) is not None


def test_keys_separate_sources_and_ids() -> None:
    r = Reassembler()
    other = SRC + 1
    r.feed(frag(b"A" * 8, 0, more=True, ident=1), 28, 0.0)
    r.feed(frag(b"B" * 8, 0, more=True, ident=1, src=other), 28, 0.0)
    a = r.feed(frag(b"a", 8, more=False, ident=1), 21, 0.0)
    b = r.feed(frag(b"b", 8, more=False, ident=1, src=other), 21, 0.0)
    assert a is not None and a[20:] == b"AAAAAAAAa"
    assert b is not None and b[20:] == b"BBBBBBBBb"


@pytest.mark.parametrize(
    "second",
    [
        frag(bytes(16), 8, more=True),  # overlaps the tail of [0, 16)
        frag(bytes(8), 0, more=True),  # same start, shorter
        frag(b"\x01" * 16, 0, more=True),  # same range, different bytes
        frag(bytes(8), 8, more=False),  # inside it and claims to be last
    ],
)
def test_overlap_drops_the_whole_datagram(second: bytearray) -> None:
    r = Reassembler()
    r.feed(frag(bytes(16), 0, more=True), 36, 0.0)
    assert r.feed(second, len(second), 0.0) is None
    assert r.dropped_overlap == 1 and r.pending_datagrams == 0 and r.pending_bytes == 0


def test_overlap_with_a_later_piece() -> None:
    r = Reassembler()
    r.feed(frag(bytes(16), 16, more=True), 36, 0.0)
    assert r.feed(frag(bytes(24), 0, more=True), 44, 0.0) is None
    assert r.dropped_overlap == 1


def test_exact_duplicates_are_ignored() -> None:
    r = Reassembler()
    first = frag(b"01234567", 0, more=True)
    assert r.feed(first, len(first), 0.0) is None
    assert r.feed(first, len(first), 0.0) is None
    out = r.feed(frag(b"89", 8, more=False), 22, 0.0)
    assert out is not None and out[20:] == b"0123456789"
    assert r.duplicates == 1 and r.dropped_overlap == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (frag(bytes(8), 8, more=False), frag(bytes(8), 16, more=False)),  # two different ends
        (frag(bytes(8), 8, more=False), frag(bytes(16), 16, more=True)),  # data past the end
        (frag(bytes(16), 16, more=True), frag(bytes(8), 8, more=False)),  # end before data
    ],
)
def test_inconsistent_ends_drop_the_datagram(first: bytearray, second: bytearray) -> None:
    r = Reassembler()
    r.feed(first, len(first), 0.0)
    assert r.feed(second, len(second), 0.0) is None
    assert r.pending_datagrams == 0 and r.dropped_overlap == 1


def test_invalid_fragments_are_counted_and_ignored() -> None:
    r = Reassembler()
    assert r.feed(frag(bytes(12), 0, more=True), 32, 0.0) is None  # middle not 8-byte aligned
    assert r.feed(frag(b"", 8, more=True), 20, 0.0) is None  # empty middle piece
    big = frag(bytes(64), 8189 * 8, more=False)  # ping of death: ends past 65535
    assert r.feed(big, len(big), 0.0) is None
    bad = frag(bytes(8), 0, more=True)
    bad[10] ^= 1  # header checksum
    assert r.feed(bad, len(bad), 0.0) is None
    assert r.dropped_invalid == 4 and r.pending_datagrams == 0


def test_oversized_after_first_header_is_known() -> None:
    # The pieces fit 65535 with 20-byte headers, but the first one carries 40 bytes of
    # options, and the reassembled datagram would not.
    r = Reassembler()
    last_start = 65496  # data ends at 65512: 20 + 65512 fits, 60 + 65512 does not
    tail = frag(bytes(16), last_start, more=False)
    r.feed(tail, len(tail), 0.0)
    opts = datagram(0, options=bytes(40), ident=1)
    for start in range(0, last_start, 8000):
        size = min(8000, last_start - start)
        body = bytes(size)
        if start == 0:
            head = bytearray(opts[:60] + body)
            struct.pack_into(">H", head, 2, 60 + size)
            struct.pack_into(">H", head, 6, ipv4.FLAG_MF)
            head[10:12] = b"\x00\x00"
            struct.pack_into(">H", head, 10, checksum(memoryview(head)[:60]))
            assert r.feed(head, len(head), 0.0) is None
        else:
            piece = frag(body, start, more=True)
            assert r.feed(piece, len(piece), 0.0) is None
    assert r.dropped_invalid == 1 and r.completed == 0 and r.pending_datagrams == 0


def test_zero_length_last_fragment_completes() -> None:
    r = Reassembler()
    r.feed(frag(b"abcdefgh", 0, more=True), 28, 0.0)
    out = r.feed(frag(b"", 8, more=False), 20, 0.0)
    assert out is not None and out[20:] == b"abcdefgh"
    assert struct.unpack_from(">HH", out, 2)[0] == 28
    assert ipv4.header_valid(out, len(out))


def test_a_flood_of_tiny_fragments_is_bounded_by_real_memory() -> None:
    """8-byte pieces that never complete: what the reassembler really holds (measured with
    tracemalloc) stays within the bound, not within a multiple of it."""
    import tracemalloc

    bound = 256 << 10
    r = Reassembler(max_bytes=bound, max_datagrams=100_000)
    pkts = [frag(bytes(8), 8 * (1 + k % 500), more=True, ident=k // 500) for k in range(15_000)]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for p in pkts:
            r.feed(p, len(p), 0.0)
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert r.pending_bytes <= bound and r.dropped_memory > 0
    assert held <= 1.25 * bound, held


def test_one_sources_flood_evicts_its_own_datagrams_not_anothers() -> None:
    quiet = 0x0A4D0003  # 10.77.0.3
    r = Reassembler(max_bytes=20_000, max_datagrams=1000)
    first = frag(bytes(800), 0, more=True, ident=1, src=quiet)
    r.feed(first, len(first), 0.0)
    for ident in range(100, 400):  # the default source floods
        p = frag(bytes(800), 0, more=True, ident=ident)
        r.feed(p, len(p), 0.0)
    assert r.dropped_memory > 200 and r.pending_bytes <= 20_000
    last = frag(b"end!", 800, more=False, ident=1, src=quiet)
    whole = r.feed(last, len(last), 1.0)
    assert whole is not None and len(whole) == 20 + 804  # the quiet source's survived
