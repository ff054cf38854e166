"""HyStart++ (RFC 9406) in front of CUBIC's slow start: rounds, the delay-rise test,
Conservative Slow Start and its way out either side; then a download on a simulated path
whose queue slow start would overflow."""

from __future__ import annotations

from wgslirp.slirp.tcp_cc import (
    CSS_GROWTH_DIVISOR,
    CSS_ROUNDS,
    HYSTART_EXIT,
    HYSTART_KEEP,
    N_RTT_SAMPLE,
    Cubic,
    HyStartPlusPlus,
)
from wgslirp_testkit import pathsim

MSS = 1340


class Rounds:
    """Feeds a HyStartPlusPlus round by round: N_RTT_SAMPLE samples per round, the first
    acknowledging the data that ended the previous round."""

    def __init__(self, hs: HyStartPlusPlus) -> None:
        self.hs = hs
        self.edge = 0  # SND.NXT when the current round began

    def __call__(self, rtts: list[float]) -> list[int]:
        verdicts = []
        for rtt in rtts:
            nxt = self.edge + 100 * MSS
            for i in range(N_RTT_SAMPLE):
                verdicts.append(self.hs.on_rtt(rtt, self.edge + i, nxt))
            self.edge = nxt
        return verdicts


def test_a_steady_rtt_never_leaves_slow_start() -> None:
    hs = HyStartPlusPlus()
    assert set(Rounds(hs)([0.040] * 20)) == {HYSTART_KEEP}
    assert not hs.css and not hs.done


def test_a_rise_of_an_eighth_enters_css_and_five_css_rounds_end_slow_start() -> None:
    hs = HyStartPlusPlus()
    feed = Rounds(hs)
    feed([0.040, 0.040])
    assert not hs.css
    feed([0.0451])  # +5.1 ms > 40/8 = 5 ms
    assert hs.css and hs.css_baseline == 0.0451
    verdicts = feed([0.046] * (CSS_ROUNDS + 1))
    assert HYSTART_EXIT in verdicts and hs.done


def test_a_rise_below_the_4_ms_floor_is_noise() -> None:
    hs = HyStartPlusPlus()
    Rounds(hs)([0.010, 0.010, 0.0135])  # +3.5 ms: an eighth of 10 ms is 1.25, floor 4
    assert not hs.css


def test_an_rtt_that_falls_back_resumes_slow_start() -> None:
    hs = HyStartPlusPlus()
    feed = Rounds(hs)
    feed([0.040, 0.040, 0.046])
    assert hs.css
    feed([0.041])
    assert not hs.css and not hs.done


def test_cubic_grows_a_quarter_as_fast_in_css_and_stops_at_the_exit() -> None:
    cc = Cubic(MSS, 10 * MSS)
    seq = 0
    for rtt in (0.040, 0.040, 0.050):
        for i in range(N_RTT_SAMPLE):
            cc.on_rtt(rtt, seq + (i + 1) * MSS, seq + 100 * MSS)
        seq += 100 * MSS
    assert cc._hystart.css
    before = cc.cwnd
    cc.on_ack(2 * MSS, cc.cwnd, 1.0, 0.05)
    assert cc.cwnd - before == 2 * MSS // CSS_GROWTH_DIVISOR
    for _ in range(CSS_ROUNDS + 1):
        for i in range(N_RTT_SAMPLE):
            cc.on_rtt(0.050, seq + (i + 1) * MSS, seq + 100 * MSS)
        seq += 100 * MSS
    assert cc.ssthresh == cc.cwnd  # in congestion avoidance now, without a loss


def test_a_loss_ends_hystart_for_the_connection() -> None:
    cc = Cubic(MSS, 10 * MSS)
    cc.on_fast_retransmit(10 * MSS, 1.0)
    assert cc._hystart.done


def test_on_a_deep_queue_cubic_leaves_slow_start_before_overflowing_it() -> None:
    """20 Mbit/s, 40 ms, a 200-packet queue: slow start doubles into the queue and
    loses a window's tail; HyStart++ sees the queue in the RTT first."""
    r = pathsim.run("cubic", rate_mbit=20, rtt=0.040, queue_packets=200, seconds=6)
    assert r.queue_drops < 100  # without HyStart++: ~400 here, with a timeout
    assert r.rto_expirations == 0
    assert r.mbit > 0.85 * 20
