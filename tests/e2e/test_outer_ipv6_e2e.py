"""The WireGuard socket over IPv6 (issue #11, deliverable 3), with the stock client.

wireguard-go's UDP sockets live in the root namespace (wgslirp_testkit/wgclient.py), on the
wildcard of both families, so the client reaches the router over ::1 as it does over
127.0.0.1; what travels through the tunnel is the usual IPv4 guest traffic. A dual-stack
router sees the IPv4 client as ::ffff:127.0.0.1 on its socket: `wg show` must still print
127.0.0.1, and print an IPv6 endpoint the way wireguard-go does, [addr]:port.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from wgslirp_testkit import guestprog
from wgslirp_testkit.hostservers import TcpServer, stream_chunks
from wgslirp_testkit.keys import generate_keypair
from wgslirp_testkit.netns import WG_SOCKET_DIR, unique_name
from wgslirp_testkit.ports import free_udp_port
from wgslirp_testkit.router import (
    GATEWAY,
    RouterProcess,
    base_env,
    client_from_router_output,
    router_cmd,
    stop_and_counters,
)
from wgslirp_testkit.wgclient import WgClient, WgDump, wait_tunnel

pytestmark = pytest.mark.e2e

MB = 1 << 20
guest = functools.partial(guestprog.run, timeout=120)


@pytest.fixture
def ifname() -> Iterator[str]:
    """The router's interface name, for `wg show` (one per test: xdist workers run side by
    side); a socket file left by a router killed mid-test is removed afterwards."""
    name = unique_name("i", lambda n: (WG_SOCKET_DIR / f"{n}.sock").exists())
    yield name
    (WG_SOCKET_DIR / f"{name}.sock").unlink(missing_ok=True)


def router_env(tmp_path: Path, port: int, ifname: str, listen: str | None) -> dict[str, str]:
    env = {**base_env(tmp_path, port), "WG_INTERFACE_NAME": ifname}
    if listen is None:
        del env["WG_LISTEN_ADDR"]  # the default
    else:
        env["WG_LISTEN_ADDR"] = listen
    return env


def router_endpoint(ifname: str, client: WgClient) -> str | None:
    """The client's endpoint as the router's `wg show` prints it."""
    out = subprocess.run(
        ["wg", "show", ifname, "dump"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return WgDump.parse(out).peers[client.public_key].endpoint


def expected_sha(size: int) -> str:
    h = hashlib.sha256()
    for chunk in stream_chunks(size):
        h.update(chunk)
    return h.hexdigest()


def tcp_both_ways(c: WgClient, size: int) -> None:
    with TcpServer("sink") as sink, TcpServer("source", size=size) as source:
        up = guest(c, "tcp_upload", GATEWAY, sink.port, size)
        down = guest(c, "tcp_download", GATEWAY, source.port, 0)
        assert sink.results == [(size, expected_sha(size))], sink.results
    assert up["sha256"] == expected_sha(size)
    assert down["bytes"] == size and down["sha256"] == expected_sha(size)


def test_a_peer_over_an_ipv6_endpoint_pings_and_moves_tcp(tmp_path: Path, ifname: str) -> None:
    port = free_udp_port()
    with RouterProcess(router_cmd(), router_env(tmp_path, port, ifname, "::1")) as r:
        r.wait_for_line(rf"listening on \[::1\]:{port}\b", timeout=20)
        r.wait_for_line(r"^Endpoint = ", timeout=5)
        assert f"Endpoint = [::1]:{port}" in r.stdout()  # the client config says so too
        with client_from_router_output(r, port, endpoint_host="::1", log_level="error") as c:
            wait_tunnel(c, GATEWAY, interval=0.1)
            assert c.ping(GATEWAY, count=5, interval=0.05) == (5, 5)
            tcp_both_ways(c, 20 * MB)
            assert router_endpoint(ifname, c) == f"[::1]:{c.udp_port()}"
            counters = stop_and_counters(r)
    assert counters["send_errors"] == 0 and counters["internal_errors"] == 0
    assert counters["tcp_dials_ok"] == 2


def test_a_peer_roams_between_ipv4_and_ipv6_on_the_dual_stack_default(
    tmp_path: Path, ifname: str
) -> None:
    """WG_LISTEN_ADDR unset listens on [::] for both families. The client starts on
    127.0.0.1, moves to ::1 and back; each time the router answers at the address the last
    authenticated packet came from, and `wg show` follows."""
    port = free_udp_port()
    with RouterProcess(router_cmd(), router_env(tmp_path, port, ifname, None)) as r:
        r.wait_for_line(rf"listening on \[::\]:{port}\b", timeout=20)
        with client_from_router_output(r, port, log_level="error") as c:
            wait_tunnel(c, GATEWAY, interval=0.1)
            cport = c.udp_port()
            # an IPv4 peer on the dual-stack socket is shown as IPv4, not ::ffff:127.0.0.1
            assert router_endpoint(ifname, c) == f"127.0.0.1:{cport}"
            for host, shown in (("::1", f"[::1]:{cport}"), ("127.0.0.1", f"127.0.0.1:{cport}")):
                c.set_endpoint(host, port)
                assert c.ping(GATEWAY, count=3, interval=0.05) == (3, 3)
                assert router_endpoint(ifname, c) == shown
                tcp_both_ways(c, 2 * MB)
            counters = stop_and_counters(r)
    assert counters["send_errors"] == 0 and counters["internal_errors"] == 0


def test_the_router_initiates_to_a_configured_ipv6_endpoint(tmp_path: Path, ifname: str) -> None:
    """A wg-quick file's `Endpoint = [::1]:PORT` with a keepalive: the router sends the first
    initiation, over IPv6, from its dual-stack socket."""
    port, client_port = free_udp_port(), free_udp_port()
    server, client = generate_keypair(), generate_keypair()
    conf = tmp_path / "wgslirp.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {server.private}\nListenPort = {port}\n\n"
        f"[Peer]\nPublicKey = {client.public}\nAllowedIPs = 10.77.0.2/32\n"
        f"Endpoint = [::1]:{client_port}\nPersistentKeepalive = 1\n"
    )
    conf.chmod(0o600)
    env = {
        "WG_GATEWAY_IP": GATEWAY,
        "WG_INTERFACE_NAME": ifname,
        "WGSLIRP_STATE_DIR": str(tmp_path / "state"),
    }
    with RouterProcess(router_cmd("--config", str(conf)), env) as r:
        r.wait_for_line(rf"listening on \[::\]:{port}\b", timeout=20)
        with WgClient(
            client.private,
            server.public,
            None,
            allowed_ips=("10.77.0.0/24",),
            listen_port=client_port,
            log_level="error",
        ) as c:
            stats = c.wait_handshake(timeout=10)  # no client traffic: the router initiated
            assert stats.endpoint == f"[::1]:{port}"
            assert c.ping(GATEWAY, count=3, interval=0.05) == (3, 3)
            r.wait_for_line(r"handshake completed .* \(we initiated\)", timeout=5)
            assert router_endpoint(ifname, c) == f"[::1]:{client_port}"
            counters = stop_and_counters(r)
    assert counters["send_errors"] == 0 and counters["gateway_echo_replies"] == 3
