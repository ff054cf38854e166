"""The load test's guest: every flow at once in one event loop, inside the namespace (or on
the host with ``--router none``), printing progress to stderr once a second and the result
as one JSON line on stdout.

A program of its own because only a process inside the namespace sends through the
tunnel; the controller starts it as ``python -m wgslirp_testkit.loadtest.guest CONFIG-JSON``
(see ``run.guest_config``).  It imports only the stdlib, the protocol and proc, so it
starts fast.
"""

from __future__ import annotations

import contextlib
import errno
import json
import random
import re
import selectors
import signal
import socket
import sys
import time
from typing import Any

from wgslirp_testkit.loadtest.protocol import (
    KINDS,
    MAX_CHUNK,
    MAX_TURNS,
    PERIOD,
    StreamVerifier,
    errors_of,
    make_pattern,
    new_stats,
    udp_payload,
    udp_reply_status,
)
from wgslirp_testkit.proc import raise_nofile

MODULE = "wgslirp_testkit.loadtest.guest"
RESERVOIR = 100_000  # latency samples kept per kind (uniform sample beyond that)


def _errname(exc: OSError | int) -> str:
    code = exc if isinstance(exc, int) else exc.errno
    if code is None:
        return type(exc).__name__
    return errno.errorcode.get(code, str(code))


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
        self.stats = {k: new_stats() for k in KINDS}
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
        return sum(errors_of(st) for st in self.stats.values())

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
        print(f"usage: python -m {MODULE} CONFIG-JSON", file=sys.stderr)
        return 2
    raise_nofile()
    result = Guest(json.loads(argv[0])).run()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(guest_main(sys.argv[1:]))
