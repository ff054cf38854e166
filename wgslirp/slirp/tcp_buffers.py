"""How much send-ring memory the connections of one process may grow into, together.

A download's rate is at most its send buffer per round trip: 1 MiB per 41 ms is ~200 Mbit/s,
and with BBR's window of two bandwidth-delay products a fast path over tens of milliseconds
wants several MiB. Linux grows each socket's buffer with its window up to tcp_wmem's 4 MiB
and bounds the sum by tcp_mem. Here every connection starts at TCP_SND_BUFFER and may grow
to TCP_SND_BUFFER_MAX, but only out of a shared pool (TCP_SND_BUFFER_POOL per process): a
few fast downloads get big windows, while thousands of connections cannot add up to
gigabytes. A connection that is refused keeps working at the size it has.
"""

from __future__ import annotations


class SendBudget:
    """Bytes of send ring above the base size, shared by one process's connections."""

    __slots__ = ("refused", "total", "used")

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.refused = 0  # growths turned down because the pool was spent

    def take(self, n: int) -> bool:
        if self.used + n > self.total:
            self.refused += 1
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n
        if self.used < 0:
            raise AssertionError("send budget returned more than it lent")
