"""Turning the text a user wrote into a value, or a ValueError saying what is wrong with it.

These parsers know nothing of settings, files or the network: each takes a string
(and, for ranges and choices, the limits) and returns a value. The caller adds the
setting's name to the message, and host names that need resolving are returned as
written, so every function here is pure and can be tested with literals alone.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = [
    "MAX_DURATION",
    "check_range",
    "format_duration",
    "parse_allowed_ips",
    "parse_bool",
    "parse_choice",
    "parse_cidrs",
    "parse_duration",
    "parse_endpoint",
    "parse_hostname",
    "parse_hostport",
    "parse_ifname",
    "parse_int",
    "parse_ipv4",
    "parse_ipv6",
    "parse_listen_addr",
    "parse_pool",
    "parse_public_endpoint",
    "parse_unicast_ipv4",
    "parse_unicast_ipv6",
    "parse_upstreams",
    "parse_url",
]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
MAX_DURATION = 365 * 86400.0  # no setting wants longer; beyond it is a typo (or "inf")
_INT_RE = re.compile(r"[+-]?[0-9]{1,18}")  # ASCII digits only: "٥١٨٢٠" is not a port
_DURATION_PART = re.compile(r"([0-9]{1,12}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def parse_bool(raw: str) -> bool:
    """Accept the spellings people actually type, and nothing that could be a typo."""
    v = raw.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not a boolean (use 1/0, true/false, yes/no or on/off)")


def parse_duration(raw: str) -> float:
    """Parse a Go ``time.ParseDuration`` string into seconds.

    Go syntax is kept because the original's METRICS_INTERVAL took it and
    existing compose files say ``15s`` or ``1m30s``. Negative values are
    refused because no setting here can use one.
    """
    s = raw.strip()
    if s.startswith("+"):
        s = s[1:]
    if s.startswith("-"):
        raise ValueError(f"{raw!r} is negative")
    if s == "0":
        return 0.0
    if not s:
        raise ValueError("empty duration")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"{raw!r} is not a duration (examples: 15s, 1m30s, 500ms, 2h)")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not math.isfinite(total) or total > MAX_DURATION:
        raise ValueError(f"{raw!r} is longer than {MAX_DURATION / 86400:.0f} days")
    return total


def format_duration(seconds: float) -> str:
    """Render seconds the way a user would write them back into a variable."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    whole = int(seconds)
    if seconds - whole > 1e-9:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    out = f"{hours}h" if hours else ""
    if minutes:
        out += f"{minutes}m"
    if secs or not out:
        out += f"{secs}s"
    return out


def _parse_cidr(text: str) -> str:
    s = text.strip()
    if ":" in s:
        try:
            return str(ipaddress.IPv6Network(s, strict=False))
        except ValueError:
            raise ValueError(f"{s!r} is not an IPv6 address or CIDR") from None
    try:
        return str(ipaddress.IPv4Network(s, strict=False))
    except ValueError:
        raise ValueError(f"{s!r} is not an IPv4 address or CIDR") from None


def parse_cidrs(raw: str) -> tuple[str, ...]:
    out: list[str] = []
    for part in raw.split(","):
        if part.strip():
            net = _parse_cidr(part)
            if net not in out:
                out.append(net)
    return tuple(out)


_V4_COMPAT = ipaddress.IPv6Network("::/96")


def parse_allowed_ips(raw: str) -> tuple[str, ...]:
    """A peer's AllowedIPs: CIDRs of either family, but no IPv6 prefix inside ::/96.

    Those are IPv4-compatible addresses (with :: and ::1), the one range where an IPv6
    address equals an IPv4 one as an int, so the router never gives a guest one (see
    docs/architecture.md, "Both families"). A wider prefix such as ::/0 that merely
    contains ::/96 is fine: the router drops such packets whoever sends them.
    """
    out = parse_cidrs(raw)
    for cidr in out:
        net = ipaddress.ip_network(cidr)
        if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_V4_COMPAT):
            raise ValueError(
                f"{cidr} lies inside ::/96 (IPv4-compatible addresses, :: and ::1), which "
                "wgslirp does not route; use an IPv4 address or another IPv6 prefix"
            )
    return out


def parse_pool(raw: str) -> str:
    """An address pool: a network written exactly (host bits set are a typo, not a wish),
    with room for clients besides its network, first and broadcast addresses."""
    text = raw.strip()
    if ":" in text:
        raise ValueError(f"{text} is IPv6; the peer pool is an IPv4 network")
    net = ipaddress.IPv4Network(_parse_cidr(text))
    if "/" not in text:
        raise ValueError(f"{text!r} is an address; a pool is a network such as {net.supernet(8)}")
    if str(net) != text:
        raise ValueError(f"{text!r} has host bits set; the network is {net}")
    if not 8 <= net.prefixlen <= 30:
        raise ValueError(f"{net} must be between /8 and /30")
    return str(net)


def parse_upstreams(raw: str) -> tuple[str, ...]:
    """Resolvers as ip[:port]: IPv4 as a.b.c.d[:port], IPv6 as [addr]:port or a bare
    address; each comes out as host:port with IPv6 in brackets."""
    out: list[str] = []
    for part in raw.split(","):
        text = part.strip()
        if not text:
            continue
        host, port = _split_endpoint(text, need_port=False)
        addr = _ip_literal(host)
        if addr is None:
            raise ValueError(f"{text!r}: {host!r} is not an IP address")
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.scope_id:
                raise ValueError(f"{text!r}: a resolver with a %zone is not supported")
            out.append(f"[{addr}]:{port or 53}")
        else:
            out.append(f"{addr}:{port or 53}")
    return tuple(out)


def split_upstream(text: str) -> tuple[str, int]:
    """'[::1]:53' or '127.0.0.1:53' (as `parse_upstreams` writes them) -> (host, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def parse_ipv6(raw: str) -> ipaddress.IPv6Address:
    try:
        addr = ipaddress.IPv6Address(raw.strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not an IPv6 address") from None
    if addr.scope_id:
        raise ValueError(f"{raw!r} has a scope (%{addr.scope_id}); give a plain address")
    return addr


def parse_unicast_ipv6(raw: str) -> str:
    """A tunnel address of the router (gateway, DNS): a plain unicast address outside the
    ranges a guest may never reach or that would be ambiguous with IPv4 (::/96)."""
    addr = parse_ipv6(raw)
    if addr in _V4_COMPAT:
        raise ValueError(
            f"{addr} lies inside ::/96 (IPv4-compatible, :: and ::1) and cannot be a tunnel address"
        )
    if addr.is_multicast or addr.is_link_local or addr.ipv4_mapped is not None:
        raise ValueError(f"{addr} cannot be a tunnel address (multicast, link-local or mapped)")
    return str(addr)


def parse_ipv4(raw: str) -> ipaddress.IPv4Address:
    if ":" in raw:
        raise ValueError(f"{raw} is IPv6; wgslirp routes IPv4 only")
    try:
        return ipaddress.IPv4Address(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not an IPv4 address") from None


def parse_unicast_ipv4(raw: str) -> str:
    addr = parse_ipv4(raw)
    if (
        addr.is_unspecified
        or addr.is_loopback
        or addr.is_multicast
        or addr == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise ValueError(f"{addr} cannot be a tunnel address (unspecified, loopback or multicast)")
    return str(addr)


def _is_hostname(name: str) -> bool:
    n = name[:-1] if name.endswith(".") else name
    if not n or len(n) > 253:
        return False
    return all(_LABEL_RE.fullmatch(label) for label in n.split("."))


def parse_hostname(raw: str) -> str:
    if not _is_hostname(raw):
        raise ValueError(f"{raw!r} is not a valid host name")
    return raw


def _split_hostport(raw: str, *, need_port: bool) -> tuple[str, int | None]:
    if raw.startswith("["):
        raise ValueError(f"{raw} is IPv6; wgslirp routes IPv4 only")
    host, sep, port_text = raw.rpartition(":")
    if not sep:
        if need_port:
            raise ValueError(f"{raw!r} has no port (expected host:port)")
        host, port_text = raw, ""
    if ":" in host:
        raise ValueError(f"{raw} is IPv6; wgslirp routes IPv4 only")
    port: int | None = None
    if sep:
        if not port_text.isdigit():
            raise ValueError(f"port {port_text!r} is not a number")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is out of range 1-65535")
    return host, port


def _parse_host(host: str, raw: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    if not _is_hostname(host):
        raise ValueError(f"{raw!r}: {host!r} is neither an IPv4 address nor a host name")
    return host


_IFNAME_BAD = re.compile(r"[/:\s]")


def parse_ifname(raw: str) -> str:
    if len(raw.encode()) > 15:  # the kernel's IFNAMSIZ counts bytes
        raise ValueError(f"{raw!r} is longer than 15 bytes")
    if raw in (".", "..") or _IFNAME_BAD.search(raw):
        raise ValueError(f"{raw!r} is not a valid interface name (no '/', ':' or spaces)")
    return raw


def parse_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{raw!r} is not an http:// or https:// URL")
    return raw


def _ip_literal(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address literal (an IPv4-mapped IPv6 address is the IPv4 address), or None."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_listen_addr(raw: str) -> str:
    """A bind address: IPv4 or IPv6, the wildcards 0.0.0.0 and :: included, but not a group.
    Brackets are allowed ([::1]) since that is how an IPv6 address is usually seen next to
    a port; an IPv4-mapped address is the IPv4 address it names."""
    text = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    addr = _ip_literal(text)
    if addr is None:
        raise ValueError(f"{raw!r} is not an IPv4 or IPv6 address (e.g. 0.0.0.0, ::, ::1)")
    if addr.is_multicast:
        raise ValueError(f"{addr} is a multicast address")
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.is_link_local and not addr.scope_id:
            raise ValueError(f"{addr} is link-local: name the interface ({addr}%eth0)")
        if addr.scope_id and not addr.is_link_local:
            raise ValueError(f"{raw!r}: only a link-local address takes a %zone")
    return str(addr)


def _split_endpoint(raw: str, *, need_port: bool) -> tuple[str, int | None]:
    """host:port where host may also be a bracketed IPv6 address, [v6]:port as wg(8) and
    wireguard-go write it; an IPv6 host comes back as its canonical text."""
    if not raw.startswith("["):
        if raw.count(":") > 1:
            if not need_port and _ip_literal(raw) is not None:
                return (str(_ip_literal(raw)), None)  # a bare IPv6 address, no port
            raise ValueError(f"{raw!r}: an IPv6 address with a port is written [address]:port")
        return _split_hostport(raw, need_port=need_port)
    end = raw.find("]")
    rest = raw[end + 1 :] if end >= 0 else ""
    if end < 0 or (rest and not rest.startswith(":")):
        raise ValueError(f"{raw!r} is not [IPv6 address]:port")
    inner = raw[1:end]
    addr = _ip_literal(inner) if ":" in inner else None
    if addr is None:
        raise ValueError(f"{raw!r}: {inner!r} in brackets is not an IPv6 address")
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id and not addr.is_link_local:
        raise ValueError(f"{raw!r}: only a link-local address takes a %zone")
    if not rest:
        if need_port:
            raise ValueError(f"{raw!r} has no port (expected [address]:port)")
        return (str(addr), None)
    _, port = _split_hostport("x" + rest, need_port=True)
    return (str(addr), port)


def _endpoint_host(host: str, raw: str) -> str:
    addr = _ip_literal(host)
    if addr is not None:
        return str(addr)
    if not _is_hostname(host):
        raise ValueError(f"{raw!r}: {host!r} is neither an IP address nor a host name")
    return host


def parse_public_endpoint(raw: str) -> tuple[str, int | None]:
    """host[:port] for client configurations: a name, an IPv4 address, or an IPv6 address
    (bare without a port, [v6]:port with one)."""
    host, port = _split_endpoint(raw, need_port=False)
    return (_endpoint_host(host, raw), port)


def parse_hostport(raw: str) -> tuple[str, int]:
    host, port = _split_hostport(raw, need_port=True)
    assert port is not None
    return (_parse_host(host, raw) if host else "0.0.0.0", port)


def parse_endpoint(raw: str) -> tuple[str, int]:
    """A peer's host:port or [IPv6]:port. An address comes back in canonical text (an
    IPv4-mapped one as IPv4), a name as written: resolving it is the caller's I/O."""
    host, port = _split_endpoint(raw, need_port=True)
    if not host:
        raise ValueError(f"{raw!r} has no host")
    assert port is not None
    return (_endpoint_host(host, raw), port)


def check_range(
    value: int | float,
    raw: str,
    *,
    ge: int | float | None,
    le: int | float | None,
    gt: int | float | None = None,
    duration: bool = False,
) -> None:
    """Name the bound the user crossed; a duration's minimum is shown as they would write it."""
    if duration and ge is not None and value < ge:
        raise ValueError(f"{raw} is shorter than the minimum {format_duration(ge)}")
    if gt is not None and not value > gt:
        raise ValueError(f"{raw} must be greater than {gt or 'zero'}")
    if ge is not None and le is not None:
        if not ge <= value <= le:
            raise ValueError(f"{raw} is out of range {ge}-{le}")
    elif ge is not None and value < ge:
        raise ValueError(f"{raw} is below the minimum {ge}")
    elif le is not None and value > le:
        raise ValueError(f"{raw} is above the maximum {le}")


def parse_int(
    raw: str, *, ge: int | float | None, le: int | float | None, gt: int | float | None = None
) -> int:
    if not _INT_RE.fullmatch(raw):
        raise ValueError(f"{raw!r} is not an integer")
    value = int(raw)
    check_range(value, raw, ge=ge, le=le, gt=gt)
    return value


def parse_choice(raw: str, choices: tuple[str, ...], aliases: Mapping[str, str]) -> str:
    v = raw.lower()
    v = aliases.get(v, v)
    if v not in choices:
        raise ValueError(f"{raw!r} is not one of: {', '.join(choices)}")
    return v
