"""Proportional Rate Reduction (RFC 6937, with the refinements of its revision draft-ietf-
tcpm-prr-rfc6937bis): how much a loss-based sender may send on each ACK of a recovery.

Without it, SACK recovery (RFC 6675) sends nothing until the bytes in flight have fallen
from the old window to the new, smaller one (CUBIC: 0.7 of it), which is a silent third of
a round trip, and then one segment per segment delivered; after heavy losses, when the pipe
is already below the target, it sends the whole difference at once. PRR spreads the
reduction over the round trip instead: while the pipe is above ssthresh it sends
ssthresh/RecoverFS of what each ACK reports delivered, so the window arrives at ssthresh
just as recovery ends; below ssthresh it grows the pipe back no faster than slow start
would (one segment more than delivered per ACK that advances SND.UNA: the "slow start
reduction bound"), and not at all beyond what was delivered on an ACK that does not (the
conservative bound), because such an ACK may be reporting further losses.

Model-based controllers (BBR) set their own recovery window and do not use this (Linux
does the same: PRR applies to the loss-based algorithms only). Counting is in bytes, as
the endpoint's scoreboard is.
"""

from __future__ import annotations


class Prr:
    """One recovery episode's counters; `start` begins the next episode."""

    __slots__ = ("delivered", "mark", "out", "recover_fs", "una")

    def __init__(self) -> None:
        self.recover_fs = 1  # RecoverFS: bytes in flight when recovery began
        self.delivered = 0  # prr_delivered: bytes the guest reported receiving since
        self.out = 0  # prr_out: bytes sent (resent or new) since
        self.mark = 0  # SND.UNA + SACKed bytes at the last ACK (see quota)
        self.una = 0  # SND.UNA at the last ACK

    def start(self, flight: int, mark: int, una: int) -> None:
        self.recover_fs = flight if flight > 0 else 1
        self.delivered = 0
        self.out = 0
        self.mark = mark
        self.una = una

    def quota(self, pipe: int, ssthresh: int, mark: int, una: int, mss: int) -> int:
        """Bytes that may be sent after an ACK, given `mark` (SND.UNA plus the bytes SACKed
        above it: what the guest reports holding, so the growth since the last ACK is what
        this one delivered), SND.UNA, and `pipe`, the bytes presumed in the network (RFC
        6675). The caller adds what it then sends to `out`."""
        delivered = mark - self.mark
        if delivered < 0:
            delivered = 0  # the guest reneged on a SACK: nothing was delivered
        self.mark = mark
        una_advanced = una > self.una
        self.una = una
        self.delivered += delivered
        if pipe > ssthresh:
            # Proportional part: out tracks delivered * ssthresh / RecoverFS (rounded up).
            allowed = -(-self.delivered * ssthresh // self.recover_fs) - self.out
        else:
            allowed = self.delivered - self.out
            if allowed < delivered:
                allowed = delivered
            if una_advanced:
                allowed += mss  # slow start reduction bound (PRR-SSRB)
            if allowed > ssthresh - pipe:
                allowed = ssthresh - pipe
        if allowed <= 0 and self.out == 0:
            allowed = mss  # the first retransmission goes whatever the arithmetic says
        return allowed if allowed > 0 else 0
