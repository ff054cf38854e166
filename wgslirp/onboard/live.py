"""Talking to a running router through its wg(8) socket, as the stock `wg` tool does.

The UAPI socket (/var/run/wireguard/WG_INTERFACE_NAME.sock) is the router's one door for
run-time peer changes: a `set` there goes through the same peer-set code as `wg set`, so
a peer removed by `wgslirp peer remove` has its sessions dropped and its flows closed
exactly as after `wg set IF peer KEY remove`, and the supervisor keeps the change if
ingress restarts. When no router answers (not running, or running unprivileged, where it
cannot create that directory) the caller says so: the peers file is the durable record
and the router reads it at its next start or reload (SIGHUP).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SOCKET_DIR",
    "LivePeer",
    "RouterRefused",
    "RouterUnreachable",
    "add_peer",
    "get_peers",
    "remove_peer",
    "socket_path",
]

# where wg(8) and every userspace WireGuard look; runtime/uapi_server.py serves it there
SOCKET_DIR = Path("/var/run/wireguard")
TIMEOUT = 5.0
MAX_ANSWER = 64 << 20


class RouterUnreachable(Exception):
    """No router answers on the socket (the message says why)."""


class RouterRefused(Exception):
    """The router answered a `set` with an error (errno=N)."""


@dataclass
class LivePeer:
    public_key: bytes
    last_handshake: float = 0.0  # unix time, 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0
    endpoint: str | None = None
    allowed_ips: list[str] = field(default_factory=list)


def socket_path(interface: str, directory: Path = SOCKET_DIR) -> Path:
    return directory / f"{interface}.sock"


def _exchange(path: Path, request: bytes) -> str:
    """One request, its whole answer (through errno=N and the empty line)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise RouterUnreachable(f"no router serves {path}") from None
        except OSError as e:
            raise RouterUnreachable(f"{path}: {e.strerror or e}") from None
        try:
            sock.sendall(request)
            buf = bytearray()
            while not (buf.endswith(b"\n\n") and b"errno=" in buf):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_ANSWER:
                    raise RouterUnreachable(f"{path}: answer larger than {MAX_ANSWER >> 20} MiB")
        except OSError as e:
            raise RouterUnreachable(f"{path}: {e.strerror or e}") from None
    finally:
        sock.close()
    text = buf.decode("utf-8", "replace")
    if "errno=" not in text:
        raise RouterUnreachable(f"{path}: the answer ended early")
    return text


def _errno_of(text: str) -> int:
    for line in reversed(text.splitlines()):
        if line.startswith("errno="):
            try:
                return int(line[6:])
            except ValueError:
                break
    raise RouterUnreachable("the router's answer has no valid errno line")


def get_peers(path: Path) -> dict[bytes, LivePeer]:
    """The running router's peers, by public key."""
    text = _exchange(path, b"get=1\n\n")
    code = _errno_of(text)
    if code != 0:
        raise RouterRefused(f"get failed with errno {code}")
    peers: dict[bytes, LivePeer] = {}
    cur: LivePeer | None = None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "public_key":
            cur = LivePeer(bytes.fromhex(value))
            peers[cur.public_key] = cur
        elif cur is None:
            continue
        elif key == "last_handshake_time_sec":
            cur.last_handshake += int(value)
        elif key == "last_handshake_time_nsec":
            cur.last_handshake += int(value) / 1e9
        elif key == "rx_bytes":
            cur.rx_bytes = int(value)
        elif key == "tx_bytes":
            cur.tx_bytes = int(value)
        elif key == "endpoint":
            cur.endpoint = value
        elif key == "allowed_ip":
            cur.allowed_ips.append(value)
    return peers


def _set(path: Path, lines: list[str]) -> None:
    text = _exchange(path, ("set=1\n" + "".join(f"{ln}\n" for ln in lines) + "\n").encode())
    code = _errno_of(text)
    if code != 0:
        raise RouterRefused(f"the router refused the change (errno {code}; its log says why)")


def add_peer(path: Path, public_key: bytes, preshared_key: bytes | None, address: str) -> None:
    """Add (or update) a peer with exactly this one allowed IP."""
    lines = [f"public_key={public_key.hex()}"]
    if preshared_key is not None:
        lines.append(f"preshared_key={preshared_key.hex()}")
    lines += ["replace_allowed_ips=true", f"allowed_ip={address}"]
    _set(path, lines)


def remove_peer(path: Path, public_key: bytes) -> None:
    """What `wg set IF peer KEY remove` asks: sessions dropped, flows closed."""
    _set(path, [f"public_key={public_key.hex()}", "remove=true"])
