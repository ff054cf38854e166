"""UDP build/parse and the router's ICMP errors, checked against a naive reference checksum."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgslirp.net import icmp, ipv4, udp

GUEST = ipv4.addr_to_int("10.77.0.2")
REMOTE = ipv4.addr_to_int("93.184.216.34")


def ref_checksum(data: bytes) -> int:
    """RFC 1071 the slow, obvious way: big-endian 16-bit words, end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ref_udp_checksum(src: int, dst: int, segment: bytes) -> int:
    zeroed = segment[:6] + b"\x00\x00" + segment[8:]
    pseudo = struct.pack(">IIBBH", src, dst, 0, 17, len(segment))
    return ref_checksum(pseudo + zeroed) or 0xFFFF


def ip_packet(
    src: int, dst: int, proto: int, body: bytes, *, frag_word: int = 0, options: bytes = b""
) -> bytearray:
    """A raw IPv4 packet with a correct header checksum, for shapes the builders never make."""
    ihl = 20 + len(options)
    hdr = bytearray(
        struct.pack(
            ">BBHHHBBHII", 0x40 | ihl // 4, 0, ihl + len(body), 7, frag_word, 64, proto, 0, src, dst
        )
        + options
    )
    struct.pack_into(">H", hdr, 10, ref_checksum(bytes(hdr)))
    return hdr + body


def udp_packet(src: int, dst: int, sport: int, dport: int, payload: bytes) -> bytearray:
    out = bytearray(65536)
    n = udp.build_udp_into(out, src, dst, sport, dport, payload)
    return out[:n]


def echo_request(src: int, dst: int, ident: int, seq: int, data: bytes = b"ping") -> bytearray:
    body = bytearray(struct.pack(">BBHHH", 8, 0, 0, ident, seq) + data)
    struct.pack_into(">H", body, 2, ref_checksum(bytes(body)))
    return ip_packet(src, dst, ipv4.PROTO_ICMP, bytes(body))


# --- UDP ---------------------------------------------------------------------------------


addrs = st.integers(min_value=0, max_value=0xFFFFFFFF)
ports = st.integers(min_value=0, max_value=0xFFFF)


@given(
    addrs,
    addrs,
    ports,
    ports,
    st.binary(max_size=3000),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
)
def test_udp_round_trip_matches_reference(
    src: int,
    dst: int,
    sport: int,
    dport: int,
    payload: bytes,
    ttl: int,
    tos: int,
    ident: int,
) -> None:
    out = bytearray(4000)
    n = udp.build_udp_into(out, src, dst, sport, dport, payload, ttl=ttl, tos=tos, ident=ident)
    assert n == 28 + len(payload)
    assert ipv4.header_valid(out, n)
    assert ref_checksum(bytes(out[:20])) == 0
    assert out[1] == tos and out[8] == ttl and struct.unpack_from(">H", out, 4)[0] == ident
    segment = bytes(out[20:n])
    assert struct.unpack_from(">H", out, 26)[0] == ref_udp_checksum(src, dst, segment)
    assert udp.checksum_ok(out, n)
    parsed = udp.parse(memoryview(out), n)
    assert parsed == (src, dst, sport, dport, 28, len(payload))
    assert out[28 : 28 + len(payload)] == payload


@pytest.mark.parametrize("size", [0, 1, 2, 3, 7, 8, 9, 1471, 1472, 1473])
def test_udp_sizes_including_zero_and_odd(size: int) -> None:
    payload = bytes((i * 37 + 11) & 0xFF for i in range(size))
    pkt = udp_packet(GUEST, REMOTE, 40000, 53, payload)
    assert len(pkt) == 28 + size
    assert struct.unpack_from(">H", pkt, 24)[0] == 8 + size
    assert struct.unpack_from(">H", pkt, 26)[0] == ref_udp_checksum(GUEST, REMOTE, bytes(pkt[20:]))
    assert udp.parse(pkt, len(pkt)) == (GUEST, REMOTE, 40000, 53, 28, size)


def test_build_in_place_wraps_a_payload_already_in_the_buffer() -> None:
    out = bytearray(2048)
    view = memoryview(out)
    payload = b"received straight into the slot"
    view[udp.PAYLOAD_OFFSET : udp.PAYLOAD_OFFSET + len(payload)] = payload  # as recv_into would
    n = udp.build_in_place(view, REMOTE, GUEST, 53, 40000, len(payload), ident=9)
    assert out[28:n] == payload
    assert udp.checksum_ok(out, n)
    ref = bytearray(2048)
    assert out[:n] == ref[: udp.build_udp_into(ref, REMOTE, GUEST, 53, 40000, payload, ident=9)]
    assert struct.unpack_from(">H", out, 6)[0] == 0  # DF clear: the router may fragment
    udp.build_in_place(out, REMOTE, GUEST, 53, 40000, len(payload), dont_fragment=True)
    assert struct.unpack_from(">H", out, 6)[0] == ipv4.FLAG_DF


@pytest.mark.parametrize("size", [0, 1, 31, 1392])
def test_relayed_datagrams_differ_from_summed_ones_only_in_the_checksum_field(size: int) -> None:
    """build_unsummed (host datagrams relayed to guests, IPv4): the same header as
    build_in_place with DF clear, a valid IPv4 header checksum, UDP checksum field 0 ("none",
    RFC 768), which checksum_ok accepts as a receiver must."""
    payload = bytes((i * 13 + 5) & 0xFF for i in range(size))
    summed, unsummed = bytearray(2048), bytearray(2048)
    for out in (summed, unsummed):
        out[udp.PAYLOAD_OFFSET : udp.PAYLOAD_OFFSET + size] = payload
    n = udp.build_in_place(summed, REMOTE, GUEST, 53, 40000, size, 63, 0x28, 77)
    assert udp.build_unsummed(unsummed, REMOTE, GUEST, 53, 40000, size, 63, 0x28, 77) == n
    assert unsummed[26:28] == b"\x00\x00" and summed[26:28] != b"\x00\x00"
    assert unsummed[:26] == summed[:26] and unsummed[28:n] == summed[28:n]
    assert ipv4.header_valid(unsummed, n)
    assert udp.checksum_ok(unsummed, n)
    assert udp.parse(unsummed, n) == (REMOTE, GUEST, 53, 40000, 28, size)


def test_computed_zero_checksum_is_sent_as_all_ones() -> None:
    base = udp_packet(GUEST, REMOTE, 1, 2, b"\x00\x00")
    c = struct.unpack_from(">H", base, 26)[0]
    # Adding the old checksum as a payload word makes the one's-complement sum 0xFFFF.
    pkt = udp_packet(GUEST, REMOTE, 1, 2, struct.pack(">H", c))
    assert struct.unpack_from(">H", pkt, 26)[0] == 0xFFFF
    assert udp.checksum_ok(pkt, len(pkt))


def test_checksum_ok_detects_corruption_and_accepts_absent_checksum() -> None:
    pkt = udp_packet(GUEST, REMOTE, 5000, 6000, b"hello, world")
    pkt[30] ^= 0x01
    assert not udp.checksum_ok(pkt, len(pkt))
    pkt[26:28] = b"\x00\x00"
    assert udp.checksum_ok(pkt, len(pkt))


def test_payload_too_big_is_refused() -> None:
    out = bytearray(70000)
    with pytest.raises(ValueError):
        udp.build_in_place(out, GUEST, REMOTE, 1, 2, udp.MAX_PAYLOAD + 1)
    assert udp.build_in_place(out, GUEST, REMOTE, 1, 2, udp.MAX_PAYLOAD) == 0xFFFF


def test_parse_honours_options_and_udp_length() -> None:
    seg = bytearray(struct.pack(">HHHH", 1234, 80, 8 + 5, 0) + b"abcde" + b"\x00\x00\x00")
    pkt = ip_packet(GUEST, REMOTE, ipv4.PROTO_UDP, bytes(seg), options=b"\x01\x01\x01\x00")
    # IP padding after the UDP datagram is not payload.
    assert udp.parse(pkt, len(pkt)) == (GUEST, REMOTE, 1234, 80, 32, 5)


def _udp_with(ulen: int, *, frag_word: int = 0, proto: int = ipv4.PROTO_UDP) -> bytearray:
    return ip_packet(
        GUEST, REMOTE, proto, struct.pack(">HHHH", 1, 2, ulen, 0) + b"xyzw", frag_word=frag_word
    )


@pytest.mark.parametrize(
    ("pkt", "length"),
    [
        (_udp_with(12), 27),  # shorter than the headers
        (_udp_with(12), 31),  # capture shorter than the IP total length
        (_udp_with(13), 32),  # UDP length beyond the IP payload
        (_udp_with(7), 32),  # UDP length below its own header
        (_udp_with(12, proto=ipv4.PROTO_TCP), 32),
        (_udp_with(12, frag_word=ipv4.FLAG_MF), 32),
        (_udp_with(12, frag_word=3), 32),
        (bytearray(b"\x60" + bytes(47)), 48),  # IPv6
    ],
)
def test_parse_rejects_malformed(pkt: bytearray, length: int) -> None:
    assert udp.parse(pkt, length) is None
    assert not udp.checksum_ok(pkt, length)


# --- ICMP errors -------------------------------------------------------------------------


def check_icmp_error(
    err: bytes, n: int, original: bytes, icmp_type: int, code: int, src: int, dst: int
) -> None:
    assert ipv4.header_valid(err, n)
    assert struct.unpack_from(">H", err, 2)[0] == n
    assert err[9] == ipv4.PROTO_ICMP
    assert ipv4.src_dst(err) == (src, dst)
    assert err[20] == icmp_type and err[21] == code
    assert ref_checksum(bytes(err[20:n])) == 0
    assert err[28:n] == original[: n - 28]


def test_port_unreachable_quotes_up_to_576_bytes() -> None:
    original = udp_packet(GUEST, REMOTE, 40000, 9, bytes(range(256)) * 4)
    out = bytearray(2048)
    n = icmp.dest_unreachable_into(out, original, len(original), icmp.PORT_UNREACHABLE)
    assert n == icmp.MAX_ERROR_LENGTH == 576
    # From the address the guest tried to reach, back to the guest.
    check_icmp_error(out, n, original, icmp.DEST_UNREACHABLE, 3, REMOTE, GUEST)
    assert out[24:28] == b"\x00\x00\x00\x00"


@pytest.mark.parametrize("size", [0, 1, 7, 519, 520, 521])
def test_small_originals_are_quoted_whole(size: int) -> None:
    original = udp_packet(GUEST, REMOTE, 40000, 9, b"\xaa" * size)
    out = bytearray(2048)
    n = icmp.dest_unreachable_into(
        out, original, len(original), icmp.HOST_UNREACHABLE, router_src=0x0A4D0001, ttl=32
    )
    assert n == min(28 + len(original), 576)
    check_icmp_error(out, n, original, 3, 1, 0x0A4D0001, GUEST)
    assert out[8] == 32


def test_quote_never_exceeds_what_was_captured() -> None:
    original = udp_packet(GUEST, REMOTE, 40000, 9, b"\x55" * 300)
    out = bytearray(2048)
    n = icmp.dest_unreachable_into(out, original, 100, icmp.PORT_UNREACHABLE)
    assert n == 128
    check_icmp_error(out, n, original, 3, 3, REMOTE, GUEST)


def test_frag_needed_carries_next_hop_mtu() -> None:
    original = udp_packet(GUEST, REMOTE, 1, 2, b"x" * 1500)
    out = bytearray(2048)
    n = icmp.dest_unreachable_into(
        out, original, len(original), icmp.FRAG_NEEDED, next_hop_mtu=1420
    )
    check_icmp_error(out, n, original, 3, 4, REMOTE, GUEST)
    assert struct.unpack_from(">HH", out, 24) == (0, 1420)
    n = icmp.dest_unreachable_into(
        out, original, len(original), icmp.ADMIN_PROHIBITED, next_hop_mtu=1420
    )
    check_icmp_error(out, n, original, 3, 13, REMOTE, GUEST)
    assert struct.unpack_from(">HH", out, 24) == (0, 0)


def test_time_exceeded() -> None:
    original = echo_request(GUEST, REMOTE, 77, 1, b"\x01" * 63)
    out = bytearray(2048)
    gw = ipv4.addr_to_int("10.77.0.1")
    n = icmp.time_exceeded_into(out, original, len(original), router_src=gw)
    check_icmp_error(out, n, original, icmp.TIME_EXCEEDED, icmp.TTL_EXCEEDED, gw, GUEST)
    n = icmp.time_exceeded_into(out, original, len(original), icmp.REASSEMBLY_TIMEOUT)
    check_icmp_error(out, n, original, 11, 1, REMOTE, GUEST)


def test_constants() -> None:
    assert (
        icmp.NET_UNREACHABLE,
        icmp.HOST_UNREACHABLE,
        icmp.PROTO_UNREACHABLE,
        icmp.PORT_UNREACHABLE,
        icmp.FRAG_NEEDED,
        icmp.ADMIN_PROHIBITED,
    ) == (0, 1, 2, 3, 4, 13)


def _icmp_error_packet() -> bytearray:
    out = bytearray(1024)
    n = icmp.dest_unreachable_into(out, udp_packet(GUEST, REMOTE, 1, 2, b"q"), 29, 3)
    return out[:n]


def _unknown_icmp_type() -> bytearray:
    body = bytearray(b"\x2a\x00\x00\x00\x00\x00\x00\x00")
    struct.pack_into(">H", body, 2, ref_checksum(bytes(body)))
    return ip_packet(GUEST, REMOTE, ipv4.PROTO_ICMP, bytes(body))


@pytest.mark.parametrize(
    ("original", "allowed"),
    [
        (udp_packet(GUEST, REMOTE, 1, 2, b"ok"), True),
        (echo_request(GUEST, REMOTE, 1, 1), True),
        # A first fragment carries the ports, so it may be reported on.
        (ip_packet(GUEST, REMOTE, ipv4.PROTO_UDP, bytes(16), frag_word=ipv4.FLAG_MF), True),
        (_icmp_error_packet(), False),
        (_unknown_icmp_type(), False),
        (ip_packet(GUEST, REMOTE, ipv4.PROTO_UDP, bytes(16), frag_word=ipv4.FLAG_MF | 2), False),
        (ip_packet(GUEST, REMOTE, ipv4.PROTO_UDP, bytes(16), frag_word=5), False),
        (udp_packet(GUEST, 0xFFFFFFFF, 68, 67, b"dhcp"), False),
        (udp_packet(GUEST, ipv4.addr_to_int("224.0.0.251"), 5353, 5353, b"mdns"), False),
        (udp_packet(ipv4.addr_to_int("0.0.0.0"), REMOTE, 68, 67, b"x"), False),
        (udp_packet(ipv4.addr_to_int("127.0.0.1"), REMOTE, 1, 2, b"x"), False),
        (udp_packet(ipv4.addr_to_int("239.1.1.1"), REMOTE, 1, 2, b"x"), False),
        (udp_packet(0xFFFFFFFF, REMOTE, 1, 2, b"x"), False),
        (ip_packet(GUEST, REMOTE, ipv4.PROTO_ICMP, b""), False),
        (bytearray(b"\x45" + bytes(10)), False),
    ],
)
def test_no_errors_about_errors_fragments_or_broadcasts(original: bytearray, allowed: bool) -> None:
    assert icmp.may_send_error(original) is allowed
    assert icmp.may_send_error(memoryview(original), len(original)) is allowed
    out = bytearray(1024)
    n = icmp.dest_unreachable_into(out, original, len(original), icmp.PORT_UNREACHABLE)
    assert (n > 0) is allowed
    assert (icmp.time_exceeded_into(out, original, len(original)) > 0) is allowed


# --- ICMP parsing ------------------------------------------------------------------------


def test_parse_echo() -> None:
    pkt = echo_request(GUEST, REMOTE, 0xBEEF, 42, b"abc")
    parsed = icmp.parse(memoryview(pkt), len(pkt))
    assert parsed == (icmp.ECHO_REQUEST, 0, 20, 11)
    assert icmp.echo_id_seq(pkt, 20) == (0xBEEF, 42)
    assert icmp.checksum_ok(pkt, 20, 11)
    pkt[-1] ^= 0xFF
    assert not icmp.checksum_ok(pkt, 20, 11)


def test_parse_rejects_non_icmp_short_and_fragments() -> None:
    assert icmp.parse(udp_packet(GUEST, REMOTE, 1, 2, b"abcdefgh"), 36) is None
    assert icmp.parse(ip_packet(GUEST, REMOTE, 1, b"\x08\x00\x00\x00\x00\x00\x00"), 27) is None
    short = ip_packet(GUEST, REMOTE, 1, b"\x08\x00\x00\x00\x00\x00\x00")
    assert icmp.parse(short + b"\x00", 28) is None  # IP total says 27
    frag = ip_packet(GUEST, REMOTE, 1, bytes(16), frag_word=ipv4.FLAG_MF)
    assert icmp.parse(frag, len(frag)) is None


def test_quoted_flow_of_an_error() -> None:
    original = udp_packet(REMOTE, GUEST, 53, 40000, b"answer" * 200)
    out = bytearray(1024)
    n = icmp.dest_unreachable_into(out, original, len(original), icmp.PORT_UNREACHABLE)
    assert icmp.quoted_flow(out, n) == (REMOTE, GUEST, ipv4.PROTO_UDP, 53, 40000)
    assert icmp.is_error(out[20])
    assert not icmp.is_error(icmp.ECHO_REQUEST)


def test_quoted_flow_of_an_echo_uses_the_id_for_both_ports() -> None:
    original = echo_request(REMOTE, GUEST, 0x1234, 9)
    out = bytearray(1024)
    n = icmp.dest_unreachable_into(out, original, len(original), icmp.HOST_UNREACHABLE)
    assert icmp.quoted_flow(out, n) == (REMOTE, GUEST, ipv4.PROTO_ICMP, 0x1234, 0x1234)


def test_quoted_flow_without_ports_or_quote() -> None:
    original = udp_packet(REMOTE, GUEST, 53, 40000, b"")
    out = bytearray(1024)
    n = icmp.dest_unreachable_into(out, original, 20, icmp.PORT_UNREACHABLE)  # header only
    assert n == 48
    assert icmp.quoted_flow(out, n) == (REMOTE, GUEST, ipv4.PROTO_UDP, 0, 0)
    assert icmp.quoted_flow(out, n - 1) is None  # length below the IP total
    err = bytearray(out[:n])
    struct.pack_into(">H", err, 2, 47)
    err[10:12] = b"\x00\x00"
    assert icmp.quoted_flow(err, 47) is None  # quote shorter than an IPv4 header
    echo = echo_request(GUEST, REMOTE, 1, 1)
    assert icmp.quoted_flow(echo, len(echo)) is None  # not an error


def test_decrement_ttl_patches_checksum_incrementally() -> None:
    import random

    from wgslirp.net import ipv4 as ip
    from wgslirp.net.checksum import checksum as csum

    rnd = random.Random(5)
    for _ in range(200):
        b = bytearray(20)
        ttl = rnd.randrange(2, 256)
        ip.write_header(
            b,
            total_length=rnd.randrange(20, 1500),
            proto=rnd.choice([1, 6, 17]),
            src=rnd.getrandbits(32),
            dst=rnd.getrandbits(32),
            ttl=ttl,
            ident=rnd.getrandbits(16),
        )
        assert ip.decrement_ttl(b)
        assert b[8] == ttl - 1 and csum(b) == 0
    b = bytearray(20)
    ip.write_header(b, total_length=20, proto=17, src=1, dst=2, ttl=1)
    assert not ip.decrement_ttl(b)
