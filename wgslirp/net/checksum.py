"""Internet checksum (RFC 1071) over bytes-like objects.

Summing native 16-bit words and byte-swapping the folded result gives the same checksum as
summing big-endian words (RFC 1071's byte-order independence), and lets `sum()` run over a
memoryview cast without building Python ints per byte pair.
"""

from __future__ import annotations

import sys
from typing import Final

import numpy as np

_LITTLE: Final = sys.byteorder == "little"
_LE16: Final = np.dtype("<u2")
_U64: Final = np.uint64
_frombuffer = np.frombuffer
_add = np.add.reduce
# From this many bytes on, numpy's word sum beats reading the bytes as one big integer
# modulo 0xFFFF (CPython divides digit by digit): 1,400 bytes took 2.84 against 4.96 us
# (timeit, 2-core box with other work running); below it numpy's fixed cost loses.
NUMPY_FROM: Final = 256


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Unfolded one's-complement sum in network order; chain it for pseudo-headers."""
    mv = memoryview(data)
    n = len(mv)
    if n & 1:
        mv = memoryview(bytes(mv) + b"\x00")
    s = sum(mv.cast("B").cast("H")) if n else 0
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    if _LITTLE:
        s = ((s & 0xFF) << 8) | (s >> 8)
    return s + initial


def sum_at(buf: bytes | bytearray | memoryview, off: int, n: int) -> int:
    """One's-complement sum of `buf[off:off + n]` in network order, up to 0 versus 0xFFFF
    (congruent modulo 0xFFFF: callers add a non-zero pseudo-header and `fold`). The hot
    path of every segment and datagram the router builds."""
    if n < NUMPY_FROM:
        v = int.from_bytes(memoryview(buf)[off : off + n], "big")
        if n & 1:
            v <<= 8
        small: int = v % 0xFFFF
        return small
    # Little-endian words (native on x86, no swap): the sum is the network-order one with
    # its bytes swapped (RFC 1071 2(B)); an odd last byte is such a word's low byte.
    s = int(_add(_frombuffer(buf, _LE16, n >> 1, off), dtype=_U64))
    if n & 1:
        s += buf[off + n - 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ((s & 0xFF) << 8) | (s >> 8)


def run_sums(buf: bytes | bytearray | memoryview, off: int, size: int, count: int) -> list[int]:
    """`sum_at` of `count` back-to-back runs of `size` bytes (even) from `off`, in one numpy
    call: the payloads of a train of full segments cut from one send buffer. Per 1,368-byte
    segment: 1.36 us in a train of 2, 0.49 in 16, 0.38 in 64, against sum_at's 1.95 (timeit,
    quiet 2-core box); summed apart, a download's payloads were 8 % of the router's
    samples in py-spy."""
    words = _frombuffer(buf, _LE16, count * (size >> 1), off).reshape(count, size >> 1)
    out: list[int] = _add(words, axis=1, dtype=_U64).tolist()
    for i, s in enumerate(out):
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        out[i] = ((s & 0xFF) << 8) | (s >> 8)
    return out


def fold(s: int) -> int:
    """Fold an accumulated sum and complement it: the value to store in a header."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    return fold(ones_sum(data, initial))
