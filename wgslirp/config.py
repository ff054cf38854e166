"""Every setting of wgslirp: its name, default, limits and meaning, in one place.

The msgspec Structs below are the single source of truth. Each field carries a
``msgspec.Meta`` with the description shown in ``docs/configuration.md`` and an
``extra`` dict holding the environment variable name (kept identical to the Go
original so existing deployments keep working) and how to parse it. The loader,
the ``check-config`` renderer and the documentation generator all walk the same
field list, so none of them can drift from the others.

Unlike the Go original, a value that cannot be parsed is an error rather than a
silent fallback to the default: a typo in a port or an interval should stop the
router at start-up with a message naming the variable, not surface later as
mysterious behaviour.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import socket
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from wgslirp.errors import ConfigError
from wgslirp.keys import decode_key, encode_key, public_key

__all__ = [
    "Config",
    "ConfigError",
    "EgressConfig",
    "HealthConfig",
    "MetricsConfig",
    "PeerConfig",
    "Setting",
    "TcpConfig",
    "UdpConfig",
    "WgSection",
    "default_state_dir",
    "format_duration",
    "load_config",
    "parse_duration",
    "parse_wg_quick",
    "redacted",
    "render_check",
    "render_markdown",
    "resolve_ipv4",
    "settings_table",
    "unknown_variables",
]


# --------------------------------------------------------------------------
# Field metadata helpers

GROUPS = (
    "WireGuard",
    "Peers",
    "Addresses and state",
    "Packet processing",
    "Logging and diagnostics",
    "Overlay routing",
    "Metrics",
    "Health checks",
    "TCP",
    "UDP",
    "Egress policy",
    "IP header synthesis",
)


def _doc(env: str, description: str, *, group: str, **extra: Any) -> Meta:
    """Attach the user-facing name and help text to a field."""
    if group not in GROUPS:
        raise ValueError(f"unknown settings group {group!r}")
    return Meta(description=description, extra={"env": env, "group": group, **extra})


Port = Annotated[int, Meta(ge=1, le=65535)]
Key = Annotated[bytes, Meta(min_length=32, max_length=32)]
Count = Annotated[int, Meta(ge=0, le=1_000_000)]

_MAX_INT32 = 2**31 - 1


# --------------------------------------------------------------------------
# The settings


class PeerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One WireGuard peer, from ``WG_PEER_<i>_*`` or a ``[Peer]`` section."""

    public_key: Annotated[
        Key,
        _doc(
            "WG_PEER_<i>_PUBLIC_KEY",
            "Base64 public key of the peer (required for every index in WG_PEERS).",
            group="Peers",
            ini="PublicKey",
            kind="key",
        ),
    ]
    preshared_key: Annotated[
        Key | None,
        _doc(
            "WG_PEER_<i>_PRESHARED_KEY",
            "Optional base64 pre-shared key mixed into the handshake.",
            group="Peers",
            ini="PresharedKey",
            kind="key",
            secret=True,
        ),
    ] = None
    allowed_ips: Annotated[
        tuple[str, ...],
        _doc(
            "WG_PEER_<i>_ALLOWED_IPS",
            "Comma-separated IPv4 CIDRs the peer may use as source addresses (cryptokey "
            "routing). A bare address means /32; host bits are cleared, so 10.77.0.5/24 "
            "becomes 10.77.0.0/24. IPv6 entries are rejected.",
            group="Peers",
            ini="AllowedIPs",
            kind="cidrs",
        ),
    ] = ()
    endpoint: Annotated[
        tuple[str, int] | None,
        _doc(
            "WG_PEER_<i>_ENDPOINT",
            "Optional host:port of the peer; host names are resolved to IPv4 at start-up. "
            "Roaming peers update it from their authenticated packets.",
            group="Peers",
            ini="Endpoint",
            kind="endpoint",
        ),
    ] = None
    keepalive: Annotated[
        int,
        Meta(ge=0, le=65535),
        _doc(
            "WG_PEER_<i>_KEEPALIVE",
            "Persistent keepalive interval in seconds (0 = off; 25 is typical behind NAT).",
            group="Peers",
            ini="PersistentKeepalive",
            kind="keepalive",
        ),
    ] = 0


class MetricsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Periodic metrics log lines and the optional Prometheus listener."""

    log: Annotated[
        bool,
        _doc(
            "METRICS_LOG",
            "Periodic metrics log lines. Any non-empty value enables them (even 0, as in "
            "the original); setting METRICS_INTERVAL also enables them.",
            group="Metrics",
            flag=True,
        ),
    ] = False
    interval: Annotated[
        float,
        Meta(ge=0.1),
        _doc(
            "METRICS_INTERVAL",
            "Time between metrics log lines, as a Go duration (15s, 1m30s, 500ms). At least "
            "100ms (0s, which crashes the original, is refused).",
            group="Metrics",
        ),
    ] = 30.0
    format: Annotated[
        Literal["text", "json"],
        _doc("METRICS_FORMAT", "Format of the metrics log lines.", group="Metrics"),
    ] = "text"
    listen: Annotated[
        tuple[str, int] | None,
        _doc(
            "METRICS_LISTEN",
            "host:port for an HTTP listener serving Prometheus text metrics and health "
            "(an empty host means 0.0.0.0). Off when unset.",
            group="Metrics",
            kind="hostport",
        ),
    ] = None


class HealthConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Start-up probes that tell container egress problems from tunnel problems."""

    enabled: Annotated[
        bool,
        _doc(
            "HEALTHCHECK",
            "Run the auxiliary health probes. Any non-empty value enables them.",
            group="Health checks",
            flag=True,
        ),
    ] = False
    http_url: Annotated[
        str,
        _doc(
            "HEALTH_HTTP_URL",
            "URL fetched with the host stack to check direct egress.",
            group="Health checks",
            kind="url",
        ),
    ] = "https://httpbin.org/ip"
    dns_name: Annotated[
        str,
        _doc(
            "HEALTH_DNS_NAME",
            "Name resolved with the host resolver to check DNS.",
            group="Health checks",
            kind="hostname",
        ),
    ] = "example.com"
    dns_ip: Annotated[
        str,
        _doc(
            "HEALTH_DNS_IP",
            "DNS server queried through the slirp UDP path to check the data path.",
            group="Health checks",
            kind="ipv4",
        ),
    ] = "1.1.1.1"


class TcpConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The user-space TCP endpoint that terminates guest connections."""

    ack_delay_ms: Annotated[
        int,
        Meta(ge=0, le=500),
        _doc(
            "TCP_ACK_DELAY_MS",
            "Delayed-ACK timer in milliseconds; lower values (e.g. 5) cut ACK latency. "
            "RFC 1122 caps it at 500.",
            group="TCP",
        ),
    ] = 10
    enable_sack: Annotated[
        bool,
        _doc(
            "TCP_ENABLE_SACK",
            "Answer a guest's SACK-permitted option so both sides use selective "
            "acknowledgements (RFC 2018; never offered to a guest that did not ask). On by "
            "default here (the Go original defaulted off): it makes loss recovery far faster.",
            group="TCP",
        ),
    ] = True
    mss_clamp: Annotated[
        Annotated[int, Meta(ge=88, le=65495)] | None,
        _doc(
            "TCP_MSS_CLAMP",
            "Clamp the advertised MSS (bytes). Leave unset unless troubleshooting path MTU.",
            group="TCP",
        ),
    ] = None
    pace_us: Annotated[
        int,
        Meta(ge=0, le=1_000_000),
        _doc(
            "TCP_PACE_US",
            "Microseconds between host-to-guest segments (0 = no pacing). Only for "
            "marginal paths where bursts cause loss.",
            group="TCP",
        ),
    ] = 0
    gate_log: Annotated[
        Literal["off", "debug", "info"],
        _doc(
            "TCP_GATE_LOG",
            "Level of the send-gating log lines (0/false/no mean off, 1/true/yes mean info).",
            group="TCP",
            aliases={
                "0": "off",
                "false": "off",
                "no": "off",
                "1": "info",
                "true": "info",
                "yes": "info",
            },
        ),
    ] = "info"
    cc: Annotated[
        Literal["newreno", "cubic", "off"],
        _doc(
            "TCP_CC",
            "Congestion control for the host-to-guest direction (reno and new-reno are "
            "accepted for newreno).",
            group="TCP",
            aliases={"reno": "newreno", "new-reno": "newreno"},
        ),
    ] = "newreno"
    error_signal: Annotated[
        Literal["icmp", "rst", "none"],
        _doc(
            "TCP_ERROR_SIGNAL",
            "How a failed outbound connect is reported to the guest: ICMP unreachable, "
            "TCP RST, or nothing.",
            group="TCP",
        ),
    ] = "icmp"
    fast_dial_ms: Annotated[
        int,
        Meta(ge=0, le=60_000),
        _doc(
            "TCP_FAST_DIAL_MS",
            "How long to wait for the host connect before answering the guest's SYN, so "
            "immediate refusals become ICMP/RST instead of a SYN-ACK then reset.",
            group="TCP",
        ),
    ] = 5
    sock_rcvbuf: Annotated[
        Annotated[int, Meta(ge=1, le=_MAX_INT32)] | None,
        _doc("TCP_SOCK_RCVBUF", "SO_RCVBUF for host TCP sockets (bytes).", group="TCP"),
    ] = None
    sock_sndbuf: Annotated[
        Annotated[int, Meta(ge=1, le=_MAX_INT32)] | None,
        _doc("TCP_SOCK_SNDBUF", "SO_SNDBUF for host TCP sockets (bytes).", group="TCP"),
    ] = None
    rcv_buffer: Annotated[
        int,
        Meta(ge=16 * 1024, le=64 * 1024 * 1024),
        _doc(
            "TCP_RCV_BUFFER",
            "Bytes of guest data each connection may hold on its way to the host: the "
            "largest window the guest is offered, so one upload's speed is at most this "
            "per round trip (1 MiB: about 170 Mbit/s at 50 ms). Memory is used only as "
            "data waits; an idle connection costs a few KiB whatever the size.",
            group="TCP",
        ),
    ] = 1024 * 1024
    snd_buffer: Annotated[
        int,
        Meta(ge=16 * 1024, le=64 * 1024 * 1024),
        _doc(
            "TCP_SND_BUFFER",
            "Bytes toward the guest each connection may hold (in flight and not yet sent): "
            "one download's speed is at most this per round trip. Larger suits long round "
            "trips; a client with small UDP socket buffers (Debian's wireguard-go before "
            "0.0.20230223) drops the bigger bursts.",
            group="TCP",
        ),
    ] = 1024 * 1024
    ack_idle_gate_ms: Annotated[
        int,
        Meta(ge=0, le=86_400_000),
        _doc(
            "TCP_ACK_IDLE_GATE_MS",
            "Stop reading from the host socket after this long without guest ACK progress "
            "(0 disables).",
            group="TCP",
        ),
    ] = 6000
    ack_idle_min_inflight: Annotated[
        Annotated[int, Meta(ge=0, le=_MAX_INT32)] | None,
        _doc(
            "TCP_ACK_IDLE_MIN_INFLIGHT",
            "Bytes in flight needed before the ACK-idle gate applies; unset means one MSS.",
            group="TCP",
        ),
    ] = None
    ack_idle_fail_sec: Annotated[
        int,
        Meta(ge=1, le=86_400),
        _doc(
            "TCP_ACK_IDLE_FAIL_SEC",
            "Reset a flow after this many seconds without guest ACK progress.",
            group="TCP",
        ),
    ] = 120
    ws_out: Annotated[
        int,
        Meta(ge=0, le=14),
        _doc(
            "TCP_WS_OUT",
            "Window-scale shift advertised to the guest (RFC 7323 allows 0-14). Read by "
            "the original's code though absent from its README.",
            group="TCP",
        ),
    ] = 7
    init_cwnd_mss: Annotated[
        Annotated[int, Meta(ge=1, le=1000)] | None,
        _doc(
            "TCP_INIT_CWND_MSS",
            "Lower the initial congestion window to this many MSS (unset = RFC 6928's "
            "10 MSS / 14600 bytes).",
            group="TCP",
        ),
    ] = None
    pend_cap_bytes: Annotated[
        int,
        Meta(ge=0, le=2**30),
        _doc(
            "TCP_PEND_CAP_BYTES",
            "Guest bytes buffered per flow while the host connect is still in progress.",
            group="TCP",
        ),
    ] = 64 * 1024
    log_handshake: Annotated[
        bool,
        _doc("TCP_LOG_HANDSHAKE", "Log every TCP handshake.", group="TCP"),
    ] = False
    ack_trace: Annotated[
        bool,
        _doc("TCP_ACK_TRACE", "Trace ACK processing (very chatty).", group="TCP"),
    ] = False
    max_flows: Annotated[
        Count,
        _doc(
            "TCP_MAX_FLOWS",
            "Most TCP flows at once across all peers (0 = unlimited). Each flow holds a "
            "host socket, so this keeps a busy guest from exhausting file descriptors.",
            group="TCP",
        ),
    ] = 4096
    max_flows_per_peer: Annotated[
        Count,
        _doc(
            "TCP_MAX_FLOWS_PER_PEER",
            "Most TCP flows one peer may hold (0 = unlimited), so one peer cannot starve "
            "the others.",
            group="TCP",
        ),
    ] = 1024


class UdpConfig(msgspec.Struct, frozen=True, kw_only=True):
    """UDP NAT table limits."""

    idle_timeout: Annotated[
        float,
        Meta(gt=0),
        _doc(
            "UDP_IDLE_TIMEOUT",
            "Close a UDP flow's host socket after this long without traffic (Go duration).",
            group="UDP",
        ),
    ] = 60.0
    max_flows: Annotated[
        Count,
        _doc("UDP_MAX_FLOWS", "Most UDP flows at once (0 = unlimited).", group="UDP"),
    ] = 4096
    max_flows_per_peer: Annotated[
        Count,
        _doc(
            "UDP_MAX_FLOWS_PER_PEER",
            "Most UDP flows one peer may hold (0 = unlimited).",
            group="UDP",
        ),
    ] = 1024


class EgressConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Overrides for the built-in destination policy."""

    allow_cidrs: Annotated[
        tuple[str, ...],
        _doc(
            "EGRESS_ALLOW_CIDRS",
            "Comma-separated IPv4 CIDRs guests may reach even though the default policy "
            "denies them (loopback, 0.0.0.0/8, link-local, multicast, broadcast, and the "
            "host's own addresses; those only by an entry narrower than 0.0.0.0/0).",
            group="Egress policy",
        ),
    ] = ()
    deny_cidrs: Annotated[
        tuple[str, ...],
        _doc(
            "EGRESS_DENY_CIDRS",
            "Comma-separated IPv4 CIDRs guests may never reach; deny wins over allow.",
            group="Egress policy",
        ),
    ] = ()


def default_state_dir(env: Mapping[str, str]) -> str:
    """Follow the XDG base-directory rules so keys land where users expect state."""
    xdg = env.get("XDG_STATE_HOME", "").strip()
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "wgslirp")
    home = env.get("HOME", "").strip() or os.path.expanduser("~")
    return os.path.join(home, ".local", "state", "wgslirp")


def _env_state_dir() -> str:
    return default_state_dir(os.environ)


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """The router's whole configuration, immutable once loaded."""

    private_key: Annotated[
        Key | None,
        _doc(
            "WG_PRIVATE_KEY",
            "Base64 private key of the router. When unset, a key is created once in the "
            "state directory (zero-config start).",
            group="WireGuard",
            ini="PrivateKey",
            kind="key",
            secret=True,
            default_doc="from the state directory",
        ),
    ] = None
    listen_addr: Annotated[
        str,
        _doc(
            "WG_LISTEN_ADDR",
            "IPv4 address the WireGuard UDP socket binds to.",
            group="WireGuard",
            kind="listen_ipv4",
        ),
    ] = "0.0.0.0"
    listen_port: Annotated[
        Port,
        _doc(
            "WG_LISTEN_PORT",
            "UDP port for WireGuard.",
            group="WireGuard",
            ini="ListenPort",
        ),
    ] = 51820
    mtu: Annotated[
        int,
        Meta(ge=576, le=9000),
        _doc(
            "WG_MTU",
            "Plaintext MTU inside the tunnel; synthesized packets never exceed it.",
            group="WireGuard",
            ini="MTU",
        ),
    ] = 1380
    interface_name: Annotated[
        str,
        _doc(
            "WG_INTERFACE_NAME",
            "Name the device reports (UAPI socket, logs, metrics); follows Linux interface "
            "name rules so the same name works with wg(8).",
            group="WireGuard",
            kind="ifname",
        ),
    ] = "wgslirp0"
    peers: Annotated[
        tuple[PeerConfig, ...],
        _doc(
            "WG_PEERS",
            "Comma-separated peer indices (e.g. 0,1); each index is configured by the "
            "`WG_PEER_<i>_*` variables below. When set, replaces the config file's peers.",
            group="Peers",
            kind="peers",
            default_doc="none (one generated client in zero-config start)",
        ),
    ] = ()
    gateway_ip: Annotated[
        str | None,
        _doc(
            "WG_GATEWAY_IP",
            "Tunnel address that acts as an alias for the host (like slirp's 10.0.2.2): "
            "guest traffic to it goes to WG_GATEWAY_HOST_IP. Off when unset, except in "
            "zero-config start where it is 10.77.0.1.",
            group="Addresses and state",
            kind="unicast_ipv4",
        ),
    ] = None
    gateway_host_ip: Annotated[
        str,
        _doc(
            "WG_GATEWAY_HOST_IP",
            "Host address that traffic to WG_GATEWAY_IP is sent to.",
            group="Addresses and state",
            kind="ipv4",
        ),
    ] = "127.0.0.1"
    dns_ip: Annotated[
        str | None,
        _doc(
            "WG_DNS_IP",
            "Tunnel address that answers DNS queries (UDP and TCP port 53) through the host "
            "resolver. Off when unset; generated client configs list it as DNS.",
            group="Addresses and state",
            kind="unicast_ipv4",
        ),
    ] = None
    dns_upstream: Annotated[
        tuple[str, ...],
        _doc(
            "WG_DNS_UPSTREAM",
            "Comma-separated resolvers (ip[:port], port 53 by default) that queries to "
            "WG_DNS_IP are forwarded to. When unset, the nameservers of /etc/resolv.conf.",
            group="Addresses and state",
            kind="upstreams",
            default_doc="from /etc/resolv.conf",
        ),
    ] = ()
    public_endpoint: Annotated[
        str | None,
        _doc(
            "WG_PUBLIC_ENDPOINT",
            "host[:port] clients should connect to, written into generated client configs "
            "(the port defaults to WG_LISTEN_PORT). When unset, a local address is guessed.",
            group="Addresses and state",
            kind="public_endpoint",
        ),
    ] = None
    state_dir: Annotated[
        str,
        _doc(
            "WGSLIRP_STATE_DIR",
            "Directory (mode 0700) holding the generated server.key and client.key.",
            group="Addresses and state",
            kind="dir",
            default_doc="$XDG_STATE_HOME/wgslirp or ~/.local/state/wgslirp",
        ),
    ] = msgspec.field(default_factory=_env_state_dir)
    processor_workers: Annotated[
        int,
        Meta(ge=0, le=256),
        _doc(
            "PROCESSOR_WORKERS",
            "Worker processes that run the TCP/UDP/ICMP bridges; 0 runs one worker inline "
            "in the ingress process (debugging, tiny hosts).",
            group="Packet processing",
        ),
    ] = 4
    processor_queue_cap: Annotated[
        int,
        Meta(ge=1, le=1 << 20),
        _doc(
            "PROCESSOR_QUEUE_CAP",
            "Packets queued from ingress to each worker before new ones are dropped.",
            group="Packet processing",
        ),
    ] = 1000
    tun_queue_cap: Annotated[
        int,
        Meta(ge=1, le=1 << 20),
        _doc(
            "WG_TUN_QUEUE_CAP",
            "Packets queued from each worker back to ingress for encryption.",
            group="Packet processing",
        ),
    ] = 1024
    hung_restart: Annotated[
        float,
        Meta(ge=0, le=3600),
        _doc(
            "PROCESSOR_HUNG_RESTART",
            "How long ingress or a worker may go without turning its event loop (a "
            "deadlock, SIGSTOP, a call that never returns) before the supervisor kills and "
            "replaces it, as a duration; 0 disables. Ignored with PROCESSOR_WORKERS=0.",
            group="Packet processing",
        ),
    ] = 20.0
    pooling: Annotated[
        bool,
        _doc(
            "POOLING",
            "Reuse packet buffers instead of allocating per packet.",
            group="Packet processing",
        ),
    ] = False
    pool_wrap: Annotated[
        bool,
        _doc(
            "POOL_WRAP",
            "Also pool packet wrapper objects (read by the original's code, off by default).",
            group="Packet processing",
        ),
    ] = False
    debug: Annotated[
        bool,
        _doc("DEBUG", "Verbose logging.", group="Logging and diagnostics"),
    ] = False
    log_format: Annotated[
        Literal["text", "json"],
        _doc(
            "LOG_FORMAT",
            "Log lines as plain text or one JSON object per line.",
            group="Logging and diagnostics",
        ),
    ] = "text"
    wg_debug: Annotated[
        bool,
        _doc(
            "WG_DEBUG",
            "Verbose WireGuard protocol logging (handshakes, timers).",
            group="Logging and diagnostics",
        ),
    ] = False
    pcap_path: Annotated[
        str | None,
        _doc(
            "WG_PCAP",
            "File to write decrypted IPv4 packets to (pcap, LINKTYPE_RAW).",
            group="Logging and diagnostics",
            kind="path",
        ),
    ] = None
    overlay_routing: Annotated[
        bool,
        _doc(
            "WG_OVERLAY_ROUTING",
            "Route packets addressed to another peer's AllowedIPs back into the tunnel "
            "instead of out through host sockets.",
            group="Overlay routing",
        ),
    ] = False
    overlay_exclude_cidrs: Annotated[
        tuple[str, ...],
        _doc(
            "WG_OVERLAY_EXCLUDE_CIDRS",
            "Comma-separated IPv4 CIDRs that always leave through host sockets even when "
            "overlay routing would match them.",
            group="Overlay routing",
        ),
    ] = ()
    disable_ipv6: Annotated[
        bool,
        _doc(
            "WG_DISABLE_IPV6",
            "Try to turn IPv6 off through /proc/sys (best effort, needs privileges). Off "
            "by default because outside a container it changes the whole host.",
            group="Overlay routing",
        ),
    ] = False
    copy_tos: Annotated[
        bool,
        _doc(
            "COPY_TOS",
            "Copy DSCP/ECN from the guest's packets into synthesized replies.",
            group="IP header synthesis",
        ),
    ] = False
    ip_ttl: Annotated[
        int,
        Meta(ge=1, le=255),
        _doc(
            "IP_TTL",
            "TTL of synthesized packets sent to guests.",
            group="IP header synthesis",
        ),
    ] = 64
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    tcp: TcpConfig = msgspec.field(default_factory=TcpConfig)
    udp: UdpConfig = msgspec.field(default_factory=UdpConfig)
    egress: EgressConfig = msgspec.field(default_factory=EgressConfig)


# --------------------------------------------------------------------------
# Reading the metadata back


class _Field(NamedTuple):
    path: tuple[str, ...]
    env: str
    description: str
    group: str
    kind: str
    base: Any
    optional: bool
    ge: int | float | None
    le: int | float | None
    gt: int | float | None
    extra: Mapping[str, Any]
    default: Any


def _unwrap(tp: Any) -> tuple[Any, bool, list[Meta]]:
    metas: list[Meta] = []
    optional = False
    while True:
        if get_origin(tp) is Annotated:
            metas.extend(m for m in tp.__metadata__ if isinstance(m, Meta))
            tp = tp.__origin__
            continue
        if get_origin(tp) in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) == 1 and len(get_args(tp)) == 2:
                optional = True
                tp = args[0]
                continue
        return tp, optional, metas


def _first(metas: list[Meta], attr: str) -> Any:
    for m in metas:
        v = getattr(m, attr)
        if v is not None:
            return v
    return None


def _kind_of(base: Any, extra: Mapping[str, Any], where: str) -> str:
    if "kind" in extra:
        return str(extra["kind"])
    if base is bool:
        return "flag" if extra.get("flag") else "bool"
    if base is int:
        return "int"
    if base is float:
        return "duration"
    if get_origin(base) is Literal:
        return "choice"
    if base == tuple[str, ...]:
        return "cidrs"
    raise TypeError(f"{where}: no parser for {base!r}")


def _fields_of(cls: type[msgspec.Struct], prefix: tuple[str, ...] = ()) -> list[_Field]:
    hints = get_type_hints(cls, include_extras=True)
    out: list[_Field] = []
    for info in msgspec.structs.fields(cls):
        base, optional, metas = _unwrap(hints[info.name])
        extra: Mapping[str, Any] = _first(metas, "extra") or {}
        path = (*prefix, info.name)
        if "env" not in extra:
            if isinstance(base, type) and issubclass(base, msgspec.Struct):
                out.extend(_fields_of(base, path))
                continue
            raise TypeError(f"{cls.__name__}.{info.name} has no environment variable")
        if info.default is not msgspec.NODEFAULT:
            default = info.default
        elif info.default_factory is not msgspec.NODEFAULT:
            default = info.default_factory()
        else:
            default = msgspec.NODEFAULT
        out.append(
            _Field(
                path=path,
                env=str(extra["env"]),
                description=str(_first(metas, "description")),
                group=str(extra["group"]),
                kind=_kind_of(base, extra, ".".join(path)),
                base=base,
                optional=optional,
                ge=_first(metas, "ge"),
                le=_first(metas, "le"),
                gt=_first(metas, "gt"),
                extra=extra,
                default=default,
            )
        )
    return out


_CONFIG_FIELDS = _fields_of(Config)
_PEER_FIELDS = _fields_of(PeerConfig)
_NESTED: dict[str, type[msgspec.Struct]] = {
    "metrics": MetricsConfig,
    "health": HealthConfig,
    "tcp": TcpConfig,
    "udp": UdpConfig,
    "egress": EgressConfig,
}
_BY_ENV = {f.env: f for f in _CONFIG_FIELDS}


# --------------------------------------------------------------------------
# Value parsers. Each raises ValueError with the problem; callers add the setting.

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
MAX_DURATION = 365 * 86400.0  # no setting wants longer; beyond it is a typo (or "inf")
MAX_CONFIG_FILE = 4 << 20
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
        raise ValueError(f"{s} is IPv6; wgslirp routes IPv4 only")
    try:
        return str(ipaddress.IPv4Network(s, strict=False))
    except ValueError:
        raise ValueError(f"{s!r} is not an IPv4 address or CIDR") from None


def _parse_cidrs(raw: str) -> tuple[str, ...]:
    out: list[str] = []
    for part in raw.split(","):
        if part.strip():
            net = _parse_cidr(part)
            if net not in out:
                out.append(net)
    return tuple(out)


def _parse_upstreams(raw: str) -> tuple[str, ...]:
    out: list[str] = []
    for part in raw.split(","):
        if part.strip():
            host, port = _split_hostport(part.strip(), need_port=False)
            out.append(f"{_parse_ipv4(host)}:{port or 53}")
    return tuple(out)


def _parse_ipv4(raw: str) -> ipaddress.IPv4Address:
    if ":" in raw:
        raise ValueError(f"{raw} is IPv6; wgslirp routes IPv4 only")
    try:
        return ipaddress.IPv4Address(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not an IPv4 address") from None


def _parse_unicast_ipv4(raw: str) -> str:
    addr = _parse_ipv4(raw)
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


def _parse_hostname(raw: str) -> str:
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


def resolve_ipv4(host: str) -> str:
    """Resolve once at load time so a bad endpoint fails start-up, not the first handshake."""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ValueError(f"cannot resolve {host!r}: {reason}") from None
    if not infos:
        raise ValueError(f"{host!r} has no IPv4 address")
    return str(infos[0][4][0])


_IFNAME_BAD = re.compile(r"[/:\s]")


def _parse_ifname(raw: str) -> str:
    if len(raw.encode()) > 15:  # the kernel's IFNAMSIZ counts bytes
        raise ValueError(f"{raw!r} is longer than 15 bytes")
    if raw in (".", "..") or _IFNAME_BAD.search(raw):
        raise ValueError(f"{raw!r} is not a valid interface name (no '/', ':' or spaces)")
    return raw


def _parse_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{raw!r} is not an http:// or https:// URL")
    return raw


def _check_range(value: int | float, raw: str, f: _Field) -> None:
    if f.kind == "duration" and f.ge is not None and value < f.ge:
        raise ValueError(f"{raw} is shorter than the minimum {format_duration(f.ge)}")
    if f.gt is not None and not value > f.gt:
        raise ValueError(f"{raw} must be greater than {f.gt or 'zero'}")
    if f.ge is not None and f.le is not None:
        if not f.ge <= value <= f.le:
            raise ValueError(f"{raw} is out of range {f.ge}-{f.le}")
    elif f.ge is not None and value < f.ge:
        raise ValueError(f"{raw} is below the minimum {f.ge}")
    elif f.le is not None and value > f.le:
        raise ValueError(f"{raw} is above the maximum {f.le}")


def _parse_int(raw: str, f: _Field) -> int:
    if not _INT_RE.fullmatch(raw):
        raise ValueError(f"{raw!r} is not an integer")
    value = int(raw)
    _check_range(value, raw, f)
    return value


def _parse_choice(raw: str, f: _Field) -> str:
    choices = get_args(f.base)
    v = raw.lower()
    v = f.extra.get("aliases", {}).get(v, v)
    if v not in choices:
        raise ValueError(f"{raw!r} is not one of: {', '.join(choices)}")
    return str(v)


def _parse_value(f: _Field, raw: str, resolve: Callable[[str], str]) -> Any:
    kind = f.kind
    if raw == "" and kind != "cidrs":
        raise ValueError("empty value")
    if kind == "bool":
        return parse_bool(raw)
    if kind == "flag":
        return True
    if kind == "int":
        return _parse_int(raw, f)
    if kind == "keepalive":
        return 0 if raw.lower() == "off" else _parse_int(raw, f)
    if kind == "duration":
        seconds = parse_duration(raw)
        _check_range(seconds, raw, f)
        return seconds
    if kind == "choice":
        return _parse_choice(raw, f)
    if kind == "cidrs":
        return _parse_cidrs(raw)
    if kind == "ipv4":
        return str(_parse_ipv4(raw))
    if kind == "upstreams":
        return _parse_upstreams(raw)
    if kind == "unicast_ipv4":
        return _parse_unicast_ipv4(raw)
    if kind == "listen_ipv4":
        addr = _parse_ipv4(raw)
        if addr.is_multicast:
            raise ValueError(f"{addr} is a multicast address")
        return str(addr)
    if kind == "ifname":
        return _parse_ifname(raw)
    if kind == "hostname":
        return _parse_hostname(raw)
    if kind == "url":
        return _parse_url(raw)
    if kind == "path":
        return raw
    if kind == "dir":
        return os.path.abspath(os.path.expanduser(raw))
    if kind == "public_endpoint":
        host, port = _split_hostport(raw, need_port=False)
        return (_parse_host(host, raw), port)
    if kind == "hostport":
        host, port = _split_hostport(raw, need_port=True)
        return (_parse_host(host, raw) if host else "0.0.0.0", port)
    if kind == "endpoint":
        host, port = _split_hostport(raw, need_port=True)
        if not host:
            raise ValueError(f"{raw!r} has no host")
        try:
            return (str(ipaddress.IPv4Address(host)), port)
        except ValueError:
            return (resolve(host), port)
    raise AssertionError(f"unhandled kind {kind}")


def _parse(f: _Field, raw: str, setting: str, resolve: Callable[[str], str]) -> Any:
    if f.kind == "key":
        return decode_key(raw, setting)
    try:
        return _parse_value(f, raw, resolve)
    except ValueError as e:
        raise ConfigError(setting, str(e)) from None


def changed_settings(old: Config, new: Config) -> list[str]:
    """Names of the settings whose values differ (peers and the private key aside), for a
    reload to say which changes wait for a restart."""
    out = []
    for f in _CONFIG_FIELDS:
        if f.path[0] in ("peers", "private_key"):
            continue
        a: Any = old
        b: Any = new
        for part in f.path:
            a, b = getattr(a, part), getattr(b, part)
        if a != b:
            out.append(f.env)
    return out


def parse_setting(env: Mapping[str, str], name: str) -> Any:
    """One setting from the environment, parsed and validated alone (None when unset), for
    commands that need nothing else: `wgslirp healthcheck` must not fail, or resolve peer
    host names, because of settings it does not use."""
    f = next((f for f in _CONFIG_FIELDS if f.env == name), None)
    if f is None:
        raise KeyError(name)
    raw = env.get(name, "").strip()
    return _parse(f, raw, name, resolve_ipv4) if raw else None


# --------------------------------------------------------------------------
# wg-quick files

_INTERFACE_KEYS = {
    k.lower(): k
    for k in (
        "PrivateKey",
        "ListenPort",
        "MTU",
        # wg-quick keys that configure the kernel side; accepted so an existing
        # wg0.conf loads unchanged, but they have no meaning for a user-space router.
        "Address",
        "DNS",
        "Table",
        "FwMark",
        "SaveConfig",
        "PreUp",
        "PostUp",
        "PreDown",
        "PostDown",
    )
}
_PEER_KEYS = {
    k.lower(): k
    for k in ("PublicKey", "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive")
}
_REPEATABLE = frozenset({"AllowedIPs", "Address", "DNS"})


class WgSection(msgspec.Struct, frozen=True, kw_only=True):
    """One ``[Interface]`` or ``[Peer]`` block of a wg-quick file, keys canonicalised."""

    kind: str
    label: str
    line: int
    entries: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        """The value of a key given at most once per section, or None."""
        for k, v in self.entries:
            if k == key:
                return v
        return None

    def get_all(self, key: str) -> list[str]:
        """Every value of a repeatable key (AllowedIPs, Address, DNS) in file order."""
        return [v for k, v in self.entries if k == key]


def parse_wg_quick(text: str, source: str = "<string>") -> list[WgSection]:
    """Split wg-quick text into sections, rejecting anything wg-quick would not accept.

    Unknown keys are errors rather than ignored so that a misspelt
    ``AllowedIP`` does not silently leave a peer unroutable.
    """
    sections: list[WgSection] = []
    kind: str | None = None
    label = ""
    start = 0
    entries: list[tuple[str, str]] = []
    peer_count = 0

    def close() -> None:
        if kind is not None:
            sections.append(WgSection(kind=kind, label=label, line=start, entries=tuple(entries)))

    for lineno, full in enumerate(text.splitlines(), 1):
        line = full.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{lineno}"
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(where, f"malformed section header {line!r}")
            name = line[1:-1].strip().lower()
            close()
            entries = []
            start = lineno
            if name == "interface":
                if any(s.kind == "Interface" for s in sections):
                    raise ConfigError(where, "[Interface] appears more than once")
                kind, label = "Interface", "Interface"
            elif name == "peer":
                peer_count += 1
                kind, label = "Peer", f"Peer {peer_count}"
            else:
                raise ConfigError(where, f"unknown section {line} (expected [Interface] or [Peer])")
            continue
        if kind is None:
            raise ConfigError(where, "setting before the first [Interface] or [Peer] section")
        key, sep, value = line.partition("=")
        if not sep:
            # never echo the line: it may be a key with its "=" forgotten
            raise ConfigError(where, f"expected 'Key = Value' after {_key_name(line)}")
        key, value = key.strip(), value.strip()
        if not _KEY_NAME.fullmatch(key):  # "PrivateKey <base64>=": the "=" was the key's
            raise ConfigError(where, f"expected 'Key = Value' after {_key_name(key)}")
        known = _INTERFACE_KEYS if kind == "Interface" else _PEER_KEYS
        canon = known.get(key.lower())
        if canon is None:
            raise ConfigError(
                f"{source} [{label}] {_key_name(key)}",
                f"unknown key (expected one of {', '.join(known.values())})",
            )
        if canon not in _REPEATABLE and any(k == canon for k, _ in entries):
            raise ConfigError(f"{source} [{label}] {canon}", "given more than once")
        entries.append((canon, value))
    close()
    return sections


_KEY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}", re.ASCII)


def _key_name(text: str) -> str:
    """The setting name a bad line starts with, for an error message; a secret pasted in
    the wrong place ("PrivateKey: <base64>", "PrivateKey <base64>") must not be printed."""
    first = text.strip().split(None, 1)[0].rstrip(":") if text.strip() else ""
    return first if _KEY_NAME.fullmatch(first) else "a line that is not a setting"


class _Source(NamedTuple):
    raw: str
    setting: str


def _peer_from(
    lookup: Callable[[_Field], _Source | None],
    missing: ConfigError,
    resolve: Callable[[str], str],
) -> PeerConfig:
    kwargs: dict[str, Any] = {}
    for f in _PEER_FIELDS:
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
            for f in _CONFIG_FIELDS:
                ini = f.extra.get("ini")
                value = section.get(ini) if ini else None
                if value is not None:
                    scalars[f.env] = _Source(value, f"{prefix} {ini}")
            continue

        def lookup(f: _Field, section: WgSection = section, prefix: str = prefix) -> _Source | None:
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

        def lookup(f: _Field, index: str = index) -> _Source | None:
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
    resolve: Callable[[str], str] | None = None,
) -> Config:
    """Build the effective configuration; raise ConfigError on the first bad setting.

    Environment variables override the file's scalar settings; ``WG_PEERS``,
    when set, replaces the file's peer list as a whole because merging two
    peer lists by position would be guesswork. ``resolve`` maps a host name to
    an IPv4 address and exists so tests need no DNS.
    """
    resolver = resolve or resolve_ipv4
    file_scalars: dict[str, _Source] = {}
    peers: list[tuple[PeerConfig, str]] = []
    if config_file is not None:
        file_scalars, peers = _load_file(config_file, resolver)

    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {name: {} for name in _NESTED}
    for f in _CONFIG_FIELDS:
        if f.kind == "peers":
            continue
        src = _from_env(env, f.env) or file_scalars.get(f.env)
        if src is None:
            continue
        value = _parse(f, src.raw, src.setting, resolver)
        if len(f.path) == 1:
            top[f.path[0]] = value
        else:
            nested[f.path[0]][f.path[1]] = value

    if _from_env(env, "WG_PEERS") is not None:
        peers = _peers_from_env(env, resolver)

    # The original turns metrics on when either variable is set.
    if _from_env(env, "METRICS_INTERVAL") is not None:
        nested["metrics"]["log"] = True

    if "state_dir" not in top:
        top["state_dir"] = default_state_dir(env)
    endpoint = top.pop("public_endpoint", None)
    if endpoint is not None:
        host, port = endpoint
        top["public_endpoint"] = f"{host}:{port or top.get('listen_port', 51820)}"

    seen: dict[bytes, str] = {}
    server_pub = public_key(top["private_key"]) if top.get("private_key") else None
    for peer, setting in peers:
        if peer.public_key in seen:
            raise ConfigError(setting, f"same public key as {seen[peer.public_key]}")
        if peer.public_key == server_pub:
            raise ConfigError(setting, "is the router's own public key (from WG_PRIVATE_KEY)")
        seen[peer.public_key] = setting
    top["peers"] = tuple(p for p, _ in peers)

    gw, dns = top.get("gateway_ip"), top.get("dns_ip")
    if gw is not None and gw == dns:
        raise ConfigError("WG_DNS_IP", f"must differ from WG_GATEWAY_IP ({gw})")

    for name, cls in _NESTED.items():
        top[name] = cls(**nested[name])
    return Config(**top)


# --------------------------------------------------------------------------
# Showing the configuration

# Every variable the Go original reads (README and `os.Getenv` calls in its
# binary), so a test can prove none was dropped or renamed.
ORIGINAL_VARIABLES = frozenset(
    {
        "WG_PRIVATE_KEY",
        "WG_LISTEN_PORT",
        "WG_MTU",
        "WG_PEERS",
        "WG_PEER_<i>_PUBLIC_KEY",
        "WG_PEER_<i>_ALLOWED_IPS",
        "WG_PEER_<i>_ENDPOINT",
        "WG_PEER_<i>_KEEPALIVE",
        "WG_OVERLAY_ROUTING",
        "WG_OVERLAY_EXCLUDE_CIDRS",
        "WG_DISABLE_IPV6",
        "DEBUG",
        "WG_DEBUG",
        "WG_PCAP",
        "METRICS_LOG",
        "METRICS_INTERVAL",
        "METRICS_FORMAT",
        "HEALTHCHECK",
        "HEALTH_HTTP_URL",
        "HEALTH_DNS_NAME",
        "HEALTH_DNS_IP",
        "PROCESSOR_WORKERS",
        "PROCESSOR_QUEUE_CAP",
        "WG_TUN_QUEUE_CAP",
        "POOLING",
        "POOL_WRAP",
        "TCP_ACK_DELAY_MS",
        "TCP_ENABLE_SACK",
        "TCP_MSS_CLAMP",
        "TCP_PACE_US",
        "TCP_GATE_LOG",
        "TCP_CC",
        "TCP_ERROR_SIGNAL",
        "TCP_FAST_DIAL_MS",
        "TCP_SOCK_RCVBUF",
        "TCP_SOCK_SNDBUF",
        "TCP_ACK_IDLE_GATE_MS",
        "TCP_ACK_IDLE_MIN_INFLIGHT",
        "TCP_ACK_IDLE_FAIL_SEC",
        "TCP_ACK_TRACE",
        "TCP_LOG_HANDSHAKE",
        "TCP_PEND_CAP_BYTES",
        "TCP_WS_OUT",
        "TCP_INIT_CWND_MSS",
        "COPY_TOS",
        "IP_TTL",
    }
)

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
    r"WG_PEER_[A-Za-z0-9_]+_(?:" + "|".join(f.env.split("<i>_")[1] for f in _PEER_FIELDS) + ")"
)


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """Names that look like ours but are not, so the CLI can warn about typos."""
    out = []
    for name in sorted(env):
        if not name.startswith(_OUR_PREFIXES) or name in _BY_ENV or name in _IGNORED:
            continue
        if name == "HEALTHCHECK" or _PEER_VAR.fullmatch(name):
            continue
        if name.startswith(("WG_TUN_IN_", "FLOW_")):
            continue
        out.append(name)
    return out


def _field_extras(cls: type[msgspec.Struct]) -> dict[str, Mapping[str, Any]]:
    hints = get_type_hints(cls, include_extras=True)
    out: dict[str, Mapping[str, Any]] = {}
    for info in msgspec.structs.fields(cls):
        _, _, metas = _unwrap(hints[info.name])
        out[info.name] = _first(metas, "extra") or {}
    return out


_STRUCTS: tuple[type[msgspec.Struct], ...] = (Config, PeerConfig, *_NESTED.values())
_EXTRAS = {cls: _field_extras(cls) for cls in _STRUCTS}
REDACTED = "(redacted)"


def _plain(value: Any) -> Any:
    if isinstance(value, msgspec.Struct):
        return _redact(value)
    if isinstance(value, bytes):
        return encode_key(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _redact(obj: msgspec.Struct) -> dict[str, Any]:
    extras = _EXTRAS[type(obj)]
    out: dict[str, Any] = {}
    for name in obj.__struct_fields__:
        value = getattr(obj, name)
        if extras[name].get("secret"):
            out[name] = None if value is None else REDACTED
        else:
            out[name] = _plain(value)
    return out


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective settings as JSON-ready data, safe to paste into a bug report.

    Secrets become ``"(redacted)"``; the server's public key is added under
    ``server_public_key`` because that is what users need to configure clients.
    """
    out = _redact(cfg)
    out["server_public_key"] = (
        encode_key(public_key(cfg.private_key)) if cfg.private_key is not None else None
    )
    return out


def _env_text(f: _Field, value: Any) -> str:
    if value is None:
        return ""
    if f.extra.get("secret"):
        return REDACTED
    if f.kind == "flag":
        return "1" if value else ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if f.kind == "duration":
        return format_duration(value)
    if isinstance(value, bytes):
        return encode_key(value)
    if f.kind in ("hostport", "endpoint"):
        return f"{value[0]}:{value[1]}"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def render_check(cfg: Config) -> str:
    """The effective settings as ``NAME=value`` lines, the same names users set."""
    lines = []
    if cfg.private_key is not None:
        lines.append(f"# server public key: {encode_key(public_key(cfg.private_key))}")
    for f in _CONFIG_FIELDS:
        if f.kind == "peers":
            lines.append(f"WG_PEERS={','.join(str(i) for i in range(len(cfg.peers)))}")
            for i, peer in enumerate(cfg.peers):
                for pf in _PEER_FIELDS:
                    name = pf.env.replace("<i>", str(i))
                    lines.append(f"{name}={_env_text(pf, _get(peer, pf.path))}")
            continue
        lines.append(f"{f.env}={_env_text(f, _get(cfg, f.path))}")
    return "\n".join(lines) + "\n"


class Setting(NamedTuple):
    """One documented setting, as listed in docs/configuration.md."""

    env: str
    type: str
    default: str
    description: str
    group: str
    ini: str | None
    field: str


def _type_text(f: _Field) -> str:
    k = f.kind
    if k in ("int", "keepalive"):
        if f.ge is not None and f.le is not None:
            text = f"integer {f.ge}-{f.le}"
        elif f.ge is not None:
            text = f"integer >= {f.ge}"
        else:
            text = "integer"
        return text + (", or off" if k == "keepalive" else "")
    if k == "duration":
        return "duration > 0" if f.gt == 0 else "duration"
    if k == "choice":
        return " | ".join(get_args(f.base))
    return {
        "bool": "boolean",
        "flag": "flag (any non-empty value)",
        "key": "base64 key",
        "cidrs": "IPv4 CIDR list",
        "ipv4": "IPv4 address",
        "unicast_ipv4": "IPv4 address",
        "listen_ipv4": "IPv4 address",
        "ifname": "interface name (<= 15 chars)",
        "hostname": "host name",
        "url": "http(s) URL",
        "path": "file path",
        "dir": "directory",
        "public_endpoint": "host[:port]",
        "hostport": "host:port",
        "endpoint": "host:port",
        "peers": "index list",
        "upstreams": "list of ip[:port]",
    }[k]


def _default_text(f: _Field) -> str:
    if "default_doc" in f.extra:
        return str(f.extra["default_doc"])
    d = f.default
    if d is msgspec.NODEFAULT:
        return "required"
    if d is None or d == ():
        return "unset"
    if isinstance(d, bool):
        return "on" if d else "off"
    if f.kind == "duration":
        return format_duration(d)
    return str(d)


def settings_table() -> Iterator[Setting]:
    """Every setting in documentation order (by group, then declaration order)."""
    rows = [*_CONFIG_FIELDS, *_PEER_FIELDS]
    rows.sort(key=lambda f: GROUPS.index(f.group))  # stable: keeps declaration order
    for f in rows:
        yield Setting(
            env=f.env,
            type=_type_text(f),
            default=_default_text(f),
            description=f.description,
            group=f.group,
            ini=f.extra.get("ini"),
            field=".".join(f.path),
        )


_MD_INTRO = """\
# Configuration

<!-- Generated by `python -m wgslirp.config --markdown`; edit wgslirp/config.py instead. -->

wgslirp reads its settings from environment variables, optionally on top of a
wg-quick style file named on the command line. Every variable of the Go
original keeps its name and meaning; the variables added by wgslirp are listed
at the end.

Rules that apply to every variable:

- An empty value is the same as an unset one.
- Booleans accept `1/0`, `true/false`, `yes/no`, `on/off` in any case; anything
  else is an error. `METRICS_LOG` and `HEALTHCHECK` keep the original's meaning:
  any non-empty value enables them.
- Durations use Go syntax: `500ms`, `15s`, `1m30s`, `2h`.
- A value that cannot be used stops the router before it starts, with exit
  status 2 and one line naming the variable, e.g.
  `WG_LISTEN_PORT: 70000 is out of range 1-65535`.
- Environment variables override the file. `WG_PEERS`, when set, replaces the
  file's peers as a whole.

`wgslirp check-config` prints the effective settings with private and
pre-shared keys shown as `(redacted)`.
"""

_MD_OUTRO = """\
## wg-quick file

The file uses the wg-quick format: an `[Interface]` section and any number of
`[Peer]` sections; keys are case-insensitive and `#` starts a comment.

| Section | Key | Same as |
|---|---|---|
{ini_rows}

`Address`, `DNS`, `Table`, `FwMark`, `SaveConfig` and the `PreUp`/`PostUp`/
`PreDown`/`PostDown` hooks are accepted so an existing `wg0.conf` loads, and
ignored: they configure a kernel interface, which a user-space router does not
have. In particular `Address` does not become `WG_GATEWAY_IP`, because that
would quietly open the host's loopback services to every peer. Any other key
is an error, so a misspelt `AllowedIP` cannot go unnoticed. Errors name the
file, section and key, e.g. `wg0.conf [Peer 2] AllowedIPs: 'x' is not an IPv4
address or CIDR`. `AllowedIPs` may be repeated within a `[Peer]`.

## Zero-config start

When no private key is configured, wgslirp keeps its identity in the state
directory (`WGSLIRP_STATE_DIR`, created with mode 0700): `server.key`, and when
no peers are configured also `client.key` for one generated client with
address 10.77.0.2/32. Both files hold base64 text like `wg genkey` output and
must have mode 0600; a key file that group or others can read is refused. In
that mode `WG_GATEWAY_IP` defaults to 10.77.0.1. Later starts reuse the same
keys, so a client configured once keeps working, and wgslirp can print a
ready wg-quick file for that client.

## Differences from the Go original

- Invalid values are errors (exit status 2) instead of silently falling back to
  defaults; for example `TCP_ERROR_SIGNAL=icmpp` or `WG_LISTEN_PORT=abc`.
  `METRICS_INTERVAL=0s`, which crashes the original, is refused.
- `WG_PRIVATE_KEY` is optional (see zero-config start).
- A peer index listed in `WG_PEERS` without `WG_PEER_<i>_PUBLIC_KEY` is an
  error; the original skipped that peer silently. Two peers with the same
  public key are an error.
- `PROCESSOR_WORKERS=0` runs one worker inline; the original ignored 0.
- `WG_DISABLE_IPV6` defaults to off. The README documents it as opt-in but the
  Go code treated it as on unless disabled; opt-in is the safer of the two
  outside a container.
- `TCP_ENABLE_SACK` and `TCP_ACK_TRACE` accept every boolean spelling, not only `1`.
- New in wgslirp: {new_vars}.
- Still accepted and ignored, as in the original: `SIMPLE_MODE`, `FLOW_*`,
  `WG_TUN_ASYNC_WRITE`, `WG_TUN_IN_*`.
- Not supported: the `ROUTER_*`, `WIREGUARD_*` and `LOGGING_*` variables of the
  original's `pkg/config`. That package is never imported by its `wgslirp`
  binary, so those variables had no effect there either.
"""


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    """The text of docs/configuration.md, generated so docs cannot disagree with code."""
    parts = [_MD_INTRO]
    rows = list(settings_table())
    for group in GROUPS:
        in_group = [r for r in rows if r.group == group]
        if not in_group:
            continue
        parts.append(f"\n## {group}\n\n")
        parts.append("| Variable | Type | Default | Description |\n|---|---|---|---|\n")
        for r in in_group:
            parts.append(
                f"| `{r.env}` | {_md_cell(r.type)} | {_md_cell(r.default)} "
                f"| {_md_cell(r.description)} |\n"
            )
    ini_rows = "\n".join(
        f"| {'Peer' if r.env.startswith('WG_PEER_') else 'Interface'} | `{r.ini}` | `{r.env}` |"
        for r in rows
        if r.ini
    )
    new_vars = ", ".join(f"`{r.env}`" for r in rows if r.env not in ORIGINAL_VARIABLES)
    parts.append("\n" + _MD_OUTRO.format(ini_rows=ini_rows, new_vars=new_vars))
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Regenerate the docs or check a configuration without starting the router."""
    parser = argparse.ArgumentParser(prog="python -m wgslirp.config")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--markdown", action="store_true", help="print docs/configuration.md")
    mode.add_argument("--check", action="store_true", help="print the effective settings")
    parser.add_argument("config_file", nargs="?", help="wg-quick file (with --check)")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(render_markdown())
        return 0
    try:
        cfg = load_config(os.environ, args.config_file)
    except ConfigError as e:
        print(f"wgslirp: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(render_check(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
