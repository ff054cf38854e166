"""Flow keys and the choice of worker for each guest packet.

Every key is oriented as the guest sends: (guest, remote, proto, guest port, remote port).
Workers own the NAT state of their flows, so anything that concerns a flow — later packets,
and ICMP errors the guest sends about the flow's return traffic — must hash to the same key.

ICMP echo has no ports; its identifier stands in for both, so the key stays meaningful when
a quoted packet is reversed. The hash is a fixed integer mixer, not Python's `hash()`, which
is salted per process for str and bytes and would send a flow to different workers after a
restart or in a second process.
"""

from __future__ import annotations

import struct
from typing import Final

from wgslirp.net import icmp, icmpv6, ipv4, ipv6

FlowKey = tuple[int, int, int, int, int]

_PORTS = struct.Struct(">HH")
_M32: Final = 0xFFFFFFFF
_M64: Final = (1 << 64) - 1
_GOLDEN: Final = 0x9E3779B97F4A7C15


def flow_key(src: int, dst: int, proto: int, sport: int = 0, dport: int = 0) -> FlowKey:
    """The NAT tables' key; for ICMP echo pass the identifier as both ports."""
    return (src, dst, proto, sport, dport)


def packet_flow_key(packet: bytes | bytearray | memoryview, length: int) -> FlowKey | None:
    """The key of the flow a guest packet belongs to; None if it is neither IPv4 nor IPv6.

    Packets too short or too odd to carry ports fall back to (src, dst, proto, 0, 0), which
    still keeps them on one worker. Any fragment uses that fallback: only the first carries
    ports, and all pieces of one datagram must stay together.
    """
    if length < 20:
        return None
    vihl, total, frag, proto, src, dst = ipv4.SUMMARY.unpack_from(packet)
    if vihl >> 4 != 4:
        return packet_flow_key6(packet, length) if vihl >> 4 == 6 else None
    ihl = (vihl & 0x0F) * 4
    end = min(total, length)
    if ihl < 20 or frag & (ipv4.FLAG_MF | ipv4.OFFSET_MASK):
        return (src, dst, proto, 0, 0)
    if proto == ipv4.PROTO_TCP or proto == ipv4.PROTO_UDP:
        if end >= ihl + 4:
            sport, dport = _PORTS.unpack_from(packet, ihl)
            return (src, dst, proto, sport, dport)
    elif proto == ipv4.PROTO_ICMP and end >= ihl + 8:
        kind = packet[ihl]
        if kind == icmp.ECHO_REQUEST or kind == icmp.ECHO_REPLY:
            ident: int = _PORTS.unpack_from(packet, ihl + 4)[0]
            return (src, dst, proto, ident, ident)
        if kind in icmp.ERROR_TYPES:
            quoted = icmp.quoted_flow(packet, length)
            if quoted is not None:
                # The quote is a packet the router sent to the guest; reversed, it is the
                # guest's own flow.
                qsrc, qdst, qproto, qsport, qdport = quoted
                return (qdst, qsrc, qproto, qdport, qsport)
    return (src, dst, proto, 0, 0)


def packet_flow_key6(packet: bytes | bytearray | memoryview, length: int) -> FlowKey | None:
    """`packet_flow_key` for IPv6: the protocol is the one at the end of the extension
    header chain; a chain too broken to walk gives (src, dst, next header, 0, 0), since
    the worker will drop it anyway and it only needs a worker."""
    if length < ipv6.HEADER_LEN:
        return None
    src, dst = ipv6.src_dst(packet)
    chain = ipv6.Chain()
    if not ipv6.walk(packet, length, chain):
        return (src, dst, packet[6], 0, 0)
    return chain_flow_key6(packet, length, chain, src, dst)


def chain_flow_key6(
    packet: bytes | bytearray | memoryview, length: int, chain: ipv6.Chain, src: int, dst: int
) -> FlowKey:
    """The key of an IPv6 packet whose chain the caller walked already (the forwarder
    does, once per packet; walking it again here would double that cost)."""
    proto, off, end = chain.proto, chain.offset, chain.end
    if chain.frag >= 0:
        return (src, dst, proto, 0, 0)
    if proto == ipv6.NH_TCP or proto == ipv6.NH_UDP:
        if end >= off + 4:
            sport, dport = _PORTS.unpack_from(packet, off)
            return (src, dst, proto, sport, dport)
    elif proto == ipv6.NH_ICMPV6 and end >= off + 8:
        kind = packet[off]
        if kind == icmpv6.ECHO_REQUEST or kind == icmpv6.ECHO_REPLY:
            ident: int = _PORTS.unpack_from(packet, off + 4)[0]
            return (src, dst, proto, ident, ident)
        if icmpv6.is_error(kind):
            quoted = icmpv6.quoted_flow(packet, length)
            if quoted is not None:
                qsrc, qdst, qproto, qsport, qdport = quoted
                return (qdst, qsrc, qproto, qdport, qsport)
    return (src, dst, proto, 0, 0)


def _fold32(addr: int) -> int:
    """A 128-bit address folded to 32 bits for the hash (any fold works: the finaliser
    below mixes; xor keeps the prefix and interface-id halves both in play)."""
    addr ^= addr >> 64
    return (addr ^ (addr >> 32)) & _M32


def flow_hash(src: int, dst: int, proto: int, sport: int, dport: int) -> int:
    """A 64-bit hash of a flow key, identical in every process and on every run.

    The addresses fill one 64-bit word (IPv6 addresses folded to 32 bits first), protocol
    and ports a second that is spread by a multiplication; the murmur3 finaliser then mixes
    every input bit into the low bits that the modulo keeps.
    """
    if (src | dst) > _M32:
        src, dst = _fold32(src), _fold32(dst)
    h = ((src << 32) | dst) ^ ((((proto << 32) | (sport << 16) | dport) * _GOLDEN) & _M64)
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    h ^= h >> 33
    return h


def shard_of_key(key: FlowKey, nworkers: int) -> int:
    if nworkers <= 1:
        return 0
    return flow_hash(*key) % nworkers


def shard_of(packet: bytes | bytearray | memoryview, length: int, nworkers: int) -> int:
    """The worker, in [0, nworkers), that owns the flow of a packet from the guest.

    Garbage that is neither IPv4 nor IPv6 goes to worker 0, which will drop it like any
    worker would.
    """
    if nworkers <= 1:
        return 0
    key = packet_flow_key(packet, length)
    if key is None:
        return 0
    return flow_hash(*key) % nworkers
