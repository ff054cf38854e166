"""Handshake load shedding (wireguard/load.py) with a fake clock, alone and in the Device."""

from __future__ import annotations

from wgslirp.keys import generate_private_key, public_key
from wgslirp.wireguard.device import Device
from wgslirp.wireguard.load import HandshakeGuard
from wgslirp_testkit.flood import initiation_with_mac1
from wgslirp_testkit.wgpair import A_ADDR, Pair

FLOOD = ("127.0.0.2", 40000)


def test_under_load_is_a_rate_over_a_second() -> None:
    g = HandshakeGuard(3)
    assert [g.under_load(10.0) for _ in range(5)] == [False, False, False, True, True]
    assert g.under_load(10.9)  # still the load of this second
    assert not g.under_load(12.0)  # a quiet second later it is over


def test_a_source_spends_its_fresh_then_its_cookie_budget_then_is_shed() -> None:
    g = HandshakeGuard(0)
    ip = "192.0.2.1"
    assert not g.spent(ip, 0.0)
    assert [g.admit_fresh(ip, 0.0) for _ in range(4)] == [True, True, True, False]
    assert not g.spent(ip, 0.0)  # cookies are still possible
    assert [g.allow_cookie(ip, 0.0) for _ in range(3)] == [True, True, False]
    assert g.spent(ip, 0.0)
    assert not g.spent("192.0.2.2", 0.0)  # every source has its own budgets
    assert not g.spent(ip, 1.0)  # a second later: one fresh token again
    assert g.admit_fresh(ip, 1.0) and not g.admit_fresh(ip, 1.0)


def test_global_budgets_bound_the_work_whatever_the_sources() -> None:
    g = HandshakeGuard(0, fresh_total=(10.0, 10.0), cookie_total=(100.0, 50.0))
    fresh = sum(g.admit_fresh(f"198.51.100.{i}", 0.0) for i in range(200))
    cookies = sum(g.allow_cookie(f"198.51.100.{i}", 0.0) for i in range(200))
    assert (fresh, cookies) == (10, 50)
    assert g.spent("203.0.113.7", 0.0)  # a new source finds both pools empty
    assert not g.spent("203.0.113.7", 0.1)  # 100/s: ten cookie tokens back after 0.1 s


def test_dh_for_cookie_holders_is_limited_per_source() -> None:
    g = HandshakeGuard(0, dh=(20.0, 5.0))
    assert [g.allow_dh("192.0.2.1", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert g.allow_dh("192.0.2.2", 0.0)
    assert not g.allow_dh("192.0.2.1", 0.01)
    assert g.allow_dh("192.0.2.1", 0.06)  # 20/s refills one token every 50 ms


def test_a_new_peer_completes_in_one_round_trip_during_a_flood_from_elsewhere() -> None:
    p = Pair()
    p.b.guard = HandshakeGuard(0)  # every message counts as load
    msg = initiation_with_mac1(p.b.public_key)
    for _ in range(1000):
        p.b.receive_handshake(msg, FLOOD, p.now)
    p.b.outbox.clear()
    s = p.b.stats
    # The flooder got three fresh attempts (garbage: they fail in the handshake) and two
    # cookie replies; everything after was dropped before any hashing.
    assert (s.handshake_invalid, s.cookie_replies_sent, s.handshake_shed) == (3, 2, 995)
    p.a.initiate(p.pa, p.now)
    p.deliver()
    assert p.pa.current is not None  # no cookie round trip, no 5 s retry
    assert s.cookie_replies_sent == 2


def test_a_spent_source_is_shed_before_its_mac1_is_even_checked() -> None:
    dev = Device(generate_private_key(), guard=HandshakeGuard(0))
    good = initiation_with_mac1(dev.public_key)
    for _ in range(5):  # three fresh (invalid handshakes), two cookie replies
        dev.receive_handshake(good, FLOOD, 1.0)
    bad = initiation_with_mac1(dev.public_key, valid_mac1=False)
    dev.receive_handshake(bad, FLOOD, 1.0)
    assert dev.stats.handshake_shed == 1 and dev.stats.mac1_invalid == 0
    dev.receive_handshake(bad, ("127.0.0.3", 1), 1.0)  # a fresh source: MAC1 is checked
    assert dev.stats.mac1_invalid == 1


def test_a_cookie_holder_from_a_spent_source_still_gets_through() -> None:
    """Peers behind one NAT address share its budgets with an attacker there; a valid MAC2
    proves the address, so it goes past the spent budgets to the DH limit."""
    p = Pair()
    p.b.guard = HandshakeGuard(0, fresh=(0.0, 0.0))
    p.a.initiate(p.pa, p.now)
    p.deliver()  # cookie reply to a
    assert p.b.stats.cookie_replies_sent == 1
    p.clock.advance(5.4)  # wireguard-go's retry time
    msg = initiation_with_mac1(p.b.public_key)
    for _ in range(10):  # meanwhile the same address spends its cookie budget
        p.b.receive_handshake(msg, A_ADDR, p.now)
    p.b.outbox.clear()
    assert p.b.guard.spent(A_ADDR[0], p.now)
    p.a.handle_timer(p.now)  # the retry carries MAC2
    p.deliver()
    assert p.pa.current is not None


def test_not_under_load_nothing_changes() -> None:
    dev = Device(generate_private_key())
    peer_key = generate_private_key()
    dev.add_peer(public_key(peer_key))
    msg = initiation_with_mac1(dev.public_key)
    for _ in range(100):
        dev.receive_handshake(msg, FLOOD, 1.0)
    assert dev.stats.cookie_replies_sent == 0 and dev.stats.handshake_shed == 0
    assert dev.stats.handshake_invalid == 100
