"""The event loop's sleep decisions, with a fake clock and a fake selector."""

from __future__ import annotations

import selectors
from typing import Any

from wgslirp.runtime.loop import MAX_SLEEP, Loop
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


def make(clock: FakeClock) -> tuple[Loop, FakeSelector]:
    sel = FakeSelector()
    return Loop(clock=clock, selector=sel), sel


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


def test_sleeper_with_data_prevents_blocking() -> None:
    loop, sel = make(FakeClock(0.0))
    loop.sleepers.append(Sleeper(has_data=True))
    loop.run_once()
    assert sel.timeouts[-1] == 0.0
