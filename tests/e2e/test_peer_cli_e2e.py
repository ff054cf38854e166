"""`wgslirp peer` against a running router (#15): clients onboarded with one command each,
connected by real wireguard-go clients from the printed files, cut off at once by
`peer remove`, and still there (the other one) after the router restarts."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from wgslirp_testkit import guestprog
from wgslirp_testkit.keys import generate_keypair
from wgslirp_testkit.netns import WG_SOCKET_DIR, unique_name
from wgslirp_testkit.ports import free_udp_port
from wgslirp_testkit.router import (
    GATEWAY,
    LISTENING,
    RouterProcess,
    parse_client_config,
    router,
    router_cmd,
    stop_and_counters,
)
from wgslirp_testkit.wgclient import WgClient, WgDump, first_reply_after

pytestmark = pytest.mark.e2e


@pytest.fixture
def ifname() -> Iterator[str]:
    """A per-test interface name (its wg(8) socket path); a file left by a killed router is
    removed afterwards."""
    name = unique_name("i", lambda n: (WG_SOCKET_DIR / f"{n}.sock").exists())
    yield name
    (WG_SOCKET_DIR / f"{name}.sock").unlink(missing_ok=True)


def peer(
    env: dict[str, str], *args: str, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """`wgslirp peer ...` as an operator types it, with the router's settings (`prefix`:
    e.g. a setpriv command line, to run it as the router's user)."""
    res = subprocess.run(
        [*prefix, sys.executable, "-m", "wgslirp", "peer", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, f"wgslirp peer {' '.join(args)}: {res.stdout}{res.stderr}"
    return res


def client_from_file(text: str, port: int) -> WgClient:
    """A wireguard-go client configured from every setting of a printed file."""
    cfg = parse_client_config(text)
    assert cfg["Endpoint"] == f"127.0.0.1:{port}"
    return WgClient(
        cfg["PrivateKey"],
        cfg["PublicKey"],
        port,
        address=cfg["Address"],
        allowed_ips=(cfg["AllowedIPs"],),
        mtu=int(cfg["MTU"]),
        preshared_key=cfg["PresharedKey"],
        keepalive=int(cfg["PersistentKeepalive"]),
        log_level="error",
    )


def live_peers(ifname: str) -> set[str]:
    out = subprocess.run(
        ["wg", "show", ifname, "dump"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return set(WgDump.parse(out).peers)


def test_peer_add_remove_and_restart(tmp_path: Path, ifname: str) -> None:
    port = free_udp_port()
    env = {
        "WGSLIRP_STATE_DIR": str(tmp_path / "state"),
        "WG_LISTEN_ADDR": "127.0.0.1",
        "WG_LISTEN_PORT": str(port),
        "WG_PRIVATE_KEY": generate_keypair().private,
        "WG_GATEWAY_IP": GATEWAY,
        "WG_INTERFACE_NAME": ifname,
        "PROCESSOR_WORKERS": "2",
    }
    laptop_file = tmp_path / "laptop.conf"
    with router(env) as r:
        r.wait_for_line(r"no peers configured", timeout=5)
        r.wait_for_line(r"wg\(8\) interface .* at ", timeout=5)
        peer(env, "add", "laptop", "--output", str(laptop_file))
        added = peer(env, "add", "phone")
        assert "added to the running router" in added.stderr
        phone_text = added.stdout
        assert "Address = 10.77.0.3/32" in phone_text
        assert "Address = 10.77.0.2/32" in laptop_file.read_text()
        with (
            client_from_file(laptop_file.read_text(), port) as laptop,
            client_from_file(phone_text, port) as phone,
            socket.create_server(("127.0.0.1", 0)) as lsn,
        ):
            assert first_reply_after(laptop, GATEWAY, 10) is not None, laptop.diagnostics()
            assert first_reply_after(phone, GATEWAY, 10) is not None, phone.diagnostics()
            assert phone.ping(GATEWAY, count=3, interval=0.05) == (3, 3)
            # live figures in the list, read from the router
            listing = peer(env, "list").stdout
            for name in ("laptop", "phone"):
                line = next(ln for ln in listing.splitlines() if ln.startswith(name))
                assert "ago" in line and "received" in line, listing
            # the phone holds a TCP connection to a host server
            lsn.settimeout(10)
            holder = phone.popen(
                guestprog.command("tcp_hold", GATEWAY, lsn.getsockname()[1], 1, 20),
                stdout=subprocess.PIPE,
                text=True,
            )
            conn, _ = lsn.accept()
            conn.settimeout(5)
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
            phone_key = parse_client_config(phone_text)["PrivateKey"]
            assert len(live_peers(ifname)) == 2

            removed = peer(env, "remove", "phone")
            assert "removed from (its flows closed) the running router" in removed.stderr
            assert len(live_peers(ifname)) == 1  # gone from the router as the command returns
            t0 = time.monotonic()
            try:
                ended = conn.recv(1) == b""
            except ConnectionResetError:
                ended = True
            assert ended and time.monotonic() - t0 < 3, "its connection was not closed"
            conn.close()
            holder.kill()
            holder.wait(5)
            # cut off at once: nothing the phone sends is answered, while the laptop is
            assert phone.ping(GATEWAY, count=3, interval=0.2, wait=1) == (3, 0)
            assert laptop.ping(GATEWAY, count=3, interval=0.05) == (3, 3)
            assert "phone" not in peer(env, "list").stdout
            counters = stop_and_counters(r)
            assert counters["peer_flows_closed"] >= 1, counters
            assert counters["unknown_index"] + counters["unknown_peer"] >= 1, counters

            # restart: the peers file is read again; the laptop's unchanged client is back
            with router(env) as r2:
                r2.wait_for_line(r"wg\(8\) interface .* at ", timeout=5)
                assert len(live_peers(ifname)) == 1
                assert "no peers configured" not in r2.output()
                # a running wireguard-go re-initiates after ~15 s without replies
                back = first_reply_after(laptop, GATEWAY, 30)
                assert back is not None, laptop.diagnostics()
                assert phone.ping(GATEWAY, count=2, interval=0.2, wait=1) == (2, 0)
                stop_and_counters(r2)
    assert phone_key not in (tmp_path / "state" / "peers.json").read_text()


NOBODY = 65534
# An unprivileged user, plus one read-only capability: the Python running the tests may
# live where nobody can read (pyenv under /root); CAP_DAC_READ_SEARCH reads it, and grants
# no write anywhere, so /var/run/wireguard stays out of reach as for the systemd unit.
AS_NOBODY = (
    "setpriv",
    f"--reuid={NOBODY}",
    f"--regid={NOBODY}",
    "--clear-groups",
    "--inh-caps=+dac_read_search",
    "--ambient-caps=+dac_read_search",
)


@pytest.fixture
def nobody_state() -> Iterator[Path]:
    """A state directory the unprivileged user owns, where it can reach it (pytest's own
    temporary directories are root's, 0700)."""
    top = Path(tempfile.mkdtemp(prefix="wgslirp-e2e-", dir="/tmp"))
    try:
        state = top / "state"
        state.mkdir(mode=0o700)
        os.chown(top, NOBODY, NOBODY)
        os.chown(state, NOBODY, NOBODY)
        yield state
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_unprivileged_router_is_changed_live_through_its_state_directory(
    nobody_state: Path, ifname: str
) -> None:
    """The systemd unit's and the container's case: a router that cannot create
    /var/run/wireguard serves its socket in the state directory, and `peer add` and
    `peer remove` take effect at once through it."""
    state = nobody_state
    port = free_udp_port()
    env = {
        "WGSLIRP_STATE_DIR": str(state),
        "WG_LISTEN_ADDR": "127.0.0.1",
        "WG_LISTEN_PORT": str(port),
        "WG_PRIVATE_KEY": generate_keypair().private,
        "WG_GATEWAY_IP": GATEWAY,
        "WG_INTERFACE_NAME": ifname,
        "PROCESSOR_WORKERS": "1",
    }
    sock = state / "wg.sock"
    cmd = [*AS_NOBODY, "--pdeathsig=TERM", *router_cmd()]
    with RouterProcess(cmd, env) as r:
        r.wait_for_line(LISTENING, timeout=20)
        r.wait_for_line(rf"wg\(8\) interface {ifname} at {sock}$", timeout=5)
        assert not (WG_SOCKET_DIR / f"{ifname}.sock").exists()  # it could not make that one
        st = sock.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o600)
        added = peer(env, "add", "phone", prefix=AS_NOBODY)
        assert f"added to the running router ({ifname}, through {sock})" in added.stderr
        with client_from_file(added.stdout, port) as phone:
            assert first_reply_after(phone, GATEWAY, 10) is not None, phone.diagnostics()
            # root (`sudo wgslirp peer ...` on the systemd unit) reaches it the same way,
            # and leaves the files the service user's, so a reload still reads them
            root_add = peer(env, "add", "tablet")
            assert f"through {sock}" in root_add.stderr
            removed = peer(env, "remove", "phone")
            assert (
                f"removed from (its flows closed) the running router ({ifname}, through {sock})"
                in removed.stderr
            )
            assert phone.ping(GATEWAY, count=3, interval=0.2, wait=1) == (3, 0)
            for name in ("peers.json", "peers.lock"):
                assert (state / name).stat().st_uid == NOBODY, name
            mark = r.mark()
            r.send_signal(signal.SIGHUP)
            done = r.wait_for_line(r"reload( failed| stopped|: \d+ peer)", timeout=10, since=mark)
            # the file root wrote is read; the router already had exactly those peers
            assert "reload: 0 peer(s) added, 0 removed" in done.string, r.output()
        counters = stop_and_counters(r)
        assert counters["unknown_index"] + counters["unknown_peer"] >= 1, counters
    assert not sock.exists()  # removed on exit
