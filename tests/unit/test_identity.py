"""Zero-config identity in the state directory, and the client config printed for it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from wgslirp.config import Config, ConfigError, load_config, parse_wg_quick
from wgslirp.identity import (
    CLIENT_KEY_FILE,
    SERVER_KEY_FILE,
    client_config_text,
    ensure_default_identity,
    load_or_create_key,
    read_client_private_key,
)
from wgslirp.keys import decode_key, encode_key, generate_private_key, public_key


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "wgslirp"


def cfg_for(state_dir: Path, **env: str) -> Config:
    return load_config({"WGSLIRP_STATE_DIR": str(state_dir), **env})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_creates_private_keys(state_dir: Path) -> None:
    cfg = ensure_default_identity(cfg_for(state_dir))
    assert mode(state_dir) == 0o700
    for name in (SERVER_KEY_FILE, CLIENT_KEY_FILE):
        assert mode(state_dir / name) == 0o600
        text = (state_dir / name).read_text()
        assert text.endswith("\n") and len(text.strip()) == 44  # `wg genkey` format
    assert cfg.private_key == decode_key((state_dir / SERVER_KEY_FILE).read_text(), "t")
    client = decode_key((state_dir / CLIENT_KEY_FILE).read_text(), "t")
    (peer,) = cfg.peers
    assert peer.public_key == public_key(client)
    assert peer.allowed_ips == ("10.77.0.2/32", "fd77::2/128")
    assert cfg.gateway_ip == "10.77.0.1"
    assert cfg.dns_ip is None
    assert sorted(os.listdir(state_dir)) == [CLIENT_KEY_FILE, SERVER_KEY_FILE]  # no temp files


def test_keys_are_private_whatever_the_umask(state_dir: Path) -> None:
    old = os.umask(0)
    try:
        ensure_default_identity(cfg_for(state_dir))
    finally:
        os.umask(old)
    assert mode(state_dir / SERVER_KEY_FILE) == 0o600
    assert mode(state_dir) == 0o700


def test_second_start_reuses_the_keys(state_dir: Path) -> None:
    first = ensure_default_identity(cfg_for(state_dir))
    second = ensure_default_identity(cfg_for(state_dir))
    assert first == second


def test_configured_key_leaves_state_dir_alone(state_dir: Path) -> None:
    cfg = cfg_for(state_dir, WG_PRIVATE_KEY=encode_key(generate_private_key()))
    assert ensure_default_identity(cfg) is cfg
    assert not state_dir.exists()


def test_configured_peers_get_no_generated_client(state_dir: Path) -> None:
    peer = encode_key(public_key(generate_private_key()))
    cfg = ensure_default_identity(
        cfg_for(
            state_dir, WG_PEERS="0", WG_PEER_0_PUBLIC_KEY=peer, WG_PEER_0_ALLOWED_IPS="10.1.0.2"
        ),
    )
    assert cfg.private_key is not None
    assert [p.public_key for p in cfg.peers] == [decode_key(peer, "t")]
    assert cfg.gateway_ip is None  # the host alias stays an explicit choice
    assert (state_dir / SERVER_KEY_FILE).exists()
    assert not (state_dir / CLIENT_KEY_FILE).exists()


def test_explicit_gateway_is_kept(state_dir: Path) -> None:
    cfg = ensure_default_identity(cfg_for(state_dir, WG_GATEWAY_IP="10.77.0.254"))
    assert cfg.gateway_ip == "10.77.0.254"


@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o660])
def test_key_readable_by_others_is_refused(state_dir: Path, bad_mode: int) -> None:
    ensure_default_identity(cfg_for(state_dir))
    key = state_dir / SERVER_KEY_FILE
    key.chmod(bad_mode)
    with pytest.raises(ConfigError) as info:
        ensure_default_identity(cfg_for(state_dir))
    assert info.value.setting == "WGSLIRP_STATE_DIR"
    assert str(key) in info.value.problem and "chmod 600" in info.value.problem
    assert mode(key) == bad_mode  # never "fixed" behind the user's back


def test_invalid_key_file_is_refused(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    key = state_dir / SERVER_KEY_FILE
    key.write_text("not a key\n")
    key.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        ensure_default_identity(cfg_for(state_dir))
    assert info.value.setting == "WGSLIRP_STATE_DIR"
    assert "valid key" in info.value.problem


def test_symlinked_key_is_refused(state_dir: Path, tmp_path: Path) -> None:
    state_dir.mkdir(parents=True)
    target = tmp_path / "elsewhere.key"
    target.write_text(encode_key(generate_private_key()) + "\n")
    target.chmod(0o600)
    (state_dir / SERVER_KEY_FILE).symlink_to(target)
    with pytest.raises(ConfigError) as info:
        ensure_default_identity(cfg_for(state_dir))
    assert info.value.setting == "WGSLIRP_STATE_DIR"


def test_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as info:
        ensure_default_identity(cfg_for(blocker))
    assert info.value.setting == "WGSLIRP_STATE_DIR"


def test_existing_wg_genkey_file_is_used(state_dir: Path) -> None:
    state_dir.mkdir(parents=True, mode=0o700)
    key = generate_private_key()
    path = state_dir / SERVER_KEY_FILE
    path.write_text(encode_key(key) + "\n")
    path.chmod(0o600)
    assert load_or_create_key(str(state_dir), SERVER_KEY_FILE) == key


def test_read_client_private_key(state_dir: Path) -> None:
    assert read_client_private_key(cfg_for(state_dir)) is None
    assert not state_dir.exists()  # reading never creates anything
    cfg = ensure_default_identity(cfg_for(state_dir))
    client = read_client_private_key(cfg)
    assert client is not None and public_key(client) == cfg.peers[0].public_key
    assert read_client_private_key(str(state_dir)) == client


# ---------------------------------------------------------------- client config


def _interface_and_peer(text: str) -> tuple[dict[str, str], dict[str, str]]:
    sections = parse_wg_quick(text, "client.conf")
    assert [s.kind for s in sections] == ["Interface", "Peer"]
    iface, peer = (dict(s.entries) for s in sections)
    return iface, peer


def test_client_config_round_trips(state_dir: Path, tmp_path: Path) -> None:
    cfg = ensure_default_identity(
        cfg_for(
            state_dir,
            WG_DNS_IP="10.77.0.53",
            WG_MTU="1280",
            WG_PUBLIC_ENDPOINT="vpn.example.com",
            WG_LISTEN_PORT="51999",
        )
    )
    client = read_client_private_key(cfg)
    assert client is not None and cfg.private_key is not None
    text = client_config_text(cfg, client)

    iface, peer = _interface_and_peer(text)
    assert iface == {
        "PrivateKey": encode_key(client),
        "Address": "10.77.0.2/32, fd77::2/128",
        "DNS": "10.77.0.53",
        "MTU": "1280",
    }
    assert peer == {
        "PublicKey": encode_key(public_key(cfg.private_key)),
        "Endpoint": "vpn.example.com:51999",
        "AllowedIPs": "0.0.0.0/0, ::/0",
        "PersistentKeepalive": "25",
    }

    # The printed file is itself a valid configuration for our own loader, and it
    # describes the router we configured: the client's key pairs with the router's peer.
    path = tmp_path / "client.conf"
    path.write_text(text)
    as_loaded = load_config({}, str(path), resolve=lambda host: "203.0.113.1")
    assert as_loaded.private_key == client
    assert as_loaded.mtu == 1280
    (router,) = as_loaded.peers
    assert router.public_key == public_key(cfg.private_key)
    assert router.endpoint == ("203.0.113.1", 51999)
    assert router.allowed_ips == ("0.0.0.0/0", "::/0") and router.keepalive == 25


CLIENT = generate_private_key()


def _with_peer(state_dir: Path, **env: str) -> Config:
    base = {
        "WG_PRIVATE_KEY": encode_key(generate_private_key()),
        "WG_PEERS": "0",
        "WG_PEER_0_PUBLIC_KEY": encode_key(public_key(CLIENT)),
        "WG_PEER_0_ALLOWED_IPS": "10.9.0.7/32",
    }
    return cfg_for(state_dir, **{**base, **env})


def test_client_endpoint_uses_listen_addr_when_specific(state_dir: Path) -> None:
    cfg = _with_peer(state_dir, WG_LISTEN_ADDR="192.0.2.10")
    _, peer = _interface_and_peer(client_config_text(cfg, CLIENT))
    assert peer["Endpoint"] == "192.0.2.10:51820"


def test_client_endpoint_brackets_an_ipv6_address(state_dir: Path) -> None:
    cfg = _with_peer(state_dir, WG_LISTEN_ADDR="2001:db8::10")
    _, peer = _interface_and_peer(client_config_text(cfg, CLIENT))
    assert peer["Endpoint"] == "[2001:db8::10]:51820"
    cfg = _with_peer(state_dir, WG_PUBLIC_ENDPOINT="2001:db8::20")
    _, peer = _interface_and_peer(client_config_text(cfg, CLIENT))
    assert peer["Endpoint"] == "[2001:db8::20]:51820"


def test_client_endpoint_falls_back_to_a_host_address(state_dir: Path) -> None:
    cfg = _with_peer(state_dir)
    text = client_config_text(cfg, CLIENT, local_ipv4=lambda: "198.51.100.20")
    _, peer = _interface_and_peer(text)
    assert peer["Endpoint"] == "198.51.100.20:51820"


def test_client_config_without_dns_and_with_psk(state_dir: Path) -> None:
    psk = encode_key(generate_private_key())
    cfg = _with_peer(state_dir, WG_PEER_0_PRESHARED_KEY=psk, WG_PUBLIC_ENDPOINT="h.example:1")
    iface, peer = _interface_and_peer(client_config_text(cfg, CLIENT))
    assert "DNS" not in iface
    assert iface["Address"] == "10.9.0.7/32"
    assert peer["PresharedKey"] == psk


def test_client_config_with_unknown_key_has_placeholder(state_dir: Path) -> None:
    cfg = _with_peer(state_dir, WG_PUBLIC_ENDPOINT="h.example")
    for key in (None, generate_private_key()):  # unknown, or belonging to someone else
        text = client_config_text(cfg, key)
        iface, _ = _interface_and_peer(text)
        assert "PrivateKey" not in iface
        assert "# PrivateKey = <the private key whose public key is " in text
        assert encode_key(public_key(CLIENT)) in text


def test_client_config_needs_router_key_and_peer(state_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        client_config_text(cfg_for(state_dir), None)
    assert info.value.setting == "WG_PRIVATE_KEY"
    no_peers = cfg_for(state_dir, WG_PRIVATE_KEY=encode_key(generate_private_key()))
    with pytest.raises(ConfigError) as info:
        client_config_text(no_peers, None)
    assert info.value.setting == "WG_PEERS"


def test_a_state_directory_others_can_write_is_refused_not_changed(tmp_path: Path) -> None:
    import stat as st

    from wgslirp.identity import ensure_state_dir

    for mode in (0o777, 0o1777, 0o770):  # shared, /tmp-like, group-writable
        d = tmp_path / f"d{mode:o}"
        d.mkdir()
        d.chmod(mode)
        with pytest.raises(ConfigError, match="writable by group or others"):
            ensure_state_dir(str(d))
        assert st.S_IMODE(d.stat().st_mode) == mode  # left as it was
    ok = tmp_path / "readable"
    ok.mkdir()
    ok.chmod(0o755)
    ensure_state_dir(str(ok))  # readable by others: a warning, still usable
