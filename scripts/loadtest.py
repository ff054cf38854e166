#!/usr/bin/env python3
"""Load test: concurrent TCP and UDP flows through a real WireGuard tunnel, every byte verified.

Path: a guest program in a network namespace -> TUN -> wireguard-go -> UDP 127.0.0.1 ->
wgslirp -> host sockets -> TCP echo/source/sink and UDP echo servers on 127.0.0.1, which
the guest reaches through the gateway address (10.77.0.1).  Needs root, /dev/net/tun,
wireguard-go, wg and ip (``--router none`` needs none of them).

Where the router comes from:

- ``--router self`` (default): start ``python -m wgslirp`` with a fresh state directory on a
  free loopback port (``--workers`` sets PROCESSOR_WORKERS), then a wireguard-go client in
  a namespace of our own from the client configuration it prints.  Its exit counters are
  checked at the end (internal errors fail the run).
- ``--endpoint 127.0.0.1:PORT --client-config FILE``: an existing router, through a client
  built from a wg-quick file (only loopback endpoints are allowed on this machine).
- ``--router none``: no tunnel; the same guest program against 127.0.0.1 (a baseline, and a
  check of this script itself without root).

What the guest does (all flows at once, one event loop, bounded in count and time):

- ``--tcp-flows`` TCP flows, kinds taken round-robin from ``--tcp-mix``:
  ``echo`` sends ``--tcp-bytes`` of a deterministic pattern in ``--tcp-chunk`` requests and
  verifies each echoed chunk byte for byte; ``download`` asks the source server for
  ``--tcp-bytes`` at a flow-specific offset of the pattern and verifies every byte;
  ``upload`` sends them to the sink, which verifies every byte and answers with a verdict.
- ``--udp-flows`` UDP flows, each ``--udp-count`` request/response datagrams with sequence
  numbers, ``--udp-window`` in flight; replies are verified byte for byte.  A request
  without a reply after ``--udp-timeout`` is lost (counted apart from corruption).
- With ``--duration S`` every TCP slot starts a new flow when one ends, and UDP flows keep
  sending, until S seconds have passed.

It prints a progress line per second (relayed live to stderr), then a summary table:
flows, bytes, throughput, latency percentiles and errors per kind of flow.  The exit status
is 0 only when nothing failed: no connect failure, reset, corrupt byte or timeout, UDP loss
within ``--max-udp-loss`` percent, every flow completed, and (``--router self``) the
router stopped cleanly without internal errors.  1 = errors, 2 = could not run, 130 =
interrupted.  With ``--router self`` the router's memory (PSS over its processes) is sampled
every second and reported; ``--max-mem-growth MIB`` turns that into a leak check that fails
a soak whose memory grew by more than MIB from the second to the last quarter (medians).

    python scripts/loadtest.py                          # 20 TCP x 256 KiB, 10 UDP x 200
    python scripts/loadtest.py --tcp-flows 200 --tcp-bytes 1M --duration 30 --plot lt.png
    python scripts/loadtest.py --endpoint 127.0.0.1:51820 --client-config client.conf
    python scripts/loadtest.py --router none --json baseline.json
    python scripts/loadtest.py --workers 2 --tcp-flows 100 --tcp-bytes 64K --duration 300 \\
        --max-mem-growth 8                              # soak with a leak check

The same file is the guest program (``loadtest.py guest CONFIG-JSON``) and holds the host
servers, so both ends agree on the byte pattern.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import math
import os
import random
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from wgslirp_testkit.bench import start_controller, table
from wgslirp_testkit.hostservers import ForkedServer
from wgslirp_testkit.ports import free_udp_port
from wgslirp_testkit.proc import die_with_parent, raise_nofile, spawn, stop_and_close, stop_process
from wgslirp_testkit.router import (
    REPO,
    RouterProcess,
    base_env,
    client_from_router_output,
    router_cmd,
    summed_exit_counters,
)
from wgslirp_testkit.sampling import MemSampler, drops_between, udp_socket_drops
from wgslirp_testkit.wgclient import WgClient, grow_client_buffers, wait_tunnel

SCRIPT = str(Path(__file__).resolve())

PATTERN_SEED = 0x5EED
PERIOD = 1_048_573  # a prime: a misplaced segment cannot line up with the pattern by accident
MAX_CHUNK = 256 * 1024  # largest piece compared or sent at once; the pattern is padded by it
UDP_HEADER = struct.Struct(">II")  # flow, sequence
KINDS = ("tcp echo", "tcp download", "tcp upload", "udp echo")
TCP_MODES = ("echo", "download", "upload")
RESERVOIR = 100_000  # latency samples kept per kind (uniform sample beyond that)
MAX_TURNS = 100_000_000  # hard cap on event-loop turns anywhere in this file
DEFAULT_GATEWAY = "10.77.0.1"


# =========================================================================== shared


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


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(k, len(sorted_values)) - 1]


def _errname(exc: OSError | int) -> str:
    code = exc if isinstance(exc, int) else exc.errno
    if code is None:
        return type(exc).__name__
    return errno.errorcode.get(code, str(code))


# =========================================================================== host servers
# One forked process on 127.0.0.1: TCP echo, TCP source ("OFFSET SIZE\n" -> that many pattern
# bytes), TCP sink ("OFFSET SIZE\n" + data -> "OK n\n" or "BAD n corrupt\n") and UDP echo.


class _HostConn:
    ECHO_HIGH_WATER = 4 << 20  # stop reading while this much echo is unsent

    def __init__(self, srv: _HostLoop, sock: socket.socket, mode: str) -> None:
        self.srv, self.sock, self.mode = srv, sock, mode
        self.out = bytearray()
        self.hdr = bytearray()
        self.eof = False
        self.offset = self.size = self.pos = 0
        self.verifier: StreamVerifier | None = None
        self.header_done = mode == "echo"
        self.first = True  # for --inject-corruption
        self.events = selectors.EVENT_READ
        srv.sel.register(sock, self.events, self)

    def _interest(self, events: int) -> None:
        if events != self.events:
            self.events = events
            self.srv.sel.modify(self.sock, events, self)

    def close(self) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.srv.sel.unregister(self.sock)
        self.sock.close()

    def handle(self, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ:
                self._read()
            if self.sock.fileno() >= 0 and mask & selectors.EVENT_WRITE:
                self._write()
        except (BlockingIOError, InterruptedError):
            pass
        except (OSError, ValueError):  # a reset, or a malformed request line
            self.srv.counters[2] += 1
            self.close()

    def _header(self, data: bytes) -> bytes | None:
        """Collect the request line; the bytes after it, or None while incomplete."""
        self.hdr += data
        if b"\n" not in self.hdr:
            if len(self.hdr) > 64:
                raise OSError(errno.EPROTO, "bad request line")
            return None
        line, rest = bytes(self.hdr).split(b"\n", 1)
        offset, size = (int(x) for x in line.split())
        self.offset, self.size, self.header_done = offset % PERIOD, size, True
        if self.mode == "sink":
            self.verifier = StreamVerifier(self.srv.pat, offset, size)
        else:
            self._interest(selectors.EVENT_WRITE)
        return rest

    def _read(self) -> None:
        data = self.sock.recv(MAX_CHUNK)
        if not data:
            self.eof = True
            if self.mode == "sink" and self.verifier is not None:
                v = self.verifier
                ok = v.pos == v.size and v.corrupt == 0
                self.sock.send(b"OK %d\n" % v.pos if ok else b"BAD %d %d\n" % (v.pos, v.corrupt))
                self.close()
            elif self.mode != "echo" or not self.out:
                self.close()
            else:
                self._interest(selectors.EVENT_WRITE)
            return
        if not self.header_done:
            rest = self._header(data)
            if rest is None:
                return
            data = rest
        if self.mode == "echo":
            if self.srv.inject and self.first and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
                self.first = False
            self.out += data
            self._interest(
                selectors.EVENT_WRITE
                | (selectors.EVENT_READ if len(self.out) < self.ECHO_HIGH_WATER else 0)
            )
        elif self.mode == "sink" and self.verifier is not None:
            if self.srv.inject and self.first and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
                self.first = False
            self.verifier.feed(data)
        # a source ignores anything after its request line

    def _write(self) -> None:
        if self.mode == "echo":
            if self.out:
                sent = self.sock.send(self.out)
                del self.out[:sent]
            if not self.out:
                if self.eof:
                    self.close()
                else:
                    self._interest(selectors.EVENT_READ)
            elif len(self.out) < self.ECHO_HIGH_WATER and not self.eof:
                self._interest(selectors.EVENT_READ | selectors.EVENT_WRITE)
            return
        if self.mode == "source" and self.header_done:
            for _ in range(8):
                if self.pos >= self.size:
                    break
                start = (self.offset + self.pos) % PERIOD
                n = min(MAX_CHUNK, self.size - self.pos)
                if self.srv.inject and self.first:
                    sent = self.sock.send(bytes([self.srv.pat[start] ^ 0xFF]))
                    self.first = False
                else:
                    sent = self.sock.send(self.srv.pmv[start : start + n])
                self.pos += sent
            if self.pos >= self.size:
                self.close()


class _HostLoop:
    def __init__(
        self, listeners: dict[str, socket.socket], udp: socket.socket, inject: bool, counters: Any
    ) -> None:
        self.sel = selectors.DefaultSelector()
        self.pat = make_pattern()
        self.pmv = memoryview(self.pat)
        self.inject = inject
        self.counters = counters  # accepted, udp datagrams, errors
        self.udp = udp
        for mode, ls in listeners.items():
            self.sel.register(ls, selectors.EVENT_READ, mode)
        self.sel.register(udp, selectors.EVENT_READ, "udp")
        self.ubuf = bytearray(65535)
        self.umv = memoryview(self.ubuf)

    def run(self, lifetime: float) -> None:
        deadline = time.monotonic() + lifetime
        for _ in range(MAX_TURNS):
            if time.monotonic() >= deadline:
                break
            for key, mask in self.sel.select(0.5):
                data = key.data
                if isinstance(data, _HostConn):
                    data.handle(mask)
                elif data == "udp":
                    self._udp()
                else:
                    self._accept(key.fileobj, data)  # type: ignore[arg-type]

    def _accept(self, ls: socket.socket, mode: str) -> None:
        for _ in range(64):
            try:
                conn, _ = ls.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters[2] += 1
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.counters[0] += 1
            _HostConn(self, conn, mode)

    def _udp(self) -> None:
        for _ in range(256):
            try:
                n, addr = self.udp.recvfrom_into(self.ubuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters[2] += 1
                return
            self.counters[1] += 1
            if (
                self.inject
                and n >= UDP_HEADER.size
                and UDP_HEADER.unpack_from(self.ubuf)[1] % 10 == 0
            ):
                self.ubuf[n - 1] ^= 0xFF
            try:
                self.udp.sendto(self.umv[:n], addr)
            except OSError:
                self.counters[2] += 1


def _host_serve(
    counters: Any,
    listeners: dict[str, socket.socket],
    udp: socket.socket,
    inject: bool,
    lifetime: float,
) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller stops us, by PID
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    raise_nofile()
    _HostLoop(listeners, udp, inject, counters).run(lifetime)


class HostServers(ForkedServer):
    """TCP echo/source/sink and UDP echo on 127.0.0.1, in a forked process.

    ``inject`` corrupts on purpose (the first byte of every echo, source and sink stream, the
    reply to every 10th UDP request of a flow) so a run can prove its verification catches it.
    """

    def __init__(self, inject: bool = False, lifetime: float = 7500.0) -> None:
        self.socks: list[socket.socket] = []
        try:
            listeners: dict[str, socket.socket] = {}
            for mode in ("echo", "source", "sink"):
                ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self.socks.append(ls)
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                ls.bind(("127.0.0.1", 0))
                ls.listen(4096)
                ls.setblocking(False)
                listeners[mode] = ls
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.socks.append(udp)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                udp.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            udp.bind(("127.0.0.1", 0))
            udp.setblocking(False)
        except BaseException:
            self._close_socks()
            raise
        self.ports = {mode: ls.getsockname()[1] for mode, ls in listeners.items()}
        self.ports["udp"] = udp.getsockname()[1]
        super().__init__(_host_serve, (listeners, udp, inject, lifetime), "loadtest-hostservers", 3)

    def _close_socks(self) -> None:
        for s in self.socks:
            s.close()

    def info(self) -> dict[str, int]:
        c = self.counters
        return {"tcp_accepted": int(c[0]), "udp_datagrams": int(c[1]), "errors": int(c[2])}


# =========================================================================== guest side
# Runs inside the namespace (or on the host with --router none).  Stdlib only.  Progress
# goes to stderr once a second; the result is one JSON line on stdout.


class Reservoir:
    """At most RESERVOIR values, a uniform sample of everything added."""

    def __init__(self, seed: int) -> None:
        self.values: list[float] = []
        self.n = 0
        self.rng = random.Random(seed)

    def add(self, v: float) -> None:
        self.n += 1
        if len(self.values) < RESERVOIR:
            self.values.append(v)
        else:
            j = self.rng.randrange(self.n)
            if j < RESERVOIR:
                self.values[j] = v


def _new_stats() -> dict[str, Any]:
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


def _errors_of(st: dict[str, Any]) -> int:
    return int(st["connect_fail"] + st["reset"] + st["corrupt"] + st["timeout"] + st["send_errors"])


def _release(flow: TcpFlow | UdpFlow, now: float) -> bool:
    """Close a guest flow's socket once; False if it was closed already."""
    if flow.closed:
        return False
    flow.closed = True
    with contextlib.suppress(KeyError, ValueError):
        flow.g.sel.unregister(flow.sock)
    flow.sock.close()
    flow.st["t_last"] = now - flow.g.t0
    return True


class TcpFlow:
    def __init__(self, g: Guest, slot: int, mode: str, now: float) -> None:
        self.g, self.slot, self.mode = g, slot, mode
        g.serial += 1
        self.offset = (g.serial * 7_919 + slot * 104_729) % PERIOD
        self.size: int = g.cfg["tcp_bytes"]
        self.kind = "tcp " + mode
        self.st = g.stats[self.kind]
        self.st["started"] += 1
        self.verifier = StreamVerifier(g.pat, self.offset, self.size)
        self.sent = self.recvd = self.chunk_end = 0
        self.corrupt = 0
        self.t_start = self.t_progress = self.t_mark = now
        self.out = b""
        self.reply = b""
        self.state = "connect"
        self.events = selectors.EVENT_WRITE
        self.closed = False
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock = s
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        port = g.cfg["ports"][{"echo": "echo", "download": "source", "upload": "sink"}[mode]]
        err = s.connect_ex((g.cfg["host"], port))
        g.active.add(self)
        if err not in (0, errno.EINPROGRESS):
            self.fail("connect_fail", _errname(err), now)
            return
        g.sel.register(s, self.events, self)

    def _interest(self, events: int) -> None:
        if events != self.events:
            self.events = events
            self.g.sel.modify(self.sock, events, self)

    def _close(self, now: float, failed: bool) -> None:
        if _release(self, now):
            self.g.flow_done(self, now, failed)

    def fail(self, what: str, detail: str, now: float) -> None:
        if self.closed:
            return
        self.st[what] += 1
        self.st["failed"] += 1
        key = f"{what}: {detail}"
        self.st["details"][key] = self.st["details"].get(key, 0) + 1
        self._close(now, True)

    def finish(self, now: float) -> None:
        self.st["ok" if self.corrupt == 0 else "failed"] += 1
        self._close(now, self.corrupt != 0)

    def check(self, now: float) -> None:
        if self.closed:
            return
        if self.state == "connect" and now - self.t_start > self.g.cfg["connect_timeout"]:
            self.fail("connect_fail", "timeout", now)
        elif now - self.t_progress > self.g.cfg["stall_timeout"]:
            self.fail("timeout", f"stalled in {self.state}", now)

    def handle(self, mask: int, now: float) -> None:
        try:
            if self.state == "connect":
                err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.fail("connect_fail", _errname(err), now)
                    return
                self._connected(now)
                return
            if mask & selectors.EVENT_WRITE:
                self._write(now)
            if not self.closed and mask & selectors.EVENT_READ:
                self._read(now)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self.fail("reset", f"{_errname(exc)} in {self.state}", now)

    def _connected(self, now: float) -> None:
        self.g.connect_lat.add(now - self.t_start)
        self.t_progress = now
        if self.mode == "echo":
            self._next_chunk(now)
            return
        self.out = b"%d %d\n" % (self.offset, self.size)
        self.t_mark = now
        self.state = "request" if self.mode == "download" else "upload"
        self._write(now)

    def _next_chunk(self, now: float) -> None:
        self.chunk_end = min(self.size, self.chunk_end + self.g.cfg["tcp_chunk"])
        self.t_mark = now
        self.state = "echo"
        self._interest(selectors.EVENT_READ | selectors.EVENT_WRITE)

    def _write(self, now: float) -> None:
        g = self.g
        if self.out:
            n = self.sock.send(self.out)
            self.out = self.out[n:]
            if self.out:
                self._interest(selectors.EVENT_WRITE)
                return
            if self.mode == "download":
                self.state = "download"
                self._interest(selectors.EVENT_READ)
                return
        if self.state == "echo":
            for _ in range(16):
                if self.sent >= self.chunk_end:
                    break
                start = (self.offset + self.sent) % PERIOD
                n = self.sock.send(g.pmv[start : start + self.chunk_end - self.sent])
                self.sent += n
                self.t_progress = now
            if self.sent >= self.chunk_end:
                self._interest(selectors.EVENT_READ)
        elif self.state == "upload":
            for _ in range(16):
                if self.sent >= self.size:
                    break
                start = (self.offset + self.sent) % PERIOD
                n = self.sock.send(g.pmv[start : start + min(MAX_CHUNK, self.size - self.sent)])
                self.sent += n
                self.st["bytes"] += n
                self.t_progress = now
            if self.sent >= self.size:
                self.sock.shutdown(socket.SHUT_WR)
                self.t_mark = now
                self.state = "verdict"
                self._interest(selectors.EVENT_READ)
            else:
                self._interest(selectors.EVENT_WRITE)

    def _read(self, now: float) -> None:
        g = self.g
        if self.state == "verdict":
            data = self.sock.recv(256)
            if data:
                self.reply += data[: 256 - len(self.reply)]
                return
            self._verdict(now)
            return
        n = self.sock.recv_into(g.buf)
        if n == 0:
            if self.mode == "download" and self.recvd == self.size:
                self.finish(now)
            else:
                self.fail("reset", f"early EOF after {self.recvd} of {self.size} bytes", now)
            return
        if self.recvd == 0 and self.mode == "download":
            g.lat[self.kind].add(now - self.t_mark)
        bad = self.verifier.feed(g.mv[:n])
        self.corrupt += bad
        self.st["corrupt"] += bad
        self.recvd += n
        self.st["bytes"] += 2 * n if self.mode == "echo" else n
        self.t_progress = now
        if self.mode == "echo" and self.recvd >= self.chunk_end and self.sent >= self.chunk_end:
            g.lat[self.kind].add(now - self.t_mark)
            if self.recvd >= self.size:
                self.finish(now)
            else:
                self._next_chunk(now)

    def _verdict(self, now: float) -> None:
        m = re.fullmatch(rb"(OK|BAD) (\d+)(?: (\d+))?\n", self.reply)
        if m is None:
            self.fail("reset", "no verdict from the sink", now)
            return
        got = int(m.group(2))
        bad = abs(self.size - got) + int(m.group(3) or 0)
        if m.group(1) == b"BAD" and bad == 0:
            bad = 1
        self.corrupt += bad
        self.st["corrupt"] += bad
        self.g.lat[self.kind].add(now - self.t_mark)
        self.finish(now)


class UdpFlow:
    def __init__(self, g: Guest, idx: int) -> None:
        self.g, self.idx = g, idx
        self.st = g.stats["udp echo"]
        self.st["started"] += 1
        self.size: int = g.cfg["udp_size"]
        self.count: int = g.cfg["udp_count"]
        self.window: int = g.cfg["udp_window"]
        self.outstanding: dict[int, float] = {}
        self.lost: set[int] = set()
        self.next_seq = 0
        self.bad = 0
        self.closed = False
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock = s
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.setblocking(False)
        s.connect((g.cfg["host"], g.cfg["ports"]["udp"]))
        g.sel.register(s, selectors.EVENT_READ, self)
        g.active.add(self)

    def _more(self, now: float) -> bool:
        if self.g.t_end is not None:
            return now < self.g.t_end and self.next_seq < 0xFFFFFFFF
        return self.next_seq < self.count

    def _error(self, exc: OSError) -> None:
        self.st["send_errors"] += 1
        self.bad += 1
        key = f"send_errors: {_errname(exc)}"
        self.st["details"][key] = self.st["details"].get(key, 0) + 1

    def pump(self, now: float) -> None:
        g = self.g
        for _ in range(self.window):
            if self.closed or len(self.outstanding) >= self.window or not self._more(now):
                break
            seq = self.next_seq
            try:
                self.sock.send(udp_payload(g.pat, self.idx, seq, self.size))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ECONNREFUSED from an ICMP error: the request is gone
                self._error(exc)
                self.next_seq += 1
                break
            self.outstanding[seq] = now
            self.next_seq += 1
            self.st["sent"] += 1
        self._maybe_done(now)

    def handle(self, mask: int, now: float) -> None:
        g = self.g
        for _ in range(64):
            try:
                n = self.sock.recv_into(g.buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._error(exc)
                break
            status, seq = udp_reply_status(g.pat, self.idx, self.size, g.mv[:n])
            sent_at = self.outstanding.pop(seq, None) if seq is not None else None
            if sent_at is None and status == "ok" and seq is not None:
                if seq in self.lost:
                    self.st["late"] += 1
                    continue
                if seq < self.next_seq:
                    self.st["dup"] += 1
                    continue
            if sent_at is None or status != "ok":
                self.st["corrupt"] += 1
                self.bad += 1
                continue
            self.st["replies"] += 1
            self.st["bytes"] += 2 * n
            g.lat["udp echo"].add(now - sent_at)
        self.pump(now)

    def check(self, now: float) -> None:
        if self.closed:
            return
        limit = self.g.cfg["udp_timeout"]
        for seq, t in list(self.outstanding.items()):
            if now - t > limit:
                del self.outstanding[seq]
                if len(self.lost) < 1_000_000:
                    self.lost.add(seq)
                self.st["lost"] += 1
                self.bad += 1
        self.pump(now)

    def _maybe_done(self, now: float) -> None:
        if self.closed or self.outstanding or self._more(now):
            return
        self.st["ok" if self.bad == 0 else "failed"] += 1
        self.close(now)

    def close(self, now: float) -> None:
        if _release(self, now):
            self.g.active.discard(self)

    def timeout(self, now: float) -> None:
        self.st["timeout"] += 1
        self.st["failed"] += 1
        self.st["details"]["timeout: unfinished at the deadline"] = (
            self.st["details"].get("timeout: unfinished at the deadline", 0) + 1
        )
        self.close(now)


class Guest:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.pat = make_pattern()
        self.pmv = memoryview(self.pat)
        self.buf = bytearray(MAX_CHUNK)
        self.mv = memoryview(self.buf)
        self.sel = selectors.DefaultSelector()
        self.stats = {k: _new_stats() for k in KINDS}
        self.lat = {k: Reservoir(i) for i, k in enumerate(KINDS)}
        self.connect_lat = Reservoir(99)
        self.active: set[TcpFlow | UdpFlow] = set()
        self.pending: list[tuple[float, int, str]] = []  # (not before, slot, mode) to restart
        self.serial = 0
        self.t0 = time.monotonic()
        self.t_end: float | None = self.t0 + cfg["duration"] if cfg["duration"] > 0 else None
        self.timeline: list[list[Any]] = []

    def flow_done(self, flow: TcpFlow, now: float, failed: bool) -> None:
        """Forget a finished flow; with --duration its slot gets a new one (from the main
        loop, never recursively; after a failure not before 0.2 s)."""
        self.active.discard(flow)
        if self.t_end is not None and now < self.t_end:
            self.pending.append((now + (0.2 if failed else 0.0), flow.slot, flow.mode))

    def _start_pending(self, now: float) -> None:
        if not self.pending:
            return
        due = [p for p in self.pending if p[0] <= now]
        self.pending = [p for p in self.pending if p[0] > now]
        for _, slot, mode in due:
            if self.t_end is not None and now < self.t_end:
                TcpFlow(self, slot, mode, now)

    def errors(self) -> int:
        return sum(_errors_of(st) for st in self.stats.values())

    def _progress(self, now: float, last: dict[str, int], dt: float) -> None:
        t = now - self.t0
        nbytes = {k: int(st["bytes"]) for k, st in self.stats.items()}
        self.timeline.append([round(t, 3), nbytes, self.errors()])
        if not self.cfg["progress"]:
            return
        parts: list[str] = []
        tcp = [self.stats[k] for k in KINDS if k.startswith("tcp")]
        tcp_done = sum(s["ok"] + s["failed"] for s in tcp)
        tcp_bytes = sum(nbytes[k] for k in KINDS if k.startswith("tcp"))
        tcp_rate = tcp_bytes - sum(last.get(k, 0) for k in KINDS if k.startswith("tcp"))
        if self.cfg["tcp_flows"]:
            total = f"/{self.cfg['tcp_flows']}" if self.t_end is None else ""
            open_ = sum(1 for f in self.active if isinstance(f, TcpFlow))
            parts.append(
                f"tcp {tcp_done}{total} flows done ({open_} open), "
                f"{tcp_bytes / 2**20:.1f} MiB, "
                f"{tcp_rate * 8 / max(dt, 1e-3) / 1e6:.1f} Mbit/s"
            )
        if self.cfg["udp_flows"]:
            u = self.stats["udp echo"]
            parts.append(
                f"udp {u['ok'] + u['failed']}/{self.cfg['udp_flows']} flows done, "
                f"{u['replies']} replies, {u['lost']} lost"
            )
        parts.append(f"errors {self.errors()}")
        print(f"[{t:6.1f}s] " + " | ".join(parts), file=sys.stderr, flush=True)
        last.update(nbytes)

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        now = self.t0
        mix = cfg["tcp_mix"]
        for i in range(cfg["tcp_flows"]):
            TcpFlow(self, i, mix[i % len(mix)], now)
        udp = [UdpFlow(self, i) for i in range(cfg["udp_flows"])]
        hard = self.t0 + cfg["timeout"]
        next_check, next_progress = now, now + 1.0
        last: dict[str, int] = {}
        last_t = now
        for _ in range(MAX_TURNS):
            now = time.monotonic()
            self._start_pending(now)
            if not self.active and not self.pending:
                break
            if now >= hard:
                for f in list(self.active):
                    if isinstance(f, TcpFlow):
                        f.fail("timeout", "unfinished at the deadline", now)
                    else:
                        f.timeout(now)
                break
            for key, mask in self.sel.select(0.01 if udp else 0.1):
                key.data.handle(mask, time.monotonic())
            now = time.monotonic()
            for u in udp:
                u.pump(now)
            if now >= next_check:
                for f in list(self.active):
                    f.check(now)
                next_check = now + 0.05
            if now >= next_progress:
                self._progress(now, last, now - last_t)
                last_t = now
                next_progress += 1.0
        now = time.monotonic()
        self._progress(now, last, now - last_t)
        stats = {k: v for k, v in self.stats.items() if v["started"]}
        return {
            "elapsed": now - self.t0,
            "stats": stats,
            "timeline": self.timeline,
            "latency_ms": {k: [1000 * v for v in self.lat[k].values] for k in stats},
            "latency_counts": {k: self.lat[k].n for k in stats},
            "connect_ms": [1000 * v for v in self.connect_lat.values],
        }


def guest_main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller stops us, by PID
    if len(argv) != 1:
        print("usage: loadtest.py guest CONFIG-JSON", file=sys.stderr)
        return 2
    raise_nofile()
    result = Guest(json.loads(argv[0])).run()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# =========================================================================== controller


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?b?)\s*", text, re.IGNORECASE)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4096, 256K, 1M)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("router")
    g.add_argument(
        "--router",
        choices=("self", "none"),
        default="self",
        help="self: start wgslirp here (default); none: no tunnel, straight to "
        "127.0.0.1 (baseline). Ignored with --endpoint.",
    )
    g.add_argument(
        "--endpoint",
        metavar="HOST:PORT",
        help="use a running router at this loopback address (with --client-config)",
    )
    g.add_argument(
        "--client-config",
        metavar="FILE",
        help="wg-quick client file for --endpoint (keys, Address, MTU, AllowedIPs)",
    )
    g.add_argument(
        "--workers", type=int, default=2, help="PROCESSOR_WORKERS of a --router self (default 2)"
    )
    g.add_argument(
        "--router-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for a --router self (repeatable)",
    )
    g.add_argument(
        "--client-sockbuf",
        type=parse_size,
        default=7 << 20,
        help="socket buffer size given to the wireguard-go client's UDP socket, as "
        "wireguard-go 0.0.20230223 and later set themselves (default 7M; 0 = "
        "leave Debian's older build at the kernel default, whose drops under "
        "bursts show up as UDP loss); unless 0, the client TUN's txqueuelen "
        "is raised to 10000 too",
    )
    g.add_argument(
        "--gateway",
        default=DEFAULT_GATEWAY,
        help=f"address the guest uses for host loopback (default {DEFAULT_GATEWAY})",
    )
    t = p.add_argument_group("traffic")
    t.add_argument("--tcp-flows", type=int, default=20, help="concurrent TCP flows (default 20)")
    t.add_argument(
        "--tcp-bytes", type=parse_size, default=256 * 1024, help="bytes per TCP flow (default 256K)"
    )
    t.add_argument(
        "--tcp-chunk",
        type=parse_size,
        default=32 * 1024,
        help="echo request size: each is sent, echoed and checked in turn; its "
        "round trip is one latency sample (default 32K, at most 256K)",
    )
    t.add_argument(
        "--tcp-mix",
        default="echo,download,upload",
        help="kinds of TCP flow, assigned round-robin (default echo,download,upload)",
    )
    t.add_argument("--udp-flows", type=int, default=10, help="concurrent UDP flows (default 10)")
    t.add_argument(
        "--udp-count",
        type=int,
        default=200,
        help="request/response datagrams per UDP flow (default 200)",
    )
    t.add_argument(
        "--udp-size", type=parse_size, default=1000, help="UDP payload bytes (default 1000)"
    )
    t.add_argument(
        "--udp-window", type=int, default=4, help="UDP requests in flight per flow (default 4)"
    )
    t.add_argument(
        "--udp-timeout",
        type=float,
        default=1.0,
        help="seconds without a reply before a UDP request counts as lost (default 1)",
    )
    t.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="keep starting TCP flows and sending UDP for this many seconds "
        "(default 0: every flow moves its bytes/count once)",
    )
    t.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="hard bound on the traffic phase in seconds; flows still open count "
        "as timeouts (default 120, or duration + 60)",
    )
    t.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        help="TCP connect bound in seconds (default 5)",
    )
    t.add_argument(
        "--stall-timeout",
        type=float,
        default=15.0,
        help="a TCP flow moving no byte this long is a timeout (default 15)",
    )
    o = p.add_argument_group("verdict and output")
    o.add_argument(
        "--max-udp-loss",
        type=float,
        default=0.0,
        help="UDP loss in percent that still passes (default 0)",
    )
    o.add_argument(
        "--max-mem-growth",
        type=float,
        default=None,
        metavar="MIB",
        help="(--router self) fail when the router's memory (PSS, all its "
        "processes; median of the last quarter of the samples against the "
        "second quarter) grew by more than MIB: a leak check for --duration "
        "soaks (default: report only)",
    )
    o.add_argument("--json", metavar="FILE", help="write the results as JSON")
    o.add_argument(
        "--plot",
        metavar="FILE.png",
        help="throughput over time and latency CDFs (needs matplotlib)",
    )
    o.add_argument("--quiet", action="store_true", help="no progress lines")
    o.add_argument(
        "--inject-corruption",
        action="store_true",
        help="make the host servers corrupt some bytes on purpose (checks that "
        "verification catches it: the run must fail)",
    )
    a = p.parse_args(argv)
    if a.timeout is None:
        a.timeout = a.duration + 60.0 if a.duration > 0 else 120.0
    a.tcp_mix = [m.strip() for m in a.tcp_mix.split(",") if m.strip()]
    if not a.tcp_mix or any(m not in TCP_MODES for m in a.tcp_mix):
        p.error(f"--tcp-mix takes a comma-separated list of {', '.join(TCP_MODES)}")
    checks = [
        (0 <= a.tcp_flows <= 10_000, "--tcp-flows must be 0..10000"),
        (0 <= a.udp_flows <= 1_000, "--udp-flows must be 0..1000"),
        (a.tcp_flows + a.udp_flows > 0, "nothing to do: --tcp-flows and --udp-flows are 0"),
        (1 <= a.tcp_bytes <= 1 << 34, "--tcp-bytes must be 1..16G"),
        (1 <= a.tcp_chunk <= MAX_CHUNK, f"--tcp-chunk must be 1..{MAX_CHUNK}"),
        (1 <= a.udp_count <= 10_000_000, "--udp-count must be 1..10000000"),
        (UDP_HEADER.size <= a.udp_size <= 65_507, "--udp-size must be 8..65507"),
        (1 <= a.udp_window <= 1024, "--udp-window must be 1..1024"),
        (0.01 <= a.udp_timeout <= 60, "--udp-timeout must be 0.01..60"),
        (0 <= a.duration <= 3600, "--duration must be 0..3600"),
        (1 <= a.timeout <= 7200, "--timeout must be 1..7200"),
        (0.1 <= a.connect_timeout <= 120, "--connect-timeout must be 0.1..120"),
        (0.5 <= a.stall_timeout <= 600, "--stall-timeout must be 0.5..600"),
        (0 <= a.max_udp_loss <= 100, "--max-udp-loss must be 0..100"),
        (0 <= a.workers <= 16, "--workers must be 0..16"),
        (bool(a.endpoint) == bool(a.client_config), "--endpoint and --client-config go together"),
    ]
    for ok, msg in checks:
        if not ok:
            p.error(msg)
    for kv in a.router_env:
        if "=" not in kv:
            p.error(f"--router-env wants KEY=VALUE, got {kv!r}")
    if a.endpoint:
        try:
            a.endpoint_host, a.endpoint_port = parse_endpoint(a.endpoint)
        except ValueError as exc:
            p.error(str(exc))
    return a


def parse_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint {text!r} is not HOST:PORT")
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"endpoint host {host!r} is not an IP address") from None
    if not addr.is_loopback or addr.version != 4:
        raise ValueError(f"endpoint {text}: only 127.0.0.0/8 endpoints are allowed here")
    return str(addr), int(port)


def read_client_config(path: str) -> dict[str, str]:
    """``Key = value`` lines of a wg-quick file (sections flattened; keys are distinct)."""
    out: dict[str, str] = {}
    for raw in Path(path).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "=" in line and not line.startswith("["):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    missing = [k for k in ("PrivateKey", "PublicKey", "Address") if k not in out]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)}")
    return out


def guest_config(args: argparse.Namespace, host: str, ports: dict[str, int]) -> dict[str, Any]:
    return {
        "host": host,
        "ports": ports,
        "tcp_flows": args.tcp_flows,
        "tcp_bytes": args.tcp_bytes,
        "tcp_chunk": args.tcp_chunk,
        "tcp_mix": args.tcp_mix,
        "udp_flows": args.udp_flows,
        "udp_count": args.udp_count,
        "udp_size": args.udp_size,
        "udp_window": args.udp_window,
        "udp_timeout": args.udp_timeout,
        "duration": args.duration,
        "timeout": args.timeout,
        "connect_timeout": args.connect_timeout,
        "stall_timeout": args.stall_timeout,
        "progress": not args.quiet,
    }


def relay_guest(proc: subprocess.Popen[bytes], limit: float) -> tuple[str, str]:
    """Relay the guest's stderr (progress) live; return (stdout, stderr tail).  Bounded by
    ``limit`` seconds, after which the guest is killed."""
    import select

    assert proc.stdout is not None and proc.stderr is not None
    fds = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}
    out = bytearray()
    err = bytearray()
    pending = b""
    deadline = time.monotonic() + limit
    for _ in range(MAX_TURNS):
        left = deadline - time.monotonic()
        if not fds or left <= 0:
            break
        ready, _, _ = select.select(list(fds), [], [], min(left, 1.0))
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                del fds[fd]
                continue
            if fds[fd] == "out":
                out += chunk
                continue
            err += chunk
            del err[:-20_000]
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                print("  " + line.decode("utf-8", "replace"), file=sys.stderr, flush=True)
    if fds:
        stop_process(proc)
        raise RuntimeError(
            f"guest did not finish within {limit:.0f} s (killed)\n"
            + err.decode("utf-8", "replace")[-2000:]
        )
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    stop_process(proc)
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def run_guest(
    args: argparse.Namespace, cfg: dict[str, Any], client: Any, places: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Start the guest (in the client's namespace, or here) and wait for its result.
    ``places``: UDP sockets whose receive drops during the run go into the result."""
    lo, echo = "127.0.0.1", cfg["ports"]["udp"]
    places = {
        "udp echo server": lambda s: s.local == (lo, echo),
        "router's host sockets": lambda s: s.remote == (lo, echo),
        **(places or {}),
    }
    drops0 = {p: udp_socket_drops(match) for p, match in places.items()}

    argv = [sys.executable, SCRIPT, "guest", json.dumps(cfg)]
    proc = spawn(argv, client, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = relay_guest(proc, args.timeout + 30)
    finally:
        stop_and_close(proc)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"guest failed (exit {proc.returncode})\n{err[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    drops1 = {p: udp_socket_drops(match) for p, match in places.items()}
    result["udp_socket_drops"] = {p: drops_between(drops0[p], drops1[p]) for p in places}
    return result


ROUTER_COUNTERS = (
    "tcp_dials_ok",
    "tcp_dials_failed",
    "internal_errors",
    "ring_full_dropped",
    "egress_full",
    "send_errors",
    "udp_send_errors",
    "policy_denied",
)


def prepare_client(c: Any, args: argparse.Namespace) -> None:
    if args.client_sockbuf:
        try:
            msg = grow_client_buffers(c.pid, c.udp_port(), args.client_sockbuf)
        except OSError as exc:
            msg = f"wireguard-go socket buffers left as they are ({exc})"
        print(msg, file=sys.stderr, flush=True)
        # The guest's queue into the TUN device (500 packets by default) overflows when
        # wireguard-go falls behind for a moment: client-side loss that says nothing
        # about the router. Same knob, same spirit as the socket buffers above.
        r = c.run(["ip", "link", "set", "dev", c.interface, "txqueuelen", "10000"], check=False)
        if r.returncode == 0:
            print("client TUN txqueuelen set to 10000", file=sys.stderr, flush=True)


def guest_side_drops(c: Any) -> dict[str, int]:
    """Drop counters inside the client's namespace: the guest's UDP receive buffers and the
    TUN device (what wireguard-go delivered but the guest's stack could not take).  Losses
    there are the client's, not the router's; the summary says which side lost what."""
    out: dict[str, int] = {}
    snmp = c.run(["cat", "/proc/net/snmp"], check=False).stdout.splitlines()
    udp = [ln.split()[1:] for ln in snmp if ln.startswith("Udp:")]
    if len(udp) == 2:
        row = dict(zip(udp[0], udp[1], strict=False))
        for k in ("RcvbufErrors", "InErrors"):
            if row.get(k, "").isdigit():
                out[f"guest udp {k}"] = int(row[k])
    for stat in ("rx_dropped", "tx_dropped"):
        r = c.run(["cat", f"/sys/class/net/{c.interface}/statistics/{stat}"], check=False)
        if r.stdout.strip().isdigit():
            out[f"tun {stat}"] = int(r.stdout)
    return out


def run_self(
    args: argparse.Namespace, cfg: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:

    tmp = Path(tempfile.mkdtemp(prefix="wgslirp-loadtest-"))
    info: dict[str, Any] = {"mode": "self", "workers": args.workers}
    try:
        port = free_udp_port()
        env = base_env(tmp, port, args.workers)
        env.update(kv.split("=", 1) for kv in args.router_env)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        print(
            f"starting wgslirp on 127.0.0.1:{port} (PROCESSOR_WORKERS={args.workers})",
            file=sys.stderr,
            flush=True,
        )
        with RouterProcess(router_cmd(), env, cwd=str(REPO), name="wgslirp") as r:
            r.wait_for_line(r"listening on 127\.0\.0\.1:\d+", timeout=20)
            with client_from_router_output(r, port, log_level="error") as c:
                prepare_client(c, args)
                wait_tunnel(c, args.gateway)
                print(
                    f"tunnel up (wireguard-go {c.interface} in namespace "
                    f"{c.namespace.name}, MTU {c.mtu})",
                    file=sys.stderr,
                    flush=True,
                )
                wg_port = c.udp_port()
                before = guest_side_drops(c)
                with MemSampler(r.pid) as mem:
                    result = run_guest(
                        args,
                        cfg,
                        c,
                        {
                            "router's WireGuard socket": lambda s: s.local == ("127.0.0.1", port),
                            "wireguard-go socket": lambda s: s.local[1] == wg_port,
                        },
                    )
                info["memory"] = mem.summary()
                info["memory_series"] = [(round(t, 1), v) for t, v in mem.samples]
                after = guest_side_drops(c)
                result["udp_socket_drops"].update(
                    {k: v - before.get(k, 0) for k, v in after.items()}
                )
            info["exit"] = r.terminate(timeout=10)
            counters = summed_exit_counters(r.output())
            info["counters"] = {k: counters[k] for k in ROUTER_COUNTERS if k in counters}
            if not counters:
                info["counters_missing"] = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result, info


def run_endpoint(
    args: argparse.Namespace, cfg: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:

    conf = read_client_config(args.client_config)
    address = next(
        (
            a.strip()
            for a in conf["Address"].split(",")
            if ipaddress.ip_interface(a.strip()).version == 4
        ),
        None,
    )
    if address is None:
        raise ValueError(f"{args.client_config}: no IPv4 Address")
    peer_ips = [a.strip() for a in conf.get("AllowedIPs", "0.0.0.0/0").split(",") if a.strip()]
    client = WgClient(
        conf["PrivateKey"],
        conf["PublicKey"],
        args.endpoint_port,
        address=address,
        allowed_ips=[f"{args.gateway}/32"],
        peer_allowed_ips=peer_ips,
        mtu=int(conf.get("MTU", "1420")),
        preshared_key=conf.get("PresharedKey"),
        endpoint_host=args.endpoint_host,
        log_level="error",
    )
    print(
        f"connecting to the router at {args.endpoint_host}:{args.endpoint_port}",
        file=sys.stderr,
        flush=True,
    )
    with client as c:
        prepare_client(c, args)
        wait_tunnel(c, args.gateway)
        print(
            f"tunnel up (wireguard-go {c.interface} in namespace {c.namespace.name}, MTU {c.mtu})",
            file=sys.stderr,
            flush=True,
        )
        wg_port = c.udp_port()
        result = run_guest(
            args,
            cfg,
            c,
            {
                "router's WireGuard socket": lambda s: (
                    s.local == (args.endpoint_host, args.endpoint_port)
                ),
                "wireguard-go socket": lambda s: s.local[1] == wg_port,
            },
        )
    return result, {"mode": "endpoint", "endpoint": args.endpoint}


# =========================================================================== summary


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def summarize(
    result: dict[str, Any], info: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Rows, totals and the verdict (a list of problems; empty = pass)."""
    stats: dict[str, dict[str, Any]] = result["stats"]
    elapsed = float(result["elapsed"])
    rows: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    extra = 0  # errors beyond the per-flow counters (loss over the limit, router, missing)
    for kind, st in stats.items():
        lat = sorted(result["latency_ms"].get(kind, []))
        secs = st["t_last"] or elapsed
        row = {k: v for k, v in st.items() if k != "t_last"}
        row.update(
            {
                "seconds": secs,
                "mbit_s": st["bytes"] * 8 / max(secs, 1e-9) / 1e6,
                "p50_ms": percentile(lat, 50),
                "p90_ms": percentile(lat, 90),
                "p99_ms": percentile(lat, 99),
                "max_ms": lat[-1] if lat else None,
                "latency_samples": result["latency_counts"].get(kind, 0),
            }
        )
        if kind == "udp echo":
            row["loss_pct"] = 100.0 * st["lost"] / st["sent"] if st["sent"] else 0.0
        rows[kind] = row
        errs = _errors_of(st)
        if errs:
            what = ", ".join(
                f"{st[k]} {k.replace('_', ' ')}"
                for k in ("connect_fail", "reset", "corrupt", "timeout", "send_errors")
                if st[k]
            )
            problems.append(f"{kind}: {what}")
        if kind == "udp echo" and row["loss_pct"] > args.max_udp_loss:
            extra += 1
            problems.append(
                f"udp echo: {row['loss_pct']:.2f}% lost > --max-udp-loss {args.max_udp_loss:g}%"
            )
    if args.duration <= 0:
        tcp_ok = sum(stats[k]["ok"] for k in stats if k.startswith("tcp"))
        if tcp_ok != args.tcp_flows:
            extra += (
                args.tcp_flows
                - tcp_ok
                - sum(stats[k]["failed"] for k in stats if k.startswith("tcp"))
            )
            problems.append(f"tcp: {tcp_ok} of {args.tcp_flows} flows completed and verified")
        udp_done = stats.get("udp echo", {}).get("sent", 0)
        if args.udp_flows and udp_done != args.udp_flows * args.udp_count:
            extra += 1
            problems.append(f"udp: {udp_done} of {args.udp_flows * args.udp_count} requests sent")
    if info.get("mode") == "self":
        if info.get("exit") != 0:
            extra += 1
            problems.append(f"router exited with {info.get('exit')}")
        if info.get("counters_missing"):
            extra += 1
            problems.append("router printed no exit counters")
        internal = info.get("counters", {}).get("internal_errors", 0)
        if internal:
            extra += internal
            problems.append(f"router: {internal} internal errors")
        mem = info.get("memory")
        if (
            args.max_mem_growth is not None
            and mem is not None
            and mem["growth"] > args.max_mem_growth * 2**20
        ):
            extra += 1
            problems.append(
                f"router memory grew {_mib(mem['growth'])} from the second to the "
                f"last quarter of the run > --max-mem-growth "
                f"{args.max_mem_growth:g} MiB"
            )
    conn = sorted(result.get("connect_ms", []))
    total_bytes = sum(st["bytes"] for st in stats.values())
    errors = sum(_errors_of(st) for st in stats.values()) + max(extra, 0)
    if problems and errors == 0:
        errors = len(problems)
    return {
        "rows": rows,
        "elapsed": elapsed,
        "bytes": total_bytes,
        "mbit_s": total_bytes * 8 / max(elapsed, 1e-9) / 1e6,
        "connect_ms": {
            "p50": percentile(conn, 50),
            "p99": percentile(conn, 99),
            "max": conn[-1] if conn else None,
            "samples": len(conn),
        },
        "udp_socket_drops": result.get("udp_socket_drops", {}),
        "problems": problems,
        "errors": errors,
        "passed": not problems,
    }


def render(summary: dict[str, Any], info: dict[str, Any], args: argparse.Namespace) -> str:
    hdr = [
        "kind",
        "flows",
        "ok",
        "bytes",
        "Mbit/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "conn fail",
        "resets",
        "corrupt",
        "timeouts",
        "udp lost",
    ]
    body = []
    tot = {k: 0 for k in ("flows", "ok", "connect_fail", "reset", "corrupt", "timeout")}
    for kind, r in summary["rows"].items():
        udp = kind.startswith("udp")
        flows = r["ok"] + r["failed"]
        tot["flows"] += flows
        tot["ok"] += r["ok"]
        for k in ("connect_fail", "reset", "corrupt", "timeout"):
            tot[k] += r[k]
        tot["reset"] += r["send_errors"]
        body.append(
            [
                kind,
                str(flows),
                str(r["ok"]),
                _mib(r["bytes"]),
                f"{r['mbit_s']:.1f}",
                _ms(r["p50_ms"]),
                _ms(r["p90_ms"]),
                _ms(r["p99_ms"]),
                _ms(r["max_ms"]),
                "-" if udp else str(r["connect_fail"]),
                str(r["send_errors"] if udp else r["reset"]),
                str(r["corrupt"]),
                str(r["timeout"]),
                f"{r['lost']} ({r['loss_pct']:.2f}%)" if udp else "-",
            ]
        )
    lost = sum(r.get("lost", 0) for r in summary["rows"].values())
    body.append(
        [
            "total",
            str(tot["flows"]),
            str(tot["ok"]),
            _mib(summary["bytes"]),
            f"{summary['mbit_s']:.1f}",
            "",
            "",
            "",
            "",
            str(tot["connect_fail"]),
            str(tot["reset"]),
            str(tot["corrupt"]),
            str(tot["timeout"]),
            str(lost) if "udp echo" in summary["rows"] else "-",
        ]
    )
    where = {
        "self": f"wgslirp started here, PROCESSOR_WORKERS={args.workers}",
        "endpoint": f"router at {args.endpoint}",
        "none": "no tunnel (loopback baseline)",
    }[info.get("mode", "none")]
    lines = [
        "",
        f"Load test summary: {where}; {summary['elapsed']:.2f} s of traffic",
        "",
        table(hdr, body),
        "",
    ]
    c = summary["connect_ms"]
    if c["samples"]:
        lines.append(
            f"tcp connect: p50 {_ms(c['p50'])} ms, p99 {_ms(c['p99'])} ms, "
            f"max {_ms(c['max'])} ms ({c['samples']} connects)"
        )
    lines.append(
        f"latency: tcp echo = round trip of one {args.tcp_chunk}-byte request; "
        "tcp download = request to first byte; tcp upload = last byte sent to the "
        "sink's verdict; udp echo = datagram round trip"
    )
    lines.append(
        "bytes: payload verified end to end (echo traffic counts both directions); "
        "corrupt: bytes (tcp) or datagrams (udp); resets: for udp, send errors"
    )
    udp = summary["rows"].get("udp echo")
    if udp and (udp["late"] or udp["dup"]):
        lines.append(
            f"udp: {udp['late']} late replies (after being counted lost), {udp['dup']} duplicates"
        )
    drops = {k: v for k, v in summary.get("udp_socket_drops", {}).items() if v}
    if drops:
        lines.append(
            "drops during the run (any traffic, both sides of the tunnel): "
            + ", ".join(f"{k} {v}" for k, v in drops.items())
        )
    mem = info.get("memory")
    if mem:
        lines.append(
            f"router memory (PSS, all processes, {mem['samples']} samples over "
            f"{mem['seconds']:.0f} s): start {_mib(mem['start'])}, middle "
            f"{_mib(mem['mid'])}, end {_mib(mem['end'])}, peak {_mib(mem['peak'])}; "
            f"growth, last quarter vs second (medians) "
            f"{'-' if mem['growth'] < 0 else ''}{_mib(abs(mem['growth']))}"
        )
    counters = info.get("counters")
    if counters:
        lines.append(
            f"router: exit {info.get('exit')}; "
            + ", ".join(f"{k} {v}" for k, v in counters.items())
        )
    for kind, r in summary["rows"].items():
        for detail, n in sorted(r["details"].items(), key=lambda kv: -kv[1])[:8]:
            lines.append(f"  {kind}: {n} x {detail}")
    if summary["passed"]:
        lines.append("RESULT: PASS (0 errors)")
    else:
        lines.append(f"RESULT: FAIL ({summary['errors']} errors)")
        lines += [f"  - {p}" for p in summary["problems"]]
    return "\n".join(lines)


def plot(path: str, result: dict[str, Any], summary: dict[str, Any]) -> str:
    """Write the PNG; a one-line message saying what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"--plot {path}: matplotlib is not installed (pip install matplotlib); skipped"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    prev_t, prev = 0.0, {k: 0 for k in KINDS}
    series: dict[str, tuple[list[float], list[float]]] = {
        k: ([0.0], [0.0]) for k in summary["rows"]
    }
    timeline = result["timeline"]
    for i, (t, nbytes, _errs) in enumerate(timeline):
        dt = t - prev_t
        if dt < 0.25 and 0 < i == len(timeline) - 1:
            break  # a last sliver of a second: its rate is noise
        for k in series:
            series[k][0].append(t)
            series[k][1].append((nbytes.get(k, 0) - prev.get(k, 0)) * 8 / max(dt, 1e-3) / 1e6)
        prev_t, prev = t, nbytes
    for k, (xs, ys) in series.items():
        ys[0] = ys[1] if len(ys) > 1 else 0.0
        ax1.step(xs, ys, where="pre", label=k)  # each value covers the second before it
    ax1.set_xlabel("seconds")
    ax1.set_ylabel("Mbit/s (verified payload)")
    ax1.set_ylim(bottom=0)
    ax1.set_title("throughput")
    ax1.grid(alpha=0.3)
    ax1.legend()
    for k in summary["rows"]:
        lat = sorted(result["latency_ms"].get(k, []))
        if lat:
            ax2.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=k)
    ax2.set_xscale("log")
    ax2.set_xlabel("latency, ms")
    ax2.set_ylabel("fraction of requests")
    ax2.set_title("latency CDF")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend()
    verdict = "PASS" if summary["passed"] else f"FAIL ({summary['errors']} errors)"
    fig.suptitle(f"wgslirp load test: {verdict}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot written to {path}"


# =========================================================================== main


def main(argv: list[str]) -> int:
    if argv and argv[0] == "guest":
        return guest_main(argv[1:])
    args = parse_args(argv)
    mode = "endpoint" if args.endpoint else args.router
    try:
        if not start_controller(tunnel=mode != "none"):
            return 2
        with HostServers(inject=args.inject_corruption) as hs:
            host = "127.0.0.1" if mode == "none" else args.gateway
            cfg = guest_config(args, host, hs.ports)
            print(
                f"host servers on 127.0.0.1: tcp echo {hs.ports['echo']}, source "
                f"{hs.ports['source']}, sink {hs.ports['sink']}, udp echo {hs.ports['udp']}"
                f"{' (INJECTING CORRUPTION)' if args.inject_corruption else ''}",
                file=sys.stderr,
                flush=True,
            )
            if mode == "self":
                result, info = run_self(args, cfg)
            elif mode == "endpoint":
                result, info = run_endpoint(args, cfg)
            else:
                result, info = run_guest(args, cfg, None), {"mode": "none"}
            info["host_servers"] = hs.info()
        summary = summarize(result, info, args)
        print(render(summary, info, args), flush=True)
        if args.json:
            out = {
                "args": dict(vars(args)),
                "router": info,
                "timeline": result["timeline"],
                **summary,
            }
            Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
        if args.plot:
            print(plot(args.plot, result, summary), file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: everything started has been stopped", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, OSError) as exc:  # HarnessError is a RuntimeError
        print(f"load test could not run: {exc}", file=sys.stderr)
        return 2
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
