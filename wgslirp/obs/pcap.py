"""Packet capture: the tunnel's plaintext IP, both directions, as a classic pcap file.

`WG_PCAP=path` makes ingress, the one process that sees every packet in the clear, record
what it decrypted from peers and what it is about to encrypt for them. The format is the
classic libpcap one (magic 0xa1b2c3d4, microsecond timestamps) with link type
LINKTYPE_RAW (101), whose records start at the IP header, IPv4 or IPv6 (readers tell them
apart by the version nibble): a tunnel has no link layer, and every tool (tcpdump, tshark,
Wireshark, scapy) reads this format. pcapng would say more
(interfaces, comments) but costs more per record and nothing here needs it.

Why it is shaped the way it is:

- **Zero cost when off.** Nothing in this module runs unless a capture is open; ingress
  chooses its code path once at start (`tap` wraps the two functions that see plaintext).
- **The data path never waits on the disk per packet.** A record is one 16-byte header
  and the packet appended to a memory buffer. The buffer is written when it passes
  `flush_bytes`, once a second from the event loop's timer, and at close, so a busy
  tunnel costs one `write` per few hundred packets and an idle one none. A packet that
  would grow the buffer past `max_buffer` (the disk stopped keeping up) is dropped from
  the capture and counted, never queued without bound.
- **Bounded disk use.** A file grows to at most `max_bytes` (64 MiB by default); then it
  becomes `path.1`, the old `path.1` becomes `path.2`, and so on up to `keep` (2) rotated
  files, so a capture left on holds at most (keep + 1) * max_bytes (192 MiB).
- **Every start begins a new file**, rotating a non-empty one away: a restarted ingress
  must not append to a file whose last record a crash may have cut short, nor destroy the
  capture of what led to the crash.
- **Files are created mode 0600**: they hold decrypted traffic.
- **Timestamps without a clock call per packet.** The event loop's `now` is monotonic;
  the offset to wall-clock time is taken at open and refreshed on every timer tick, so a
  record costs an addition, not a `time.time()`.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("wgslirp.pcap")

MAGIC = 0xA1B2C3D4
VERSION = (2, 4)
LINKTYPE_RAW = 101
SNAPLEN = 65535
MAX_FILE_BYTES = 64 << 20
KEEP_FILES = 2
FLUSH_INTERVAL = 1.0  # seconds between timer flushes while something is buffered
FLUSH_BYTES = 256 << 10  # write as soon as this much is buffered
MAX_BUFFER = 8 << 20  # beyond this the disk is not keeping up: drop from the capture

GLOBAL_HEADER = struct.Struct("<IHHiIII")  # written in our byte order; readers detect it
RECORD_HEADER = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len

Buf = TypeVar("Buf", bound=bytes | bytearray | memoryview)
A = TypeVar("A")
X = TypeVar("X")
R = TypeVar("R")


def global_header(snaplen: int = SNAPLEN, linktype: int = LINKTYPE_RAW) -> bytes:
    """The 24-byte file header: magic, version 2.4, GMT offset 0, accuracy 0."""
    return GLOBAL_HEADER.pack(MAGIC, VERSION[0], VERSION[1], 0, 0, snaplen, linktype)


class PcapWriter:
    """A size-capped, rotating, buffered pcap writer driven by an event loop.

    It is also a loop timer (`get_timer`/`handle_timer`), which is how buffered records
    reach the disk within about a second without any thread.
    """

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int = MAX_FILE_BYTES,
        keep: int = KEEP_FILES,
        flush_interval: float = FLUSH_INTERVAL,
        flush_bytes: int = FLUSH_BYTES,
        max_buffer: int = MAX_BUFFER,
        snaplen: int = SNAPLEN,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < GLOBAL_HEADER.size + RECORD_HEADER.size + 20:
            raise ValueError(f"max_bytes {max_bytes} cannot hold even one packet")
        if keep < 0:
            raise ValueError("keep must be >= 0")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.flush_interval = flush_interval
        self.flush_bytes = flush_bytes
        self.max_buffer = max_buffer
        self.snaplen = snaplen
        self._wall = wall_clock
        self._clock = clock
        self._offset = 0.0
        self._buf = bytearray()
        self._size = 0  # bytes of the current file, buffered ones included
        self._deadline: float | None = None
        self._fd = -1
        self.packets = 0
        self.dropped = 0
        self.write_errors = 0
        self.rotations = 0
        self._sync_clock()
        self._open(rotate_existing=True)

    # ------------------------------------------------------------------ hot path

    def write(self, pkt: bytes | bytearray | memoryview, n: int, now: float) -> None:
        """Record the first `n` bytes of `pkt`, seen at loop time `now` (monotonic)."""
        cap = n if n <= self.snaplen else self.snaplen
        rec = RECORD_HEADER.size + cap
        if self._size + rec > self.max_bytes and self._size > GLOBAL_HEADER.size:
            self._rotate()  # a record larger than a whole file still gets one of its own
        buf = self._buf
        if len(buf) + rec > self.max_buffer:
            self.dropped += 1
            return
        ts = now + self._offset
        sec = int(ts)
        buf += RECORD_HEADER.pack(sec, int((ts - sec) * 1e6), cap, n)
        buf += pkt[:cap]
        self._size += rec
        self.packets += 1
        if len(buf) >= self.flush_bytes:
            self.flush()
        elif self._deadline is None:
            self._deadline = now + self.flush_interval

    def tap(self, fn: Callable[[A, Buf, int, float, X], R]) -> Callable[[A, Buf, int, float, X], R]:
        """Wrap a `fn(peer, packet, length, now, extra)` so every packet it is given is
        recorded first. Ingress wraps its decrypted-packet delivery and `Device.encrypt`
        with it, once, at start: with no capture the unwrapped functions run and the
        data path pays nothing at all."""
        write = self.write

        def tapped(a: A, pkt: Buf, n: int, now: float, x: X) -> R:
            write(pkt, n, now)
            return fn(a, pkt, n, now, x)

        return tapped

    # ------------------------------------------------------------ loop timer

    def get_timer(self) -> float | None:
        """Next flush while anything is buffered; None keeps an idle router asleep."""
        return self._deadline

    def handle_timer(self, now: float) -> None:
        self._sync_clock(now)
        self.flush()

    # --------------------------------------------------------------- file I/O

    def flush(self) -> None:
        """Write everything buffered. A failing disk costs the capture, never the router:
        the records are dropped and counted, and only the first error is logged."""
        self._deadline = None
        buf = self._buf
        if not buf or self._fd < 0:
            return
        view = memoryview(buf)
        try:
            done = 0
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            self.write_errors += 1
            if self.write_errors == 1:
                log.error(
                    "pcap: cannot write %s: %s; dropping captured packets",
                    self.path,
                    exc.strerror or exc,
                )
        finally:
            view.release()
            buf.clear()

    def close(self) -> None:
        """Flush and close; safe to call twice."""
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1
            log.info(
                "pcap: %d packets captured to %s (%d dropped, %d rotations)",
                self.packets,
                self.path,
                self.dropped,
                self.rotations,
            )

    def stats(self) -> dict[str, int]:
        return {
            "pcap_packets": self.packets,
            "pcap_dropped": self.dropped,
            "pcap_write_errors": self.write_errors,
            "pcap_rotations": self.rotations,
        }

    def _sync_clock(self, now: float | None = None) -> None:
        self._offset = self._wall() - (self._clock() if now is None else now)

    def _open(self, rotate_existing: bool) -> None:
        if rotate_existing:
            try:
                if os.path.getsize(self.path) > 0:
                    self._shift_old_files()
            except OSError:
                pass  # nothing there yet
        # Decrypted traffic: never through a symlink, never into a file someone else owns
        # (it would keep that owner and mode), always mode 0600.
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        self._fd = os.open(self.path, flags, 0o600)
        try:
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, f"{self.path} is not a regular file")
            if st.st_nlink != 1:
                raise OSError(
                    errno.EPERM,
                    f"{self.path} has other hard links; refusing to "
                    "write decrypted traffic into a file reachable by other names",
                )
            if st.st_uid != os.geteuid():
                raise OSError(
                    errno.EPERM,
                    f"{self.path} belongs to uid {st.st_uid}, not to "
                    "this process; refusing to write decrypted traffic into it",
                )
            os.fchmod(self._fd, 0o600)
            os.ftruncate(self._fd, 0)  # only once the file is known to be ours
            os.set_blocking(self._fd, True)
        except OSError:
            os.close(self._fd)
            self._fd = -1
            raise
        # The header goes out at once, so even a capture that saw nothing is a valid file.
        header = global_header(self.snaplen)
        try:
            os.write(self._fd, header)
        except OSError:
            os.close(self._fd)
            self._fd = -1
            raise
        self._size = len(header)

    def _shift_old_files(self) -> None:
        if self.keep == 0:
            return  # O_TRUNC on reopen discards it
        for i in range(self.keep, 1, -1):
            older = f"{self.path}.{i - 1}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{i}")
        os.replace(self.path, f"{self.path}.1")

    def _rotate(self) -> None:
        """The current file is full: close it, shift the old ones, start a new file."""
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.rotations += 1
        try:
            self._shift_old_files()
            self._open(rotate_existing=False)
        except OSError as exc:
            # Keep counting packets as dropped rather than failing the data path.
            self.write_errors += 1
            log.error("pcap: cannot rotate %s: %s; capture stopped", self.path, exc.strerror or exc)
            self._size = 0
            self.max_buffer = 0


def open_capture(path: str | None) -> PcapWriter | None:
    """A writer for `WG_PCAP`, or None when it is unset or cannot be opened.

    A capture is a diagnostic: failing to open it is logged as an error and the router
    runs without it rather than not at all (ingress would otherwise crash-loop).
    """
    if not path:
        return None
    try:
        writer = PcapWriter(path)
    except OSError as exc:
        log.error("pcap: cannot open %s: %s; running without a capture", path, exc.strerror or exc)
        return None
    log.info(
        "pcap: writing plaintext packets to %s (%d MiB per file, %d rotated files kept)",
        path,
        writer.max_bytes >> 20,
        writer.keep,
    )
    return writer
