"""IPv4 header parsing and building (RFC 791); options are tolerated, never emitted."""

from __future__ import annotations

import struct
from typing import Final

from wgslirp.net.checksum import checksum

PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17

HEADER = struct.Struct(">BBHHHBBH4s4s")
_HEADER_INTS = struct.Struct(">BBHHHBBHII")
_SRC_DST = struct.Struct(">II")


def addr_to_int(addr: str) -> int:
    a, b, c, d = (int(x) for x in addr.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def int_to_addr(v: int) -> str:
    return f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"


def header_length(pkt: bytes | bytearray | memoryview) -> int:
    return (pkt[0] & 0x0F) * 4


def src_dst(pkt: bytes | bytearray | memoryview) -> tuple[int, int]:
    s, d = _SRC_DST.unpack_from(pkt, 12)
    return s, d


def is_fragment(pkt: bytes | bytearray | memoryview) -> bool:
    """True for any fragment (more-fragments set or a non-zero offset)."""
    flags_frag: int = struct.unpack_from(">H", pkt, 6)[0]
    return bool(flags_frag & 0x3FFF)


def write_header(
    buf: bytearray | memoryview,
    *,
    total_length: int,
    proto: int,
    src: int,
    dst: int,
    ttl: int = 64,
    tos: int = 0,
    ident: int = 0,
    dont_fragment: bool = True,
) -> None:
    """Write a 20-byte header with a valid checksum at the start of `buf`.

    The checksum is summed from the field values, not read back from the buffer: this runs
    for every packet the router synthesizes, and the arithmetic costs ~0.55 µs where
    packing first and checksumming the bytes cost ~1.75 µs (measured here)."""
    flags = 0x4000 if dont_fragment else 0
    s = (
        (0x4500 | tos)
        + total_length
        + ident
        + flags
        + (ttl << 8 | proto)
        + (src >> 16)
        + (src & 0xFFFF)
        + (dst >> 16)
        + (dst & 0xFFFF)
    )
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    _HEADER_INTS.pack_into(
        buf, 0, 0x45, tos, total_length, ident, flags, ttl, proto, ~s & 0xFFFF, src, dst
    )


def header_valid(pkt: bytes | bytearray | memoryview, length: int) -> bool:
    """Version 4, sane lengths, and a header checksum that verifies."""
    if length < 20 or pkt[0] >> 4 != 4:
        return False
    ihl = (pkt[0] & 0x0F) * 4
    total: int = struct.unpack_from(">H", pkt, 2)[0]
    if ihl < 20 or ihl > total or total > length:
        return False
    return checksum(memoryview(pkt)[:ihl]) == 0


# --- Fields shared by the UDP, ICMP, fragment and flow modules -------------------------------

FLAG_DF: Final = 0x4000
FLAG_MF: Final = 0x2000
OFFSET_MASK: Final = 0x1FFF
LIMITED_BROADCAST: Final = 0xFFFFFFFF

# One unpack gives everything the classifiers look at: version/IHL, total length, the
# flags/offset word, protocol, source and destination. Skipping TOS, ident, TTL and checksum
# keeps the result tuple small.
SUMMARY = struct.Struct(">BxHxxHxBxxII")


def total_length(pkt: bytes | bytearray | memoryview) -> int:
    value: int = struct.unpack_from(">H", pkt, 2)[0]
    return value


def fragment_offset(pkt: bytes | bytearray | memoryview) -> int:
    """Offset of this fragment's data in bytes (the header field counts 8-byte units)."""
    word: int = struct.unpack_from(">H", pkt, 6)[0]
    return (word & OFFSET_MASK) * 8


def is_multicast(addr: int) -> bool:
    return addr >> 28 == 0xE


def is_host_address(addr: int) -> bool:
    """Whether `addr` can name a single host as a source (RFC 1122 3.2.1.3): not "this
    network" (0/8), loopback, multicast or class E (which includes limited broadcast)."""
    top = addr >> 24
    return top != 0 and top != 127 and top < 224


def decrement_ttl(pkt: bytearray | memoryview) -> bool:
    """Forward a packet one hop: TTL minus one with the header checksum patched in place
    (RFC 1624 incremental update, no full recompute). False if the TTL ran out."""
    ttl = pkt[8]
    if ttl <= 1:
        return False
    pkt[8] = ttl - 1
    c = (~struct.unpack_from(">H", pkt, 10)[0] & 0xFFFF) + 0xFEFF  # + ~0x0100
    c = (c & 0xFFFF) + (c >> 16)
    struct.pack_into(">H", pkt, 10, ~((c & 0xFFFF) + (c >> 16)) & 0xFFFF)
    return True
