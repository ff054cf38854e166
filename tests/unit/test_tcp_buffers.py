"""The send ring grows with the congestion window out of a shared budget (tcp_buffers):
the bytes survive the move, the budget bounds the sum, and a grown ring is what lets one
download fill a long path."""

from __future__ import annotations

import pytest

from wgslirp.net import tcp
from wgslirp.net.tcp import ACK
from wgslirp.slirp.tcp_buffers import SendBudget
from wgslirp.slirp.tcp_endpoint import TcpEndpoint, TcpParams, TcpState
from wgslirp_testkit import pathsim
from wgslirp_testkit.tcpconn import GUEST_IP, GUEST_PORT, HOST_IP, HOST_PORT, Conn, Egress

MSS = 1340


def established(budget: SendBudget, snd_buffer: int = 64 * 1024) -> Conn:
    p = TcpParams(mss=MSS, snd_buffer=snd_buffer, snd_buffer_max=1 << 20, pacing=False)
    c = Conn(p, window=65535, syn_opts=tcp.options_bytes(mss=1460, wscale=7))
    c.ep = TcpEndpoint(
        p,
        local=(HOST_IP, HOST_PORT),
        remote=(GUEST_IP, GUEST_PORT),
        iss=2**32 - 30_000,  # the ring's base wraps the 32-bit space during the test
        now=c.now,
        egress=c.egress,
        peer=1,
        budget=budget,
    )
    c.ep.on_syn(memoryview(c.syn), len(c.syn), c.now)
    c.ep.accept(c.now)
    (sa,) = c.out()
    c.clock.advance(0.04)
    c.gseq += 1
    c.gack = sa.seq + 1
    c.send(b"", ACK)
    assert c.ep.state is TcpState.ESTABLISHED
    return c


def test_the_ring_grows_when_cwnd_wants_more_and_the_bytes_survive_the_move() -> None:
    budget = SendBudget(8 << 20)
    c = established(budget)
    pattern = bytes(range(251)) * 2000  # 502 KB, no period that divides a ring size
    written = c.ep.write(pattern, c.now)
    assert written == 64 * 1024  # the ring is full
    c.ep.cc.cwnd = 200 * MSS  # > half the ring: the next ACK grows it
    c.ep.flush(c.now)
    got = bytearray()
    for _ in range(400):
        segs = c.out()
        for s in segs:
            if s.data and s.seq == (c.gack & 0xFFFFFFFF):
                got += s.data
                c.gack += len(s.data)
        c.clock.advance(0.001)
        c.send(b"", ACK)  # acknowledge what arrived: growth happens on an ACK
        if written < len(pattern):
            written += c.ep.write(pattern[written:], c.now)
        c.ep.flush(c.now)
        if len(got) == len(pattern):
            break
    assert bytes(got) == pattern
    assert c.ep.snd_capacity > 64 * 1024
    assert budget.used == c.ep.snd_capacity - 64 * 1024
    c.ep.release()
    assert budget.used == 0
    c.ep.release()  # idempotent: a second drop returns nothing twice
    assert budget.used == 0


def test_a_spent_budget_leaves_a_connection_at_its_size_and_working() -> None:
    budget = SendBudget(1 << 20)
    a = established(budget)
    b = established(budget)
    for c in (a, b):
        c.ep.write(b"x" * 64 * 1024, c.now)
        c.ep.cc.cwnd = 1 << 20  # wants the maximum
        c.ep.flush(c.now)
        c.out()
        c.clock.advance(0.001)
        c.gack += MSS
        c.send(b"", ACK)
    assert a.ep.snd_capacity == 1 << 20  # the first took the pool: 1 MiB - 64 KiB
    assert b.ep.snd_capacity == 64 * 1024
    assert budget.refused >= 1
    assert budget.used <= budget.total
    a.ep.release()
    b.gack += MSS
    b.ep.flush(b.now)
    b.out()
    b.clock.advance(0.001)
    b.send(b"", ACK)  # the window grew further meanwhile: it asks again and gets it
    b.ep.cc.cwnd = 2 << 20
    b.gack += MSS
    b.send(b"", ACK)
    assert b.ep.snd_capacity > 64 * 1024


def test_without_a_budget_or_room_to_grow_the_ring_keeps_its_size() -> None:
    eg = Egress()
    p = TcpParams(mss=MSS, snd_buffer=64 * 1024, snd_buffer_max=1 << 20)
    ep = TcpEndpoint(
        p, local=(HOST_IP, HOST_PORT), remote=(GUEST_IP, GUEST_PORT), iss=1, now=0.0, egress=eg
    )
    assert ep.snd_capacity == 64 * 1024
    ep.cc.cwnd = 1 << 20
    ep._on_new_ack(2, 0.1, 0)  # no budget: nothing to borrow from
    assert ep.snd_capacity == 64 * 1024


def test_a_grown_ring_fills_a_path_a_fixed_one_cannot() -> None:
    """20 Mbit/s over 80 ms is 200 KB per round trip; a 64 KiB ring allows a third."""
    # A deep bottleneck queue, so slow start's overshoot costs no loss: only the ring
    # can limit the window here.
    fixed = pathsim.run(
        "cubic", rate_mbit=20, rtt=0.080, queue_packets=5000, snd_buffer=64 * 1024, seconds=8
    )
    grown = pathsim.run(
        "cubic",
        rate_mbit=20,
        rtt=0.080,
        queue_packets=5000,
        snd_buffer=64 * 1024,
        snd_buffer_max=4 << 20,
        budget=SendBudget(64 << 20),
        seconds=8,
    )
    assert fixed.mbit < 0.5 * 20
    assert grown.mbit > 0.8 * 20
    assert grown.snd_capacity > 64 * 1024
    assert fixed.snd_capacity == 64 * 1024


def test_returning_more_than_was_lent_is_a_bug_caught_at_once() -> None:
    budget = SendBudget(100)
    assert budget.take(60)
    with pytest.raises(AssertionError):
        budget.give(61)
