"""What the load test's guest and host servers agree on, so that every byte is checked.

Both ends draw from one deterministic pattern (a prime period, so a misplaced segment
cannot line up by accident); TCP requests name an offset and a size in it, UDP requests
carry (flow, sequence) and a slice chosen by both.  The result the guest reports is plain
JSON, one stats dict per kind of flow (:func:`new_stats`).
"""

from __future__ import annotations

import random
import struct
from typing import Any

PATTERN_SEED = 0x5EED
PERIOD = 1_048_573  # a prime: a misplaced segment cannot line up with the pattern by accident
MAX_CHUNK = 256 * 1024  # largest piece compared or sent at once; the pattern is padded by it
UDP_HEADER = struct.Struct(">II")  # flow, sequence
KINDS = ("tcp echo", "tcp download", "tcp upload", "udp echo")
TCP_MODES = ("echo", "download", "upload")
MAX_TURNS = 100_000_000  # hard cap on event-loop turns anywhere in the load test


def make_pattern() -> bytes:
    """The byte stream every flow draws from: PERIOD random bytes, padded so any slice of
    at most MAX_CHUNK bytes starting below PERIOD is contiguous."""
    pat = random.Random(PATTERN_SEED).randbytes(PERIOD)
    return pat + pat[:MAX_CHUNK]


def count_corrupt(expected: bytes | memoryview, got: bytes | memoryview) -> int:
    """How many bytes of ``got`` differ from ``expected`` (a length difference counts too)."""
    e, g = bytes(expected), bytes(got)
    if e == g:
        return 0
    n = min(len(e), len(g))
    extra = abs(len(e) - len(g))
    if n == 0:
        return extra
    x = (int.from_bytes(e[:n], "big") ^ int.from_bytes(g[:n], "big")).to_bytes(n, "big")
    return extra + n - x.count(0)


class StreamVerifier:
    """Checks a stream, piece by piece, against ``size`` bytes of the pattern from ``offset``.

    ``feed`` returns the corrupt bytes in the piece; bytes past ``size`` are all corrupt.
    """

    def __init__(self, pattern: bytes, offset: int, size: int) -> None:
        self.pat = pattern
        self.offset = offset % PERIOD
        self.size = size
        self.pos = 0
        self.corrupt = 0

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        mv = memoryview(data)
        bad = i = 0
        for _ in range(len(mv) // MAX_CHUNK + 2):
            if i >= len(mv):
                break
            if self.pos >= self.size:
                bad += len(mv) - i
                self.pos += len(mv) - i
                break
            n = min(len(mv) - i, self.size - self.pos, MAX_CHUNK)
            start = (self.offset + self.pos) % PERIOD
            got = bytes(mv[i : i + n])
            if got != self.pat[start : start + n]:
                bad += count_corrupt(self.pat[start : start + n], got)
            i += n
            self.pos += n
        self.corrupt += bad
        return bad

    @property
    def complete(self) -> bool:
        return self.pos == self.size


def udp_payload(pattern: bytes, flow: int, seq: int, size: int) -> bytes:
    """Request ``seq`` of UDP flow ``flow``: (flow, seq) then pattern bytes, ``size`` in all."""
    start = (flow * 65_537 + seq * 131) % PERIOD
    return UDP_HEADER.pack(flow, seq) + pattern[start : start + size - UDP_HEADER.size]


def udp_reply_status(
    pattern: bytes, flow: int, size: int, data: bytes | memoryview
) -> tuple[str, int | None]:
    """("ok", seq) if ``data`` is exactly request ``seq`` of ``flow``, else ("corrupt", seq or
    None when the header itself is unusable)."""
    if len(data) < UDP_HEADER.size:
        return "corrupt", None
    f, seq = UDP_HEADER.unpack_from(data)
    if f != flow:
        return "corrupt", None
    if len(data) != size or bytes(data) != udp_payload(pattern, flow, seq, size):
        return "corrupt", seq
    return "ok", seq


def new_stats() -> dict[str, Any]:
    return {
        "started": 0,
        "ok": 0,
        "failed": 0,
        "bytes": 0,
        "connect_fail": 0,
        "reset": 0,
        "corrupt": 0,
        "timeout": 0,
        "t_last": 0.0,
        "sent": 0,
        "replies": 0,
        "lost": 0,
        "late": 0,
        "dup": 0,
        "send_errors": 0,
        "details": {},
    }


def errors_of(st: dict[str, Any]) -> int:
    return int(st["connect_fail"] + st["reset"] + st["corrupt"] + st["timeout"] + st["send_errors"])
