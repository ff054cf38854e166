"""The open TCP connections of one worker, kept where its replacement can read them.

A worker that dies (SIGKILL, a crash, the OOM killer) takes its connection state with it;
the guests' side of those connections knows nothing and, for a download that waits for
data, waits until the application gives up (issue #10: 60 s in the test). Its replacement
inherits this block (the supervisor creates it before forking, like the rings) and finds the
tuples the dead worker had open, so it can make each guest reset its end at once.

Writes happen when a connection opens or closes, never per packet. An entry holds what a
replacement needs to address the guest: the peer index, both addresses and ports, and the
initial sequence numbers (a probe below the guest's window makes the guest answer with an
ACK, and the RST for that ACK carries exactly the sequence number the guest accepts).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from wgslirp.shm.ring import anonymous_block

# Addresses are kept as two 64-bit halves so one row holds an IPv4 (high half 0) or an IPv6
# address; no IPv6 address the router carries is below 2**32 (docs/architecture.md, "Both
# families"), so the value alone says which family it is. 44 bytes a row instead of 28.
_DTYPE = np.dtype(
    [
        ("used", "<u4"),
        ("peer", "<u4"),
        ("guest_hi", "<u8"),
        ("guest_lo", "<u8"),
        ("remote_hi", "<u8"),
        ("remote_lo", "<u8"),
        ("gport", "<u2"),
        ("rport", "<u2"),
        ("iss", "<u4"),  # our initial sequence number toward the guest
        ("irs", "<u4"),  # the guest's
    ]
)


# One row as `struct` writes it (the dtype is packed, little-endian): numpy's conversion of
# a tuple into a structured row took 0.65 us in a loop and ~19 us in a worker's turn on a
# cold CPU; pack_into 0.29 (clearing `used`: 0.63 -> 0.10).
_ROW = struct.Struct("<IIQQQQHHII")
_USED = struct.Struct("<I")
assert _ROW.size == _DTYPE.itemsize


class Entry(NamedTuple):
    peer: int
    guest: int
    gport: int
    remote: int
    rport: int
    iss: int
    irs: int


class FlowRegistry:
    """A fixed table of open connections; `add` returns a slot (or -1 when full)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._shm = anonymous_block(self.capacity * _DTYPE.itemsize)
        buf = self._shm.buf
        assert buf is not None
        self._rows = np.ndarray((self.capacity,), dtype=_DTYPE, buffer=buf)
        self._buf = buf
        self._rows["used"] = 0
        self._free = list(range(self.capacity - 1, -1, -1))
        self.full = 0  # adds refused: those connections cannot be reset by a replacement

    def adopt(self) -> list[Entry]:
        """In a (re)started worker: the connections a predecessor left open, which are now
        this worker's to reset; the table is then empty and every slot free."""
        rows = self._rows
        used = np.flatnonzero(rows["used"])
        left = []
        for i in used:
            row = rows[i]
            left.append(
                Entry(
                    int(row["peer"]),
                    (int(row["guest_hi"]) << 64) | int(row["guest_lo"]),
                    int(row["gport"]),
                    (int(row["remote_hi"]) << 64) | int(row["remote_lo"]),
                    int(row["rport"]),
                    int(row["iss"]),
                    int(row["irs"]),
                )
            )
        self.clear()
        return left

    def add(self, e: Entry) -> int:
        return self.record(*e)

    def record(
        self, peer: int, guest: int, gport: int, remote: int, rport: int, iss: int, irs: int
    ) -> int:
        """One connection opened; its slot (for `remove`), or -1 when the table is full."""
        if not self._free:
            self.full += 1
            return -1
        slot = self._free.pop()
        m = 0xFFFFFFFFFFFFFFFF
        _ROW.pack_into(
            self._buf, slot * _ROW.size,
            1, peer, guest >> 64, guest & m, remote >> 64, remote & m, gport, rport, iss, irs,
        )  # fmt: skip
        return slot

    def remove(self, slot: int) -> None:
        if slot >= 0:
            _USED.pack_into(self._buf, slot * _ROW.size, 0)
            self._free.append(slot)

    def clear(self) -> None:
        """Every connection closed at once (a worker on its way out)."""
        self._rows["used"] = 0
        self._free = list(range(self.capacity - 1, -1, -1))

    def __len__(self) -> int:
        return self.capacity - len(self._free)

    def close(self) -> None:
        self._rows = np.ndarray((0,), dtype=_DTYPE)
        self._buf = memoryview(b"")
        try:
            self._shm.close()
        except BufferError:
            pass
