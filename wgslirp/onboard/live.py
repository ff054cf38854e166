"""Talking to a running router through its wg(8) socket, as the stock `wg` tool does.

The UAPI socket is the router's one door for run-time peer changes: a `set` there goes
through the same peer-set code as `wg set`, so a peer removed by `wgslirp peer remove` has
its sessions dropped and its flows closed exactly as after `wg set IF peer KEY remove`,
and the supervisor keeps the change if ingress restarts. A router serves it in its state
directory (`wg.sock`, always) and at /var/run/wireguard/WG_INTERFACE_NAME.sock (where it
may); the commands try them in that order (wgslirp/uapi_paths.py says why) and use the
first that answers. When none does (no router running) the caller says so: the peers
file is the durable record and the router reads it at its next start or reload (SIGHUP).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wgslirp import uapi_paths

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

SOCKET_DIR = uapi_paths.STANDARD_DIR
TIMEOUT = 5.0
MAX_ANSWER = 64 << 20

Paths = Sequence[Path]


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
    return uapi_paths.standard_path(interface, directory)


def _connect(paths: Paths) -> tuple[socket.socket, Path]:
    """The first of `paths` a router answers on. A missing file or a refused connection
    (a socket left by a router that died) moves on to the next."""
    reasons: list[str] = []
    for path in paths:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            reasons.append(f"nothing at {path}")
        except ConnectionRefusedError:
            reasons.append(f"nobody listens on {path}")
        except OSError as e:
            reasons.append(f"{path}: {e.strerror or e}")
        else:
            return sock, path
        sock.close()
    raise RouterUnreachable("no router answers: " + "; ".join(reasons))


def _exchange(paths: Paths, request: bytes) -> tuple[str, Path]:
    """One request, its whole answer (through errno=N and the empty line), and where."""
    sock, path = _connect(paths)
    try:
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
    return text, path


def _errno_of(text: str) -> int:
    for line in reversed(text.splitlines()):
        if line.startswith("errno="):
            try:
                return int(line[6:])
            except ValueError:
                break
    raise RouterUnreachable("the router's answer has no valid errno line")


def get_peers(paths: Paths) -> dict[bytes, LivePeer]:
    """The running router's peers, by public key."""
    text, _ = _exchange(paths, b"get=1\n\n")
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


def _set(paths: Paths, lines: list[str]) -> Path:
    request = ("set=1\n" + "".join(f"{ln}\n" for ln in lines) + "\n").encode()
    text, path = _exchange(paths, request)
    code = _errno_of(text)
    if code != 0:
        raise RouterRefused(f"the router refused the change (errno {code}; its log says why)")
    return path


def add_peer(paths: Paths, public_key: bytes, preshared_key: bytes | None, address: str) -> Path:
    """Add (or update) a peer with exactly this one allowed IP; where the router answered."""
    lines = [f"public_key={public_key.hex()}"]
    if preshared_key is not None:
        lines.append(f"preshared_key={preshared_key.hex()}")
    lines += ["replace_allowed_ips=true", f"allowed_ip={address}"]
    return _set(paths, lines)


def remove_peer(paths: Paths, public_key: bytes) -> Path:
    """What `wg set IF peer KEY remove` asks: sessions dropped, flows closed."""
    return _set(paths, [f"public_key={public_key.hex()}", "remove=true"])
