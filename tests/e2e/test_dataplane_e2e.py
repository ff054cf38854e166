"""The sharded data plane through a real tunnel: UDP, DNS, ICMP, policy, worker faults."""

from __future__ import annotations

import functools
import os
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from wgslirp_testkit import guestprog
from wgslirp_testkit.hostservers import TinyDns, UdpEcho, UdpSink
from wgslirp_testkit.netns import Namespace, unique_name
from wgslirp_testkit.nft import NftGuard
from wgslirp_testkit.ports import closed_udp_port, free_udp_port
from wgslirp_testkit.router import (
    GATEWAY,
    base_env,
    client_from_router_output,
    router,
    stop_and_counters,
)

pytestmark = pytest.mark.e2e

DNS_IP = "10.77.0.53"


guest = functools.partial(guestprog.run, timeout=150)


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm"))


@pytest.mark.parametrize("workers", [0, 2])
def test_udp_echo_10000_datagrams_verified(tmp_path: Path, workers: int) -> None:
    port = free_udp_port()
    with (
        UdpEcho() as echo,
        router(base_env(tmp_path, port, workers)) as r,
        client_from_router_output(r, port) as c,
    ):
        res = guest(c, "udp_echo", GATEWAY, echo.port, 10_000, 200, 32)
        assert res["verified"] == 10_000 and res["corrupt"] == 0 and res["missing"] == 0, res
        counters = stop_and_counters(r)
    assert counters["udp_flows_opened"] == 1
    assert counters["udp_rx_packets"] >= 10_000 and counters["ring_full_dropped"] == 0


def test_large_udp_reply_is_fragmented_and_reassembled(tmp_path: Path) -> None:
    port = free_udp_port()
    with (
        UdpEcho() as echo,
        router(base_env(tmp_path, port)) as r,
        client_from_router_output(r, port) as c,
    ):
        # 1300-byte payload fits the 1380 MTU; 1352 + 28 = 1380 exactly; 1353 needs two
        # fragments back towards the guest (guest->router direction is fragmented by the
        # guest's kernel and reassembled in ingress).
        for size in (1300, 1352, 1353, 1800):
            res = guest(c, "udp_echo", GATEWAY, echo.port, 20, size, 4)
            assert res["verified"] == 20, (size, res)
        counters = stop_and_counters(r)
    assert counters["fragments_sent"] >= 40


def test_dns_via_dns_address_and_via_gateway(tmp_path: Path) -> None:
    port = free_udp_port()
    with TinyDns({"host.test": "10.9.8.7"}) as dns:
        env = base_env(tmp_path, port) | {
            "WG_DNS_IP": DNS_IP,
            "WG_DNS_UPSTREAM": f"127.0.0.1:{dns.port}",
        }
        with router(env) as r, client_from_router_output(r, port) as c:
            via_dns = guest(c, "dns", DNS_IP, 53, "host.test")
            assert via_dns["address"] == "10.9.8.7" and via_dns["from"] == [DNS_IP, 53]
            nx = guest(c, "dns", DNS_IP, 53, "nope.test")
            assert nx["rcode"] == 3
            via_gw = guest(c, "dns", GATEWAY, dns.port, "host.test")
            assert via_gw["address"] == "10.9.8.7" and via_gw["from"] == [GATEWAY, dns.port]
            # DNS over TCP too (RFC 7766: the retry after a truncated UDP answer)
            via_tcp = guest(c, "dns_tcp", DNS_IP, 53, "host.test")
            assert via_tcp == {"id": 0xBEEF, "rcode": 0, "address": "10.9.8.7"}, via_tcp
            # the DNS address answers DNS only
            assert guest(c, "udp_error", DNS_IP, 5353)["error"] == "EHOSTUNREACH"
            assert guest(c, "dns_tcp", DNS_IP, 853, "host.test")["error"] in (
                "EHOSTUNREACH",
                "ECONNREFUSED",
            )
            stop_and_counters(r)
        assert dns.received == 3 and dns.tcp_received == 1


def test_udp_to_closed_host_port_is_connection_refused(tmp_path: Path) -> None:
    port = free_udp_port()
    with (
        closed_udp_port() as closed,
        router(base_env(tmp_path, port)) as r,
        client_from_router_output(r, port) as c,
    ):
        assert guest(c, "udp_error", GATEWAY, closed)["error"] == "ECONNREFUSED"
        counters = stop_and_counters(r)
    assert counters["udp_icmp_errors_relayed"] >= 1


def test_ping_gateway_and_a_test_host_in_another_namespace(tmp_path: Path) -> None:
    port = free_udp_port()
    veth = unique_name("i")
    # a /30 unique to this process, only ever routed to the namespace we create
    net = 10 << 24 | 201 << 16 | (os.getpid() % 64) << 8 | (os.getpid() // 64 % 60) * 4
    a = lambda k: f"{net >> 24}.{(net >> 16) & 255}.{(net >> 8) & 255}.{(net & 255) + k}"  # noqa: E731
    with Namespace() as host:
        host.run(["true"])
        import subprocess

        subprocess.run(
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p"], check=True
        )
        try:
            subprocess.run(["ip", "link", "set", veth + "p", "netns", host.name], check=True)
            subprocess.run(["ip", "addr", "add", f"{a(1)}/30", "dev", veth], check=True)
            subprocess.run(["ip", "link", "set", veth, "up"], check=True)
            host.ip("addr", "add", f"{a(2)}/30", "dev", veth + "p")
            host.ip("link", "set", veth + "p", "up")
            with (
                router(base_env(tmp_path, port)) as r,
                client_from_router_output(r, port, allowed_ips=("10.0.0.0/8",)) as c,
            ):
                assert c.ping(GATEWAY, count=5, interval=0.05) == (5, 5)
                # a ping larger than the tunnel MTU: fragmented both ways
                assert c.ping(GATEWAY, count=3, interval=0.05, size=3000) == (3, 3), (
                    c.last_ping_output
                )
                assert c.ping(a(2), count=10, interval=0.05) == (10, 10), c.last_ping_output
                # TTL 1: the router is one hop and says so from the gateway (traceroute)
                ttl1 = c.run(
                    ["ping", "-n", "-c", "1", "-t", "1", "-W", "2", a(2)], check=False
                ).stdout
                assert f"From {GATEWAY}" in ttl1 and "Time to live exceeded" in ttl1, ttl1
                # a(1) is this host's own address: a service listening there is not the
                # guests' business (the connection would arrive on loopback, past the host
                # firewall); only the gateway leads to host services
                with socket.create_server((a(1), 0)) as lsn:
                    lsn.settimeout(0.5)
                    res = guest(c, "tcp_connect_time", a(1), lsn.getsockname()[1], 1, 2.0)
                    assert res["results"][0][0] == "EHOSTUNREACH", res
                    with pytest.raises(TimeoutError):
                        lsn.accept()  # nothing arrived
                counters = stop_and_counters(r)
        finally:
            subprocess.run(["ip", "link", "del", veth], check=False, capture_output=True)
    assert counters["icmp_echo_replies"] == 10
    assert counters["policy_denied"] >= 1


def test_denied_destinations_never_leave_the_router(tmp_path: Path) -> None:
    port = free_udp_port()
    with (
        UdpSink() as sink,
        NftGuard("169.254.169.254") as g_meta,
        NftGuard("127.0.0.1", port=sink.port, proto="udp") as g_lo,
        router(base_env(tmp_path, port)) as r,
        client_from_router_output(r, port, allowed_ips=("0.0.0.0/0",)) as c,
    ):
        assert guest(c, "udp_error", "169.254.169.254", 80)["error"] == "EHOSTUNREACH"
        guest(c, "raw_udp", c.interface, "10.77.0.2", "127.0.0.1", sink.port, 3)
        assert c.ping("169.254.169.254", count=2, interval=0.1, wait=1) == (2, 0)
        # the router's own WireGuard port is not reachable through the gateway either
        assert guest(c, "udp_error", GATEWAY, port)["error"] == "EHOSTUNREACH"
        counters = stop_and_counters(r)
        assert g_meta.count() == 0 and g_lo.count() == 0 and sink.received == 0
    assert counters["policy_denied"] >= 4


def test_a_hung_worker_is_killed_and_replaced(tmp_path: Path) -> None:
    """A stopped (SIGSTOP) worker is alive to waitpid but serves nothing; the supervisor
    notices its loop no longer turns and replaces it."""
    port = free_udp_port()
    env = base_env(tmp_path, port, workers=2) | {"PROCESSOR_HUNG_RESTART": "3s"}
    with UdpEcho() as echo, router(env) as r, client_from_router_output(r, port) as c:
        assert guest(c, "udp_echo", GATEWAY, echo.port, 100, 100, 16)["verified"] == 100
        main = psutil.Process(r.pid)
        victim = next(p for p in main.children() if p.name() == "wgslirp-w1")
        mark = r.mark()
        os.kill(victim.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        hung = r.wait_for_line(
            r"worker 1 \(pid \d+\) has not turned its loop for ([0-9.]+) s", timeout=10, since=mark
        )
        r.wait_for_line(r"restarting worker 1", timeout=3, since=mark)
        # The rule under test is "killed once silent for longer than the limit": the silence
        # started at the worker's last heartbeat, which may precede the SIGSTOP by up to a
        # publish interval, so the lower bound is checked on the supervisor's own measure,
        # and only the upper bound on ours (detection can only come later than the stop).
        assert float(hung.group(1)) > 3.0
        assert time.monotonic() - t0 < 8.0
        assert not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE
        for _ in range(6):  # several source ports: the new worker 1 carries some
            assert guest(c, "udp_echo", GATEWAY, echo.port, 100, 100, 16)["verified"] == 100
        stop_and_counters(r)


def test_four_workers_one_killed_is_replaced_and_udp_keeps_flowing(tmp_path: Path) -> None:
    port = free_udp_port()
    before = shm_entries()
    with (
        UdpEcho() as echo,
        router(base_env(tmp_path, port, workers=4)) as r,
        client_from_router_output(r, port) as c,
    ):
        main = psutil.Process(r.pid)
        deadline = time.monotonic() + 5
        names: list[str] = []
        while time.monotonic() < deadline:
            # (multiprocessing's resource tracker is a child too; it is not ours to count)
            names = sorted(p.name() for p in main.children() if p.name().startswith("wgslirp"))
            if len(names) == 5:
                break
            time.sleep(0.05)
        assert names == ["wgslirp-ingress", "wgslirp-w0", "wgslirp-w1", "wgslirp-w2", "wgslirp-w3"]
        assert guest(c, "udp_echo", GATEWAY, echo.port, 500, 100, 16)["verified"] == 500
        victim = next(p for p in main.children() if p.name() == "wgslirp-w2")
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        replaced = None
        while time.monotonic() - killed_at < 1.0:
            ws = [
                p
                for p in main.children()
                if p.name() == "wgslirp-w2"
                and p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE
            ]
            if ws and ws[0].pid != victim.pid:
                replaced = ws[0]
                break
            time.sleep(0.02)
        assert replaced is not None, "worker 2 not replaced within 1 s"
        # several flows (source ports) so that every worker, the new one too, carries some
        for _ in range(8):
            assert guest(c, "udp_echo", GATEWAY, echo.port, 200, 100, 16)["verified"] == 200
        rc_start = time.monotonic()
        assert r.terminate(timeout=5) == 0
        assert time.monotonic() - rc_start < 2.0
        assert r.group_pids() == []
        assert "restarting worker 2" in r.output()
    assert shm_entries() <= before


def test_a_host_address_added_while_the_router_runs_is_refused_at_once(tmp_path: Path) -> None:
    """The worker read the host's addresses every 10 s: an address added meanwhile (DHCP, a
    new interface) was open to guests until the next read. Address notifications make the
    refusal immediate; this adds one after the router started and tries it straight away."""
    import subprocess

    port = free_udp_port()
    veth = unique_name("i")
    # a /30 unique to this process, only ever routed to the namespace we create
    net = 10 << 24 | 202 << 16 | (os.getpid() % 64) << 8 | (os.getpid() // 64 % 60) * 4
    here = f"{net >> 24}.{(net >> 16) & 255}.{(net >> 8) & 255}.{(net & 255) + 1}"
    with Namespace() as other:
        other.run(["true"])
        subprocess.run(
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p"], check=True
        )
        try:
            subprocess.run(["ip", "link", "set", veth + "p", "netns", other.name], check=True)
            subprocess.run(["ip", "link", "set", veth, "up"], check=True)
            with (
                router(base_env(tmp_path, port)) as r,
                client_from_router_output(r, port, allowed_ips=("10.0.0.0/8",)) as c,
            ):
                assert c.ping(GATEWAY, count=1, interval=0.05) == (1, 1)
                # Now, well inside the old 10 s poll interval, the host gets an address.
                subprocess.run(["ip", "addr", "add", f"{here}/30", "dev", veth], check=True)
                with (
                    NftGuard(here) as guard,  # the host never sends the guests' flows there
                    socket.create_server((here, 0)) as tcp,
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
                ):
                    udp.bind((here, 0))
                    tcp.settimeout(0.5)
                    udp.settimeout(0.5)
                    res = guest(c, "tcp_connect_time", here, tcp.getsockname()[1], 1, 2.0)
                    assert res["results"][0][0] == "EHOSTUNREACH", res
                    err = guest(c, "udp_error", here, udp.getsockname()[1])["error"]
                    assert err == "EHOSTUNREACH"
                    with pytest.raises(TimeoutError):
                        tcp.accept()  # nothing arrived
                    with pytest.raises(TimeoutError):
                        udp.recvfrom(100)
                    assert guard.count() == 0
                counters = stop_and_counters(r)
        finally:
            subprocess.run(["ip", "link", "del", veth], check=False, capture_output=True)
    assert counters["policy_denied"] >= 2
