"""Replay window against a simple reference model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wgslirp.wireguard.replay import REJECT_AFTER_MESSAGES, WINDOW_BITS, ReplayWindow


def test_duplicate_rejected() -> None:
    w = ReplayWindow()
    assert w.accept(0)
    assert not w.check(0) and not w.accept(0)
    assert w.accept(1) and w.accept(3) and w.accept(2)
    assert not w.accept(2)


def test_window_edge_and_far_ahead() -> None:
    w = ReplayWindow()
    assert w.accept(10_000)
    assert w.accept(10_000 - WINDOW_BITS + 1)  # oldest still inside
    assert not w.accept(10_000 - WINDOW_BITS)  # just outside
    assert w.accept(10_000 + 10 * WINDOW_BITS)  # far ahead clears everything
    assert not w.accept(10_000)
    assert w.accept(10_000 + 10 * WINDOW_BITS - 5)
    assert WINDOW_BITS >= 2048


def test_ring_wraps_many_times() -> None:
    w = ReplayWindow()
    sent = list(range(0, 50_000, 3))
    for c in sent:
        assert w.accept(c)
    for c in sent[-100:]:
        assert not w.accept(c)
    for c in sent[-100:]:
        assert w.accept(c + 1)


def test_counter_limit() -> None:
    w = ReplayWindow()
    assert not w.check(REJECT_AFTER_MESSAGES) and not w.accept(REJECT_AFTER_MESSAGES)
    assert w.accept(REJECT_AFTER_MESSAGES - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20_000), max_size=300))
def test_matches_reference_model(counters: list[int]) -> None:
    w = ReplayWindow()
    seen: set[int] = set()
    top = -1
    for c in counters:
        expect = c not in seen and not (top - c >= WINDOW_BITS)
        assert w.check(c) == expect
        assert w.accept(c) == expect
        if expect:
            seen.add(c)
            top = max(top, c)
