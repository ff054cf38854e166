"""The metrics/health HTTP server on a real loopback socket, driven by a real Loop."""

from __future__ import annotations

import contextlib
import socket
import threading

from wgslirp.obs.http import HttpServer, http_get
from wgslirp.runtime.loop import Loop
from wgslirp_testkit.clock import FakeClock


def serve(loop: Loop, stop: threading.Event) -> None:
    for _ in range(2000):
        if stop.is_set():
            return
        loop.run_once()


def test_routes_status_and_limits() -> None:
    loop = Loop()
    calls = {"n": 0}

    def metrics() -> tuple[int, str, str]:
        calls["n"] += 1
        return 200, "text/plain; version=0.0.4", "x 1\n"

    srv = HttpServer(
        "127.0.0.1",
        0,
        {
            "/metrics": metrics,
            "/healthz": lambda: (503, "text/plain", "down\n"),
            "/boom": lambda: 1 / 0,
        },  # type: ignore[dict-item,return-value]
        loop.selector,
        loop.clock,
    )
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(loop, stop), daemon=True)
    t.start()
    try:
        host, port = srv.address
        assert http_get(host, port, "/metrics") == (200, "x 1\n")
        assert http_get(host, port, "/healthz") == (503, "down\n")
        assert http_get(host, port, "/nope")[0] == 404
        assert http_get(host, port, "/boom")[0] == 503  # a failing route is contained
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(b"POST /metrics HTTP/1.0\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.0 405")
        with socket.create_connection((host, port), timeout=3) as s:  # oversized request
            s.sendall(b"GET /" + b"a" * 9000)
            assert s.recv(100) == b""
        assert calls["n"] == 1
    finally:
        stop.set()
        t.join(5)
        srv.close()


def test_idle_connections_neither_lock_out_checks_nor_outlive_their_deadline() -> None:
    """64 idle connections (a slow or hostile client) must not block /healthz; as a loop
    timer (inline mode) the server drops idle connections at their deadline."""
    from wgslirp.obs.http import CLIENT_TIMEOUT, MAX_CLIENTS

    clock = FakeClock(1000.0)
    loop = Loop(clock=clock)
    srv = HttpServer(
        "127.0.0.1", 0, {"/healthz": lambda: (200, "text/plain", "ok\n")}, loop.selector, loop.clock
    )
    loop.timers.append(srv)
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(loop, stop), daemon=True)
    t.start()
    idle: list[socket.socket] = []
    try:
        idle += [socket.create_connection(srv.address, timeout=3) for _ in range(MAX_CLIENTS)]
        for _ in range(300):
            if len(srv.clients) == MAX_CLIENTS:
                break
            stop.wait(0.01)
        assert len(srv.clients) == MAX_CLIENTS
        assert http_get(*srv.address, "/healthz") == (200, "ok\n")
        assert len(srv.clients) <= MAX_CLIENTS
        assert srv.get_timer() == 1000.0 + CLIENT_TIMEOUT
        clock.advance(CLIENT_TIMEOUT + 0.1)  # the loop's timers see the deadline pass
        for _ in range(100):
            if not srv.clients:
                break
            stop.wait(0.01)
        assert srv.clients == {} and srv.get_timer() is None
        idle[-1].settimeout(3)
        assert idle[-1].recv(10) == b""  # closed by the server
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            socket.create_connection(srv.address, timeout=1).close()  # wake the loop
        t.join(5)
        srv.close()
        for s in idle:
            s.close()
