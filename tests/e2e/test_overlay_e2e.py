"""Overlay routing: two guests reach each other through the router, inside ingress."""

from __future__ import annotations

from pathlib import Path

import pytest

from wgslirp_testkit.keys import generate_keypair
from wgslirp_testkit.nft import NftGuard
from wgslirp_testkit.ports import free_udp_port
from wgslirp_testkit.router import (
    GATEWAY,
    RouterProcess,
    guest_client,
    router_cmd,
    stop_and_counters,
    two_peer_env,
)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("overlay", ["1", "0"])
def test_two_guests_ping_each_other_only_with_overlay(tmp_path: Path, overlay: str) -> None:
    port = free_udp_port()
    server, ka, kb = generate_keypair(), generate_keypair(), generate_keypair()
    env = two_peer_env(
        tmp_path, port, server.private, ka.public, kb.public, WG_OVERLAY_ROUTING=overlay
    )
    # Without overlay routing the router must not hand another peer's address to the host
    # network either: the guard proves nothing leaves for 10.77.0.0/24.
    with NftGuard("10.77.0.0/24") as guard, RouterProcess(router_cmd(), env) as r:
        r.wait_for_line(r"listening on 127\.0\.0\.1:\d+", timeout=20)
        with (
            guest_client(ka.private, server.public, port, 2) as a,
            guest_client(kb.private, server.public, port, 3, keepalive=1) as b,
        ):
            b.wait_handshake(timeout=10)
            sent, got = a.ping("10.77.0.3", count=10, interval=0.05, wait=1)
            assert sent == 10
            if overlay == "1":
                assert got == 10, a.last_ping_output
                assert b.ping("10.77.0.2", count=5, interval=0.05) == (5, 5)
            else:
                assert got == 0  # without overlay routing peers cannot see each other
            assert a.ping(GATEWAY, count=3, interval=0.05) == (3, 3)
        counters = stop_and_counters(r)
        assert guard.count() == 0
    if overlay == "1":
        assert counters["overlay_forwarded"] >= 30  # requests and replies, both ways
    else:
        assert counters["overlay_forwarded"] == 0 and counters["peer_space_dropped"] >= 10
