"""Destination policy: where a guest may send, and what the virtual addresses stand for.

A WireGuard peer is a remote party; by default it must not reach what only local users
should: the host's loopback services, the services on the host's other addresses, link-local
cloud metadata, multicast/broadcast, and the router's own sockets. The gateway alias is the
explicit, opt-in way to reach host loopback, and the DNS address the way to reach the host's
resolvers. Decisions are pure: the worker asks once per new flow, not per packet.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from wgslirp.net.ipv4 import PROTO_TCP, PROTO_UDP, addr_to_int
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


class Verdict(enum.Enum):
    ALLOW = 0
    DENY = 1


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    host: int  # the address to contact on the host side (after alias translation)
    port: int
    reason: str = ""


@dataclass
class EgressPolicy:
    """`gateway` maps to `gateway_host`; (`dns`, 53) maps to the upstream resolvers.

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
    local_addresses: frozenset[str] = frozenset()  # the host's own IPv4 addresses
    # Called before each decision so `local_addresses` is as the host's are at that moment
    # (the worker drains its address notifications here; see runtime/host_addresses.py).
    refresh: Callable[[], None] | None = None
    _table: PrefixTable[Verdict] = field(init=False, repr=False)
    _gateway: int | None = field(init=False, repr=False)
    _gateway_host: int = field(init=False, repr=False)
    _dns: int | None = field(init=False, repr=False)
    _upstream: tuple[tuple[int, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Longest prefix decides; at equal length an explicit deny beats an allow, which
        # beats the default deny (inserted first, so later inserts overwrite it).
        self._table = PrefixTable()
        for cidr in DEFAULT_DENY:
            self._table.insert(cidr, Verdict.DENY)
        for cidr in self.allow_cidrs:
            self._table.insert(cidr, Verdict.ALLOW)
        for cidr in self.deny_cidrs:
            self._table.insert(cidr, Verdict.DENY)
        self._gateway = addr_to_int(self.gateway) if self.gateway else None
        self._gateway_host = addr_to_int(self.gateway_host)
        self._dns = addr_to_int(self.dns) if self.dns else None
        self._upstream = tuple((addr_to_int(h), p) for h, p in self.dns_upstream)
        self._local = frozenset(addr_to_int(a) for a in self.local_addresses)
        self._explicit_deny = PrefixTable[bool]()
        for cidr in self.deny_cidrs:
            self._explicit_deny.insert(cidr, True)
        # The host's own addresses are opened only by an allow entry narrower than /0:
        # "allow everything" is not a decision to expose the host's own services.
        self._host_allow = PrefixTable[bool]()
        for cidr in self.allow_cidrs:
            if not cidr.endswith("/0"):
                self._host_allow.insert(cidr, True)

    def decide(self, proto: int, dst: int, dport: int) -> Decision:
        """What a new flow to (`dst`, `dport`) may do; called once per flow, not per packet."""
        if self.refresh is not None:
            self.refresh()
        if self._dns is not None and dst == self._dns:
            # TCP too: a resolver retries over TCP after a truncated UDP answer (RFC 7766)
            if dport == 53 and proto in (PROTO_UDP, PROTO_TCP) and self._upstream:
                host, port = self._upstream[0]
                return Decision(Verdict.ALLOW, host, port)
            return Decision(Verdict.DENY, dst, dport, "dns address serves only DNS")
        if self._gateway is not None and dst == self._gateway:
            if (proto, dport) in self.own_sockets:
                return Decision(Verdict.DENY, dst, dport, "router's own socket")
            if self._explicit_deny.lookup(self._gateway_host):
                return Decision(Verdict.DENY, dst, dport, "gateway host denied")
            return Decision(Verdict.ALLOW, self._gateway_host, dport)
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

    def set_local_addresses(self, addresses: Iterable[str]) -> None:
        """Replace the host's own addresses: an address added after start (DHCP, a new
        interface) must guard the router's own ports as well as the ones seen at start."""
        self.local_addresses = frozenset(addresses)
        self._local = frozenset(addr_to_int(a) for a in self.local_addresses)

    def upstreams(self) -> tuple[tuple[int, int], ...]:
        return self._upstream

    def _is_local(self, dst: int) -> bool:
        """An address of this host: loopback, any of its interface addresses, or 0.0.0.0
        (which reaches the host too). The router's listeners answer on all of them."""
        return dst >> 24 == 127 or dst == 0 or dst in self._local
