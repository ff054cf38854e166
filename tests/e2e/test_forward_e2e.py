"""Inbound port forwards through the real tunnel: a host client connects to a port of the
router's host and reaches a service inside the wireguard-go guest's namespace."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wgslirp.obs.http import http_get
from wgslirp_testkit.guestprog import tcp_echo_many
from wgslirp_testkit.guestserver import GuestServer
from wgslirp_testkit.hostservers import stream_chunks
from wgslirp_testkit.keys import generate_keypair
from wgslirp_testkit.ports import free_tcp_port, free_udp_port
from wgslirp_testkit.proc import child_pid
from wgslirp_testkit.router import (
    GATEWAY,
    RouterProcess,
    base_env,
    client_from_router_output,
    exit_counters,
    guest_client,
    router,
    router_cmd,
    stop_and_counters,
    two_peer_env,
)
from wgslirp_testkit.wgclient import wait_tunnel

pytestmark = pytest.mark.e2e

GUEST = "10.77.0.2"
MB = 1 << 20


def _sha(size: int) -> str:
    h = hashlib.sha256()
    for chunk in stream_chunks(size):
        h.update(chunk)
    return h.hexdigest()


def _connect(port: int, timeout: float = 30.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


@pytest.mark.parametrize("workers", [0, 2])
def test_curl_reaches_http_server_inside_the_guest(tmp_path: Path, workers: int) -> None:
    port, hport = free_udp_port(), free_tcp_port()
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_text("hello from the guest\n")
    env = base_env(tmp_path, port, workers) | {"WG_FORWARD_TCP": f"127.0.0.1:{hport}={GUEST}:8080"}
    with router(env) as r, client_from_router_output(r, port, log_level="error") as c:
        wait_tunnel(c, GATEWAY, interval=0.1)
        http = [sys.executable, "-m", "http.server", "--bind", GUEST, "--directory", str(site)]
        c.popen([*http, "8080"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = ""
        deadline = time.monotonic() + 60  # until the guest's server listens
        while time.monotonic() < deadline:
            res = subprocess.run(
                ["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{hport}/hello.txt"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            out = res.stdout
            if res.returncode == 0:
                break
            time.sleep(0.2)
        assert out == "hello from the guest\n", res.stderr
        counters = stop_and_counters(r)
    assert counters["tcp_forwarded"] >= 1 and counters["internal_errors"] == 0


def _upload(port: int, size: int) -> float:
    """Send `size` bytes of the pattern and wait for the server's close; Mbit/s."""
    t0 = time.monotonic()
    with _connect(port) as s:
        for chunk in stream_chunks(size):
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1) == b""
    return size * 8 / (time.monotonic() - t0) / 1e6


def _download(port: int) -> tuple[int, str, float]:
    h = hashlib.sha256()
    n = 0
    t0 = time.monotonic()
    with _connect(port) as s:
        while data := s.recv(1 << 20):
            h.update(data)
            n += len(data)
    return n, h.hexdigest(), n * 8 / (time.monotonic() - t0) / 1e6


def test_100mb_each_way_sha256(tmp_path: Path) -> None:
    port, up_port, down_port = free_udp_port(), free_tcp_port(), free_tcp_port()
    size = 100 * MB
    env = base_env(tmp_path, port) | {
        "WG_FORWARD_TCP": f"{up_port}={GUEST}:9001,{down_port}={GUEST}:9002"
    }
    with router(env) as r, client_from_router_output(r, port, log_level="error") as c:
        wait_tunnel(c, GATEWAY, interval=0.1)
        with (
            GuestServer(c, "tcp", "sink", GUEST, 9001) as sink,
            GuestServer(c, "tcp", "source", GUEST, 9002, size=size),
        ):
            up = _upload(up_port, size)
            assert sink.wait_results(1, 30) == [(size, _sha(size))]
            n, sha, down = _download(down_port)
            assert (n, sha) == (size, _sha(size))
        print(f"\nforwarded: host->guest {up:.0f} Mbit/s, guest->host {down:.0f} Mbit/s")
        counters = stop_and_counters(r)
    assert counters["tcp_forwarded"] == 2 and counters["internal_errors"] == 0


def test_200_concurrent_forwarded_connections(tmp_path: Path) -> None:
    port, hport, mport = free_udp_port(), free_tcp_port(), free_tcp_port()
    env = base_env(tmp_path, port) | {
        "WG_FORWARD_TCP": f"{hport}={GUEST}:7",
        "METRICS_LISTEN": f"127.0.0.1:{mport}",
    }
    with router(env) as r, client_from_router_output(r, port, log_level="error") as c:
        wait_tunnel(c, GATEWAY, interval=0.1)
        with GuestServer(c, "tcp", "echo", GUEST, 7):
            res = tcp_echo_many("127.0.0.1", hport, 200, 16 * 1024)
        assert res == {"ok": 200, "failed": 0, "unfinished": 0}, res
        # the per-forward counters, as Prometheus sees them (published once a second)
        name = f"tcp 127.0.0.1:{hport}->{GUEST}:7"
        want = [
            f'wgslirp_forward_connections_total{{forward="{name}",result="accepted"}} 200',
            f'wgslirp_forward_bytes_total{{forward="{name}",direction="to_guest"}} {200 * 16384}',
            f'wgslirp_forward_bytes_total{{forward="{name}",direction="to_host"}} {200 * 16384}',
        ]
        body = ""
        deadline = time.monotonic() + 30  # published once a second
        while time.monotonic() < deadline:
            _, body = http_get("127.0.0.1", mport, "/metrics")
            if all(w in body for w in want):
                break
            time.sleep(0.1)
        assert all(w in body for w in want), [w for w in want if w not in body]
        counters = stop_and_counters(r)
    assert counters["tcp_forwarded"] == 200
    per_worker = [
        v["tcp_forwarded"] for k, v in exit_counters(r.output()).items() if k[:6] == "worker"
    ]
    assert len(per_worker) == 2 and all(per_worker), per_worker  # both workers accepted


def _wait_reset(port: int, limit: float) -> float:
    """Connect to the forward and wait for the router to reset the connection; seconds
    from the connect to the reset. (The router accepts the host side before it asks the
    guest, so the reset usually finds the connection established; on a busy machine it
    can already be there when connect() returns.)"""
    t0 = time.monotonic()
    try:
        with _connect(port) as s:
            s.settimeout(limit)
            with pytest.raises(ConnectionResetError):
                s.recv(1)
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


def test_closed_guest_port_resets_the_host_connection_quickly(tmp_path: Path) -> None:
    port, hport = free_udp_port(), free_tcp_port()
    env = base_env(tmp_path, port) | {"WG_FORWARD_TCP": f"{hport}={GUEST}:9"}
    with router(env) as r, client_from_router_output(r, port, log_level="error") as c:
        wait_tunnel(c, GATEWAY, interval=0.1)
        took = _wait_reset(hport, 10.0)
        counters = stop_and_counters(r)
    assert took < 3.0, took  # one tunnel round trip, ~ms; generous for a busy machine
    assert counters["tcp_forward_refused"] == 1


def test_guest_gone_resets_within_the_connect_timeout(tmp_path: Path) -> None:
    port, hport = free_udp_port(), free_tcp_port()
    env = base_env(tmp_path, port) | {
        "WG_FORWARD_TCP": f"{hport}={GUEST}:80",
        "WG_FORWARD_CONNECT_TIMEOUT": "2s",
    }
    with router(env) as r:
        with client_from_router_output(r, port, log_level="error") as c:
            wait_tunnel(c, GATEWAY, interval=0.1)
        # wireguard-go is stopped and its namespace gone: nothing will ever answer
        took = _wait_reset(hport, 15.0)
        counters = stop_and_counters(r)
    assert took < 2.0 + 3.0, took  # the documented bound, plus slack for a busy machine
    assert counters["tcp_forward_unanswered"] == 1


def test_forward_survives_a_worker_sigkill(tmp_path: Path) -> None:
    port, hport = free_udp_port(), free_tcp_port()
    env = base_env(tmp_path, port) | {"WG_FORWARD_TCP": f"{hport}={GUEST}:7"}
    with router(env) as r, client_from_router_output(r, port, log_level="error") as c:
        wait_tunnel(c, GATEWAY, interval=0.1)
        with GuestServer(c, "tcp", "echo", GUEST, 7):
            assert tcp_echo_many("127.0.0.1", hport, 20, 4096)["ok"] == 20
            victim = child_pid(r.pid, "wgslirp-w1")
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            # Connections the kernel queued on the dying worker's listener before its
            # sockets closed are lost with it (reset); once they are closed ...
            deadline = time.monotonic() + 20
            while _listens(victim, hport):
                assert time.monotonic() < deadline, "the killed worker's socket stays open"
                time.sleep(0.05)
            # ... the other worker's listener takes every new connection ...
            assert tcp_echo_many("127.0.0.1", hport, 20, 4096) == {
                "ok": 20,
                "failed": 0,
                "unfinished": 0,
            }
            # ... and the replacement listens again (the supervisor restarts it in ~1 s)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                new = child_pid(r.pid, "wgslirp-w1")
                if new not in (None, victim) and _listens(new, hport):
                    break
                time.sleep(0.1)
            else:
                pytest.fail("no replacement worker listens on the forward")
            res = tcp_echo_many("127.0.0.1", hport, 40, 4096)
            assert res == {"ok": 40, "failed": 0, "unfinished": 0}, res
        assert r.terminate(timeout=10) == 0
    # the replacement took some (the victim logged nothing: it was killed)
    assert exit_counters(r.output())["worker 1"]["tcp_forwarded"] >= 1


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds a TCP socket listening on `port` (its fds against
    /proc/net/tcp, where state 0A is LISTEN)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        f = line.split()
        if f[3] == "0A" and int(f[1].split(":")[1], 16) == port and f[9] in inodes:
            return True
    return False


@pytest.mark.parametrize("workers", [0, 2])
def test_udp_echo_inside_the_guest_through_a_udp_forward(tmp_path: Path, workers: int) -> None:
    port, hport = free_udp_port(), free_udp_port()
    env = base_env(tmp_path, port, workers) | {"WG_FORWARD_UDP": f"{hport}={GUEST}:5353"}
    with router(env) as r, client_from_router_output(r, port, log_level="error") as c:
        wait_tunnel(c, GATEWAY, interval=0.1)
        with GuestServer(c, "udp", "echo", GUEST, 5353):
            clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
            try:
                for i, s in enumerate(clients):
                    s.settimeout(0.5)
                    got: list[bytes] = []
                    for _ in range(20):  # bounded; a lost datagram is sent again
                        msg = f"client {i} datagram {len(got)}".encode() + os.urandom(1000)
                        s.sendto(msg, ("127.0.0.1", hport))
                        try:
                            data, src = s.recvfrom(4096)
                        except TimeoutError:
                            continue
                        assert src == ("127.0.0.1", hport)  # from the forward's address
                        assert data == msg  # each client gets its own replies
                        got.append(data)
                        if len(got) == 5:
                            break
                    assert len(got) == 5, i
            finally:
                for s in clients:
                    s.close()
        counters = stop_and_counters(r)
    assert counters["udp_flows_opened"] == 3 and counters["internal_errors"] == 0


def _echo_once(sock: socket.socket, msg: bytes) -> None:
    sock.sendall(msg)
    got = b""
    while len(got) < len(msg):
        data = sock.recv(65536)
        assert data, "closed"
        got += data
    assert got == msg


def _write_conf(path: Path, server: str, port: int, peers: list[str], forwards: list[str]) -> None:
    text = f"[Interface]\nPrivateKey = {server}\nListenPort = {port}\n"
    text += "".join(f"ForwardTCP = {f}\n" for f in forwards)
    text += "".join(f"\n[Peer]\nPublicKey = {p}\nAllowedIPs = {a}\n" for p, a in peers)
    path.write_text(text)
    path.chmod(0o600)


def test_reload_adds_and_removes_forwards_and_a_removed_peer_loses_its_flows(
    tmp_path: Path,
) -> None:
    port, pa, pb = free_udp_port(), free_tcp_port(), free_tcp_port()
    server, ka, kb = generate_keypair(), generate_keypair(), generate_keypair()
    conf = tmp_path / "wg.conf"
    a_peer, b_peer = (ka.public, f"{GUEST}/32"), (kb.public, "10.77.0.3/32")
    _write_conf(conf, server.private, port, [a_peer], [f"{pa}={GUEST}:7"])
    env = {
        "WG_LISTEN_ADDR": "127.0.0.1",
        "WG_GATEWAY_IP": GATEWAY,
        "WGSLIRP_STATE_DIR": str(tmp_path / "state"),
        "PROCESSOR_WORKERS": "2",
    }
    with RouterProcess(router_cmd("--config", str(conf)), env) as r:
        r.wait_for_line(r"listening on", timeout=20)
        with guest_client(ka.private, server.public, port, 2, log_level="error") as a:
            wait_tunnel(a, GATEWAY, interval=0.1)
            with GuestServer(a, "tcp", "echo", GUEST, 7), _connect(pa) as held:
                _echo_once(held, b"before the reload")
                # a forward added by reload
                _write_conf(
                    conf, server.private, port, [a_peer], [f"{pa}={GUEST}:7", f"{pb}={GUEST}:7"]
                )
                mark = r.mark()
                r.send_signal(signal.SIGHUP)
                r.wait_for_line(r"reload: forwarding 2 TCP", timeout=10, since=mark)
                deadline = time.monotonic() + 20  # the workers take the list from their rings
                while time.monotonic() < deadline:
                    try:
                        with _connect(pb, timeout=5) as s:
                            _echo_once(s, b"through the new forward")
                        break
                    except (ConnectionRefusedError, ConnectionResetError):
                        time.sleep(0.1)
                else:
                    pytest.fail("the added forward never answered")
                _echo_once(held, b"the old one still works")
                # a forward to an address no peer has is refused; the running ones stay
                _write_conf(conf, server.private, port, [a_peer], [f"{pb}=10.77.0.9:7"])
                mark = r.mark()
                r.send_signal(signal.SIGHUP)
                r.wait_for_line(
                    r"reload failed, keeping the running configuration: WG_FORWARD_TCP: "
                    r"guest address 10\.77\.0\.9 is outside every peer's AllowedIPs",
                    timeout=10,
                    since=mark,
                )
                _echo_once(held, b"still there")
                # the peer and its forwards removed: its flows are reset, the ports closed
                _write_conf(conf, server.private, port, [b_peer], [])
                mark = r.mark()
                r.send_signal(signal.SIGHUP)
                r.wait_for_line(r"reload: 1 peer\(s\) added, 1 removed", timeout=10, since=mark)
                held.settimeout(10)
                with pytest.raises(ConnectionResetError):
                    while held.recv(1):
                        pass
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    try:
                        socket.create_connection(("127.0.0.1", pa), timeout=5).close()
                    except ConnectionRefusedError:
                        break
                    time.sleep(0.1)
                else:
                    pytest.fail("the removed forward still listens")
        counters = stop_and_counters(r)
    assert counters["peer_flows_closed"] >= 1


def test_forwarded_syn_to_a_peer_without_session_starts_the_handshake(tmp_path: Path) -> None:
    """The router knows the guest's endpoint but no session exists yet: the first SYN is
    held while the router initiates the handshake, then delivered."""
    port, cport, hport = free_udp_port(), free_udp_port(), free_tcp_port()
    server, ka, kb = generate_keypair(), generate_keypair(), generate_keypair()
    env = two_peer_env(
        tmp_path,
        port,
        server.private,
        ka.public,
        kb.public,
        WG_PEER_0_ENDPOINT=f"127.0.0.1:{cport}",
        WG_FORWARD_TCP=f"{hport}={GUEST}:7",
    )
    with (
        router(env) as r,
        guest_client(ka.private, server.public, port, 2, listen_port=cport) as a,
        GuestServer(a, "tcp", "echo", GUEST, 7),
    ):
        assert a.wg_show_dump().peer.latest_handshake == 0  # no traffic yet, no session
        with _connect(hport) as s:
            _echo_once(s, b"first contact")
        r.wait_for_line(r"handshake completed with peer .* \(we initiated\)", timeout=5)
        stop_and_counters(r)
