"""UAPI text protocol (wg(8) <-> device) and the non-blocking socket that serves it."""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import time
from pathlib import Path

import pytest

from wgslirp.keys import generate_private_key, public_key
from wgslirp.runtime import uapi_server
from wgslirp.runtime.loop import Loop
from wgslirp.runtime.uapi_server import UapiServer
from wgslirp.wireguard import uapi
from wgslirp.wireguard.device import Device
from wgslirp_testkit.clock import FakeClock
from wgslirp_testkit.wgpair import A_ADDR, Pair

PORT = 51820


def new_device() -> Device:
    return Device(generate_private_key(), wall=lambda: 1_700_000_123.25)


def run(dev: Device, request: str, now: float = 10.0) -> uapi.Response:
    return uapi.handle(request.encode(), dev, listen_port=PORT, now=now)


def do_set(dev: Device, *lines: str) -> int:
    resp = run(dev, "set=1\n" + "".join(line + "\n" for line in lines) + "\n")
    assert resp.data.startswith(b"errno=") and resp.data.endswith(b"\n\n")
    return int(resp.data[6:-2])


def parse_get(dev: Device) -> tuple[dict[str, str], list[dict[str, list[str]]]]:
    """The get answer as (device keys, [peer keys -> values]) the way wg(8) reads it."""
    resp = run(dev, "get=1\n\n")
    text = resp.data.decode()
    assert text.endswith("errno=0\n\n")
    top: dict[str, str] = {}
    peers: list[dict[str, list[str]]] = []
    for line in text[: -len("errno=0\n\n")].splitlines():
        k, v = line.split("=", 1)
        if k == "public_key":
            peers.append({})
        if peers:
            peers[-1].setdefault(k, []).append(v)
        else:
            top[k] = v
    return top, peers


def hexkey() -> str:
    return public_key(generate_private_key()).hex()


# ------------------------------------------------------------------ framing


def test_split_request_frames_on_the_empty_line() -> None:
    buf = bytearray(b"get=1\n\nset=1\npublic_key=ab")
    assert uapi.split_request(buf) == b"get=1\n\n"
    assert uapi.split_request(buf) is None
    seen = len(buf)
    buf += b"\n\n"  # the end marker straddles what was already searched
    assert uapi.split_request(buf, seen) == b"set=1\npublic_key=ab\n\n"
    assert buf == b""


def test_unknown_operation_is_refused_and_closes() -> None:
    dev = new_device()
    for req in ("put=1\n\n", "\n\n", "get=2\n\n"):
        resp = run(dev, req)
        assert resp.data == uapi.errno_line(errno.EINVAL) and resp.close
    resp = uapi.handle(b"get=1\n\xff\n\n", dev, listen_port=PORT, now=0)
    assert resp.close
    resp = run(dev, "get=1\nfoo=1\n\n")  # a get carries no body
    assert resp.data == uapi.errno_line(errno.EINVAL) and not resp.close


# ---------------------------------------------------------------------- get


def test_get_lists_device_and_peers() -> None:
    dev = new_device()
    psk = os.urandom(32)
    k1, k2 = public_key(generate_private_key()), public_key(generate_private_key())
    p1 = dev.add_peer(
        k1,
        preshared_key=psk,
        allowed_ips=["10.77.0.2/32", "10.9.0.0/16"],
        endpoint=("127.0.0.1", 40000),
        keepalive=25,
    )
    dev.add_peer(k2)
    p1.last_handshake_wall = 1_700_000_000.5
    p1.rx_bytes, p1.tx_bytes = 1234, 5678
    top, peers = parse_get(dev)
    assert top == {"private_key": dev.identity.private_bytes.hex(), "listen_port": str(PORT)}
    assert [p["public_key"] for p in peers] == [[k1.hex()], [k2.hex()]]
    a, b = peers
    assert a["preshared_key"] == [psk.hex()]
    assert a["protocol_version"] == ["1"]
    assert a["endpoint"] == ["127.0.0.1:40000"]
    assert a["last_handshake_time_sec"] == ["1700000000"]
    assert a["last_handshake_time_nsec"] == ["500000000"]
    assert a["rx_bytes"] == ["1234"] and a["tx_bytes"] == ["5678"]
    assert a["persistent_keepalive_interval"] == ["25"]
    assert a["allowed_ip"] == ["10.77.0.2/32", "10.9.0.0/16"]
    # a peer never seen: zero key means "no psk" to wg(8); no endpoint line; never shook hands
    assert b["preshared_key"] == ["00" * 32]
    assert "endpoint" not in b and "allowed_ip" not in b
    assert b["last_handshake_time_sec"] == ["0"] and b["last_handshake_time_nsec"] == ["0"]


def test_get_prints_ipv6_endpoints_as_wireguard_go_does() -> None:
    dev = new_device()
    dev.add_peer(public_key(generate_private_key()), endpoint=("2001:db8::1", 51820))
    dev.add_peer(public_key(generate_private_key()), endpoint=("fe80::1%eth0", 7))
    _, peers = parse_get(dev)
    assert [p["endpoint"] for p in peers] == [["[2001:db8::1]:51820"], ["[fe80::1%eth0]:7"]]


@pytest.mark.parametrize(
    ("line", "stored"),
    [
        ("endpoint=[2001:db8::1]:51820", ("2001:db8::1", 51820)),
        ("endpoint=[2001:DB8:0:0::1]:51820", ("2001:db8::1", 51820)),
        ("endpoint=[::ffff:127.0.0.1]:51820", ("127.0.0.1", 51820)),  # the IPv4 it names
        ("endpoint=[fe80::1%eth0]:51820", ("fe80::1%eth0", 51820)),
    ],
)
def test_set_takes_ipv6_endpoints_as_wg_writes_them(line: str, stored: tuple[str, int]) -> None:
    dev = new_device()
    key = hexkey()
    assert do_set(dev, f"public_key={key}", line) == 0
    assert dev.peers[bytes.fromhex(key)].endpoint == stored
    _, peers = parse_get(dev)
    host, port = stored
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert peers[0]["endpoint"] == [shown]


# ---------------------------------------------------------------------- set


def test_set_adds_updates_and_removes_peers_and_allowed_ips() -> None:
    dev = new_device()
    key = hexkey()
    psk = os.urandom(32).hex()
    assert (
        do_set(
            dev,
            f"public_key={key}",
            f"preshared_key={psk}",
            "endpoint=127.0.0.1:5555",
            "persistent_keepalive_interval=15",
            "replace_allowed_ips=true",
            "allowed_ip=10.77.0.3/32",
            "allowed_ip=10.8.1.7/24",
            "protocol_version=1",
        )
        == 0
    )
    peer = dev.peers[bytes.fromhex(key)]
    assert peer.handshake.psk.hex() == psk
    assert peer.endpoint == ("127.0.0.1", 5555) and peer.keepalive == 15
    assert peer.t_persistent == 10.0  # a new keepalive peer connects right away
    assert sorted(dev.allowed.prefixes_of(peer)) == ["10.77.0.3/32", "10.8.1.0/24"]
    assert dev.route(0x0A4D0003) is peer
    # update in place: same Peer object (sessions and index survive), allowed IPs replaced
    index = peer.index
    assert (
        do_set(
            dev,
            f"public_key={key}",
            "persistent_keepalive_interval=0",
            "replace_allowed_ips=true",
            "allowed_ip=10.77.0.4/32",
        )
        == 0
    )
    assert dev.peers[bytes.fromhex(key)] is peer and peer.index == index
    assert peer.keepalive == 0 and peer.t_persistent is None
    assert dev.allowed.prefixes_of(peer) == ["10.77.0.4/32"]
    assert dev.route(0x0A4D0003) is None
    # newer wg(8) removes a single prefix with a leading '-'
    assert (
        do_set(dev, f"public_key={key}", "allowed_ip=10.0.0.0/8", "allowed_ip=-10.77.0.4/32") == 0
    )
    assert dev.allowed.prefixes_of(peer) == ["10.0.0.0/8"]
    assert do_set(dev, f"public_key={key}", "remove=true") == 0
    assert not dev.peers and index not in dev.by_index
    assert dev.route(0x0A000001) is None


def test_allowed_ip_moves_between_peers_and_minus_only_touches_own() -> None:
    dev = new_device()
    k1, k2 = hexkey(), hexkey()
    assert (
        do_set(
            dev,
            f"public_key={k1}",
            "allowed_ip=10.77.0.0/24",
            f"public_key={k2}",
            "allowed_ip=10.77.0.0/24",
            "allowed_ip=-10.1.0.0/16",
        )
        == 0
    )
    p1, p2 = dev.peers[bytes.fromhex(k1)], dev.peers[bytes.fromhex(k2)]
    assert dev.allowed.prefixes_of(p1) == [] and dev.allowed.prefixes_of(p2) == ["10.77.0.0/24"]
    assert do_set(dev, f"public_key={k1}", "allowed_ip=-10.77.0.0/24") == 0
    assert dev.allowed.prefixes_of(p2) == ["10.77.0.0/24"]  # not p1's to remove


def test_update_only_replace_peers_and_own_key() -> None:
    dev = new_device()
    old, new = hexkey(), hexkey()
    assert do_set(dev, f"public_key={old}", "allowed_ip=10.77.0.2/32") == 0
    assert do_set(dev, f"public_key={new}", "update_only=true", "allowed_ip=10.1.0.0/16") == 0
    assert bytes.fromhex(new) not in dev.peers  # update_only never creates
    assert do_set(dev, f"public_key={old}", "update_only=true", "endpoint=127.0.0.1:9") == 0
    assert dev.peers[bytes.fromhex(old)].endpoint == ("127.0.0.1", 9)
    # the device's own key as a peer section is ignored, as wireguard-go does
    assert do_set(dev, f"public_key={dev.public_key.hex()}", "allowed_ip=10.2.0.0/16") == 0
    assert dev.public_key not in dev.peers
    assert do_set(dev, "replace_peers=true", f"public_key={new}", "allowed_ip=10.3.0.0/16") == 0
    assert list(dev.peers) == [bytes.fromhex(new)]
    assert dev.route(0x0A4D0002) is None and dev.route(0x0A030001) is not None


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("public_key=zz", errno.EINVAL),
        ("nonsense", errno.EPROTO),
        ("fwmark=1", errno.EOPNOTSUPP),
        ("listen_port=1", errno.EOPNOTSUPP),
        ("listen_port=-1", errno.EINVAL),
        ("private_key=" + "00" * 32, errno.EINVAL),
        ("replace_peers=false", errno.EINVAL),
        ("tx_bytes=1", errno.EINVAL),
        ("PEER endpoint=::1:51820", errno.EINVAL),  # IPv6 needs its brackets
        ("PEER endpoint=[::1]", errno.EINVAL),
        ("PEER endpoint=[::1]:0", errno.EINVAL),
        ("PEER endpoint=[127.0.0.1]:51820", errno.EINVAL),
        ("PEER endpoint=[2001:db8::1%eth0]:51820", errno.EINVAL),  # zone off link-local
        ("PEER endpoint=example.com:51820", errno.EINVAL),
        ("PEER endpoint=127.0.0.1", errno.EINVAL),
        ("PEER endpoint=127.0.0.1:0", errno.EINVAL),
        ("PEER endpoint=127.0.0.1:70000", errno.EINVAL),
        ("PEER allowed_ip=::1/128", errno.EINVAL),  # inside ::/96
        ("PEER allowed_ip=::10.0.0.1/128", errno.EINVAL),
        ("PEER allowed_ip=fd00::/129", errno.EINVAL),
        ("PEER allowed_ip=10.0.0.0/33", errno.EINVAL),
        ("PEER allowed_ip=10.0.0.0", errno.EINVAL),
        ("PEER allowed_ip=10.0.0.0/255.0.0.0", errno.EINVAL),
        ("PEER persistent_keepalive_interval=+5", errno.EINVAL),
        ("PEER persistent_keepalive_interval=65536", errno.EINVAL),
        ("PEER persistent_keepalive_interval=" + "9" * 5000, errno.EINVAL),
        ("PEER protocol_version=2", errno.EINVAL),
        ("PEER remove=1", errno.EINVAL),
        ("PEER listen_port=51820", errno.EINVAL),  # a device key inside a peer section
    ],
)
def test_a_bad_line_is_refused_and_changes_nothing(line: str, code: int) -> None:
    dev = new_device()
    existing = hexkey()
    assert do_set(dev, f"public_key={existing}", "allowed_ip=10.77.0.2/32") == 0
    before = parse_get(dev)
    fresh = hexkey()
    # good lines before the bad one must not be applied either
    lines = ["replace_peers=true", f"public_key={fresh}", "allowed_ip=10.5.0.0/16"]
    if line.startswith("PEER "):
        lines.append(line[5:])
    else:
        lines.insert(0, line)
    assert do_set(dev, *lines) == -code  # negated on the wire, as wg(8) expects
    assert parse_get(dev) == before


def test_listen_port_and_fwmark_that_change_nothing_are_accepted() -> None:
    dev = new_device()
    assert do_set(dev, f"listen_port={PORT}", "fwmark=0", "fwmark=") == 0


def test_showconf_setconf_round_trip() -> None:
    """What wg showconf prints, wg setconf feeds back: replaying a get as a set onto a fresh
    device with the same key reproduces it (counters aside)."""
    src = new_device()
    assert (
        do_set(
            src,
            f"public_key={hexkey()}",
            f"preshared_key={os.urandom(32).hex()}",
            "endpoint=127.0.0.2:7000",
            "persistent_keepalive_interval=5",
            "allowed_ip=10.77.0.2/32",
            "allowed_ip=192.168.0.0/16",
            f"public_key={hexkey()}",
            "allowed_ip=10.77.0.3/32",
        )
        == 0
    )
    top, peers = parse_get(src)
    lines = [
        f"private_key={top['private_key']}",
        f"listen_port={top['listen_port']}",
        "replace_peers=true",
    ]
    for p in peers:
        lines.append(f"public_key={p['public_key'][0]}")
        for k in ("preshared_key", "endpoint", "persistent_keepalive_interval"):
            lines += [f"{k}={v}" for v in p.get(k, [])]
        lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip={v}" for v in p.get("allowed_ip", [])]
    dst = new_device()
    assert do_set(dst, *lines) == 0
    assert dst.public_key == src.public_key
    assert parse_get(dst) == (top, peers)


def test_removed_peer_is_cut_off_and_new_peer_connects() -> None:
    p = Pair()
    p.handshake()
    assert p.send_a_to_b() is not None
    # b (the "router") removes a through the UAPI: a's next packet finds no session
    assert do_set(p.b, f"public_key={p.pb.public_key.hex()}", "remove=true") == 0
    msg = p.send_a_to_b()
    assert msg is not None
    before = p.b.stats.unknown_index
    assert p.b.decrypt(msg, A_ADDR, p.now, bytearray(2000)) is None
    assert p.b.stats.unknown_index == before + 1
    # a new handshake from a is refused too: b no longer knows its key
    p.pa.last_initiation_sent = float("-inf")
    p.a.initiate(p.pa, p.now)
    p.deliver()
    assert p.b.stats.unknown_peer == 1
    # re-added live, a can connect again at once
    assert do_set(p.b, f"public_key={p.pb.public_key.hex()}", "allowed_ip=10.0.0.1/32") == 0
    p.clock.advance(6)
    p.a.initiate(p.pa, p.now)
    p.deliver()
    assert p.b.peers[p.pb.public_key].current is not None


def test_private_key_change_drops_sessions_and_handshakes_with_the_new_key() -> None:
    p = Pair()
    p.handshake()
    new_priv = generate_private_key()
    a_key = p.pb.public_key
    assert do_set(p.b, f"private_key={new_priv.hex()}") == 0
    assert p.b.public_key == public_key(new_priv)
    assert p.b.peers[a_key].current is None  # the old sessions are gone
    # a learns the router's new key the way an operator would tell it: a new peer entry
    assert (
        do_set(
            p.a,
            f"public_key={p.pa.public_key.hex()}",
            "remove=true",
            f"public_key={p.b.public_key.hex()}",
            "endpoint=127.0.0.1:40002",
            "allowed_ip=10.0.0.2/32",
        )
        == 0
    )
    pa = p.a.peers[p.b.public_key]
    p.clock.advance(6)
    assert p.a.initiate(pa, p.now)
    p.deliver()
    assert pa.current is not None and p.b.peers[a_key].current is not None


def test_private_key_equal_to_a_peer_removes_that_peer() -> None:
    dev = new_device()
    priv = generate_private_key()
    assert do_set(dev, f"public_key={public_key(priv).hex()}", "allowed_ip=10.0.0.1/32") == 0
    resp = run(dev, f"set=1\nprivate_key={priv.hex()}\n\n")
    assert resp.data == b"errno=0\n\n" and not dev.peers
    assert any("new device public key" in c for c in resp.changes)


# ------------------------------------------------------------------- server


class Served:
    """A UapiServer on a real Loop in a temp directory, driven turn by turn."""

    def __init__(self, directory: Path, dev: Device | None = None) -> None:
        self.loop = Loop()
        self.dev = dev or new_device()
        server = UapiServer.start(
            "wgt0", self.dev, self.loop, listen_port=PORT, directory=directory
        )
        assert server is not None
        self.server = server

    def turn(self, n: int = 5) -> None:
        for _ in range(n):
            self.loop.run_once(block=False)

    def ask(self, request: bytes) -> bytes:
        """One request per connection, read until the answer's errno line, as wg(8) does."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(self.server.path))
            c.sendall(request)
            out = self.read_all(c, until_answer=True)
        self.turn(2)
        return out

    def read_all(self, c: socket.socket, limit: float = 2.0, until_answer: bool = False) -> bytes:
        """Read until EOF (or a complete answer), turning the loop in between."""
        c.setblocking(False)
        out = b""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if until_answer and re.search(rb"(^|\n)errno=-?\d+\n\n$", out):
                return out
            self.turn(1)
            try:
                chunk = c.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                return out
            out += chunk
        raise AssertionError(f"no complete answer within {limit}s: {out[-200:]!r}")


def test_server_answers_get_and_set(tmp_path: Path) -> None:
    s = Served(tmp_path)
    path = tmp_path / "wgt0.sock"
    assert path.stat().st_mode & 0o777 == 0o600
    key = hexkey()
    assert s.ask(f"set=1\npublic_key={key}\nallowed_ip=10.77.0.9/32\n\n".encode()) == b"errno=0\n\n"
    answer = s.ask(b"get=1\n\n")
    assert f"public_key={key}\n".encode() in answer and answer.endswith(b"errno=0\n\n")
    assert not s.server.clients  # wg(8) closes after its answer; the server notices
    s.loop.stopping = True
    s.turn(1)
    assert s.server.closed and not path.exists()


def test_server_pipelined_requests_and_split_writes(tmp_path: Path) -> None:
    s = Served(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(str(s.server.path))
        for piece in (b"ge", b"t=1\n", b"\nget=1\n\nset=1\nlisten_port=1\n\n"):
            c.sendall(piece)
            s.turn(2)
        c.shutdown(socket.SHUT_WR)
        out = s.read_all(c)
    assert out.count(b"private_key=") == 2
    assert out.endswith(b"errno=0\n\nerrno=-%d\n\n" % errno.EOPNOTSUPP)


def test_server_large_answer_to_a_slow_reader(tmp_path: Path) -> None:
    dev = new_device()  # a ~600 KB answer: far more than the socket buffers hold
    for k in range(5):
        peer = dev.add_peer(public_key(generate_private_key()))
        for i in range(4000):
            dev.allowed.insert_prefix((10 << 24) | (k << 16) | (i << 2), 30, peer)
    s = Served(tmp_path, dev)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.connect(str(s.server.path))
        c.sendall(b"get=1\n\n")
        s.turn(3)  # the loop never blocks on the full socket
        out = s.read_all(c, limit=10, until_answer=True)
    assert out.count(b"allowed_ip=") == 20000 and out.endswith(b"errno=0\n\n")


def test_server_bounds_request_size_and_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uapi_server, "MAX_REQUEST", 1000)
    s = Served(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(str(s.server.path))
        c.sendall(b"set=1\n" + b"allowed_ip=10.0.0.0/8\n" * 100)
        assert s.read_all(c) == uapi.errno_line(errno.EMSGSIZE)
    # a client that never finishes its request is dropped after CLIENT_TIMEOUT
    clock = FakeClock(100.0)
    s.loop.clock = clock
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(str(s.server.path))
        c.sendall(b"get=1\n")
        s.turn(2)
        assert len(s.server.clients) == 1
        clock.advance(uapi_server.CLIENT_TIMEOUT + 0.1)
        s.turn(2)
        assert not s.server.clients
        assert s.read_all(c) == b""


def test_server_caps_connections(tmp_path: Path) -> None:
    s = Served(tmp_path)
    socks = []
    try:
        for _ in range(uapi_server.MAX_CLIENTS + 3):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(str(s.server.path))
            socks.append(c)
            s.turn(1)
        assert len(s.server.clients) == uapi_server.MAX_CLIENTS
    finally:
        for c in socks:
            c.close()
    s.turn(3)
    assert not s.server.clients


def test_stale_socket_is_replaced_live_one_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "wgt0.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a SIGKILLed router leaves
    s = Served(tmp_path)
    assert s.ask(b"get=1\n\n").endswith(b"errno=0\n\n")
    # a second router with the same interface name must not steal the live socket
    assert (
        UapiServer.start("wgt0", new_device(), Loop(), listen_port=PORT, directory=tmp_path) is None
    )
    assert s.ask(b"get=1\n\n").endswith(b"errno=0\n\n")
    s.server.close()
    assert not path.exists()


def test_close_leaves_a_successors_socket(tmp_path: Path) -> None:
    s = Served(tmp_path)
    s.server.path.unlink()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(s.server.path))
    try:
        s.server.close()
        assert s.server.path.exists()
    finally:
        other.close()


def test_non_socket_file_and_bad_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "wgt0.sock").write_text("not a socket")
    assert (
        UapiServer.start("wgt0", new_device(), Loop(), listen_port=PORT, directory=tmp_path) is None
    )
    assert (tmp_path / "wgt0.sock").read_text() == "not a socket"
    for name in ("", "..", "a/b"):
        assert (
            UapiServer.start(name, new_device(), Loop(), listen_port=PORT, directory=tmp_path)
            is None
        )


# ------------------------------------------------- the state directory's socket


def answers(path: Path, loop: Loop) -> bool:
    """Does a server at `path` answer a `get`? (the loop turned by hand, as in Served)"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(str(path))
        c.sendall(b"get=1\n\n")
        c.setblocking(False)
        out = b""
        deadline = time.monotonic() + 2
        while not out.endswith(b"errno=0\n\n") and time.monotonic() < deadline:
            loop.run_once(block=False)
            try:
                out += c.recv(65536)
            except BlockingIOError:
                continue
    return out.endswith(b"errno=0\n\n")


def test_state_dir_socket_when_the_standard_directory_is_unusable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What an unprivileged router gets: no /var/run/wireguard, one socket in its state
    directory (created 0700 if missing), 0600 and its own, said in the log, gone at exit."""
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")  # the standard directory cannot be created under a file
    state = tmp_path / "state"
    loop = Loop()
    caplog.set_level("INFO", logger="wgslirp.uapi")
    servers = UapiServer.start_all(
        "wgt0", str(state), new_device(), loop, listen_port=PORT, directory=blocked / "wg"
    )
    assert [s.path for s in servers] == [state / "wg.sock"]
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    st = (state / "wg.sock").stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert f"wg(8) interface wgt0 at {state / 'wg.sock'}" in caplog.text
    assert f"{blocked / 'wg' / 'wgt0.sock'}" in caplog.text  # why the standard one is missing
    assert answers(state / "wg.sock", loop)
    loop.stopping = True
    loop.run_once(block=False)
    assert servers[0].closed and not (state / "wg.sock").exists()


def test_both_sockets_serve_one_device(tmp_path: Path) -> None:
    loop = Loop()
    dev = new_device()
    servers = UapiServer.start_all(
        "wgt0", str(tmp_path / "state"), dev, loop, listen_port=PORT, directory=tmp_path / "run"
    )
    assert [s.path for s in servers] == [tmp_path / "run" / "wgt0.sock", tmp_path / "state/wg.sock"]
    assert all(s.device is dev for s in servers)
    assert all(answers(s.path, loop) for s in servers)
    for s in servers:
        s.close()
    assert not any(s.path.exists() for s in servers)


def test_state_dir_socket_stale_replaced_live_kept(tmp_path: Path) -> None:
    """A crashed router's socket is replaced after a connect test; a live router's socket
    (two routers given one state directory) is not taken over."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(state / "wg.sock"))
    dead.close()  # left behind, nobody listening
    first = UapiServer.start_all(
        "wgt0", str(state), new_device(), Loop(), listen_port=PORT, directory=tmp_path / "a"
    )
    assert [s.path for s in first] == [tmp_path / "a/wgt0.sock", state / "wg.sock"]
    ident = (state / "wg.sock").stat().st_ino
    second = UapiServer.start_all(
        "wgt1", str(state), new_device(), Loop(), listen_port=PORT, directory=tmp_path / "b"
    )
    assert [s.path for s in second] == [tmp_path / "b/wgt1.sock"]
    assert (state / "wg.sock").stat().st_ino == ident
    assert answers(state / "wg.sock", first[0].loop)
    for s in first + second:
        s.close()


def test_state_dir_socket_refused_where_others_may_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "shared"
    state.mkdir()
    state.chmod(0o777)  # anyone could put their own wg.sock here
    servers = UapiServer.start_all(
        "wgt0", str(state), new_device(), Loop(), listen_port=PORT, directory=tmp_path / "run"
    )
    assert [s.path for s in servers] == [tmp_path / "run/wgt0.sock"]
    assert not (state / "wg.sock").exists()
    assert "writable by group or others" in caplog.text
    servers[0].close()


def test_state_dir_path_too_long_for_af_unix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """AF_UNIX paths stop at 107 bytes: the router says so and forwards anyway."""
    state = tmp_path / ("d" * 120)
    servers = UapiServer.start_all(
        "wgt0", str(state), new_device(), Loop(), listen_port=PORT, directory=tmp_path / "run"
    )
    assert [s.path for s in servers] == [tmp_path / "run/wgt0.sock"]
    assert f"wg(8) interface unavailable: {state / 'wg.sock'}" in caplog.text
    servers[0].close()


def test_ipv6_allowed_ips_are_set_shown_and_routed() -> None:
    import ipaddress

    dev = new_device()
    key = hexkey()
    lines = ("allowed_ip=10.77.0.3/32", "allowed_ip=FD77:0::3/128", "allowed_ip=fd99::7/48")
    assert do_set(dev, f"public_key={key}", *lines) == 0
    peer = dev.peers[bytes.fromhex(key)]
    assert sorted(dev.allowed.prefixes_of(peer)) == ["10.77.0.3/32", "fd77::3/128", "fd99::/48"]
    assert dev.route6(int(ipaddress.IPv6Address("fd99::1234"))) is peer
    (shown,) = parse_get(dev)[1]
    assert sorted(shown["allowed_ip"]) == ["10.77.0.3/32", "fd77::3/128", "fd99::/48"]
    assert do_set(dev, f"public_key={key}", "allowed_ip=-fd99::/48") == 0
    assert dev.route6(int(ipaddress.IPv6Address("fd99::1234"))) is None
