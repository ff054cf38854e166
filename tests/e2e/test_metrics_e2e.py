"""Metrics and health of the running router, read the way operators read them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wgslirp.obs.http import http_get
from wgslirp_testkit import guestprog
from wgslirp_testkit.hostservers import UdpEcho
from wgslirp_testkit.ports import free_tcp_port, free_udp_port
from wgslirp_testkit.router import (
    GATEWAY,
    base_env,
    client_from_router_output,
    router,
    stop_and_counters,
)

pytestmark = pytest.mark.e2e


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    status, body = http_get("127.0.0.1", port, "/metrics")
    assert status == 200
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_prometheus_counters_match_the_client_within_1_percent(
    tmp_path: Path, workers: int
) -> None:
    port, mport = free_udp_port(), free_tcp_port()
    env = base_env(tmp_path, port, workers) | {
        "METRICS_LISTEN": f"127.0.0.1:{mport}",
        "METRICS_LOG": "1",
        "METRICS_INTERVAL": "1s",
    }
    with UdpEcho() as echo, router(env) as r, client_from_router_output(r, port) as c:
        r.wait_for_line(r"metrics and health on", timeout=5)
        c.run(guestprog.command("udp_echo", GATEWAY, echo.port, 2000, 1000, 16), timeout=60)
        assert c.ping(GATEWAY, count=5, interval=0.05) == (5, 5)
        assert http_get("127.0.0.1", mport, "/healthz")[0] == 200
        assert http_get("127.0.0.1", mport, "/readyz")[0] == 200
        client = c.wg_show_dump().peer
        key = (("public_key", c.public_key),)
        deadline = time.monotonic() + 10
        while True:
            m = scrape(mport)
            rx = m["wgslirp_peer_rx_bytes_total"][key]
            tx = m["wgslirp_peer_tx_bytes_total"][key]
            # (the flow gauge comes from the workers' reports, up to a second after
            # ingress's byte counters: one scrape may see the bytes and not yet the flow)
            if (
                abs(rx - client.tx_bytes) <= 0.01 * client.tx_bytes
                and abs(tx - client.rx_bytes) <= 0.01 * client.rx_bytes
                and m["wgslirp_flows"].get((("proto", "udp"),)) == 1
            ):
                break
            assert time.monotonic() < deadline, (rx, tx, client)
            time.sleep(0.3)
            client = c.wg_show_dump().peer
        assert client.tx_bytes > 2_000_000
        assert m["wgslirp_peer_last_handshake_seconds"][key] > time.time() - 60
        assert m["wgslirp_flows"][(("proto", "udp"),)] == 1
        assert m["wgslirp_peers"][()] == 1
        assert any(k.startswith("wgslirp_process_rss_bytes") for k in m)
        hc = subprocess.run(
            [sys.executable, "-m", "wgslirp", "healthcheck"],
            env={"METRICS_LISTEN": f"127.0.0.1:{mport}", "PATH": "/usr/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert hc.returncode == 0, hc.stderr
        r.wait_for_line(r"metrics rx_packets=\d+", timeout=5)
        stop_and_counters(r)


def test_healthcheck_fails_when_nothing_listens() -> None:
    hc = subprocess.run(
        [sys.executable, "-m", "wgslirp", "healthcheck"],
        env={"METRICS_LISTEN": f"127.0.0.1:{free_tcp_port()}", "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert hc.returncode == 1 and "unhealthy" in hc.stderr


def test_healthcheck_probes_feed_readiness_and_metrics(tmp_path: Path) -> None:
    import http.server
    import threading

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_a: object) -> None:
            pass

    web = http.server.HTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    port, mport = free_udp_port(), free_tcp_port()
    env = base_env(tmp_path, port, 1) | {
        "METRICS_LISTEN": f"127.0.0.1:{mport}",
        "HEALTHCHECK": "1",
        "HEALTH_HTTP_URL": f"http://127.0.0.1:{web.server_address[1]}/",
        "HEALTH_DNS_NAME": "localhost",
        "HEALTH_DNS_IP": "127.0.0.1",
    }
    try:
        with router(env) as r:
            r.wait_for_line(r"health probe http ok", timeout=10)
            r.wait_for_line(r"health probe dns_server FAILED", timeout=10)  # nothing on :53
            # Alive once every process has turned its loop (a moment after the probes,
            # which the supervisor runs first, on a busy machine longer), yet not ready.
            deadline = time.monotonic() + 10
            while http_get("127.0.0.1", mport, "/healthz")[0] != 200:
                assert time.monotonic() < deadline, "/healthz never turned 200"
                time.sleep(0.05)
            status, body = http_get("127.0.0.1", mport, "/readyz")
            assert status == 503 and "dns_server" in body
            m = scrape(mport)
            assert m["wgslirp_health_probe_up"][(("probe", "http"),)] == 1
            assert m["wgslirp_health_probe_up"][(("probe", "dns_server"),)] == 0
            stop_and_counters(r)
    finally:
        web.shutdown()
        web.server_close()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_taken_metrics_port_fails_the_start_cleanly(tmp_path: Path, workers: int) -> None:
    """Listeners open before anything is announced: exit 1 naming METRICS_LISTEN, no client
    config printed, no child started, no wg(8) socket left behind."""
    ifname = f"wgm{os.getpid() % 100000}{workers}"
    sock_file = Path("/var/run/wireguard") / f"{ifname}.sock"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        env = base_env(tmp_path, free_udp_port(), workers) | {
            "METRICS_LISTEN": f"127.0.0.1:{taken.getsockname()[1]}",
            "WG_INTERFACE_NAME": ifname,
            "PATH": "/usr/bin",
        }
        res = subprocess.run(
            [sys.executable, "-m", "wgslirp"], env=env, capture_output=True, text=True, timeout=30
        )
    assert res.returncode == 1, res.stderr
    assert "METRICS_LISTEN" in res.stderr and "WG_LISTEN_PORT" not in res.stderr, res.stderr
    assert "[Interface]" not in res.stdout and "listening on" not in res.stderr, res
    assert "restarting" not in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not sock_file.exists()
