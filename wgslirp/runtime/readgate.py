"""When ingress may read the WireGuard socket: back-pressure from the workers' rings.

A datagram decrypted for a worker whose ring is full is paid for and then thrown away:
the AEAD call, the route, the copy. Left in the socket, the same datagram costs nothing
until the kernel either hands it over later or drops it itself. So ingress reads only
while every ring has room for what one read can bring (a GRO train: up to 64 datagrams),
and stops reading, without spinning, until the rings have drained to a quarter free.

One worker that is descheduled, hung or simply slower than the rest must not hold every
other worker's traffic in the socket for long: a pause lasts at most `pause_max`; a ring
still short of room then is passed over (its datagrams are decrypted and dropped at the
full ring, as before this gate existed) until it has drained to the resume level again.
A worker the supervisor finds hung is restarted on its own schedule (PROCESSOR_HUNG_RESTART).

Sans-I/O: fed free-slot counts and time, it answers how many datagrams may be read and
whether reading may resume; the ingress shell mutes and unmutes its socket accordingly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

GRO_TRAIN_MAX = 64  # UDP GRO coalesces at most this many datagrams into one read
PAUSE_MAX = 0.010  # seconds one full ring may hold reading up before it is passed over
CHECK_EVERY = 0.0005  # how often a paused gate looks at the rings (the loop rounds to 1 ms)


class Room(Protocol):
    """One ring as its producer sees it."""

    @property
    def slots(self) -> int: ...

    def free_slots(self) -> int: ...


class ReadGate:
    """Credit to read, from the rings' free slots, with a bounded pause when one is full."""

    def __init__(self, rings: Sequence[Room], pause_max: float = PAUSE_MAX) -> None:
        self._rings = list(rings)
        slots = min((r.slots for r in self._rings), default=0)
        # Room kept back before each read for the largest train a read can bring (a smaller
        # ring keeps less; a train larger than that can still overflow it, counted there).
        self.headroom = min(GRO_TRAIN_MAX, max(1, slots // 8))
        self.resume_free = max(2 * self.headroom, slots // 4)
        self.pause_max = pause_max
        self._passed = [False] * len(self._rings)
        self.paused_at: float | None = None
        self.pauses = 0  # times reading stopped for a full ring
        self.passed_over = 0  # times a ring stayed full past pause_max
        self.paused_seconds = 0.0

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def credit(self, now: float, want: int) -> int:
        """How many datagrams (at most `want`) may be read before asking again; 0 means
        the gate has just paused and the socket should be muted until `ready`."""
        if self.paused_at is not None:
            return 0
        lo = want
        passed = self._passed
        for i, ring in enumerate(self._rings):
            free = ring.free_slots()
            if passed[i]:
                if free >= self.resume_free:
                    passed[i] = False  # drained: it holds reading up again when full
                else:
                    continue
            if free - self.headroom < lo:
                lo = free - self.headroom
        if lo <= 0:
            self.paused_at = now
            self.pauses += 1
            return 0
        return lo

    def ready(self, now: float) -> bool:
        """While paused: True once every ring not passed over has drained to the resume
        level, or pause_max has run out (the rings still short are then passed over)."""
        at = self.paused_at
        if at is None:
            return True
        late = now >= at + self.pause_max
        short = [
            i
            for i, ring in enumerate(self._rings)
            if not self._passed[i] and ring.free_slots() < self.resume_free
        ]
        if short and not late:
            return False
        for i in short:
            self._passed[i] = True
            self.passed_over += 1
        self.paused_seconds += max(0.0, now - at)
        self.paused_at = None
        return True
