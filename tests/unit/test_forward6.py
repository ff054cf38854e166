"""The forwarding decision for IPv6 packets: gateway ping6, hop limit, Packet Too Big, the
checks that keep malformed or ambiguous packets from the workers, and overlay between peers."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_ipv6 import echo, ext, frag_hdr, packet, udp_body
from wgslirp.net import flowkey, fragment, icmpv6, ipv6, udp
from wgslirp.net.prefix import PrefixTable
from wgslirp.router import forward
from wgslirp.router.forward import DELIVER, DELIVER_WHOLE, DROP, HELD, OVERLAY, REPLY, Forwarder

MTU = 1420
A6 = ipv6.addr_to_int
GW6, DNS6 = "fd77::1", "fd77::53"
ALICE, BOB, REMOTE = A6("fd77::2"), A6("fd77::3"), A6("2001:db8::7")


class Peer:
    def __init__(self, name: str) -> None:
        self.name = name


alice, bob = Peer("alice"), Peer("bob")


def forwarder(**kw: object) -> Forwarder[Peer]:
    table: PrefixTable[Peer] = PrefixTable()
    table.insert("10.77.0.2/32", alice)
    table.insert("fd77::2/128", alice)
    table.insert("fd77::3/128", bob)
    table.insert("fd99::/48", bob)  # a subnet behind bob
    args: dict[str, object] = {
        "nworkers": 4,
        "mtu": MTU,
        "ttl": 64,
        "own": ("10.77.0.1", GW6, DNS6),
        "gateway": "10.77.0.1",
        "gateway6": GW6,
        "routes6": table.lookup6,
    }
    args.update(kw)
    return Forwarder(table.lookup, **args)  # type: ignore[arg-type]


def ping6(dst: int, payload: bytes = b"abcdefgh", hop_limit: int = 64) -> bytearray:
    from tests.unit.test_ipv6 import icmp_body

    body = icmp_body(128, 0, struct.pack(">HH", 0x4321, 3) + payload, ALICE, dst)
    return packet(ipv6.NH_ICMPV6, body, src=ALICE, dst=dst, hop_limit=hop_limit)


def udp6(dst: int, payload: bytes = b"x", hop_limit: int = 64, src: int = ALICE) -> bytearray:
    return packet(
        ipv6.NH_UDP,
        udp_body(4000, 53, payload, src, dst),
        src=src,
        dst=dst,
        hop_limit=hop_limit,
    )


def route(f: Forwarder[Peer], peer: Peer, pkt: bytearray, now: float = 100.0) -> int:
    return f.route(peer, memoryview(pkt), len(pkt), now)


def test_ping6_of_gateway_and_dns_answered() -> None:
    f = forwarder()
    for dst in (A6(GW6), A6(DNS6)):
        assert route(f, alice, ping6(dst)) == REPLY
        (reply,) = f.replies
        parsed = icmpv6.parse(reply, len(reply))
        assert parsed is not None and parsed[0] == icmpv6.ECHO_REPLY
        assert icmpv6.checksum_ok(reply, parsed[2], parsed[3])
        assert ipv6.src_dst(reply) == (dst, ALICE)
    assert f.stats.gateway_echo_replies == 2


def test_large_ping6_is_reassembled_and_answered_in_fragments() -> None:
    f = forwarder()
    big = ping6(A6(GW6), bytes(range(256)) * 12)
    # the guest fragments at the source, as its kernel would for its own MTU
    pieces = fragment.fragment6(big, len(big), MTU, ident=5)
    assert len(pieces) == 3
    verdicts = [route(f, alice, p, 100.0 + i) for i, p in enumerate(pieces)]
    assert verdicts == [HELD, HELD, REPLY]
    assert len(f.replies) == 3 and all(len(r) <= MTU for r in f.replies)
    r = fragment.Reassembler()
    whole = None
    for piece in f.replies:
        whole = r.feed(piece, len(piece), 200.0)
    assert whole is not None and len(whole) == len(big)
    assert bytes(whole[44:]) == bytes(big[44:])
    parsed = icmpv6.parse(whole, len(whole))
    assert parsed is not None and icmpv6.checksum_ok(whole, parsed[2], parsed[3])


def test_packet_above_the_mtu_gets_packet_too_big_from_the_gateway() -> None:
    f = forwarder()
    big = udp6(REMOTE, bytes(MTU - 48 + 1))
    assert len(big) == MTU + 1
    assert route(f, alice, big) == REPLY
    (err,) = f.replies
    parsed = icmpv6.parse(err, len(err))
    assert parsed is not None and parsed[:2] == (icmpv6.PACKET_TOO_BIG, 0)
    assert struct.unpack_from(">I", err, 44)[0] == MTU
    assert ipv6.src_dst(err) == (A6(GW6), ALICE)
    assert icmpv6.checksum_ok(err, parsed[2], parsed[3])
    assert f.stats.ipv6_too_big == 1
    # exactly the MTU fits
    assert route(f, alice, udp6(REMOTE, bytes(MTU - 48))) == DELIVER


def test_packet_too_big_also_for_a_ping_of_the_gateway() -> None:
    f = forwarder()
    assert route(f, alice, ping6(A6(GW6), bytes(MTU))) == REPLY
    assert f.replies[0][40] == icmpv6.PACKET_TOO_BIG


def test_hop_limit_1_beyond_the_router_gets_time_exceeded() -> None:
    f = forwarder()
    pkt = udp6(REMOTE, hop_limit=1)
    assert route(f, alice, pkt) == REPLY
    (err,) = f.replies
    assert err[40:42] == bytes([icmpv6.TIME_EXCEEDED, icmpv6.HOP_LIMIT_EXCEEDED])
    assert ipv6.src_dst(err) == (A6(GW6), ALICE)
    assert icmpv6.quoted_flow(err, len(err)) == (ALICE, REMOTE, 17, 4000, 53)
    assert f.stats.ttl_expired == 1
    # to the router's own address it is not beyond the router
    assert route(f, alice, udp6(A6(DNS6), hop_limit=1)) == DELIVER
    # without a gateway6 address there is nobody to answer from
    assert route(forwarder(gateway6=None), alice, udp6(REMOTE, hop_limit=1)) == DROP


def test_delivery_names_the_flows_worker() -> None:
    f = forwarder()
    for port in range(20):
        pkt = packet(
            ipv6.NH_UDP, udp_body(4000 + port, 53, b"q", ALICE, REMOTE), src=ALICE, dst=REMOTE
        )
        assert route(f, alice, pkt) == DELIVER
        assert f.shard == flowkey.shard_of(pkt, len(pkt), 4)


def test_malformed_chain_is_dropped_and_counted() -> None:
    f = forwarder()
    bad = packet(ipv6.NH_ROUTING, ext(ipv6.NH_ROUTING) + ext(ipv6.NH_UDP) + bytes(8))
    assert route(f, alice, bad) == DROP
    assert f.stats.ipv6_malformed == 1


def test_udp_zero_checksum_is_dropped_and_counted() -> None:
    f = forwarder()
    pkt = udp6(REMOTE)
    pkt[46:48] = b"\x00\x00"
    assert route(f, alice, pkt) == DROP
    assert f.stats.ipv6_udp_zero_checksum == 1
    # also when it only shows after reassembly
    out = bytearray(5000)
    n = udp.build_udp_into6(out, ALICE, REMOTE, 4000, 53, bytes(3000))
    out[46:48] = b"\x00\x00"
    verdicts = [route(f, alice, p) for p in fragment.fragment6(out, n, MTU, ident=9)]
    assert verdicts == [HELD, HELD, DROP]
    assert f.stats.ipv6_udp_zero_checksum == 2


def test_ipv4_compatible_source_or_destination_is_dropped() -> None:
    f = forwarder()
    assert route(f, alice, udp6(A6("::8.8.8.8"))) == DROP
    assert route(f, alice, udp6(1)) == DROP  # ::1
    assert route(f, alice, udp6(REMOTE, src=A6("::10.77.0.2"))) == DROP
    assert f.stats.ipv6_v4_compatible_dropped == 3


def test_fragments_are_reassembled_before_the_worker_is_chosen() -> None:
    f = forwarder()
    out = bytearray(5000)
    n = udp.build_udp_into6(out, ALICE, REMOTE, 4000, 53, bytes(3000))
    pieces = fragment.fragment6(out, n, MTU, ident=77)
    verdicts = [route(f, alice, p) for p in pieces]
    assert verdicts == [HELD, HELD, DELIVER_WHOLE]
    assert f.whole == out[:n]
    assert f.shard == flowkey.shard_of(out, n, 4)


def test_overlay_between_peers_lowers_the_hop_limit() -> None:
    f = forwarder(overlay=True)
    for dst in (BOB, A6("fd99::5")):
        pkt = udp6(dst)
        assert route(f, alice, pkt) == OVERLAY and f.target is bob
        assert pkt[7] == 63
    assert route(f, alice, udp6(BOB, hop_limit=1)) == DROP
    assert f.stats.overlay_ttl_expired == 1
    # without overlay routing another peer's space is dropped
    g = forwarder()
    assert route(g, alice, udp6(BOB)) == DROP and g.stats.peer_space_dropped == 1
    # an exclusion sends it to the host network instead
    h = forwarder(overlay=True, overlay_exclude=("fd99::/48",))
    assert route(h, alice, udp6(A6("fd99::5"))) == DELIVER


def test_echo_keeps_its_worker_by_identifier() -> None:
    f = forwarder()
    a, b = echo(0x77, 1), echo(0x77, 2)
    assert route(f, alice, a) == DELIVER
    s = f.shard
    assert route(f, alice, b) == DELIVER and f.shard == s


def test_pending_fragment6_expires_on_the_injected_clock() -> None:
    f = forwarder()
    first = packet(
        ipv6.NH_FRAGMENT,
        frag_hdr(ipv6.NH_UDP, 0, True, 3) + udp_body(1, 2, bytes(8)),
        src=ALICE,
        dst=REMOTE,
    )
    assert route(f, alice, first, 100.0) == HELD
    timer = f.get_timer()
    assert timer is not None and timer > 100.0
    f.handle_timer(timer)
    assert f.reassembler.pending_datagrams == 0


def test_device_source_check_with_ipv6_allowed_ips() -> None:
    """Cryptokey routing for IPv6: the source must be routed back to the sending peer by the
    longest IPv6 prefix; IPv4 prefixes never vouch for an IPv6 source."""
    from wgslirp.keys import generate_private_key, public_key
    from wgslirp_testkit.wgpair import A_ADDR, Pair

    p = Pair()
    p.b.allowed.insert("fd77::/64", p.pb)
    p.b.allowed.insert("0.0.0.0/0", p.pb)
    p.b.add_peer(public_key(generate_private_key()), allowed_ips=["fd77::9/128"])
    p.handshake()
    out, plain = bytearray(400), bytearray(400)
    for src, ok in (
        ("fd77::7", True),
        ("fd77::9", False),  # a longer prefix names another peer
        ("fd78::1", False),  # no IPv6 prefix of this peer
        ("::10.77.0.2", False),  # 0.0.0.0/0 is IPv4 space only
    ):
        pkt = udp6(A6("2001:db8::1"), b"z" * 10, src=A6(src))
        k = p.a.encrypt(p.pa, pkt, len(pkt), p.now, out)
        r = p.b.decrypt(bytes(out[:k]), A_ADDR, p.now, plain)
        assert (r is not None) is ok, src
        if ok:
            assert r is not None and r[1] == len(pkt)
    assert p.b.stats.source_rejected == 3
    assert p.b.route6(A6("fd77::9")) is not p.pb and p.b.route6(A6("fd77::1")) is p.pb


def test_multicast_is_dropped_and_counted_apart() -> None:
    f = forwarder()
    mld = packet(ipv6.NH_UDP, udp_body(1, 2, b"", 0, A6("ff02::16")), src=0, dst=A6("ff02::16"))
    assert route(f, alice, mld) == DROP
    assert f.stats.ipv6_multicast_dropped == 1 and f.stats.ipv6_v4_compatible_dropped == 0


def test_icmpv6_errors_are_rate_limited_on_the_injected_clock() -> None:
    f = forwarder()
    big = udp6(REMOTE, bytes(MTU))
    verdicts = [route(f, alice, big, 100.0) for _ in range(250)]
    assert verdicts.count(REPLY) == 200 and verdicts.count(DROP) == 50
    assert f.stats.ipv6_errors_rate_limited == 50 and f.stats.ipv6_too_big == 250
    # 10 ms later the bucket holds 10 tokens again
    later = [route(f, alice, big, 100.01) for _ in range(20)]
    assert later.count(REPLY) == 10


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=40, max_size=300), st.integers(0, 255), st.integers(0, 255))
def test_route_never_raises_on_garbage_after_the_header(body: bytes, nh: int, hl: int) -> None:
    f = forwarder(overlay=True)
    pkt = packet(nh, body[40:], src=ALICE, dst=A6("2001:db8::9"), hop_limit=hl)
    verdict = route(f, alice, pkt)
    assert verdict in (DELIVER, DELIVER_WHOLE, DROP, HELD, OVERLAY, REPLY)
    assert f.reassembler.pending_bytes <= f.reassembler.max_bytes


def test_interleaved_flows_are_hashed_once_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """As for IPv4 (test_forward.py): a flow's worker is hashed once however the flows
    interleave."""
    hashed: list[int] = []

    def counting(src: int, dst: int, proto: int, sport: int, dport: int) -> int:
        hashed.append(sport)
        return flowkey.flow_hash(src, dst, proto, sport, dport)

    monkeypatch.setattr(forward, "flow_hash", counting)
    f = forwarder(nworkers=2)
    pkts = [
        packet(ipv6.NH_UDP, udp_body(1000 + i, 53, b"q", ALICE, REMOTE), src=ALICE, dst=REMOTE)
        for i in range(8)
    ]
    for _ in range(3):
        for pkt in pkts:
            assert route(f, alice, pkt) == DELIVER
            assert f.shard == flowkey.shard_of(pkt, len(pkt), 2)
    assert len(hashed) == len(pkts)


def test_a_segment_without_extension_headers_takes_the_short_path_to_the_same_verdicts() -> None:
    """TCP, UDP and ICMPv6 right after the header skip the chain walk: a payload length
    beyond the packet is still malformed, and the shard is the flow key's."""
    f = forwarder()
    for port in range(20):
        body = struct.pack(">HHIIHHHH", 40000 + port, 443, 1, 0, 0x5010, 500, 0, 0) + b"d" * 100
        pkt = packet(ipv6.NH_TCP, body, src=ALICE, dst=REMOTE)
        assert route(f, alice, pkt) == DELIVER
        assert f.shard == flowkey.shard_of(pkt, len(pkt), 4)
    for sport in (1, 1, 2, 1, 2, 2):  # interleaved flows: the remembered shard is the flow's
        for dst in (REMOTE, REMOTE + 1):
            pkt = packet(ipv6.NH_UDP, udp_body(sport, 53, b"q", ALICE, dst), src=ALICE, dst=dst)
            assert route(f, alice, pkt) == DELIVER
            assert f.shard == flowkey.shard_of(pkt, len(pkt), 4)
    cut = packet(ipv6.NH_TCP, bytes(40), src=ALICE, dst=REMOTE)[:-8]  # payload length lies
    assert route(f, alice, cut) == DROP and f.stats.ipv6_malformed == 1


def test_the_remembered_shard_is_the_flows_own_across_families_protocols_and_headers() -> None:
    """The last flow's shard is reused for the next packet with the same key; interleaving
    flows, an IPv4 packet, ICMPv6 and an extension header must never inherit another's."""
    from tests.unit.test_forward import udp_packet

    f = forwarder()
    tcp_a = packet(ipv6.NH_TCP, bytes(20), src=ALICE, dst=REMOTE)
    struct.pack_into(">HHIIBB", tcp_a, 40, 40001, 443, 1, 0, 0x50, 0x10)
    tcp_b = bytearray(tcp_a)
    struct.pack_into(">H", tcp_b, 40, 40002)
    udp_a = packet(ipv6.NH_UDP, udp_body(40001, 443, b"q", ALICE, REMOTE), src=ALICE, dst=REMOTE)
    hop_by_hop = packet(
        ipv6.NH_HOP_BY_HOP, ext(ipv6.NH_UDP) + udp_body(40003, 53, b"q", ALICE, REMOTE),
        src=ALICE, dst=REMOTE,
    )  # fmt: skip
    v4 = udp_packet("10.77.0.2", "192.0.2.9", 40001, 443)
    sequence = [tcp_a, tcp_a, tcp_b, tcp_a, udp_a, tcp_a, ping6(REMOTE), hop_by_hop, v4, tcp_a]
    shards = set()
    for pkt in sequence:
        assert route(f, alice, pkt) == DELIVER
        assert f.shard == flowkey.shard_of(pkt, len(pkt), 4)
        shards.add(f.shard)
    assert len(shards) > 1  # the flows do not all share one worker, or this proves nothing
