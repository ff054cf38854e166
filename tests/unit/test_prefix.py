"""Longest-prefix table against a brute-force reference model."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from wgslirp.net.prefix import PrefixTable
from wgslirp.wireguard.allowedips import AllowedIPs


def test_longest_prefix_wins() -> None:
    t: PrefixTable[str] = PrefixTable()
    t.insert("0.0.0.0/0", "default")
    t.insert("10.0.0.0/8", "ten")
    t.insert("10.1.0.0/16", "ten-one")
    t.insert("10.1.2.3/32", "host")
    ip = lambda s: int(ipaddress.IPv4Address(s))  # noqa: E731
    assert t.lookup(ip("10.1.2.3")) == "host"
    assert t.lookup(ip("10.1.2.4")) == "ten-one"
    assert t.lookup(ip("10.2.0.1")) == "ten"
    assert t.lookup(ip("192.0.2.1")) == "default"
    t.remove("0.0.0.0/0")
    assert t.lookup(ip("192.0.2.1")) is None
    t.insert("10.1.0.0/16", "moved")  # re-owning a prefix replaces its owner
    assert t.lookup(ip("10.1.9.9")) == "moved"
    assert sorted(t.prefixes_of("host")) == ["10.1.2.3/32"]
    t.remove_owner("ten")
    assert t.lookup(ip("10.2.0.1")) is None


def test_host_bits_are_cleared() -> None:
    t: PrefixTable[str] = PrefixTable()
    t.insert("10.0.0.77/24", "x")
    assert t.prefixes_of("x") == ["10.0.0.0/24"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 4)), max_size=40
    ),
    st.lists(st.integers(0, 2**32 - 1), max_size=40),
)
def test_lookup_matches_brute_force(routes: list[tuple[int, int, int]], probes: list[int]) -> None:
    t: PrefixTable[int] = PrefixTable()
    ref: dict[tuple[int, int], int] = {}
    for addr, plen, owner in routes:
        net = ipaddress.IPv4Network((addr, plen), strict=False)
        t.insert(str(net), owner)
        ref[(int(net.network_address), plen)] = owner
    for addr, _, _ in routes:
        probes.append(addr)
    for a in probes:
        best = None
        best_len = -1
        for (net, plen), owner in ref.items():
            mask = ((1 << plen) - 1) << (32 - plen) if plen else 0
            if a & mask == net and plen > best_len:
                best, best_len = owner, plen
        assert t.lookup(a) == best


def test_cryptokey_routing_is_the_prefix_table() -> None:
    """WireGuard's name for the table is the generic table, not a copy that could drift."""
    assert AllowedIPs is PrefixTable
