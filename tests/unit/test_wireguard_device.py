"""Device-level protocol rules, two devices back to back with a fake clock."""

from __future__ import annotations

import struct

import pytest

from wgslirp.keys import generate_private_key, public_key
from wgslirp.wireguard.device import Device, HandshakeCompleted, HandshakeGaveUp, KeysZeroed
from wgslirp.wireguard.load import HandshakeGuard
from wgslirp.wireguard.messages import COOKIE_REPLY_SIZE, INITIATION_SIZE, RESPONSE_SIZE
from wgslirp.wireguard.timers import (
    MAX_HANDSHAKE_ATTEMPTS,
    REJECT_AFTER_MESSAGES,
    REKEY_AFTER_MESSAGES,
)
from wgslirp_testkit.wgpair import A_ADDR, Pair, ip_packet


def kinds(p: Pair) -> list[tuple[str, int, int]]:
    """(receiver, message type, size) of captured datagrams, then forget them."""
    out = [(dst, d[0], len(d)) for dst, d in p.captured]
    p.captured.clear()
    return out


def test_handshake_then_data_both_ways() -> None:
    p = Pair()
    p.handshake()
    # initiation, response, then the initiator's confirming keepalive
    assert kinds(p) == [("b", 1, INITIATION_SIZE), ("a", 2, RESPONSE_SIZE), ("b", 4, 32)]
    assert p.pb.current is not None and p.pb.next is None
    msg = p.send_a_to_b(b"hello" * 20)
    assert msg is not None
    p.a.outbox.append((msg, A_ADDR))
    assert p.deliver() == [("b", 120)]
    msg = p.send_b_to_a(b"world")
    assert msg is not None
    p.b.outbox.append((msg, A_ADDR))
    assert p.deliver() == [("a", 25)]
    assert p.b.stats.rx_packets == 1 and p.a.stats.rx_packets == 1
    assert isinstance(p.a.events[0], HandshakeCompleted) and p.a.events[0].initiator
    assert p.pa.last_handshake_wall == p.clock.wall


def test_responder_waits_for_key_confirmation() -> None:
    p = Pair()
    p.a.initiate(p.pa, p.now)
    ((init, _),) = p.a.outbox
    p.a.outbox.clear()
    p.b.receive_handshake(init, A_ADDR, p.now)
    assert p.pb.next is not None and p.pb.current is None
    # b may not send on an unconfirmed session: the packet is staged, not sent
    assert p.send_b_to_a() is None
    assert len(p.pb.staged) == 1
    resp = p.b.outbox.pop(0)
    p.a.receive_handshake(resp[0], ("127.0.0.1", 40002), p.now)
    p.deliver()  # a's keepalive confirms; b promotes next and flushes its staged packet
    assert p.pb.current is not None and not p.pb.staged
    assert ("a", 4, 32 + 128) in kinds(p)


def test_preshared_key_mismatch_fails() -> None:
    p = Pair(psk=b"\x01" * 32)
    p.pb.handshake.psk = b"\x02" * 32
    p.a.initiate(p.pa, p.now)
    p.deliver()
    assert p.pa.current is None
    assert p.a.stats.handshake_invalid == 1


def test_unknown_peer_and_bad_mac1_are_ignored() -> None:
    p = Pair()
    stranger = Device(generate_private_key())
    sp = stranger.add_peer(p.b.public_key, endpoint=("127.0.0.1", 1))
    stranger.initiate(sp, p.now)
    ((init, _),) = stranger.outbox
    assert p.b.receive_handshake(init, ("127.0.0.1", 9), p.now) is None
    assert p.b.stats.unknown_peer == 1 and not p.b.outbox
    bad = bytearray(init)
    bad[INITIATION_SIZE - 20] ^= 1  # inside MAC1
    assert p.b.receive_handshake(bytes(bad), ("127.0.0.1", 9), p.now) is None
    assert p.b.stats.mac1_invalid == 1


def test_replayed_initiation_rejected() -> None:
    p = Pair()
    p.a.initiate(p.pa, p.now)
    ((init, _),) = p.a.outbox
    p.deliver()
    p.clock.advance(1)
    assert p.b.receive_handshake(bytes(init), A_ADDR, p.now) is None
    assert p.b.stats.handshake_replayed == 1


def test_replayed_transport_rejected_and_counted() -> None:
    p = Pair()
    p.handshake()
    msg = p.send_a_to_b()
    assert msg is not None
    plain = bytearray(2000)
    assert p.b.decrypt(msg, A_ADDR, p.now, plain) is not None
    assert p.b.decrypt(msg, A_ADDR, p.now, plain) is None
    assert p.b.stats.transport_replayed == 1
    tampered = bytearray(msg)
    tampered[-1] ^= 0x80
    tampered[8] = 77  # fresh counter so the window lets it reach the AEAD
    assert p.b.decrypt(bytes(tampered), A_ADDR, p.now, plain) is None
    assert p.b.stats.transport_auth_failed == 1


def test_source_check_longest_prefix() -> None:
    p = Pair()
    # a also claims 10.0.0.0/24 on b's side, but 10.0.0.9/32 belongs to another peer
    p.b.allowed.insert("10.0.0.0/24", p.pb)
    p.b.add_peer(public_key(generate_private_key()), allowed_ips=["10.0.0.9/32"])
    p.handshake()
    out, plain = bytearray(400), bytearray(400)
    for src, ok in (("10.0.0.7", True), ("10.0.0.9", False), ("10.0.1.1", False)):
        pkt = ip_packet(src, "10.0.0.2", b"z" * 10)
        k = p.a.encrypt(p.pa, pkt, 30, p.now, out)
        r = p.b.decrypt(bytes(out[:k]), A_ADDR, p.now, plain)
        assert (r is not None) is ok, src
    assert p.b.stats.source_rejected == 2


def test_roaming_updates_endpoint() -> None:
    p = Pair()
    p.handshake()
    msg = p.send_a_to_b()
    assert msg is not None
    p.b.decrypt(msg, ("127.0.0.1", 5555), p.now, bytearray(2000))
    assert p.pb.endpoint == ("127.0.0.1", 5555)


def test_retransmit_with_jitter_then_give_up() -> None:
    p = Pair()
    assert p.send_a_to_b() is None  # staged; initiation queued
    p.a.outbox.clear()  # the initiation is lost
    sent_at = []
    for _ in range(2000):
        t = p.a.get_timer()
        assert t is not None
        if t > p.now + 200:
            break
        p.clock.t = max(p.clock.t, t)
        p.a.handle_timer(p.now)
        for data, _ in p.a.outbox:
            if data[0] == 1:
                sent_at.append(p.now)
        p.a.outbox.clear()
        if any(isinstance(e, HandshakeGaveUp) for e in p.a.events):
            break
    # wireguard-go's rule: retry while attempts <= MAX, so 1 + (MAX + 1) initiations in all
    assert len(sent_at) == MAX_HANDSHAKE_ATTEMPTS + 1
    gaps = [b - a for a, b in zip([p.clock.t - 10**9, *sent_at], sent_at, strict=False)][1:]
    assert all(5.0 <= g < 5.0 + 0.334 for g in gaps)
    assert any(isinstance(e, HandshakeGaveUp) for e in p.a.events)
    assert not p.pa.staged and p.a.stats.no_session_dropped == 1
    # a late response still completes the handshake that was given up on
    assert p.pa.handshake.state.name == "INITIATION_CREATED"


def test_passive_keepalive_after_receiving_data() -> None:
    p = Pair()
    p.handshake()
    p.captured.clear()
    msg = p.send_a_to_b()
    assert msg is not None
    p.b.decrypt(msg, A_ADDR, p.now, bytearray(2000))
    assert p.b.get_timer() == pytest.approx(p.now + 10)
    p.clock.advance(9.9)
    p.b.handle_timer(p.now)
    assert not p.b.outbox
    p.clock.advance(0.1)
    p.b.handle_timer(p.now)
    assert [(d[0], len(d)) for d, _ in p.b.outbox] == [(4, 32)]


def test_new_handshake_when_sent_data_gets_no_reply() -> None:
    p = Pair()
    p.handshake()
    p.clock.advance(1)
    assert p.send_a_to_b() is not None
    p.clock.advance(14.9)
    p.a.handle_timer(p.now)
    assert not p.a.outbox
    p.clock.advance(0.1 + 0.334)  # KEEPALIVE + REKEY timeouts, plus up to 334 ms jitter
    p.a.handle_timer(p.now)
    assert [d[0] for d, _ in p.a.outbox] == [1]


def test_rekey_after_time_and_reject_after_time() -> None:
    p = Pair()
    p.handshake()
    p.clock.advance(119)
    assert p.send_a_to_b() is not None and not p.a.outbox
    p.clock.advance(1)
    assert p.send_a_to_b() is not None
    assert [d[0] for d, _ in p.a.outbox] == [1]  # rekey initiation after 120 s
    p.a.outbox.clear()  # lost
    old = p.send_a_to_b()
    p.clock.advance(60)  # 180 s: the session is dead both ways
    assert p.send_a_to_b() is None
    assert p.b.decrypt(old, A_ADDR, p.now, bytearray(2000)) is None  # type: ignore[arg-type]
    assert p.b.stats.transport_expired == 1


def test_initiator_rekeys_on_receive_at_165s_and_previous_still_decrypts() -> None:
    p = Pair()
    p.handshake()
    p.clock.advance(165)
    msg = p.send_b_to_a()
    p.a.outbox.clear()
    assert msg is not None
    assert p.a.decrypt(msg, ("127.0.0.1", 40002), p.now, bytearray(2000)) is not None
    assert [d[0] for d, _ in p.a.outbox] == [1]
    in_flight = p.send_a_to_b()  # sealed with the old session
    p.deliver()
    assert p.pa.previous is not None
    assert p.b.decrypt(in_flight, A_ADDR, p.now, bytearray(2000)) is not None  # type: ignore[arg-type]


def test_rekey_and_reject_after_messages() -> None:
    p = Pair()
    p.handshake()
    assert p.pa.current is not None
    p.pa.current.send_counter = REKEY_AFTER_MESSAGES - 1
    p.clock.advance(5)  # initiations are rate-limited to one per REKEY_TIMEOUT
    assert p.send_a_to_b() is not None
    assert [d[0] for d, _ in p.a.outbox] == [1]
    p.a.outbox.clear()
    p.pa.current.send_counter = REJECT_AFTER_MESSAGES
    assert p.send_a_to_b() is None


def test_keys_zeroed_after_three_reject_times() -> None:
    p = Pair()
    p.handshake()
    p.clock.advance(539)
    p.a.handle_timer(p.now)
    p.a.outbox.clear()
    assert p.pa.current is not None
    p.clock.advance(1)
    p.a.handle_timer(p.now)
    assert p.pa.current is None and p.pa.previous is None
    assert any(isinstance(e, KeysZeroed) for e in p.a.events)
    assert not p.a._kp_index


def test_persistent_keepalive_connects_and_repeats() -> None:
    p = Pair(keepalive=25)
    p.a.handle_timer(p.now)  # keepalive due at once: no session -> handshake
    p.deliver()
    assert p.pa.current is not None
    p.captured.clear()
    p.clock.advance(25)
    p.a.handle_timer(p.now)
    p.deliver()
    assert kinds(p) == [("b", 4, 32)]


def test_cookie_reply_under_load_then_mac2_accepted() -> None:
    p = Pair()
    # Every handshake message counts as load, and no source is admitted without a cookie.
    p.b.guard = HandshakeGuard(0, fresh=(0.0, 0.0))
    p.a.initiate(p.pa, p.now)
    p.deliver()
    assert p.b.stats.cookie_replies_sent == 1
    assert p.pa.current is None
    assert [(k, t, n) for k, t, n in kinds(p)][1] == ("a", 3, COOKIE_REPLY_SIZE)
    p.clock.advance(5.4)
    p.a.handle_timer(p.now)  # retransmission now carries MAC2
    p.deliver()
    assert p.pa.current is not None
    assert p.b.stats.cookie_replies_sent == 1


def test_bogus_cookie_reply_ignored() -> None:
    p = Pair()
    p.a.initiate(p.pa, p.now)
    idx = p.pa.handshake.local_index
    bogus = struct.pack("<II", 3, idx) + bytes(56)
    assert p.a.receive_handshake(bogus, ("127.0.0.1", 40002), p.now) is None
    assert p.a.stats.handshake_invalid == 1


def test_response_blocks_a_crossing_initiation() -> None:
    """A responder holding data for the peer must not answer with its own initiation
    right after its response (wireguard-go sets lastSentHandshake on responses too)."""
    p = Pair()
    p.a.initiate(p.pa, p.now)
    ((init, _),) = p.a.outbox
    p.a.outbox.clear()
    assert p.send_b_to_a() is None  # b has no session yet: staged, wants a handshake
    p.b.outbox.clear()
    p.clock.advance(1)
    p.b.receive_handshake(init, A_ADDR, p.now)
    assert [d[0] for d, _ in p.b.outbox] == [2]  # the response only
    assert p.send_b_to_a() is None
    assert [d[0] for d, _ in p.b.outbox] == [2]
    p.deliver()
    assert p.pa.handshakes == 1 and p.pb.handshakes == 1


def test_responder_reports_handshake_only_on_confirmation() -> None:
    p = Pair()
    p.a.initiate(p.pa, p.now)
    ((init, _),) = p.a.outbox
    p.a.outbox.clear()
    p.b.receive_handshake(init, A_ADDR, p.now)
    assert p.pb.last_handshake_wall == 0 and p.pb.handshakes == 0
    p.deliver()  # response, then a's confirming keepalive
    assert p.pb.last_handshake_wall == p.clock.wall and p.pb.handshakes == 1
    assert any(isinstance(e, HandshakeCompleted) and not e.initiator for e in p.b.events)


def test_padding_never_exceeds_mtu() -> None:
    p = Pair()
    p.a.mtu = 1380
    p.handshake()
    pkt = ip_packet("10.0.0.1", "10.0.0.2", b"q" * (1370 - 28))  # 1370 bytes: pads to 1376
    out = bytearray(2000)
    assert p.a.encrypt(p.pa, pkt, 1370, p.now, out) == 1376 + 32
    pkt = ip_packet("10.0.0.1", "10.0.0.2", b"q" * (1379 - 28))  # 1392 would pass the MTU
    assert p.a.encrypt(p.pa, pkt, 1379, p.now, out) == 1380 + 32


def test_index_table_bounded_over_many_rekeys() -> None:
    p = Pair()
    for _ in range(20):
        p.clock.advance(6)
        p.a.initiate(p.pa, p.now)
        p.deliver()
    assert len(p.a._kp_index) <= 3 and len(p.b._kp_index) <= 3
    assert len(p.a._hs_index) <= 1 and len(p.b._hs_index) <= 1


def test_garbage_is_counted_not_raised() -> None:
    import random

    p = Pair()
    rnd = random.Random(7)
    plain = bytearray(70000)
    for _ in range(3000):
        n = rnd.choice([0, 1, 3, 4, 31, 32, 64, 92, 148, rnd.randrange(0, 1500)])
        data = bytes(rnd.getrandbits(8) for _ in range(n))
        if data and rnd.random() < 0.5:
            data = bytes([rnd.randrange(1, 5)]) + b"\0\0\0" + data[4:]
        if data[:1] == b"\x04":
            p.b.decrypt(data, A_ADDR, p.now, plain)
        else:
            p.b.receive_handshake(data, A_ADDR, p.now)
    s = p.b.stats
    assert s.invalid_datagrams + s.mac1_invalid + s.unknown_index > 2900


def test_under_load_cookie_holder_is_rate_limited() -> None:
    p = Pair()
    p.b.guard = HandshakeGuard(0, fresh=(0.0, 0.0), dh=(20.0, 1.0))
    p.a.initiate(p.pa, p.now)
    p.deliver()  # cookie reply
    p.clock.advance(5.4)
    p.a.handle_timer(p.now)
    p.deliver()  # MAC2 valid, first token: handshake completes
    assert p.pa.current is not None
    p.clock.advance(5.4)
    p.a.initiate(p.pa, p.now)
    ((init, _),) = p.a.outbox
    p.a.outbox.clear()
    p.b.receive_handshake(init, A_ADDR, p.now)  # 5.4 s later: a token again
    assert p.b.stats.handshake_rate_limited == 0
    p.clock.advance(0.01)
    p.b.receive_handshake(init, A_ADDR, p.now)  # same source at once: refused before DH
    assert p.b.stats.handshake_rate_limited == 1


def test_peers_keep_their_index_numbers_across_a_restart() -> None:
    """A replacement ingress numbers peers as its predecessor did (the workers' flows are
    keyed by these numbers), and never hands a number used before to a new peer."""
    from wgslirp.wireguard.device import Device

    keys = [bytes([i]) * 32 for i in range(1, 5)]
    first = Device(bytes(range(32)))
    for k in keys[:3]:
        first.add_peer(k)
    first.remove_peer(keys[0])  # A leaves: B keeps 2, C keeps 3
    indices = {k: p.index for k, p in first.peers.items()}
    assert indices == {keys[1]: 2, keys[2]: 3}
    second = Device(bytes(range(32)))
    second.reserve_peer_indices(first.next_peer_index)
    for k, i in indices.items():
        second.add_peer(k, index=i)
    assert {k: p.index for k, p in second.peers.items()} == indices
    assert second.add_peer(keys[3]).index == 4  # not 1: that was A's
    with pytest.raises(ValueError):
        second.add_peer(bytes([9]) * 32, index=2)  # taken
