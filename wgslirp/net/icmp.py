"""ICMP messages the router originates itself (RFC 792)."""

from __future__ import annotations

import struct
from typing import Final

from wgslirp.net import ipv4
from wgslirp.net.checksum import checksum

ECHO_REPLY: Final = 0
DEST_UNREACHABLE: Final = 3
ECHO_REQUEST: Final = 8
TIME_EXCEEDED: Final = 11


def echo_reply_into(
    request: bytes | bytearray | memoryview,
    length: int,
    out: bytearray | memoryview,
    ttl: int = 64,
) -> int:
    """Answer an IPv4 ICMP echo request in `out`; returns the reply length or 0 if the
    request is not a well-formed echo request. Identifier, sequence and payload are echoed."""
    if not ipv4.header_valid(request, length):
        return 0
    ihl = ipv4.header_length(request)
    total: int = struct.unpack_from(">H", request, 2)[0]
    if request[9] != ipv4.PROTO_ICMP or total - ihl < 8 or ipv4.is_fragment(request):
        return 0
    icmp = memoryview(request)[ihl:total]
    if icmp[0] != ECHO_REQUEST or icmp[1] != 0 or checksum(icmp) != 0:
        return 0
    src, dst = ipv4.src_dst(request)
    n = 20 + len(icmp)
    o = memoryview(out)
    o[20:n] = icmp
    o[20] = ECHO_REPLY
    o[22:24] = b"\x00\x00"
    struct.pack_into(">H", o, 22, checksum(o[20:n]))
    ident: int = struct.unpack_from(">H", request, 4)[0]
    ipv4.write_header(
        o,
        total_length=n,
        proto=ipv4.PROTO_ICMP,
        src=dst,
        dst=src,
        ttl=ttl,
        ident=ident,
        dont_fragment=False,
    )
    return n


# --- Errors the router originates, and parsing the guest's ICMP ------------------------------

SOURCE_QUENCH: Final = 4
REDIRECT: Final = 5
PARAMETER_PROBLEM: Final = 12

# Destination unreachable codes (RFC 792, RFC 1812 5.2.7.1).
NET_UNREACHABLE: Final = 0
HOST_UNREACHABLE: Final = 1
PROTO_UNREACHABLE: Final = 2
PORT_UNREACHABLE: Final = 3
FRAG_NEEDED: Final = 4
ADMIN_PROHIBITED: Final = 13

# Time exceeded codes.
TTL_EXCEEDED: Final = 0
REASSEMBLY_TIMEOUT: Final = 1

# RFC 1812 4.3.2.3: an error quotes as much of the offending datagram as keeps the whole
# error within 576 bytes, the size every IPv4 host must accept.
MAX_ERROR_LENGTH: Final = 576
_QUOTE_ROOM: Final = MAX_ERROR_LENGTH - 28

ERROR_TYPES: Final = frozenset(
    {DEST_UNREACHABLE, SOURCE_QUENCH, REDIRECT, TIME_EXCEEDED, PARAMETER_PROBLEM}
)
# Only messages known to be queries may provoke an error; anything else, unknown types
# included, might be an error itself, and errors about errors can loop between routers.
_QUERY_TYPES: Final = frozenset({ECHO_REPLY, ECHO_REQUEST, 9, 10, 13, 14, 15, 16, 17, 18})

_ICMP_HEAD = struct.Struct(">BBHI")
_ECHO = struct.Struct(">HH")
_PORTS = struct.Struct(">HH")

Parsed = tuple[int, int, int, int]
QuotedFlow = tuple[int, int, int, int, int]


def is_error(icmp_type: int) -> bool:
    return icmp_type in ERROR_TYPES


def may_send_error(original: bytes | bytearray | memoryview, length: int | None = None) -> bool:
    """Whether RFC 1122 3.2.2 (and RFC 1812 4.3.2.7) allow an ICMP error about `original`.

    Refused: malformed headers, fragments other than the first (the first one carries the
    ports the receiver needs), broadcast or multicast destinations, sources that do not name
    a single host, and ICMP messages that are not known queries. Only the limited broadcast
    is recognised: which directed broadcasts exist depends on subnets this layer never sees.
    """
    n = len(original) if length is None else length
    if n < 20:
        return False
    vihl, total, frag, proto, src, dst = ipv4.SUMMARY.unpack_from(original)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20 or ihl > n or total < ihl:
        return False
    if frag & ipv4.OFFSET_MASK:
        return False
    if not ipv4.is_host_address(src) or ipv4.is_multicast(dst) or dst == ipv4.LIMITED_BROADCAST:
        return False
    if proto == ipv4.PROTO_ICMP:
        return min(total, n) > ihl and original[ihl] in _QUERY_TYPES
    return True


def _error_into(
    out: bytearray | memoryview,
    original: bytes | bytearray | memoryview,
    original_len: int,
    icmp_type: int,
    code: int,
    rest: int,
    router_src: int | None,
    ttl: int,
) -> int:
    if not may_send_error(original, original_len):
        return 0
    total = ipv4.total_length(original)
    quoted = min(total, original_len, _QUOTE_ROOM)
    src, dst = ipv4.src_dst(original)
    n = 28 + quoted
    o = memoryview(out)
    o[28:n] = memoryview(original)[:quoted]
    _ICMP_HEAD.pack_into(o, 20, icmp_type, code, 0, rest)
    struct.pack_into(">H", o, 22, checksum(o[20:n]))
    ipv4.write_header(
        o,
        total_length=n,
        proto=ipv4.PROTO_ICMP,
        src=dst if router_src is None else router_src,
        dst=src,
        ttl=ttl,
        dont_fragment=False,
    )
    return n


def dest_unreachable_into(
    out: bytearray | memoryview,
    original_packet: bytes | bytearray | memoryview,
    original_len: int,
    code: int,
    router_src: int | None = None,
    ttl: int = 64,
    next_hop_mtu: int = 0,
) -> int:
    """Build a destination-unreachable error about `original_packet`, addressed to its
    source; returns the length, or 0 when `may_send_error` forbids one.

    The error comes from `router_src`, by default the address the guest tried to reach:
    to the guest, the router *is* every remote host, and a port-unreachable from anywhere
    else would be ignored by stacks that match errors to sockets. `next_hop_mtu` fills the
    RFC 1191 field of FRAG_NEEDED and is ignored for other codes.
    """
    rest = next_hop_mtu & 0xFFFF if code == FRAG_NEEDED else 0
    return _error_into(
        out, original_packet, original_len, DEST_UNREACHABLE, code, rest, router_src, ttl
    )


def time_exceeded_into(
    out: bytearray | memoryview,
    original_packet: bytes | bytearray | memoryview,
    original_len: int,
    code: int = TTL_EXCEEDED,
    router_src: int | None = None,
    ttl: int = 64,
) -> int:
    """Build a time-exceeded error (TTL expired, or reassembly timed out) about
    `original_packet`; same addressing and refusals as `dest_unreachable_into`. A router
    answering traceroute will usually want `router_src` set to its own gateway address."""
    return _error_into(out, original_packet, original_len, TIME_EXCEEDED, code, 0, router_src, ttl)


def parse(pkt: bytes | bytearray | memoryview, length: int) -> Parsed | None:
    """(type, code, ICMP offset, ICMP length) of a whole ICMP-in-IPv4 packet, or None.

    Every ICMP message has at least the 8-byte header; shorter ones and fragments (whose
    ICMP part is incomplete) are refused. The checksum is not checked here; see
    `checksum_ok`.
    """
    if length < 28:
        return None
    vihl, total, frag, proto, _, _ = ipv4.SUMMARY.unpack_from(pkt)
    ihl = (vihl & 0x0F) * 4
    if (
        vihl >> 4 != 4
        or ihl < 20
        or proto != ipv4.PROTO_ICMP
        or frag & (ipv4.FLAG_MF | ipv4.OFFSET_MASK)
        or total > length
        or total < ihl + 8
    ):
        return None
    return pkt[ihl], pkt[ihl + 1], ihl, total - ihl


def checksum_ok(pkt: bytes | bytearray | memoryview, offset: int, icmp_len: int) -> bool:
    return checksum(memoryview(pkt)[offset : offset + icmp_len]) == 0


def echo_id_seq(pkt: bytes | bytearray | memoryview, offset: int) -> tuple[int, int]:
    """Identifier and sequence number of an echo request or reply starting at `offset`."""
    ident, seq = _ECHO.unpack_from(pkt, offset + 4)
    return ident, seq


def quoted_flow(pkt: bytes | bytearray | memoryview, length: int) -> QuotedFlow | None:
    """(src, dst, proto, sport, dport) of the datagram an ICMP error quotes, as that datagram
    travelled; None if `pkt` is not an ICMP error or quotes less than an IPv4 header.

    Ports are 0 when the quote is too short to hold them or the quoted packet was a non-first
    fragment. A quoted echo puts its identifier in both port slots, the same convention the
    flow keys use, so reversing the tuple still names the echo's flow.
    """
    parsed = parse(pkt, length)
    if parsed is None or parsed[0] not in ERROR_TYPES:
        return None
    inner = parsed[2] + 8
    avail = parsed[2] + parsed[3] - inner
    if avail < 20:
        return None
    vihl, _, frag, proto, src, dst = ipv4.SUMMARY.unpack_from(pkt, inner)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20:
        return None
    sport = dport = 0
    if not frag & ipv4.OFFSET_MASK:
        if proto in (ipv4.PROTO_TCP, ipv4.PROTO_UDP) and avail >= ihl + 4:
            sport, dport = _PORTS.unpack_from(pkt, inner + ihl)
        elif (
            proto == ipv4.PROTO_ICMP
            and avail >= ihl + 8
            and pkt[inner + ihl] in (ECHO_REQUEST, ECHO_REPLY)
        ):
            sport = dport = _ECHO.unpack_from(pkt, inner + ihl + 4)[0]
    return src, dst, proto, sport, dport
