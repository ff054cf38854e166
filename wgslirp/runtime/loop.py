"""The one event loop shape every process runs: a selector, timers and per-turn hooks.

Selector registrations carry a callable `handler(now, events)` as their data. Timers are objects
with the sans-I/O pair `get_timer()` / `handle_timer(now)`. Hooks run once per turn after
the events (draining rings, flushing batches); `sleepers` are asked, just before the loop
would block, whether blocking is safe (an SPSC ring consumer announces it is about to sleep
and re-checks for data, see wgslirp/shm/ring.py).
"""

from __future__ import annotations

import logging
import selectors
import signal
import socket
import time
from collections.abc import Callable
from typing import Protocol

from wgslirp.shm.ring import MISSED_WAKEUP_BOUND

log = logging.getLogger("wgslirp.loop")

ERROR_LOG_INTERVAL = 10.0
MAX_SLEEP = 1.0  # wake at least this often to notice stop requests and sweep timers

# The beat of a loop with traffic: the longest an armed wait lasts while events keep
# coming. It trades CPU for latency. Each wait the beat ends is a sleep and a wake-up of
# its own, ~35 us of the process's CPU on the 2-core VM (a doorbell's wake-up ~15), paid
# in every gap of the traffic longer than the beat; but a process that woke within the
# last beat answers its next packet sooner than one whose CPU went idle (on this VM an
# idle vCPU halts, and waking it is slow).
#
# One process doing everything (PROCESSOR_WORKERS=0) keeps 1 ms: at 5 ms every inline
# round trip of bench_latency came out slower (tcp open 1.26 -> 1.35 ms, tcp host 0.93 ->
# 0.95, udp host 0.95 -> 1.00, ping 1420 0.70 -> 0.74, ping far 0.81 -> 0.84; 3 rounds,
# 180 samples a case), and its CPU per packet at 20,000 datagrams/s did not move (one
# wake-up per train already). Processes that hand packets over rings (ingress and
# workers) take 5 ms, which is also the ring's bound on a missed wake-up: bench_forward
# with 2 workers (trains 1.6 ms apart woke all three processes between trains at 1 ms),
# medians of 3, us per packet, up 64/1392, down 64/1392: 18.9/20.1/12.0/12.9 ->
# 16.4/16.8/11.7/12.1, and at 5,000 datagrams/s up/down 64 36.1/29.4 -> 24.7/17.7; its
# round trips moved -0.03..+0.07 ms (bench_latency --compare, 3 runs, 4 cases).
SHARED_SLEEP_BOUND = 0.001
SPLIT_SLEEP_BOUND = MISSED_WAKEUP_BOUND


class Sleeper(Protocol):
    """A ring consumer: may the loop block, and the notice that it woke up."""

    def prepare_sleep(self) -> bool: ...
    def woke(self, drain: bool = True) -> None: ...


class RingSleeper(Sleeper, Protocol):
    """A ring consumer with its doorbell: the eventfd producers ring while it sleeps."""

    @property
    def doorbell_fd(self) -> int: ...


class Timed(Protocol):
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...


Handler = Callable[[float, int], None]  # (now, selector event mask)
Hook = Callable[[float], None]


class Loop:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        selector: selectors.BaseSelector | None = None,
        sleep_bound: float = SHARED_SLEEP_BOUND,
    ) -> None:
        self.clock = clock
        self.selector = selector or selectors.DefaultSelector()
        self.timers: list[Timed] = []
        self.hooks: list[Hook] = []
        self.sleepers: list[Sleeper] = []
        # The longest wait of a turn: a process whose hooks must run on a beat of their own
        # (the supervisor judging its children) shortens it.
        self.max_sleep = MAX_SLEEP
        # Longest wait once a sleeper armed, while the selector keeps reporting events (a
        # doorbell, a socket); after idle_after seconds in which select returned none (ring
        # packets picked up without a doorbell and timers do not count) the loop relaxes
        # it to idle_sleep_bound, so an idle router does not keep waking up. Which beat a
        # process gets is its shell's choice (SHARED_SLEEP_BOUND, SPLIT_SLEEP_BOUND below).
        self.sleep_bound = sleep_bound
        self.idle_sleep_bound = 0.1
        self.idle_after = 1.0
        self._last_event = 0.0
        self.stopping = False
        self._pending_signals: list[Hook] = []
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self.errors = 0
        self._next_error_log = float("-inf")
        self.turns = 0  # health: proves the loop is ticking

    def register(
        self, fileobj: int | object, handler: Handler, events: int = selectors.EVENT_READ
    ) -> None:
        self.selector.register(fileobj, events, handler)  # type: ignore[arg-type]

    def add_ring(self, cons: RingSleeper) -> None:
        """Wake for a ring's doorbell, and let the consumer veto each sleep (it re-checks
        the ring after announcing it will sleep, so no packet waits for a timeout)."""

        def rung(_now: float, _mask: int = 0) -> None:
            cons.woke(True)

        self.register(cons.doorbell_fd, rung)
        self.sleepers.append(cons)

    def modify(self, fileobj: int | object, handler: Handler, events: int) -> None:
        self.selector.modify(fileobj, events, handler)  # type: ignore[arg-type]

    def unregister(self, fileobj: int | object) -> None:
        """Stop watching `fileobj`; one not registered is ignored, as the bridges' Poller
        protocol (wgslirp/slirp/bridge_context.py) promises, so teardown needs no checks."""
        try:
            self.selector.unregister(fileobj)  # type: ignore[arg-type]
        except (KeyError, ValueError):
            pass

    def _timeout(self, now: float) -> float:
        best = now + self.max_sleep
        for t in self.timers:
            d = t.get_timer()
            if d is not None and d < best:
                best = d
        return max(0.0, best - now)

    def run_once(self, block: bool = True) -> None:
        now = self.clock()
        timeout = self._timeout(now) if block else 0.0
        armed: list[Sleeper] = []
        if timeout > 0 and self.sleepers:
            for sleeper in self.sleepers:
                if not sleeper.prepare_sleep():
                    timeout = 0.0
                    break
                armed.append(sleeper)
            bound = (
                self.sleep_bound
                if now - self._last_event < self.idle_after
                else self.idle_sleep_bound
            )
            if timeout > bound:
                timeout = bound
        events = self.selector.select(timeout)
        if events:
            self._last_event = now
        for sleeper in armed:
            sleeper.woke(False)  # the doorbell handler drains the eventfd when it fired
        for key, mask in events:
            try:
                key.data(self.clock(), mask)
            except Exception:
                self._error("an event handler")
        now = self.clock()
        if self._pending_signals:
            self._run_signal_callbacks(now)
        for hook in self.hooks:
            try:
                hook(now)
            except Exception:
                self._error("a per-turn hook")
        for t in self.timers:
            d = t.get_timer()
            if d is not None and d <= now:
                try:
                    t.handle_timer(now)
                except Exception:
                    self._error("a timer")
        self.turns += 1

    def _error(self, what: str) -> None:
        """A bug in one component must not stop the process: count it, log it (at most
        once per ERROR_LOG_INTERVAL with a traceback) and keep turning."""
        self.errors += 1
        now = self.clock()
        if now >= self._next_error_log:
            self._next_error_log = now + ERROR_LOG_INTERVAL
            log.exception(
                "error in %s (%d so far; more in the next %.0f s are only counted)",
                what,
                self.errors,
                ERROR_LOG_INTERVAL,
            )

    def install_stop_signals(self, on_stop: Callable[[int], None] | None = None) -> None:
        """SIGTERM/SIGINT stop the loop promptly: the signal's wake-up byte lands on a
        socket in the selector, so a blocked select returns at once."""
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self._wake = (r, w)
        signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)

        def drain(_now: float, _mask: int = 0) -> None:
            try:
                r.recv(4096)
            except OSError:
                pass

        def handler(signum: int, _frame: object) -> None:
            self.stopping = True
            if on_stop is not None:
                on_stop(signum)

        self.register(r, drain)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})

    def on_signal(self, signum: int, callback: Hook) -> None:
        """Run `callback(now)` on the loop (never inside the signal handler) after `signum`.
        Needs install_stop_signals first, whose wake-up socket makes the loop turn."""

        def handler(_signum: int, _frame: object) -> None:
            self._pending_signals.append(callback)

        signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})

    def _run_signal_callbacks(self, now: float) -> None:
        while self._pending_signals:
            self._pending_signals.pop(0)(now)

    def run(self) -> None:
        while not self.stopping:
            self.run_once()

    def close(self) -> None:
        """Release the selector and the signal wake-up socket.

        Also what a forked child does with the loop it inherited: closing its copies of
        the descriptors leaves the parent's registrations alone (no epoll_ctl is issued),
        and the wake-up fd no longer points at a socket the child does not read.
        """
        if self._wake is not None:
            r, w = self._wake
            self._wake = None
            previous = signal.set_wakeup_fd(-1)
            if previous not in (-1, w.fileno()):
                signal.set_wakeup_fd(previous, warn_on_full_buffer=False)  # not ours to drop
            r.close()
            w.close()
        self.selector.close()
