"""IPv6 header parsing and building (RFC 8200), with a bounded extension-header walk.

Addresses are plain ints, as IPv4 addresses are: 128-bit values here, 32-bit ones in
`ipv4`. The family of an int is never guessed from its size where a packet is at hand (the
version nibble says it); elsewhere the router keeps the two apart by refusing IPv6 guest and
destination addresses inside ::/96 (IPv4-compatible, deprecated by RFC 4291), which are the
only IPv6 ints that could equal an IPv4 one. See docs/architecture.md, "Both families".

The extension-header walk is bounded twice, by count and by bytes, because a chain is the
one part of an IPv6 packet whose parsing cost the sender chooses: RFC 8200 4.1 allows each
header once (destination options twice), and nothing legitimate a guest sends through a
slirp router carries more than a few. Hop-by-hop options are only valid first (RFC 8200
4.3); anything else that breaks the rules makes the packet malformed, never "best effort".
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

HEADER_LEN: Final = 40
MAX_PAYLOAD: Final = 0xFFFF

# Next-header values (IANA "Assigned Internet Protocol Numbers").
NH_HOP_BY_HOP: Final = 0
NH_TCP: Final = 6
NH_UDP: Final = 17
NH_ROUTING: Final = 43
NH_FRAGMENT: Final = 44
NH_ICMPV6: Final = 58
NH_NONE: Final = 59
NH_DEST_OPTS: Final = 60

FRAGMENT_HEADER_LEN: Final = 8
# Bounds of the chain walk. In count: RFC 8200 4.1 allows each header once, destination
# options twice, hop-by-hop only first, and the walk stops at the fragment header, so no
# valid chain has more than four headers before it; a repeat makes the packet malformed.
# In bytes: the chain must end within this many bytes of the packet start. 512 bytes of
# extension headers is far beyond anything legitimate traffic carries (RFC 7112 wants the
# whole chain in the first fragment, and RFC 9098 reports that chains of more than a few
# dozen bytes are dropped on much of the internet anyway).
MAX_CHAIN_END: Final = HEADER_LEN + 512

# The headers the walk steps over; anything else ends the chain (TCP, UDP, ICMPv6, No Next
# Header, or a protocol the router does not carry, which the caller refuses by number).
_EXTENSIONS: Final = frozenset({NH_HOP_BY_HOP, NH_ROUTING, NH_FRAGMENT, NH_DEST_OPTS})

# version/class/flow word, payload length, next header, hop limit, source and destination
# each as two 64-bit halves (two unpacks of 8 bytes are cheaper than int.from_bytes).
SUMMARY = struct.Struct(">IHBBQQQQ")
_HALVES = struct.Struct(">QQ")
_U16 = struct.Struct(">H")
_FRAG = struct.Struct(">BxHI")

ALL_ONES: Final = (1 << 128) - 1
V4_COMPAT_LIMIT: Final = 1 << 32  # ::/96 holds exactly the ints below this


def addr_to_int(addr: str) -> int:
    return int(ipaddress.IPv6Address(addr))


def int_to_addr(v: int) -> str:
    return str(ipaddress.IPv6Address(v))


def to_bytes(v: int) -> bytes:
    return v.to_bytes(16, "big")


def src_dst(pkt: bytes | bytearray | memoryview) -> tuple[int, int]:
    sh, sl, dh, dl = struct.unpack_from(">QQQQ", pkt, 8)
    return (sh << 64) | sl, (dh << 64) | dl


def dst_of(pkt: bytes | bytearray | memoryview) -> int:
    hi: int
    lo: int
    hi, lo = _HALVES.unpack_from(pkt, 24)
    return (hi << 64) | lo


def payload_length(pkt: bytes | bytearray | memoryview) -> int:
    value: int = _U16.unpack_from(pkt, 4)[0]
    return value


def header_valid(pkt: bytes | bytearray | memoryview, length: int) -> bool:
    """Version 6 and a payload length that the received bytes hold. A jumbogram (payload
    length 0 and a hop-by-hop jumbo option, RFC 2675) never fits a tunnel: its zero-length
    payload cannot hold the hop-by-hop header, so `walk` refuses it."""
    if length < HEADER_LEN or pkt[0] >> 4 != 6:
        return False
    plen: int = _U16.unpack_from(pkt, 4)[0]
    return HEADER_LEN + plen <= length


class Chain:
    """Where the extension-header walk ended, filled in by `walk` (one per caller, reused).

    `proto` is the upper-layer protocol (or the fragmentable part's first header when the
    packet is a fragment), `offset` where its header starts, `end` the end of the payload
    (IPv6 header plus payload length; trailing bytes beyond it are padding), `frag` the
    offset of the fragment header or -1, and `nh_at` the offset of the next-header byte that
    names `proto` (the one a reassembler or an extension stripper rewrites).
    """

    __slots__ = ("end", "frag", "nh_at", "offset", "proto")

    def __init__(self) -> None:
        self.proto = 0
        self.offset = 0
        self.end = 0
        self.frag = -1
        self.nh_at = 6


def walk(pkt: bytes | bytearray | memoryview, length: int, chain: Chain) -> bool:
    """Walk the extension headers of the IPv6 packet `pkt[:length]` into `chain`; False if
    the packet is malformed or its chain breaks the bounds in the module docstring.

    The walk stops at the fragment header: what follows it belongs to the fragmentable part,
    which only the first fragment starts and only reassembly makes whole.
    """
    if length < HEADER_LEN or pkt[0] >> 4 != 6:
        return False
    end = HEADER_LEN + ((pkt[4] << 8) | pkt[5])
    if end > length:
        return False
    nh = pkt[6]
    if nh not in _EXTENSIONS:
        # No extension header, nearly every packet: no walk (1.1 µs of the 2.1 µs an
        # IPv6 TCP segment cost the forwarder, against 1.0 µs for an IPv4 one).
        chain.proto = nh
        chain.offset = HEADER_LEN
        chain.end = end
        chain.frag = -1
        chain.nh_at = 6
        return True
    return walk_from(pkt, nh, HEADER_LEN, end, 6, chain)


def walk_from(
    pkt: bytes | bytearray | memoryview,
    nh: int,
    off: int,
    end: int,
    nh_at: int,
    chain: Chain,
) -> bool:
    """`walk` from the header `nh` at `off` (used again on a reassembled fragmentable part)."""
    dest_opts = 0
    flags = 0  # bit per header type seen: 1 routing, 2 fragment
    while nh in _EXTENSIONS:
        if nh == NH_HOP_BY_HOP and off != HEADER_LEN:
            return False  # only allowed right after the IPv6 header
        if nh == NH_FRAGMENT:
            if flags & 2 or off + FRAGMENT_HEADER_LEN > end:
                return False
            chain.proto = pkt[off]
            chain.offset = off + FRAGMENT_HEADER_LEN
            chain.end = end
            chain.frag = off
            chain.nh_at = nh_at
            return True
        if off + 2 > end:
            return False
        size = (pkt[off + 1] + 1) * 8
        if nh == NH_ROUTING:
            if flags & 1:
                return False
            flags |= 1
        elif nh == NH_DEST_OPTS:
            dest_opts += 1
            if dest_opts > 2:
                return False
        if off + size > end or off + size > MAX_CHAIN_END:
            return False
        nh_at = off
        nh = pkt[off]
        off += size
    chain.proto = nh
    chain.offset = off
    chain.end = end
    chain.frag = -1
    chain.nh_at = nh_at
    return True


def fragment_fields(pkt: bytes | bytearray | memoryview, frag: int) -> tuple[int, int, bool, int]:
    """(next header, data offset in bytes, more fragments, identification) of the fragment
    header at `frag`."""
    nh, word, ident = _FRAG.unpack_from(pkt, frag)
    return nh, word & 0xFFF8, bool(word & 1), ident


def write_header(
    buf: bytearray | memoryview,
    *,
    payload_length: int,
    next_header: int,
    src: int,
    dst: int,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> None:
    """Write a 40-byte header at the start of `buf` (IPv6 has no header checksum)."""
    SUMMARY.pack_into(
        buf,
        0,
        (6 << 28) | ((traffic_class & 0xFF) << 20) | (flow_label & 0xFFFFF),
        payload_length,
        next_header,
        hop_limit,
        src >> 64,
        src & 0xFFFFFFFFFFFFFFFF,
        dst >> 64,
        dst & 0xFFFFFFFFFFFFFFFF,
    )


def decrement_hop_limit(pkt: bytearray | memoryview) -> bool:
    """Forward one hop: hop limit minus one in place; False if it ran out."""
    hl = pkt[7]
    if hl <= 1:
        return False
    pkt[7] = hl - 1
    return True


def pseudo_sum(src: int, dst: int, upper_length: int, next_header: int) -> int:
    """Unfolded one's-complement sum of the RFC 8200 8.1 pseudo-header, for `checksum.fold`.

    A 128-bit address read as an integer is its 16-bit words times powers of 2**16, and
    2**16 is 1 modulo 0xFFFF, so the address modulo 0xFFFF is the sum of its words up to
    0 versus 0xFFFF, which adding the non-zero next header makes harmless.
    """
    return (
        src % 0xFFFF + dst % 0xFFFF + (upper_length >> 16) + (upper_length & 0xFFFF) + next_header
    )


# --- Address classes -------------------------------------------------------------------------


def is_multicast(addr: int) -> bool:
    return addr >> 120 == 0xFF


def is_link_local(addr: int) -> bool:
    return addr >> 118 == 0xFE80 >> 6


def is_v4_compatible(addr: int) -> bool:
    """Inside ::/96 (which also holds :: and ::1): the ints an IPv4 address could equal."""
    return addr < V4_COMPAT_LIMIT


def v4_mapped(addr: int) -> int | None:
    """The IPv4 address of an IPv4-mapped address (::ffff:a.b.c.d), else None."""
    if addr >> 32 == 0xFFFF:
        return addr & 0xFFFFFFFF
    return None


def is_host_address(addr: int) -> bool:
    """Whether `addr` can be the source of a packet that deserves an ICMPv6 error (RFC 4443
    2.4 (e)): not unspecified, not multicast."""
    return addr != 0 and not is_multicast(addr)
