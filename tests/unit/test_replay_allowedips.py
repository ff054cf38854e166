"""Replay window and allowed-IPs table against simple reference models."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from wgslirp.wireguard.allowedips import AllowedIPs
from wgslirp.wireguard.replay import REJECT_AFTER_MESSAGES, WINDOW_BITS, ReplayWindow


def test_duplicate_rejected() -> None:
    w = ReplayWindow()
    assert w.accept(0)
    assert not w.check(0) and not w.accept(0)
    assert w.accept(1) and w.accept(3) and w.accept(2)
    assert not w.accept(2)


def test_window_edge_and_far_ahead() -> None:
    w = ReplayWindow()
    assert w.accept(10_000)
    assert w.accept(10_000 - WINDOW_BITS + 1)  # oldest still inside
    assert not w.accept(10_000 - WINDOW_BITS)  # just outside
    assert w.accept(10_000 + 10 * WINDOW_BITS)  # far ahead clears everything
    assert not w.accept(10_000)
    assert w.accept(10_000 + 10 * WINDOW_BITS - 5)
    assert WINDOW_BITS >= 2048


def test_ring_wraps_many_times() -> None:
    w = ReplayWindow()
    sent = list(range(0, 50_000, 3))
    for c in sent:
        assert w.accept(c)
    for c in sent[-100:]:
        assert not w.accept(c)
    for c in sent[-100:]:
        assert w.accept(c + 1)


def test_counter_limit() -> None:
    w = ReplayWindow()
    assert not w.check(REJECT_AFTER_MESSAGES) and not w.accept(REJECT_AFTER_MESSAGES)
    assert w.accept(REJECT_AFTER_MESSAGES - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20_000), max_size=300))
def test_matches_reference_model(counters: list[int]) -> None:
    w = ReplayWindow()
    seen: set[int] = set()
    top = -1
    for c in counters:
        expect = c not in seen and not (top - c >= WINDOW_BITS)
        assert w.check(c) == expect
        assert w.accept(c) == expect
        if expect:
            seen.add(c)
            top = max(top, c)


def test_longest_prefix_wins() -> None:
    t: AllowedIPs[str] = AllowedIPs()
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
    t: AllowedIPs[str] = AllowedIPs()
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
    t: AllowedIPs[int] = AllowedIPs()
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
