"""The cross-platform WireGuard configuration protocol (UAPI), with no I/O.

wg(8) talks to a userspace implementation through a stream socket at
/var/run/wireguard/NAME.sock using a line protocol (wireguard.com/xplatform): a request is
`get=1` or `set=1` followed by `key=value` lines and ends with an empty line; the answer to
`get` is the device's state as `key=value` lines, and every answer ends with `errno=N` (0 or
a negated errno) and an empty line. Speaking it lets the stock `wg show`, `wg showconf`,
`wg set` and `wg syncconf` inspect and change the running router.

This module only turns request bytes into answer bytes against a `Device`; the socket server
(wgslirp/runtime/uapi_server.py) frames requests with `split_request` and calls `handle`.

Where wgslirp differs from wireguard-go, and why:

* A `set` is parsed and checked completely before anything changes, so a request with a bad
  line changes nothing (wireguard-go applies lines until the first bad one). The one error
  that can only show while applying is a peer key that fails Diffie-Hellman (a low-order
  point); lines before it stay applied, as in wireguard-go.
* `listen_port` cannot change live: the UDP socket belongs to the supervisor, which shares it
  with every ingress it ever starts. Setting the current port is accepted (so `wg setconf`
  with the output of `wg showconf` works); another port fails with EOPNOTSUPP. `fwmark` is not
  supported: 0 is accepted, anything else fails with EOPNOTSUPP.
* IPv6 allowed IPs are accepted, except prefixes inside ::/96 (EINVAL), as in the
  configuration. Endpoints may be IPv4 or IPv6 (`[addr]:port`, as wg(8) writes them); an
  IPv4-mapped IPv6 endpoint is stored as the IPv4 address it names, which is how the router
  reports it afterwards.
* A private key of all zeros ("no key") fails with EINVAL: the router always has an identity.
* Changes live in the ingress process only; they are not written back to the configuration,
  so a restart of the router (or of a crashed ingress) starts from the configuration again.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass, field

from wgslirp.net.prefix import format_cidr, parse_prefix
from wgslirp.wireguard.device import Device
from wgslirp.wireguard.endpoint import format_endpoint, parse_endpoint
from wgslirp.wireguard.peer import Addr
from wgslirp.wireguard.peerset import PeerChange, PeerSetError, SetRequest, apply_set

KEY_HEX_LEN = 64
_ZERO_KEY = bytes(32)
_HEX = frozenset("0123456789abcdefABCDEF")
REQUEST_END = b"\n\n"


class UapiError(Exception):
    """A request the device refuses; `errno` goes back to the client as `errno=N`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


# ------------------------------------------------------------------- framing


def split_request(buf: bytearray, start: int = 0) -> bytes | None:
    """Remove and return the first complete request (through its empty line) from `buf`.

    Every request, `get` or `set`, ends at the first empty line, so framing needs no parsing.
    `start` lets a caller that already searched part of the buffer skip it (the end marker
    may straddle the boundary, hence the one-byte step back).
    """
    end = buf.find(REQUEST_END, max(0, start - 1))
    if end < 0:
        return None
    req = bytes(buf[: end + 2])
    del buf[: end + 2]
    return req


@dataclass
class Response:
    """What to send back, and whether the connection should close after it."""

    data: bytes
    close: bool = False
    changes: list[str] = field(default_factory=list)  # what a `set` did, for the log
    refused: str | None = None  # why a `set` was refused, for the log


def handle(request: bytes, device: Device, *, listen_port: int, now: float) -> Response:
    """Answer one framed request (`split_request`) against `device`.

    An unknown operation closes the connection after an EINVAL answer (wireguard-go just
    closes; the answer helps someone typing at the socket). `now` is the monotonic clock the
    device runs on, for peers added or given a keepalive.
    """
    try:
        text = request.decode("utf-8")
    except UnicodeDecodeError:
        return Response(errno_line(errno.EINVAL), close=True)
    lines = text.split("\n")
    # "op\n...\n\n" splits into [op, ..., "", ""]
    op, body = lines[0], lines[1:-2]
    if op == "get=1":
        if body:
            return Response(errno_line(errno.EINVAL))
        return Response(get(device, listen_port).encode() + errno_line(0))
    if op == "set=1":
        try:
            req = parse_set(body, listen_port=listen_port)
            changes = apply_set(device, req, now=now)
        except UapiError as exc:
            return Response(errno_line(exc.errno), refused=str(exc))
        except PeerSetError as exc:
            return Response(errno_line(errno.EINVAL), refused=str(exc))
        return Response(errno_line(0), changes=changes)
    return Response(errno_line(errno.EINVAL), close=True)


def errno_line(code: int) -> bytes:
    """The status line ending every answer. Failures go out negated, as wireguard-go sends
    them: wg(8) negates what it reads back into errno, so `errno=-95` is what makes it print
    "Operation not supported" (a positive number prints "Unknown error -95")."""
    return b"errno=%d\n\n" % -code


# ----------------------------------------------------------------------- get


def get(device: Device, listen_port: int) -> str:
    """The `get` answer without its `errno` line: device keys first, then one block per peer.

    Field order follows wireguard-go; wg(8) ignores keys it does not know (protocol_version).
    A preshared key of zeros means none, which is how wg(8) reads it too.
    """
    out = [f"private_key={device.identity.private_bytes.hex()}", f"listen_port={listen_port}"]
    for peer in device.peers.values():
        sec, nsec = divmod(round(peer.last_handshake_wall * 1e9), 1_000_000_000)
        out.append(f"public_key={peer.public_key.hex()}")
        out.append(f"preshared_key={peer.handshake.psk.hex()}")
        out.append("protocol_version=1")
        if peer.endpoint is not None:
            out.append(f"endpoint={format_endpoint(peer.endpoint)}")
        out.append(f"last_handshake_time_sec={sec}")
        out.append(f"last_handshake_time_nsec={nsec}")
        out.append(f"tx_bytes={peer.tx_bytes}")
        out.append(f"rx_bytes={peer.rx_bytes}")
        out.append(f"persistent_keepalive_interval={peer.keepalive}")
        out.extend(f"allowed_ip={cidr}" for cidr in device.allowed.prefixes_of(peer))
    return "".join(line + "\n" for line in out)


# ----------------------------------------------------------------------- set


def parse_set(lines: list[str], *, listen_port: int) -> SetRequest:
    """Check every line of a `set` body and collect what it asks; raises UapiError.

    Device keys must precede the first `public_key`, which opens a peer section (as in the
    protocol: after it, every key belongs to that peer). `listen_port` is the port the
    router is bound to, the only value `listen_port=` may carry.
    """
    req = SetRequest()
    peer: PeerChange | None = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(
                errno.EPROTO,
                f"a line without '=' ({len(line)} bytes; not echoed: it could hold key material)",
            )
        if key == "public_key":
            peer = PeerChange(_key(value, key))
            req.peers.append(peer)
        elif peer is None:
            _device_line(req, key, value, listen_port)
        else:
            _peer_line(peer, key, value)
    return req


def _device_line(req: SetRequest, key: str, value: str, listen_port: int) -> None:
    if key == "private_key":
        sk = _key(value, key)
        if sk == _ZERO_KEY:
            raise UapiError(errno.EINVAL, "the router cannot run without a private key")
        req.private_key = sk
    elif key == "listen_port":
        if _uint(value, 0xFFFF, key) != listen_port:
            raise UapiError(errno.EOPNOTSUPP, "listen_port cannot change while the router runs")
    elif key == "fwmark":
        if value and _uint(value, 0xFFFFFFFF, key) != 0:
            raise UapiError(errno.EOPNOTSUPP, "fwmark is not supported")
    elif key == "replace_peers":
        _true(value, key)
        req.replace_peers = True
    else:
        raise UapiError(errno.EINVAL, f"unknown device key {key!r}")


def _peer_line(peer: PeerChange, key: str, value: str) -> None:
    if key == "remove":
        _true(value, key)
        peer.remove = True
    elif key == "update_only":
        _true(value, key)
        peer.update_only = True
    elif key == "preshared_key":
        peer.preshared_key = _key(value, key)
    elif key == "endpoint":
        peer.endpoint = _endpoint(value)
    elif key == "persistent_keepalive_interval":
        peer.keepalive = _uint(value, 0xFFFF, key)
    elif key == "replace_allowed_ips":
        _true(value, key)
        peer.replace_allowed_ips = True
        peer.allowed_ips.clear()
    elif key == "allowed_ip":
        remove = value.startswith("-")  # newer wg(8): "allowed-ips -10.0.0.0/8" removes one
        peer.allowed_ips.append((_cidr(value[1:] if remove else value), remove))
    elif key == "protocol_version":
        if value != "1":
            raise UapiError(errno.EINVAL, f"unsupported protocol_version {value!r}")
    else:
        raise UapiError(errno.EINVAL, f"unknown peer key {key!r}")


# -------------------------------------------------------------------- values


def _key(value: str, name: str) -> bytes:
    if len(value) != KEY_HEX_LEN or not _HEX.issuperset(value):
        raise UapiError(errno.EINVAL, f"{name} must be 64 hex digits")
    return bytes.fromhex(value)


def _uint(value: str, limit: int, name: str) -> int:
    # str.isdigit accepts non-ASCII digits, int() signs, spaces and underscores, and a
    # very long digit string would trip Python's int conversion limit
    if (
        not value
        or len(value) > 20
        or not value.isascii()
        or not value.isdigit()
        or int(value) > limit
    ):
        raise UapiError(errno.EINVAL, f"{name} must be an integer from 0 to {limit}")
    return int(value)


def _true(value: str, name: str) -> None:
    if value != "true":
        raise UapiError(errno.EINVAL, f"{name} accepts only 'true'")


def _endpoint(value: str) -> Addr:
    try:
        return parse_endpoint(value)
    except ValueError as exc:
        raise UapiError(errno.EINVAL, f"endpoint: {exc}") from None


def _cidr(value: str) -> str:
    """Normalised `a.b.c.d/n` or `x::y/n`; host bits are cleared, as wireguard-go's trie
    stores it. IPv6 prefixes inside ::/96 are refused like in the configuration (they are
    the IPv6 addresses that equal IPv4 ones as ints; docs/architecture.md)."""
    ip, sep, plen = value.partition("/")
    if not sep or not plen.isascii() or not plen.isdigit():
        raise UapiError(errno.EINVAL, f"allowed_ip must be address/n, got {value!r}")
    try:
        ipaddress.ip_address(ip)
        network, length, v6 = parse_prefix(value)
    except ValueError:
        raise UapiError(errno.EINVAL, f"allowed_ip must be address/n, got {value!r}") from None
    if v6 and length >= 96 and network < (1 << 32):
        raise UapiError(errno.EINVAL, f"allowed_ip {value!r} lies inside ::/96")
    return format_cidr(network, length, v6)
