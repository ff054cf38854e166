"""The load test's host servers: TCP echo, TCP source, TCP sink and UDP echo on 127.0.0.1,
all in one forked process with one event loop.

A forked process, not threads of the controller: the servers move as many bytes as the
router, and sharing the controller's GIL would make them the bottleneck being measured.

Requests: echo returns what it reads; source reads ``"OFFSET SIZE\n"`` and sends that many
pattern bytes; sink reads ``"OFFSET SIZE\n"`` and the data, verifies every byte and answers
``"OK n\n"`` or ``"BAD n corrupt\n"``; UDP echo returns each datagram.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import signal
import socket
import time
from typing import Any

from wgslirp_testkit.hostservers import ForkedServer
from wgslirp_testkit.loadtest.protocol import (
    MAX_CHUNK,
    MAX_TURNS,
    PERIOD,
    UDP_HEADER,
    StreamVerifier,
    make_pattern,
)
from wgslirp_testkit.proc import die_with_parent, raise_nofile


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
