"""HEALTHCHECK probes against servers this test runs on loopback only."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from wgslirp.obs.probes import Prober, probe_dns_server, probe_http, probe_resolve
from wgslirp_testkit.hostservers import TinyDns


class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 500)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture()
def web() -> object:
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Quiet)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_http_probe(web: http.server.HTTPServer) -> None:
    port = web.server_address[1]
    assert probe_http(f"http://127.0.0.1:{port}/ok") == (True, "HTTP 200")
    ok, detail = probe_http(f"http://127.0.0.1:{port}/broken")
    assert not ok and "500" in detail


def test_resolve_and_dns_server_probes() -> None:
    assert probe_resolve("localhost")[0]
    with TinyDns({"probe.test": "10.1.2.3"}) as dns:
        assert probe_dns_server("127.0.0.1", "probe.test", port=dns.port) == (True, "rcode 0")
        assert probe_dns_server("127.0.0.1", "other.test", port=dns.port) == (True, "rcode 3")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    s.close()
    ok, _ = probe_dns_server("127.0.0.1", "probe.test", timeout=1, port=closed)
    assert not ok


def test_prober_tracks_state_changes(web: http.server.HTTPServer) -> None:
    port = web.server_address[1]
    p = Prober(http_url=f"http://127.0.0.1:{port}/ok", dns_name="localhost", dns_ip=None)
    p.run_once()
    assert set(p.results) == {"http", "resolve"} and p.failing() == []
    web.shutdown()
    web.server_close()
    p.run_once()
    assert p.failing() and "http" in p.failing()[0]
