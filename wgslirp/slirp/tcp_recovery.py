"""What the TCP endpoint knows for loss recovery: round-trip time, and which ranges beyond
the cumulative ACK each side already holds.

Split from the endpoint the way aioquic splits `quic/recovery.py` from `quic/connection.py`:
the endpoint (tcp_endpoint) is the state machine that reads segments, moves bytes through its
rings and decides what to send and when; tcp_cc decides how big the congestion window is;
this module keeps the bookkeeping those decisions rest on:

- `RttEstimator`: SRTT, RTTVAR and the retransmission timeout (RFC 6298, RFC 7323 App. G),
  with Karn's rule for the one timed segment.
- `SackScoreboard`: the ranges of our data the guest reported holding in SACK blocks
  (RFC 2018), and the holes between them that recovery resends.
- `OutOfOrder`: the ranges of guest data that arrived beyond a gap, which become the SACK
  blocks we send. The bytes themselves stay in the endpoint's receive ring, at their final
  place; only the ranges are kept here.

Each part holds plain integers over unwrapped sequence numbers (tcp_seq), takes time as an
argument and does no I/O, so its rules can be tested with numbers alone, without building a
segment. The endpoint reads the estimator's `srtt`/`rto` and the `ranges` lists on every
segment, so those are plain attributes, and the lists are only ever changed in place (never
rebound): the header-prediction fast path tests a list for emptiness without a call.

The estimator also keeps the least RTT seen (`min_rtt`), which RACK uses to tell a resend's
delivery from a late original's. The endpoint keeps the send times RACK-TLP judges by
(per batch of new data, per resend); D-SACKs (RFC 2883) undo needless reductions and mark
the path as reordering there.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from operator import itemgetter
from typing import Final

from wgslirp.slirp.tcp_seq import MASK, unwrap

# Bounds that keep one connection's bookkeeping small whatever the guest sends.
MAX_OOO_RANGES: Final = 32  # disjoint out-of-order ranges held (SACK can report 3 or 4)
MAX_SACKED_RANGES: Final = 256  # ranges the guest reported in SACK blocks that we remember
CLOCK_GRANULARITY: Final = 0.001  # "G" of RFC 6298 2.2; also the timestamp tick
HANDSHAKE_RETRY_RTO: Final = 3.0  # RFC 6298 5.7
MIN_SAMPLE: Final = 1e-6  # a measured 0 is stored as this, since srtt 0.0 means "no sample"

_STAMP = itemgetter(2)
_LEFT = itemgetter(0)
_RIGHT = itemgetter(1)


class RttEstimator:
    """RFC 6298's estimator and timeout, and Karn's timed segment.

    `rto` is the timeout to arm now (backed off after expirations); `rto_base` is the last
    computed one before any backoff, which the persist timer starts from. One segment per
    round trip is timed (`timed_end`/`timed_at`), and stops being timed once it is resent
    (Karn); with timestamps the other ACKs give samples too.
    """

    __slots__ = (
        "_rto_max",
        "_rto_min",
        "_window_bytes",
        "latest",
        "min_rtt",
        "rto",
        "rto_base",
        "rttvar",
        "srtt",
        "timed_at",
        "timed_end",
    )

    def __init__(self, rto_initial: float, rto_min: float, rto_max: float) -> None:
        self.srtt = 0.0  # 0.0: no sample yet
        self.latest = 0.0  # the last sample as it was (RACK's RTT, RFC 8985 6.2)
        self.min_rtt = 0.0  # the least sample ever (0.0: none); RACK's RACK.min_RTT
        self.rttvar = 0.0
        self.rto = rto_initial
        self.rto_base = max(rto_initial, rto_min)
        self.timed_end = -1  # sequence number that ends the timed segment (-1: none)
        self.timed_at = 0.0
        self._rto_min = rto_min
        self._rto_max = rto_max
        self._window_bytes = 0  # 2 * MSS when every ACK is a sample, else 0

    def set_sampling(self, every_ack: bool, mss: int) -> None:
        """Timestamps (RFC 7323) make every ACK a sample, about flight / (2 * MSS) of them
        per round trip with delayed ACKs; RFC 7323 Appendix G divides the gains by that
        number so the estimator still remembers about one round trip, not one ACK."""
        self._window_bytes = 2 * mss if every_ack else 0

    def sample(self, rtt: float, flight: int = 0) -> None:
        """One measurement (RFC 6298 2.2-2.3). `flight` is what was outstanding when it was
        taken; it only matters when every ACK is a sample (see `set_sampling`)."""
        if rtt < 0:
            return
        if rtt < MIN_SAMPLE:
            rtt = MIN_SAMPLE
        self.latest = rtt
        if rtt < self.min_rtt or self.min_rtt == 0.0:
            self.min_rtt = rtt
        srtt = self.srtt
        if srtt == 0.0:
            srtt = rtt
            rttvar = rtt / 2
        else:
            window = self._window_bytes
            k = max(1, -(-flight // window)) if window else 1
            alpha = 0.125 / k
            beta = 0.25 / k
            rttvar = (1 - beta) * self.rttvar + beta * abs(srtt - rtt)
            srtt = (1 - alpha) * srtt + alpha * rtt
        self.srtt = srtt
        self.rttvar = rttvar
        # The floor is on the variation term, as Linux applies its 200 ms (RFC 6298 2.4
        # allows a lower bound; it does not fix its place): srtt + 200 ms, not max(srtt +
        # 4 rttvar, 200 ms). With a timestamp on every ACK rttvar settles near zero, and at
        # 100 ms the timeout was then 200 ms, two round trips: a retransmission lost again
        # at a full bottleneck is found by RACK one round trip after it was sent, and the
        # timer fired first (pathsim 100 Mbit/s, 100 ms, 100-packet queue: 3 timeouts in
        # 15 s, each a go-back-N of the window).
        self.rto = self.rto_base = min(
            srtt + max(CLOCK_GRANULARITY, 4 * rttvar, self._rto_min), self._rto_max
        )

    def start_timing(self, end: int, now: float) -> None:
        """Time the segment ending at `end`, sent for the first time at `now`."""
        self.timed_end = end
        self.timed_at = now

    def stop_timing(self) -> None:
        """Karn's rule: the timed segment was (or may be) resent, so its ACK is ambiguous."""
        self.timed_end = -1

    def resent(self, seq: int) -> None:
        """A segment starting at `seq` went out again; if it covers the timed one, stop."""
        if seq < self.timed_end:
            self.timed_end = -1

    def sample_timed(self, now: float, flight: int = 0) -> None:
        """The timed segment was acknowledged at `now`."""
        self.sample(now - self.timed_at, flight)
        self.timed_end = -1

    def backoff(self) -> None:
        """RFC 6298 5.5: the timer expired, double it (up to the ceiling)."""
        self.rto = min(self.rto * 2, self._rto_max)

    def handshake_retransmitted(self) -> None:
        """RFC 6298 5.7: a handshake that needed a retransmission and left no sample starts
        the data phase with a 3 s timeout, not the backed-off or initial one."""
        if self.srtt == 0.0:
            self.rto = max(self.rto, HANDSHAKE_RETRY_RTO)


class SackScoreboard:
    """The guest's SACK reports about our data, as disjoint sorted [start, end] ranges above
    SND.UNA. Reports are advisory (RFC 2018 8: the guest may renege), so the scoreboard only
    steers which bytes recovery resends first and is cleared when the timer expires.

    Lookups bisect the ranges and `sacked` keeps their total, so a scoreboard of hundreds of
    ranges costs a few steps per question: a full drop-tail queue hit at 1.25x its rate drops
    every fifth segment for a round trip, which leaves a range per survivor run. With 32
    ranges (the bound this had) the rest were forgotten and resent although the guest held
    them: 10,055 retransmissions for 2,100 drops (pathsim, 100 Mbit/s, 100 ms, 100-packet
    queue, BBR)."""

    __slots__ = ("_max_ranges", "ranges", "sacked")

    def __init__(self, max_ranges: int = MAX_SACKED_RANGES) -> None:
        self.ranges: list[list[int]] = []
        self.sacked = 0  # bytes in `ranges`
        self._max_ranges = max_ranges

    def take(self, blocks: list[tuple[int, int]], una: int, snd_max: int) -> bool:
        """Merge the SACK blocks of one ACK (32-bit edges, as on the wire); returns whether
        they SACKed anything not SACKed before. A block outside [SND.UNA, SND.MAX] is a
        D-SACK (RFC 2883) or bogus and teaches recovery nothing; a new range past the bound
        is forgotten (the guest repeats what matters)."""
        ranges = self.ranges
        newly = False
        for left_w, right_w in blocks:
            left = unwrap(left_w, una)
            right = unwrap(right_w, una)
            if not una <= left < right <= snd_max:
                continue
            i = bisect_left(ranges, left, key=_RIGHT)  # first range reaching `left`
            j = bisect_right(ranges, right, lo=i, key=_LEFT)  # past the last touching
            if i < j:
                if j - i == 1 and ranges[i][0] <= left and right <= ranges[i][1]:
                    continue  # nothing new
                merged = 0
                for k in range(i, j):
                    merged += ranges[k][1] - ranges[k][0]
                left = min(left, ranges[i][0])
                right = max(right, ranges[j - 1][1])
                self.sacked += right - left - merged
            elif len(ranges) >= self._max_ranges:
                continue
            else:
                self.sacked += right - left
            ranges[i:j] = [[left, right]]
            newly = True
        return newly

    def trim(self, una: int) -> None:
        """SND.UNA advanced: what it covers needs no SACK memory any more."""
        ranges = self.ranges
        i = bisect_right(ranges, una, key=_RIGHT)  # ranges ending at or below una go
        if i:
            for k in range(i):
                self.sacked -= ranges[k][1] - ranges[k][0]
            del ranges[:i]
        if ranges and ranges[0][0] < una:
            self.sacked -= una - ranges[0][0]
            ranges[0][0] = una

    def next_hole(self, start: int) -> int:
        """The first byte at or after `start` that the guest has not SACKed but that lies
        below a SACKed one (so it is presumed lost), or -1: RFC 6675's NextSeg rule 1,
        without its loss test. `start` is where recovery has already resent up to."""
        ranges = self.ranges
        i = bisect_right(ranges, start, key=_RIGHT)  # the first range ending past start
        if i == len(ranges):
            return -1
        if start < ranges[i][0]:
            return start
        # inside range i: the hole is its end, if another range lies beyond it
        return ranges[i][1] if i + 1 < len(ranges) else -1

    def sacked_below(self, seq: int) -> int:
        """Bytes below `seq` the guest reported holding."""
        total = 0
        for left, right in self.ranges:
            if left >= seq:
                break
            total += (right if right < seq else seq) - left
        return total

    def first_unsacked(self, seq: int) -> int:
        """The first byte at or after `seq` the guest has not reported holding."""
        ranges = self.ranges
        i = bisect_right(ranges, seq, key=_RIGHT)
        if i < len(ranges) and ranges[i][0] <= seq:
            return ranges[i][1]  # ranges never touch, so the byte after one is a hole
        return seq

    def holds(self, seq: int) -> bool:
        """Whether the guest reported holding the byte at `seq`."""
        ranges = self.ranges
        i = bisect_right(ranges, seq, key=_RIGHT)
        return i < len(ranges) and ranges[i][0] <= seq

    def sacked_after(self, seq: int) -> int:
        """Start of the first SACKed range that begins after `seq`, or -1: a retransmission
        from `seq` stops there rather than resend what the guest already holds."""
        ranges = self.ranges
        i = bisect_right(ranges, seq, key=_LEFT)
        return ranges[i][0] if i < len(ranges) else -1

    def pipe(self, una: int, snd_max: int, high_rxt: int, lost_below: int = -1) -> int:
        """RFC 6675's pipe: bytes presumed still in the network. Everything between
        SND.UNA and SND.MAX counts, except what the guest SACKed and the holes below the
        highest SACKed byte that recovery has not resent yet (presumed lost); `high_rxt`
        is how far recovery has resent (HighRxt). With `lost_below` (RACK's verdict: data
        sent long enough ago), holes at or above it are still in flight, not lost."""
        ranges = self.ranges
        flight = snd_max - una
        if not ranges:
            return flight
        high = ranges[-1][1]
        if 0 <= lost_below < high:
            high = lost_below
        s = high_rxt if high_rxt > una else una
        if high <= s:
            return flight - self.sacked
        # Holes in (s, high): that span less the SACKed bytes inside it.
        unsent_lost = high - s
        i = bisect_right(ranges, s, key=_RIGHT)
        n = len(ranges)
        while i < n:
            left, right = ranges[i]
            if left >= high:
                break
            unsent_lost -= (right if right < high else high) - (left if left > s else s)
            i += 1
        return flight - self.sacked - unsent_lost

    def clear(self) -> None:
        self.ranges.clear()
        self.sacked = 0


class OutOfOrder:
    """Ranges of guest data held beyond RCV.NXT, as disjoint sorted [start, end, stamp]
    lists; the stamp orders them by the latest arrival, which RFC 2018 4 puts first in the
    SACK blocks. Bounded in bytes past RCV.NXT and in ranges, so a guest cannot make us
    track an unbounded scatter; what does not fit is dropped and retransmitted later."""

    __slots__ = ("_max_ranges", "_stamp", "max_bytes", "ranges")

    def __init__(self, max_bytes: int, max_ranges: int = MAX_OOO_RANGES) -> None:
        self.ranges: list[list[int]] = []
        self._stamp = 0
        self.max_bytes = max_bytes  # raised when the receive ring grows
        self._max_ranges = max_ranges

    def add(self, seq: int, end: int, nxt: int) -> int:
        """Record that [seq, end) arrived while RCV.NXT is `nxt` (seq > nxt). Returns how
        many bytes from `seq` to keep, which the caller then stores; 0 means drop them."""
        bound = nxt + self.max_bytes
        if end > bound:
            end = bound
            if end <= seq:
                return 0
        ranges = self.ranges
        # The ranges this one touches (overlaps or abuts) are merged into it.
        i = 0
        n = len(ranges)
        while i < n and ranges[i][1] < seq:
            i += 1
        j = i
        while j < n and ranges[j][0] <= end:
            j += 1
        if i == j and n >= self._max_ranges:
            return 0
        kept = end - seq
        self._stamp += 1
        if i < j:
            seq = min(seq, ranges[i][0])
            end = max(end, ranges[j - 1][1])
        ranges[i:j] = [[seq, end, self._stamp]]
        return kept

    def pull(self, nxt: int) -> int:
        """RCV.NXT reached `nxt`: drop the ranges it now reaches and return the new RCV.NXT,
        past all data that is now contiguous."""
        ranges = self.ranges
        while ranges and ranges[0][0] <= nxt:
            end = ranges.pop(0)[1]
            if end > nxt:
                nxt = end
        return nxt

    def sack_blocks(self, most: int) -> list[tuple[int, int]]:
        """RFC 2018 4: the block holding the latest segment first, then the most recent
        others, at most `most` (what fits in the options space), as 32-bit edges."""
        latest = sorted(self.ranges, key=_STAMP, reverse=True)[:most]
        return [(r[0] & MASK, r[1] & MASK) for r in latest]
