"""The real router against a real WireGuard client (wireguard-go + wg in a namespace)."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from pathlib import Path

import pytest

from wgslirp_testkit.keys import generate_keypair
from wgslirp_testkit.ports import free_udp_port
from wgslirp_testkit.relay import LossyRelay
from wgslirp_testkit.router import (
    GATEWAY,
    base_env,
    client_from_router_output,
    parse_client_config,
    router,
    stop_and_counters,
)
from wgslirp_testkit.wgclient import WgClient

pytestmark = pytest.mark.e2e


def test_embedded_default_handshake_and_20_pings(tmp_path: Path) -> None:
    port = free_udp_port()
    env = base_env(tmp_path, port)
    with router(env) as r:
        first_config = r.stdout()
        with client_from_router_output(r, port) as c:
            sent, received = c.ping(GATEWAY, count=20, interval=0.05)
            assert (sent, received) == (20, 20), c.last_ping_output
            stats = c.wg_show_dump().peer
            assert stats.latest_handshake > 0 and stats.rx_bytes > 0 and stats.tx_bytes > 0
        counters = stop_and_counters(r)
    assert counters["gateway_echo_replies"] == 20
    assert counters["handshakes_completed"] >= 1 and counters["internal_errors"] == 0
    state = tmp_path / "state"
    for name in os.listdir(state):
        assert (state / name).stat().st_mode & 0o077 == 0, name
    # the server's private key never appears in any output (the client's is printed on
    # purpose: it is the ready-made client configuration)
    assert (state / "server.key").read_text().strip() not in r.output()
    # a second start reuses the same keys and prints the same client config
    with router(env) as r2:
        r2.wait_for_line(r"^PersistentKeepalive", timeout=5)
        assert r2.stdout() == first_config
        stop_and_counters(r2)


def test_unknown_client_key_gets_nothing_router_stays_healthy(tmp_path: Path) -> None:
    port = free_udp_port()
    with router(base_env(tmp_path, port)) as r:
        r.wait_for_line(r"^PersistentKeepalive", timeout=5)
        server_pub = parse_client_config(r.stdout())["PublicKey"]
        stranger = generate_keypair()
        with WgClient(stranger.private, server_pub, port, allowed_ips=("10.77.0.0/24",)) as bad:
            assert bad.ping(GATEWAY, count=3, interval=0.2, wait=1) == (3, 0)
            assert bad.wg_show_dump().peer.latest_handshake == 0
        with client_from_router_output(r, port) as good:
            assert good.ping(GATEWAY, count=5, interval=0.05) == (5, 5)
        counters = stop_and_counters(r)
    assert counters["unknown_peer"] >= 1
    assert counters["gateway_echo_replies"] == 5


def test_replayed_capture_is_rejected(tmp_path: Path) -> None:
    port = free_udp_port()
    with router(base_env(tmp_path, port)) as r:
        r.wait_for_line(r"^PersistentKeepalive", timeout=5)
        cfg = parse_client_config(r.stdout())
        with (
            LossyRelay(port, loss=0.0, reorder=0.0, record=True) as rec,
            WgClient(
                cfg["PrivateKey"], cfg["PublicKey"], rec.port, allowed_ips=("10.77.0.0/24",)
            ) as c,
        ):
            assert c.ping(GATEWAY, count=10, interval=0.05) == (10, 10)
            captured = list(rec.sent)
            # replay everything the client sent, from the relay's router-facing socket
            for data in captured:
                rec.back.send(data)
            time.sleep(0.3)
            assert c.ping(GATEWAY, count=3, interval=0.05) == (3, 3)
        counters = stop_and_counters(r)
    initiations = sum(1 for d in captured if d[0] == 1)
    transports = sum(1 for d in captured if d[0] == 4)
    assert initiations >= 1 and transports >= 10
    assert counters["handshake_replayed"] == initiations
    assert counters["transport_replayed"] == transports
    assert counters["gateway_echo_replies"] == 13  # replays produced no extra replies


def test_garbage_burst_is_counted_and_router_survives(tmp_path: Path) -> None:
    port = free_udp_port()
    rnd = random.Random(2026)
    with router(base_env(tmp_path, port)) as r, client_from_router_output(r, port) as c:
        assert c.ping(GATEWAY, count=3, interval=0.05) == (3, 3)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for i in range(10_000):
                kind = rnd.randrange(6)
                if kind == 0:
                    data = b""
                elif kind == 1:
                    data = rnd.randbytes(rnd.randrange(1, 32))
                elif kind == 2:
                    data = b"\x01\x00\x00\x00" + rnd.randbytes(144)  # initiation, bad MAC1
                elif kind == 3:
                    data = b"\x02\x00\x00\x00" + rnd.randbytes(rnd.choice([88, 50]))
                elif kind == 4:
                    data = b"\x04\x00\x00\x00" + rnd.randbytes(rnd.randrange(28, 1400))
                else:
                    data = rnd.randbytes(rnd.randrange(1, 1500))
                s.sendto(data, ("127.0.0.1", port))
                if i % 500 == 499:
                    time.sleep(0.02)  # let the router drain: we test parsing, not buffers
        finally:
            s.close()
        time.sleep(0.5)
        assert c.ping(GATEWAY, count=5, interval=0.05) == (5, 5)
        counters = stop_and_counters(r)
    dropped = sum(
        counters[k]
        for k in (
            "invalid_datagrams",
            "mac1_invalid",
            "unknown_index",
            "handshake_invalid",
            "transport_auth_failed",
        )
    )
    assert dropped == 10_000, counters
    assert counters["internal_errors"] == 0


def test_router_initiates_with_endpoint_keepalive_and_psk(tmp_path: Path) -> None:
    """Router-side config from a wg-quick file: endpoint + keepalive makes the router the
    initiator; a preshared key must match on both sides."""
    port, client_port = free_udp_port(), free_udp_port()
    server, client = generate_keypair(), generate_keypair()
    psk = generate_keypair().private
    conf = tmp_path / "wgslirp.conf"
    conf.write_text(
        "[Interface]\n"
        f"PrivateKey = {server.private}\nListenPort = {port}\n\n"
        "[Peer]\n"
        f"PublicKey = {client.public}\nPresharedKey = {psk}\nAllowedIPs = 10.77.0.2/32\n"
        f"Endpoint = 127.0.0.1:{client_port}\nPersistentKeepalive = 1\n"
    )
    conf.chmod(0o600)
    env = {
        "WG_LISTEN_ADDR": "127.0.0.1",
        "WG_GATEWAY_IP": GATEWAY,
        "WGSLIRP_STATE_DIR": str(tmp_path / "state"),
    }
    with (
        router(env, "--config", str(conf)) as r,
        WgClient(
            client.private,
            server.public,
            None,
            allowed_ips=("10.77.0.0/24",),
            preshared_key=psk,
            listen_port=client_port,
            peer_allowed_ips=("10.77.0.0/24",),
        ) as c,
    ):
        stats = c.wait_handshake(timeout=10)  # no client traffic: the router initiated
        assert stats.endpoint == f"127.0.0.1:{port}"
        assert c.ping(GATEWAY, count=5, interval=0.05) == (5, 5)
        r.wait_for_line(r"handshake completed .* \(we initiated\)", timeout=5)
        counters = stop_and_counters(r)
    assert counters["gateway_echo_replies"] == 5


def test_sigint_also_exits_zero(tmp_path: Path) -> None:
    port = free_udp_port()
    with router(base_env(tmp_path, port)) as r:
        r.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 5
        while r.returncode is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.returncode == 0, r.output()
