"""Bounded NAT flow tables shared by the UDP and ICMP bridges (sans-I/O).

A flow is created by the first guest packet and dies when idle for `idle_timeout`. Caps per
peer and in total keep memory bounded whatever guests do; when a cap is hit the least
recently active flow (of that peer, or overall) is evicted and counted, so a busy guest can
always open new flows while a flood of one-off datagrams cannot grow the table.
Activity is one float store per packet; the ordering work happens only on eviction and on
the periodic sweep, which is O(flows) once per sweep interval.
"""

from __future__ import annotations

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
    def __init__(self, idle_timeout: float, max_flows: int = 0, max_per_peer: int = 0,
                 sweep_interval: float = 1.0) -> None:
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows  # 0 = unlimited
        self.max_per_peer = max_per_peer
        self.sweep_interval = min(sweep_interval, idle_timeout) if idle_timeout > 0 else 1.0
        self._flows: dict[Hashable, F] = {}
        self._per_peer: dict[int, int] = {}
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
            victim = min((f for f in self._flows.values() if f.peer == peer),
                         key=lambda f: f.last_active)
            self._remove(victim)
            out.append(victim)
        if self.max_flows and len(self._flows) >= self.max_flows:
            victim = min(self._flows.values(), key=lambda f: f.last_active)
            self._remove(victim)
            out.append(victim)
        self.evicted += len(out)
        return out

    def add(self, flow: F, now: float) -> None:
        """Insert a flow; call `make_room` first so the caps hold."""
        self._flows[flow.key] = flow
        self._per_peer[flow.peer] = self._per_peer.get(flow.peer, 0) + 1
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
        if not self._flows:
            self._next_sweep = None

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
