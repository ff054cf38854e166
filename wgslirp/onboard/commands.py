"""`wgslirp peer add|list|remove|show`: each reads what it needs, changes the peers file
under its lock, then tells a running router. Output: what the user asked for (a client
file, a QR code, the table) on stdout, everything said about it on stderr, so
`wgslirp peer add laptop > laptop.conf` leaves a clean file.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import msgspec

from wgslirp import uapi_paths
from wgslirp.config import Config
from wgslirp.identity import EMBEDDED_CLIENT_ADDRESS, client_config_text, ensure_state_dir
from wgslirp.keys import encode_key, generate_private_key, public_key
from wgslirp.onboard import live
from wgslirp.onboard.errors import PeerError
from wgslirp.onboard.merge import labels_for, merge_stored, taken_addresses
from wgslirp.onboard.names import name_key, validate_name
from wgslirp.onboard.pool import allocate
from wgslirp.onboard.qr import qr_terminal
from wgslirp.onboard.store import StoredPeer, locked, peers_path, read_peers, write_peers

__all__ = ["Context", "add", "list_peers", "remove", "show"]


@dataclass
class Context:
    """What every command needs: the configuration as the router would load it before the
    peers file joins (`labels` says where each of its peers came from), and where to talk."""

    cfg: Config
    labels: Sequence[str]
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    socket_dir: Path = live.SOCKET_DIR
    now: float = field(default_factory=time.time)

    @property
    def sockets(self) -> list[Path]:
        """Where the router may answer, in the order tried (wgslirp/uapi_paths.py)."""
        return uapi_paths.candidates(self.cfg.interface_name, self.cfg.state_dir, self.socket_dir)

    def say(self, text: str) -> None:
        print(f"wgslirp: {text}", file=self.err)


def _find(stored: Sequence[StoredPeer], name: str, path: str) -> StoredPeer:
    key = name_key(name)
    for p in stored:
        if name_key(p.name) == key:
            return p
    known = ", ".join(p.name for p in stored) or "none yet"
    raise PeerError(f"no peer named {name!r} in {path} (stored peers: {known})")


def _live_peers(ctx: Context) -> dict[bytes, live.LivePeer] | None:
    try:
        return live.get_peers(ctx.sockets)
    except (live.RouterUnreachable, live.RouterRefused):
        return None


def add(
    ctx: Context,
    name: str,
    *,
    psk: bool = True,
    keep_key: bool = False,
    output: str | None = None,
    qr: bool = False,
) -> int:
    validate_name(name)
    if output is not None and os.path.lexists(output):
        raise PeerError(f"--output {output} already exists; it may hold another client's key")
    cfg = ctx.cfg
    state = cfg.state_dir
    ensure_state_dir(state)
    running = _live_peers(ctx)
    path = peers_path(state)
    with locked(state):
        stored = list(read_peers(state))
        for p in stored:
            if name_key(p.name) == name_key(name):
                raise PeerError(
                    f"a peer named {p.name!r} already exists in {path} (address {p.address}, "
                    f"public key {encode_key(p.public_key)}); remove it first or pick another name"
                )
        merged = merge_stored(cfg, ctx.labels, stored, path)
        taken = taken_addresses(merged)
        if running is not None:  # peers added with `wg set` only live in the router
            taken += [c for p in running.values() for c in p.allowed_ips]
        address = allocate(cfg.peer_pool, taken)
        private = generate_private_key()
        record = StoredPeer(
            name=name,
            public_key=public_key(private),
            address=address,
            preshared_key=os.urandom(32) if psk else None,
            private_key=private if keep_key else None,
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        merged = merge_stored(cfg, ctx.labels, [*stored, record], path)  # the final check
        write_peers(state, [*stored, record])
    text = client_config_text(merged, private, peer_index=len(merged.peers) - 1)
    ctx.say(f"added peer {name!r}: address {address}, public key {encode_key(record.public_key)}")
    if output is not None:
        _write_private(output, text)
        ctx.say(f"wrote its configuration to {output} (mode 0600)")
    if qr:
        ctx.out.write(qr_terminal(text, color=_is_tty(ctx.out)))
    elif output is None:
        ctx.out.write(text)
    if not keep_key:
        ctx.say("its private key is not stored: keep this configuration, it is shown once")
    return _apply(ctx, "add", record)


def remove(ctx: Context, name: str) -> int:
    state = ctx.cfg.state_dir
    path = peers_path(state)
    with locked(state):
        stored = list(read_peers(state))
        record = _find(stored, name, path)
        write_peers(state, [p for p in stored if p is not record])
    ctx.say(f"removed peer {record.name!r} ({record.address}) from {path}")
    return _apply(ctx, "remove", record)


def _apply(ctx: Context, what: str, record: StoredPeer) -> int:
    try:
        if what == "add":
            where = live.add_peer(
                ctx.sockets, record.public_key, record.preshared_key, record.address
            )
        else:
            where = live.remove_peer(ctx.sockets, record.public_key)
    except live.RouterUnreachable as e:
        later = (
            "a running router keeps serving it until its next reload (SIGHUP) or restart"
            if what == "remove"
            else "a router loads it at its next start or reload"
        )
        later += (
            "; to reload: `kill -HUP PID`, `systemctl kill -s HUP wgslirp` or "
            "`docker kill -s HUP CONTAINER`"
        )
        ctx.say(f"not applied live ({e}); {later}")
        return 0
    except live.RouterRefused as e:
        ctx.say(f"recorded, but {e}")
        return 1
    done = "added to" if what == "add" else "removed from (its flows closed)"
    ctx.say(f"{done} the running router ({ctx.cfg.interface_name}, through {where})")
    return 0


def show(ctx: Context, name: str, *, qr: bool = False) -> int:
    state = ctx.cfg.state_dir
    path = peers_path(state)
    stored = read_peers(state)
    record = _find(stored, name, path)
    merged = merge_stored(ctx.cfg, ctx.labels, stored, path)
    index = next(i for i, p in enumerate(merged.peers) if p.public_key == record.public_key)
    if record.private_key is None:
        if qr:
            raise PeerError(
                f"the private key of {record.name!r} was not kept (`peer add --keep-key`), so "
                "no complete configuration can be shown; remove and add it again for a new one",
                exit_code=1,
            )
        ctx.say(f"the private key of {record.name!r} was not kept; the file shows where it goes")
    text = client_config_text(merged, record.private_key, peer_index=index)
    ctx.out.write(qr_terminal(text, color=_is_tty(ctx.out)) if qr else text)
    return 0


class _Row(msgspec.Struct, kw_only=True):
    name: str
    source: str
    public_key: str
    address: str
    latest_handshake: float | None  # unix time; None = never or unknown
    rx_bytes: int | None
    tx_bytes: int | None


def list_peers(ctx: Context, *, as_json: bool = False) -> int:
    cfg = ctx.cfg
    state = cfg.state_dir
    path = peers_path(state)
    stored = read_peers(state)
    running = _live_peers(ctx)
    rows: list[_Row] = []

    def row(name: str, source: str, key: bytes, address: str) -> _Row:
        lp = running.get(key) if running is not None else None
        return _Row(
            name=name,
            source=source,
            public_key=encode_key(key),
            address=address,
            latest_handshake=(lp.last_handshake or None) if lp else None,
            rx_bytes=lp.rx_bytes if lp else None,
            tx_bytes=lp.tx_bytes if lp else None,
        )

    for label, peer in zip(labels_for(cfg, ctx.labels), cfg.peers, strict=True):
        rows.append(row("-", label, peer.public_key, ",".join(peer.allowed_ips)))
    if cfg.private_key is None and not cfg.peers:
        from wgslirp.identity import read_client_private_key

        client = read_client_private_key(cfg)
        if client is not None:
            rows.append(row("-", "zero-config client", public_key(client), EMBEDDED_CLIENT_ADDRESS))
    rows += [row(p.name, PEERS_SOURCE, p.public_key, p.address) for p in stored]
    if as_json:
        ctx.out.write(msgspec.json.encode(rows).decode() + "\n")
        return 0
    if running is None:
        where = " or ".join(map(str, ctx.sockets))
        ctx.say(f"no router answers on {where}: no live handshake or transfer figures")
    table = [("NAME", "PUBLIC KEY", "ADDRESS", "LATEST HANDSHAKE", "TRANSFER", "FROM")]
    for r in rows:
        table.append(
            (
                r.name,
                r.public_key,
                r.address,
                _ago(r.latest_handshake, ctx.now, known=running is not None),
                _transfer(r.rx_bytes, r.tx_bytes),
                r.source,
            )
        )
    widths = [max(len(t[i]) for t in table) for i in range(len(table[0]))]
    for t in table:
        ctx.out.write("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)).rstrip() + "\n")
    if not rows:
        ctx.say(f"no peers yet; `wgslirp peer add NAME` adds one (stored in {path})")
    return 0


PEERS_SOURCE = "peers.json"


def _ago(when: float | None, now: float, *, known: bool) -> str:
    if not known:
        return "-"
    if when is None:
        return "never"
    s = max(0, int(now - when))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= size:
            n = s // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return f"{s} second{'s' if s != 1 else ''} ago"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError


def _transfer(rx: int | None, tx: int | None) -> str:
    if rx is None or tx is None:
        return "-"
    return f"{_bytes(rx)} received, {_bytes(tx)} sent"


def _write_private(path: str, text: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise PeerError(
            f"--output {path}: {e.strerror or e} (the peer is recorded; "
            "`wgslirp peer remove` it and add it again)",
            exit_code=1,
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
