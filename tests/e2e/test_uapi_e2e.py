"""The stock wg(8) tool against the running router through its UAPI socket."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from wgslirp_testkit.keys import generate_keypair, public_key_of
from wgslirp_testkit.netns import WG_SOCKET_DIR, unique_name
from wgslirp_testkit.ports import free_udp_port
from wgslirp_testkit.router import (
    GATEWAY,
    RouterProcess,
    base_env,
    client_from_router_output,
    router,
    stop_and_counters,
)
from wgslirp_testkit.wgclient import WgClient, WgDump

pytestmark = pytest.mark.e2e


def wg(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The stock tool, as an operator would type it."""
    res = subprocess.run(["wg", *args], capture_output=True, text=True, timeout=10, check=False)
    if check:
        assert res.returncode == 0, f"wg {' '.join(args)}: {res.stdout}{res.stderr}"
    return res


def dump(name: str) -> WgDump:
    return WgDump.parse(wg("show", name, "dump").stdout)


def kill_ingress_and_wait(r: RouterProcess) -> None:
    """SIGKILL the router's ingress process and wait until its replacement serves wg(8)."""
    main = psutil.Process(r.pid)
    ingress = next(p for p in main.children() if p.name() == "wgslirp-ingress")
    mark = r.mark()
    os.kill(ingress.pid, signal.SIGKILL)
    r.wait_for_line(r"wg\(8\) interface .* at ", timeout=5, since=mark)


@pytest.fixture
def ifname() -> Iterator[str]:
    """A per-test interface name (parallel xdist workers never share a socket path); a
    socket file left by a router killed mid-test is removed afterwards."""
    name = unique_name("i", lambda n: (WG_SOCKET_DIR / f"{n}.sock").exists())
    yield name
    (WG_SOCKET_DIR / f"{name}.sock").unlink(missing_ok=True)


def uapi_env(tmp_path: Path, port: int, name: str, workers: int = 2) -> dict[str, str]:
    return {**base_env(tmp_path, port, workers), "WG_INTERFACE_NAME": name}


def test_wg_show_and_showconf_after_traffic(tmp_path: Path, ifname: str) -> None:
    port = free_udp_port()
    sock_path = WG_SOCKET_DIR / f"{ifname}.sock"
    with router(uapi_env(tmp_path, port, ifname)) as r, client_from_router_output(r, port) as c:
        mode = sock_path.stat().st_mode
        assert stat.S_ISSOCK(mode) and mode & 0o777 == 0o600  # it hands out the private key
        assert c.ping(GATEWAY, count=5, interval=0.05) == (5, 5)
        text = wg("show", ifname).stdout
        assert f"interface: {ifname}" in text and f"listening port: {port}" in text
        assert f"peer: {c.public_key}" in text
        assert re.search(r"latest handshake: (Now|.*seconds? ago)", text), text
        assert re.search(r"transfer: [\d.]+ \w+ received, [\d.]+ \w+ sent", text), text
        d = dump(ifname)
        assert d.listen_port == port and d.public_key == c.server_public_key
        assert public_key_of(d.private_key) == d.public_key
        peer = d.peers[c.public_key]
        assert abs(time.time() - peer.latest_handshake) < 30
        assert peer.rx_bytes > 0 and peer.tx_bytes > 0
        assert peer.allowed_ips == ("10.77.0.2/32", "fd77::2/128")
        assert peer.endpoint == f"127.0.0.1:{c.udp_port()}"
        # showconf -> syncconf is a no-op that keeps the session; showconf is unchanged
        conf = wg("showconf", ifname).stdout
        assert f"ListenPort = {port}" in conf and f"PublicKey = {c.public_key}" in conf
        conf_file = tmp_path / "wg.conf"
        conf_file.write_text(conf)
        wg("syncconf", ifname, str(conf_file))
        assert wg("showconf", ifname).stdout == conf
        assert c.ping(GATEWAY, count=3, interval=0.05) == (3, 3)
        # a port change cannot be made live, and wg says so
        res = wg("set", ifname, "listen-port", str(port + 1), check=False)
        assert res.returncode != 0 and "not supported" in res.stderr, res.stderr
        assert dump(ifname).listen_port == port
        stop_and_counters(r)
    assert not sock_path.exists()


def test_wg_set_adds_a_peer_live_and_removing_it_cuts_it_off(tmp_path: Path, ifname: str) -> None:
    port = free_udp_port()
    second = generate_keypair()
    with router(uapi_env(tmp_path, port, ifname)) as r, client_from_router_output(r, port) as c:
        assert c.ping(GATEWAY, count=2, interval=0.05) == (2, 2)
        server_pub = c.server_public_key
        wg("set", ifname, "peer", second.public, "allowed-ips", "10.77.0.3/32")
        assert set(dump(ifname).peers) == {c.public_key, second.public}
        with (
            WgClient(
                second.private,
                server_pub,
                port,
                address="10.77.0.3/32",
                allowed_ips=("10.77.0.0/24",),
            ) as c2,
            socket.create_server(("127.0.0.1", 0)) as lsn,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as usock,
        ):
            assert c2.ping(GATEWAY, count=5, interval=0.05) == (5, 5), c2.diagnostics()
            new = dump(ifname).peers[second.public]
            assert new.latest_handshake > 0 and new.rx_bytes > 0 and new.tx_bytes > 0
            # the second peer holds a TCP connection and a UDP flow to host servers
            usock.bind(("127.0.0.1", 0))
            usock.settimeout(5)
            lsn.settimeout(5)
            holder = c2.popen(
                [
                    "python3",
                    "-c",
                    (
                        "import socket,time\n"
                        f"t=socket.create_connection(('{GATEWAY}',{lsn.getsockname()[1]}),timeout=5)\n"
                        "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                        f"u.sendto(b'u',('{GATEWAY}',{usock.getsockname()[1]}))\n"
                        "t.sendall(b't'); time.sleep(30)\n"
                    ),
                ]
            )
            conn, _ = lsn.accept()
            conn.settimeout(5)
            assert conn.recv(1) == b"t"
            assert usock.recvfrom(16)[0] == b"u"
            wg("set", ifname, "peer", second.public, "remove")
            assert set(dump(ifname).peers) == {c.public_key}
            # its flows are closed at once: the host side sees the connection end
            t0 = time.monotonic()
            try:
                ended = conn.recv(1) == b""
            except ConnectionResetError:
                ended = True
            assert ended and time.monotonic() - t0 < 3
            conn.close()
            holder.kill()
            holder.wait(5)
            assert c2.ping(GATEWAY, count=3, interval=0.2, wait=1) == (3, 0)
            # the first client never noticed
            assert c.ping(GATEWAY, count=3, interval=0.05) == (3, 3)
        counters = stop_and_counters(r)
    # the cut-off client's packets named a session the router had dropped
    assert counters["unknown_index"] + counters["unknown_peer"] >= 1, counters
    assert counters["peer_flows_closed"] == 2, counters  # its TCP connection and UDP flow


def test_socket_lifecycle_stale_file_conflict_and_ingress_restart(
    tmp_path: Path, ifname: str
) -> None:
    sock_path = WG_SOCKET_DIR / f"{ifname}.sock"
    WG_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))  # what a router killed with SIGKILL leaves behind
    dead.close()
    port, port2 = free_udp_port(), free_udp_port()
    with router(uapi_env(tmp_path, port, ifname)) as r:
        r.wait_for_line(r"wg\(8\) interface .* at ", timeout=5)
        assert dump(ifname).listen_port == port
        # a second router with the same interface name leaves the live socket alone
        env2 = uapi_env(tmp_path / "second", port2, ifname, workers=0)
        with router(env2) as r2:
            r2.wait_for_line(r"another process already serves", timeout=5)
            assert dump(ifname).listen_port == port
            stop_and_counters(r2)
        assert dump(ifname).listen_port == port
        # a crashed ingress is replaced and serves the socket again
        main = psutil.Process(r.pid)
        ingress = next(p for p in main.children() if p.name() == "wgslirp-ingress")
        mark = r.mark()
        os.kill(ingress.pid, signal.SIGKILL)
        r.wait_for_line(r"removing stale wg\(8\) socket", timeout=5, since=mark)
        r.wait_for_line(r"wg\(8\) interface .* at ", timeout=5, since=mark)
        assert dump(ifname).listen_port == port
        stop_and_counters(r)
    assert not sock_path.exists()


def test_run_time_changes_survive_an_ingress_restart(tmp_path: Path, ifname: str) -> None:
    """wg set changes live in ingress; the supervisor keeps them, so a crashed ingress is
    replaced by one with the peers as they were, not as they were at start."""
    port = free_udp_port()
    second, third = generate_keypair(), generate_keypair()
    with router(uapi_env(tmp_path, port, ifname)) as r, client_from_router_output(r, port) as c:
        wg(
            "set",
            ifname,
            "peer",
            second.public,
            "allowed-ips",
            "10.77.0.3/32",
            "persistent-keepalive",
            "15",
        )
        wg("set", ifname, "peer", third.public, "allowed-ips", "10.77.0.4/32")
        wg("set", ifname, "peer", third.public, "remove")
        r.wait_for_line(r"run-time configuration kept for restarts: 2 peer", timeout=5)
        kill_ingress_and_wait(r)
        peers = dump(ifname).peers
        assert set(peers) == {c.public_key, second.public}, peers
        assert wg("show", ifname, "allowed-ips").stdout.count("10.77.0.3/32") == 1
        assert "15" in wg("show", ifname, "persistent-keepalive").stdout
        # and the original client reconnects to the new ingress
        assert c.ping(GATEWAY, count=3, interval=0.2, wait=3)[1] >= 1, c.diagnostics()
        stop_and_counters(r)


def test_a_flow_outlives_an_ingress_restart_after_peers_changed(
    tmp_path: Path, ifname: str
) -> None:
    """Workers keep their flows when ingress is replaced, keyed by peer index: the new
    ingress must number peers as the old one did, or a peer's old flows would answer to
    another number (another peer's, or nobody's). Here the first peer is removed first, so
    a fresh numbering would shift B; B's datagrams must still use its old flow."""
    port = free_udp_port()
    second = generate_keypair()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv,
        router(uapi_env(tmp_path, port, ifname)) as r,
        client_from_router_output(r, port) as c,
    ):
        srv.bind(("127.0.0.1", 0))
        srv.settimeout(1)
        wg("set", ifname, "peer", second.public, "allowed-ips", "10.77.0.3/32")
        with WgClient(
            second.private,
            c.server_public_key,
            port,
            address="10.77.0.3/32",
            allowed_ips=("10.77.0.0/24",),
        ) as b:
            prog = b.popen(
                [
                    "python3",
                    "-u",
                    "-c",
                    (
                        "import socket,sys\n"
                        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                        f"s.connect(('{GATEWAY}',{srv.getsockname()[1]}))\n"
                        "for line in sys.stdin:\n"
                        "    s.send(line.strip().encode())\n"
                    ),
                ],
                stdin=subprocess.PIPE,
                text=True,
            )
            assert prog.stdin is not None

            def flow_of(word: str, tries: int) -> tuple[str, int] | None:
                """The router's host-side address for B's datagrams (its flow)."""
                assert prog.stdin is not None
                for _ in range(tries):
                    prog.stdin.write(word + "\n")
                    prog.stdin.flush()
                    try:
                        data, addr = srv.recvfrom(100)
                    except TimeoutError:
                        continue
                    if data == word.encode():
                        return addr
                return None

            before = flow_of("before", 5)
            assert before is not None
            wg("set", ifname, "peer", c.public_key, "remove")  # B's predecessor in numbering
            r.wait_for_line(r"run-time configuration kept for restarts: 1 peer", timeout=5)
            kill_ingress_and_wait(r)
            # a WireGuard client notices a lost session by itself: ~15 s without an answer
            # to its data (keepalive + rekey timeout) starts a new handshake
            after = flow_of("after", 30)
            assert after == before, (before, after)  # the worker's old flow, same socket
            prog.stdin.close()
            prog.wait(5)
        stop_and_counters(r)
