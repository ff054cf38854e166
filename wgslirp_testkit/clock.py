"""A clock a test moves by hand.

The cores take time as an argument or as an injected callable instead of reading a clock
(sans-I/O), so a test can pass one of these and jump minutes ahead in a line: timers,
expiry and rate limits are tested in microseconds and come out the same on every run.
"""

from __future__ import annotations


class FakeClock:
    """Call it for the monotonic time ``t``; ``wall`` (Unix time) moves along with it.

    ``advance`` moves both; tests that need one instant assign ``t`` directly.
    """

    def __init__(self, t: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.t = t
        self.wall = wall

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        """Move time forward by ``dt`` seconds; the new ``t``."""
        self.t += dt
        self.wall += dt
        return self.t
