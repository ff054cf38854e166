"""Congestion control for the host-to-guest direction, in bytes.

Split from the endpoint the way aioquic splits recovery from the connection: the endpoint
decides *when* loss happened (three duplicate ACKs, a timeout) and *what* to retransmit
(RFC 6582 NewReno recovery, the holes in tcp_recovery's SACK scoreboard); a controller here
only decides *how big* the congestion window is. The window arithmetic of fast recovery
itself (RFC 5681 3.2: inflate by one segment per duplicate ACK, deflate on partial ACKs,
RFC 6582 3.2 step 3 on exit) is the same for every growth law, so it lives in the base class;
NewReno and CUBIC differ only in how they grow outside recovery and how far they back off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, cast

if TYPE_CHECKING:
    from wgslirp.slirp.tcp_rate import DeliveryRate

# Window of the "off" controller: far above any receive window (2**30, RFC 7323's ceiling),
# so only the guest's advertised window limits what is in flight.
UNLIMITED: Final = 1 << 40
# Pacing releases new data in bursts of this much time at the pacing rate: the event loop's
# timers have millisecond resolution (epoll), so a per-segment gap (56 us at 200 Mbit/s) is
# not to be had; a 1 ms burst is ~18 segments at 200 Mbit/s, which a receiver's default
# 208 KiB UDP buffer takes, where an unpaced window of several hundred segments did not
# (docs/tcp-wan.md). Here because a controller that sizes cwnd from its rate (BBR) must
# leave room for these bursts, as Linux's leaves room for its TSO bursts.
PACE_QUANTUM: Final = 0.001


class CongestionControl:
    """Reno-style slow start and congestion avoidance (RFC 5681) with NewReno recovery."""

    # Slots: one controller per connection, and an idle connection's memory is counted
    # (bench_tcp: a BBR controller with a __dict__ cost ~1.5 KiB per idle flow).
    __slots__ = ("_ca_acc", "_ss_divisor", "cwnd", "mss", "paced", "ssthresh")

    name = "newreno"
    beta = 0.5  # multiplicative decrease
    uses_rate = False  # whether the endpoint must feed delivery-rate samples (tcp_rate)
    uses_prr = True  # SACK recovery sends by proportional rate reduction (tcp_prr)

    def __init__(self, mss: int, initial_window: int) -> None:
        self.mss = mss
        self.cwnd = initial_window
        self.ssthresh = UNLIMITED
        self._ca_acc = 0  # bytes acked in congestion avoidance not yet turned into cwnd
        self.paced = False  # set by the endpoint when TCP_PACING spreads its window
        self._ss_divisor = 1  # slow start's growth is divided by this (HyStart++'s CSS: 4)

    def set_mss(self, mss: int) -> None:
        """The effective MSS is known only after the handshake (options shrink it); the
        initial window is scaled with it so it stays the same number of segments."""
        if mss != self.mss and self.cwnd < UNLIMITED:
            self.cwnd = max(mss, self.cwnd * mss // self.mss)
        self.mss = mss

    # ------------------------------------------------------------ what it answers

    def pacing_rate(self, srtt: float) -> float:
        """Bytes per second new data may leave at: cwnd per srtt, doubled in slow start so
        the window can still double per round trip, 1.2x after (Linux's ratios)."""
        cwnd = self.cwnd
        return cwnd * (2.0 if cwnd < self.ssthresh else 1.2) / srtt

    def recovery_window(self) -> int:
        """What SACK recovery keeps in the pipe (RFC 6675: ssthresh after the reduction)."""
        return self.ssthresh

    # ----------------------------------------------------------- outside recovery

    def on_ack(self, acked: int, flight: int, now: float, srtt: float) -> None:
        """New data acknowledged outside recovery. `flight` is what was outstanding before
        this ACK: a window that was not being used is not evidence the path can carry a
        bigger one (RFC 7661), so the window only grows while it is at least half used."""
        if flight * 2 < self.cwnd:
            return
        if self.cwnd < self.ssthresh:
            # RFC 5681 3.1 with RFC 3465's L = 2: at most two segments per ACK, so a
            # stretch ACK after delayed ACKs still counts for what it covers.
            self.cwnd += min(acked, 2 * self.mss) // self._ss_divisor
            return
        self._avoid(acked, now, srtt)

    def _avoid(self, acked: int, now: float, srtt: float) -> None:
        # Byte counting: one MSS per window's worth of acknowledged bytes (RFC 5681 3.1).
        self._ca_acc += acked
        if self._ca_acc >= self.cwnd:
            self._ca_acc -= self.cwnd
            self.cwnd += self.mss

    # ----------------------------------------------------------------- loss events

    def _reduce(self, flight: int, now: float) -> None:
        self.ssthresh = max(int(flight * self.beta), 2 * self.mss)

    def on_fast_retransmit(self, flight: int, now: float) -> None:
        """Three duplicate ACKs: RFC 5681 3.2 steps 2 and 3."""
        self._reduce(flight, now)
        self.cwnd = self.ssthresh + 3 * self.mss
        self._ca_acc = 0

    def on_ecn(self, flight: int, now: float) -> None:
        """The guest echoed a CE mark (RFC 3168 6.1.2): the same reduction as for a loss,
        without a retransmission or a recovery episode."""
        self._reduce(flight, now)
        self.cwnd = max(self.ssthresh, 2 * self.mss)
        self._ca_acc = 0

    def on_lost(self, nbytes: int, new_run: bool = True) -> None:
        """Only for controllers with `uses_rate`: SACK recovery presumed these bytes lost
        (a hole below SACKed data) and queued them for retransmission; `new_run`: they do
        not continue the bytes presumed lost before them."""

    def on_rtt(self, rtt: float, ack: int, snd_nxt: int) -> None:
        """An RTT sample, taken on an ACK up to `ack` while SND.NXT is `snd_nxt` (the
        endpoint calls it only in slow start, where HyStart++ watches the delay)."""

    def on_recovery_pipe(self, pipe: int) -> None:
        """Right after on_fast_retransmit with SACK: RFC 6675's pipe, the bytes still
        presumed in the network (what was SACKed or presumed lost left it)."""

    def on_dup_ack_in_recovery(self) -> None:
        """Each further duplicate ACK means a segment left the network: inflate by one."""
        self.cwnd += self.mss

    def on_partial_ack(self, acked: int) -> None:
        """RFC 6582 3.2 step 5: deflate by what was acknowledged, add back one segment if
        that was at least one segment, so about ssthresh stays in flight."""
        self.cwnd = max(self.cwnd - acked, self.mss)
        if acked >= self.mss:
            self.cwnd += self.mss

    def on_recovery_end(self, flight: int, now: float) -> None:
        """RFC 6582 3.2 step 3. A paced sender takes option 2, cwnd = ssthresh (Linux
        does the same): pacing spreads what that releases. Unpaced, option 1 avoids the
        burst but restarts from about one segment after a long recovery, which on a 40 ms
        path cost seconds of slow start (docs/tcp-wan.md)."""
        if self.paced:
            self.cwnd = self.ssthresh
        else:
            self.cwnd = min(self.ssthresh, max(flight, self.mss) + self.mss)

    def on_rto(self, flight: int, now: float) -> None:
        """RFC 5681 3.1 equation 4, then a loss window of one segment."""
        self._reduce(flight, now)
        self.cwnd = self.mss
        self._ca_acc = 0

    def on_loss_recovered(self) -> None:
        """Everything outstanding at the last timeout is acknowledged (slow start has been
        rebuilding the window meanwhile; only a model-based controller restores it)."""

    def on_delivery(
        self, rs: DeliveryRate, valid: bool, inflight: int, acked: int, now: float
    ) -> None:
        """Only for controllers with `uses_rate`: an ACK delivered `acked` bytes; `valid`
        says `rs` holds a fresh sample; `inflight` is what is presumed in the network."""

    # ------------------------------------------------------------------- undo

    def undo_state(self) -> object:
        """What `undo` needs to restore, taken just before a loss event reduces the window."""
        return (self.cwnd, self.ssthresh)

    def undo(self, state: object) -> None:
        """The loss event whose `undo_state` this is turned out spurious (D-SACK, or an
        ACK echoing an original's timestamp): take the window back. Like Linux, to at
        least what it was, never below what it has grown to since."""
        cwnd, ssthresh = cast("tuple[int, int]", state)
        if cwnd > self.cwnd:
            self.cwnd = cwnd
        if ssthresh > self.ssthresh:
            self.ssthresh = ssthresh


class NewReno(CongestionControl):
    __slots__ = ()


class Off(CongestionControl):
    """TCP_CC=off: the guest's window alone limits the sender, for links known to be
    clean where recovery from the occasional loss is still wanted but backing off is not."""

    __slots__ = ()

    name = "off"
    uses_prr = False

    def __init__(self, mss: int, initial_window: int) -> None:
        super().__init__(mss, UNLIMITED)

    def on_ack(self, acked: int, flight: int, now: float, srtt: float) -> None:
        pass

    def on_fast_retransmit(self, flight: int, now: float) -> None:
        pass

    def on_dup_ack_in_recovery(self) -> None:
        pass

    def on_partial_ack(self, acked: int) -> None:
        pass

    def on_recovery_end(self, flight: int, now: float) -> None:
        pass

    def on_rto(self, flight: int, now: float) -> None:
        pass

    def on_ecn(self, flight: int, now: float) -> None:
        pass


HYSTART_KEEP: Final = 0
HYSTART_EXIT: Final = 1
N_RTT_SAMPLE: Final = 8
MIN_RTT_THRESH: Final = 0.004
MAX_RTT_THRESH: Final = 0.016
MIN_RTT_DIVISOR: Final = 8
CSS_GROWTH_DIVISOR: Final = 4
CSS_ROUNDS: Final = 5


class HyStartPlusPlus:
    """RFC 9406: leave slow start when the round trip starts to grow (a queue is forming)
    instead of when the queue overflows. Slow start doubles the window each round; its
    overshoot at a bottleneck loses up to a window of segments at once, and on a 40 ms
    path the recovery from that cost seconds (docs/tcp-wan.md). When a round's minimum
    RTT rises by an eighth (4-16 ms) over the last round's, growth slows to a quarter
    (Conservative Slow Start) for up to five rounds, then congestion avoidance starts;
    an RTT that falls back means the rise was noise, and slow start resumes."""

    __slots__ = (
        "_cur_min",
        "_last_min",
        "_samples",
        "_window_end",
        "css",
        "css_baseline",
        "css_rounds",
        "done",
    )

    def __init__(self) -> None:
        self._window_end = -1
        self._last_min = float("inf")
        self._cur_min = float("inf")
        self._samples = 0
        self.css = False
        self.css_baseline = float("inf")
        self.css_rounds = 0
        self.done = False

    def on_rtt(self, rtt: float, ack: int, snd_nxt: int) -> int:
        if ack >= self._window_end:  # a round ended: the data sent at its start is ACKed
            if self.css:
                self.css_rounds += 1
                if self.css_rounds >= CSS_ROUNDS:
                    self.done = True
                    self.css = False
                    return HYSTART_EXIT
            self._last_min = self._cur_min
            self._cur_min = float("inf")
            self._samples = 0
            self._window_end = snd_nxt
        if rtt < self._cur_min:
            self._cur_min = rtt
        self._samples += 1
        if self._samples >= N_RTT_SAMPLE and self._last_min != float("inf"):
            if not self.css:
                thresh = min(max(self._last_min / MIN_RTT_DIVISOR, MIN_RTT_THRESH), MAX_RTT_THRESH)
                if self._cur_min >= self._last_min + thresh:
                    self.css = True
                    self.css_baseline = self._cur_min
                    self.css_rounds = 0
            elif self._cur_min < self.css_baseline:
                self.css = False  # the delay rise was spurious: back to slow start
        return HYSTART_KEEP


class Cubic(CongestionControl):
    """CUBIC (RFC 9438, formerly RFC 8312): window growth as a cubic function of the time
    since the last reduction, so long fat paths refill faster than Reno's one segment per
    RTT, with Reno's rate as a floor (the "Reno-friendly" region) on short paths."""

    __slots__ = ("_cwnd_f", "_epoch", "_hystart", "_k", "_origin", "_w_est", "_w_max")

    name = "cubic"
    beta = 0.7
    C = 0.4
    FAST_CONVERGENCE = True

    def __init__(self, mss: int, initial_window: int) -> None:
        super().__init__(mss, initial_window)
        self._w_max = 0.0  # window before the last reduction, in segments
        self._k = 0.0
        self._epoch: float | None = None
        self._origin = 0.0
        self._w_est = 0.0
        self._cwnd_f = float(initial_window)  # fractional window in bytes between updates
        self._hystart = HyStartPlusPlus()

    def set_mss(self, mss: int) -> None:
        super().set_mss(mss)
        self._cwnd_f = float(self.cwnd)

    def on_ack(self, acked: int, flight: int, now: float, srtt: float) -> None:
        if self.cwnd != int(self._cwnd_f):
            self._cwnd_f = float(self.cwnd)  # the base class changed it (recovery, RTO)
        super().on_ack(acked, flight, now, srtt)
        self._cwnd_f = max(self._cwnd_f, float(self.cwnd))

    def _avoid(self, acked: int, now: float, srtt: float) -> None:
        mss = self.mss
        cwnd_seg = self._cwnd_f / mss
        if self._epoch is None:
            self._epoch = now
            if cwnd_seg < self._w_max:
                self._k = ((self._w_max - cwnd_seg) / self.C) ** (1.0 / 3.0)
                self._origin = self._w_max
            else:
                self._k = 0.0
                self._origin = cwnd_seg
            self._w_est = cwnd_seg
        t = now - self._epoch + srtt
        target = self._origin + self.C * (t - self._k) ** 3
        # RFC 9438 4.2: the target is kept between the current window and 1.5 times it.
        target = min(max(target, cwnd_seg), 1.5 * cwnd_seg)
        acked_seg = acked / mss
        alpha = 3.0 * (1.0 - self.beta) / (1.0 + self.beta)
        self._w_est += alpha * acked_seg / cwnd_seg
        if self._w_est > target:
            target = self._w_est
        self._cwnd_f += (target - cwnd_seg) / cwnd_seg * acked_seg * mss
        self.cwnd = int(self._cwnd_f)

    def on_rtt(self, rtt: float, ack: int, snd_nxt: int) -> None:
        hs = self._hystart
        if hs.done:
            return
        verdict = hs.on_rtt(rtt, ack, snd_nxt)
        if verdict == HYSTART_EXIT:
            self.ssthresh = self.cwnd  # RFC 9406 4.2: CSS rounds done, avoid congestion
        self._ss_divisor = CSS_GROWTH_DIVISOR if hs.css else 1

    def _reduce(self, flight: int, now: float) -> None:
        self._hystart.done = True  # RFC 9406: only the first slow start is steered
        self._ss_divisor = 1
        cwnd_seg = self.cwnd / self.mss
        if self.FAST_CONVERGENCE and cwnd_seg < self._w_max:
            self._w_max = cwnd_seg * (1.0 + self.beta) / 2.0
        else:
            self._w_max = cwnd_seg
        self._epoch = None
        self.ssthresh = max(int(self.cwnd * self.beta), 2 * self.mss)

    def on_fast_retransmit(self, flight: int, now: float) -> None:
        super().on_fast_retransmit(flight, now)
        self._cwnd_f = float(self.cwnd)

    def on_recovery_end(self, flight: int, now: float) -> None:
        super().on_recovery_end(flight, now)
        self._cwnd_f = float(self.cwnd)

    def on_rto(self, flight: int, now: float) -> None:
        super().on_rto(flight, now)
        self._cwnd_f = float(self.cwnd)

    def on_ecn(self, flight: int, now: float) -> None:
        super().on_ecn(flight, now)
        self._cwnd_f = float(self.cwnd)

    def undo_state(self) -> object:
        return (self.cwnd, self.ssthresh, self._w_max, self._k, self._epoch, self._origin)

    def undo(self, state: object) -> None:
        """Also the cubic curve: a spurious reduction leaves no trace in later growth."""
        saved = cast("tuple[int, int, float, float, float | None, float]", state)
        cwnd, ssthresh, self._w_max, self._k, self._epoch, self._origin = saved
        super().undo((cwnd, ssthresh))
        self._cwnd_f = float(self.cwnd)


def make(name: str, mss: int, initial_window: int) -> CongestionControl:
    """The controller TCP_CC names ("newreno", "cubic", "bbr" or "off")."""
    if name == "bbr":
        from wgslirp.slirp.tcp_bbr import Bbr

        return Bbr(mss, initial_window)
    if name == "cubic":
        return Cubic(mss, initial_window)
    if name == "off":
        return Off(mss, initial_window)
    if name in ("newreno", "reno", "new-reno"):
        return NewReno(mss, initial_window)
    raise ValueError(f"unknown congestion control {name!r}")
