"""The recovery bookkeeping on its own (tcp_recovery): the RTT estimator, the scoreboard of
the guest's SACK reports and our out-of-order ranges, driven with plain numbers. The
endpoint tests (test_tcp_recovery, test_tcp_reassembly, test_tcp_timers) cover how the
endpoint uses them; these pin each rule where it lives."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgslirp.slirp.tcp_recovery import (
    CLOCK_GRANULARITY,
    MAX_OOO_RANGES,
    MAX_SACKED_RANGES,
    MIN_SAMPLE,
    OutOfOrder,
    RttEstimator,
    SackScoreboard,
)
from wgslirp.slirp.tcp_seq import MASK

# ---------------------------------------------------------------------------- RttEstimator


def _est(rto_initial: float = 1.0, rto_min: float = 0.2, rto_max: float = 60.0) -> RttEstimator:
    return RttEstimator(rto_initial, rto_min, rto_max)


def test_before_any_sample_the_initial_rto_applies() -> None:
    e = _est(rto_initial=0.1, rto_min=0.2)
    assert e.srtt == 0.0 and e.rto == 0.1
    assert e.rto_base == 0.2  # what the persist timer starts from is never below the floor
    assert e.timed_end == -1


def test_first_sample_sets_srtt_and_half_of_it_as_rttvar() -> None:
    e = _est()
    e.sample(0.3)  # RFC 6298 2.2
    assert e.srtt == pytest.approx(0.3)
    assert e.rttvar == pytest.approx(0.15)
    assert e.rto == pytest.approx(0.9) and e.rto_base == e.rto


def test_later_samples_use_gains_of_one_eighth_and_one_quarter() -> None:
    e = _est()
    e.sample(0.3)
    e.sample(0.1)  # RFC 6298 2.3: RTTVAR first, from the old SRTT
    assert e.rttvar == pytest.approx(0.75 * 0.15 + 0.25 * 0.2)
    assert e.srtt == pytest.approx(0.875 * 0.3 + 0.125 * 0.1)
    assert e.rto == pytest.approx(e.srtt + 4 * e.rttvar)


def test_rto_is_kept_between_floor_and_ceiling_and_at_least_one_tick_above_srtt() -> None:
    e = _est(rto_min=0.2)
    e.sample(0.001)
    assert e.rto == pytest.approx(0.201)  # the floor is on the variation, above SRTT
    e = _est(rto_min=0.2)
    e.set_sampling(True, 1000)
    for _ in range(200):  # a steady 100 ms path: RTTVAR decays towards nothing ...
        e.sample(0.1, flight=100_000)
    assert e.rto == pytest.approx(0.3, abs=0.002)  # ... and the timeout stays SRTT + floor
    e = _est(rto_max=2.0)
    e.sample(5.0)
    assert e.rto == 2.0
    e = _est(rto_min=0.0)
    e.sample(0.0001)  # 4 * RTTVAR is below the clock granularity G
    assert e.rto == pytest.approx(0.0001 + CLOCK_GRANULARITY)


def test_zero_sample_counts_and_negative_sample_is_ignored() -> None:
    e = _est()
    e.sample(-0.5)
    assert e.srtt == 0.0 and e.rto == 1.0
    e.sample(0.0)  # a same-millisecond timestamp echo is a real sample
    assert e.srtt == MIN_SAMPLE


def test_every_ack_sampling_divides_the_gains_by_samples_per_window() -> None:
    per_rtt = _est()
    per_rtt.sample(0.3)
    per_rtt.sample(0.1, flight=8000)  # flight does not matter without per-ACK sampling
    per_ack = _est()
    per_ack.set_sampling(True, 1000)
    per_ack.sample(0.3)
    per_ack.sample(0.1, flight=8000)  # ceil(8000 / 2000) = 4 samples per window
    assert per_rtt.srtt == pytest.approx(0.875 * 0.3 + 0.125 * 0.1)
    assert per_ack.srtt == pytest.approx((1 - 0.125 / 4) * 0.3 + 0.125 / 4 * 0.1)
    assert per_ack.rttvar == pytest.approx((1 - 0.25 / 4) * 0.15 + 0.25 / 4 * 0.2)
    rounded = _est()
    rounded.set_sampling(True, 1000)
    rounded.sample(0.3)
    rounded.sample(0.1, flight=8001)  # rounds up: 5
    assert rounded.srtt == pytest.approx((1 - 0.125 / 5) * 0.3 + 0.125 / 5 * 0.1)
    idle = _est()
    idle.set_sampling(True, 1000)
    idle.sample(0.3)
    idle.sample(0.1, flight=0)  # nothing in flight: at least one sample, full gains
    assert idle.srtt == pytest.approx(per_rtt.srtt)
    per_ack.set_sampling(False, 1000)
    before = per_ack.srtt
    per_ack.sample(0.1, flight=8000)
    assert per_ack.srtt == pytest.approx(0.875 * before + 0.125 * 0.1)


def test_backoff_doubles_up_to_the_ceiling_and_leaves_the_base() -> None:
    e = _est(rto_max=3.0)
    e.sample(0.3)
    e.backoff()
    assert e.rto == pytest.approx(1.8) and e.rto_base == pytest.approx(0.9)
    e.backoff()
    assert e.rto == 3.0
    e.sample(0.3)  # a new sample recomputes from the estimate (RFC 6298 5.7's "collapse")
    assert e.rto == e.rto_base < 1.0


def test_karn_a_resent_timed_segment_gives_no_sample() -> None:
    e = _est()
    e.start_timing(2000, 10.0)  # the segment [1000, 2000)
    e.resent(2000)  # a later segment: the timed one is still unambiguous
    assert e.timed_end == 2000
    e.resent(1000)
    assert e.timed_end == -1
    e.start_timing(3000, 11.0)
    e.sample_timed(11.25)
    assert e.srtt == pytest.approx(0.25) and e.timed_end == -1
    e.start_timing(4000, 12.0)
    e.stop_timing()
    assert e.timed_end == -1


def test_retransmitted_handshake_without_sample_starts_data_at_three_seconds() -> None:
    e = _est()
    e.backoff()
    e.handshake_retransmitted()
    assert e.rto == 3.0  # RFC 6298 5.7
    e.backoff()
    e.handshake_retransmitted()
    assert e.rto == 6.0  # already longer: kept
    sampled = _est()
    sampled.sample(0.1)
    sampled.handshake_retransmitted()
    assert sampled.rto == pytest.approx(0.3)  # 0.1 + 4 * 0.05


# -------------------------------------------------------------------------- SackScoreboard


def test_sack_blocks_merge_when_they_overlap_or_abut() -> None:
    sb = SackScoreboard()
    sb.take([(3000, 4000), (1000, 2000)], 0, 10_000)
    assert sb.ranges == [[1000, 2000], [3000, 4000]]
    sb.take([(2000, 2500)], 0, 10_000)  # abuts the first
    assert sb.ranges == [[1000, 2500], [3000, 4000]]
    sb.take([(2400, 3100)], 0, 10_000)  # bridges both
    assert sb.ranges == [[1000, 4000]]


def test_sack_blocks_outside_the_unacked_data_are_ignored() -> None:
    sb = SackScoreboard()
    sb.take([(500, 900), (1500, 2100), (1800, 1700), (1200, 1200)], 1000, 2000)
    assert sb.ranges == []  # below SND.UNA (a D-SACK), past SND.MAX, inverted, empty


def test_sack_blocks_are_unwrapped_across_the_32_bit_edge() -> None:
    una = MASK - 99  # 100 bytes below the wrap
    sb = SackScoreboard()
    sb.take([((una + 200) & MASK, (una + 400) & MASK)], una, una + 1000)
    assert sb.ranges == [[una + 200, una + 400]]


def test_sack_scoreboard_bound_keeps_merges_but_not_new_ranges() -> None:
    sb = SackScoreboard(max_ranges=2)
    sb.take([(100, 200), (300, 400), (500, 600)], 0, 1000)
    assert sb.ranges == [[100, 200], [300, 400]]
    sb.take([(200, 300)], 0, 1000)  # merging needs no new range
    assert sb.ranges == [[100, 400]]
    default = SackScoreboard()
    default.take([(10 * i, 10 * i + 5) for i in range(MAX_SACKED_RANGES + 3)], 0, 10_000)
    assert len(default.ranges) == MAX_SACKED_RANGES


def test_trim_drops_what_snd_una_covers_and_clips_the_straddling_range() -> None:
    sb = SackScoreboard()
    sb.take([(100, 200), (300, 400), (500, 600)], 0, 1000)
    sb.trim(350)
    assert sb.ranges == [[350, 400], [500, 600]]
    sb.trim(600)
    assert sb.ranges == []


def test_next_hole_is_the_first_unsacked_byte_below_a_sacked_one() -> None:
    sb = SackScoreboard()
    assert sb.next_hole(0) == -1
    sb.take([(200, 300), (400, 500)], 0, 1000)
    assert sb.next_hole(100) == 100
    assert sb.next_hole(200) == 300  # inside a SACKed range: skip to its end
    assert sb.next_hole(350) == 350
    assert sb.next_hole(450) == -1  # nothing SACKed above: not presumed lost


def test_sacked_after_bounds_a_retransmission() -> None:
    sb = SackScoreboard()
    sb.take([(200, 300), (400, 500)], 0, 1000)
    assert sb.sacked_after(100) == 200
    assert sb.sacked_after(200) == 400
    assert sb.sacked_after(450) == -1


def test_scoreboard_list_is_only_changed_in_place() -> None:
    # The endpoint holds the list itself for its fast-path emptiness test.
    sb = SackScoreboard()
    ranges = sb.ranges
    sb.take([(100, 200)], 0, 1000)
    sb.trim(150)
    sb.clear()
    assert sb.ranges is ranges and ranges == []


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 400)), max_size=12))
def test_scoreboard_holds_exactly_the_union_of_valid_blocks(blocks: list[tuple[int, int]]) -> None:
    una, smax = 1000, 2500
    sb = SackScoreboard(max_ranges=1000)
    held: set[int] = set()
    for left, size in blocks:
        sb.take([(left, left + size)], una, smax)
        if una <= left and left + size <= smax:
            held.update(range(left, left + size))
    _assert_disjoint_sorted(sb.ranges)
    assert {b for r in sb.ranges for b in range(r[0], r[1])} == held


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(900, 2600), st.integers(1, 60)), max_size=60),
    st.integers(1000, 1400),
    st.lists(st.integers(990, 2510), min_size=1, max_size=8),
)
def test_scoreboard_answers_as_a_set_of_bytes_would(
    blocks: list[tuple[int, int]], una2: int, probes: list[int]
) -> None:
    """Every query of the bisecting scoreboard against a plain set of SACKed bytes (the
    reference model), with many small ranges (what a tail-dropping queue leaves) and a
    trim in between."""
    una, smax = 1000, 2500
    sb = SackScoreboard()
    held: set[int] = set()
    for left, size in blocks:
        sb.take([(left, left + size)], una, smax)
        if una <= left and left + size <= smax:
            held.update(range(left, left + size))
    sb.trim(una2)
    held = {b for b in held if b >= una2}
    _assert_disjoint_sorted(sb.ranges)
    assert sb.sacked == len(held)
    top = max(held) + 1 if held else -1
    for p in probes:
        assert sb.holds(p) == (p in held)
        hole = next((b for b in range(p, top) if b not in held), -1)
        assert sb.next_hole(p) == hole
        q = p
        while q in held:
            q += 1
        assert sb.first_unsacked(p) == q
        after = [b for b in held if b > p and b - 1 not in held]
        assert sb.sacked_after(p) == (min(after) if after else -1)
        assert sb.sacked_below(p) == len([b for b in held if b < p])
        for lost_below in (-1, p):
            high = top if not 0 <= lost_below < top else lost_below
            s = max(p, una2)
            lost = len([b for b in range(s, high) if b not in held]) if held else 0
            assert sb.pipe(una2, smax, p, lost_below) == smax - una2 - len(held) - lost


# ------------------------------------------------------------------------------ OutOfOrder


def test_out_of_order_ranges_merge_and_keep_what_arrived() -> None:
    o = OutOfOrder(1 << 20)
    assert o.add(3000, 3500, 0) == 500
    assert o.add(1000, 1500, 0) == 500
    assert o.add(1400, 2000, 0) == 600  # the caller stores it all; overlap is harmless
    assert [r[:2] for r in o.ranges] == [[1000, 2000], [3000, 3500]]
    assert o.add(2000, 3000, 0) == 1000
    assert [r[:2] for r in o.ranges] == [[1000, 3500]]


def test_out_of_order_bound_in_bytes_past_rcv_nxt() -> None:
    o = OutOfOrder(1000)
    assert o.add(900, 1200, 0) == 100  # cut at RCV.NXT + max_bytes
    assert o.add(1000, 1100, 0) == 0
    assert [r[:2] for r in o.ranges] == [[900, 1000]]
    assert o.add(1000, 1100, 500) == 100  # the bound moves with RCV.NXT


def test_out_of_order_bound_in_ranges_drops_new_ones_only() -> None:
    o = OutOfOrder(1 << 20, max_ranges=2)
    o.add(100, 200, 0)
    o.add(300, 400, 0)
    assert o.add(500, 600, 0) == 0
    assert o.add(200, 300, 0) == 100  # fills the gap between the two
    assert [r[:2] for r in o.ranges] == [[100, 400]]
    default = OutOfOrder(1 << 20)
    for i in range(1, MAX_OOO_RANGES + 3):
        default.add(10 * i, 10 * i + 5, 0)
    assert len(default.ranges) == MAX_OOO_RANGES


def test_pull_advances_rcv_nxt_past_contiguous_ranges() -> None:
    o = OutOfOrder(1 << 20)
    o.add(200, 300, 100)
    o.add(400, 500, 100)
    assert o.pull(150) == 150  # the gap is still open
    assert o.pull(200) == 300
    assert [r[:2] for r in o.ranges] == [[400, 500]]
    assert o.pull(450) == 500  # a range RCV.NXT already reached into
    assert o.ranges == []


def test_sack_blocks_latest_first_then_most_recent_as_wire_values() -> None:
    o = OutOfOrder(1 << 20)
    for start in (1000, 3000, 5000, 7000):
        o.add(start, start + 500, 0)
    assert o.sack_blocks(3) == [(7000, 7500), (5000, 5500), (3000, 3500)]
    o.add(3500, 4000, 0)  # the merged range now holds the latest segment
    assert o.sack_blocks(4) == [(3000, 4000), (7000, 7500), (5000, 5500), (1000, 1500)]
    w = OutOfOrder(1 << 20)
    w.add(MASK + 10, MASK + 20, MASK - 5)
    assert w.sack_blocks(1) == [(9, 19)]


def test_out_of_order_list_is_only_changed_in_place() -> None:
    o = OutOfOrder(1 << 20)
    ranges = o.ranges
    o.add(100, 200, 0)
    o.pull(100)
    assert o.ranges is ranges and ranges == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 3000), st.integers(1, 300)), max_size=15),
    st.integers(100, 4000),
)
def test_out_of_order_holds_exactly_what_it_agreed_to_keep(
    segs: list[tuple[int, int]], max_bytes: int
) -> None:
    o = OutOfOrder(max_bytes, max_ranges=4)
    held: set[int] = set()
    for seq, size in segs:
        kept = o.add(seq, seq + size, 0)
        assert 0 <= kept <= size and (kept == 0 or seq + kept <= max_bytes)
        held.update(range(seq, seq + kept))
    _assert_disjoint_sorted(o.ranges)
    assert len(o.ranges) <= 4
    assert {b for r in o.ranges for b in range(r[0], r[1])} == held
    nxt = o.pull(1)
    end = 1
    while end in held:
        end += 1
    assert nxt == end


def _assert_disjoint_sorted(ranges: list[list[int]]) -> None:
    for a, b in itertools.pairwise(ranges):
        assert a[0] < a[1] < b[0]  # sorted, non-empty, and not even abutting (merged)


@given(
    st.lists(st.tuples(st.integers(0, 200), st.integers(1, 30)), max_size=6),
    st.integers(0, 250),
)
def test_pipe_counts_what_is_neither_sacked_nor_a_hole_not_yet_resent(
    blocks: list[tuple[int, int]], high_rxt: int
) -> None:
    """RFC 6675's pipe against a byte-by-byte count."""
    una, snd_max = 0, 260
    sb = SackScoreboard()
    sb.take([(a, a + n) for a, n in blocks], una, snd_max)
    sacked = {b for left, right in sb.ranges for b in range(left, right)}
    high = sb.ranges[-1][1] if sb.ranges else una
    expect = sum(
        1 for b in range(una, snd_max) if b not in sacked and not (max(high_rxt, una) <= b < high)
    )
    assert sb.pipe(una, snd_max, high_rxt) == expect
