"""The Internet checksum (net/checksum.py): `sum_at`, which every built segment and
datagram goes through, against a word-by-word reference written from RFC 1071, on both
sides of its switch from big-integer arithmetic to numpy."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wgslirp.net.checksum import NUMPY_FROM, fold, run_sums, sum_at


def reference(data: bytes) -> int:
    """RFC 1071 as written: big-endian 16-bit words, an odd byte padded with zero, end-around
    carry."""
    if len(data) & 1:
        data += b"\x00"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


@settings(max_examples=400, deadline=None)
@given(
    st.binary(min_size=0, max_size=1600),
    st.integers(min_value=0, max_value=60),
    st.integers(min_value=1, max_value=0x1FFFF),
)
def test_sum_at_folds_to_the_reference_checksum(data: bytes, off: int, pseudo: int) -> None:
    buf = bytearray(b"\xa5" * off + data + b"\x5a" * 3)  # bytes around it must not count
    got = sum_at(memoryview(buf), off, len(data))
    assert fold(got + pseudo) == fold(reference(data) + pseudo)


def test_both_routes_agree_at_the_switch() -> None:
    for n in (NUMPY_FROM - 2, NUMPY_FROM - 1, NUMPY_FROM, NUMPY_FROM + 1):
        data = bytes((i * 37 + 11) & 0xFF for i in range(n))
        assert fold(sum_at(data, 0, n) + 1) == fold(reference(data) + 1)


def test_all_ones_words_sum_to_the_negative_zero() -> None:
    data = b"\xff" * 1400  # every word 0xFFFF: one's-complement -0
    assert fold(sum_at(data, 0, len(data)) + 0x1234) == fold(0xFFFF + 0x1234)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=2, max_size=9000),
    st.integers(min_value=0, max_value=7),
    st.integers(min_value=1, max_value=700),
    st.integers(min_value=0x1, max_value=0x1FFFF),
)
def test_run_sums_give_each_runs_reference_checksum(
    data: bytes, off: int, half: int, pseudo: int
) -> None:
    size = 2 * half
    count = (len(data) - off) // size
    buf = bytearray(data)
    if count < 1:
        return
    got = run_sums(memoryview(buf), off, size, count)
    assert len(got) == count
    for i, s in enumerate(got):
        run = bytes(buf[off + i * size : off + (i + 1) * size])
        assert fold(s + pseudo) == fold(reference(run) + pseudo)
