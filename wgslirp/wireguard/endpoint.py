"""A peer's UDP endpoint in one canonical form, whichever socket family carried it.

Everything above the socket (the device's roaming, cookie MAC2 binding, handshake budgets,
logs, metrics, `wg show`, the configuration a restarted ingress gets back) compares and
prints endpoints as `(host, port)` with `host` the plain address text: an IPv4 address in
dotted form, an IPv6 address compressed (RFC 5952, what `inet_ntop` prints), a link-local
one with its `%zone`. A dual-stack socket (`::` with IPV6_V6ONLY off) reports an IPv4
peer as `::ffff:a.b.c.d` with four fields; `from_sockaddr` turns that back into the IPv4
address, so the same peer is the same endpoint on either kind of socket, and
`to_sockaddr6` maps it again for sending. Pure functions: the shell caches their results
per address, so none of this runs per packet.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

Addr = tuple[str, int]
SockAddr = tuple[Any, ...]

__all__ = [
    "Addr",
    "canonical_host",
    "format_endpoint",
    "from_sockaddr",
    "is_ipv6",
    "parse_endpoint",
    "to_sockaddr6",
]


def is_ipv6(host: str) -> bool:
    """Whether a canonical host is an IPv6 address (IPv4 text never holds a colon)."""
    return ":" in host


def canonical_host(text: str) -> str:
    """The canonical text of an IP address literal; an IPv4-mapped IPv6 address is the IPv4
    address (RFC 4291 2.5.5.2: it names an IPv4 node). Raises ValueError for anything else.
    IPv6 text is what `inet_ntop` prints, which is what a socket reports, so an endpoint
    typed by a user and the same one seen on the socket compare equal. A zone
    (`fe80::1%eth0`) is kept, and allowed only where it means something: link-local."""
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv4Address):
        return str(addr)
    if addr.ipv4_mapped is not None:
        if addr.scope_id:
            raise ValueError(f"{text!r}: an IPv4-mapped address has no zone")
        return str(addr.ipv4_mapped)
    if addr.scope_id and not addr.is_link_local:
        raise ValueError(f"{text!r}: only a link-local address takes a %zone")
    host = socket.inet_ntop(socket.AF_INET6, addr.packed)
    return f"{host}%{addr.scope_id}" if addr.scope_id else host


def from_sockaddr(sa: SockAddr) -> Addr:
    """What `recvfrom` on either family returned, as the canonical endpoint.

    Cheap, because under a flood of spoofed sources every datagram can be a new address:
    the socket's text comes from `inet_ntop` already (canonical), and an IPv4-mapped
    address is always printed `::ffff:a.b.c.d`, so stripping the prefix is the whole
    work. Measured: ~0.2 µs, where parsing with `ipaddress` cost ~6 µs, more than ingress
    spends on a whole datagram under a flood (~4 µs). Ingress caches the result per
    socket address anyway (a lookup, ~50 ns, and no new tuple per datagram).
    """
    host: str = sa[0]
    if host.startswith("::ffff:") and "." in host:
        return (host[7:], sa[1])
    return (host, sa[1])


def to_sockaddr6(addr: Addr) -> SockAddr:
    """The address to pass to `sendto` on an AF_INET6 socket: IPv4 peers as mapped
    addresses (a dual-stack socket reaches them that way), and a link-local zone as the
    interface index, so the kernel is handed numbers and no name lookup runs per send."""
    host, port = addr
    if ":" not in host:
        return ("::ffff:" + host, port)
    base, sep, zone = host.partition("%")
    if not sep:
        return (host, port)
    index = int(zone) if zone.isdigit() else socket.if_nametoindex(zone)
    return (base, port, 0, index)


def format_endpoint(addr: Addr) -> str:
    """`a.b.c.d:port` or `[v6]:port`: how wireguard-go prints an endpoint (`wg show`, the
    UAPI `endpoint=` line), so that wg(8) can parse it back."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_endpoint(text: str) -> Addr:
    """`a.b.c.d:port` or `[v6]:port` with a numeric address (the UAPI form: wg(8) resolves
    names itself); port 1-65535. Raises ValueError saying what is wrong."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"{text!r} is not [IPv6]:port")
        host_text, port_text = text[1:end], text[end + 2 :]
        if ":" not in host_text:
            raise ValueError(f"{text!r}: brackets hold an IPv6 address")
    else:
        host_text, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} has no port (expected host:port)")
        if ":" in host_text:
            raise ValueError(f"{text!r}: an IPv6 endpoint is written [address]:port")
    try:
        host = canonical_host(host_text)
    except ValueError as exc:
        raise ValueError(f"{text!r}: {host_text!r} is not an IP address ({exc})") from None
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise ValueError(f"{text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is out of range 1-65535")
    return (host, port)
