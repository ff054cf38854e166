"""BBR: a congestion controller that steers by a model of the path, not by loss.

Why it is here: a loss-based sender (Reno, CUBIC) halves or cuts its window on every loss,
so on a path with random loss its rate is bound by the loss rate itself (Mathis et al.:
about 1.2 MSS / (RTT * sqrt(p)), ~3 Mbit/s at 40 ms and 1 %). Wi-Fi and mobile paths lose
packets that say nothing about congestion. Linux's default on this host is BBR, which keeps
~480 Mbit/s at 1 % loss where CUBIC gets ~5; downloads through wgslirp are compared with
what a Linux sender does on the same path (issue #9), so `TCP_CC=bbr` offers the same model.

The model (BBR v1 as in Cardwell et al., "BBR: Congestion-Based Congestion Control", ACM
Queue 2016, and draft-cardwell-iccrg-bbr-congestion-control-00; the behaviour of Linux's
tcp_bbr.c is the reference for details the draft leaves open):

- BtlBw: the highest delivery rate (tcp_rate.DeliveryRate) over the last 10 round trips.
- RTprop: the lowest round-trip time over the last 10 s.
- Pacing rate = pacing_gain * BtlBw; cwnd = cwnd_gain * BtlBw * RTprop (+ a few segments
  for the ACK and pacing granularity), so in flight stays near the path's BDP.
- STARTUP doubles the rate each round (gain 2/ln 2) until the bandwidth stops growing by
  25 % for 3 rounds; DRAIN empties the queue STARTUP built; PROBE_BW cycles its gain
  through 1.25, 0.75 and six rounds of 1.0, probing for more bandwidth and draining what
  the probe queued; PROBE_RTT drops to 4 segments for 200 ms when RTprop has not been
  seen for 10 s, so a queue of our own making cannot pose as the path's delay forever.
- Loss: the first round of recovery conserves packets (one out per one delivered); the
  window before recovery comes back when it ends. From BBRv2/v3: a round that loses more
  than 2 % ends STARTUP (if in six separate runs: one run is a receiver's stall, not a
  queue), or ends a probe and sets `inflight_hi`, the most in flight the
  path held, which cwnd keeps to (outside probes, to the BDP: none of the queue it found);
  each later probing round raises the bound, 1, 2, 4 ... segments, so more capacity is
  found in a few rounds, and once bounded it probes every 2 s instead of every eight
  rounds, as BBRv3 does (sooner after a probe that found 15 % more: the bound was set far
  below the path's rate). Random loss below 2 % does not trip it. Measured on pathsim (100
  Mbit/s, 100 ms, 100-packet queue, 15 s): v1 75 Mbit/s with 2,527 drops, with the bound
  88.5 with 2,050 (most of them STARTUP's). Of the queue the bound found, cwnd keeping
  half outside probes kept 3.4 ms of wait in the relay rig's 100-packet queue
  against Linux CUBIC's 2.2; none, 1.9 against 2.0 inline and 2.3 against 1.9 with
  workers, at 0.96 / 0.93 of CUBIC's rate (bench_wan --guest-cc cubic, medians of 3);
  pathsim: 3 % less on the lossy reordering path, random-loss paths unchanged.

What is left out, knowingly: Linux's long-term bandwidth sampling for token-bucket policers,
BBRv3's short-term bounds (inflight_lo, bw_lo: a rate cut on every lossy round, which costs
throughput on random loss) and ECN.
"""

from __future__ import annotations

from typing import Final

from wgslirp.slirp.tcp_cc import PACE_QUANTUM, CongestionControl
from wgslirp.slirp.tcp_rate import DeliveryRate

STARTUP: Final = 0
DRAIN: Final = 1
PROBE_BW: Final = 2
PROBE_RTT: Final = 3
MODE_NAMES: Final = ("startup", "drain", "probe_bw", "probe_rtt")

HIGH_GAIN: Final = 2.885  # 2 / ln 2: the smallest gain that doubles the rate each round
DRAIN_GAIN: Final = 1.0 / HIGH_GAIN
CWND_GAIN: Final = 2.0
PACING_GAINS: Final = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
BW_ROUNDS: Final = 10  # BtlBw is the max over this many round trips
RTPROP_WINDOW: Final = 10.0  # seconds RTprop is kept without a new minimum
PROBE_RTT_TIME: Final = 0.2
FULL_BW_GROWTH: Final = 1.25
FULL_BW_ROUNDS: Final = 3
# A round that loses more than LOSS_RATE of what it sent, in at least LOSS_SEGMENTS
# segments, has passed what the path holds (BBRv2/v3's rule): STARTUP ends, a probe ends and
# sets inflight_hi (see Bbr._on_loss_too_high). Random loss below 2 % does not trip it.
LOSS_RATE: Final = 0.02
LOSS_SEGMENTS: Final = 6
# ... but only where the round trip shows a queue building (the last sample above
# QUEUE_EVIDENCE x RTprop), or the loss is far above chance (LOSS_RATE_UNQUEUED): 1 %
# random loss at ~400 segments a round passes 2 % in a few rounds in a hundred by chance,
# and once in STARTUP that set the bound at half the BDP, where the slow probes above it
# kept it for the whole transfer (pathsim 200 Mbit/s, 40 ms, 1 % loss, 10 s, seeds 1-8:
# seed 4 at 103 Mbit/s against 167-176 for the rest; with this rule 175, and the
# bottleneck and 0.1 % profiles unchanged: an overflowing queue raises the round trip).
QUEUE_EVIDENCE: Final = 1.1
LOSS_RATE_UNQUEUED: Final = 0.05
# In STARTUP the losses must also fall in this many separate runs of segments (BBRv3 asks
# for as many loss events, full_loss_cnt): STARTUP overflowing a drop-tail queue at twice
# its rate loses every other segment, a run each; a receiver that stalled for a few
# milliseconds (Debian's wireguard-go client, its 208 KiB socket full) loses one run,
# and ending the search there left the bandwidth estimate at 157-176 of the ~280 Mbit/s
# the path carries, regained over 5-10 s of probes 2 s apart (relay rig, +20 ms, traced).
# (Counted by runs, not by ACKs that found losses: RACK finds one run bit by bit, on as
# many ACKs as arrive while it ages past the reordering window.)
STARTUP_LOSS_RUNS: Final = 6
UNBOUNDED: Final = 1 << 62
# Once a probe found the queue's depth (inflight_hi), cruise this long between probes:
# pathsim 100 Mbit/s, 100 ms, 100-packet queue, 15 s: mean queue 2.81 -> 0.56 ms, drops
# 2,050 -> 1,337, throughput 88.5 -> 87.7 Mbit/s.
CRUISE_BOUNDED: Final = 2.0
# ... unless the last probe found that much more bandwidth than the estimate it began
# with: the bound was then set far below what the path carries (STARTUP ended on a
# receiver's burst of drops, not on a queue), and the next probe comes after the usual
# eight rounds. A probe paces at 1.25x, so a path with room delivers ~1.2x; a full one
# ~1.0x. Relay rig, +20 ms + 1 %, 2 workers: STARTUP ended on the client's drops at 101 of
# ~330 Mbit/s, and probes 2 s apart, each raising the estimate at most 25 %, took ~7 s
# to get there (docs/tcp-wan.md, session 12).
PROBE_FOUND: Final = 1.15
MIN_CWND_SEGMENTS: Final = 4
PACING_MARGIN: Final = 0.99  # pace 1 % below the estimate, so the queue it finds drains
# Room above gain * BDP for the sender's own bursts (Linux's quantization budget, 3 TSO
# bursts): once STARTUP is over, three pacing quanta (tcp_cc.PACE_QUANTUM, 1 ms of BtlBw),
# at least a segment and at most 64 KiB each, as Linux caps a TSO burst. The ACKs of a
# paced burst come back as a burst, and cwnd must not stall the sender before they do.
# With 3 segments instead, a loopback download (RTprop ~0.25 ms, so 2 BDP ~30 KB) kept ~90
# KB in flight, and the 2-core pipeline behind it (wireguard-go, the guest's iperf3) ran
# out of work between ACK clumps: 476 Mbit/s against 545 with the quanta (bench_tcp
# inline, client buffers 7 MiB, 4 runs each, interleaved); 2 and 4 ms of the rate moved
# no more. Not in STARTUP: there the larger window kept a 0.1 %-loss path's send ring
# full, its samples app-limited, and STARTUP's queue for 5 s instead of 1.6 (pathsim 200
# Mbit/s, 40 ms, seeds 1-8: mean queue 5.8 -> 11.6 ms); as it is, pathsim's profiles
# (that one, 1 %, reordering, the 100-packet bottleneck) come out exactly as before.
CWND_QUANTA: Final = 3
QUANTUM_MAX: Final = 65536
# ACK aggregation (Linux's extra_acked, BBR since 2019): ACKs come back in clumps (the
# guest's delayed and stretch ACKs, wireguard-go reading and writing in batches, our own
# 1 ms pacing bursts), so over a short span more is acknowledged than bandwidth x time.
# cwnd gets the largest such excess of the last 10 rounds on top of 2 BDP, else a short
# path stalls on cwnd between clumps: on loopback (RTprop ~0.3 ms) BBR moved 242 Mbit/s
# where CUBIC moved 526 (bench_tcp, inline).
EXTRA_ACKED_ROUNDS: Final = 5  # per half of the two-slot window
EXTRA_ACKED_MAX_TIME: Final = 0.1  # the excess is capped at 100 ms of bandwidth
ACK_EPOCH_RESET: Final = 1 << 20  # bytes; an epoch this long is restarted


class Bbr(CongestionControl):
    """TCP_CC=bbr; see the module docstring. The endpoint feeds it rate samples
    (`on_delivery`) and asks it for the pacing rate; the base class's recovery hooks
    are replaced by BBR's packet conservation."""

    __slots__ = (
        "_bw_slots",
        "_conserving",
        "_cycle_at",
        "_cycle_bw",
        "_cycle_idx",
        "_epoch_acked",
        "_epoch_at",
        "_extra_acked",
        "_extra_idx",
        "_extra_rounds",
        "_full_bw",
        "_full_bw_rounds",
        "_hi_step",
        "_in_loss",
        "_initial_window",
        "_last_rtt",
        "_loss_round",
        "_loss_runs",
        "_lost_in_round",
        "_next_round_delivered",
        "_prior_cwnd",
        "_probe_from",
        "_probe_rtt_done",
        "_probe_rtt_round_done",
        "_round_delivered_from",
        "_round_lost",
        "_round_start",
        "_rtprop_at",
        "btl_bw",
        "cwnd_gain",
        "full_bw_reached",
        "inflight_hi",
        "mode",
        "pacing_gain",
        "rate",
        "round_count",
        "rtprop",
    )

    name = "bbr"
    uses_rate = True
    uses_prr = False  # its recovery window is packet conservation (recovery_window)

    def __init__(self, mss: int, initial_window: int) -> None:
        super().__init__(mss, initial_window)
        self.mode = STARTUP
        self.pacing_gain = HIGH_GAIN
        self.cwnd_gain = HIGH_GAIN
        self.rate = 0.0  # pacing rate in bytes/s; 0 until the first sample or RTT
        self._bw_slots = [0.0] * BW_ROUNDS  # max delivery rate per round, by round % 10
        self.btl_bw = 0.0
        self.rtprop = float("inf")
        # When RTprop was last measured; -1: never. (It was 0.0, and with a monotonic
        # clock hours past zero the first sample found RTprop "expired": every connection
        # began in PROBE_RTT, and three flat rounds there ended STARTUP at a few Mbit/s.)
        self._rtprop_at = -1.0
        self.round_count = 0
        self._next_round_delivered = 0
        self._round_start = False
        self._full_bw = 0.0
        self._full_bw_rounds = 0
        self.full_bw_reached = False
        self._cycle_idx = 0
        self._cycle_at = 0.0
        self._cycle_bw = [0.0, 0.0]  # max delivery rate in this probe cycle, and the last
        self._probe_from = 0.0  # BtlBw when the last probe began
        self._probe_rtt_done = 0.0
        self._probe_rtt_round_done = False
        self._prior_cwnd = 0
        self._conserving = False
        self._in_loss = False
        self._lost_in_round = False
        self._round_lost = 0  # bytes presumed lost since the round began
        self._last_rtt = float("inf")  # the latest RTT sample
        self._round_delivered_from = 0  # rs.delivered when the round began
        self._extra_acked = [0, 0]  # max excess per half window, current half first
        self._extra_idx = 0
        self._extra_rounds = 0
        self._epoch_at = 0.0
        self._epoch_acked = 0
        self._initial_window = initial_window
        self.ssthresh = 1 << 40  # unused by BBR; kept above cwnd for the base's tests
        # BBRv2/v3's loss bound: the most in flight the path held without losing more than
        # LOSS_RATE of a round (unbounded until a round does); see _on_loss_too_high.
        self.inflight_hi = UNBOUNDED
        self._hi_step = 0  # how much a probing round raises inflight_hi; doubles per round
        self._loss_round = -1  # the round whose losses were already acted on
        self._loss_runs = 0  # separate runs of lost segments found in this round

    # ---------------------------------------------------------------- model inputs

    def on_delivery(
        self, rs: DeliveryRate, valid: bool, inflight: int, acked: int, now: float
    ) -> None:
        """An ACK delivered `acked` bytes with `inflight` still presumed in the network;
        `valid`: it completed a send batch, so `rs` holds a fresh rate and RTT sample."""
        self._round_start = False
        if self._round_lost and self._loss_round != self.round_count:
            lost = self._round_lost
            # Against what the round has delivered so far, or early in the round what is in
            # flight: the holes found on a round's first ACKs belong to a whole window sent a
            # round before, and a few ACKs in they made 1 % random loss look like 50 %.
            sent = rs.delivered - self._round_delivered_from
            if sent < inflight:
                sent = inflight
            if (
                lost >= LOSS_SEGMENTS * self.mss
                and lost > LOSS_RATE * (sent + lost)
                and (
                    self._last_rtt > self.rtprop * QUEUE_EVIDENCE
                    or lost > LOSS_RATE_UNQUEUED * (sent + lost)
                )
                and (self.full_bw_reached or self._loss_runs >= STARTUP_LOSS_RUNS)
            ):
                self._on_loss_too_high(inflight, now)
        if not valid:
            self._set_cwnd(inflight, acked)
            return
        # Round trips are counted in deliveries: a round ends when data sent after the
        # previous round's end is delivered.
        if rs.sample_prior_delivered >= self._next_round_delivered:
            self._next_round_delivered = rs.delivered
            self._round_delivered_from = rs.delivered
            self._round_lost = 0
            self._loss_runs = 0
            self.round_count += 1
            self._round_start = True
            self._bw_slots[self.round_count % BW_ROUNDS] = 0.0
            self._lost_in_round = False
            if self.mode == PROBE_BW and self.pacing_gain > 1.0 and self.inflight_hi < UNBOUNDED:
                # A probing round that did not lose too much: let the bound grow, slowly at
                # first and doubling each round (BBRv3's PROBE_UP), so a path that gained
                # capacity is found within a few rounds.
                self._hi_step = self._hi_step * 2 if self._hi_step else self.mss
                self.inflight_hi += self._hi_step

        if rs.sample_rtt >= 0.0:
            self._last_rtt = rs.sample_rtt
        bw = rs.sample_bw
        slot = self.round_count % BW_ROUNDS
        if not rs.sample_app_limited or bw >= self.btl_bw:
            if bw > self._bw_slots[slot]:
                self._bw_slots[slot] = bw
            if bw > self._cycle_bw[0]:
                self._cycle_bw[0] = bw
        btl_bw = max(self._bw_slots)
        if self.inflight_hi < UNBOUNDED:
            # Bounded, the flow probes every CRUISE_BOUNDED seconds, and in between cwnd
            # keeps to the BDP: with the round trip a little above RTprop every round
            # delivers a little less than BtlBw, and a 10-round filter forgets the probe's
            # rate long before the next probe (20 ms + 1 % on the relay: 216 -> 157 Mbit/s
            # in four seconds). So the estimate also holds the best of this probe cycle
            # and the last one, as BBRv3's max_bw does.
            cycle = (
                self._cycle_bw[1] if self._cycle_bw[1] > self._cycle_bw[0] else self._cycle_bw[0]
            )
            if cycle > btl_bw:
                btl_bw = cycle
        self.btl_bw = btl_bw

        if self.mode == PROBE_BW:
            self._advance_cycle(inflight, now)
        if self._round_start and not rs.sample_app_limited and not self.full_bw_reached:
            if self.btl_bw >= self._full_bw * FULL_BW_GROWTH:
                self._full_bw = self.btl_bw
                self._full_bw_rounds = 0
            else:
                self._full_bw_rounds += 1
                self.full_bw_reached = self._full_bw_rounds >= FULL_BW_ROUNDS
        if self.mode == STARTUP and self.full_bw_reached:
            self.mode = DRAIN
            self.pacing_gain = DRAIN_GAIN
            self.cwnd_gain = HIGH_GAIN
        if self.mode == DRAIN and inflight <= self._bdp(1.0):
            self._enter_probe_bw(now)
        self._update_rtprop(rs.sample_rtt, inflight, now)
        self._update_ack_aggregation(acked, now)
        self._set_rate()
        self._set_cwnd(inflight, acked)
        if self._conserving and self._round_start:
            self._conserving = False  # one round of packet conservation, then grow

    def _update_rtprop(self, rtt: float, inflight: int, now: float) -> None:
        expired = self._rtprop_at >= 0.0 and now > self._rtprop_at + RTPROP_WINDOW
        if rtt >= 0.0 and (rtt < self.rtprop or expired):
            self.rtprop = rtt
            self._rtprop_at = now
        if expired and self.mode != PROBE_RTT and self.rtprop != float("inf"):
            self.mode = PROBE_RTT
            self.pacing_gain = 1.0
            self.cwnd_gain = 1.0
            self._save_cwnd()
            self._probe_rtt_done = 0.0
        if self.mode == PROBE_RTT:
            if self._probe_rtt_done == 0.0 and inflight <= MIN_CWND_SEGMENTS * self.mss:
                self._probe_rtt_done = now + PROBE_RTT_TIME
                self._probe_rtt_round_done = False
                self._next_round_delivered = 0  # the next delivery starts a round
            elif self._probe_rtt_done:
                if self._round_start:
                    self._probe_rtt_round_done = True
                if self._probe_rtt_round_done and now >= self._probe_rtt_done:
                    self._rtprop_at = now
                    self.cwnd = max(self.cwnd, self._prior_cwnd)
                    if self.full_bw_reached:
                        self._enter_probe_bw(now)
                    else:
                        self.mode = STARTUP
                        self.pacing_gain = self.cwnd_gain = HIGH_GAIN

    def _update_ack_aggregation(self, acked: int, now: float) -> None:
        bw = self.btl_bw
        if not bw:
            return
        if self._round_start:
            self._extra_rounds += 1
            if self._extra_rounds >= EXTRA_ACKED_ROUNDS:
                self._extra_rounds = 0
                self._extra_idx ^= 1
                self._extra_acked[self._extra_idx] = 0
        expected = bw * (now - self._epoch_at)
        if self._epoch_acked <= expected or self._epoch_acked + acked >= ACK_EPOCH_RESET:
            self._epoch_acked = 0  # the ACKs caught up with the rate: a new epoch
            self._epoch_at = now
            expected = 0.0
        self._epoch_acked += acked
        extra = int(self._epoch_acked - expected)
        if extra > self.cwnd:
            extra = self.cwnd
        if extra > self._extra_acked[self._extra_idx]:
            self._extra_acked[self._extra_idx] = extra

    def _on_loss_too_high(self, inflight: int, now: float) -> None:
        """This round lost more than LOSS_RATE of what it sent: in flight has passed what the
        path (its BDP plus the bottleneck's queue) holds. Checked on every ACK, not at the
        round's end: a round later, STARTUP's 2.89x had overflowed the queue twice over.

        - STARTUP ends (BBRv2/v3; v1 waits for three rounds without growth, and into a
          100-packet queue at 100 ms those lost thousands of segments: pathsim).
        - A probe ends at once, and what is in flight (the pipe: the lost data is not)
          becomes inflight_hi, which cwnd then keeps to; also when the loss shows up in
          the draining phase after the probe, a round trip after the probe caused it.
          BBR v1 probes at 1.25x every eight rounds with nothing learned from the loss it
          causes: behind a 100-packet queue at 100 Mbit/s and 100 ms (a quarter BDP is 230
          packets) every probe overflowed the queue, 2,300 tail drops in 12 s on the relay
          rig where Linux's sender (limited by our receive window) had 71.
        """
        self._loss_round = self.round_count
        hi = inflight
        floor = self._bdp(1.0)
        if hi < floor:
            hi = floor
        if self.mode == STARTUP and not self.full_bw_reached:
            self.full_bw_reached = True  # the queue overflowed: stop the search
            self.inflight_hi = hi
        elif self.mode == PROBE_BW and self._cycle_idx <= 1:
            self.inflight_hi = hi
            self._hi_step = 0
            if self._cycle_idx == 0:
                self._cycle_idx = 1  # drain what the probe queued
                self._cycle_at = now
                self.pacing_gain = PACING_GAINS[1]

    def _enter_probe_bw(self, now: float) -> None:
        self.mode = PROBE_BW
        self.cwnd_gain = CWND_GAIN
        self._probe_from = self.btl_bw  # a bound from STARTUP waits for its first probe
        # Linux starts at a random phase other than the draining one, so flows sharing a
        # bottleneck do not probe in step; the phase after the drain is a fixed choice here.
        self._cycle_idx = 2
        self._cycle_at = now
        self.pacing_gain = PACING_GAINS[2]

    def _advance_cycle(self, inflight: int, now: float) -> None:
        gain = self.pacing_gain
        full = now - self._cycle_at > self.rtprop
        if gain > 1.0:
            # Probe until the probe had a round and either filled the pipe or hit loss. With
            # a loss bound known, any loss no longer ends it (BBRv3's PROBE_UP): the bound
            # grows each round and too much loss ends the probe (_on_loss_too_high). Ended
            # by one random loss, the bound grew a segment per probe, every 2 s, and a lossy
            # path stayed near where one unlucky round had put it (pathsim 200 Mbit/s, 40
            # ms, 1 % loss: 113.9 Mbit/s, against 152.6 without the bound).
            lost = self._lost_in_round and self.inflight_hi == UNBOUNDED
            go = full and (lost or inflight >= self._bdp(gain))
        elif gain < 1.0:
            go = full or inflight <= self._bdp(1.0)  # drained what the probe queued
        elif self._cycle_idx == len(PACING_GAINS) - 1 and self.inflight_hi < UNBOUNDED:
            # A path whose queue overflowed at a known depth: probe again only after
            # CRUISE_BOUNDED (BBRv3 waits 2-3 s), not every eight rounds; each probe fills
            # that queue to find the bound again. A probe that found much more bandwidth
            # found no such queue: the next one comes after the usual round.
            wait = self.rtprop
            if self.btl_bw < PROBE_FOUND * self._probe_from and wait < CRUISE_BOUNDED:
                wait = CRUISE_BOUNDED
            go = now - self._cycle_at > wait
        else:
            go = full
        if go:
            self._cycle_idx = (self._cycle_idx + 1) % len(PACING_GAINS)
            if self._cycle_idx == 0:
                self._cycle_bw[1] = self._cycle_bw[0]  # a probe begins a new cycle
                self._cycle_bw[0] = 0.0
                self._probe_from = self.btl_bw
            self._cycle_at = now
            self.pacing_gain = PACING_GAINS[self._cycle_idx]

    # --------------------------------------------------------------- model outputs

    def _bdp(self, gain: float) -> int:
        if self.rtprop == float("inf") or not self.btl_bw:
            return int(self._initial_window * gain)
        return int(gain * self.btl_bw * self.rtprop)

    def _set_rate(self) -> None:
        if not self.btl_bw:
            return
        rate = self.pacing_gain * self.btl_bw * PACING_MARGIN
        # In STARTUP the rate only rises: an early sample from a half-empty round must
        # not slow the exponential search.
        if self.full_bw_reached or rate > self.rate:
            self.rate = rate

    def _set_cwnd(self, inflight: int, acked: int) -> None:
        mss = self.mss
        room = CWND_QUANTA * mss  # above gain * BDP: bursts and ACK clumps
        if self.full_bw_reached:
            quantum = int(self.btl_bw * PACE_QUANTUM)
            if quantum > QUANTUM_MAX:
                quantum = QUANTUM_MAX
            if quantum > mss:
                room += CWND_QUANTA * (quantum - mss)
            extra = max(self._extra_acked)
            cap = int(self.btl_bw * EXTRA_ACKED_MAX_TIME)
            room += extra if extra < cap else cap
        target = self._bdp(self.cwnd_gain) + room
        if self.mode == PROBE_BW and self._cycle_idx == 0:
            target += 2 * mss  # the probing phase needs room above the window it probes
        hi = self.inflight_hi
        if self.full_bw_reached and hi < UNBOUNDED:
            if self.mode != PROBE_BW or self._cycle_idx != 0:
                # Outside a probe, keep to the BDP and leave the queue the bound found to
                # others (BBRv3 keeps 15 % below inflight_hi, which costs a single flow
                # throughput when the queue is shallow); a full queue also loses the
                # retransmissions recovery sends. Measured in the module docstring.
                # Not even the room for bursts and ACK clumps: with it, cwnd kept 3.6 ms of
                # queue at the relay rig's 100-packet bottleneck against CUBIC's 1.5 (the
                # client's ACK clumps count as aggregation there), at 90.5 Mbit/s against
                # 89-90 without.
                bdp = self._bdp(1.0)
                if hi > bdp:
                    hi = bdp
            if target > hi:
                target = hi
        cwnd = self.cwnd
        if self._conserving or self._in_loss:
            cwnd = max(cwnd, inflight + acked)
        if self._conserving:
            pass
        elif self.full_bw_reached:
            cwnd = min(cwnd + acked, target)
        elif cwnd < target or self._delivered_small():
            cwnd += acked
        cwnd = max(cwnd, MIN_CWND_SEGMENTS * mss)
        if self.mode == PROBE_RTT:
            cwnd = min(cwnd, MIN_CWND_SEGMENTS * mss)
        self.cwnd = cwnd

    def _delivered_small(self) -> bool:
        # Before the first BDP estimate, grow like slow start.
        return not self.btl_bw

    def pacing_rate(self, srtt: float) -> float:
        if self.rate:
            return self.rate
        # No bandwidth sample yet: the initial window per RTT at the startup gain.
        return HIGH_GAIN * self.cwnd / srtt

    def recovery_window(self) -> int:
        return self.cwnd

    def _save_cwnd(self) -> None:
        if self._conserving or self._in_loss or self.mode == PROBE_RTT:
            self._prior_cwnd = max(self._prior_cwnd, self.cwnd)
        else:
            self._prior_cwnd = self.cwnd

    # ------------------------------------------------------------- loss signals

    def on_ack(self, acked: int, flight: int, now: float, srtt: float) -> None:
        pass  # everything happens in on_delivery

    def on_fast_retransmit(self, flight: int, now: float) -> None:
        self._save_cwnd()
        self._conserving = True
        self._lost_in_round = True
        # Packet conservation starts from what is in flight; the ACKs of the round then
        # let one segment out per segment delivered.
        self.cwnd = max(flight, MIN_CWND_SEGMENTS * self.mss)

    def on_lost(self, nbytes: int, new_run: bool = True) -> None:
        self._round_lost += nbytes
        self._lost_in_round = True
        if new_run:
            self._loss_runs += 1

    def on_recovery_pipe(self, pipe: int) -> None:
        # Linux's BBR starts conservation from packets in flight, which excludes what
        # SACK shows lost: a burst of losses at a shallow bottleneck then shrinks the
        # window at once instead of keeping the queue overflowing for a round.
        self.cwnd = max(pipe, MIN_CWND_SEGMENTS * self.mss)

    def on_dup_ack_in_recovery(self) -> None:
        pass

    def on_partial_ack(self, acked: int) -> None:
        pass

    def on_recovery_end(self, flight: int, now: float) -> None:
        self._conserving = False
        self._in_loss = False
        self.cwnd = max(self.cwnd, self._prior_cwnd)

    def on_rto(self, flight: int, now: float) -> None:
        """Everything in flight is presumed lost: restart from one segment, growing by
        what is delivered, and take the old window back once the timeout's data is."""
        self._save_cwnd()
        self._in_loss = True
        self._lost_in_round = True
        self.cwnd = self.mss

    def on_ecn(self, flight: int, now: float) -> None:
        pass  # BBR v1 (Linux's too) steers by its model, not by ECN marks

    def undo_state(self) -> object:
        return None  # BBR's window is its model's; the prior window is kept by itself

    def undo(self, state: object) -> None:
        """A spurious timeout or recovery: leave loss mode and take the old window back
        at once, as when its data is all acknowledged."""
        self._conserving = False
        self.on_loss_recovered()
        if self.cwnd < self._prior_cwnd:
            self.cwnd = self._prior_cwnd

    def on_loss_recovered(self) -> None:
        """The data outstanding at a timeout is all acknowledged."""
        if self._in_loss:
            self._in_loss = False
            self.cwnd = max(self.cwnd, self._prior_cwnd)
