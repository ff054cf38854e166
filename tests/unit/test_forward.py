"""The forwarding decision (router/forward.py): every verdict, driven with plain packets, two
stand-in peers and a fake clock."""

from __future__ import annotations

import struct

import pytest

from wgslirp.net import flowkey, fragment, icmp, ipv4, udp
from wgslirp.net.checksum import checksum
from wgslirp.net.prefix import PrefixTable
from wgslirp.router import forward
from wgslirp.router.forward import (
    DELIVER,
    DELIVER_WHOLE,
    DROP,
    HELD,
    OVERLAY,
    REPLY,
    SHARD_MEMO_MAX,
    Forwarder,
)

GATEWAY = "10.77.0.1"
DNS = "10.77.0.53"
ALICE = "10.77.0.2"
BOB = "10.77.0.3"
REMOTE = "192.0.2.9"
MTU = 1420


class Peer:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


alice, bob = Peer("alice"), Peer("bob")


def forwarder(**kw: object) -> Forwarder[Peer]:
    table: PrefixTable[Peer] = PrefixTable()
    table.insert(f"{ALICE}/32", alice)
    table.insert("10.77.0.3/32", bob)
    table.insert("10.99.0.0/16", bob)  # a subnet behind bob
    args: dict[str, object] = {
        "nworkers": 4,
        "mtu": MTU,
        "ttl": 64,
        "own": (GATEWAY, DNS),
        "gateway": GATEWAY,
    }
    args.update(kw)
    return Forwarder(table.lookup, **args)  # type: ignore[arg-type]


def a(text: str) -> int:
    return ipv4.addr_to_int(text)


def ip_packet(src: str, dst: str, proto: int, body: bytes, *, ttl: int = 64) -> bytearray:
    pkt = bytearray(
        struct.pack(">BBHHHBBHII", 0x45, 0, 20 + len(body), 7, 0, ttl, proto, 0, a(src), a(dst))
        + body
    )
    struct.pack_into(">H", pkt, 10, checksum(memoryview(pkt)[:20]))
    return pkt


def ping(src: str, dst: str, payload: bytes = b"abcdefgh", *, ttl: int = 64) -> bytearray:
    body = bytearray(struct.pack(">BBHHH", icmp.ECHO_REQUEST, 0, 0, 0x1234, 1) + payload)
    struct.pack_into(">H", body, 2, checksum(body))
    return ip_packet(src, dst, ipv4.PROTO_ICMP, bytes(body), ttl=ttl)


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes = b"x") -> bytearray:
    out = bytearray(70000)
    n = udp.build_udp_into(out, a(src), a(dst), sport, dport, payload)
    return out[:n]


def route(f: Forwarder[Peer], peer: Peer, pkt: bytearray, now: float = 100.0) -> int:
    return f.route(peer, memoryview(pkt), len(pkt), now)


def test_ping_of_the_gateway_and_dns_address_is_answered_by_the_router() -> None:
    f = forwarder()
    for dst in (GATEWAY, DNS):
        req = ping(ALICE, dst)
        assert route(f, alice, req) == REPLY
        (reply,) = f.replies
        parsed = icmp.parse(reply, len(reply))
        assert parsed is not None and parsed[0] == icmp.ECHO_REPLY
        assert icmp.checksum_ok(reply, parsed[2], parsed[3])
        assert ipv4.src_dst(reply) == (a(dst), a(ALICE))
        assert bytes(reply[-8:]) == b"abcdefgh"
    assert f.stats.gateway_echo_replies == 2


def test_a_ping_larger_than_the_mtu_is_reassembled_and_answered_in_fragments() -> None:
    f = forwarder()
    big = ping(ALICE, GATEWAY, bytes(range(256)) * 12)  # ~3 KB
    pieces = fragment.fragment(big, len(big), MTU)
    assert pieces is not None and len(pieces) == 3
    verdicts = [route(f, alice, p, 100.0 + i) for i, p in enumerate(pieces)]
    assert verdicts == [HELD, HELD, REPLY]
    assert len(f.replies) == 3 and all(len(r) <= MTU for r in f.replies)
    whole = None
    r = fragment.Reassembler()
    for piece in f.replies:
        whole = r.feed(piece, len(piece), 200.0)
    assert whole is not None and len(whole) == len(big)
    assert bytes(whole[28:]) == bytes(big[28:])  # identifier, sequence and payload echoed


def test_a_malformed_ping_of_the_gateway_gets_no_answer() -> None:
    f = forwarder()
    req = ping(ALICE, GATEWAY)
    req[20] = 13  # a timestamp request, not an echo request
    assert route(f, alice, req) == DROP
    assert f.stats.gateway_echo_replies == 0


def test_ttl_1_beyond_the_router_gets_time_exceeded_from_the_gateway() -> None:
    f = forwarder()
    pkt = udp_packet(ALICE, REMOTE, 40000, 33434)
    pkt[8] = 1
    assert route(f, alice, pkt) == REPLY
    (err,) = f.replies
    parsed = icmp.parse(err, len(err))
    assert parsed is not None and parsed[0] == icmp.TIME_EXCEEDED
    assert ipv4.src_dst(err) == (a(GATEWAY), a(ALICE))
    assert f.stats.ttl_expired == 1


def test_ttl_1_without_a_gateway_address_is_dropped_and_counted() -> None:
    f = forwarder(gateway=None, own=())
    pkt = udp_packet(ALICE, REMOTE, 40000, 33434)
    pkt[8] = 1
    assert route(f, alice, pkt) == DROP
    assert f.stats.ttl_expired == 1


def test_ttl_1_to_the_routers_own_address_is_not_beyond_it() -> None:
    f = forwarder()
    pkt = udp_packet(ALICE, DNS, 40000, 53)
    pkt[8] = 1
    assert route(f, alice, pkt) == DELIVER
    assert f.stats.ttl_expired == 0


def test_another_peers_address_is_dropped_without_overlay_routing() -> None:
    f = forwarder()
    for dst in (BOB, "10.99.1.2"):
        assert route(f, alice, udp_packet(ALICE, dst, 1, 2)) == DROP
    assert f.stats.peer_space_dropped == 2


def test_overlay_routing_forwards_to_the_owner_with_ttl_lowered() -> None:
    f = forwarder(overlay=True)
    pkt = udp_packet(ALICE, "10.99.1.2", 1, 2)
    assert route(f, alice, pkt) == OVERLAY
    assert f.target is bob
    assert pkt[8] == 63 and ipv4.header_valid(pkt, len(pkt))
    expiring = udp_packet(ALICE, BOB, 1, 2)
    expiring[8] = 1
    assert route(f, alice, expiring) == DROP
    assert f.stats.overlay_forwarded == 1 and f.stats.overlay_ttl_expired == 1


def test_excluded_destinations_go_to_the_host_network_despite_a_peers_route() -> None:
    f = forwarder(overlay=True, overlay_exclude=("10.99.5.0/24",))
    assert route(f, alice, udp_packet(ALICE, "10.99.5.7", 1, 2)) == DELIVER
    assert route(f, alice, udp_packet(ALICE, "10.99.6.7", 1, 2)) == OVERLAY


def test_a_peer_sending_to_its_own_address_goes_to_the_workers() -> None:
    assert route(forwarder(overlay=True), alice, udp_packet(ALICE, ALICE, 1, 2)) == DELIVER


@pytest.mark.parametrize("nworkers", [1, 2, 4, 7])
def test_deliver_names_the_worker_that_owns_the_flow(nworkers: int) -> None:
    f = forwarder(nworkers=nworkers)
    for sport in range(1000, 1064):
        pkt = udp_packet(ALICE, REMOTE, sport, 53)
        assert route(f, alice, pkt) == DELIVER
        assert f.shard == flowkey.shard_of(pkt, len(pkt), nworkers)
        assert 0 <= f.shard < nworkers


def test_the_shard_remembered_for_a_flow_is_never_another_flows() -> None:
    """route keeps the last flow's shard (a bulk flow repeats its 5-tuple); interleaved
    flows, the same ports over another protocol or address, and repeats must each still
    get their own flow's worker."""
    f = forwarder(nworkers=7)
    order = [1, 1, 2, 1, 2, 2, 3, 1, 3, 3]
    for sport in order:
        for pkt in (
            udp_packet(ALICE, REMOTE, sport, 53),
            udp_packet(ALICE, "192.0.2.77", sport, 53),
            udp_packet(ALICE, REMOTE, 53, sport),  # ports swapped
        ):
            for proto in (17, 6):  # the same bytes as TCP: another flow
                pkt[9] = proto
                assert route(f, alice, pkt) == DELIVER
                assert f.shard == flowkey.shard_of(pkt, len(pkt), 7)


def test_interleaved_flows_are_hashed_once_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flows interleave (several in one GRO batch, several peers): each flow's worker is
    hashed once, not again at every switch between flows."""
    hashed: list[int] = []

    def counting(pkt: bytes | bytearray | memoryview, n: int, nworkers: int) -> int:
        hashed.append(n)
        return flowkey.shard_of(pkt, n, nworkers)

    monkeypatch.setattr(forward, "shard_of", counting)
    f = forwarder(nworkers=2)
    pkts = [udp_packet(ALICE, REMOTE, 1000 + i, 53) for i in range(8)]
    for _ in range(3):
        for pkt in pkts:
            assert route(f, alice, pkt) == DELIVER
            assert f.shard == flowkey.shard_of(pkt, len(pkt), 2)
    assert len(hashed) == len(pkts)


def test_the_flows_remembered_for_their_worker_are_bounded() -> None:
    """A flood of new flows (spoofed ports) cannot grow what route remembers past its
    bound, and every flow still gets its own worker after the memo started over."""
    f = forwarder(nworkers=7)
    for i in range(SHARD_MEMO_MAX + 100):
        pkt = udp_packet(ALICE, REMOTE, 1 + i % 65000, 53 + i // 65000)
        assert route(f, alice, pkt) == DELIVER
        assert f.shard == flowkey.shard_of(pkt, len(pkt), 7)
        assert len(f._shards) <= SHARD_MEMO_MAX


def test_a_packet_too_short_for_its_ports_is_not_remembered_as_the_flow_behind_it() -> None:
    """A UDP header cut off (total length 20) leaves a flow's ports in the slot past the
    packet: its worker is its own key's (no ports), and the flow whose bytes those are
    still gets its own worker afterwards."""
    f = forwarder(nworkers=7)
    checked = 0
    for sport in range(1000, 1100):
        pkt = udp_packet(ALICE, REMOTE, sport, 53)
        short = bytearray(pkt)
        short[2:4] = (20).to_bytes(2, "big")
        if flowkey.shard_of(short, 20, 7) == flowkey.shard_of(pkt, len(pkt), 7):
            continue  # the two agree anyway: nothing to tell apart
        assert f.route(alice, memoryview(short), 20, 100.0) == DELIVER
        assert f.shard == flowkey.shard_of(short, 20, 7)
        assert route(f, alice, pkt) == DELIVER
        assert f.shard == flowkey.shard_of(pkt, len(pkt), 7)
        checked += 1
    assert checked


def test_fragments_are_reassembled_before_the_worker_is_chosen() -> None:
    f = forwarder()
    pkt = udp_packet(ALICE, REMOTE, 5353, 9999, bytes(4000))
    pieces = fragment.fragment(pkt, len(pkt), MTU)
    assert pieces is not None and len(pieces) == 3
    # Last piece first: only the first carries the ports that choose the worker.
    assert route(f, alice, pieces[2]) == HELD
    assert route(f, alice, pieces[1]) == HELD
    assert route(f, alice, pieces[0]) == DELIVER_WHOLE
    assert bytes(f.whole) == bytes(pkt)
    assert f.shard == flowkey.shard_of(pkt, len(pkt), 4)


def test_a_pending_fragment_expires_on_the_injected_clock() -> None:
    f = forwarder()
    pkt = udp_packet(ALICE, REMOTE, 5353, 9999, bytes(3000))
    pieces = fragment.fragment(pkt, len(pkt), MTU)
    assert pieces is not None
    assert f.get_timer() is None
    assert route(f, alice, pieces[0], now=50.0) == HELD
    deadline = f.get_timer()
    assert deadline is not None and deadline > 50.0
    f.handle_timer(deadline - 0.001)
    assert f.reassembler.timed_out == 0
    f.handle_timer(deadline)
    assert f.reassembler.timed_out == 1 and f.get_timer() is None
    # The rest of that datagram now starts a new one instead of completing the old.
    assert route(f, alice, pieces[1], now=deadline + 1) == HELD
