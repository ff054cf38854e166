"""SIGHUP, or the config file changing on disk, re-reads it: peers added and removed live, bad
files refused."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from wgslirp_testkit.keys import generate_keypair
from wgslirp_testkit.ports import free_udp_port
from wgslirp_testkit.router import (
    GATEWAY,
    RouterProcess,
    guest_client,
    router_cmd,
    stop_and_counters,
)

pytestmark = pytest.mark.e2e


def write_conf(path: Path, server: str, port: int, peers: list[tuple[str, str]]) -> None:
    text = f"[Interface]\nPrivateKey = {server}\nListenPort = {port}\n"
    for pub, addr in peers:
        text += f"\n[Peer]\nPublicKey = {pub}\nAllowedIPs = {addr}\n"
    path.write_text(text)
    path.chmod(0o600)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_sighup_adds_and_removes_peers(tmp_path: Path, workers: str) -> None:
    port = free_udp_port()
    server, ka, kb = generate_keypair(), generate_keypair(), generate_keypair()
    conf = tmp_path / "wg.conf"
    write_conf(conf, server.private, port, [(ka.public, "10.77.0.2/32")])
    env = {
        "WG_LISTEN_ADDR": "127.0.0.1",
        "WG_GATEWAY_IP": GATEWAY,
        "WGSLIRP_STATE_DIR": str(tmp_path / "state"),
        "PROCESSOR_WORKERS": workers,
    }
    with RouterProcess(router_cmd("--config", str(conf)), env) as r:
        r.wait_for_line(r"listening on", timeout=20)
        with (
            guest_client(ka.private, server.public, port, 2) as a,
            guest_client(kb.private, server.public, port, 3) as b,
        ):
            assert a.ping(GATEWAY, count=3, interval=0.05) == (3, 3)
            assert b.ping(GATEWAY, count=2, interval=0.1, wait=1) == (2, 0)
            write_conf(
                conf,
                server.private,
                port,
                [(ka.public, "10.77.0.2/32"), (kb.public, "10.77.0.3/32")],
            )
            mark = r.mark()
            r.send_signal(signal.SIGHUP)
            r.wait_for_line(r"reload: 1 peer\(s\) added, 0 removed", timeout=5, since=mark)
            assert b.ping(GATEWAY, count=5, interval=0.2, wait=6)[1] >= 1
            conf.write_text("[Interface]\nPrivateKey = not-a-key\n")
            mark = r.mark()
            r.send_signal(signal.SIGHUP)
            r.wait_for_line(
                r"reload failed, keeping the running configuration", timeout=5, since=mark
            )
            assert a.ping(GATEWAY, count=3, interval=0.05) == (3, 3)
            write_conf(conf, server.private, port, [(kb.public, "10.77.0.3/32")])
            mark = r.mark()
            r.send_signal(signal.SIGHUP)
            r.wait_for_line(r"reload: 0 peer\(s\) added, 1 removed", timeout=5, since=mark)
            assert a.ping(GATEWAY, count=3, interval=0.1, wait=1) == (3, 0)
            assert b.ping(GATEWAY, count=3, interval=0.05) == (3, 3)
            # a setting that needs a restart is named, not silently ignored
            write_conf(conf, server.private, port + 1, [(kb.public, "10.77.0.3/32")])
            mark = r.mark()
            r.send_signal(signal.SIGHUP)
            r.wait_for_line(
                r"reload: WG_LISTEN_PORT changed; that takes effect only after "
                r"a restart",
                timeout=5,
                since=mark,
            )
            assert b.ping(GATEWAY, count=3, interval=0.05) == (3, 3)  # still on the old port
        stop_and_counters(r)


def publish(secret_dir: Path, version: int, text: str) -> None:
    """What kubelet does to a mounted Secret: files in a new timestamped directory, then an
    atomic rename of the `..data` symlink over to it (wg0.conf -> ..data/wg0.conf)."""
    d = secret_dir / f"..2026_01_01_00_00_{version:02d}"
    d.mkdir()
    (d / "wg0.conf").write_text(text)
    (d / "wg0.conf").chmod(0o600)
    tmp = secret_dir / "..data_tmp"
    tmp.symlink_to(d.name)
    tmp.replace(secret_dir / "..data")
    if not (secret_dir / "wg0.conf").is_symlink():
        (secret_dir / "wg0.conf").symlink_to("..data/wg0.conf")


def conf_text(server: str, port: int, peers: list[tuple[str, str]]) -> str:
    text = f"[Interface]\nPrivateKey = {server}\nListenPort = {port}\n"
    for pub, addr in peers:
        text += f"\n[Peer]\nPublicKey = {pub}\nAllowedIPs = {addr}\n"
    return text


@pytest.mark.parametrize("workers", ["0", "2"])
def test_secret_swap_on_disk_is_applied_without_sighup(tmp_path: Path, workers: str) -> None:
    port = free_udp_port()
    server, ka, kb = generate_keypair(), generate_keypair(), generate_keypair()
    secret = tmp_path / "secret"
    secret.mkdir()
    publish(secret, 1, conf_text(server.private, port, [(ka.public, "10.77.0.2/32")]))
    env = {
        "WG_LISTEN_ADDR": "127.0.0.1",
        "WG_GATEWAY_IP": GATEWAY,
        "WGSLIRP_STATE_DIR": str(tmp_path / "state"),
        "PROCESSOR_WORKERS": workers,
        "WGSLIRP_CONFIG_POLL": "200ms",
    }
    with RouterProcess(router_cmd("--config", str(secret / "wg0.conf")), env) as r:
        r.wait_for_line(r"listening on", timeout=20)
        with (
            guest_client(ka.private, server.public, port, 2) as a,
            guest_client(kb.private, server.public, port, 3) as b,
        ):
            assert a.ping(GATEWAY, count=3, interval=0.05) == (3, 3)
            assert b.ping(GATEWAY, count=2, interval=0.1, wait=1) == (2, 0)
            mark = r.mark()
            publish(
                secret,
                2,
                conf_text(
                    server.private, port, [(ka.public, "10.77.0.2/32"), (kb.public, "10.77.0.3/32")]
                ),
            )
            r.wait_for_line(r"wg0\.conf changed on disk; reloading", timeout=10, since=mark)
            r.wait_for_line(r"reload: 1 peer\(s\) added, 0 removed", timeout=10, since=mark)
            assert b.ping(GATEWAY, count=5, interval=0.2, wait=6)[1] >= 1
            # removing a peer the same way
            mark = r.mark()
            publish(secret, 3, conf_text(server.private, port, [(kb.public, "10.77.0.3/32")]))
            r.wait_for_line(r"reload: 0 peer\(s\) added, 1 removed", timeout=10, since=mark)
            assert a.ping(GATEWAY, count=3, interval=0.1, wait=1) == (3, 0)
            assert b.ping(GATEWAY, count=3, interval=0.05) == (3, 3)
        stop_and_counters(r)
