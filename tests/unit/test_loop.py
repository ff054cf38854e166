"""The event loop's sleep decisions, with a fake clock and a fake selector."""

from __future__ import annotations

import selectors
from typing import Any

import pytest

from wgslirp.runtime.loop import MAX_SLEEP, SHARED_SLEEP_BOUND, SPLIT_SLEEP_BOUND, Loop
from wgslirp.shm.ring import MISSED_WAKEUP_BOUND
from wgslirp_testkit.clock import FakeClock


class FakeSelector(selectors.BaseSelector):
    def __init__(self) -> None:
        self.timeouts: list[float | None] = []
        self.ready: list[tuple[selectors.SelectorKey, int]] = []

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return selectors.SelectorKey(fileobj, 0, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        raise KeyError(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.timeouts.append(timeout)
        out, self.ready = self.ready, []
        return out

    def close(self) -> None:
        pass

    def get_map(self) -> Any:
        return {}


class Sleeper:
    def __init__(self, has_data: bool) -> None:
        self.has_data = has_data
        self.woken: list[bool] = []

    def prepare_sleep(self) -> bool:
        return not self.has_data

    def woke(self, drain: bool = True) -> None:
        self.woken.append(drain)


class Timer:
    def __init__(self, at: float | None) -> None:
        self.at = at
        self.fired: list[float] = []

    def get_timer(self) -> float | None:
        return self.at

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)
        self.at = None


def make(clock: FakeClock, sleep_bound: float = SHARED_SLEEP_BOUND) -> tuple[Loop, FakeSelector]:
    sel = FakeSelector()
    return Loop(clock=clock, selector=sel, sleep_bound=sleep_bound), sel


def test_timer_bounds_the_wait_and_fires() -> None:
    clock = FakeClock(100.0)
    loop, sel = make(clock)
    t = Timer(100.25)
    loop.timers.append(t)
    loop.run_once()
    assert sel.timeouts[-1] == 0.25 and not t.fired
    clock.t = 100.25
    loop.run_once()
    assert t.fired == [100.25]
    loop.run_once()
    assert sel.timeouts[-1] == MAX_SLEEP


def test_armed_sleeper_bounds_wait_then_relaxes_when_idle() -> None:
    clock = FakeClock(0.0)
    loop, sel = make(clock)
    s = Sleeper(has_data=False)
    loop.sleepers.append(s)
    key = selectors.SelectorKey(0, 0, selectors.EVENT_READ, lambda _n, _m: None)
    sel.ready = [(key, selectors.EVENT_READ)]
    loop.run_once()  # an event: the loop counts as busy from now
    clock.t = 0.5
    loop.run_once()
    assert sel.timeouts[-1] == loop.sleep_bound and s.woken[-1] is False
    clock.t = 2.0  # more than idle_after without events
    loop.run_once()
    assert sel.timeouts[-1] == loop.idle_sleep_bound


def armed_wait(sleep_bound: float | None) -> float | None:
    """The timeout of a wait armed 0.1 ms after a packet, by a loop made with this bound."""
    clock = FakeClock(0.0)
    if sleep_bound is None:
        sel = FakeSelector()
        loop = Loop(clock=clock, selector=sel)
    else:
        loop, sel = make(clock, sleep_bound)
    loop.sleepers.append(Sleeper(has_data=False))
    key = selectors.SelectorKey(0, 0, selectors.EVENT_READ, lambda _n, _m: None)
    sel.ready = [(key, selectors.EVENT_READ)]
    loop.run_once()  # a packet
    clock.t = 0.0001
    loop.run_once()  # waiting for the next one, armed
    return sel.timeouts[-1]


def test_a_loop_that_hands_packets_over_rings_sleeps_through_a_few_ms_of_quiet() -> None:
    """Ingress and workers in their own processes: traffic whose packets come a few ms apart
    (bench_forward's trains: 1.6 ms at 20,000 datagrams/s) does not wake all of them between
    trains; each wait the beat ends is a sleep and a wake-up of its own (loop.py). The beat
    stays within what the ring promises a missed wake-up may cost."""
    timeout = armed_wait(SPLIT_SLEEP_BOUND)
    assert timeout is not None and 0.004 <= timeout <= MISSED_WAKEUP_BOUND


def test_one_process_doing_everything_keeps_the_short_beat_for_latency() -> None:
    """Inline (PROCESSOR_WORKERS=0) round trips were slower at 5 ms in every case of
    bench_latency; the default loop keeps 1 ms."""
    assert armed_wait(None) == SHARED_SLEEP_BOUND == 0.001


def test_sleeper_with_data_prevents_blocking() -> None:
    loop, sel = make(FakeClock(0.0))
    loop.sleepers.append(Sleeper(has_data=True))
    loop.run_once()
    assert sel.timeouts[-1] == 0.0


def test_max_sleep_is_the_longest_wait_of_a_turn() -> None:
    """The supervisor shortens it so its per-turn hook keeps a beat without any timer."""
    loop, sel = make(FakeClock(0.0))
    loop.max_sleep = 0.1
    loop.run_once()
    assert sel.timeouts[-1] == 0.1
    loop.timers.append(Timer(0.05))
    loop.run_once()
    assert sel.timeouts[-1] == 0.05


def test_close_releases_the_selector_and_the_wakeup_fd() -> None:
    """A forked child closes the loop it inherited: the selector and the signal wake-up
    socket go, and a wake-up fd someone else set is left as it was."""
    import signal
    import socket
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be set from the main thread")
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    other_r, other_w = socket.socketpair()
    other_w.setblocking(False)
    try:
        loop = Loop()
        loop.install_stop_signals()
        loop.close()
        assert signal.set_wakeup_fd(-1) == -1  # ours is gone
        sel = loop.selector
        with pytest.raises((RuntimeError, ValueError, OSError)):
            sel.select(0)
        second = Loop()
        second.install_stop_signals()
        signal.set_wakeup_fd(other_w.fileno())  # someone took the wake-up fd since
        second.close()
        assert signal.set_wakeup_fd(-1) == other_w.fileno()
    finally:
        signal.set_wakeup_fd(-1)
        for s, h in saved.items():
            signal.signal(s, h)
        other_r.close()
        other_w.close()
