"""Sliding replay window for transport counters (RFC 6479 layout).

The bitmap is a ring of 64-bit words: advancing the window only clears the words it passes
over, so a jump far ahead costs at most one full clear instead of a shift of the whole map.
One word is kept as slack so that a full window's worth of history is always valid behind
the highest counter seen.
"""

from __future__ import annotations

from typing import Final

WINDOW_WORDS: Final = 128  # ring size in 64-bit words (a power of two), as wireguard-go
WINDOW_BITS: Final = (WINDOW_WORDS - 1) * 64  # 8128 usable counters behind the top
REJECT_AFTER_MESSAGES: Final = (1 << 64) - (1 << 13) - 1
_RING_MASK: Final = WINDOW_WORDS - 1


class ReplayWindow:
    __slots__ = ("_words", "top")

    def __init__(self) -> None:
        self._words = [0] * WINDOW_WORDS
        self.top = -1  # highest accepted counter; -1 before the first packet

    def check(self, counter: int) -> bool:
        """True if `counter` may be accepted now (not a replay, not too old).

        Called before decryption so forged packets cost no state; `accept` commits it
        after the AEAD tag verified.
        """
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        top = self.top
        if counter > top:
            return True
        if top - counter >= WINDOW_BITS:
            return False
        return not (self._words[(counter >> 6) & _RING_MASK] >> (counter & 63)) & 1

    def accept(self, counter: int) -> bool:
        """Record `counter`; returns False if it was a replay or out of the window."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        words = self._words
        top = self.top
        idx = counter >> 6
        if counter > top:
            cur = (top >> 6) if top >= 0 else -1
            gap = idx - cur
            if gap > 0:
                if gap >= WINDOW_WORDS:
                    for i in range(WINDOW_WORDS):
                        words[i] = 0
                else:
                    for i in range(cur + 1, idx + 1):
                        words[i & _RING_MASK] = 0
            self.top = counter
        elif top - counter >= WINDOW_BITS:
            return False
        slot = idx & _RING_MASK
        bit = 1 << (counter & 63)
        w = words[slot]
        if w & bit:
            return False
        words[slot] = w | bit
        return True
