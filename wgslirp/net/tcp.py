"""TCP in IPv4 (RFC 9293): header parse, options, and segments built in the caller's buffer.

Segments from the guest arrive authenticated by WireGuard and were checksummed by the
guest's own stack, so parsing checks lengths only; `checksum_ok` is there for tests and tools.

Segments towards the guest are written straight into an egress slot: `SegmentWriter` holds
everything that is fixed for one connection (addresses, ports, TTL and the parts of both
checksums they contribute), so building a segment is one `struct.pack_into` for the 40
header bytes plus one checksum pass over the TCP part.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from wgslirp.net import ipv4, ipv6
from wgslirp.net.checksum import fold, sum_at

FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20
ECE: Final = 0x40
CWR: Final = 0x80

HEADER = struct.Struct(">HHIIHHHH")  # sport dport seq ack off/flags window csum urgent
HEADER_LEN: Final = 20
# Offset of the payload in segments without options built here (20-byte IPv4 header).
PAYLOAD_OFFSET: Final = 20 + HEADER_LEN
MAX_OPTIONS: Final = 40

OPT_EOL: Final = 0
OPT_NOP: Final = 1
OPT_MSS: Final = 2
OPT_WSCALE: Final = 3
OPT_SACK_PERM: Final = 4
OPT_SACK: Final = 5
OPT_TIMESTAMP: Final = 8

# RFC 7323 Appendix A: NOP, NOP, kind 8, length 10. Every stack that sends timestamps uses
# this layout on data segments, so the receive fast path recognises it with one comparison.
TS_PREFIX: Final = b"\x01\x01\x08\x0a"
TS_OPTION_LEN: Final = 12
MAX_WSCALE: Final = 14  # RFC 7323 2.3: larger shifts are treated as 14
DEFAULT_MSS: Final = 536  # RFC 9293 3.7.1: assumed when the SYN carries no MSS option

_TS_BODY = struct.Struct(">II")
_CSUM = struct.Struct(">H")
# IPv4 (no options) and TCP headers together, as one pack for the hot path.
_IP_TCP = struct.Struct(">BBHHHBBHIIHHIIHHHH")

Parsed = tuple[int, int, int, int, int, int, int, int, int, int, int]


def parse(pkt: bytes | bytearray | memoryview, length: int) -> Parsed | None:
    """(src, dst, sport, dport, seq, ack, flags, window, options offset, payload offset,
    payload length), or None for anything that is not one whole, well-formed segment.

    Options lie between the options offset and the payload offset. Fragments are refused:
    ingress reassembles before a TCP handler sees a packet.
    """
    if length < PAYLOAD_OFFSET:
        return None
    vihl, total, frag, proto, src, dst = ipv4.SUMMARY.unpack_from(pkt)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4:
        return parse6(pkt, length) if vihl >> 4 == 6 else None
    if (
        ihl < 20
        or proto != ipv4.PROTO_TCP
        or frag & (ipv4.FLAG_MF | ipv4.OFFSET_MASK)
        or total > length
        or total < ihl + HEADER_LEN
    ):
        return None
    sport, dport, seq, ack, offflags, window, _, _ = HEADER.unpack_from(pkt, ihl)
    doff = (offflags >> 12) * 4
    if doff < HEADER_LEN or ihl + doff > total:
        return None
    return (
        src,
        dst,
        sport,
        dport,
        seq,
        ack,
        offflags & 0xFF,
        window,
        ihl + HEADER_LEN,
        ihl + doff,
        total - ihl - doff,
    )


def parse6(pkt: bytes | bytearray | memoryview, length: int) -> Parsed | None:
    """`parse` for IPv6, past any extension headers; offsets are from the packet start."""
    chain = ipv6.Chain()
    if (
        not ipv6.walk(pkt, length, chain)
        or chain.frag >= 0
        or chain.proto != ipv6.NH_TCP
        or chain.end - chain.offset < HEADER_LEN
    ):
        return None
    off, end = chain.offset, chain.end
    sport, dport, seq, ack, offflags, window, _, _ = HEADER.unpack_from(pkt, off)
    doff = (offflags >> 12) * 4
    if doff < HEADER_LEN or off + doff > end:
        return None
    src, dst = ipv6.src_dst(pkt)
    return (
        src,
        dst,
        sport,
        dport,
        seq,
        ack,
        offflags & 0xFF,
        window,
        off + HEADER_LEN,
        off + doff,
        end - off - doff,
    )


@dataclass(slots=True)
class Options:
    """TCP options of one segment; None or empty where the option was absent."""

    mss: int | None = None
    wscale: int | None = None
    sack_perm: bool = False
    ts_val: int | None = None
    ts_ecr: int = 0
    sack: list[tuple[int, int]] = field(default_factory=list)


def parse_options(buf: bytes | bytearray | memoryview, start: int, end: int) -> Options | None:
    """Options between `start` and `end`; None when one is malformed (a length that runs
    past the header or is too short for its kind), in which case RFC 9293 3.1 lets us drop
    the segment rather than guess. Unknown kinds are skipped by their length."""
    opts = Options()
    i = start
    while i < end:
        kind = buf[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            return None
        olen = buf[i + 1]
        if olen < 2 or i + olen > end:
            return None
        if kind == OPT_MSS:
            if olen != 4:
                return None
            opts.mss = (buf[i + 2] << 8) | buf[i + 3]
        elif kind == OPT_WSCALE:
            if olen != 3:
                return None
            opts.wscale = min(buf[i + 2], MAX_WSCALE)
        elif kind == OPT_SACK_PERM:
            if olen != 2:
                return None
            opts.sack_perm = True
        elif kind == OPT_TIMESTAMP:
            if olen != 10:
                return None
            opts.ts_val, opts.ts_ecr = _TS_BODY.unpack_from(buf, i + 2)
        elif kind == OPT_SACK:
            if (olen - 2) % 8:
                return None
            for j in range(i + 2, i + olen, 8):
                left, right = _TS_BODY.unpack_from(buf, j)
                opts.sack.append((left, right))
        i += olen
    return opts


def options_bytes(
    *,
    mss: int | None = None,
    wscale: int | None = None,
    sack_perm: bool = False,
    ts: tuple[int, int] | None = None,
    sack: tuple[tuple[int, int], ...] | list[tuple[int, int]] = (),
) -> bytes:
    """Options in the layouts common stacks use, padded with NOPs to whole words so the data
    offset is exact. SACK-permitted shares a word with the timestamp when both are present,
    as Linux does, which keeps a SYN-ACK with everything at 20 bytes."""
    out = bytearray()
    if mss is not None:
        out += struct.pack(">BBH", OPT_MSS, 4, mss)
    if ts is not None:
        out += b"\x04\x02" if sack_perm else b"\x01\x01"
        out += struct.pack(">BBII", OPT_TIMESTAMP, 10, ts[0], ts[1])
    elif sack_perm:
        out += b"\x01\x01\x04\x02"
    if wscale is not None:
        out += struct.pack(">BBBB", OPT_NOP, OPT_WSCALE, 3, wscale)
    if sack:
        out += struct.pack(">BBBB", OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(sack))
        for left, right in sack:
            out += _TS_BODY.pack(left, right)
    if len(out) > MAX_OPTIONS:
        raise ValueError(f"{len(out)} bytes of TCP options do not fit the header")
    return bytes(out)


def _pseudo(src: int, dst: int) -> int:
    return (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + ipv4.PROTO_TCP


def _sum(mv: memoryview) -> int:
    """One's-complement sum of `mv` up to 0 versus 0xFFFF (net/checksum.py `sum_at`); the
    pseudo-header that is always added is non-zero, which makes the ambiguity harmless."""
    return sum_at(mv, 0, len(mv))


def checksum_ok(pkt: bytes | bytearray | memoryview, length: int) -> bool:
    """Verify the TCP checksum (and that the IPv4 header checksum holds) of a segment
    `parse` accepts."""
    parsed = parse(pkt, length)
    if parsed is None:
        return False
    src, dst = parsed[0], parsed[1]
    ihl = parsed[8] - HEADER_LEN
    if pkt[0] >> 4 == 6:
        seg = memoryview(pkt)[ihl : parsed[9] + parsed[10]]
        return fold(_sum(seg) + ipv6.pseudo_sum(src, dst, len(seg), ipv6.NH_TCP)) == 0
    if not ipv4.header_valid(pkt, length):
        return False
    total = ipv4.total_length(pkt)
    seg = memoryview(pkt)[ihl:total]
    return fold(_sum(seg) + _pseudo(src, dst) + len(seg)) == 0


class SegmentWriter:
    """Builds the segments of one connection into caller buffers.

    The payload must already sit after the options (`out[40 + len(options):]`), so data can
    be copied from a send buffer into the egress slot once and never moved again. DF is set
    because our MSS already fits the tunnel MTU (a segment never needs fragmenting here), and
    with DF the IPv4 identification carries no meaning (RFC 6864), so a counter suffices.
    """

    header_len = 40  # IPv4 and TCP headers before the options

    __slots__ = (
        "_dport",
        "_dst",
        "_ident",
        "_ip_fixed",
        "_pseudo",
        "_sport",
        "_src",
        "_ttl",
        "tos",
    )

    def __init__(
        self,
        src: int,
        dst: int,
        sport: int,
        dport: int,
        ttl: int = 64,
        tos: int = 0,
        ident: int = 0,
    ) -> None:
        self._src = src
        self._dst = dst
        self._sport = sport
        self._dport = dport
        self._ttl = ttl
        self.tos = tos
        self._ident = ident & 0xFFFF
        # IPv4 header words that never change for this connection; TOS is added per packet
        # because COPY_TOS may change it mid-connection.
        self._ip_fixed = (
            0x4500
            + ipv4.FLAG_DF
            + ((ttl << 8) | ipv4.PROTO_TCP)
            + (src >> 16)
            + (src & 0xFFFF)
            + (dst >> 16)
            + (dst & 0xFFFF)
        )
        self._pseudo = _pseudo(src, dst)

    def write(
        self,
        out: memoryview,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        options: bytes,
        payload_len: int,
        payload_sum: int = -1,
    ) -> int:
        """Write headers and options in front of the payload; returns the packet length.
        `payload_sum`: the payload's `sum_at` when the caller has it (checksum.run_sums
        over a train of segments), so only the header is summed here."""
        olen = len(options)
        hlen = HEADER_LEN + olen
        total = 20 + hlen + payload_len
        ident = self._ident = (self._ident + 1) & 0xFFFF
        tos = self.tos
        s = self._ip_fixed + tos + total + ident
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        _IP_TCP.pack_into(
            out,
            0,
            0x45,
            tos,
            total,
            ident,
            ipv4.FLAG_DF,
            self._ttl,
            ipv4.PROTO_TCP,
            (~s) & 0xFFFF,
            self._src,
            self._dst,
            self._sport,
            self._dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            (hlen << 10) | flags,
            window,
            0,
            0,
        )
        if olen:
            out[40 : 40 + olen] = options
        tcp_len = hlen + payload_len
        if payload_sum < 0:
            s = sum_at(out, 20, tcp_len) + self._pseudo + tcp_len
        else:
            s = sum_at(out, 20, hlen) + payload_sum + self._pseudo + tcp_len
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        _CSUM.pack_into(out, 36, (~s) & 0xFFFF)
        return total


_IP6_TCP = struct.Struct(">IHBBQQQQHHIIHHHH")


class SegmentWriter6:
    """`SegmentWriter` for IPv6: the same `write`, with a 40-byte IPv6 header (no header
    checksum, no identification) and the payload at `out[60 + len(options):]`. `tos` is
    the traffic class."""

    header_len = 60

    __slots__ = ("_dport", "_dst_hi", "_dst_lo", "_hop", "_pseudo", "_sport", "_src_hi",
                 "_src_lo", "tos")  # fmt: skip

    def __init__(
        self, src: int, dst: int, sport: int, dport: int, hop_limit: int = 64, tos: int = 0
    ) -> None:
        self._src_hi, self._src_lo = src >> 64, src & 0xFFFFFFFFFFFFFFFF
        self._dst_hi, self._dst_lo = dst >> 64, dst & 0xFFFFFFFFFFFFFFFF
        self._sport = sport
        self._dport = dport
        self._hop = hop_limit
        self.tos = tos
        # The pseudo-header's addresses and next header; the length is added per segment.
        self._pseudo = ipv6.pseudo_sum(src, dst, 0, ipv6.NH_TCP)

    def write(
        self,
        out: memoryview,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        options: bytes,
        payload_len: int,
        payload_sum: int = -1,
    ) -> int:
        olen = len(options)
        hlen = HEADER_LEN + olen
        tcp_len = hlen + payload_len
        total = 40 + tcp_len
        _IP6_TCP.pack_into(
            out,
            0,
            0x60000000 | ((self.tos & 0xFF) << 20),
            tcp_len,
            ipv6.NH_TCP,
            self._hop,
            self._src_hi,
            self._src_lo,
            self._dst_hi,
            self._dst_lo,
            self._sport,
            self._dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            (hlen << 10) | flags,
            window,
            0,
            0,
        )
        if olen:
            out[60 : 60 + olen] = options
        if payload_sum < 0:
            s = sum_at(out, 40, tcp_len) + self._pseudo + tcp_len
        else:
            s = sum_at(out, 40, hlen) + payload_sum + self._pseudo + tcp_len
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        _CSUM.pack_into(out, 56, (~s) & 0xFFFF)
        return total


def span6(pkt: bytes | bytearray | memoryview, n: int) -> tuple[int, int]:
    """(offset of the TCP header, end of the segment) of an IPv6 packet, (0, 0) if it is
    not a whole TCP segment. The common case, TCP right after the IPv6 header, costs no
    chain walk."""
    if n >= 60 and pkt[6] == ipv6.NH_TCP and pkt[0] >> 4 == 6:
        end = 40 + ((pkt[4] << 8) | pkt[5])
        return (40, end) if end <= n else (0, 0)
    chain = ipv6.Chain()
    if not ipv6.walk(pkt, n, chain) or chain.frag >= 0 or chain.proto != ipv6.NH_TCP:
        return 0, 0
    return chain.offset, chain.end


def build_into(
    out: bytearray | memoryview,
    *,
    src: int,
    dst: int,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    options: bytes = b"",
    payload: bytes | bytearray | memoryview = b"",
    ttl: int = 64,
    tos: int = 0,
    ident: int = 0,
) -> int:
    """Build a whole segment with a copy of `payload`; for tests and rare paths. An
    address above 32 bits makes it an IPv6 segment (no IPv6 address in ::/96 reaches here;
    see docs/architecture.md, "Both families")."""
    mv = memoryview(out)
    w: SegmentWriter | SegmentWriter6
    if src > 0xFFFFFFFF or dst > 0xFFFFFFFF:
        w = SegmentWriter6(src, dst, sport, dport, ttl, tos)
    else:
        w = SegmentWriter(src, dst, sport, dport, ttl, tos, ident - 1)
    start = w.header_len + len(options)
    mv[start : start + len(payload)] = payload
    return w.write(mv, seq, ack, flags, window, options, len(payload))
