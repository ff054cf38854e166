"""A handshake flood at the rate one core can send, against the real router, with a real
wireguard-go peer arriving during it (issue #10, items 4 and 5)."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wgslirp.obs.http import http_get
from wgslirp_testkit.flood import flooder, initiation_with_mac1, time_to_first_reply
from wgslirp_testkit.keys import generate_keypair
from wgslirp_testkit.ports import free_tcp_port, free_udp_port
from wgslirp_testkit.router import GATEWAY, guest_client, router, two_peer_env

pytestmark = pytest.mark.e2e

FLOOD_SECONDS = 10.0


def metric(port: int, name: str) -> float:
    status, body = http_get("127.0.0.1", port, "/metrics")
    assert status == 200
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name == name:
                return float(s.value)
    raise AssertionError(f"{name} is not on /metrics")


def test_a_new_peer_gets_its_handshake_during_a_flood_and_the_flood_is_visible(
    tmp_path: Path,
) -> None:
    """Before load shedding the fresh peer got no handshake until the flood stopped (the
    cookie replies saturated ingress and its socket overflowed), and the flood's counters
    were only in the exit log."""
    port, mport = free_udp_port(), free_tcp_port()
    server, a, b = generate_keypair(), generate_keypair(), generate_keypair()
    env = two_peer_env(
        tmp_path,
        port,
        server.private,
        a.public,
        b.public,
        PROCESSOR_WORKERS="0",
        METRICS_LISTEN=f"127.0.0.1:{mport}",
        METRICS_INTERVAL="200ms",
    )
    with (
        router(env) as r,
        guest_client(a.private, server.public, port, 2, log_level="error") as ca,
        guest_client(b.private, server.public, port, 3, log_level="error") as cb,
    ):
        assert time_to_first_reply(ca, 10) is not None
        sent = mp.Value("q", 0)
        proc = mp.Process(
            target=flooder,
            args=(port, initiation_with_mac1(server.public_bytes), FLOOD_SECONDS, sent),
        )
        proc.start()
        try:
            time.sleep(1.5)  # the flood is at full rate
            answered: list[tuple[int, int]] = []
            pinger = threading.Thread(
                target=lambda: answered.append(ca.ping(GATEWAY, count=30, interval=0.1, wait=1))
            )
            pinger.start()
            started = time.monotonic()
            first = time_to_first_reply(cb, FLOOD_SECONDS - 3)
            pinger.join(30)
            # The bound is what is left of the flood: a reply after it would prove nothing.
            assert first is not None, "the new peer got no handshake while the flood lasted"
            assert time.monotonic() - started < FLOOD_SECONDS - 1.5
            assert proc.is_alive(), "the flood ended before the measurement did"
            sent_pings, got = answered[0]
            assert got >= sent_pings / 2, f"established peer: {got} of {sent_pings} answered"
            # The flood is on /metrics while it happens (item 5).
            deadline = time.monotonic() + 3
            while metric(mport, "wgslirp_handshake_shed_total") == 0:
                assert time.monotonic() < deadline, "no handshake_shed on /metrics"
                time.sleep(0.2)
            assert metric(mport, "wgslirp_cookie_replies_sent_total") >= 1
        finally:
            proc.join(FLOOD_SECONDS + 10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        assert r.terminate(timeout=10) == 0
    assert sent.value > 10_000  # it really was a flood
