"""The metrics/health HTTP server on a real loopback socket, driven by a real Loop."""

from __future__ import annotations

import socket
import threading

from wgslirp.obs.http import HttpServer, http_get
from wgslirp.runtime.loop import Loop


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

    srv = HttpServer("127.0.0.1", 0, {"/metrics": metrics,
                                      "/healthz": lambda: (503, "text/plain", "down\n"),
                                      "/boom": lambda: 1 / 0},  # type: ignore[dict-item,return-value]
                     loop.selector, loop.clock)
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
