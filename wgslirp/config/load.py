"""Building a Config from the environment and an optional wg-quick file.

This is the one layer that does I/O on the way in: it reads the file, looks at the
environment, and resolves peer host names (through the ``resolve`` callable it is
given, so tests and tools can load without DNS). It decides precedence (environment
over file, ``WG_PEERS`` replacing the file's peers) and the checks that span settings
(duplicate peer keys, the gateway and DNS addresses); single values are parsed by
:mod:`wgslirp.config.values`.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, get_args

from wgslirp.config.cpus import usable_cpus, workers_for_cpus
from wgslirp.config.fields import BY_ENV, CONFIG_FIELDS, NESTED, PEER_FIELDS, Field
from wgslirp.config.forwards import parse_forwards
from wgslirp.config.schema import (
    DEFAULT_LISTEN_ADDR,
    Config,
    ConfigError,
    PeerConfig,
    default_state_dir,
)
from wgslirp.config.values import (
    check_range,
    parse_allowed_ips,
    parse_bool,
    parse_choice,
    parse_cidrs,
    parse_duration,
    parse_endpoint,
    parse_hostname,
    parse_hostport,
    parse_ifname,
    parse_int,
    parse_ipv4,
    parse_ipv6,
    parse_listen_addr,
    parse_pool,
    parse_public_endpoint,
    parse_unicast_ipv4,
    parse_unicast_ipv6,
    parse_upstreams,
    parse_url,
)
from wgslirp.config.wgquick import WgSection, parse_wg_quick
from wgslirp.keys import decode_key, public_key

__all__ = [
    "MAX_CONFIG_FILE",
    "changed_settings",
    "listen_family",
    "load_config",
    "load_config_sourced",
    "parse_setting",
    "resolve_host",
    "resolve_ipv4",
    "unknown_variables",
]

MAX_CONFIG_FILE = 4 << 20


def resolve_host(
    host: str,
    family: int = socket.AF_UNSPEC,
    *,
    getaddrinfo: Callable[..., list[Any]] = socket.getaddrinfo,
) -> str:
    """Resolve once at load time so a bad endpoint fails start-up, not the first handshake.

    `family` is what the WireGuard socket can reach (AF_INET, AF_INET6, or AF_UNSPEC for a
    dual-stack one); a name with both A and AAAA records then takes the first answer in
    the resolver's order (RFC 6724, /etc/gai.conf), as wg(8) does. AI_ADDRCONFIG leaves
    out a family the host has no address of, so a dual-stack listener on a host without
    IPv6 connectivity does not pick an AAAA record it could never reach."""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    flags = socket.AI_ADDRCONFIG if family == socket.AF_UNSPEC else 0
    try:
        infos = getaddrinfo(host, None, family, socket.SOCK_DGRAM, 0, flags)
    except (OSError, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ValueError(f"cannot resolve {host!r}: {reason}") from None
    for info in infos:
        if info[0] in (socket.AF_INET, socket.AF_INET6):
            addr = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                return str(addr.ipv4_mapped)
            return str(addr)
    kinds = "IPv4 " if family == socket.AF_INET else "IPv6 " if family == socket.AF_INET6 else ""
    raise ValueError(f"{host!r} has no {kinds}address")


def resolve_ipv4(host: str) -> str:
    """An IPv4 address for `host` (what a router listening on IPv4 can reach)."""
    return resolve_host(host, socket.AF_INET)


def listen_family(listen_addr: str) -> int:
    """Which peer addresses a WireGuard socket bound to `listen_addr` can reach:
    AF_UNSPEC (both) for the dual-stack wildcard."""
    if listen_addr == "::":
        return socket.AF_UNSPEC
    return socket.AF_INET6 if ":" in listen_addr else socket.AF_INET


def _parse_value(f: Field, raw: str, resolve: Callable[[str], str]) -> Any:
    kind = f.kind
    if raw == "" and kind not in ("cidrs", "forwards"):
        raise ValueError("empty value")
    if kind == "bool":
        return parse_bool(raw)
    if kind == "flag":
        return True
    if kind == "int":
        return parse_int(raw, ge=f.ge, le=f.le, gt=f.gt)
    if kind == "keepalive":
        return 0 if raw.lower() == "off" else parse_int(raw, ge=f.ge, le=f.le, gt=f.gt)
    if kind == "duration":
        seconds = parse_duration(raw)
        check_range(seconds, raw, ge=f.ge, le=f.le, gt=f.gt, duration=True)
        return seconds
    if kind == "choice":
        return parse_choice(raw, get_args(f.base), f.extra.get("aliases", {}))
    if kind == "cidrs":
        return parse_cidrs(raw)
    if kind == "allowed_ips":
        return parse_allowed_ips(raw)
    if kind == "ipv6":
        return str(parse_ipv6(raw))
    if kind == "unicast_ipv6":
        return parse_unicast_ipv6(raw)
    if kind == "forwards":
        return parse_forwards(raw)
    if kind == "ipv4":
        return str(parse_ipv4(raw))
    if kind == "upstreams":
        return parse_upstreams(raw)
    if kind == "pool":
        return parse_pool(raw)
    if kind == "unicast_ipv4":
        return parse_unicast_ipv4(raw)
    if kind == "listen_addr":
        return parse_listen_addr(raw)
    if kind == "ifname":
        return parse_ifname(raw)
    if kind == "hostname":
        return parse_hostname(raw)
    if kind == "url":
        return parse_url(raw)
    if kind == "path":
        return raw
    if kind == "dir":
        return os.path.abspath(os.path.expanduser(raw))
    if kind == "public_endpoint":
        return parse_public_endpoint(raw)
    if kind == "hostport":
        return parse_hostport(raw)
    if kind == "endpoint":
        host, port = parse_endpoint(raw)
        try:
            return (str(ipaddress.ip_address(host)), port)
        except ValueError:
            return (resolve(host), port)
    raise AssertionError(f"unhandled kind {kind}")


def _parse(f: Field, raw: str, setting: str, resolve: Callable[[str], str]) -> Any:
    if f.kind == "key":
        return decode_key(raw, setting)
    try:
        return _parse_value(f, raw, resolve)
    except ValueError as e:
        raise ConfigError(setting, str(e)) from None


def changed_settings(old: Config, new: Config) -> list[str]:
    """Names of the settings whose values differ (peers, the private key and the forwards
    aside: a reload applies those), for a reload to say which changes wait for a restart."""
    out = []
    for f in CONFIG_FIELDS:
        if f.path[0] in ("peers", "private_key", "forward_tcp", "forward_udp"):
            continue
        a: Any = old
        b: Any = new
        for part in f.path:
            a, b = getattr(a, part), getattr(b, part)
        if a != b:
            out.append(f.env)
    return out


def parse_setting(
    env: Mapping[str, str], name: str, *, resolve: Callable[[str], str] = resolve_ipv4
) -> Any:
    """One setting from the environment, parsed and validated alone (None when unset), for
    commands that need nothing else: `wgslirp healthcheck` must not fail, or resolve peer
    host names, because of settings it does not use."""
    f = next((f for f in CONFIG_FIELDS if f.env == name), None)
    if f is None:
        raise KeyError(name)
    raw = env.get(name, "").strip()
    return _parse(f, raw, name, resolve) if raw else None


class _Source(NamedTuple):
    raw: str
    setting: str


def _peer_from(
    lookup: Callable[[Field], _Source | None],
    missing: ConfigError,
    resolve: Callable[[str], str],
) -> PeerConfig:
    kwargs: dict[str, Any] = {}
    for f in PEER_FIELDS:
        src = lookup(f)
        if src is None:
            if f.path[-1] == "public_key":
                raise missing
            continue
        kwargs[f.path[-1]] = _parse(f, src.raw, src.setting, resolve)
    return PeerConfig(**kwargs)


def _load_file(
    path: str, resolve: Callable[[str], str]
) -> tuple[dict[str, _Source], list[tuple[PeerConfig, str]]]:
    try:
        # utf-8-sig: an editor's byte-order mark is not a setting. Bounded: a config is
        # kilobytes, and --config /dev/zero must end with an error, not fill memory.
        with open(path, encoding="utf-8-sig") as fh:
            text = fh.read(MAX_CONFIG_FILE + 1)
        if len(text) > MAX_CONFIG_FILE:
            raise ConfigError(path, f"config file larger than {MAX_CONFIG_FILE >> 20} MiB")
    except OSError as e:
        raise ConfigError(path, f"cannot read config file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "config file is not UTF-8 text") from None

    scalars: dict[str, _Source] = {}
    peers: list[tuple[PeerConfig, str]] = []
    for section in parse_wg_quick(text, path):
        prefix = f"{path} [{section.label}]"
        if section.kind == "Interface":
            for f in CONFIG_FIELDS:
                ini = f.extra.get("ini")
                value = section.get(ini) if ini else None
                if ini and f.kind == "forwards":  # repeatable, like AllowedIPs
                    value = ", ".join(section.get_all(ini)) or None
                if value is not None:
                    scalars[f.env] = _Source(value, f"{prefix} {ini}")
            continue

        def lookup(f: Field, section: WgSection = section, prefix: str = prefix) -> _Source | None:
            ini = str(f.extra["ini"])
            values = section.get_all(ini)
            if not values:
                return None
            return _Source(", ".join(values), f"{prefix} {ini}")

        missing = ConfigError(f"{prefix} PublicKey", "missing; every [Peer] needs one")
        peers.append((_peer_from(lookup, missing, resolve), f"{prefix} PublicKey"))
    return scalars, peers


_PEER_INDEX = re.compile(r"[A-Za-z0-9_]+")


def _peers_from_env(
    env: Mapping[str, str], resolve: Callable[[str], str]
) -> list[tuple[PeerConfig, str]]:
    peers: list[tuple[PeerConfig, str]] = []
    seen: set[str] = set()
    for token in env["WG_PEERS"].split(","):
        index = token.strip()
        if not index:
            continue
        if not _PEER_INDEX.fullmatch(index):
            raise ConfigError("WG_PEERS", f"{index!r} is not a peer index (expected e.g. 0,1)")
        if index in seen:
            raise ConfigError("WG_PEERS", f"index {index} is listed more than once")
        seen.add(index)

        def lookup(f: Field, index: str = index) -> _Source | None:
            return _from_env(env, f.env.replace("<i>", index))

        key_var = f"WG_PEER_{index}_PUBLIC_KEY"
        missing = ConfigError(key_var, f"not set, but WG_PEERS lists peer {index}")
        peers.append((_peer_from(lookup, missing, resolve), key_var))
    return peers


def _from_env(env: Mapping[str, str], name: str) -> _Source | None:
    """Empty means unset, as in the original, so ``FOO=`` in a compose file is harmless."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    return _Source(raw.strip(), name)


def load_config(
    env: Mapping[str, str],
    config_file: str | None = None,
    *,
    resolve: Callable[[str], str] = resolve_ipv4,
    cpus: Callable[[], int] = usable_cpus,
) -> Config:
    """Build the effective configuration; see :func:`load_config_sourced`."""
    return load_config_sourced(env, config_file, resolve=resolve, cpus=cpus)[0]


def _check_endpoint_family(peer: PeerConfig, setting: str, listen_addr: str, family: int) -> None:
    """A literal endpoint the WireGuard socket cannot send to fails start-up, naming it."""
    if peer.endpoint is None or family == socket.AF_UNSPEC:
        return
    host, port = peer.endpoint
    v6 = ":" in host
    if v6 == (family == socket.AF_INET6):
        return
    label = _peer_label(setting)
    where = label + (" Endpoint" if setting.endswith(" PublicKey") else "_ENDPOINT")
    shown = f"[{host}]:{port}" if v6 else f"{host}:{port}"
    raise ConfigError(
        where,
        f"{shown} is {'IPv6' if v6 else 'IPv4'}, but the WireGuard socket listens on "
        f"{'IPv4' if v6 else 'IPv6'} only (WG_LISTEN_ADDR={listen_addr}; "
        f"WG_LISTEN_ADDR=:: takes both)",
    )


def _peer_label(setting: str) -> str:
    """``WG_PEER_1_PUBLIC_KEY`` -> ``WG_PEER_1``; ``f [Peer 2] PublicKey`` -> ``f [Peer 2]``:
    how an error about a whole peer names where the user wrote it."""
    for suffix in ("_PUBLIC_KEY", " PublicKey"):
        if setting.endswith(suffix):
            return setting[: -len(suffix)]
    return setting


def load_config_sourced(
    env: Mapping[str, str],
    config_file: str | None = None,
    *,
    resolve: Callable[[str], str] | None = None,
    cpus: Callable[[], int] = usable_cpus,
) -> tuple[Config, tuple[str, ...]]:
    """Build the effective configuration; raise ConfigError on the first bad setting.

    Environment variables override the file's scalar settings; ``WG_PEERS``,
    when set, replaces the file's peer list as a whole because merging two
    peer lists by position would be guesswork. ``resolve`` maps a peer
    endpoint's host name to an address (raising ValueError when it cannot); it is
    the only network access while loading, passed in so tests and tools can load
    without DNS. By default it is :func:`resolve_host` for the family the
    WireGuard socket of ``WG_LISTEN_ADDR`` reaches. ``cpus`` says how many CPUs
    the process may use, for ``PROCESSOR_WORKERS`` when it is unset (a test
    passes its own).

    Also returns, for each of the Config's peers in order, where it was configured
    (``WG_PEER_1``, ``wg.conf [Peer 2]``), so a later check (the peers file's clashes)
    can name both sides.
    """
    listen_src = _from_env(env, "WG_LISTEN_ADDR")
    listen_addr: str = (
        _parse(BY_ENV["WG_LISTEN_ADDR"], listen_src.raw, listen_src.setting, resolve_ipv4)
        if listen_src is not None
        else DEFAULT_LISTEN_ADDR
    )
    family = listen_family(listen_addr)
    if resolve is None:
        resolve = functools.partial(resolve_host, family=family)
    file_scalars: dict[str, _Source] = {}
    peers: list[tuple[PeerConfig, str]] = []
    if config_file is not None:
        file_scalars, peers = _load_file(config_file, resolve)

    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {name: {} for name in NESTED}
    for f in CONFIG_FIELDS:
        if f.kind == "peers":
            continue
        src = _from_env(env, f.env) or file_scalars.get(f.env)
        if src is None:
            continue
        value = _parse(f, src.raw, src.setting, resolve)
        if len(f.path) == 1:
            top[f.path[0]] = value
        else:
            nested[f.path[0]][f.path[1]] = value

    if _from_env(env, "WG_PEERS") is not None:
        peers = _peers_from_env(env, resolve)

    # The original turns metrics on when either variable is set.
    if _from_env(env, "METRICS_INTERVAL") is not None:
        nested["metrics"]["log"] = True

    if "processor_workers" not in top:
        top["processor_workers"] = workers_for_cpus(cpus())
    if "state_dir" not in top:
        top["state_dir"] = default_state_dir(env)
    endpoint = top.pop("public_endpoint", None)
    if endpoint is not None:
        host, port = endpoint
        host = f"[{host}]" if ":" in host else host
        top["public_endpoint"] = f"{host}:{port or top.get('listen_port', 51820)}"

    seen: dict[bytes, str] = {}
    server_pub = public_key(top["private_key"]) if top.get("private_key") else None
    for peer, setting in peers:
        if peer.public_key in seen:
            raise ConfigError(setting, f"same public key as {seen[peer.public_key]}")
        if peer.public_key == server_pub:
            raise ConfigError(setting, "is the router's own public key (from WG_PRIVATE_KEY)")
        seen[peer.public_key] = setting
        _check_endpoint_family(peer, setting, listen_addr, family)
    top["peers"] = tuple(p for p, _ in peers)

    gw, dns = top.get("gateway_ip"), top.get("dns_ip")
    if gw is not None and gw == dns:
        raise ConfigError("WG_DNS_IP", f"must differ from WG_GATEWAY_IP ({gw})")
    gw6, dns6 = top.get("gateway_ip6"), top.get("dns_ip6")
    if gw6 is not None and gw6 == dns6:
        raise ConfigError("WG_DNS_IP6", f"must differ from WG_GATEWAY_IP6 ({gw6})")

    for name, cls in NESTED.items():
        top[name] = cls(**nested[name])
    return Config(**top), tuple(_peer_label(setting) for _, setting in peers)


_IGNORED = frozenset(
    {
        # Read by the original but inert there; accepted so old deployments load.
        "SIMPLE_MODE",
        "WG_TUN_ASYNC_WRITE",
        # Environment of wg(8)/wg-quick(8), which may share a shell with us.
        "WG_COLOR_MODE",
        "WG_HIDE_KEYS",
        "WG_ENDPOINT_RESOLUTION_RETRIES",
        "WG_QUICK_USERSPACE_IMPLEMENTATION",
        "WG_SUDO",
        "WG_THREADS",
        "WG_PROCESS_FOREGROUND",
        "WG_TUN_NAME_FILE",
        "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD",  # wireguard-go's
        "WG_UAPI_FD",
        "WG_TUN_FD",
    }
)
_OUR_PREFIXES = (
    "WG_",
    "WGSLIRP_",
    "TCP_",
    "UDP_",
    "METRICS_",
    "HEALTH_",
    "PROCESSOR_",
    "EGRESS_",
)
_PEER_VAR = re.compile(
    r"WG_PEER_[A-Za-z0-9_]+_(?:" + "|".join(f.env.split("<i>_")[1] for f in PEER_FIELDS) + ")"
)


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """Names that look like ours but are not, so the CLI can warn about typos."""
    out = []
    for name in sorted(env):
        if not name.startswith(_OUR_PREFIXES) or name in BY_ENV or name in _IGNORED:
            continue
        if name == "HEALTHCHECK" or _PEER_VAR.fullmatch(name):
            continue
        if name.startswith(("WG_TUN_IN_", "FLOW_")):
            continue
        out.append(name)
    return out
