"""What can be configured: every setting's name, type, limits, default and meaning.

The msgspec Structs below are the single source of truth. Each field carries a
``msgspec.Meta`` with the description shown in ``docs/configuration.md`` and an
``extra`` dict holding the environment variable name (kept identical to the Go
original so existing deployments keep working) and how to parse it. The loader,
the ``check-config`` renderer and the documentation generator all walk these
fields (through :mod:`wgslirp.config.fields`), so none of them can drift from
the others.

This module declares and does nothing else: no parsing, no I/O, so the rest of
the router can import :class:`Config` without pulling in the loader.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from wgslirp.config.cpus import auto_workers
from wgslirp.errors import ConfigError

__all__ = [
    "DEFAULT_LISTEN_ADDR",
    "GROUPS",
    "Config",
    "ConfigError",
    "EgressConfig",
    "HealthConfig",
    "MetricsConfig",
    "PeerConfig",
    "TcpConfig",
    "UdpConfig",
    "default_state_dir",
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
    "Port forwarding",
    "IP header synthesis",
)


def _doc(env: str, description: str, *, group: str, **extra: Any) -> Meta:
    """Attach the user-facing name and help text to a field."""
    if group not in GROUPS:
        raise ValueError(f"unknown settings group {group!r}")
    return Meta(description=description, extra={"env": env, "group": group, **extra})


Port = Annotated[int, Meta(ge=1, le=65535)]
# Both families on one socket, like wireguard-go and the kernel's WireGuard, which listen on
# IPv4 and IPv6 alike; a host without IPv6 gets 0.0.0.0 (runtime/ingress.py:open_wg_socket).
DEFAULT_LISTEN_ADDR = "::"
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
            "Comma-separated IPv4 and IPv6 CIDRs the peer may use as source addresses "
            "(cryptokey routing). A bare address means /32 (/128); host bits are cleared, so "
            "10.77.0.5/24 becomes 10.77.0.0/24. IPv6 prefixes inside ::/96 (IPv4-compatible, "
            ":: and ::1) are rejected.",
            group="Peers",
            ini="AllowedIPs",
            kind="allowed_ips",
        ),
    ] = ()
    endpoint: Annotated[
        tuple[str, int] | None,
        _doc(
            "WG_PEER_<i>_ENDPOINT",
            "Optional host:port or [IPv6]:port of the peer. Host names are resolved at "
            "start-up, to the family WG_LISTEN_ADDR listens on (either for `::`: the "
            "resolver's first answer). Roaming peers update it from their authenticated "
            "packets, between IPv4 and IPv6 too.",
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
    ecn: Annotated[
        bool,
        _doc(
            "TCP_ECN",
            "Accept Explicit Congestion Notification (RFC 3168) when a guest's SYN asks for "
            "it (Linux guests do with net.ipv4.tcp_ecn=1): our data leaves ECN-capable, a "
            "CE mark on the guest's data is echoed, and its echo reduces our window "
            "(CUBIC, NewReno; BBR does not react, as on Linux). Never offered unasked.",
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
    pacing: Annotated[
        bool,
        _doc(
            "TCP_PACING",
            "Pace host-to-guest data at a rate derived from the congestion window and the "
            "round-trip time (2x in slow start, 1.2x after, as Linux does), in bursts of at "
            "most 1 ms at that rate. Without it a whole window leaves at once and can "
            "overflow a client's UDP socket on long paths.",
            group="TCP",
        ),
    ] = True
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
        Literal["newreno", "cubic", "bbr", "off"],
        _doc(
            "TCP_CC",
            "Congestion control for the host-to-guest direction (reno and new-reno are "
            "accepted for newreno). bbr, the default, steers by measured bandwidth and RTT "
            "and holds its rate on paths with random loss, as Linux's BBR does, where the "
            "loss-based cubic and newreno fall to a few Mbit/s at 1 % loss "
            "(docs/tcp-wan.md); cubic uses HyStart++.",
            group="TCP",
            aliases={"reno": "newreno", "new-reno": "newreno"},
        ),
    ] = "bbr"
    error_signal: Annotated[
        Literal["mirror", "icmp", "rst", "none"],
        _doc(
            "TCP_ERROR_SIGNAL",
            "How a failed outbound connect is reported to the guest. mirror answers as the "
            "host was answered: a refused connect (the host got an RST) with an RST, an "
            "unreachable host or network with the matching ICMP unreachable, a destination "
            "the policy denies with ICMP admin-prohibited. icmp reports every failure as "
            "ICMP unreachable (a refusal as port unreachable; a Linux guest inside connect() "
            "may miss it and retry), rst as TCP RST, none not at all (the guest times out).",
            group="TCP",
        ),
    ] = "mirror"
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
    snd_buffer_max: Annotated[
        int,
        Meta(ge=16 * 1024, le=256 * 1024 * 1024),
        _doc(
            "TCP_SND_BUFFER_MAX",
            "Size a connection's send buffer may grow to while its congestion window "
            "wants more than half of what it has (Linux grows toward tcp_wmem's maximum "
            "the same way), out of TCP_SND_BUFFER_POOL. The buffer holds everything from "
            "the oldest unacknowledged byte on, so a lost retransmission, which holds that "
            "byte for several round trips, needs room for that many: at 4 MiB a download "
            "over 41 ms with 1 % loss stalled on it. At or below TCP_SND_BUFFER it never "
            "grows.",
            group="TCP",
        ),
    ] = 16 * 1024 * 1024
    rcv_buffer_max: Annotated[
        int,
        Meta(ge=16 * 1024, le=256 * 1024 * 1024),
        _doc(
            "TCP_RCV_BUFFER_MAX",
            "Size a connection's receive buffer (the window the guest is offered) may "
            "double up to while the guest delivers more than half of it per round trip, "
            "as Linux autotunes toward tcp_rmem's maximum; out of TCP_SND_BUFFER_POOL. At "
            "or below TCP_RCV_BUFFER it never grows. Needs the guest's window scaling.",
            group="TCP",
        ),
    ] = 4 * 1024 * 1024
    snd_buffer_pool: Annotated[
        int,
        Meta(ge=0, le=64 * 1024 * 1024 * 1024),
        _doc(
            "TCP_SND_BUFFER_POOL",
            "Bytes of buffer above TCP_SND_BUFFER and TCP_RCV_BUFFER that all connections "
            "of one process (the router inline, or each worker) may grow into together, "
            "send and receive rings alike; a connection refused keeps its size. Bounds "
            "memory: at most TCP_MAX_FLOWS x (TCP_SND_BUFFER + TCP_RCV_BUFFER) + this per "
            "process.",
            group="TCP",
        ),
    ] = 128 * 1024 * 1024
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
            "host socket, so this keeps a busy guest from exhausting file descriptors."
            " With N workers each enforces its share, ceil(1.25 x value / N) + 8 "
            "(flows spread by hash, not evenly), so up to N times that may be open; "
            "exact with one worker.",
            group="TCP",
        ),
    ] = 4096
    max_flows_per_peer: Annotated[
        Count,
        _doc(
            "TCP_MAX_FLOWS_PER_PEER",
            "Most TCP flows one peer may hold (0 = unlimited), so one peer cannot starve "
            "the others. Shared over workers like TCP_MAX_FLOWS: with 4 workers a peer "
            "may hold up to 1312 for 1024.",
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
        _doc(
            "UDP_MAX_FLOWS",
            "Most UDP flows at once (0 = unlimited); shared over workers like TCP_MAX_FLOWS.",
            group="UDP",
        ),
    ] = 4096
    max_flows_per_peer: Annotated[
        Count,
        _doc(
            "UDP_MAX_FLOWS_PER_PEER",
            "Most UDP flows one peer may hold (0 = unlimited); shared over workers like "
            "TCP_MAX_FLOWS.",
            group="UDP",
        ),
    ] = 1024


class EgressConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Overrides for the built-in destination policy."""

    allow_cidrs: Annotated[
        tuple[str, ...],
        _doc(
            "EGRESS_ALLOW_CIDRS",
            "Comma-separated IPv4/IPv6 CIDRs guests may reach even though the default policy "
            "denies them (loopback, 0.0.0.0/8, link-local, multicast, broadcast, and the "
            "host's own addresses; those only by an entry narrower than 0.0.0.0/0 or ::/0). "
            "IPv6 destinations inside ::/96, SIIT and NAT64 prefixes stay denied (for NAT64 "
            "see EGRESS_NAT64); an IPv4-mapped ::ffff:a.b.c.d is judged as a.b.c.d.",
            group="Egress policy",
        ),
    ] = ()
    deny_cidrs: Annotated[
        tuple[str, ...],
        _doc(
            "EGRESS_DENY_CIDRS",
            "Comma-separated IPv4/IPv6 CIDRs guests may never reach; deny wins over allow.",
            group="Egress policy",
        ),
    ] = ()
    nat64: Annotated[
        bool,
        _doc(
            "EGRESS_NAT64",
            "Stateless NAT64 for guests: IPv6 traffic to 64:ff9b::a.b.c.d (the RFC 6052 "
            "well-known prefix) leaves through IPv4 host sockets to a.b.c.d, judged by the "
            "IPv4 policy, and its replies come back as IPv6, so IPv6-only guests reach IPv4 "
            "destinations. There is no DNS64: guests use literal addresses or a resolver that "
            "synthesizes AAAA records. Off: the prefix is denied.",
            group="Egress policy",
        ),
    ] = False


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
            "Address the WireGuard UDP socket binds to, IPv4 or IPv6. `::` (the default) "
            "takes IPv4 and IPv6 peers on one dual-stack socket, and falls back to 0.0.0.0 "
            "on a host without IPv6; `0.0.0.0` takes IPv4 only; a specific address takes "
            "that address's family only.",
            group="WireGuard",
            kind="listen_addr",
        ),
    ] = DEFAULT_LISTEN_ADDR
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
    gateway_ip6: Annotated[
        str | None,
        _doc(
            "WG_GATEWAY_IP6",
            "IPv6 tunnel address that acts as an alias for the host: guest traffic to it "
            "goes to WG_GATEWAY_HOST_IP6, and its ping is answered by the router. Off when "
            "unset, except in zero-config start where it is fd77::1.",
            group="Addresses and state",
            kind="unicast_ipv6",
        ),
    ] = None
    gateway_host_ip6: Annotated[
        str,
        _doc(
            "WG_GATEWAY_HOST_IP6",
            "Host IPv6 address that traffic to WG_GATEWAY_IP6 is sent to.",
            group="Addresses and state",
            kind="ipv6",
        ),
    ] = "::1"
    dns_ip6: Annotated[
        str | None,
        _doc(
            "WG_DNS_IP6",
            "IPv6 tunnel address that answers DNS queries (UDP and TCP port 53) like "
            "WG_DNS_IP. Off when unset; generated client configs list it as DNS.",
            group="Addresses and state",
            kind="unicast_ipv6",
        ),
    ] = None
    dns_upstream: Annotated[
        tuple[str, ...],
        _doc(
            "WG_DNS_UPSTREAM",
            "Comma-separated resolvers (ip[:port] or [ipv6]:port, port 53 by default) that "
            "queries to WG_DNS_IP and WG_DNS_IP6 are forwarded to. When unset, the "
            "nameservers of /etc/resolv.conf.",
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
            "(the port defaults to WG_LISTEN_PORT); an IPv6 address is written [addr]:port "
            "(or bare, without a port). When unset, a local address is guessed.",
            group="Addresses and state",
            kind="public_endpoint",
        ),
    ] = None
    state_dir: Annotated[
        str,
        _doc(
            "WGSLIRP_STATE_DIR",
            "Directory (mode 0700) holding the generated server.key and client.key, and "
            "peers.json, the clients added by `wgslirp peer add`.",
            group="Addresses and state",
            kind="dir",
            default_doc="$XDG_STATE_HOME/wgslirp or ~/.local/state/wgslirp",
        ),
    ] = msgspec.field(default_factory=_env_state_dir)
    peer_pool: Annotated[
        str,
        _doc(
            "WGSLIRP_PEER_POOL",
            "IPv4 network (/8 to /30) that `wgslirp peer add` takes client addresses from: "
            "the lowest free address, never the network or broadcast address, the "
            "network's first address (the router's, by convention), WG_GATEWAY_IP, "
            "WG_DNS_IP or an address inside another peer's AllowedIPs.",
            group="Addresses and state",
            kind="pool",
        ),
    ] = "10.77.0.0/24"
    config_poll: Annotated[
        float,
        Meta(ge=0, le=3600),
        _doc(
            "WGSLIRP_CONFIG_POLL",
            "How often the --config file is checked for changes, as a duration; a change "
            "(an edit, or Kubernetes swapping a mounted Secret) is reloaded like SIGHUP "
            "once it has held still for one interval. 0 turns the check off.",
            group="Peers",
        ),
    ] = 2.0
    processor_workers: Annotated[
        int,
        Meta(ge=0, le=256),
        _doc(
            "PROCESSOR_WORKERS",
            "Worker processes that run the TCP/UDP/ICMP bridges; 0 runs one worker inline "
            "in the ingress process (debugging, tiny hosts). When unset, fitted to the CPUs "
            "this process may use (its affinity mask and its cgroup's CPU quota, as in a "
            "container with a CPU limit): 0 on 2 CPUs or fewer, where one process has the "
            "shorter round trips and no clear throughput loss (docs/operations.md), else "
            "one fewer than the CPUs (ingress takes one), at most 4 "
            "(their rings must fit a container's default 64 MiB /dev/shm).",
            group="Packet processing",
            default_doc="fitted to the usable CPUs",
        ),
    ] = msgspec.field(default_factory=auto_workers)
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
            "File to write decrypted IPv4 and IPv6 packets to (pcap, LINKTYPE_RAW).",
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
            "Comma-separated IPv4/IPv6 CIDRs that always leave through host sockets even when "
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
    forward_tcp: Annotated[
        tuple[str, ...],
        _doc(
            "WG_FORWARD_TCP",
            "Host TCP ports forwarded to services inside guests, comma-separated "
            "`[listen-ip:]port[-port]=guest-ip[:port[-port]]`, e.g. "
            "`127.0.0.1:8080=10.77.0.2:80,0.0.0.0:2222=10.77.0.3:22` or "
            "`8000-8010=10.77.0.2`. The listen address defaults to 127.0.0.1 and the guest "
            "ports to the listen ports. Each guest address must lie in some peer's "
            "AllowedIPs; the guest sees the connection come from WG_GATEWAY_IP (which is "
            "required). A port that cannot be bound stops the start (exit 2).",
            group="Port forwarding",
            ini="ForwardTCP",
            kind="forwards",
        ),
    ] = ()
    forward_udp: Annotated[
        tuple[str, ...],
        _doc(
            "WG_FORWARD_UDP",
            "Host UDP ports forwarded to guests, in the syntax of WG_FORWARD_TCP; each "
            "host client is one NAT flow (UDP_IDLE_TIMEOUT and the UDP caps apply), and "
            "the guest's replies go back to that client.",
            group="Port forwarding",
            ini="ForwardUDP",
            kind="forwards",
        ),
    ] = ()
    forward_connect_timeout: Annotated[
        float,
        Meta(gt=0, le=600),
        _doc(
            "WG_FORWARD_CONNECT_TIMEOUT",
            "How long a forwarded TCP connection waits for the guest's answer (SYN "
            "retransmitted after 1, 2, 4, 8 ... s meanwhile, and held while the peer's "
            "handshake completes) before the host client's connection is reset.",
            group="Port forwarding",
        ),
    ] = 20.0
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    tcp: TcpConfig = msgspec.field(default_factory=TcpConfig)
    udp: UdpConfig = msgspec.field(default_factory=UdpConfig)
    egress: EgressConfig = msgspec.field(default_factory=EgressConfig)
