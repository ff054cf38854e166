"""Serial-number arithmetic for 32-bit TCP sequence and timestamp values (RFC 1982, RFC 9293 3.4).

The endpoint never compares raw 32-bit values with `<`. Each 32-bit number that arrives
(sequence, acknowledgment, SACK edge) is first *unwrapped* against a nearby reference the
endpoint keeps as an unbounded integer (`unwrap`), using the serial rule that the two lie less
than 2**31 apart. From then on sequence space is an ordinary, ever-growing integer, so every
later comparison and subtraction is plain integer arithmetic that cannot be fooled by the
wrap at 2**32; outgoing values are masked with `wire`. This keeps the modular reasoning in one
place, tested across the wrap, instead of spread over every comparison in the state machine.

The pairwise predicates below are for values that stay 32-bit (timestamps for PAWS) and for
tests; they are exact whenever the two values are less than 2**31 apart.
"""

from __future__ import annotations

from typing import Final

MOD: Final = 1 << 32
MASK: Final = MOD - 1
HALF: Final = 1 << 31


def wire(a: int) -> int:
    """The 32-bit value carried on the wire for an unwrapped sequence number."""
    return a & MASK


def diff(a: int, b: int) -> int:
    """Signed distance a - b of two 32-bit serial numbers, in [-2**31, 2**31)."""
    d = (a - b) & MASK
    return d - MOD if d >= HALF else d


def unwrap(value: int, ref: int) -> int:
    """The unbounded integer congruent to the 32-bit `value` that lies nearest `ref`
    (an unbounded sequence number the caller already trusts, such as RCV.NXT)."""
    d = (value - ref) & MASK
    if d >= HALF:
        d -= MOD
    return ref + d


def add(a: int, n: int) -> int:
    return (a + n) & MASK


def lt(a: int, b: int) -> bool:
    return (a - b) & MASK >= HALF


def le(a: int, b: int) -> bool:
    return a == b or (a - b) & MASK >= HALF


def gt(a: int, b: int) -> bool:
    return lt(b, a)


def ge(a: int, b: int) -> bool:
    return le(b, a)


def in_window(a: int, start: int, size: int) -> bool:
    """start <= a < start + size in serial arithmetic (size below 2**31)."""
    return (a - start) & MASK < size
