"""Flow keys and prefix tables with IPv6 addresses next to IPv4 ones."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_ipv6 import GUEST, REMOTE, echo, ext, frag_hdr, packet, udp_body
from wgslirp.net import flowkey, icmpv6, ipv4, ipv6, udp
from wgslirp.net.prefix import PrefixTable, format_cidr, normalize_cidr, parse_prefix


def tcp6(sport: int, dport: int) -> bytearray:
    return packet(ipv6.NH_TCP, struct.pack(">HHIIHHHH", sport, dport, 0, 0, 0x5002, 0, 0, 0))


def test_tcp_and_udp_keys_past_extension_headers() -> None:
    assert flowkey.packet_flow_key(tcp6(40000, 443), 60) == (GUEST, REMOTE, 6, 40000, 443)
    pkt = packet(ipv6.NH_DEST_OPTS, ext(ipv6.NH_UDP) + udp_body(5353, 53, b"q"))
    assert flowkey.packet_flow_key(pkt, len(pkt)) == (GUEST, REMOTE, 17, 5353, 53)


def test_echo_keyed_by_identifier() -> None:
    a, b = echo(0x77, 1), echo(0x77, 2)
    assert flowkey.packet_flow_key(a, len(a)) == (GUEST, REMOTE, 58, 0x77, 0x77)
    assert flowkey.packet_flow_key(a, len(a)) == flowkey.packet_flow_key(b, len(b))


def test_guest_error_about_a_reply_keys_to_the_guest_flow() -> None:
    # The router delivered a UDP reply to the guest; the guest's port is closed.
    out = bytearray(2048)
    n = udp.build_udp_into6(out, REMOTE, GUEST, 53, 5353, b"answer")
    err = bytearray(2048)
    k = icmpv6.dest_unreachable_into(err, out, n, icmpv6.PORT_UNREACHABLE)
    query = packet(ipv6.NH_UDP, udp_body(5353, 53, b"q"))
    expected = flowkey.packet_flow_key(query, len(query))
    assert flowkey.packet_flow_key(err, k) == expected
    for workers in (2, 3, 8):
        assert flowkey.shard_of(err, k, workers) == flowkey.shard_of(query, len(query), workers)


def test_fragments_share_a_key() -> None:
    first = packet(ipv6.NH_FRAGMENT, frag_hdr(ipv6.NH_UDP, 0, True, 5) + udp_body(1, 2, bytes(8)))
    later = packet(ipv6.NH_FRAGMENT, frag_hdr(ipv6.NH_UDP, 16, False, 5) + bytes(8))
    assert flowkey.packet_flow_key(first, len(first)) == (GUEST, REMOTE, 17, 0, 0)
    assert flowkey.packet_flow_key(later, len(later)) == (GUEST, REMOTE, 17, 0, 0)


def test_broken_chain_still_gets_a_worker() -> None:
    bad = packet(ipv6.NH_DEST_OPTS, bytes([ipv6.NH_UDP, 9]) + bytes(6))
    assert flowkey.packet_flow_key(bad, len(bad)) == (GUEST, REMOTE, ipv6.NH_DEST_OPTS, 0, 0)
    assert 0 <= flowkey.shard_of(bad, len(bad), 4) < 4


def test_v6_hash_spreads_and_v4_hash_is_unchanged() -> None:
    # IPv4 keeps its exact pre-IPv6 hash (affinity across an upgrade of one router).
    a, b = ipv4.addr_to_int("10.77.0.2"), ipv4.addr_to_int("203.0.113.9")
    h = ((a << 32) | b) ^ (((6 << 32 | 40000 << 16 | 443) * 0x9E3779B97F4A7C15) & (2**64 - 1))
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & (2**64 - 1)
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & (2**64 - 1)
    h ^= h >> 33
    assert flowkey.flow_hash(a, b, 6, 40000, 443) == h
    shards = {flowkey.shard_of_key((GUEST + i, REMOTE, 6, 40000, 443), 4) for i in range(64)}
    assert shards == {0, 1, 2, 3}
    shards = {flowkey.shard_of_key((GUEST, REMOTE, 6, 40000 + i, 443), 4) for i in range(64)}
    assert shards == {0, 1, 2, 3}


# --- prefix tables ---------------------------------------------------------------------------


def v6(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


def test_v6_longest_prefix_and_family_separation() -> None:
    t: PrefixTable[str] = PrefixTable()
    t.insert("::/0", "default6")
    t.insert("fd77::/16", "site")
    t.insert("fd77::2/128", "host")
    t.insert("0.0.0.0/0", "default4")
    assert t.lookup6(v6("fd77::2")) == "host"
    assert t.lookup6(v6("fd77::3")) == "site"
    assert t.lookup6(v6("2001:db8::1")) == "default6"
    # ::/0 never answers for an IPv4 address, 0.0.0.0/0 never for an IPv6 one
    t.remove("0.0.0.0/0")
    assert t.lookup(ipv4.addr_to_int("10.0.0.1")) is None
    t.insert("10.0.0.0/8", "ten")
    t.remove("::/0")
    assert t.lookup6(v6("::a00:1")) is None  # ::10.0.0.1 is not 10.0.0.1
    assert t.lookup(ipv4.addr_to_int("10.0.0.1")) == "ten"
    assert t.lookup_family(v6("fd77::2"), True) == "host"
    assert sorted(t.prefixes_of("host")) == ["fd77::2/128"]
    assert dict(t) == {"fd77::/16": "site", "fd77::2/128": "host", "10.0.0.0/8": "ten"}
    t.remove_owner("site")
    assert t.lookup6(v6("fd77::3")) is None
    t.remove("fd77::2/128")
    assert list(t) == [("10.0.0.0/8", "ten")]


def test_prefix_text() -> None:
    assert parse_prefix("FD77::5/64") == (v6("fd77::"), 64, True)
    assert parse_prefix("10.1.2.3/8") == (0x0A000000, 8, False)
    assert format_cidr(v6("fd77::"), 64, True) == "fd77::/64"
    assert normalize_cidr("fd77:0:0::9/120") == "fd77::/120"
    assert normalize_cidr("10.0.0.7/24") == "10.0.0.0/24"


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128), st.integers(0, 4)),
        max_size=30,
    ),
    st.lists(st.integers(0, 2**128 - 1), max_size=30),
)
def test_v6_lookup_matches_brute_force(
    routes: list[tuple[int, int, int]], probes: list[int]
) -> None:
    t: PrefixTable[int] = PrefixTable()
    ref: dict[tuple[int, int], int] = {}
    for addr, plen, owner in routes:
        net = ipaddress.IPv6Network((addr, plen), strict=False)
        t.insert(str(net), owner)
        ref[(int(net.network_address), plen)] = owner
    probes += [addr for addr, _, _ in routes]
    probes += [addr ^ 1 for addr, _, _ in routes]
    for a in probes:
        best, best_len = None, -1
        for (net, plen), owner in ref.items():
            mask = ((1 << plen) - 1) << (128 - plen) if plen else 0
            if a & mask == net and plen > best_len:
                best, best_len = owner, plen
        assert t.lookup6(a) == best
        assert t.lookup(a & 0xFFFFFFFF) is None
