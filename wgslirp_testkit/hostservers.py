"""Real servers on host loopback, which guests reach through the router's gateway address.

Two kinds, for two needs:

- For tests, threads of the test process (:class:`UdpEcho`, :class:`UdpSink`,
  :class:`TinyDns`, :class:`TcpServer`): cheap to start, each with a bounded lifetime,
  counting what it saw so a test can also prove that something never arrived.
- For benchmarks, forked processes (:class:`ForkedServer`, :class:`ForkedUdpServer`) with a
  tight non-blocking loop and counters in shared memory: a thread doing one ``select`` per
  datagram caps a loopback baseline and competes with the benchmark's own bookkeeping for
  the GIL.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import random
import select
import selectors
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Self

from wgslirp_testkit.proc import die_with_parent


class _ThreadedUdpServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, lifetime: float = 300) -> None:
        self.host = host
        self.sock = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM
        )
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, port))
        self.port: int = self.sock.getsockname()[1]
        self.received = 0
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _ThreadedUdpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            ready, _, _ = select.select([self.sock, *self.extra_sockets()], [], [], 0.1)
            for s in ready:
                if s is not self.sock:
                    self.on_ready(s)
            if self.sock not in ready:
                continue
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                continue
            self.received += 1
            reply = self.answer(data)
            if reply is not None:
                self.sock.sendto(reply, addr)

    def answer(self, data: bytes) -> bytes | None:
        raise NotImplementedError

    def extra_sockets(self) -> list[socket.socket]:
        """More sockets the serving thread watches (a TCP listener beside the UDP one)."""
        return []

    def on_ready(self, sock: socket.socket) -> None:
        """One of `extra_sockets` is readable."""


class UdpEcho(_ThreadedUdpServer):
    def answer(self, data: bytes) -> bytes | None:
        return data


class UdpSink(_ThreadedUdpServer):
    def answer(self, data: bytes) -> bytes | None:
        return None


class TinyDns(_ThreadedUdpServer):
    """Answers every A query for NAME with ADDRESS, anything else with NXDOMAIN; over UDP,
    and over TCP (RFC 7766 framing) on the same port number."""

    def __init__(self, records: dict[str, str], **kw: float) -> None:
        for _ in range(50):  # a UDP port whose TCP twin is free too
            super().__init__(**kw)  # type: ignore[arg-type]
            self.tcp = socket.socket(self.sock.family, socket.SOCK_STREAM)
            try:
                self.tcp.bind((self.host, self.port))
                break
            except OSError:
                self.tcp.close()
                self.sock.close()
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        self.tcp.listen(8)
        self.tcp_received = 0
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.tcp.close()

    def extra_sockets(self) -> list[socket.socket]:
        return [self.tcp]

    def on_ready(self, sock: socket.socket) -> None:
        self._serve_tcp()

    def _serve_tcp(self) -> None:
        """One length-prefixed query per connection (bounded: 2 s, one message)."""
        try:
            conn, _ = self.tcp.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2)
            try:
                query = read_dns_tcp(conn)
                if query is None:
                    return
                self.tcp_received += 1
                reply = self.answer(query)
                if reply is not None:
                    conn.sendall(struct.pack(">H", len(reply)) + reply)
            except OSError:
                return

    def answer(self, data: bytes) -> bytes | None:
        if len(data) < 12:
            return None
        qid, _flags, qd = struct.unpack_from(">HHH", data, 0)
        if qd != 1:
            return None
        labels, i = [], 12
        while i < len(data) and data[i]:
            n = data[i]
            labels.append(data[i + 1 : i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        qtype, _qclass = struct.unpack_from(">HH", data, i + 1)
        question = data[12 : i + 5]
        name = ".".join(labels).lower()
        addr = self.records.get(name)
        if addr is None or qtype != 1:
            return struct.pack(">HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(addr)
        return struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + answer


def read_dns_tcp(sock: socket.socket) -> bytes | None:
    """One DNS message in RFC 7766 framing (2-byte length first); None if the peer closed
    before it was whole. The guest program reads its answers with the same function."""
    buf = b""
    while len(buf) < 2 or len(buf) < 2 + struct.unpack_from(">H", buf)[0]:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        buf += chunk
    return buf[2:]


def dns_query(name: str, qid: int = 0x1234) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", 1, 1)


# ---------------------------------------------------------------------------- TCP

PATTERN_LEN = 1_048_583  # prime-ish period: a misplaced segment cannot line up by accident


def pattern(seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(PATTERN_LEN)


def stream_chunks(total: int, seed: int = 7, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """The deterministic byte stream both ends of a transfer agree on, in chunks."""
    pat = pattern(seed)
    pos = 0
    while pos < total:
        n = min(chunk, total - pos)
        start = pos % PATTERN_LEN
        if start + n <= PATTERN_LEN:
            yield pat[start : start + n]
        else:
            first = PATTERN_LEN - start
            yield pat[start:] + pat[: n - first]
        pos += n


class TcpServer:
    """A selectors-based TCP server on host loopback running `mode` per connection:

    - "sink": read to EOF, record sha256 and byte count, close;
    - "source": send `size` bytes of the pattern, then close;
    - "echo": echo everything, close after EOF;
    - "halfclose": read to EOF, then send `size` bytes of the pattern, then close;
    - "hold": accept and keep, never read or close (until the server stops): a host that
      leaves the router holding each connection the guest closed, half-closed.
    """

    def __init__(
        self,
        mode: str,
        size: int = 0,
        lifetime: float = 600,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """`host`/`port`: a guest's address when it runs inside a guest namespace
        (guestprog's `serve`, the service behind an inbound forward), or [::1] for IPv6."""
        self.mode, self.size = mode, size
        self.lsock = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM
        )
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(4096)
        self.lsock.setblocking(False)
        self.port: int = self.lsock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.lsock, selectors.EVENT_READ, None)
        self.results: list[tuple[int, str]] = []  # (bytes, sha256) per finished sink
        self.accepted = 0
        self._held: list[socket.socket] = []  # "hold" mode's connections
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TcpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        for conn in self._held:
            conn.close()
        self.sel.close()

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            for key, mask in self.sel.select(0.1):
                if key.data is None:
                    try:
                        conn, _ = self.lsock.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    self.accepted += 1
                    if self.mode == "hold":
                        self._held.append(conn)
                        continue
                    st = {"sha": hashlib.sha256(), "n": 0, "out": b"", "eof": False, "gen": None}
                    if self.mode == "source":
                        st["gen"] = stream_chunks(self.size)
                    self.sel.register(conn, selectors.EVENT_READ | selectors.EVENT_WRITE, st)
                    continue
                self._service(key.fileobj, key.data, mask)  # type: ignore[arg-type]

    def _service(self, conn: socket.socket, st: dict, mask: int) -> None:  # type: ignore[type-arg]
        try:
            if mask & selectors.EVENT_READ and not st["eof"]:
                data = conn.recv(1 << 20)
                if not data:
                    st["eof"] = True
                    if self.mode == "sink":
                        self.results.append((st["n"], st["sha"].hexdigest()))
                        self._close(conn)
                        return
                    if self.mode == "halfclose":
                        st["gen"] = stream_chunks(self.size)
                    if self.mode == "echo" and not st["out"]:
                        self._close(conn)
                        return
                else:
                    st["n"] += len(data)
                    if self.mode == "sink":
                        st["sha"].update(data)
                    elif self.mode == "echo":
                        st["out"] += data
            if mask & selectors.EVENT_WRITE:
                if not st["out"] and st["gen"] is not None:
                    st["out"] = next(st["gen"], b"")
                    if not st["out"]:
                        self._close(conn)
                        return
                if st["out"]:
                    sent = conn.send(st["out"])
                    st["out"] = st["out"][sent:]
                elif self.mode == "echo" and st["eof"]:
                    self._close(conn)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)

    def _close(self, conn: socket.socket) -> None:
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()


# ---------------------------------------------------------------------------- forked


class ForkedServer:
    """A server loop in its own forked process, as a context manager.

    A subclass opens its sockets (closing them itself if that fails), then calls
    ``super().__init__``: the child will run ``target(counters, *args)``, where ``counters``
    (also ``self.counters``) are ``n_counters`` int64s in shared memory for it to update.
    Entering starts the process; :meth:`close` (and leaving) stops it, SIGTERM then SIGKILL,
    waiting ``join_timeout`` s after each, and closes the parent's copies of the sockets
    through the :meth:`_close_socks` hook, which also runs if the start fails.
    """

    def __init__(
        self,
        target: Callable[..., None],
        args: tuple[Any, ...],
        name: str,
        n_counters: int,
        join_timeout: float = 2.0,
    ) -> None:
        ctx = mp.get_context("fork")
        self.counters = ctx.RawArray("q", n_counters)
        self.join_timeout = join_timeout
        self._proc = ctx.Process(target=target, args=(self.counters, *args), daemon=True, name=name)

    def _close_socks(self) -> None:
        """Close the sockets handed to the child (our copies of them)."""
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self._proc.pid is not None
        return self._proc.pid

    def __enter__(self) -> Self:
        try:
            self._proc.start()
        except BaseException:
            self._close_socks()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._proc.pid is not None:
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(self.join_timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(self.join_timeout)
        self._close_socks()


def _serve(counters: Any, sock: socket.socket, echo: bool, lifetime: float) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    buf = bytearray(65535)
    mv = memoryview(buf)
    recv_into, recvfrom_into, sendto = sock.recv_into, sock.recvfrom_into, sock.sendto
    packets = nbytes = errors = 0
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        r, _, _ = select.select([sock], [], [], 0.2)
        if not r:
            continue
        for _ in range(512):
            try:
                if echo:
                    n, addr = recvfrom_into(buf)
                    try:
                        sendto(mv[:n], addr)
                    except OSError:
                        errors += 1
                else:
                    n = recv_into(buf)
            except BlockingIOError:
                break
            except OSError:
                errors += 1
                break
            packets += 1
            nbytes += n
            if not packets & 63:
                counters[0], counters[1] = packets, nbytes
        counters[0], counters[1], counters[2] = packets, nbytes, errors


class ForkedUdpServer(ForkedServer):
    """A UDP sink (``echo=False``) or echo on ``host`` in its own forked process.

    ``packets``/``nbytes`` are read from shared memory; they lag by at most 64 datagrams.
    """

    def __init__(
        self, echo: bool, host: str = "127.0.0.1", rcvbuf: int = 4 << 20, lifetime: float = 900.0
    ) -> None:
        self.echo = echo
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for opt, fallback, size in (
                (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF, rcvbuf),
                (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF, rcvbuf),
            ):
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, opt or fallback, size)
                except PermissionError:
                    self.sock.setsockopt(socket.SOL_SOCKET, fallback, size)
            self.sock.bind((host, 0))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.port: int = self.sock.getsockname()[1]
        super().__init__(
            _serve, (self.sock, echo, lifetime), "bench-echo" if echo else "bench-sink", 3
        )

    def _close_socks(self) -> None:
        self.sock.close()

    @property
    def packets(self) -> int:
        return int(self.counters[0])

    @property
    def nbytes(self) -> int:
        return int(self.counters[1])

    def settle(self, quiet: float = 0.3, limit: float = 3.0) -> int:
        """Wait until the packet count stops moving for ``quiet`` s (at most ``limit`` s)."""
        last, since = self.packets, time.monotonic()
        deadline = since + limit
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now_count = self.packets
            if now_count != last:
                last, since = now_count, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last
