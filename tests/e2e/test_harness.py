"""Self-tests of the e2e harness, without the router.

Two wireguard-go instances stand in for client and router: both UDP sockets in the root
namespace on 127.0.0.1, each TUN moved into its own namespace.  If these pass, a failing
router e2e test is about the router, not about the plumbing.
"""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from wgslirp_testkit.diagnostics import diagnostic_sections
from wgslirp_testkit.keys import (
    generate_keypair,
    generate_preshared_key,
    key_to_base64,
    public_key_of,
)
from wgslirp_testkit.netns import SYS_NET, Namespace, iter_harness_netns, unique_name
from wgslirp_testkit.nft import NftGuard
from wgslirp_testkit.ports import free_tcp_port, free_udp_port
from wgslirp_testkit.proc import HarnessError, pid_alive
from wgslirp_testkit.router import RouterProcess
from wgslirp_testkit.wgclient import WgClient, WgDump

SERVER_ADDR = "10.77.0.1"
CLIENT_ADDR = "10.77.0.2"


@dataclass
class Footprint:
    """What a WgClient created, remembered so we can prove it is all gone afterwards."""

    namespace: str
    interface: str
    pid: int
    socket_path: Path
    tmpdir: Path

    @classmethod
    def of(cls, c: WgClient) -> Footprint:
        return cls(c.namespace.name, c.interface, c.pid, c.socket_path, c.log_path.parent)


def _netns_list() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout


def assert_gone(fp: Footprint) -> None:
    assert fp.namespace not in _netns_list().split()
    link = subprocess.run(
        ["ip", "link", "show", fp.interface], capture_output=True, timeout=10, check=False
    )
    assert link.returncode != 0, f"interface {fp.interface} still exists"
    assert (
        fp.interface
        not in subprocess.run(
            ["ip", "link"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    )
    assert not pid_alive(fp.pid), f"wireguard-go pid {fp.pid} still alive"
    assert not fp.socket_path.exists()
    assert not fp.tmpdir.exists()


# --------------------------------------------------------------------------- e2e


@pytest.mark.e2e
def test_two_wireguard_go_peers_ping_through_namespaces() -> None:
    server_keys, client_keys = generate_keypair(), generate_keypair(use_wg=True)
    psk = generate_preshared_key()
    footprints = []
    started = time.monotonic()
    with WgClient(
        server_keys.private,
        client_keys.public,
        endpoint_port=None,
        address=f"{SERVER_ADDR}/24",
        allowed_ips=[f"{CLIENT_ADDR}/32"],
        preshared_key=psk,
    ) as server:
        footprints.append(Footprint.of(server))
        with WgClient(
            client_keys.private_bytes,
            server_keys.public,
            endpoint_port=server.udp_port(),
            address=f"{CLIENT_ADDR}/32",
            preshared_key=psk,
            mtu=1380,
        ) as client:
            footprints.append(Footprint.of(client))
            assert client.namespace.name != server.namespace.name

            sent, received = client.ping(SERVER_ADDR, count=20, interval=0.02)
            assert (sent, received) == (20, 20), (
                f"{client.last_ping_output}\n{client.diagnostics()}\n{server.diagnostics()}"
            )

            stats = client.wait_handshake(timeout=1.0)
            assert stats.latest_handshake > 0
            assert stats.rx_bytes > 0 and stats.tx_bytes > 0
            assert stats.endpoint == f"127.0.0.1:{server.udp_port()}"
            assert stats.preshared_key is not None

            dump = server.wg_show_dump()
            assert dump.public_key == server_keys.public
            assert dump.peer.public_key == client_keys.public
            assert dump.peer.latest_handshake > 0
            assert dump.peer.rx_bytes > 0 and dump.peer.tx_bytes > 0
            # the server learnt the client's endpoint from the handshake, on loopback
            assert dump.peer.endpoint == f"127.0.0.1:{client.udp_port()}"

            # the TUN lives in the namespace with the requested MTU; not in the root ns
            link = client.run(["ip", "-o", "link", "show", client.interface]).stdout
            assert "mtu 1380" in link
            assert (SYS_NET / client.interface).exists() is False
    for fp in footprints:
        assert_gone(fp)
    assert time.monotonic() - started < 15


@pytest.mark.e2e
def test_keepalive_handshakes_without_traffic() -> None:
    server_keys, client_keys = generate_keypair(), generate_keypair()
    with (
        WgClient(
            server_keys.private,
            client_keys.public,
            None,
            f"{SERVER_ADDR}/24",
            [f"{CLIENT_ADDR}/32"],
        ) as server,
        WgClient(
            client_keys.private,
            server_keys.public,
            server.udp_port(),
            f"{CLIENT_ADDR}/32",
            ["10.77.0.0/24"],
            keepalive=1,
        ) as client,
    ):
        stats = client.wait_handshake(timeout=5.0)
        assert stats.persistent_keepalive == 1
        server.wait_handshake(timeout=2.0)
        # overall timeout: ping is interrupted but its summary is still parsed
        sent, received = client.ping(SERVER_ADDR, count=1000, interval=0.05, timeout=0.5)
        assert 3 <= sent < 1000 and received >= sent - 1, client.last_ping_output
        routes = client.run(["ip", "route"]).stdout
        assert "10.77.0.0/24" in routes and "default" not in routes
        fp = Footprint.of(client)
    assert_gone(fp)
    # logs of closed clients stay available for the failure report
    titles = [title for title, _ in diagnostic_sections()]
    assert any(fp.interface in t for t in titles)
    assert any("Device started" in text for _, text in diagnostic_sections())


@pytest.mark.e2e
def test_failed_setup_leaves_nothing_behind() -> None:
    keys = generate_keypair()
    client = WgClient(
        keys.private, generate_keypair().public, free_udp_port(), allowed_ips=["not-a-cidr"]
    )
    before = set(iter_harness_netns())
    with pytest.raises(ValueError):
        client.__enter__()
    assert client.namespace.name not in set(iter_harness_netns()) | before
    assert not (SYS_NET / client.interface).exists()
    assert not client.socket_path.exists()
    assert client._proc is not None and not pid_alive(client._proc.pid)


@pytest.mark.e2e
def test_namespace_run_popen_and_cleanup() -> None:
    with Namespace() as ns:
        out = ns.run(["ip", "-o", "link"]).stdout
        assert "lo" in out and "eth0" not in out  # isolated: only loopback
        proc = ns.popen(["sleep", "30"])
        with pytest.raises(HarnessError, match="timed out"):
            ns.run(["sleep", "5"], timeout=0.2)
        name = ns.name
    assert proc.returncode is not None
    assert name not in _netns_list().split()


@pytest.mark.e2e
def test_nft_guard_drops_and_counts_loopback_datagram() -> None:
    port = free_udp_port()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind(("127.0.0.2", port))
        rx.settimeout(0.2)
        with NftGuard("127.0.0.2", port, "udp") as guard:
            assert guard.count() == 0
            # other ports are not matched
            tx.sendto(b"other", ("127.0.0.2", free_udp_port()))
            assert guard.count() == 0
            try:
                tx.sendto(b"must not arrive", ("127.0.0.2", port))
            except PermissionError as exc:  # an output-hook drop surfaces as EPERM
                assert exc.errno == errno.EPERM
            deadline = time.monotonic() + 2
            while guard.count() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert guard.count() == 1
            assert guard.counts()[1] > 0
            with pytest.raises(TimeoutError):
                rx.recv(100)
            table = guard.table
        # guard gone: the same datagram now arrives
        tx.sendto(b"after", ("127.0.0.2", port))
        assert rx.recv(100) == b"after"
    tables = subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    assert table not in tables


# --------------------------------------------------------------------------- no root needed


def test_router_process_lines_terminate_and_group_kill() -> None:
    script = (
        "import signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('listening on 127.0.0.1:4242', flush=True)\n"
        "print('warn: something', file=sys.stderr, flush=True)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "time.sleep(60)\n"
    )
    with RouterProcess([sys.executable, "-c", script], {"X_TEST": "1"}) as router:
        m = router.wait_for_line(r"listening on 127\.0\.0\.1:(\d+)", timeout=10)
        assert m.group(1) == "4242"
        router.wait_for_line(r"^warn:", timeout=5)
        deadline = time.monotonic() + 5
        while len(router.group_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        pids = router.group_pids()
        assert router.pid in pids and len(pids) == 2
        # SIGTERM is ignored: terminate escalates to SIGKILL of the whole group
        assert router.terminate(timeout=0.5) == -9
        deadline = time.monotonic() + 5
        while router.group_pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert router.group_pids() == []
    assert "listening on" in router.output()
    assert "warn: something" in router.output()


def test_router_process_clean_exit_and_early_death() -> None:
    with RouterProcess([sys.executable, "-c", "import time; print('ready'); time.sleep(60)"]) as r:
        r.wait_for_line("ready")
        assert r.terminate() == -15
    with (
        RouterProcess([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]) as r,
        pytest.raises(HarnessError, match="exited with 3"),
    ):
        r.wait_for_line("never printed", timeout=5)
    with (
        RouterProcess([sys.executable, "-c", "import time; time.sleep(60)"]) as r,
        pytest.raises(HarnessError, match=r"within 0\.2s"),
    ):
        r.wait_for_line("nothing", timeout=0.2)


def test_router_process_wait_for_new_lines_since_mark(tmp_path: Path) -> None:
    flag = tmp_path / "go"
    script = (
        "import os, sys, time\n"
        "print('worker started 1')\n"
        "deadline = time.monotonic() + 10\n"
        f"while not os.path.exists({str(flag)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "sys.stdout.write('worker sta')\n"
        "sys.stdout.flush()\n"
        "time.sleep(0.1)\n"
        "print('rted 2')\n"
        "time.sleep(60)\n"
    )
    with RouterProcess([sys.executable, "-c", script]) as r:
        assert r.wait_for_line(r"worker started (\d)").group(1) == "1"
        mark = r.mark()
        flag.touch()
        # the partial line is not matched half-written; the old line is not matched again
        assert r.wait_for_line(r"worker started (\d)", since=mark).group(1) == "2"
        assert r.returncode is None
    assert r.returncode == -15


def test_keys_ports_and_names() -> None:
    kp = generate_keypair()
    assert len(kp.private_bytes) == 32 and len(kp.public_bytes) == 32
    assert public_key_of(kp.private_bytes) == kp.public
    if shutil.which("wg"):
        assert public_key_of(kp.private, use_wg=True) == kp.public
    with pytest.raises(ValueError):
        key_to_base64(b"short")
    for port in (free_udp_port(), free_tcp_port()):
        assert 0 < port < 65536
    names = {unique_name("i") for _ in range(50)}
    assert len(names) == 50 and all(len(n) <= 15 for n in names)
    with pytest.raises(ValueError):
        WgClient(kp.private, kp.public, 51820, endpoint_host="192.0.2.1")


def test_wg_dump_parse() -> None:
    text = (
        "cHJpdg==\tcHViCg==\t51820\toff\n"
        "cGVlcg==\t(none)\t127.0.0.1:4000\t10.0.0.0/8,0.0.0.0/0\t1700000000\t1234\t5678\t25\n"
        "cGVlcjI=\tcHNr\t(none)\t(none)\t0\t0\t0\toff\n"
    )
    dump = WgDump.parse(text)
    assert dump.listen_port == 51820 and dump.fwmark == 0
    p = dump.peers["cGVlcg=="]
    assert p.endpoint == "127.0.0.1:4000" and p.allowed_ips == ("10.0.0.0/8", "0.0.0.0/0")
    assert (p.latest_handshake, p.rx_bytes, p.tx_bytes, p.persistent_keepalive) == (
        1700000000,
        1234,
        5678,
        25,
    )
    q = dump.peers["cGVlcjI="]
    assert q.preshared_key == "cHNr" and q.endpoint is None and q.allowed_ips == ()
    assert q.persistent_keepalive == 0
    with pytest.raises(HarnessError):
        _ = dump.peer
