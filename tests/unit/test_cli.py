"""The command line as a user meets it: exit codes, one-line errors, key tools."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wgslirp.keys import decode_key, encode_key, generate_private_key, public_key


def run(
    args: list[str],
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    tmp: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp or "/nonexistent")}
    if tmp is not None:
        base["WGSLIRP_STATE_DIR"] = str(tmp / "state")
    return subprocess.run(
        [sys.executable, "-m", "wgslirp", *args],
        env={**base, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def router_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Environment for an inline router on a free loopback port, state under `tmp`."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp),
        "WG_LISTEN_ADDR": "127.0.0.1",
        "WG_LISTEN_PORT": str(port),
        "PROCESSOR_WORKERS": "0",
        "WGSLIRP_STATE_DIR": str(tmp / "state"),
        **extra,
    }


def start_lines(p: subprocess.Popen[str]) -> str:
    """stderr of a starting router up to its "listening on" line (or its exit)."""
    assert p.stderr is not None
    seen = ""
    for _ in range(200):
        line = p.stderr.readline()
        seen += line
        if "listening on" in line or not line:
            break
    return seen


def stop(p: subprocess.Popen[str]) -> int:
    import signal

    try:
        p.send_signal(signal.SIGTERM)
        return p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_genkey_pubkey_round_trip() -> None:
    r = run(["genkey"])
    assert r.returncode == 0
    priv = r.stdout.strip()
    assert len(decode_key(priv, "x")) == 32
    r2 = run(["pubkey"], stdin=priv + "\n")
    assert r2.returncode == 0
    assert r2.stdout.strip() == encode_key(public_key(decode_key(priv, "x")))


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools not installed")
def test_interchangeable_with_wg_tools() -> None:
    ours = run(["genkey"]).stdout.strip()
    theirs_pub = subprocess.run(
        ["wg", "pubkey"], input=ours + "\n", capture_output=True, text=True, check=True
    ).stdout.strip()
    assert run(["pubkey"], stdin=ours).stdout.strip() == theirs_pub
    wg_priv = subprocess.run(
        ["wg", "genkey"], capture_output=True, text=True, check=True
    ).stdout.strip()
    wg_pub = subprocess.run(
        ["wg", "pubkey"], input=wg_priv, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert run(["pubkey"], stdin=wg_priv).stdout.strip() == wg_pub


def test_pubkey_rejects_garbage_with_exit_2() -> None:
    r = run(["pubkey"], stdin="not-a-key\n")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"WG_PRIVATE_KEY": "abc"}, "WG_PRIVATE_KEY"),
        ({"WG_PRIVATE_KEY": encode_key(b"\x01" * 31)}, "WG_PRIVATE_KEY"),
        ({"WG_LISTEN_PORT": "70000"}, "WG_LISTEN_PORT"),
        ({"WG_LISTEN_PORT": "http"}, "WG_LISTEN_PORT"),
        ({"METRICS_INTERVAL": "0s"}, "METRICS_INTERVAL"),
        ({"WG_PEERS": "0"}, "WG_PEER_0_PUBLIC_KEY"),
        (
            {
                "WG_PEERS": "0",
                "WG_PEER_0_PUBLIC_KEY": encode_key(b"\x02" * 32),
                "WG_PEER_0_ALLOWED_IPS": "10.0.0.300/32",
            },
            "WG_PEER_0_ALLOWED_IPS",
        ),
        ({"IP_TTL": "0"}, "IP_TTL"),
        ({"WG_GATEWAY_IP6": "fd77::zz"}, "WG_GATEWAY_IP6"),
        (
            {
                "WG_PEERS": "0",
                "WG_PEER_0_PUBLIC_KEY": encode_key(b"\x02" * 32),
                "WG_PEER_0_ALLOWED_IPS": "10.77.0.2/32, ::10.77.0.2/128",
            },
            "WG_PEER_0_ALLOWED_IPS",
        ),
    ],
)
@pytest.mark.parametrize("command", ["run", "check-config"])
def test_bad_settings_exit_2_naming_the_setting(
    env: dict[str, str], setting: str, command: str, tmp_path: Path
) -> None:
    r = run([command], env=env, tmp=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_missing_config_file_exit_2(tmp_path: Path) -> None:
    r = run(["--config", str(tmp_path / "nope.conf"), "check-config"], tmp=tmp_path)
    assert r.returncode == 2 and "nope.conf" in r.stderr


def test_check_config_redacts_keys(tmp_path: Path) -> None:
    priv, psk = generate_private_key(), b"\x07" * 32
    peer_pub = public_key(generate_private_key())
    env = {
        "WG_PRIVATE_KEY": encode_key(priv),
        "WG_PEERS": "0",
        "WG_PEER_0_PUBLIC_KEY": encode_key(peer_pub),
        "WG_PEER_0_PRESHARED_KEY": encode_key(psk),
        "WG_PEER_0_ALLOWED_IPS": "10.77.0.2/32",
    }
    r = run(["check-config"], env=env, tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert encode_key(priv) not in r.stdout and encode_key(psk) not in r.stdout
    assert encode_key(peer_pub) in r.stdout and "10.77.0.2/32" in r.stdout


def test_client_config_is_stable_and_keys_private(tmp_path: Path) -> None:
    a = run(["client-config"], tmp=tmp_path)
    b = run(["client-config"], tmp=tmp_path)
    assert a.returncode == 0 and a.stdout == b.stdout
    assert "[Interface]" in a.stdout and "[Peer]" in a.stdout and "Endpoint = " in a.stdout
    for f in (tmp_path / "state").iterdir():
        assert f.stat().st_mode & 0o077 == 0


def test_listen_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        port = s.getsockname()[1]
        r = run(
            ["run"], env={"WG_LISTEN_ADDR": "127.0.0.1", "WG_LISTEN_PORT": str(port)}, tmp=tmp_path
        )
    finally:
        s.close()
    assert r.returncode == 1
    assert "WG_LISTEN_PORT" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("stdout", ["closed", "broken pipe"])
def test_serves_even_when_stdout_cannot_take_the_client_config(tmp_path: Path, stdout: str) -> None:
    import os

    r_fd, w_fd = os.pipe()
    if stdout == "broken pipe":
        os.close(r_fd)  # nobody will ever read: writes fail with EPIPE
    p = subprocess.Popen(
        [sys.executable, "-m", "wgslirp"],
        env=router_env(tmp_path),
        stderr=subprocess.PIPE,
        text=True,
        stdout=w_fd if stdout == "broken pipe" else None,
        preexec_fn=(lambda: os.close(1)) if stdout == "closed" else None,
    )
    os.close(w_fd)
    if stdout == "closed":
        os.close(r_fd)
    try:
        seen = start_lines(p)
        assert "could not print the client configuration" in seen, seen
        assert "listening on 127.0.0.1" in seen and "Traceback" not in seen, seen
    finally:
        assert stop(p) == 0


def test_healthcheck_reads_only_metrics_listen(tmp_path: Path) -> None:
    """Settings healthcheck does not use cannot fail it (an unresolvable peer host name)."""
    import socket
    import threading

    env = {
        "WG_PEERS": "0",
        "WG_PEER_0_PUBLIC_KEY": encode_key(public_key(bytes(31) + b"\x01")),
        "WG_PEER_0_ENDPOINT": "peer.invalid:51820",
    }
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]

        def answer_garbage() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.recv(1000)
                conn.sendall(b"HTTP/garbage")

        t = threading.Thread(target=answer_garbage, daemon=True)
        t.start()
        r = run(["healthcheck"], env=env | {"METRICS_LISTEN": f"127.0.0.1:{port}"}, tmp=tmp_path)
        t.join(5)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    bad = run(["healthcheck"], env={"METRICS_LISTEN": "127.0.0.1:99999"}, tmp=tmp_path)
    assert bad.returncode == 2 and "METRICS_LISTEN" in bad.stderr


def test_config_option_after_the_subcommand_and_typo_warning(tmp_path: Path) -> None:
    conf = tmp_path / "wg0.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {encode_key(generate_private_key())}\nListenPort = 40123\n"
    )
    before = run(["--config", str(conf), "check-config"], tmp=tmp_path)
    after = run(["check-config", "--config", str(conf)], tmp=tmp_path)
    assert before.returncode == after.returncode == 0, after.stderr
    assert before.stdout == after.stdout and '"listen_port": 40123' in after.stdout


def test_module_check_prints_what_check_config_prints(tmp_path: Path) -> None:
    conf = tmp_path / "wg0.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {encode_key(generate_private_key())}\nListenPort = 40123\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TCP_CC": "cubic"}
    cli = run(["--config", str(conf), "check-config"], env=env, tmp=tmp_path)
    module = subprocess.run(
        [sys.executable, "-m", "wgslirp.config", "--check", str(conf)],
        env={**env, "WGSLIRP_STATE_DIR": str(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == module.returncode == 0, module.stderr
    assert cli.stdout == module.stdout and '"cc": "cubic"' in cli.stdout
    bad = {**env, "METRICS_INTERVAL": "0s"}
    cli_bad = run(["check-config"], env=bad, tmp=tmp_path)
    module_bad = subprocess.run(
        [sys.executable, "-m", "wgslirp.config", "--check"],
        env=bad,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli_bad.returncode == module_bad.returncode == 2
    assert cli_bad.stderr == module_bad.stderr and "METRICS_INTERVAL" in cli_bad.stderr


def test_unknown_settings_are_named_at_start(tmp_path: Path) -> None:
    import os
    import signal

    p = subprocess.Popen(
        [sys.executable, "-m", "wgslirp"],
        env=router_env(tmp_path, WG_LISTEN_PROT="51820"),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        seen = start_lines(p)
        assert "unknown setting(s) WG_LISTEN_PROT" in seen, seen
        os.kill(p.pid, signal.SIGHUP)  # a reload signal is harmless at any time
    finally:
        assert stop(p) == 0
