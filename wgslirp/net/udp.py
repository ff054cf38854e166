"""UDP in IPv4 (RFC 768) and IPv6 (RFC 8200 8.1): parse without copying, build into the
caller's buffer.

Packets from the guest arrive decrypted and authenticated by WireGuard and were checksummed
by the guest's own stack, so `parse` only checks lengths; `checksum_ok` is separate for the
callers (tests, pcap tools, a paranoid mode) that want the end-to-end check anyway.

Packets towards the guest are built around a payload that may already sit in the output
buffer: a host socket can `recv_into(out[PAYLOAD_OFFSET:])` and `build_in_place` then writes
the 28 header bytes in front of it, so the datagram is never copied.
"""

from __future__ import annotations

import struct
from typing import Final

from wgslirp.net import ipv4, ipv6
from wgslirp.net.checksum import fold, sum_at

HEADER = struct.Struct(">HHHH")
HEADER_LEN: Final = 8
# Offset of the payload in packets this module builds (20-byte IPv4 header, no options).
PAYLOAD_OFFSET: Final = 20 + HEADER_LEN
MAX_PAYLOAD: Final = 0xFFFF - PAYLOAD_OFFSET
# The same for packets built with a 40-byte IPv6 header (the payload length excludes it).
PAYLOAD_OFFSET6: Final = ipv6.HEADER_LEN + HEADER_LEN
MAX_PAYLOAD6: Final = 0xFFFF - HEADER_LEN

_CSUM = struct.Struct(">H")
# An IPv4 header without options and a UDP header, in one pack.
_IP_UDP = struct.Struct(">BBHHHBBHIIHHHH")

Parsed = tuple[int, int, int, int, int, int]


def parse(pkt: bytes | bytearray | memoryview, length: int) -> Parsed | None:
    """(src, dst, sport, dport, payload offset, payload length), or None when the packet is
    not a whole, well-formed UDP datagram.

    Fragments are refused: ingress reassembles before anything reaches a UDP handler, so a
    fragment here means a caller skipped that step, and its payload would be incomplete.
    The UDP length, not the IP total, bounds the payload (trailing IP padding is ignored).
    IPv6 packets are parsed by `parse6` (the version test sits on the IPv4 failure path, so
    IPv4 pays nothing for it).
    """
    if length < PAYLOAD_OFFSET:
        return None
    vihl, total, frag, proto, src, dst = ipv4.SUMMARY.unpack_from(pkt)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4:
        return parse6(pkt, length) if vihl >> 4 == 6 else None
    if (
        ihl < 20
        or proto != ipv4.PROTO_UDP
        or frag & (ipv4.FLAG_MF | ipv4.OFFSET_MASK)
        or total > length
        or total < ihl + HEADER_LEN
    ):
        return None
    sport, dport, ulen, _ = HEADER.unpack_from(pkt, ihl)
    if ulen < HEADER_LEN or ulen > total - ihl:
        return None
    return src, dst, sport, dport, ihl + HEADER_LEN, ulen - HEADER_LEN


def parse6(pkt: bytes | bytearray | memoryview, length: int) -> Parsed | None:
    """`parse` for IPv6, past any extension headers. A zero checksum is refused: unlike
    IPv4, IPv6 makes the UDP checksum mandatory (RFC 8200 8.1), and the forwarder drops and
    counts such packets before they get here."""
    chain = ipv6.Chain()
    if (
        not ipv6.walk(pkt, length, chain)
        or chain.frag >= 0
        or chain.proto != ipv6.NH_UDP
        or chain.end - chain.offset < HEADER_LEN
    ):
        return None
    off = chain.offset
    sport, dport, ulen, csum = HEADER.unpack_from(pkt, off)
    if ulen < HEADER_LEN or ulen > chain.end - off or csum == 0:
        return None
    src, dst = ipv6.src_dst(pkt)
    return src, dst, sport, dport, off + HEADER_LEN, ulen - HEADER_LEN


def _sum(mv: memoryview, initial: int) -> int:
    """Unfolded one's-complement sum of `mv` plus `initial`, for `fold` to finish (up to 0
    versus 0xFFFF, which the always non-zero pseudo-header rules out; net/checksum.py
    `sum_at`)."""
    return sum_at(mv, 0, len(mv)) + initial


def _pseudo(src: int, dst: int, ulen: int) -> int:
    return (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + ipv4.PROTO_UDP + ulen


def checksum_ok(pkt: bytes | bytearray | memoryview, length: int) -> bool:
    """Verify the UDP checksum of a packet `parse` accepts; a zero field means the sender
    did not compute one, which IPv4 allows."""
    parsed = parse(pkt, length)
    if parsed is None:
        return False
    src, dst, _, _, off, plen = parsed
    ihl = off - HEADER_LEN
    ulen = plen + HEADER_LEN
    seg = memoryview(pkt)[ihl : ihl + ulen]
    if pkt[0] >> 4 == 6:
        return fold(_sum(seg, ipv6.pseudo_sum(src, dst, ulen, ipv6.NH_UDP))) == 0
    if _CSUM.unpack_from(pkt, ihl + 6)[0] == 0:
        return True
    return fold(_sum(seg, _pseudo(src, dst, ulen))) == 0


def build_in_place(
    out: bytearray | memoryview,
    src: int,
    dst: int,
    sport: int,
    dport: int,
    payload_len: int,
    ttl: int = 64,
    tos: int = 0,
    ident: int = 0,
    *,
    dont_fragment: bool = False,
) -> int:
    """Write the IPv4 and UDP headers in front of a payload already at
    `out[PAYLOAD_OFFSET:PAYLOAD_OFFSET + payload_len]`; returns the packet length.

    DF is clear by default because the router itself originates these packets and may have
    to fragment them for the tunnel MTU; a caller that can produce fragments should pass a
    changing `ident` (RFC 6864), since reassembly keys on it.
    """
    if not 0 <= payload_len <= MAX_PAYLOAD:
        raise ValueError(f"UDP payload of {payload_len} bytes does not fit an IPv4 datagram")
    ulen = HEADER_LEN + payload_len
    # The UDP header's words are summed as values; only the payload is read back.
    s = _pseudo(src, dst, ulen) + sport + dport + ulen + sum_at(out, PAYLOAD_OFFSET, payload_len)
    # A computed zero is sent as all ones: zero on the wire means "no checksum".
    csum = fold(s) or 0xFFFF
    flags = ipv4.FLAG_DF if dont_fragment else 0
    return _write4(out, src, dst, sport, dport, ulen, ttl, tos, ident, flags, csum)


def build_unsummed(
    out: bytearray | memoryview,
    src: int,
    dst: int,
    sport: int,
    dport: int,
    payload_len: int,
    ttl: int,
    tos: int,
    ident: int,
) -> int:
    """`build_in_place` (DF clear) with the UDP checksum field zero, which IPv4 defines as
    "no checksum" (RFC 768) and every receiver must accept (RFC 1122 4.1.3.4): for the
    datagrams the router relays from host sockets to guests. The host's kernel verified
    the datagram's own checksum when it arrived, and WireGuard's AEAD authenticates every
    byte from the router to the guest, so a sum here would protect nothing more; it cost
    ~2 us of the ~18 a 1,392-byte datagram costs the router (scripts/bench_forward.py).
    IPv6 has no such option (RFC 8200 8.1): build_in_place6 always sums."""
    return _write4(out, src, dst, sport, dport, HEADER_LEN + payload_len, ttl, tos, ident, 0, 0)


def _write4(
    out: bytearray | memoryview,
    src: int,
    dst: int,
    sport: int,
    dport: int,
    ulen: int,
    ttl: int,
    tos: int,
    ident: int,
    flags: int,
    csum: int,
) -> int:
    """Both headers in one pack, the IPv4 checksum summed from the field values (as
    ipv4.write_header does); returns the packet length."""
    total = 20 + ulen
    s = (0x4500 | tos) + total + ident + flags + (ttl << 8 | ipv4.PROTO_UDP)
    s += (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    _IP_UDP.pack_into(
        out, 0, 0x45, tos, total, ident, flags, ttl, ipv4.PROTO_UDP, ~s & 0xFFFF, src, dst,
        sport, dport, ulen, csum,
    )  # fmt: skip
    return total


def build_udp_into(
    out: bytearray | memoryview,
    src: int,
    dst: int,
    sport: int,
    dport: int,
    payload: bytes | bytearray | memoryview,
    ttl: int = 64,
    tos: int = 0,
    ident: int = 0,
    *,
    dont_fragment: bool = False,
) -> int:
    """Copy `payload` after the headers and build around it; for payloads that did not come
    from a `recv_into` on this buffer."""
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise ValueError(f"UDP payload of {n} bytes does not fit an IPv4 datagram")
    memoryview(out)[PAYLOAD_OFFSET : PAYLOAD_OFFSET + n] = payload
    return build_in_place(
        out, src, dst, sport, dport, n, ttl, tos, ident, dont_fragment=dont_fragment
    )


def build_in_place6(
    out: bytearray | memoryview,
    src: int,
    dst: int,
    sport: int,
    dport: int,
    payload_len: int,
    hop_limit: int = 64,
    traffic_class: int = 0,
) -> int:
    """`build_in_place` for IPv6: the payload waits at `out[PAYLOAD_OFFSET6:]`."""
    if not 0 <= payload_len <= MAX_PAYLOAD6:
        raise ValueError(f"UDP payload of {payload_len} bytes does not fit an IPv6 packet")
    ulen = HEADER_LEN + payload_len
    total = ipv6.HEADER_LEN + ulen
    o = memoryview(out)
    HEADER.pack_into(o, 40, sport, dport, ulen, 0)
    csum = fold(_sum(o[40:total], ipv6.pseudo_sum(src, dst, ulen, ipv6.NH_UDP)))
    _CSUM.pack_into(o, 46, csum or 0xFFFF)
    ipv6.write_header(
        o,
        payload_length=ulen,
        next_header=ipv6.NH_UDP,
        src=src,
        dst=dst,
        hop_limit=hop_limit,
        traffic_class=traffic_class,
    )
    return total


def build_udp_into6(
    out: bytearray | memoryview,
    src: int,
    dst: int,
    sport: int,
    dport: int,
    payload: bytes | bytearray | memoryview,
    hop_limit: int = 64,
) -> int:
    n = len(payload)
    if n > MAX_PAYLOAD6:
        raise ValueError(f"UDP payload of {n} bytes does not fit an IPv6 packet")
    memoryview(out)[PAYLOAD_OFFSET6 : PAYLOAD_OFFSET6 + n] = payload
    return build_in_place6(out, src, dst, sport, dport, n, hop_limit)
