"""Port forward settings (WG_FORWARD_TCP / WG_FORWARD_UDP): the one syntax, its errors
naming the setting, the file form, and the checks against the peers' AllowedIPs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from wgslirp.config import ConfigError, load_config
from wgslirp.config.forwards import Forward, check_config_forwards, expand, parse_forwards
from wgslirp.config.render import render_check
from wgslirp.keys import encode_key, public_key
from wgslirp_testkit.ports import free_udp_port

PRIV_B64 = encode_key(bytes(range(1, 33)))
PEER_A = encode_key(public_key(bytes([0xA]) * 32))
BASE = {
    "XDG_STATE_HOME": "/var/lib/test-state",
    "WG_PRIVATE_KEY": PRIV_B64,
    "WG_PEERS": "0",
    "WG_PEER_0_PUBLIC_KEY": PEER_A,
    "WG_PEER_0_ALLOWED_IPS": "10.77.0.2/32,10.80.0.0/16",
    "WG_GATEWAY_IP": "10.77.0.1",
}


def _load(env: dict[str, str], config_file: str | None = None) -> object:
    cfg = load_config({**BASE, **env}, config_file, resolve=lambda h: h)
    check_config_forwards(cfg)
    return cfg


def _err(env: dict[str, str], config_file: str | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(env, config_file)
    return info.value


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("127.0.0.1:8080=10.77.0.2:80", ("127.0.0.1:8080=10.77.0.2:80",)),
        ("8080=10.77.0.2:80", ("127.0.0.1:8080=10.77.0.2:80",)),  # loopback by default
        ("0.0.0.0:2222=10.77.0.3", ("0.0.0.0:2222=10.77.0.3:2222",)),  # same port
        (
            " 1=10.77.0.2:2 , ,3=10.77.0.2:4 ",
            ("127.0.0.1:1=10.77.0.2:2", "127.0.0.1:3=10.77.0.2:4"),
        ),
        ("8000-8002=10.77.0.2:9000-9002", ("127.0.0.1:8000-8002=10.77.0.2:9000-9002",)),
        ("8000-8002=10.77.0.2", ("127.0.0.1:8000-8002=10.77.0.2:8000-8002",)),
        ("", ()),
    ],
)
def test_parse_forms(raw: str, want: tuple[str, ...]) -> None:
    assert parse_forwards(raw) == want
    assert parse_forwards(",".join(want)) == want  # the normal form loads back as itself


def test_expand_one_forward_per_port() -> None:
    assert expand(["127.0.0.1:8000-8002=10.77.0.2:9000-9002"]) == [
        Forward("127.0.0.1", 8000, "10.77.0.2", 9000),
        Forward("127.0.0.1", 8001, "10.77.0.2", 9001),
        Forward("127.0.0.1", 8002, "10.77.0.2", 9002),
    ]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("127.0.0.1:8080:10.77.0.2:80", "is not [listen-ip:]port=guest-ip[:port]"),  # Docker's
        ("8080", "is not [listen-ip:]port=guest-ip[:port]"),
        ("a=b=c", "is not [listen-ip:]port=guest-ip[:port]"),
        ("127.0.0.1:http=10.77.0.2:80", "is not a port"),
        ("70000=10.77.0.2:80", "out of range"),
        ("0=10.77.0.2:80", "out of range"),
        ("8010-8000=10.77.0.2", "runs backwards"),
        ("8000-8010=10.77.0.2:80-81", "the guest range has 2 ports, the listen range 11"),
        ("localhost:80=10.77.0.2:80", "not an IPv4 address"),
        ("[::1]:80=10.77.0.2:80", "IPv6"),
        ("80=fd00::2:80", "IPv6"),
        ("80=127.0.0.1:80", "cannot be a guest's address"),
        ("80=0.0.0.0:80", "cannot be a guest's address"),
        ("224.0.0.1:80=10.77.0.2:80", "not a local unicast"),
        ("80=10.77.0.2,80=10.77.0.3", "listen port 80 is forwarded twice"),
        ("0.0.0.0:80=10.77.0.2,127.0.0.1:79-81=10.77.0.3", "listen port 80 is forwarded twice"),
        ("1-1025=10.77.0.2", "more than 1024"),
    ],
)
def test_bad_forms_name_the_setting(raw: str, fragment: str) -> None:
    for name in ("WG_FORWARD_TCP", "WG_FORWARD_UDP"):
        e = _err({name: raw})
        assert e.setting == name and fragment in e.problem, str(e)


def test_same_port_on_two_addresses_is_fine() -> None:
    assert len(parse_forwards("127.0.0.1:80=10.77.0.2,127.0.0.2:80=10.77.0.3")) == 2


def test_guest_outside_every_allowed_ips() -> None:
    e = _err({"WG_FORWARD_TCP": "8080=10.77.0.2:80,8081=10.77.0.9:80"})
    assert e.setting == "WG_FORWARD_TCP"
    assert "10.77.0.9 is outside every peer's AllowedIPs" in e.problem
    e = _err({"WG_FORWARD_UDP": "5353=10.81.0.1:53"})
    assert e.setting == "WG_FORWARD_UDP" and "10.81.0.1" in e.problem
    _load({"WG_FORWARD_UDP": "5353=10.80.3.4:53"})  # inside 10.80.0.0/16


def test_needs_a_gateway_address() -> None:
    env = {**BASE, "WG_FORWARD_TCP": "8080=10.77.0.2:80"}
    del env["WG_GATEWAY_IP"]
    cfg = load_config(env, None, resolve=lambda h: h)
    with pytest.raises(ConfigError) as info:
        check_config_forwards(cfg)
    assert info.value.setting == "WG_FORWARD_TCP" and "WG_GATEWAY_IP" in info.value.problem


def test_connect_timeout_bounds() -> None:
    assert _err({"WG_FORWARD_CONNECT_TIMEOUT": "0s"}).setting == "WG_FORWARD_CONNECT_TIMEOUT"
    cfg = _load({"WG_FORWARD_CONNECT_TIMEOUT": "3s"})
    assert cfg.forward_connect_timeout == 3.0  # type: ignore[attr-defined]


def test_config_file_keys_repeat_and_env_wins(tmp_path: Path) -> None:
    f = tmp_path / "wg.conf"
    f.write_text(
        "[Interface]\n"
        f"PrivateKey = {PRIV_B64}\n"
        "ForwardTCP = 127.0.0.1:8080=10.77.0.2:80\n"
        "ForwardTCP = 2222=10.77.0.2:22\n"
        "ForwardUDP = 5353=10.77.0.2:53\n"
        "[Peer]\n"
        f"PublicKey = {PEER_A}\n"
        "AllowedIPs = 10.77.0.2/32\n"
    )
    env = {"XDG_STATE_HOME": "/x", "WG_GATEWAY_IP": "10.77.0.1"}
    cfg = load_config(env, str(f), resolve=lambda h: h)
    check_config_forwards(cfg)
    assert cfg.forward_tcp == ("127.0.0.1:8080=10.77.0.2:80", "127.0.0.1:2222=10.77.0.2:22")
    assert cfg.forward_udp == ("127.0.0.1:5353=10.77.0.2:53",)
    assert "WG_FORWARD_TCP=127.0.0.1:8080=10.77.0.2:80,127.0.0.1:2222=10.77.0.2:22" in (
        render_check(cfg)
    )
    cfg = load_config({**env, "WG_FORWARD_TCP": "9=10.77.0.2"}, str(f), resolve=lambda h: h)
    assert cfg.forward_tcp == ("127.0.0.1:9=10.77.0.2:9",)
    f.write_text(f.read_text().replace("ForwardTCP = 2222", "ForwardTCP = x2222"))
    with pytest.raises(ConfigError) as info:
        load_config(env, str(f), resolve=lambda h: h)
    assert info.value.setting == f"{f} [Interface] ForwardTCP"


def test_router_exits_2_naming_the_setting(tmp_path: Path) -> None:
    """The real command line, as a user meets it: exit 2 and the setting's name."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WG_", "WGSLIRP_", "TCP_"))}
    env |= BASE | {"XDG_STATE_HOME": str(tmp_path), "PROCESSOR_WORKERS": "0"}
    for extra, fragment in (
        ({"WG_FORWARD_TCP": "8080:10.77.0.2:80"}, "WG_FORWARD_TCP: "),
        ({"WG_FORWARD_UDP": "53=10.99.0.2"}, "WG_FORWARD_UDP: guest address 10.99.0.2"),
    ):
        for cmd in ("run", "check-config"):
            r = subprocess.run(
                [sys.executable, "-m", "wgslirp", cmd],
                env=env | extra,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert r.returncode == 2, (cmd, r.stderr)
            assert fragment in r.stderr, (cmd, r.stderr)


def test_port_in_use_exits_2_naming_the_setting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WG_", "WGSLIRP_", "TCP_"))}
    env |= BASE | {"XDG_STATE_HOME": str(tmp_path), "PROCESSOR_WORKERS": "0"}
    env |= {"WG_LISTEN_ADDR": "127.0.0.1", "WG_LISTEN_PORT": str(free_udp_port())}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "wgslirp"],
            env=env | {"WG_FORWARD_TCP": f"{port}=10.77.0.2:80"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 2, r.stderr
    assert f"WG_FORWARD_TCP: cannot listen on 127.0.0.1:{port}: Address already in use" in (
        r.stderr
    )
