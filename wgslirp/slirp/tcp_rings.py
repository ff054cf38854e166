"""Ring memory for TCP connections: lent while a connection holds bytes, from shared arenas.

Why. A ring per connection as an anonymous mmap of its own is one kernel mapping, two per
connection, and Linux's default vm.max_map_count (65,530) then stops a process near 32,000
connections (mmap fails with ENOMEM). Here a connection holds a ring only while bytes wait
in it (an idle connection holds none), and the rings of one size are slots of a few large
private mappings (ARENA_BYTES each), so the mappings a process needs grow with the data in
flight, not with the number of connections.

Pages. A mapping commits pages only when a slot is written, so a ring that is lent but
little used still costs only what it holds. A slot handed back keeps its pages while few
are free (KEEP_WARM): request/response traffic takes and returns a ring per message, and
reusing a warm slot costs no page fault. Beyond that the slot's pages go back to the kernel
(madvise DONTNEED: ~4 µs for a message-sized ring, ~0.4 ms for a full 1 MiB one, measured
here), so the memory of a burst of busy connections is returned once they go quiet.

Reuse without zeroing is safe because an endpoint reads only ring ranges it wrote itself:
[SND.UNA, end of queued data) of the send ring, [read, RCV.NXT) plus the recorded
out-of-order ranges of the receive ring.
"""

from __future__ import annotations

import mmap
from typing import Final

ARENA_BYTES: Final = 64 << 20  # one mapping holds this much of rings of one size
KEEP_WARM: Final = 16  # free slots per size that keep their pages
NO_RING: Final = -1  # a connection's slot number while it holds no ring
EMPTY: Final = memoryview(bytearray(0))  # ...and its ring view meanwhile

_PAGE = mmap.PAGESIZE


class _Arena:
    """Slots of one ring size, `per_map` to a mapping, at page-aligned strides."""

    __slots__ = ("cold", "lent", "maps", "per_map", "size", "stride", "views", "warm")

    def __init__(self, size: int) -> None:
        self.size = size
        self.stride = -(-size // _PAGE) * _PAGE
        self.per_map = max(1, ARENA_BYTES // self.stride)
        self.maps: list[mmap.mmap] = []
        self.views: list[memoryview] = []  # slot number -> its ring view
        self.warm: list[int] = []  # free slots that keep their pages (at most KEEP_WARM)
        self.cold: list[int] = []  # free slots without pages
        self.lent = 0

    def grow(self) -> None:
        m = mmap.mmap(-1, self.per_map * self.stride, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        mv = memoryview(m)
        first = len(self.views)
        self.maps.append(m)
        for k in range(self.per_map):
            off = k * self.stride
            self.views.append(mv[off : off + self.size])
        # Popped from the end: the lowest slot first.
        self.cold.extend(range(first + self.per_map - 1, first - 1, -1))


class RingPool:
    """Every ring of one process (the worker's connections share it)."""

    __slots__ = ("_arenas", "taken", "trimmed")

    def __init__(self) -> None:
        self._arenas: dict[int, _Arena] = {}
        self.taken = 0  # rings lent, ever
        self.trimmed = 0  # slots whose pages were given back to the kernel

    def take(self, size: int) -> tuple[int, memoryview]:
        """A ring of `size` bytes: (slot number, view). Its content is whatever the last
        holder left (see the module docstring)."""
        arena = self._arenas.get(size)
        if arena is None:
            arena = self._arenas[size] = _Arena(max(size, 1))
        if arena.warm:
            slot = arena.warm.pop()
        else:
            if not arena.cold:
                arena.grow()
            slot = arena.cold.pop()
        arena.lent += 1
        self.taken += 1
        return slot, arena.views[slot]

    def give(self, size: int, slot: int) -> None:
        arena = self._arenas[size]
        if len(arena.warm) < KEEP_WARM:
            arena.warm.append(slot)
        else:
            m = arena.maps[slot // arena.per_map]
            m.madvise(mmap.MADV_DONTNEED, (slot % arena.per_map) * arena.stride, arena.stride)
            arena.cold.append(slot)
            self.trimmed += 1
        arena.lent -= 1

    def lent(self) -> int:
        return sum(a.lent for a in self._arenas.values())

    def mappings(self) -> int:
        """Kernel mappings the rings use (what counts against vm.max_map_count)."""
        return sum(len(a.maps) for a in self._arenas.values())


POOL: Final = RingPool()
"""The process's pool; each worker process has its own copy (rings are never shared)."""
