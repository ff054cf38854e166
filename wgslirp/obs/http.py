"""A very small HTTP/1.0 server for /metrics, /healthz and /readyz.

It lives in the supervisor's event loop, so it must never block: non-blocking accept, read
and write, a cap on request size, a deadline per connection, and one response per
connection. Only GET (and HEAD) of known paths; everything else is 404/405. No third-party
web stack for three read-only endpoints.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable

MAX_REQUEST = 8192
CLIENT_TIMEOUT = 5.0
MAX_CLIENTS = 64
MAX_RESPONSE = 8 << 20  # what http_get reads at most

Route = Callable[[], tuple[int, str, str]]  # -> (status, content type, body)

_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
    400: "Bad Request",
}


class _Client:
    __slots__ = ("deadline", "inbuf", "outbuf", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""
        self.deadline = deadline


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        routes: dict[str, Route],
        selector: selectors.BaseSelector,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.routes = routes
        self.sel = selector
        self.clock = clock
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.lsock.bind((host, port))
            self.lsock.listen(MAX_CLIENTS)
        except OSError:
            self.lsock.close()
            raise
        self.lsock.setblocking(False)
        self.address: tuple[str, int] = self.lsock.getsockname()
        self.clients: dict[int, _Client] = {}
        self.requests = 0
        self.sel.register(self.lsock, selectors.EVENT_READ, self._on_accept)

    def _on_accept(self, _now: float, _mask: int = 0) -> None:
        for _ in range(16):
            try:
                sock, _ = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self.clients) >= MAX_CLIENTS:
                # Full: the oldest connection goes, not the new one, so idle connections
                # (a slow or hostile client) cannot lock out health checks.
                self._close(next(iter(self.clients.values())))
            sock.setblocking(False)
            c = _Client(sock, self.clock() + CLIENT_TIMEOUT)
            self.clients[sock.fileno()] = c
            self.sel.register(
                sock, selectors.EVENT_READ, lambda now, mask, c=c: self._on_client(c, mask)
            )

    def _on_client(self, c: _Client, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ and not c.outbuf:
                data = c.sock.recv(4096)
                if not data:
                    self._close(c)
                    return
                c.inbuf += data
                if b"\r\n\r\n" in c.inbuf or b"\n\n" in c.inbuf:
                    c.outbuf = self._respond(c.inbuf)
                    self.sel.modify(
                        c.sock,
                        selectors.EVENT_WRITE,
                        lambda now, mask, c=c: self._on_client(c, mask),
                    )
                elif len(c.inbuf) > MAX_REQUEST:
                    self._close(c)
                    return
            if mask & selectors.EVENT_WRITE and c.outbuf:
                sent = c.sock.send(c.outbuf)
                c.outbuf = c.outbuf[sent:]
                if not c.outbuf:
                    self._close(c)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(c)

    def _respond(self, request: bytes) -> bytes:
        self.requests += 1
        line = request.split(b"\n", 1)[0].decode("latin-1").strip()
        parts = line.split()
        if len(parts) < 2:
            return _response(400, "text/plain", "bad request\n", head=False)
        method, path = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _response(405, "text/plain", "only GET\n", head=False)
        route = self.routes.get(path)
        if route is None:
            return _response(404, "text/plain", "not found\n", head=method == "HEAD")
        try:
            status, ctype, body = route()
        except Exception as exc:  # a broken route must not take the supervisor down
            status, ctype, body = 503, "text/plain", f"error: {exc}\n"
        return _response(status, ctype, body, head=method == "HEAD")

    def expire(self, now: float) -> None:
        for c in list(self.clients.values()):
            if now >= c.deadline:
                self._close(c)

    # As a loop timer (inline mode): connections are dropped at their deadline.
    def get_timer(self) -> float | None:
        for c in self.clients.values():
            return c.deadline  # insertion order is deadline order
        return None

    def handle_timer(self, now: float) -> None:
        self.expire(now)

    def _close(self, c: _Client) -> None:
        self.clients.pop(c.sock.fileno(), None)
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def close(self) -> None:
        for c in list(self.clients.values()):
            self._close(c)
        try:
            self.sel.unregister(self.lsock)
        except (KeyError, ValueError):
            pass
        self.lsock.close()


def _response(status: int, ctype: str, body: str, *, head: bool) -> bytes:
    data = body.encode()
    hdr = (
        f"HTTP/1.0 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return hdr if head else hdr + data


def http_get(host: str, port: int, path: str, timeout: float = 3.0) -> tuple[int, str]:
    """Client side for `wgslirp healthcheck` and tests: (status, body)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        size = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and size < MAX_RESPONSE:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            size += len(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    try:  # whatever answered may not speak HTTP: status 0, never a traceback
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    except (IndexError, ValueError):
        status = 0
    return status, body.decode("utf-8", "replace")
