"""Destination policy: where a guest may send, and what the virtual addresses stand for.

A WireGuard peer is a remote party; by default it must not reach what only local users
should: the host's loopback services, the services on the host's other addresses, link-local
cloud metadata, multicast/broadcast, and the router's own sockets. The gateway alias is the
explicit, opt-in way to reach host loopback, and the DNS address the way to reach the host's
resolvers. Decisions are pure: the worker asks once per new flow, not per packet.

IPv6 destinations (`decide(..., v6=True)`) get the same rules plus one more concern: every
way an IPv6 address can stand for an IPv4 one. An IPv4-mapped address (::ffff:a.b.c.d) is
what a dual-stack host socket turns into that IPv4 address, so it is judged as that address
and reached through it; the other embeddings (IPv4-compatible ::/96, NAT64 64:ff9b::/96,
SIIT ::ffff:0:0:0/96) are denied outright, and 6to4 (2002::/16) and Teredo (2001::/32) are
denied when the IPv4 address they embed would be. ::/96 also holds :: and ::1, and it is
the one range where an IPv6 int can equal an IPv4 int (docs/architecture.md, "Both
families"), so no flow key ever holds an IPv6 address from it.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from wgslirp.net import ipv6
from wgslirp.net.ipv4 import PROTO_TCP, PROTO_UDP
from wgslirp.net.prefix import PrefixTable

DEFAULT_DENY: tuple[str, ...] = (
    "127.0.0.0/8",
    "0.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",  # reserved, includes 255.255.255.255
    # cloud metadata/platform endpoints outside 169.254/16: a peer must not read the host
    # VM's identity or credentials through the router
    "168.63.129.16/32",  # Azure WireServer
    "100.100.100.200/32",  # Alibaba Cloud metadata
)

DEFAULT_DENY6: tuple[str, ...] = (
    "::/96",  # IPv4-compatible (deprecated), with :: and ::1; ambiguous with IPv4 ints
    "::ffff:0:0:0/96",  # SIIT IPv4-translated (RFC 2765): an IPv4 address in disguise
    "64:ff9b::/96",  # NAT64 well-known prefix (RFC 6052): the router does no NAT64
    "64:ff9b:1::/48",  # NAT64 local-use prefix (RFC 8215)
    "fe80::/10",  # link-local: the host's own links
    "ff00::/8",  # multicast
    "fd00:ec2::254/128",  # AWS instance metadata over IPv6
    "fd20:ce::254/128",  # Google Cloud metadata over IPv6
)

_M32 = 0xFFFFFFFF
_NAT64_WKP = 0x0064FF9B << 64  # 64:ff9b::/96, shifted right by 32


def parse_address(text: str) -> tuple[int, bool]:
    """An address of either family as (int, is IPv6); a scope suffix (%eth0) is ignored."""
    a = ipaddress.ip_address(text.split("%", 1)[0])
    return int(a), a.version == 6


class Verdict(enum.Enum):
    ALLOW = 0
    DENY = 1


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    host: int  # the address to contact on the host side (after alias translation)
    port: int
    reason: str = ""
    v6: bool = False  # the family of `host`: the host socket is AF_INET6 when set


@dataclass
class EgressPolicy:
    """`gateway` maps to `gateway_host`; (`dns`, 53) maps to the upstream resolvers;
    `gateway6` and `dns6` are their IPv6 twins (`gateway_host6` is ::1 by default).

    `own_sockets` lists (proto, port) of the router's listeners on the host; a guest flow
    to them through any address (gateway included) would loop back into the router.
    """

    allow_cidrs: Iterable[str] = ()
    deny_cidrs: Iterable[str] = ()
    gateway: str | None = None
    gateway_host: str = "127.0.0.1"
    dns: str | None = None
    dns_upstream: tuple[tuple[str, int], ...] = ()
    own_sockets: frozenset[tuple[int, int]] = frozenset()
    local_addresses: frozenset[str] = frozenset()  # the host's own addresses, both families
    gateway6: str | None = None
    gateway_host6: str = "::1"
    dns6: str | None = None
    # EGRESS_NAT64: 64:ff9b::a.b.c.d is reached as a.b.c.d (judged and connected as IPv4)
    nat64: bool = False
    # Called before each decision so `local_addresses` is as the host's are at that moment
    # (the worker drains its address notifications here; see runtime/host_addresses.py).
    refresh: Callable[[], None] | None = None
    _table: PrefixTable[Verdict] = field(init=False, repr=False)
    _gateway: int | None = field(init=False, repr=False)
    _gateway_host: tuple[int, bool] = field(init=False, repr=False)
    _dns: int | None = field(init=False, repr=False)
    _upstream: tuple[tuple[int, int, bool], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Longest prefix decides; at equal length an explicit deny beats an allow, which
        # beats the default deny (inserted first, so later inserts overwrite it).
        self._table = PrefixTable()
        for cidr in DEFAULT_DENY + DEFAULT_DENY6:
            self._table.insert(cidr, Verdict.DENY)
        for cidr in self.allow_cidrs:
            self._table.insert(cidr, Verdict.ALLOW)
        for cidr in self.deny_cidrs:
            self._table.insert(cidr, Verdict.DENY)
        self._gateway = _v4(self.gateway) if self.gateway else None
        self._gateway_host = parse_address(self.gateway_host)
        self._dns = _v4(self.dns) if self.dns else None
        self._gateway6 = _v6(self.gateway6) if self.gateway6 else None
        self._gateway_host6 = parse_address(self.gateway_host6)
        self._dns6 = _v6(self.dns6) if self.dns6 else None
        self._upstream = tuple(_upstream(h, p) for h, p in self.dns_upstream)
        self.set_local_addresses(self.local_addresses)
        self._explicit_deny = PrefixTable[bool]()
        for cidr in self.deny_cidrs:
            self._explicit_deny.insert(cidr, True)
        # The host's own addresses are opened only by an allow entry narrower than /0:
        # "allow everything" is not a decision to expose the host's own services.
        self._host_allow = PrefixTable[bool]()
        for cidr in self.allow_cidrs:
            if not cidr.endswith("/0"):
                self._host_allow.insert(cidr, True)

    def decide(self, proto: int, dst: int, dport: int, v6: bool = False) -> Decision:
        """What a new flow to (`dst`, `dport`) may do; called once per flow, not per packet.
        `v6` says `dst` is an IPv6 address (the family of the guest's packet)."""
        if self.refresh is not None:
            self.refresh()
        if v6:
            return self._decide6(proto, dst, dport)
        return self._decide4(proto, dst, dport)

    def _decide4(self, proto: int, dst: int, dport: int) -> Decision:
        if self._dns is not None and dst == self._dns:
            return self._dns_decision(proto, dst, dport)
        if self._gateway is not None and dst == self._gateway:
            return self._gateway_decision(proto, dst, dport, self._gateway_host)
        if self._is_local(dst):
            # A flow to the host's own LAN/bridge/public address starts on the host and
            # arrives on loopback, past the host firewall's rules for that interface: the
            # gateway is the one explicit door to host services.
            if (proto, dport) in self.own_sockets:
                return Decision(Verdict.DENY, dst, dport, "router's own socket")
            if not self._host_allow.lookup(dst):
                return Decision(Verdict.DENY, dst, dport, "host's own address")
        if self._table.lookup(dst) is Verdict.DENY:
            return Decision(Verdict.DENY, dst, dport, "destination denied by policy")
        return Decision(Verdict.ALLOW, dst, dport)

    def _decide6(self, proto: int, dst: int, dport: int) -> Decision:
        if self._dns6 is not None and dst == self._dns6:
            return self._dns_decision(proto, dst, dport, v6=True)
        if self._gateway6 is not None and dst == self._gateway6:
            return self._gateway_decision(proto, dst, dport, self._gateway_host6, v6=True)
        mapped = ipv6.v4_mapped(dst)
        if mapped is None and self.nat64 and dst >> 32 == _NAT64_WKP:
            mapped = dst & _M32  # RFC 6052: the IPv4 address in the prefix's last 32 bits
        if mapped is not None:
            # A dual-stack socket sends this to the IPv4 address (and NAT64 translates it
            # to it): judge it as that one.
            d = self._decide4(proto, mapped, dport)
            if d.verdict is Verdict.DENY:
                return Decision(Verdict.DENY, dst, dport, f"IPv4-mapped: {d.reason}", True)
            return d
        if ipv6.is_v4_compatible(dst):
            return Decision(Verdict.DENY, dst, dport, "IPv4-compatible, loopback or ::", True)
        embedded = _embedded_v4(dst)
        if embedded is not None:
            d = self._decide4(proto, embedded, dport)
            if d.verdict is Verdict.DENY:
                return Decision(Verdict.DENY, dst, dport, f"embeds IPv4: {d.reason}", True)
        if dst in self._local6:
            if (proto, dport) in self.own_sockets:
                return Decision(Verdict.DENY, dst, dport, "router's own socket", True)
            if not self._host_allow.lookup6(dst):
                return Decision(Verdict.DENY, dst, dport, "host's own address", True)
        if self._table.lookup6(dst) is Verdict.DENY:
            return Decision(Verdict.DENY, dst, dport, "destination denied by policy", True)
        return Decision(Verdict.ALLOW, dst, dport, "", True)

    def _dns_decision(self, proto: int, dst: int, dport: int, v6: bool = False) -> Decision:
        # TCP too: a resolver retries over TCP after a truncated UDP answer (RFC 7766)
        if dport == 53 and proto in (PROTO_UDP, PROTO_TCP) and self._upstream:
            host, port, host_v6 = self._upstream[0]
            return Decision(Verdict.ALLOW, host, port, "", host_v6)
        return Decision(Verdict.DENY, dst, dport, "dns address serves only DNS", v6)

    def _gateway_decision(
        self, proto: int, dst: int, dport: int, host: tuple[int, bool], v6: bool = False
    ) -> Decision:
        if (proto, dport) in self.own_sockets:
            return Decision(Verdict.DENY, dst, dport, "router's own socket", v6)
        if self._explicit_deny.lookup_family(*host):
            return Decision(Verdict.DENY, dst, dport, "gateway host denied", v6)
        return Decision(Verdict.ALLOW, host[0], dport, "", host[1])

    def set_local_addresses(self, addresses: Iterable[str]) -> None:
        """Replace the host's own addresses: an address added after start (DHCP, a new
        interface) must guard the router's own ports as well as the ones seen at start."""
        self.local_addresses = frozenset(addresses)
        local: set[int] = set()
        local6: set[int] = set()
        for text in self.local_addresses:
            value, is6 = parse_address(text)
            (local6 if is6 else local).add(value)
        self._local = frozenset(local)
        self._local6 = frozenset(local6)

    def upstreams(self) -> tuple[tuple[int, int, bool], ...]:
        """(address, port, is IPv6) of each upstream resolver."""
        return self._upstream

    def _is_local(self, dst: int) -> bool:
        """An address of this host: loopback, any of its interface addresses, or 0.0.0.0
        (which reaches the host too). The router's listeners answer on all of them."""
        return dst >> 24 == 127 or dst == 0 or dst in self._local


def _v4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def _v6(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


def _upstream(host: str, port: int) -> tuple[int, int, bool]:
    value, is6 = parse_address(host)
    return value, port, is6


def _embedded_v4(dst: int) -> int | None:
    """The IPv4 address a 6to4 (2002:AABB:CCDD::/48, RFC 3056) or Teredo (2001::/32, RFC
    4380: the client's address, bit-inverted, in the low 32 bits) address leads to."""
    if dst >> 112 == 0x2002:
        return (dst >> 80) & _M32
    if dst >> 96 == 0x20010000:
        return ~dst & _M32
    return None
