"""The forwarding decision for each packet a peer sends (sans-I/O).

Once ingress has decrypted a packet and checked its source against the sender's AllowedIPs,
what happens next depends only on the packet, the peer it came from, the peers' routes, the
router's own addresses and time. That decision lives here, apart from the sockets and rings,
so each rule (who answers a ping of the gateway, when TTL runs out, which peer owns an
address, which worker owns a flow) has a unit test with a fake clock, and IPv6 and inbound
forwarding add cases here instead of to the ingress loop.

`route` runs once per packet on the hot path, so it returns a small int verdict and leaves
its results in attributes (`shard`, `whole`, `target`, `replies`) instead of allocating an
action object per packet; the common verdict, DELIVER, touches nothing but `shard`. The
forwarder is generic over the peer type: it compares peers by identity and never looks
inside one, so it imports nothing from the WireGuard layer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Final, Generic, TypeVar

from wgslirp.net import fragment, icmp, icmpv6, ipv4, ipv6
from wgslirp.net.flowkey import chain_flow_key6, flow_hash, shard_of
from wgslirp.net.prefix import PrefixTable, parse_prefix
from wgslirp.obs.counters import Counters

P = TypeVar("P")

DELIVER: Final = 0
"""Hand the packet, as given, to worker `shard`."""
DELIVER_WHOLE: Final = 1
"""A fragment completed its datagram: hand `whole` (a fresh buffer) to worker `shard`."""
REPLY: Final = 2
"""The router answers: send each packet of `replies` back to the sending peer."""
OVERLAY: Final = 3
"""Another peer owns the destination: send the packet (TTL already lowered in place) to
`target`."""
DROP: Final = 4
"""Nothing leaves (counted in `stats`)."""
HELD: Final = 5
"""A fragment is kept until the rest of its datagram arrives."""

_DST = struct.Struct(">I")
_FRAG = struct.Struct(">H")
_ADDRS6 = struct.Struct(">QQQQ")  # an IPv6 header's source and destination, as halves
# The 5-tuple of an IPv4 header without options, read from byte 8 (TTL and header checksum
# skipped): protocol, both addresses as one word, both ports as another.
_FLOW4 = struct.Struct(">xBxxQI")
# The same for IPv6 without extension headers, from byte 6: next header, hop limit, both
# addresses as halves, both ports as one word.
_FLOW6 = struct.Struct(">BB4QI")
_MF_OR_OFFSET: Final = 0x3FFF
SHARD_MEMO_MAX: Final = 4096  # flows whose shard route remembers (see Forwarder._remember)
_MAX_PACKET: Final = 0xFFFF + 64
# RFC 4443 2.4 (f): ICMPv6 errors are rate limited. A token bucket as the bridges' (1,000 a
# second, bursts of 200): a guest with a wrong MTU blasting big packets gets enough Packet
# Too Big to learn, not one per packet.
ERROR_RATE: Final = 1000.0
ERROR_BURST: Final = 200.0


class ForwardStats(Counters):
    gateway_echo_replies: int
    overlay_forwarded: int
    overlay_ttl_expired: int
    ttl_expired: int
    peer_space_dropped: int
    ipv6_malformed: int
    ipv6_multicast_dropped: int
    ipv6_v4_compatible_dropped: int
    ipv6_udp_zero_checksum: int
    ipv6_too_big: int
    ipv6_errors_rate_limited: int


class Forwarder(Generic[P]):
    """Decides, for each packet from a peer, between the verdicts above.

    `routes(dst)` returns the peer whose AllowedIPs hold `dst` (longest prefix) or None,
    `routes6` the same for IPv6 destinations (None: no peer owns IPv6 space).
    `own` are the router's addresses inside the tunnel (gateway, DNS, of either family):
    pings to them are answered here. `gateway` and `gateway6` are the sources of the
    router's own ICMP and ICMPv6 errors; without them a packet whose TTL or hop limit runs
    out is dropped silently (and Packet Too Big comes from the destination it was sent to).
    `overlay` (WG_OVERLAY_ROUTING) lets peers reach each other through the router;
    `overlay_exclude` are destinations that go to the host network even though a peer's
    AllowedIPs cover them.
    """

    def __init__(
        self,
        routes: Callable[[int], P | None],
        *,
        nworkers: int,
        mtu: int,
        ttl: int,
        own: Iterable[str] = (),
        gateway: str | None = None,
        gateway6: str | None = None,
        routes6: Callable[[int], P | None] | None = None,
        overlay: bool = False,
        overlay_exclude: Iterable[str] = (),
        reassembler: fragment.Reassembler | None = None,
    ) -> None:
        self._routes = routes
        self._routes6 = routes6 if routes6 is not None else _no_route
        self.nworkers = nworkers
        self.mtu = mtu
        self.ttl = ttl
        own_parsed = [parse_prefix(a) for a in own]  # (address, /32 or /128, is IPv6)
        self._own = frozenset(v for v, _, is6 in own_parsed if not is6)
        self._own6 = frozenset(v for v, _, is6 in own_parsed if is6)
        self._gateway = ipv4.addr_to_int(gateway) if gateway else None
        self._gateway6 = ipv6.addr_to_int(gateway6) if gateway6 else None
        self._chain = ipv6.Chain()
        self._frag_ident = 0
        self._err_tokens = ERROR_BURST
        self._err_time = float("-inf")
        self.overlay = overlay
        self._excluded: PrefixTable[bool] = PrefixTable()
        for cidr in overlay_exclude:
            self._excluded.insert(cidr, True)
        self.reassembler = reassembler if reassembler is not None else fragment.Reassembler()
        self._reply = bytearray(_MAX_PACKET)
        self.stats = ForwardStats()
        # The shard of each TCP/UDP flow seen lately, by the header words that name it.
        self._shards: dict[tuple[int, ...], int] = {}
        # Results of the last `route`, valid until the next call:
        self.shard = 0
        self.whole: bytearray = bytearray()
        self.target: P | None = None
        self.replies: list[memoryview | bytearray] = []

    def route(self, peer: P, pkt: memoryview, n: int, now: float) -> int:
        """Decide what becomes of `pkt[:n]`, an IPv4 packet `peer` sent (header already
        checked by the device). OVERLAY changes the packet in place (TTL, checksum)."""
        if pkt[0] >> 4 == 6:
            return self._route6(peer, pkt, n, now)
        dst = _DST.unpack_from(pkt, 16)[0]
        own = dst in self._own
        if own and pkt[9] == ipv4.PROTO_ICMP:
            return self._answer_echo(pkt, n, now)
        target = self._routes(dst)
        if target is not None and target is not peer and not self._excluded.lookup(dst):
            # Another peer's tunnel address: never the host network's business.
            return self._overlay(target, pkt)
        if pkt[8] <= 1 and not own:
            # One hop to anywhere beyond the router (its own addresses are not beyond it):
            # a packet that may not be forwarded gets "time exceeded" from the gateway
            # address, so traceroute shows the router.
            return self._ttl_expired(pkt, n)
        if _FRAG.unpack_from(pkt, 6)[0] & _MF_OR_OFFSET:
            whole = self.reassembler.feed(pkt, n, now)
            if whole is None:
                return HELD
            self.whole = whole
            self.shard = shard_of(whole, len(whole), self.nworkers) if self.nworkers > 1 else 0
            return DELIVER_WHOLE
        if self.nworkers > 1:
            if (
                pkt[0] == 0x45
                and (pkt[9] == ipv4.PROTO_TCP or pkt[9] == ipv4.PROTO_UDP)
                and n >= 24
            ):
                # A flow's shard is remembered: the flow hash is 1.4 us per packet in the
                # process everything goes through, the lookup one unpack and a dict probe.
                # (Shorter than its ports, a packet's key would be read past its end: it is
                # hashed without them, and must not be remembered under bytes not its own.)
                key = _FLOW4.unpack_from(pkt, 8)
                shard = self._shards.get(key)
                if shard is None:
                    shard = self._remember(key, shard_of(pkt, n, self.nworkers))
                self.shard = shard
            else:
                self.shard = shard_of(pkt, n, self.nworkers)
        else:
            self.shard = 0
        return DELIVER

    def _remember(self, key: tuple[int, ...], shard: int) -> int:
        """Keep `shard` for the flow named by `key` (an IPv4 key is three words, an IPv6
        key seven, so the two never meet). Bounded: when full it starts over, so a flood
        of new flows costs a hash each, as it did without the memo, and no more memory.

        One remembered flow was not enough: flows interleave (8 in bench_forward's trains,
        any two peers' traffic in one GRO batch), and each switch paid the hash again:
        route with 2 workers, 8 interleaved UDP flows, 2.04 -> 0.77 us per packet (timeit;
        one flow alone 0.76 -> 0.77, as with the one-flow memo before)."""
        shards = self._shards
        if len(shards) >= SHARD_MEMO_MAX:
            shards.clear()
        shards[key] = shard
        return shard

    def _answer_echo(self, pkt: memoryview, n: int, now: float) -> int:
        """Ping of the gateway/DNS address; a large ping arrives in fragments (reassembled
        first) and its reply leaves in fragments of the tunnel MTU."""
        if _FRAG.unpack_from(pkt, 6)[0] & _MF_OR_OFFSET:
            whole = self.reassembler.feed(pkt, n, now)
            if whole is None:
                return HELD
            pkt, n = memoryview(whole), len(whole)
        k = icmp.echo_reply_into(pkt, n, self._reply, self.ttl)
        if not k:
            return DROP
        self.stats.gateway_echo_replies += 1
        if k <= self.mtu:
            self.replies = [memoryview(self._reply)[:k]]
        else:
            self.replies = list(fragment.fragment(self._reply, k, self.mtu) or ())
        return REPLY

    def _overlay(self, target: P, pkt: memoryview) -> int:
        """Peer to peer inside ingress, as a router would: TTL decremented, expired
        packets dropped (WG_OVERLAY_ROUTING), or refused when overlay routing is off."""
        if not self.overlay:
            self.stats.peer_space_dropped += 1
            return DROP
        if not ipv4.decrement_ttl(pkt):
            self.stats.overlay_ttl_expired += 1
            return DROP
        self.stats.overlay_forwarded += 1
        self.target = target
        return OVERLAY

    def _ttl_expired(self, pkt: memoryview, n: int) -> int:
        self.stats.ttl_expired += 1
        if self._gateway is None:
            return DROP  # no address of ours to answer from
        k = icmp.time_exceeded_into(self._reply, pkt, n, router_src=self._gateway, ttl=self.ttl)
        if not k:
            return DROP
        self.replies = [memoryview(self._reply)[:k]]
        return REPLY

    # --- IPv6 ----------------------------------------------------------------------------------

    def _route6(self, peer: P, pkt: memoryview, n: int, now: float) -> int:
        """`route` for IPv6: the same decisions, plus what IPv6 asks of a router: nothing
        fragments in flight, so a packet above the tunnel MTU is answered with Packet Too
        Big (path MTU discovery); the chain is checked once here so workers see only
        well-formed packets; a UDP checksum of zero is dropped (RFC 8200 8.1).

        Per 1420-byte TCP segment to the gateway (timeit, quiet 2-core box): 0.81 us with
        one worker and 0.88 with two, against IPv4's 0.50 and 0.66; 0.91 and 1.06 when the
        addresses and the ports were unpacked apart and the chain filled for TCP too.
        """
        chain = self._chain
        stats = self.stats
        nh = pkt[6]
        key: tuple[int, ...] = ()
        if (nh == ipv6.NH_TCP or nh == ipv6.NH_UDP or nh == ipv6.NH_ICMPV6) and n >= 44:
            # No extension header, nearly every packet: no walk call, and the flow key (for
            # the shard below) read in the same unpack as the addresses.
            proto, frag = nh, -1
            end = 40 + ((pkt[4] << 8) | pkt[5])
            if end > n:
                stats.ipv6_malformed += 1
                return DROP
            if nh != ipv6.NH_TCP:  # (read by the UDP check and the ICMPv6 shard below)
                chain.proto, chain.offset, chain.end, chain.frag = nh, 40, end, -1
            key = _FLOW6.unpack_from(pkt, 6)
            _, hop, sh, sl, dh, dl, _ports = key
        elif ipv6.walk(pkt, n, chain):
            proto, end, frag = chain.proto, chain.end, chain.frag
            hop = pkt[7]
            sh, sl, dh, dl = _ADDRS6.unpack_from(pkt, 8)
        else:
            stats.ipv6_malformed += 1
            return DROP
        if dh >> 56 == 0xFF:
            # Nothing routes multicast here; a guest's MLD reports (sent from ::) and
            # router solicitations are its stack's chatter, counted apart from real drops.
            stats.ipv6_multicast_dropped += 1
            return DROP
        if not (sh or sl >> 32) or not (dh or dl >> 32):
            # ::/96 (with :: and ::1): the only IPv6 ints that could equal IPv4 ones in a
            # flow key; no guest has such an address and no destination there is allowed.
            stats.ipv6_v4_compatible_dropped += 1
            return DROP
        dst = (dh << 64) | dl
        if end > self.mtu:
            return self._too_big(pkt, n, dst, now)
        own = dst in self._own6
        if own and proto == ipv6.NH_ICMPV6:
            return self._answer_echo6(pkt, end, frag >= 0, now)
        target = self._routes6(dst)
        if target is not None and target is not peer and not self._excluded.lookup6(dst):
            if not self.overlay:
                stats.peer_space_dropped += 1
                return DROP
            if not ipv6.decrement_hop_limit(pkt):
                stats.overlay_ttl_expired += 1
                return DROP
            stats.overlay_forwarded += 1
            self.target = target
            return OVERLAY
        if hop <= 1 and not own:
            stats.ttl_expired += 1
            if self._gateway6 is None or not self._error_allowed(now):
                return DROP  # no address of ours to answer from, or over the error rate
            k = icmpv6.time_exceeded_into(
                self._reply, pkt, n, icmpv6.HOP_LIMIT_EXCEEDED, self._gateway6, self.ttl
            )
            if not k:
                return DROP
            self.replies = [memoryview(self._reply)[:k]]
            return REPLY
        if frag >= 0:
            whole = self.reassembler.feed(pkt, n, now)
            if whole is None:
                return HELD
            wchain = ipv6.Chain()
            if not ipv6.walk(whole, len(whole), wchain):
                stats.ipv6_malformed += 1
                return DROP
            if wchain.proto == ipv6.NH_UDP and not self._udp_checksum_present(whole, wchain):
                return DROP
            self.whole = whole
            self.shard = shard_of(whole, len(whole), self.nworkers) if self.nworkers > 1 else 0
            return DELIVER_WHOLE
        if proto == ipv6.NH_UDP and not self._udp_checksum_present(pkt, chain):
            return DROP
        if self.nworkers > 1:
            if key and proto != ipv6.NH_ICMPV6 and end >= 44:
                shard = self._shards.get(key)  # a flow seen lately (see route)
                if shard is None:
                    ports = key[6]
                    src = (sh << 64) | sl
                    h = flow_hash(src, dst, proto, ports >> 16, ports & 0xFFFF)
                    shard = self._remember(key, h % self.nworkers)
                self.shard = shard
            else:
                src = (sh << 64) | sl
                self.shard = flow_hash(*chain_flow_key6(pkt, n, chain, src, dst)) % self.nworkers
        else:
            self.shard = 0
        return DELIVER

    def _udp_checksum_present(self, pkt: memoryview | bytearray, chain: ipv6.Chain) -> bool:
        off = chain.offset
        if chain.end - off >= 8 and pkt[off + 6] == 0 and pkt[off + 7] == 0:
            self.stats.ipv6_udp_zero_checksum += 1
            return False
        return True

    def _too_big(self, pkt: memoryview, n: int, dst: int, now: float) -> int:
        self.stats.ipv6_too_big += 1
        if not self._error_allowed(now):
            return DROP
        src = self._gateway6 if self._gateway6 is not None else dst
        k = icmpv6.packet_too_big_into(self._reply, pkt, n, self.mtu, src, self.ttl)
        if not k:
            return DROP
        self.replies = [memoryview(self._reply)[:k]]
        return REPLY

    def _error_allowed(self, now: float) -> bool:
        tokens = min(ERROR_BURST, self._err_tokens + (now - self._err_time) * ERROR_RATE)
        self._err_time = now
        if tokens < 1.0:
            self._err_tokens = tokens
            self.stats.ipv6_errors_rate_limited += 1
            return False
        self._err_tokens = tokens - 1.0
        return True

    def _answer_echo6(self, pkt: memoryview, n: int, fragmented: bool, now: float) -> int:
        """Ping6 of the gateway/DNS address; a large one arrives in fragments (the guest is
        its source, so it may fragment) and the reply, of which the router is the source,
        leaves in fragments of the tunnel MTU."""
        if fragmented:
            whole = self.reassembler.feed(pkt, n, now)
            if whole is None:
                return HELD
            pkt, n = memoryview(whole), len(whole)
        k = icmpv6.echo_reply_into(pkt, n, self._reply, self.ttl)
        if not k:
            return DROP
        self.stats.gateway_echo_replies += 1
        if k <= self.mtu:
            self.replies = [memoryview(self._reply)[:k]]
        else:
            self._frag_ident = (self._frag_ident + 1) & 0xFFFFFFFF
            self.replies = list(fragment.fragment6(self._reply, k, self.mtu, self._frag_ident))
        return REPLY

    def get_timer(self) -> float | None:
        return self.reassembler.get_timer()

    def handle_timer(self, now: float) -> None:
        self.reassembler.handle_timer(now)


def _no_route(_dst: int) -> None:
    return None
