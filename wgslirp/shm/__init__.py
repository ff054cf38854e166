"""Shared-memory transport between the router's processes: rings and shared counters."""

from wgslirp.shm.ring import MISSED_WAKEUP_BOUND, Consumer, Producer, Ring, RingStats

__all__ = ["MISSED_WAKEUP_BOUND", "Consumer", "Producer", "Ring", "RingStats"]
