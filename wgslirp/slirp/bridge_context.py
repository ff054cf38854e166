"""What every bridge in a worker shares: where packets to guests go, where host sockets
are watched, limits, counters.

Bridges build packets for guests directly in egress slots (`reserve` a slot, write, then
`commit`), so a datagram received from a host socket is copied once, by the kernel.

The bridges own host sockets but not the event loop that watches them: they register
sockets through the small `Poller` protocol defined here, which the runtime's `Loop`
satisfies. slirp so depends on the shape of a loop, never on wgslirp.runtime.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol

from wgslirp.net import fragment, icmp, icmpv6, ipv4, ipv6
from wgslirp.obs.counters import Counters

ICMP_ERROR_RATE = 1000.0  # unreachables per second per worker, sustained
ICMP_ERROR_BURST = 200  # and in a burst

# The bridges speak IPv4's unreachable codes; an IPv6 guest gets the ICMPv6 code that means
# the same (RFC 4443 3.1), so no caller needs to know which family it is answering.
V6_UNREACH_CODE = {
    icmp.NET_UNREACHABLE: icmpv6.NO_ROUTE,
    icmp.HOST_UNREACHABLE: icmpv6.ADDRESS_UNREACHABLE,
    icmp.PROTO_UNREACHABLE: icmpv6.ADDRESS_UNREACHABLE,
    icmp.PORT_UNREACHABLE: icmpv6.PORT_UNREACHABLE,
    9: icmpv6.ADMIN_PROHIBITED,  # network administratively prohibited
    10: icmpv6.ADMIN_PROHIBITED,  # host administratively prohibited
    icmp.ADMIN_PROHIBITED: icmpv6.ADMIN_PROHIBITED,
}


class Egress(Protocol):
    """Packets to guests, towards ingress for encryption (an SPSC ring in production)."""

    def reserve(self) -> memoryview | None:
        """A writable slot of at least `mtu + 16` bytes, or None while the ring is full."""
        ...

    def commit(self, length: int, peer: int) -> None:
        """Queue the packet written at the start of the last reserved slot."""
        ...

    def flush(self, now: float = 0.0) -> None:
        """Publish what was committed (one head store, at most one doorbell)."""
        ...


ROUTE_BY_DESTINATION = 0
"""The peer index an egress packet carries when its sender cannot know the peer: ingress
then encrypts it to the peer whose AllowedIPs hold its destination (cryptokey routing).
An inbound forward's first SYN needs it; the guest's answer tells the worker the peer.
Real peer indices start at 1."""


SocketHandler = Callable[[float, int], None]
"""Called as `handler(now, events)` when a registered socket is ready; `events` is a mask
of `selectors.EVENT_READ` / `selectors.EVENT_WRITE`."""


class Poller(Protocol):
    """The readiness watch over host sockets (the worker's event loop in production)."""

    def register(self, fileobj: socket.socket, handler: SocketHandler, events: int = ...) -> None:
        """Watch `fileobj` for `events` (default: readable)."""
        ...

    def modify(self, fileobj: socket.socket, handler: SocketHandler, events: int) -> None:
        """Change what a registered socket is watched for."""
        ...

    def unregister(self, fileobj: socket.socket) -> None:
        """Stop watching; a socket that is not registered is ignored, so a teardown path
        never needs to know whether the socket was being watched."""
        ...


class WorkerStats(Counters):
    """Counters of one worker; plain ints, exported by the runtime."""

    udp_flows_opened: int
    udp_flows_evicted: int
    udp_flows_expired: int
    udp_rx_packets: int
    udp_tx_packets: int
    udp_rx_bytes: int
    udp_tx_bytes: int
    udp_malformed: int
    udp_send_errors: int
    udp_icmp_errors_relayed: int
    icmp_echo_requests: int
    icmp_echo_replies: int
    icmp_unsupported: int
    icmp_unavailable: int
    policy_denied: int
    egress_full: int
    fragments_sent: int
    too_big_dropped: int
    not_handled: int
    socket_errors: int
    internal_errors: int
    peer_flows_closed: int  # flows closed because their peer was removed (UAPI, reload)
    icmp_errors_rate_limited: int  # unreachables not sent (RFC 1812 rate limit)


class BridgeContext:
    def __init__(
        self,
        egress: Egress,
        poller: Poller,
        *,
        mtu: int,
        ttl: int = 64,
        copy_tos: bool = False,
        stats: WorkerStats | None = None,
        worker_index: int = 0,
        nworkers: int = 1,
        gateway: int | None = None,
        gateway6: int | None = None,
    ) -> None:
        self.egress = egress
        self.gateway = gateway  # source of errors about addresses no host could answer from
        self.gateway6 = gateway6
        # RFC 1812 4.3.2.8: ICMP errors are rate limited (a token bucket per worker), so a
        # guest hammering a closed port or a denied address cannot turn the worker into an
        # error generator. The bucket starts full; time comes from the callers' `now`.
        self._err_tokens = float(ICMP_ERROR_BURST)
        self._err_time = float("-inf")
        self.poller = poller
        self.mtu = mtu
        self.ttl = ttl
        self.copy_tos = copy_tos  # COPY_TOS: replies carry the DSCP/ECN byte the guest used
        self.stats = stats or WorkerStats()
        self.worker_index = worker_index
        self.nworkers = max(1, nworkers)
        self._ident = worker_index << 12
        self._ident6 = worker_index << 24
        self.scratch = bytearray(65536 + 64)
        self.scratch2 = bytearray(65536 + 64)

    def next_ident(self) -> int:
        """IPv4 identification for packets we originate (RFC 6864: unique per src/dst/proto
        while fragments may be in flight; a counter per worker is enough)."""
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def next_ident6(self) -> int:
        """IPv6 fragment identification for packets we originate (RFC 7739: unpredictable
        is better, but the router fragments only its own replies to one guest, and a
        32-bit counter per worker never repeats while fragments are in flight)."""
        self._ident6 = (self._ident6 + 1) & 0xFFFFFFFF
        return self._ident6

    def emit(self, packet: bytes | bytearray | memoryview, length: int, peer: int) -> bool:
        """Copy a whole packet to the egress, fragmenting it to the tunnel MTU if needed
        (IPv6: the router is the source of what it emits, so it may fragment too)."""
        if length > self.mtu:
            return self._emit_fragments(packet, length, peer)
        slot = self.egress.reserve()
        if slot is None:
            self.stats.egress_full += 1
            return False
        slot[:length] = memoryview(packet)[:length]
        self.egress.commit(length, peer)
        return True

    def _emit_fragments(
        self, packet: bytes | bytearray | memoryview, length: int, peer: int
    ) -> bool:
        if packet[0] >> 4 == 6:
            frags: list[bytearray] | None = fragment.fragment6(
                packet, length, self.mtu, self.next_ident6()
            )
        else:
            frags = fragment.fragment(packet, length, self.mtu)
        if frags is None:  # DF set: nothing we can do but count it
            self.stats.too_big_dropped += 1
            return False
        for frag in frags:
            slot = self.egress.reserve()
            if slot is None:
                self.stats.egress_full += 1
                return False
            n = len(frag)
            slot[:n] = frag
            self.egress.commit(n, peer)
            self.stats.fragments_sent += 1
        return True

    def send_unreachable(
        self,
        original: bytes | bytearray | memoryview,
        length: int,
        code: int,
        peer: int,
        now: float,
        router_src: int | None = None,
    ) -> None:
        """ICMP destination unreachable to the guest about one of its packets, at loop time
        `now` (rate limited, so the bucket needs the time; the caller has it already)."""
        tokens = min(
            float(ICMP_ERROR_BURST), self._err_tokens + (now - self._err_time) * ICMP_ERROR_RATE
        )
        self._err_time = now
        if tokens < 1.0:
            self._err_tokens = tokens
            self.stats.icmp_errors_rate_limited += 1
            return
        self._err_tokens = tokens - 1.0
        if length >= 40 and original[0] >> 4 == 6:
            self._unreachable6(original, length, code, peer, router_src)
            return
        if router_src is None and self.gateway is not None and length >= 20:
            first = original[16]
            if first == 0 or first == 127 or first >= 224:
                # An error "from" 0.x, 127.x or a multicast/reserved address is a martian
                # the guest's stack drops; the router's own address is the honest source.
                router_src = self.gateway
        slot = self.egress.reserve()
        if slot is None:
            self.stats.egress_full += 1
            return
        n = icmp.dest_unreachable_into(slot, original, length, code, router_src, self.ttl)
        if n:
            self.egress.commit(n, peer)

    def _unreachable6(
        self,
        original: bytes | bytearray | memoryview,
        length: int,
        code: int,
        peer: int,
        router_src: int | None,
    ) -> None:
        if router_src is None and self.gateway6 is not None:
            dst = ipv6.dst_of(original)
            if ipv6.is_v4_compatible(dst) or ipv6.is_multicast(dst) or ipv6.is_link_local(dst):
                router_src = self.gateway6  # as for IPv4: never an error from a martian
        slot = self.egress.reserve()
        if slot is None:
            self.stats.egress_full += 1
            return
        code6 = V6_UNREACH_CODE.get(code, icmpv6.ADDRESS_UNREACHABLE)
        n = icmpv6.dest_unreachable_into(slot, original, length, code6, router_src, self.ttl)
        if n:
            self.egress.commit(n, peer)


def addr(v: int) -> str:
    return ipv4.int_to_addr(v)


def sock_addr(v: int, v6: bool) -> str:
    """The text a host socket of the address's family takes."""
    return ipv6.int_to_addr(v) if v6 else ipv4.int_to_addr(v)


def traffic_class(pkt: bytes | bytearray | memoryview) -> int:
    """The DSCP/ECN byte of a packet of either family (COPY_TOS)."""
    if pkt[0] >> 4 == 6:
        return ((pkt[0] & 0x0F) << 4) | (pkt[1] >> 4)
    return pkt[1]
