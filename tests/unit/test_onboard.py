"""`wgslirp peer` (#15): names, address allocation, the peers file, the merge with the
configured peers, the QR code, and the commands on a real state directory (no router:
the live path is the end-to-end test's)."""

from __future__ import annotations

import base64
import io
import json
import multiprocessing
import os
import re
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from wgslirp import cli
from wgslirp.config import Config, ConfigError, PeerConfig
from wgslirp.identity import load_or_create_key
from wgslirp.keys import encode_key, generate_private_key, public_key
from wgslirp.onboard import commands, store
from wgslirp.onboard.errors import PeerError
from wgslirp.onboard.merge import EMBEDDED_LABEL, merge_stored, taken_addresses
from wgslirp.onboard.names import MAX_NAME, BadName, validate_name
from wgslirp.onboard.pool import PoolExhausted, allocate
from wgslirp.onboard.qr import qr_terminal

SERVER = generate_private_key()


def key() -> bytes:
    return public_key(generate_private_key())


def stored(name: str, address: str, **kw: object) -> store.StoredPeer:
    return store.StoredPeer(name=name, public_key=key(), address=address, **kw)  # type: ignore[arg-type]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return d


def context(
    state: Path,
    *,
    peers: tuple[PeerConfig, ...] = (),
    labels: tuple[str, ...] = (),
    socket_dir: Path | None = None,
    **cfg: object,
) -> commands.Context:
    config = Config(private_key=SERVER, state_dir=str(state), peers=peers, **cfg)  # type: ignore[arg-type]
    return commands.Context(
        config,
        labels,
        out=io.StringIO(),
        err=io.StringIO(),
        socket_dir=socket_dir or state / "no-router",  # nobody answers there
    )


def out(ctx: commands.Context) -> str:
    assert isinstance(ctx.out, io.StringIO)
    return ctx.out.getvalue()


def err(ctx: commands.Context) -> str:
    assert isinstance(ctx.err, io.StringIO)
    return ctx.err.getvalue()


def fresh(ctx: commands.Context) -> commands.Context:
    """The same settings with empty output buffers."""
    return commands.Context(
        ctx.cfg, ctx.labels, out=io.StringIO(), err=io.StringIO(), socket_dir=ctx.socket_dir
    )


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["phone", "Alice-laptop", "a", "x" * MAX_NAME, "ci_runner.2", "7"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("x" * (MAX_NAME + 1), "at most 32"),
        ("my phone", "contains ' '"),
        ("-rf", "start with a letter or a digit"),
        (".hidden", "start with a letter or a digit"),
        ("a/b", "contains '/'"),
        ("café", "contains 'é'"),
        ("a\nb", "contains '\\n'"),
        ("semi;colon", "contains ';'"),
    ],
)
def test_invalid_names_say_which_rule(name: str, why: str) -> None:
    with pytest.raises(BadName, match=re.escape(why)) as info:
        validate_name(name)
    assert info.value.exit_code == 2


def test_names_are_unique_regardless_of_case(state: Path) -> None:
    ctx = context(state)
    assert commands.add(ctx, "Phone") == 0
    with pytest.raises(PeerError, match="a peer named 'Phone' already exists"):
        commands.add(fresh(ctx), "phone")
    with pytest.raises(ConfigError, match="same name or address"):
        store.check_peers([stored("a", "10.0.0.2/32"), stored("A", "10.0.0.3/32")], "f")


# ------------------------------------------------------------------------ allocation


def test_allocation_takes_the_lowest_free_address_and_skips_the_reserved_ones() -> None:
    pool = "10.77.0.0/24"
    assert allocate(pool, []) == "10.77.0.2/32"  # .0 network, .1 the router's by convention
    assert allocate(pool, ["10.77.0.2/32", "10.77.0.3/32"]) == "10.77.0.4/32"
    assert allocate(pool, ["10.77.0.2/32", "10.77.0.4/32"]) == "10.77.0.3/32"  # a hole first
    assert allocate(pool, ["10.77.0.0/25"]) == "10.77.0.128/32"  # a configured range
    assert allocate(pool, ["fd00::/64", "192.168.0.0/16"]) == "10.77.0.2/32"  # elsewhere
    # a large pool with many taken costs a sort, not a walk: 10.0.0.0/8 minus a /9
    assert allocate("10.0.0.0/8", ["10.0.0.0/9"]) == "10.128.0.0/32"


def test_pool_exhaustion() -> None:
    assert allocate("10.9.0.0/30", []) == "10.9.0.2/32"  # the one client address of a /30
    with pytest.raises(PoolExhausted, match=r"no free address left in WGSLIRP_PEER_POOL 10\.9"):
        allocate("10.9.0.0/30", ["10.9.0.2/32"])
    with pytest.raises(PoolExhausted) as info:
        allocate("10.9.0.0/29", [f"10.9.0.{i}/32" for i in range(2, 7)])
    assert info.value.exit_code == 1


def test_pool_exhaustion_through_peer_add_changes_nothing(state: Path) -> None:
    ctx = context(state, peer_pool="10.9.0.0/29")  # .2 to .6: five clients
    for i in range(5):
        assert commands.add(fresh(ctx), f"c{i}") == 0
    before = (state / store.PEERS_FILE).read_bytes()
    with pytest.raises(PoolExhausted):
        commands.add(fresh(ctx), "sixth")
    assert (state / store.PEERS_FILE).read_bytes() == before
    assert [p.address for p in store.read_peers(str(state))] == [
        f"10.9.0.{i}/32" for i in range(2, 7)
    ]


def test_an_address_is_reused_after_remove(state: Path) -> None:
    ctx = context(state)
    for name in ("a", "b", "c"):
        commands.add(fresh(ctx), name)
    assert commands.remove(fresh(ctx), "b") == 0
    commands.add(fresh(ctx), "d")
    got = {p.name: p.address for p in store.read_peers(str(state))}
    assert got == {"a": "10.77.0.2/32", "c": "10.77.0.4/32", "d": "10.77.0.3/32"}


def test_allocation_avoids_configured_peers_gateway_and_dns(state: Path) -> None:
    peers = (
        PeerConfig(public_key=key(), allowed_ips=("10.77.0.2/32",)),
        PeerConfig(public_key=key(), allowed_ips=("10.77.0.4/31",)),
    )
    ctx = context(
        state,
        peers=peers,
        labels=("WG_PEER_0", "WG_PEER_1"),
        gateway_ip="10.77.0.3",
        dns_ip="10.77.0.6",
    )
    assert taken_addresses(ctx.cfg) == [
        "10.77.0.2/32",
        "10.77.0.4/31",
        "10.77.0.3/32",
        "10.77.0.6/32",
    ]
    commands.add(ctx, "phone")
    assert store.read_peers(str(state))[0].address == "10.77.0.7/32"
    assert "Address = 10.77.0.7/32" in out(ctx)


# ----------------------------------------------------------- clashes with the config


def test_a_stored_address_inside_a_configured_peer_is_an_error_naming_both() -> None:
    cfg = Config(
        private_key=SERVER,
        peers=(PeerConfig(public_key=key(), allowed_ips=("10.77.0.0/28",)),),
    )
    with pytest.raises(ConfigError) as info:
        merge_stored(cfg, ("wg.conf [Peer 1]",), [stored("phone", "10.77.0.5/32")], "peers.json")
    assert str(info.value) == (
        "peers.json peer 'phone': address 10.77.0.5/32 is inside wg.conf [Peer 1]'s "
        "AllowedIPs 10.77.0.0/28"
    )


def test_a_stored_public_key_also_configured_is_an_error_naming_both() -> None:
    p = stored("laptop", "10.77.0.9/32")
    cfg = Config(
        private_key=SERVER,
        peers=(
            PeerConfig(public_key=key(), allowed_ips=("10.77.0.2/32",)),
            PeerConfig(public_key=p.public_key, allowed_ips=("10.77.0.3/32",)),
        ),
    )
    with pytest.raises(
        ConfigError,
        match=r"peer 'laptop': public key .* is also configured as "
        r"WG_PEER_1$",
    ):
        merge_stored(cfg, ("WG_PEER_0", "WG_PEER_1"), [p], "peers.json")
    # the zero-config client has no label from the loader: it is named for what it is
    with pytest.raises(ConfigError, match=re.escape(EMBEDDED_LABEL)):
        merge_stored(cfg, ("WG_PEER_0",), [p], "peers.json")


def test_stored_address_on_the_gateway_or_router_key_is_refused() -> None:
    cfg = Config(private_key=SERVER, gateway_ip="10.77.0.5")
    with pytest.raises(ConfigError, match="is the router's WG_GATEWAY_IP"):
        merge_stored(cfg, (), [stored("a", "10.77.0.5/32")], "f")
    own = store.StoredPeer(name="a", public_key=public_key(SERVER), address="10.77.0.9/32")
    with pytest.raises(ConfigError, match="router's own public key"):
        merge_stored(cfg, (), [own], "f")


def test_merge_appends_stored_peers_after_the_configured_ones() -> None:
    first = PeerConfig(public_key=key(), allowed_ips=("10.77.0.2/32",))
    cfg = Config(private_key=SERVER, peers=(first,))
    p = stored("phone", "10.77.0.3/32", preshared_key=os.urandom(32))
    merged = merge_stored(cfg, ("WG_PEER_0",), [p], "f")
    assert merged.peers == (
        first,
        PeerConfig(
            public_key=p.public_key, preshared_key=p.preshared_key, allowed_ips=("10.77.0.3/32",)
        ),
    )


def test_the_router_refuses_to_start_on_a_clash_with_exit_2(
    state: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's loading path (start, reload, client-config) joins the peers file."""
    with store.locked(str(state)):
        store.write_peers(str(state), [stored("phone", "10.77.0.3/32")])
    monkeypatch.setenv("WGSLIRP_STATE_DIR", str(state))
    monkeypatch.setenv("WG_PRIVATE_KEY", encode_key(SERVER))
    monkeypatch.setenv("WG_PEERS", "0")
    monkeypatch.setenv("WG_PEER_0_PUBLIC_KEY", encode_key(key()))
    monkeypatch.setenv("WG_PEER_0_ALLOWED_IPS", "10.77.0.3/32")
    assert cli.main(["client-config"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"wgslirp: configuration error: {state}/peers.json peer 'phone': address "
        "10.77.0.3/32 is inside WG_PEER_0's AllowedIPs 10.77.0.3/32"
    )
    monkeypatch.setenv("WG_PEER_0_ALLOWED_IPS", "10.77.0.2/32")
    assert cli.main(["client-config"]) == 0  # no clash: the configured peer 0's file
    assert "Address = 10.77.0.2/32" in capsys.readouterr().out


def test_check_config_joins_the_peers_file_and_reports_a_clash(
    state: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`wgslirp check-config` says before a start or reload what the router would say."""
    phone = stored("phone", "10.77.0.3/32", preshared_key=b"\x05" * 32)
    with store.locked(str(state)):
        store.write_peers(str(state), [phone])
    monkeypatch.setenv("WGSLIRP_STATE_DIR", str(state))
    monkeypatch.setenv("WG_PRIVATE_KEY", encode_key(SERVER))
    monkeypatch.setenv("WG_PEERS", "0")
    monkeypatch.setenv("WG_PEER_0_PUBLIC_KEY", encode_key(key()))
    monkeypatch.setenv("WG_PEER_0_ALLOWED_IPS", "10.77.0.0/28")
    assert cli.main(["check-config"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"wgslirp: configuration error: {state}/peers.json peer 'phone': address "
        "10.77.0.3/32 is inside WG_PEER_0's AllowedIPs 10.77.0.0/28"
    )
    monkeypatch.setenv("WG_PEER_0_ALLOWED_IPS", "10.77.0.2/32")
    assert cli.main(["check-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [p["allowed_ips"] for p in shown["peers"]] == [["10.77.0.2/32"], ["10.77.0.3/32"]]
    assert encode_key(phone.public_key) in json.dumps(shown)
    assert encode_key(b"\x05" * 32) not in json.dumps(shown)  # redacted like the others


# ------------------------------------------------------------------- the peers file


def test_peers_file_round_trip_mode_and_format(state: Path) -> None:
    peers = [
        stored("a", "10.77.0.2/32", preshared_key=os.urandom(32)),
        stored("b", "10.77.0.3/32", private_key=generate_private_key(), created="2026-01-01"),
    ]
    with store.locked(str(state)):
        store.write_peers(str(state), peers)
    path = state / store.PEERS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.read_peers(str(state)) == tuple(peers)
    doc = json.loads(path.read_text())
    assert doc["version"] == 1
    assert doc["peers"][0]["public_key"] == encode_key(peers[0].public_key)  # as wg prints it
    assert not (state / (store.PEERS_FILE + store.TMP_SUFFIX)).exists()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{", "not a valid peers file"),
        ('{"version": 2, "peers": []}', "format version 2"),
        (
            '{"peers": [{"name": "a", "public_key": "AAAA", "address": "10.0.0.2/32"}]}',
            "not a valid peers file",
        ),
        ('{"peers": [], "extra": 1}', "not a valid peers file"),
    ],
)
def test_a_bad_peers_file_is_an_error_naming_it(state: Path, text: str, why: str) -> None:
    path = state / store.PEERS_FILE
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=re.escape(why)) as info:
        store.read_peers(str(state))
    assert info.value.setting == str(path)


def test_a_peers_file_others_can_read_is_refused(state: Path) -> None:
    with store.locked(str(state)):
        store.write_peers(str(state), [stored("a", "10.77.0.2/32")])
    (state / store.PEERS_FILE).chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        store.read_peers(str(state))


def _crash_during(state: Path, patch: Callable[[], None]) -> int:
    """Write a new peer list in a forked child that `patch` arranges to die mid-write
    (SIGKILL: no cleanup, no finally blocks); return how the child ended."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            patch()
            with store.locked(str(state)):
                store.write_peers(
                    str(state),
                    [stored(f"n{i}", f"10.77.{i // 250}.{i % 250 + 2}/32") for i in range(2000)],
                )
        finally:
            os._exit(3)  # only if the crash did not happen
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_a_crash_mid_write_leaves_the_old_file(state: Path, where: str) -> None:
    old = [stored("keep", "10.77.0.2/32")]
    with store.locked(str(state)):
        store.write_peers(str(state), old)
    before = (state / store.PEERS_FILE).read_bytes()

    def die(*_a: object) -> object:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    def patch() -> None:
        if where == "write":  # half of the first chunk reaches the file, then the crash
            real = os.write

            def half(fd: int, data: memoryview) -> int:
                real(fd, data[: len(data) // 2])
                return int(die())  # type: ignore[call-overload]

            os.write = half  # type: ignore[assignment]
        elif where == "fsync":
            os.fsync = die  # type: ignore[assignment]
        else:
            os.replace = die  # type: ignore[assignment]

    status = _crash_during(state, patch)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert (state / store.PEERS_FILE).read_bytes() == before
    assert store.read_peers(str(state)) == tuple(old)
    tmp = state / (store.PEERS_FILE + store.TMP_SUFFIX)
    assert tmp.exists()  # what the crash left; the next write overwrites it
    tmp.chmod(0o644)
    new = [*old, stored("next", "10.77.0.3/32")]
    with store.locked(str(state)):
        store.write_peers(str(state), new)
    assert store.read_peers(str(state)) == tuple(new)
    assert stat.S_IMODE((state / store.PEERS_FILE).stat().st_mode) == 0o600
    assert not tmp.exists()


def test_a_failed_rename_keeps_the_old_file_and_says_so(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = [stored("keep", "10.77.0.2/32")]
    with store.locked(str(state)):
        store.write_peers(str(state), old)

    def full(*_a: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(ConfigError, match="No space left on device; the old file is unchanged"):
        store.write_peers(str(state), [*old, stored("new", "10.77.0.3/32")])
    monkeypatch.undo()
    assert store.read_peers(str(state)) == tuple(old)
    assert not (state / (store.PEERS_FILE + store.TMP_SUFFIX)).exists()


def _add_many(state: str, prefix: str) -> None:
    ctx = context(Path(state))
    for i in range(8):
        commands.add(fresh(ctx), f"{prefix}{i}")


def test_concurrent_adds_lose_nothing(state: Path) -> None:
    mp = multiprocessing.get_context("fork")
    procs = [mp.Process(target=_add_many, args=(str(state), p)) for p in ("x", "y")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    peers = store.read_peers(str(state))
    assert sorted(p.name for p in peers) == sorted(f"{a}{i}" for a in "xy" for i in range(8))
    assert len({p.address for p in peers}) == 16


# ------------------------------------------------------------------------- QR code


def _bitmap(qr: str, scale: int = 4) -> np.ndarray:
    """The printed half blocks back to pixels: each character is two modules stacked, the
    glyph drawn where a module is light (segno's compact form); dark modules -> 0."""
    light = {" ": (0, 0), "\u2580": (1, 0), "\u2584": (0, 1), "\u2588": (1, 1)}
    rows: list[list[int]] = []
    for line in re.sub(r"\x1b\[[0-9;]*m", "", qr).splitlines():
        top, bottom = zip(*(light[c] for c in line), strict=True)
        rows += [list(top), list(bottom)]
    img = np.array(rows, dtype=np.uint8) * 255
    return np.kron(img, np.ones((scale, scale), dtype=np.uint8))


@pytest.mark.parametrize("color", [False, True])
def test_the_qr_code_decodes_back_to_the_exact_config(state: Path, color: bool) -> None:
    import zxingcpp

    ctx = context(state, dns_ip="10.77.0.53", public_endpoint="vpn.example.org:51820")
    commands.add(ctx, "phone", keep_key=True)
    text = out(ctx)
    assert text.startswith("[Interface]\nPrivateKey = ") and "PresharedKey = " in text
    qr = qr_terminal(text, color=color)
    assert ("\x1b[97;40m" in qr) == color  # explicit colours only for a terminal
    assert max(len(line) for line in re.sub(r"\x1b\[[0-9;]*m", "", qr).splitlines()) <= 80
    # try_invert=False: the printed code must be dark-on-light as drawn, not merely decodable
    found = zxingcpp.read_barcodes(
        _bitmap(qr), formats=zxingcpp.BarcodeFormat.QRCode, try_invert=False
    )
    assert [b.text for b in found] == [text]
    # `peer show --qr` prints the same code for a kept key
    shown = fresh(ctx)
    assert commands.show(shown, "phone", qr=True) == 0
    assert out(shown) == qr_terminal(text, color=False)


# ------------------------------------------------------------------------- commands


def test_add_prints_the_client_file_and_keeps_no_private_key(state: Path) -> None:
    ctx = context(state, listen_addr="127.0.0.1", listen_port=51999)
    assert commands.add(ctx, "laptop") == 0
    text = out(ctx)
    priv = re.search(r"^PrivateKey = (\S+)$", text, re.M)
    assert priv is not None
    rec = store.read_peers(str(state))[0]
    assert rec.private_key is None and rec.preshared_key is not None
    assert public_key(base64.b64decode(priv.group(1))) == rec.public_key
    assert f"PublicKey = {encode_key(public_key(SERVER))}" in text
    assert f"PresharedKey = {encode_key(rec.preshared_key)}" in text
    assert "Endpoint = 127.0.0.1:51999" in text and "Address = 10.77.0.2/32" in text
    assert "shown once" in err(ctx) and "not applied live" in err(ctx)
    assert priv.group(1) not in (state / store.PEERS_FILE).read_text()
    # show prints the file again with a placeholder where the key goes; --qr refuses
    shown = fresh(ctx)
    assert commands.show(shown, "laptop") == 0
    assert "# PrivateKey = <the private key whose public key is" in out(shown)
    with pytest.raises(PeerError, match="was not kept") as info:
        commands.show(fresh(ctx), "laptop", qr=True)
    assert info.value.exit_code == 1


def test_add_output_file_no_psk_and_refusals(state: Path, tmp_path: Path) -> None:
    ctx = context(state)
    dest = tmp_path / "phone.conf"
    assert commands.add(ctx, "phone", output=str(dest), psk=False) == 0
    assert out(ctx) == ""  # the file went to --output
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert "PrivateKey = " in dest.read_text() and "PresharedKey" not in dest.read_text()
    assert store.read_peers(str(state))[0].preshared_key is None
    before = (state / store.PEERS_FILE).read_bytes()
    with pytest.raises(PeerError, match="already exists"):  # never overwrite another key
        commands.add(fresh(ctx), "tablet", output=str(dest))
    with pytest.raises(BadName):
        commands.add(fresh(ctx), "-o")
    assert (state / store.PEERS_FILE).read_bytes() == before


def test_remove_and_list(state: Path) -> None:
    ctx = context(
        state,
        peers=(PeerConfig(public_key=key(), allowed_ips=("10.77.0.2/32",)),),
        labels=("WG_PEER_0",),
    )
    commands.add(fresh(ctx), "laptop")
    commands.add(fresh(ctx), "phone")
    listed = fresh(ctx)
    assert commands.list_peers(listed) == 0
    lines = out(listed).splitlines()
    assert lines[0].split() == [
        "NAME",
        "PUBLIC",
        "KEY",
        "ADDRESS",
        "LATEST",
        "HANDSHAKE",
        "TRANSFER",
        "FROM",
    ]
    assert [ln.split()[0] for ln in lines[1:]] == ["-", "laptop", "phone"]
    assert lines[1].split()[-1] == "WG_PEER_0" and "10.77.0.4/32" in lines[3]
    assert "no router answers" in err(listed)
    removed = fresh(ctx)
    assert commands.remove(removed, "LAPTOP") == 0  # names match regardless of case
    assert "removed peer 'laptop'" in err(removed)
    assert "keeps serving it until its next reload" in err(removed)  # not live: said plainly
    with pytest.raises(PeerError, match=r"no peer named 'laptop' .*stored peers: phone\)"):
        commands.remove(fresh(ctx), "laptop")
    as_json = fresh(ctx)
    commands.list_peers(as_json, as_json=True)
    rows = json.loads(out(as_json))
    assert [(r["name"], r["address"], r["latest_handshake"]) for r in rows] == [
        ("-", "10.77.0.2/32", None),
        ("phone", "10.77.0.4/32", None),
    ]


def test_cli_peer_commands_exit_codes(
    state: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("WGSLIRP_STATE_DIR", str(state))
    monkeypatch.setenv("WG_INTERFACE_NAME", "wgslirp-nx0")  # no router serves this name
    assert cli.main(["peer", "add", "bad name"]) == 2
    assert "wgslirp: peer add: 'bad name' contains ' '" in capsys.readouterr().err
    assert cli.main(["peer", "add", "phone"]) == 0
    # zero-config: the router's generated client holds 10.77.0.2, so the first added is .3
    assert "Address = 10.77.0.3/32" in capsys.readouterr().out
    assert cli.main(["peer", "remove", "tablet"]) == 2
    assert cli.main(["peer", "list"]) == 0
    listing = capsys.readouterr().out
    assert "zero-config client" in listing and "phone" in listing
    assert cli.main(["peer", "remove", "phone"]) == 0


# ------------------------------------------------- which socket the commands use


class LiveRouter:
    """A real UapiServer (the router's code) on a loop a thread turns: what `peer`
    commands talk to, without the rest of a router."""

    def __init__(self, path_dir: Path, *, state_dir: Path | None = None) -> None:
        from wgslirp.runtime.loop import Loop
        from wgslirp.runtime.uapi_server import UapiServer
        from wgslirp.wireguard.device import Device

        self.device = Device(SERVER)
        self.loop = Loop()
        if state_dir is not None:
            self.servers = UapiServer.start_all(
                "wgt0", str(state_dir), self.device, self.loop, listen_port=1, directory=path_dir
            )
        else:
            server = UapiServer.start(
                "wgt0", self.device, self.loop, listen_port=1, directory=path_dir
            )
            assert server is not None
            self.servers = [server]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._turn, daemon=True)

    def _turn(self) -> None:
        while not self._done.is_set():
            self.loop.run_once(block=False)
            time.sleep(0.002)

    def __enter__(self) -> LiveRouter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)
        for s in self.servers:
            s.close()


def stale_socket(path: Path) -> None:
    """What a SIGKILLed router leaves: a socket file nobody listens on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


def test_socket_candidates_state_directory_first(state: Path, tmp_path: Path) -> None:
    ctx = context(state, socket_dir=tmp_path / "run", interface_name="wgx9")
    assert ctx.sockets == [state / "wg.sock", tmp_path / "run" / "wgx9.sock"]


def test_commands_reach_the_router_in_its_state_directory(state: Path, tmp_path: Path) -> None:
    """An unprivileged router: nothing in the standard directory but a stale file; add,
    list and remove all go through the state directory's socket and take effect."""
    run_dir = tmp_path / "run"
    stale_socket(run_dir / "wgslirp0.sock")
    blocked = tmp_path / "file"
    blocked.write_text("")
    with LiveRouter(blocked, state_dir=state) as r:
        assert [s.path for s in r.servers] == [state / "wg.sock"]
        ctx = context(state, socket_dir=run_dir)
        assert commands.add(ctx, "phone") == 0
        assert f"added to the running router (wgslirp0, through {state / 'wg.sock'})" in err(ctx)
        rec = store.read_peers(str(state))[0]
        assert [p.public_key for p in r.device.peers.values()] == [rec.public_key]
        listed = fresh(ctx)
        commands.list_peers(listed, as_json=True)
        assert json.loads(out(listed))[0]["rx_bytes"] == 0  # live figures, read from it
        removed = fresh(ctx)
        assert commands.remove(removed, "phone") == 0
        assert "removed from (its flows closed) the running router" in err(removed)
        assert not r.device.peers


def test_a_stale_state_socket_falls_back_to_the_standard_one(state: Path, tmp_path: Path) -> None:
    stale_socket(state / "wg.sock")  # an older router's run, or one that crashed
    with LiveRouter(tmp_path / "run") as r:
        ctx = context(state, socket_dir=tmp_path / "run", interface_name="wgt0")
        assert commands.add(ctx, "phone") == 0
        assert f"through {tmp_path / 'run' / 'wgt0.sock'}" in err(ctx)
        assert len(r.device.peers) == 1


def test_no_router_anywhere_names_every_place_tried(state: Path, tmp_path: Path) -> None:
    stale_socket(state / "wg.sock")
    ctx = context(state, socket_dir=tmp_path / "run")
    assert commands.add(ctx, "phone") == 0  # recorded; applied at the next start or reload
    said = err(ctx)
    assert f"nobody listens on {state / 'wg.sock'}" in said
    assert f"nothing at {tmp_path / 'run' / 'wgslirp0.sock'}" in said
    assert "not applied live" in said and "kill -HUP" in said


# ------------------------------------------- root working on the service's directory

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
SERVICE = 65534  # the directory's owner, standing for the DynamicUser / container user


@needs_root
def test_root_keeps_the_service_users_files_its_own(state: Path) -> None:
    """`sudo wgslirp peer add` on the service's directory: what root writes there ends up
    the service user's (or the router could not read it at its next reload), and what
    the service user owns is accepted; any third owner is still refused."""
    os.chown(state, SERVICE, SERVICE)
    ctx = context(state)
    assert commands.add(ctx, "phone") == 0
    for name in (store.PEERS_FILE, store.LOCK_FILE):
        st = (state / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (SERVICE, SERVICE, 0o600)
    assert [p.name for p in store.read_peers(str(state))] == ["phone"]
    key = load_or_create_key(str(state), "server.key")  # zero-config keys alike
    assert (state / "server.key").stat().st_uid == SERVICE
    assert load_or_create_key(str(state), "server.key") == key
    os.chown(state / store.PEERS_FILE, 12345, 12345)
    with pytest.raises(ConfigError, match=r"owned by another user \(uid 12345\)"):
        store.read_peers(str(state))


@needs_root
def test_root_owned_directory_and_plain_users_change_nothing(state: Path) -> None:
    assert commands.add(context(state), "phone") == 0  # root in root's own directory
    assert (state / store.PEERS_FILE).stat().st_uid == 0


@needs_root
def test_a_link_planted_as_the_temporary_file_is_not_written_through(
    state: Path, tmp_path: Path
) -> None:
    """The directory's owner cannot make root truncate or chown another file by linking
    it where root writes."""
    os.chown(state, SERVICE, SERVICE)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.link(victim, state / (store.PEERS_FILE + store.TMP_SUFFIX))
    with store.locked(str(state)):
        store.write_peers(str(state), [stored("phone", "10.77.0.3/32")])
    assert victim.read_text() == "precious" and victim.stat().st_uid == 0
    assert (state / store.PEERS_FILE).stat().st_uid == SERVICE
