"""Internet checksum (RFC 1071) over bytes-like objects.

Summing native 16-bit words and byte-swapping the folded result gives the same checksum as
summing big-endian words (RFC 1071's byte-order independence), and lets `sum()` run over a
memoryview cast without building Python ints per byte pair.
"""

from __future__ import annotations

import sys
from typing import Final

_LITTLE: Final = sys.byteorder == "little"


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


def fold(s: int) -> int:
    """Fold an accumulated sum and complement it: the value to store in a header."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    return fold(ones_sum(data, initial))
