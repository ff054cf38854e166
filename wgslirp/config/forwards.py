"""Inbound port forwards (WG_FORWARD_TCP / WG_FORWARD_UDP): their syntax and checks.

One syntax, the shape of Docker's ``-p`` with ``=`` between the two sides so an address
never has to be told from a port by counting colons::

    [listen-ip:]port[-port]=guest-ip[:port[-port]]

comma-separated, e.g. ``127.0.0.1:8080=10.77.0.2:80,0.0.0.0:2222=10.77.0.3:22`` or
``8000-8010=10.77.0.2`` (the listen address defaults to 127.0.0.1, never to every
interface, and the guest ports to the listen ports). Entries are kept in this written
form, normalised, so `check-config` prints what loads back; `expand` turns them into one
`Forward` per port for the runtime. Pure: no sockets here (a port in use is found when
the router binds it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from wgslirp.config.schema import Config
from wgslirp.errors import ConfigError

__all__ = [
    "MAX_FORWARDS",
    "Forward",
    "check_config_forwards",
    "check_forwards",
    "expand",
    "forward_labels",
    "parse_forwards",
]

MAX_FORWARDS = 1024  # ports per protocol: a listening socket per port per worker
DEFAULT_LISTEN = "127.0.0.1"


class Forward(NamedTuple):
    """One forwarded port: connections to listen_ip:listen_port reach guest_ip:guest_port."""

    listen_ip: str
    listen_port: int
    guest_ip: str
    guest_port: int


def _ports(text: str, what: str) -> tuple[int, int]:
    lo_s, sep, hi_s = text.partition("-")
    lo = int(lo_s) if lo_s.isascii() and lo_s.isdigit() and len(lo_s) < 7 else -1
    hi = (int(hi_s) if hi_s.isascii() and hi_s.isdigit() and len(hi_s) < 7 else -1) if sep else lo
    if lo < 0 or hi < 0:
        raise ValueError(f"{what} {text!r} is not a port or a port range like 8000-8010")
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        raise ValueError(f"{what} {text!r} is out of range 1-65535")
    if hi < lo:
        raise ValueError(f"{what} range {text!r} runs backwards")
    return lo, hi


def _ipv4(text: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an IPv4 address") from None


def _parse_one(entry: str) -> tuple[str, int, int, str, int, int]:
    left, sep, right = entry.partition("=")
    if not sep or "=" in right:
        raise ValueError(
            f"{entry!r} is not [listen-ip:]port=guest-ip[:port] (e.g. 127.0.0.1:8080=10.77.0.2:80)"
        )
    left, right = left.strip(), right.strip()
    for side in (left, right):
        if side.startswith("[") or side.count(":") > 1:
            raise ValueError(f"{side!r}: IPv6 forwards are not supported yet")
    host, colon, port_text = left.rpartition(":")
    listen = (
        _ipv4(host.strip(), "listen address") if colon else ipaddress.IPv4Address(DEFAULT_LISTEN)
    )
    if listen.is_multicast or (listen.is_reserved and not listen.is_unspecified):
        raise ValueError(f"listen address {listen} is not a local unicast address")
    lo, hi = _ports(port_text.strip(), "listen port")
    gip_text, colon, gport_text = right.partition(":")
    guest = _ipv4(gip_text.strip(), "guest address")
    if guest.is_unspecified or guest.is_multicast or guest.is_loopback or guest.is_reserved:
        raise ValueError(f"guest address {guest} cannot be a guest's address")
    if colon:
        glo, ghi = _ports(gport_text.strip(), "guest port")
        if ghi - glo != hi - lo:
            raise ValueError(
                f"{entry!r}: the guest range has {ghi - glo + 1} ports, the listen range "
                f"{hi - lo + 1}"
            )
    else:
        glo, ghi = lo, hi
    return str(listen), lo, hi, str(guest), glo, ghi


def _span(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def parse_forwards(raw: str) -> tuple[str, ...]:
    """The setting's entries, normalised (``ip:port[-port]=ip:port[-port]``); ValueError
    naming the entry at fault. A listen port given twice (or inside two ranges) on the
    same address, or on an address and 0.0.0.0, is an error: only one can be bound."""
    out: list[str] = []
    seen: dict[int, str] = {}  # listen port -> listen address that took it
    total = 0
    for part in raw.split(","):
        if not part.strip():
            continue
        lip, lo, hi, gip, glo, ghi = _parse_one(part.strip())
        total += hi - lo + 1
        if total > MAX_FORWARDS:
            raise ValueError(f"more than {MAX_FORWARDS} forwarded ports")
        for port in range(lo, hi + 1):
            other = seen.get(port)
            if other is not None and (other == lip or "0.0.0.0" in (other, lip)):
                raise ValueError(f"listen port {port} is forwarded twice ({other} and {lip})")
            seen[port] = lip
        out.append(f"{lip}:{_span(lo, hi)}={gip}:{_span(glo, ghi)}")
    return tuple(out)


def expand(entries: Iterable[str]) -> list[Forward]:
    """One Forward per port of normalised entries (as `parse_forwards` returns them)."""
    out: list[Forward] = []
    for entry in entries:
        lip, lo, hi, gip, glo, _ = _parse_one(entry)
        out.extend(Forward(lip, lo + i, gip, glo + i) for i in range(hi - lo + 1))
    return out


def check_forwards(
    settings: Sequence[tuple[str, tuple[str, ...]]],
    allowed_ips: Iterable[str],
    gateway_ip: str | None,
) -> None:
    """The checks that need the rest of the configuration, at start and at every reload:
    each guest address inside some peer's AllowedIPs, and a gateway address for guests to
    see the connections come from. `settings` is (setting name, its entries) per protocol."""
    if not any(entries for _, entries in settings):
        return
    nets = [ipaddress.IPv4Network(c, strict=False) for c in allowed_ips if ":" not in c]
    for name, entries in settings:
        if entries and gateway_ip is None:
            raise ConfigError(
                name, "needs WG_GATEWAY_IP: guests see forwarded connections come from it"
            )
        for fwd in expand(entries):
            guest = ipaddress.IPv4Address(fwd.guest_ip)
            if not any(guest in net for net in nets):
                raise ConfigError(name, f"guest address {guest} is outside every peer's AllowedIPs")
            if fwd.guest_ip == gateway_ip:
                raise ConfigError(name, f"guest address {guest} is WG_GATEWAY_IP")


def check_config_forwards(cfg: Config) -> None:
    """`check_forwards` on a loaded Config with its final peer set (configured, stored
    and zero-config clients joined), as the router runs it."""
    check_forwards(
        (("WG_FORWARD_TCP", cfg.forward_tcp), ("WG_FORWARD_UDP", cfg.forward_udp)),
        [c for p in cfg.peers for c in p.allowed_ips],
        cfg.gateway_ip,
    )


def forward_labels(cfg: Config) -> list[str]:
    """One name per forwarded port, TCP then UDP in configuration order: the order the
    workers publish per-forward counters in (the metrics' `forward` label)."""
    return [
        f"{proto} {f.listen_ip}:{f.listen_port}->{f.guest_ip}:{f.guest_port}"
        for proto, entries in (("tcp", cfg.forward_tcp), ("udp", cfg.forward_udp))
        for f in expand(entries)
    ]
