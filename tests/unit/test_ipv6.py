"""IPv6 header chain, ICMPv6, UDP/TCP over IPv6 and their pseudo-header checksums.

Checksums are checked against a plain word-by-word reference written here from RFC 8200 8.1
(and against Linux's own stack in the end-to-end tests), not against the code under test.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgslirp.net import flowkey, icmpv6, ipv6, tcp, udp
from wgslirp.net.fragment import Reassembler

GUEST = ipv6.addr_to_int("fd77::2")
REMOTE = ipv6.addr_to_int("2001:db8::7")
GW = ipv6.addr_to_int("fd77::1")


def ref_checksum(src: int, dst: int, nh: int, upper: bytes) -> int:
    """RFC 1071 over the RFC 8200 8.1 pseudo-header and the upper-layer packet, one 16-bit
    word at a time: the slow, obviously right way."""
    data = src.to_bytes(16, "big") + dst.to_bytes(16, "big")
    data += struct.pack(">I3xB", len(upper), nh) + upper
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ext(nh: int, size: int = 8) -> bytes:
    """An extension header (hop-by-hop, routing or destination options) of `size` bytes
    whose next header is `nh`; padded with a PadN option so option parsers would accept it."""
    assert size % 8 == 0 and size >= 8
    opts = b""
    room = size - 2
    while room:
        n = min(room, 257)
        if n == 1 or room - n == 1:
            n -= 2
        opts += bytes([1, n - 2]) + bytes(n - 2)
        room -= n
    return bytes([nh, size // 8 - 1]) + opts


def frag_hdr(nh: int, offset: int, more: bool, ident: int) -> bytes:
    return struct.pack(">BBHI", nh, 0, offset | int(more), ident)


def packet(
    first_nh: int,
    body: bytes,
    *,
    src: int = GUEST,
    dst: int = REMOTE,
    hop_limit: int = 64,
    plen: int | None = None,
) -> bytearray:
    out = bytearray(40 + len(body))
    ipv6.write_header(
        out,
        payload_length=len(body) if plen is None else plen,
        next_header=first_nh,
        src=src,
        dst=dst,
        hop_limit=hop_limit,
    )
    out[40:] = body
    return out


def udp_body(sport: int, dport: int, payload: bytes, src: int = GUEST, dst: int = REMOTE) -> bytes:
    seg = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    csum = ref_checksum(src, dst, ipv6.NH_UDP, seg) or 0xFFFF
    return seg[:6] + struct.pack(">H", csum) + seg[8:]


def icmp_body(kind: int, code: int, rest: bytes, src: int = GUEST, dst: int = REMOTE) -> bytes:
    msg = bytes([kind, code, 0, 0]) + rest
    csum = ref_checksum(src, dst, ipv6.NH_ICMPV6, msg)
    return msg[:2] + struct.pack(">H", csum) + msg[4:]


def echo(ident: int = 0x1234, seq: int = 7, data: bytes = b"ping6 payload") -> bytearray:
    return packet(ipv6.NH_ICMPV6, icmp_body(128, 0, struct.pack(">HH", ident, seq) + data))


# --- the extension-header walk ---------------------------------------------------------------


def test_walk_plain_udp() -> None:
    pkt = packet(ipv6.NH_UDP, udp_body(5000, 53, b"q"))
    chain = ipv6.Chain()
    assert ipv6.walk(pkt, len(pkt), chain)
    assert (chain.proto, chain.offset, chain.end, chain.frag, chain.nh_at) == (17, 40, 49, -1, 6)


def test_walk_full_chain_in_rfc_order() -> None:
    body = (
        ext(ipv6.NH_DEST_OPTS)
        + ext(ipv6.NH_ROUTING, 16)
        + ext(ipv6.NH_DEST_OPTS, 24)
        + ext(ipv6.NH_UDP)
        + udp_body(1, 2, b"x")
    )
    pkt = packet(ipv6.NH_HOP_BY_HOP, body)
    chain = ipv6.Chain()
    assert ipv6.walk(pkt, len(pkt), chain)
    assert chain.proto == ipv6.NH_UDP
    assert chain.offset == 40 + 8 + 16 + 24 + 8
    assert chain.nh_at == 40 + 8 + 16 + 24  # the last destination options header names UDP
    assert udp.parse(pkt, len(pkt)) == (GUEST, REMOTE, 1, 2, chain.offset + 8, 1)


def test_walk_stops_at_the_fragment_header() -> None:
    body = ext(ipv6.NH_FRAGMENT) + frag_hdr(ipv6.NH_UDP, 8, True, 99) + bytes(16)
    pkt = packet(ipv6.NH_HOP_BY_HOP, body)
    chain = ipv6.Chain()
    assert ipv6.walk(pkt, len(pkt), chain)
    assert (chain.proto, chain.frag, chain.offset, chain.nh_at) == (17, 48, 56, 40)
    assert ipv6.fragment_fields(pkt, chain.frag) == (17, 8, True, 99)


@pytest.mark.parametrize(
    "first, body",
    [
        # hop-by-hop anywhere but first
        (ipv6.NH_DEST_OPTS, ext(ipv6.NH_HOP_BY_HOP) + ext(ipv6.NH_UDP) + bytes(8)),
        # two routing headers
        (ipv6.NH_ROUTING, ext(ipv6.NH_ROUTING) + ext(ipv6.NH_UDP) + bytes(8)),
        # three destination options headers
        (
            ipv6.NH_DEST_OPTS,
            ext(ipv6.NH_DEST_OPTS) + ext(ipv6.NH_DEST_OPTS) + ext(ipv6.NH_UDP) + bytes(8),
        ),
        # an extension header whose length runs past the payload
        (ipv6.NH_DEST_OPTS, bytes([ipv6.NH_UDP, 5]) + bytes(14)),
        # an extension header cut after its first byte
        (ipv6.NH_DEST_OPTS, b"\x11"),
        # a fragment header cut short
        (ipv6.NH_FRAGMENT, bytes(6)),
        # a chain ending more than 512 bytes into the packet (overlong)
        (ipv6.NH_HOP_BY_HOP, ext(ipv6.NH_DEST_OPTS, 256) + ext(ipv6.NH_UDP, 264) + bytes(8)),
        # a jumbogram: payload length 0 with a hop-by-hop header
        (ipv6.NH_HOP_BY_HOP, b""),
    ],
    ids=[
        "hbh-not-first",
        "two-routing",
        "three-dstopts",
        "ext-past-end",
        "ext-truncated",
        "frag-truncated",
        "overlong",
        "jumbo",
    ],
)
def test_walk_rejects_malformed_chains(first: int, body: bytes) -> None:
    pkt = packet(first, body)
    assert not ipv6.walk(pkt, len(pkt), ipv6.Chain())
    assert udp.parse(pkt, len(pkt)) is None


def test_walk_accepts_a_chain_just_inside_the_byte_bound() -> None:
    body = ext(ipv6.NH_DEST_OPTS, 256) + ext(ipv6.NH_UDP, 256) + udp_body(1, 2, b"")
    pkt = packet(ipv6.NH_HOP_BY_HOP, body)
    chain = ipv6.Chain()
    assert ipv6.walk(pkt, len(pkt), chain)
    assert chain.offset == ipv6.MAX_CHAIN_END


def test_header_valid_needs_the_whole_payload_and_version_6() -> None:
    pkt = packet(ipv6.NH_UDP, udp_body(1, 2, b"abc"))
    assert ipv6.header_valid(pkt, len(pkt))
    assert not ipv6.header_valid(pkt, len(pkt) - 1)
    pkt[0] = 0x45
    assert not ipv6.header_valid(pkt, len(pkt))
    assert not ipv6.header_valid(pkt[:39], 39)


def test_hop_limit_decrement() -> None:
    pkt = packet(ipv6.NH_UDP, udp_body(1, 2, b""), hop_limit=2)
    assert ipv6.decrement_hop_limit(pkt) and pkt[7] == 1
    assert not ipv6.decrement_hop_limit(pkt) and pkt[7] == 1


def test_address_classes() -> None:
    a = ipv6.addr_to_int
    assert ipv6.int_to_addr(a("fd77::2")) == "fd77::2"
    assert ipv6.is_multicast(a("ff02::1")) and not ipv6.is_multicast(a("fe80::1"))
    assert ipv6.is_link_local(a("fe80::1")) and ipv6.is_link_local(a("febf::1"))
    assert not ipv6.is_link_local(a("fec0::1"))
    assert ipv6.is_v4_compatible(a("::1")) and ipv6.is_v4_compatible(a("::8.8.8.8"))
    assert not ipv6.is_v4_compatible(a("::1:0:0"))
    assert ipv6.v4_mapped(a("::ffff:127.0.0.1")) == 0x7F000001
    assert ipv6.v4_mapped(a("::fffe:127.0.0.1")) is None


# --- UDP and TCP over IPv6 -------------------------------------------------------------------


def test_udp6_build_matches_reference_and_parses_back() -> None:
    out = bytearray(200)
    n = udp.build_udp_into6(out, REMOTE, GUEST, 53, 5000, b"answer!")
    pkt = out[:n]
    assert n == 40 + 8 + 7
    assert pkt[0] >> 4 == 6 and pkt[6] == ipv6.NH_UDP
    seg = bytes(pkt[40:])
    zeroed = seg[:6] + b"\x00\x00" + seg[8:]
    assert struct.unpack_from(">H", seg, 6)[0] == ref_checksum(REMOTE, GUEST, 17, zeroed)
    assert udp.checksum_ok(pkt, n)
    assert udp.parse(pkt, n) == (REMOTE, GUEST, 53, 5000, 48, 7)
    pkt[-1] ^= 1
    assert not udp.checksum_ok(pkt, n)


def test_udp6_zero_checksum_is_refused() -> None:
    body = bytearray(udp_body(5000, 53, b"q"))
    body[6:8] = b"\x00\x00"
    pkt = packet(ipv6.NH_UDP, bytes(body))
    assert udp.parse(pkt, len(pkt)) is None
    assert not udp.checksum_ok(pkt, len(pkt))


def test_udp6_length_beyond_payload_is_refused() -> None:
    body = bytearray(udp_body(5000, 53, b"q"))
    struct.pack_into(">H", body, 4, 20)
    pkt = packet(ipv6.NH_UDP, bytes(body))
    assert udp.parse(pkt, len(pkt)) is None


def test_tcp6_parse_and_checksum() -> None:
    hdr = struct.pack(">HHIIHHHH", 40000, 443, 1000, 0, (6 << 12) | tcp.SYN, 65535, 0, 0)
    opts = struct.pack(">BBH", tcp.OPT_MSS, 4, 1380)
    seg = hdr + opts
    csum = ref_checksum(GUEST, REMOTE, ipv6.NH_TCP, seg)
    seg = seg[:16] + struct.pack(">H", csum) + seg[18:]
    pkt = packet(ipv6.NH_DEST_OPTS, ext(ipv6.NH_TCP) + seg)
    parsed = tcp.parse(pkt, len(pkt))
    assert parsed == (GUEST, REMOTE, 40000, 443, 1000, 0, tcp.SYN, 65535, 68, 72, 0)
    opts_parsed = tcp.parse_options(pkt, parsed[8], parsed[9])
    assert opts_parsed is not None and opts_parsed.mss == 1380
    assert tcp.checksum_ok(pkt, len(pkt))
    pkt[-1] ^= 0x10
    assert not tcp.checksum_ok(pkt, len(pkt))


# --- ICMPv6 ----------------------------------------------------------------------------------


def test_echo_reply_swaps_addresses_and_verifies() -> None:
    req = echo(0x4242, 9, b"abcdefgh" * 3)
    out = bytearray(1500)
    n = icmpv6.echo_reply_into(req, len(req), out, hop_limit=63)
    rep = out[:n]
    assert n == len(req)
    assert ipv6.src_dst(rep) == (REMOTE, GUEST) and rep[7] == 63
    parsed = icmpv6.parse(rep, n)
    assert parsed is not None and parsed[:2] == (icmpv6.ECHO_REPLY, 0)
    assert icmpv6.echo_id_seq(rep, parsed[2]) == (0x4242, 9)
    assert icmpv6.checksum_ok(rep, parsed[2], parsed[3])
    msg = bytes(rep[40:])
    assert struct.unpack_from(">H", msg, 2)[0] == ref_checksum(
        REMOTE, GUEST, 58, msg[:2] + b"\x00\x00" + msg[4:]
    )
    assert rep[48:] == req[48:]


def test_echo_reply_refuses_bad_checksum_and_non_requests() -> None:
    req = echo()
    req[-1] ^= 1
    assert icmpv6.echo_reply_into(req, len(req), bytearray(1500)) == 0
    rep = packet(ipv6.NH_ICMPV6, icmp_body(129, 0, bytes(4)))
    assert icmpv6.echo_reply_into(rep, len(rep), bytearray(1500)) == 0


@pytest.mark.parametrize(
    "code",
    [
        icmpv6.NO_ROUTE,
        icmpv6.ADMIN_PROHIBITED,
        icmpv6.ADDRESS_UNREACHABLE,
        icmpv6.PORT_UNREACHABLE,
    ],
)
def test_destination_unreachable_each_code(code: int) -> None:
    orig = packet(ipv6.NH_UDP, udp_body(5000, 9, b"hello"))
    out = bytearray(1500)
    n = icmpv6.dest_unreachable_into(out, orig, len(orig), code)
    err = out[:n]
    assert ipv6.src_dst(err) == (REMOTE, GUEST)  # from the address the guest tried
    parsed = icmpv6.parse(err, n)
    assert parsed is not None and parsed[:2] == (icmpv6.DEST_UNREACHABLE, code)
    assert icmpv6.checksum_ok(err, parsed[2], parsed[3])
    assert err[48:] == orig
    assert icmpv6.quoted_flow(err, n) == (GUEST, REMOTE, 17, 5000, 9)


def test_packet_too_big_carries_mtu_and_fits_1280() -> None:
    orig = packet(ipv6.NH_UDP, udp_body(5000, 9, bytes(3000)))
    out = bytearray(4000)
    n = icmpv6.packet_too_big_into(out, orig, len(orig), 1420, router_src=GW)
    assert n == icmpv6.MAX_ERROR_LENGTH
    parsed = icmpv6.parse(out, n)
    assert parsed is not None and parsed[:2] == (icmpv6.PACKET_TOO_BIG, 0)
    assert struct.unpack_from(">I", out, 44)[0] == 1420
    assert ipv6.src_dst(out) == (GW, GUEST)
    assert icmpv6.checksum_ok(out, parsed[2], parsed[3])
    assert out[48:n] == orig[: n - 48]
    # the quote is cut short, but its ports are still read
    assert icmpv6.quoted_flow(out, n) == (GUEST, REMOTE, 17, 5000, 9)
    # an MTU below the IPv6 minimum is announced as the minimum
    n = icmpv6.packet_too_big_into(out, orig, len(orig), 600)
    assert struct.unpack_from(">I", out, 44)[0] == 1280


def test_time_exceeded_and_quoted_echo() -> None:
    orig = echo(0x5151)
    out = bytearray(1500)
    n = icmpv6.time_exceeded_into(out, orig, len(orig), router_src=GW)
    parsed = icmpv6.parse(out, n)
    assert parsed is not None and parsed[:2] == (icmpv6.TIME_EXCEEDED, 0)
    assert icmpv6.quoted_flow(out, n) == (GUEST, REMOTE, 58, 0x5151, 0x5151)
    n = icmpv6.time_exceeded_into(out, orig, len(orig), icmpv6.REASSEMBLY_TIMEOUT, GW)
    assert out[41] == icmpv6.REASSEMBLY_TIMEOUT


def test_no_error_about_errors_multicast_or_unspecified() -> None:
    out = bytearray(1500)
    err = packet(ipv6.NH_ICMPV6, icmp_body(1, 4, bytes(4) + bytes(48)))
    assert icmpv6.dest_unreachable_into(out, err, len(err), 4) == 0
    redirect = packet(ipv6.NH_ICMPV6, icmp_body(137, 0, bytes(36)))
    assert icmpv6.dest_unreachable_into(out, redirect, len(redirect), 4) == 0
    mcast = ipv6.addr_to_int("ff02::1")
    to_mcast = packet(ipv6.NH_UDP, udp_body(1, 2, b"", dst=mcast), dst=mcast)
    assert icmpv6.dest_unreachable_into(out, to_mcast, len(to_mcast), 4) == 0
    # RFC 4443 2.4 (e.3): Packet Too Big is the exception for multicast destinations
    assert icmpv6.packet_too_big_into(out, to_mcast, len(to_mcast), 1280) > 0
    from_unspec = packet(ipv6.NH_UDP, udp_body(1, 2, b"", src=0), src=0)
    assert icmpv6.dest_unreachable_into(out, from_unspec, len(from_unspec), 4) == 0
    # a non-first ICMPv6 fragment might be an error: no error about it
    frag = packet(ipv6.NH_FRAGMENT, frag_hdr(ipv6.NH_ICMPV6, 8, False, 1) + bytes(8))
    assert icmpv6.time_exceeded_into(out, frag, len(frag)) == 0
    # queries are fine
    req = echo()
    assert icmpv6.dest_unreachable_into(out, req, len(req), 1) > 0


def test_quoted_flow_needs_an_error_with_an_ipv6_quote() -> None:
    req = echo()
    assert icmpv6.quoted_flow(req, len(req)) is None
    short = packet(ipv6.NH_ICMPV6, icmp_body(1, 4, bytes(4) + bytes(20)))
    assert icmpv6.quoted_flow(short, len(short)) is None


# --- arbitrary input never raises ------------------------------------------------------------

_NH = st.sampled_from([0, 6, 17, 43, 44, 58, 59, 60, 255])


@st.composite
def chains(draw: st.DrawFn) -> bytearray:
    """IPv6 packets whose chains are plausible but broken in random places."""
    parts = b""
    nh_first = draw(_NH)
    for _ in range(draw(st.integers(0, 6))):
        nxt = draw(_NH)
        size = draw(st.integers(0, 40))
        parts += bytes([nxt, draw(st.integers(0, 255))]) + bytes(size)
    parts += draw(st.binary(max_size=64))
    plen = draw(st.one_of(st.just(len(parts)), st.integers(0, 0xFFFF)))
    pkt = packet(nh_first, parts, plen=plen)
    return pkt


@settings(max_examples=400, deadline=None)
@given(chains(), st.integers(0, 4))
def test_no_parser_raises_on_broken_chains(pkt: bytearray, cut: int) -> None:
    n = max(0, len(pkt) - cut)
    chain = ipv6.Chain()
    if ipv6.walk(pkt, n, chain):
        assert 40 <= chain.offset <= chain.end <= n and chain.offset <= ipv6.MAX_CHAIN_END
    udp.parse(pkt, n)
    tcp.parse(pkt, n)
    icmpv6.parse(pkt, n)
    icmpv6.quoted_flow(pkt, n)
    icmpv6.may_send_error(pkt, n)
    flowkey.packet_flow_key(pkt, n)
    r = Reassembler(max_bytes=8192)
    r.feed(pkt, n, 0.0)
    assert r.pending_bytes <= 8192
    out = bytearray(2048)
    icmpv6.dest_unreachable_into(out, pkt, n, icmpv6.PORT_UNREACHABLE)
    icmpv6.echo_reply_into(pkt, n, out)
