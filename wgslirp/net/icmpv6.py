"""ICMPv6 (RFC 4443): the messages the router originates, and parsing the guest's.

The IPv4 module's shape (`net/icmp.py`) with IPv6's rules: the checksum covers a
pseudo-header, errors may quote up to the 1280-byte minimum MTU, Packet Too Big is the only
way a path MTU is learned (nothing fragments in flight), and the refusals of RFC 4443
2.4 (e) replace those of RFC 1122.
"""

from __future__ import annotations

import struct
from typing import Final

from wgslirp.net import ipv6
from wgslirp.net.checksum import fold, ones_sum

DEST_UNREACHABLE: Final = 1
PACKET_TOO_BIG: Final = 2
TIME_EXCEEDED: Final = 3
PARAMETER_PROBLEM: Final = 4
ECHO_REQUEST: Final = 128
ECHO_REPLY: Final = 129
REDIRECT: Final = 137

# Destination unreachable codes (RFC 4443 3.1).
NO_ROUTE: Final = 0
ADMIN_PROHIBITED: Final = 1
BEYOND_SCOPE: Final = 2
ADDRESS_UNREACHABLE: Final = 3
PORT_UNREACHABLE: Final = 4
SOURCE_POLICY_FAILED: Final = 5
REJECT_ROUTE: Final = 6

# Time exceeded codes (RFC 4443 3.3).
HOP_LIMIT_EXCEEDED: Final = 0
REASSEMBLY_TIMEOUT: Final = 1

MIN_MTU: Final = 1280
# RFC 4443 2.4 (c): an error carries as much of the offending packet as fits the minimum MTU.
MAX_ERROR_LENGTH: Final = MIN_MTU
_QUOTE_ROOM: Final = MAX_ERROR_LENGTH - ipv6.HEADER_LEN - 8

_HEAD = struct.Struct(">BBHI")
_ECHO = struct.Struct(">HH")
_PORTS = struct.Struct(">HH")
_CSUM = struct.Struct(">H")

Parsed = tuple[int, int, int, int]
QuotedFlow = tuple[int, int, int, int, int]


def is_error(icmp_type: int) -> bool:
    """Types below 128 are errors (RFC 4443 2.1)."""
    return icmp_type < 128


def icmp_checksum(
    pkt: bytes | bytearray | memoryview, offset: int, icmp_len: int, src: int, dst: int
) -> int:
    """The folded sum over an ICMPv6 message and its pseudo-header: 0 when it verifies."""
    return fold(
        ones_sum(
            memoryview(pkt)[offset : offset + icmp_len],
            ipv6.pseudo_sum(src, dst, icmp_len, ipv6.NH_ICMPV6),
        )
    )


def _finish(o: memoryview, n: int, src: int, dst: int, hop_limit: int) -> int:
    """IPv6 header in front of the ICMPv6 message at o[40:n], checksum filled in."""
    ipv6.write_header(
        o,
        payload_length=n - ipv6.HEADER_LEN,
        next_header=ipv6.NH_ICMPV6,
        src=src,
        dst=dst,
        hop_limit=hop_limit,
    )
    o[42:44] = b"\x00\x00"
    _CSUM.pack_into(o, 42, icmp_checksum(o, 40, n - 40, src, dst))
    return n


def parse(pkt: bytes | bytearray | memoryview, length: int) -> Parsed | None:
    """(type, code, ICMPv6 offset, ICMPv6 length) of a whole ICMPv6 packet, or None.

    Fragments and messages shorter than the 8-byte header are refused; the checksum is not
    checked here (see `checksum_ok`).
    """
    chain = ipv6.Chain()
    if not ipv6.walk(pkt, length, chain) or chain.frag >= 0 or chain.proto != ipv6.NH_ICMPV6:
        return None
    if chain.end - chain.offset < 8:
        return None
    return pkt[chain.offset], pkt[chain.offset + 1], chain.offset, chain.end - chain.offset


def checksum_ok(pkt: bytes | bytearray | memoryview, offset: int, icmp_len: int) -> bool:
    src, dst = ipv6.src_dst(pkt)
    return icmp_checksum(pkt, offset, icmp_len, src, dst) == 0


def echo_id_seq(pkt: bytes | bytearray | memoryview, offset: int) -> tuple[int, int]:
    ident, seq = _ECHO.unpack_from(pkt, offset + 4)
    return ident, seq


def echo_reply_into(
    request: bytes | bytearray | memoryview,
    length: int,
    out: bytearray | memoryview,
    hop_limit: int = 64,
) -> int:
    """Answer an ICMPv6 echo request in `out`; returns the reply length, or 0 if the request
    is not a whole, well-formed echo request with a valid checksum. Extension headers of
    the request are not repeated in the reply."""
    parsed = parse(request, length)
    if parsed is None:
        return 0
    kind, code, off, ilen = parsed
    if kind != ECHO_REQUEST or code != 0 or not checksum_ok(request, off, ilen):
        return 0
    src, dst = ipv6.src_dst(request)
    if ipv6.is_multicast(src):
        return 0
    n = ipv6.HEADER_LEN + ilen
    o = memoryview(out)
    o[40:n] = memoryview(request)[off : off + ilen]
    o[40] = ECHO_REPLY
    return _finish(o, n, dst, src, hop_limit)


def may_send_error(
    original: bytes | bytearray | memoryview, length: int, *, too_big: bool = False
) -> bool:
    """Whether RFC 4443 2.4 (e) allows an error about `original`.

    Refused: malformed packets, packets from the unspecified or a multicast source, packets
    to a multicast destination (Packet Too Big excepted, as the RFC allows), and ICMPv6
    errors and redirects. A fragment other than the first hides its protocol's header, so
    an ICMPv6 one might be an error: it is refused too.
    """
    chain = ipv6.Chain()
    if not ipv6.walk(original, length, chain):
        return False
    src, dst = ipv6.src_dst(original)
    if not ipv6.is_host_address(src) or (ipv6.is_multicast(dst) and not too_big):
        return False
    if chain.proto == ipv6.NH_ICMPV6:
        if chain.frag >= 0 and ipv6.fragment_fields(original, chain.frag)[1]:
            return False
        if chain.offset >= chain.end:
            return False
        kind = original[chain.offset]
        return not is_error(kind) and kind != REDIRECT
    return True


def _error_into(
    out: bytearray | memoryview,
    original: bytes | bytearray | memoryview,
    original_len: int,
    icmp_type: int,
    code: int,
    rest: int,
    router_src: int | None,
    hop_limit: int,
) -> int:
    if not may_send_error(original, original_len, too_big=icmp_type == PACKET_TOO_BIG):
        return 0
    src, dst = ipv6.src_dst(original)
    quoted = min(ipv6.HEADER_LEN + ipv6.payload_length(original), original_len, _QUOTE_ROOM)
    n = 48 + quoted
    o = memoryview(out)
    o[48:n] = memoryview(original)[:quoted]
    _HEAD.pack_into(o, 40, icmp_type, code, 0, rest)
    return _finish(o, n, dst if router_src is None else router_src, src, hop_limit)


def dest_unreachable_into(
    out: bytearray | memoryview,
    original: bytes | bytearray | memoryview,
    original_len: int,
    code: int,
    router_src: int | None = None,
    hop_limit: int = 64,
) -> int:
    """A destination-unreachable error about `original`, to its source; the length, or 0
    when `may_send_error` forbids one. As for IPv4 it comes by default from the address the
    guest tried to reach, which to the guest is the router."""
    return _error_into(
        out, original, original_len, DEST_UNREACHABLE, code, 0, router_src, hop_limit
    )


def packet_too_big_into(
    out: bytearray | memoryview,
    original: bytes | bytearray | memoryview,
    original_len: int,
    mtu: int,
    router_src: int | None = None,
    hop_limit: int = 64,
) -> int:
    """Packet Too Big carrying the link MTU (RFC 8201); a value below 1280 is raised to it,
    since no IPv6 link may be smaller."""
    return _error_into(
        out,
        original,
        original_len,
        PACKET_TOO_BIG,
        0,
        max(mtu, MIN_MTU),
        router_src,
        hop_limit,
    )


def time_exceeded_into(
    out: bytearray | memoryview,
    original: bytes | bytearray | memoryview,
    original_len: int,
    code: int = HOP_LIMIT_EXCEEDED,
    router_src: int | None = None,
    hop_limit: int = 64,
) -> int:
    return _error_into(out, original, original_len, TIME_EXCEEDED, code, 0, router_src, hop_limit)


def quoted_flow(pkt: bytes | bytearray | memoryview, length: int) -> QuotedFlow | None:
    """(src, dst, proto, sport, dport) of the packet an ICMPv6 error quotes, as it travelled;
    None if `pkt` is not an ICMPv6 error or quotes less than an IPv6 header.

    The quote is usually cut short, so its chain is walked up to what was quoted, not to its
    own payload length. Ports are 0 when the quote is too short or the quoted packet was a
    non-first fragment; a quoted echo puts its identifier in both port slots, as flow keys do.
    """
    parsed = parse(pkt, length)
    if parsed is None or not is_error(parsed[0]):
        return None
    inner = parsed[2] + 8
    avail_end = parsed[2] + parsed[3]
    if avail_end - inner < ipv6.HEADER_LEN or pkt[inner] >> 4 != 6:
        return None
    quote = memoryview(pkt)[inner:avail_end]
    src, dst = ipv6.src_dst(quote)
    chain = ipv6.Chain()
    end = min(len(quote), ipv6.HEADER_LEN + ipv6.payload_length(quote))
    if not ipv6.walk_from(quote, quote[6], ipv6.HEADER_LEN, end, 6, chain):
        return None
    proto, off = chain.proto, chain.offset
    sport = dport = 0
    if chain.frag < 0 or ipv6.fragment_fields(quote, chain.frag)[1] == 0:
        if proto in (ipv6.NH_TCP, ipv6.NH_UDP) and end >= off + 4:
            sport, dport = _PORTS.unpack_from(quote, off)
        elif (
            proto == ipv6.NH_ICMPV6 and end >= off + 8 and quote[off] in (ECHO_REQUEST, ECHO_REPLY)
        ):
            sport = dport = _ECHO.unpack_from(quote, off + 4)[0]
    return src, dst, proto, sport, dport
