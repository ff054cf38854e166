"""IPv6 inside the tunnel, with the real wireguard-go client: ping6 of the gateway and of a
far host, hop limit, Packet Too Big and path MTU, TCP both ways sha256-verified, UDP and DNS
over the IPv6 addresses, closed ports refused, and refused destinations that never leave
the router (guarded by nftables)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from wgslirp_testkit import guestprog
from wgslirp_testkit.hostservers import TcpServer, TinyDns, UdpEcho, UdpSink, stream_chunks
from wgslirp_testkit.netns import Namespace, ipv6_unavailable, unique_name
from wgslirp_testkit.nft import NftGuard
from wgslirp_testkit.ports import closed_tcp_port, closed_udp_port, free_udp_port
from wgslirp_testkit.router import base_env, client_from_router_output, router, stop_and_counters

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(ipv6_unavailable() is not None, reason=str(ipv6_unavailable())),
]

GW6 = "fd77::1"
DNS6 = "fd77::53"
MB = 1 << 20

guest = functools.partial(guestprog.run, timeout=150)


def expected_sha(size: int) -> str:
    h = hashlib.sha256()
    for chunk in stream_chunks(size):
        h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def far_host6() -> Iterator[tuple[Namespace, str, str]]:
    """A namespace on a veth with an IPv6 /64 unique to this process: (namespace, this
    host's address on the link, the far host's address). Only the namespace is ever sent
    to; the link and the namespace are removed afterwards."""
    pid = os.getpid()
    prefix = f"fd7e:{pid & 0xFFFF:x}:{(pid >> 16) & 0xFFFF:x}:1"
    near, far = f"{prefix}::1", f"{prefix}::2"
    veth = unique_name("i")
    with Namespace() as host:
        host.run(["true"])
        subprocess.run(
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p"], check=True
        )
        try:
            subprocess.run(["ip", "link", "set", veth + "p", "netns", host.name], check=True)
            subprocess.run(["ip", "addr", "add", f"{near}/64", "dev", veth, "nodad"], check=True)
            subprocess.run(["ip", "link", "set", veth, "up"], check=True)
            host.ip("addr", "add", f"{far}/64", "dev", veth + "p", "nodad")
            host.ip("link", "set", veth + "p", "up")
            yield host, near, far
        finally:
            subprocess.run(["ip", "link", "del", veth], check=False, capture_output=True)


def test_ping6_gateway_far_host_hop_limit_and_packet_too_big(tmp_path: Path) -> None:
    port = free_udp_port()
    with (
        far_host6() as (_host, _near, far),
        router(base_env(tmp_path, port)) as r,
        # The guest's link MTU is larger than the router's 1380, so the router is the first
        # hop that cannot carry a large packet: it must say so with Packet Too Big.
        client_from_router_output(
            r, port, allowed_ips=("10.77.0.0/24", "fd77::/64", far + "/128"), mtu=1500
        ) as c,
    ):
        assert c.ping(GW6, count=5, interval=0.05) == (5, 5), c.last_ping_output
        assert c.ping(far, count=10, interval=0.05) == (10, 10), c.last_ping_output
        # hop limit 1: the router is one hop and says so from its IPv6 gateway address
        hl1 = c.run(["ping", "-n", "-c", "1", "-t", "1", "-W", "2", far], check=False).stdout
        assert f"From {GW6}" in hl1 and "Time exceeded" in hl1, hl1
        # above the tunnel MTU with fragmentation forbidden: Packet Too Big with the MTU ...
        big = c.run(
            ["ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1400", far], check=False
        ).stdout
        assert "Packet too big" in big and "mtu=1380" in big, big
        # ... which the guest's kernel now knows: the same size fails locally (an error, and
        # no second Packet Too Big from the router, below), ...
        again = c.run(
            ["ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1400", far], check=False
        ).stdout
        assert " 0 received, +1 errors" in again, again
        # ... and a packet of exactly the MTU (1332 + 8 + 40 = 1380) fits
        assert c.ping(far, count=3, interval=0.05, size=1332, dont_fragment=True) == (3, 3), (
            c.last_ping_output
        )
        counters = stop_and_counters(r)
    assert counters["ipv6_too_big"] == 1
    assert counters["gateway_echo_replies"] >= 5
    assert counters["icmp_echo_replies"] >= 13


def test_tcp_udp_and_dns_over_ipv6(tmp_path: Path) -> None:
    port = free_udp_port()
    size = 20 * MB
    with TinyDns({"host.test": "10.9.8.7"}, host="::1") as dns:  # type: ignore[arg-type]
        env = base_env(tmp_path, port) | {
            "WG_DNS_IP6": DNS6,
            "WG_DNS_UPSTREAM": f"[::1]:{dns.port}",
        }
        with (
            TcpServer("sink", host="::1") as sink,
            TcpServer("source", size=size, host="::1") as source,
            UdpEcho(host="::1") as echo,
            closed_tcp_port("::1") as closed_tcp,
            closed_udp_port("::1") as closed_udp,
            router(env) as r,
            client_from_router_output(r, port, allowed_ips=("10.77.0.0/24", "fd77::/64")) as c,
        ):
            # through the gateway to the host's [::1], both ways, every byte verified
            up = guest(c, "tcp_upload", GW6, sink.port, size)
            down = guest(c, "tcp_download", GW6, source.port, 0)
            assert sink.results == [(size, expected_sha(size))], sink.results
            assert up["sha256"] == expected_sha(size)
            assert down["bytes"] == size and down["sha256"] == expected_sha(size)
            # UDP, with datagrams above the MTU: the guest fragments, the router reassembles,
            # and fragments the echoes it originates
            for dsize in (1200, 1800):
                res = guest(c, "udp_echo", GW6, echo.port, 300, dsize, 16)
                assert res["verified"] == 300 and res["corrupt"] == 0, (dsize, res)
            # a ping larger than the MTU: fragmented both ways
            assert c.ping(GW6, count=3, interval=0.05, size=3000) == (3, 3), c.last_ping_output
            # DNS over the IPv6 DNS address, UDP and TCP, to an IPv6 upstream
            assert guest(c, "dns", DNS6, 53, "host.test")["address"] == "10.9.8.7"
            assert guest(c, "dns_tcp", DNS6, 53, "host.test")["address"] == "10.9.8.7"
            # closed ports refused at once, not after a timeout
            res = guest(c, "tcp_connect_time", GW6, closed_tcp, 3, 2.0)
            assert [e for e, _ in res["results"]] == ["ECONNREFUSED"] * 3, res
            assert guest(c, "udp_error", GW6, closed_udp)["error"] == "ECONNREFUSED"
            counters = stop_and_counters(r)
    assert counters["fragments_sent"] >= 300
    assert counters["udp_icmp_errors_relayed"] >= 1
    assert counters["ipv6_malformed"] == 0 and counters["ipv6_udp_zero_checksum"] == 0


def test_refused_ipv6_destinations_never_leave_the_router(tmp_path: Path) -> None:
    port = free_udp_port()
    with (
        far_host6() as (_host, near, _far),
        UdpSink(host="::1") as sink6,
        UdpSink() as sink4,
        socket.create_server((near, 0), family=socket.AF_INET6) as lsn,
        NftGuard("::1", port=sink6.port, proto="udp") as g_lo6,
        NftGuard("127.0.0.1", port=sink4.port, proto="udp") as g_lo4,
        NftGuard(near, port=lsn.getsockname()[1], proto="tcp") as g_host6,
        router(base_env(tmp_path, port)) as r,
        client_from_router_output(r, port, allowed_ips=("0.0.0.0/0", "::/0")) as c,
    ):
        # straight at the host's ::1 (the guest's own kernel would keep it on its loopback,
        # so the packets are handed to the tunnel device directly) ...
        guest(c, "raw_udp6", c.interface, "fd77::2", "::1", sink6.port, 3)
        # ... at the host's 127.0.0.1 disguised as an IPv4-mapped address ...
        guest(c, "raw_udp6", c.interface, "fd77::2", "::ffff:127.0.0.1", sink4.port, 3)
        # ... and at a service on one of the host's own IPv6 addresses
        lsn.settimeout(0.5)
        res = guest(c, "tcp_connect_time", near, lsn.getsockname()[1], 1, 2.0)
        assert res["results"][0][0] not in ("connected", "timeout"), res
        with pytest.raises(TimeoutError):
            lsn.accept()  # nothing arrived
        # the gateway still works, so the tunnel was up all along
        assert c.ping(GW6, count=2, interval=0.05) == (2, 2), c.last_ping_output
        counters = stop_and_counters(r)
        assert (g_lo6.count(), g_lo4.count(), g_host6.count()) == (0, 0, 0)
        assert sink6.received == 0 and sink4.received == 0
    assert counters["ipv6_v4_compatible_dropped"] >= 3  # ::1 never reaches a worker
    assert counters["policy_denied"] >= 4  # 3 mapped datagrams' flow (1) + host address


def test_iperf3_over_ipv6_to_a_far_host_both_ways(tmp_path: Path) -> None:
    """iperf3 -6 up and down between the guest and an iperf3 server in a far namespace:
    the router's AF_INET6 host sockets on a real link. Throughput is printed, not asserted
    (benchmarks in scripts/ measure speed); the test checks that bytes flowed both ways."""
    from wgslirp_testkit.iperf import Iperf3Server, client_argv, parse_client_output

    port = free_udp_port()
    with (
        far_host6() as (host, _near, far),
        Iperf3Server(far, 5201, ns=host) as srv,
        router(base_env(tmp_path, port)) as r,
        client_from_router_output(r, port, allowed_ips=("10.77.0.0/24", far + "/128")) as c,
    ):
        results = []
        for reverse in (False, True):
            argv = client_argv(far, 5201, seconds=2, omit=0, reverse=reverse)
            done = c.run(argv, check=False, timeout=30)
            res = parse_client_output(done.stdout.encode(), done.stderr.encode())
            srv.drain()
            assert res.mbit > 0, res
            results.append(res.mbit)
        print(f"\niperf3 -6 through the tunnel: up {results[0]:.0f}, down {results[1]:.0f} Mbit/s")
        counters = stop_and_counters(r)
    assert counters["tcp_dials_ok"] >= 4  # control and data connection, each way


@contextlib.contextmanager
def http_server(directory: Path, bind: str, ns: Namespace | None = None) -> Iterator[int]:
    """python -m http.server on [bind]:port serving `directory` (in `ns`, or here); stopped
    by PID. Waits (bounded) until it accepts connections."""
    import sys
    import time

    port = 8080 if ns is not None else free_tcp6_port()
    argv = [sys.executable, "-m", "http.server", "--bind", bind, "--directory", str(directory)]
    argv.append(str(port))
    if ns is not None:
        proc = ns.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
    try:
        for _ in range(100):  # up to 10 s for the interpreter to start
            # listening sockets, as the namespace (or this one) sees them
            ss = (ns.run(["ss", "-Htln"]) if ns else subprocess.run(
                ["ss", "-Htln"], capture_output=True, text=True, timeout=5
            )).stdout  # fmt: skip
            if f"{bind}]:{port} " in ss or f"{bind}:{port} " in ss:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"http.server on [{bind}]:{port} did not start")
        yield port
    finally:
        proc.kill()
        proc.wait(5)


def free_tcp6_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


def test_curl6_100mb_from_host_loopback_and_from_a_far_host(tmp_path: Path) -> None:
    """curl -6 through the tunnel, sha256 of what arrived equal to the file served: from the
    host's [::1] through the gateway alias, and from a far host over a real link."""
    www = tmp_path / "www"
    www.mkdir()
    blob = www / "blob"
    h = hashlib.sha256()
    with blob.open("wb") as f:
        for _ in range(100):
            chunk = os.urandom(MB)
            h.update(chunk)
            f.write(chunk)
    want = h.hexdigest()
    port = free_udp_port()
    with (
        far_host6() as (host, _near, far),
        http_server(www, far, host) as far_port,
        http_server(www, "::1") as lo_port,
        router(base_env(tmp_path, port)) as r,
        client_from_router_output(
            r, port, allowed_ips=("10.77.0.0/24", "fd77::/64", far + "/128")
        ) as c,
    ):
        for url in (f"http://[{GW6}]:{lo_port}/blob", f"http://[{far}]:{far_port}/blob"):
            out = c.run(
                ["sh", "-c", f"curl -6 -sS --fail --max-time 120 {url} | sha256sum"], timeout=150
            ).stdout
            assert out.split()[0] == want, (url, out)
        counters = stop_and_counters(r)
    assert counters["tcp_bytes_to_guest"] >= 200 * MB


def test_two_guests_ping6_each_other_through_the_overlay(tmp_path: Path) -> None:
    """Overlay routing with IPv6 AllowedIPs: peer to peer inside ingress, hop limit lowered,
    nothing for the peers' IPv6 space ever leaves through a host socket (guarded)."""
    from wgslirp_testkit.keys import generate_keypair
    from wgslirp_testkit.router import RouterProcess, router_cmd, two_peer_env
    from wgslirp_testkit.wgclient import WgClient

    port = free_udp_port()
    server, ka, kb = generate_keypair(), generate_keypair(), generate_keypair()
    env = two_peer_env(
        tmp_path,
        port,
        server.private,
        ka.public,
        kb.public,
        WG_OVERLAY_ROUTING="1",
        WG_GATEWAY_IP6=GW6,
        WG_PEER_0_ALLOWED_IPS="10.77.0.2/32, fd77::2/128",
        WG_PEER_1_ALLOWED_IPS="10.77.0.3/32, fd77::3/128",
    )
    routes = ("10.77.0.0/24", "fd77::/64")
    with NftGuard("fd77::/64") as guard, RouterProcess(router_cmd(), env) as r:
        r.wait_for_line(r"listening on 127\.0\.0\.1:\d+", timeout=20)
        with (
            WgClient(ka.private, server.public, port, address="10.77.0.2/32, fd77::2/128",
                     allowed_ips=routes) as a,
            WgClient(kb.private, server.public, port, address="10.77.0.3/32, fd77::3/128",
                     allowed_ips=routes, keepalive=1) as b,
        ):  # fmt: skip
            b.wait_handshake(timeout=10)
            assert a.ping("fd77::3", count=10, interval=0.05) == (10, 10), a.last_ping_output
            assert b.ping("fd77::2", count=5, interval=0.05) == (5, 5), b.last_ping_output
            assert a.ping(GW6, count=3, interval=0.05) == (3, 3), a.last_ping_output
        counters = stop_and_counters(r)
        assert guard.count() == 0
    assert counters["overlay_forwarded"] >= 30  # requests and replies, both ways


@contextlib.contextmanager
def far_host4() -> Iterator[tuple[Namespace, str]]:
    """A namespace on a veth with an IPv4 /30 unique to this process (as the IPv4 far-host
    tests build it): (namespace, the far host's address)."""
    pid = os.getpid()
    net = 10 << 24 | 202 << 16 | (pid % 64) << 8 | (pid // 64 % 60) * 4
    a = lambda k: f"{net >> 24}.{(net >> 16) & 255}.{(net >> 8) & 255}.{(net & 255) + k}"  # noqa: E731
    veth = unique_name("i")
    with Namespace() as host:
        host.run(["true"])
        subprocess.run(
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p"], check=True
        )
        try:
            subprocess.run(["ip", "link", "set", veth + "p", "netns", host.name], check=True)
            subprocess.run(["ip", "addr", "add", f"{a(1)}/30", "dev", veth], check=True)
            subprocess.run(["ip", "link", "set", veth, "up"], check=True)
            host.ip("addr", "add", f"{a(2)}/30", "dev", veth + "p")
            host.ip("link", "set", veth + "p", "up")
            yield host, a(2)
        finally:
            subprocess.run(["ip", "link", "del", veth], check=False, capture_output=True)


def test_nat64_lets_an_ipv6_guest_reach_an_ipv4_host(tmp_path: Path) -> None:
    """EGRESS_NAT64: ping -6 and curl -6 to 64:ff9b::a.b.c.d reach an IPv4-only far host;
    64:ff9b::127.0.0.1 is judged as 127.0.0.1 and refused (guarded)."""
    www = tmp_path / "www"
    www.mkdir()
    payload = os.urandom(4 * MB)
    (www / "blob").write_bytes(payload)
    port = free_udp_port()
    with (
        far_host4() as (host, far4),
        http_server(www, far4, host) as far_port,
        UdpSink() as sink4,
        NftGuard("127.0.0.1", port=sink4.port, proto="udp") as g_lo,
        router(base_env(tmp_path, port) | {"EGRESS_NAT64": "1"}) as r,
        client_from_router_output(
            r, port, allowed_ips=("10.77.0.0/24", "fd77::/64", "64:ff9b::/96")
        ) as c,
    ):
        nat = f"64:ff9b::{far4}"
        assert c.ping(nat, count=5, interval=0.05) == (5, 5), c.last_ping_output
        url = f"http://[{nat}]:{far_port}/blob"
        out = c.run(["sh", "-c", f"curl -6 -sS --fail --max-time 60 {url} | sha256sum"]).stdout
        assert out.split()[0] == hashlib.sha256(payload).hexdigest(), out
        res = guest(c, "udp_error", "64:ff9b::127.0.0.1", sink4.port)
        assert res["error"] not in (None, "timeout"), res
        counters = stop_and_counters(r)
        assert g_lo.count() == 0 and sink4.received == 0
    assert counters["policy_denied"] >= 1
