"""Bounded NAT flow tables shared by the UDP and ICMP bridges (sans-I/O).

A flow is created by the first guest packet and dies when idle for `idle_timeout`. Caps per
peer and in total keep memory bounded whatever guests do; when a cap is hit the least
recently active flow (of that peer, or overall) is evicted and counted, so a busy guest can
always open new flows while a flood of one-off datagrams cannot grow the table.
Activity is one float store per packet. Eviction finds the exact least recently active
flow through lazy heaps (one overall, one per peer, kept only where a cap is set): an entry
carries the activity time it was pushed with, and a popped entry whose flow has been active
since is pushed again with the newer time, so the top of the heap, once it is current, is
the true minimum. A table pinned at its cap (a busy resolver opening a flow per query) then
costs O(log n) per new flow, not a scan of every flow. The idle sweep is O(flows) once per
sweep interval.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Flow:
    """Base for bridge flows; subclasses add their socket and addresses."""

    __slots__ = ("key", "last_active", "peer")

    def __init__(self, key: Hashable, peer: int, now: float) -> None:
        self.key = key
        self.peer = peer
        self.last_active = now


F = TypeVar("F", bound=Flow)


class FlowTable(Generic[F]):
    def __init__(
        self,
        idle_timeout: float,
        max_flows: int = 0,
        max_per_peer: int = 0,
        sweep_interval: float = 1.0,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows  # 0 = unlimited
        self.max_per_peer = max_per_peer
        self.sweep_interval = min(sweep_interval, idle_timeout) if idle_timeout > 0 else 1.0
        self._flows: dict[Hashable, F] = {}
        self._per_peer: dict[int, int] = {}
        # (last_active when pushed, tie-break, flow); dead entries are skipped and compacted
        self._heap: list[tuple[float, int, F]] = []
        self._peer_heaps: dict[int, list[tuple[float, int, F]]] = {}
        self._seq = itertools.count()
        self._next_sweep: float | None = None
        self.created = 0
        self.expired = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._flows)

    def get(self, key: Hashable) -> F | None:
        return self._flows.get(key)

    def values(self) -> list[F]:
        return list(self._flows.values())

    def peer_count(self, peer: int) -> int:
        return self._per_peer.get(peer, 0)

    def make_room(self, peer: int) -> list[F]:
        """Evict what must go before `peer` adds a flow; returns the evicted flows."""
        out: list[F] = []
        if self.max_per_peer and self._per_peer.get(peer, 0) >= self.max_per_peer:
            victim = self._least_recent(self._peer_heaps.get(peer, []))
            if victim is not None:
                self._remove(victim)
                out.append(victim)
        if self.max_flows and len(self._flows) >= self.max_flows:
            victim = self._least_recent(self._heap)
            if victim is not None:
                self._remove(victim)
                out.append(victim)
        self.evicted += len(out)
        return out

    def _least_recent(self, heap: list[tuple[float, int, F]]) -> F | None:
        """Pop the heap's least recently active live flow (exact, see the module doc)."""
        flows = self._flows
        for _ in range(4 * len(heap) + 1):  # each live flow is re-pushed at most once
            if not heap:
                return None
            t, _, f = heap[0]
            if flows.get(f.key) is not f:
                heapq.heappop(heap)
            elif f.last_active != t:
                heapq.heapreplace(heap, (f.last_active, next(self._seq), f))
            else:
                heapq.heappop(heap)
                return f
        return None  # unreachable: the loop bound exceeds what the heap can hold

    def _push(self, heap: list[tuple[float, int, F]], flow: F, live: int) -> None:
        heapq.heappush(heap, (flow.last_active, next(self._seq), flow))
        if len(heap) > 2 * live + 64:  # mostly dead entries (flows expired or closed)
            heap[:] = [e for e in heap if self._flows.get(e[2].key) is e[2]]
            heapq.heapify(heap)

    def add(self, flow: F, now: float) -> None:
        """Insert a flow; call `make_room` first so the caps hold."""
        self._flows[flow.key] = flow
        n = self._per_peer[flow.peer] = self._per_peer.get(flow.peer, 0) + 1
        if self.max_flows:
            self._push(self._heap, flow, len(self._flows))
        if self.max_per_peer:
            self._push(self._peer_heaps.setdefault(flow.peer, []), flow, n)
        self.created += 1
        if self._next_sweep is None:
            self._next_sweep = now + self.sweep_interval

    def remove(self, flow: F) -> None:
        if self._flows.get(flow.key) is flow:
            self._remove(flow)

    def _remove(self, flow: F) -> None:
        del self._flows[flow.key]
        left = self._per_peer[flow.peer] - 1
        if left:
            self._per_peer[flow.peer] = left
        else:
            del self._per_peer[flow.peer]
            self._peer_heaps.pop(flow.peer, None)
        if not self._flows:
            self._next_sweep = None
            self._heap.clear()

    def remove_peer(self, peer: int) -> list[F]:
        gone = [f for f in self._flows.values() if f.peer == peer]
        for f in gone:
            self._remove(f)
        return gone

    def get_timer(self) -> float | None:
        return self._next_sweep

    def expire(self, now: float) -> list[F]:
        """Remove flows idle for `idle_timeout`; call when `get_timer()` is due."""
        if self._next_sweep is None or now < self._next_sweep:
            return []
        limit = now - self.idle_timeout
        gone = [f for f in self._flows.values() if f.last_active <= limit]
        for f in gone:
            self._remove(f)
        self.expired += len(gone)
        if self._flows:
            self._next_sweep = now + self.sweep_interval
        return gone
