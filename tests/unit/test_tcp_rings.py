"""TCP ring memory (slirp/tcp_rings.py): slots of shared mappings, lent only while a
connection holds bytes."""

from __future__ import annotations

from pathlib import Path

from wgslirp.net import tcp
from wgslirp.slirp import tcp_rings
from wgslirp.slirp.tcp_endpoint import TcpParams
from wgslirp.slirp.tcp_rings import NO_RING, POOL, RingPool
from wgslirp_testkit.tcpconn import Conn

SIZE = 64 * 1024


def test_slots_are_distinct_and_a_returned_one_is_reused_warm() -> None:
    pool = RingPool()
    a, va = pool.take(SIZE)
    b, vb = pool.take(SIZE)
    assert a != b and len(va) == len(vb) == SIZE
    va[:] = b"a" * SIZE
    vb[:] = b"b" * SIZE
    assert bytes(va) == b"a" * SIZE  # no overlap either way
    pool.give(SIZE, a)
    c, vc = pool.take(SIZE)
    assert c == a and bytes(vc[:4]) == b"aaaa"  # warm: same slot, its pages kept
    assert pool.lent() == 2 and pool.taken == 3 and pool.trimmed == 0


def test_many_rings_share_few_mappings() -> None:
    pool = RingPool()
    per_map = tcp_rings.ARENA_BYTES // SIZE
    held = [pool.take(SIZE) for _ in range(per_map + 1)]
    assert pool.mappings() == 2  # not one per ring
    assert len({slot for slot, _ in held}) == per_map + 1
    for slot, _ in held:
        pool.give(SIZE, slot)
    assert pool.lent() == 0 and pool.mappings() == 2  # kept for the next burst


def test_free_slots_beyond_the_warm_ones_give_their_pages_back() -> None:
    pool = RingPool()
    held = [pool.take(SIZE) for _ in range(tcp_rings.KEEP_WARM + 5)]
    for _, view in held:
        view[:8] = b"occupied"
    for slot, _ in held:
        pool.give(SIZE, slot)
    assert pool.trimmed == 5
    # A trimmed slot's pages were dropped (private anonymous memory reads as zeros again);
    # the warm ones kept theirs.
    contents = {bytes(view[:8]) for _, view in held}
    assert contents == {b"occupied", bytes(8)}
    trimmed = [bytes(view[:8]) for _, view in held].count(bytes(8))
    assert trimmed == 5


def test_ring_sizes_do_not_mix() -> None:
    pool = RingPool()
    _, small = pool.take(4096)
    _, big = pool.take(3 * 4096 + 1)
    assert len(small) == 4096 and len(big) == 3 * 4096 + 1
    assert pool.mappings() == 2


def small_params() -> TcpParams:
    return TcpParams(mss=1340, rcv_buffer=SIZE, snd_buffer=SIZE, snd_buffer_max=SIZE)


def test_an_idle_connection_holds_no_ring_and_a_drained_one_gives_both_back() -> None:
    c = Conn(small_params())
    c.handshake()
    ep = c.ep
    assert ep._rcv_buf == NO_RING and ep._snd_buf == NO_RING
    lent = POOL.lent()
    c.send(b"from the guest")  # waits for the host side: the receive ring holds it
    assert ep._rcv_buf != NO_RING and POOL.lent() == lent + 1
    assert c.read_all() == b"from the guest"
    ep.flush(c.now)
    assert ep._rcv_buf == NO_RING and POOL.lent() == lent
    assert ep.write(b"from the host", c.now) == 13  # unacknowledged: the send ring holds it
    ep.flush(c.now)
    (seg,) = [s for s in c.out() if s.data]
    assert seg.data == b"from the host" and ep._snd_buf != NO_RING
    c.gack = seg.seq + len(seg.data)
    c.send(b"", tcp.ACK)  # acknowledged: nothing left to resend
    assert ep._snd_buf == NO_RING and POOL.lent() == lent
    # and the positions carry on where they were: the next bytes come out right
    assert ep.write(b"more", c.now) == 4
    ep.flush(c.now)
    (seg2,) = [s for s in c.out() if s.data]
    assert seg2.data == b"more" and seg2.seq == c.gack
    ep.release()
    assert POOL.lent() == lent and ep._snd_buf == NO_RING


def test_out_of_order_data_keeps_the_receive_ring_until_the_gap_fills() -> None:
    c = Conn(small_params())
    c.handshake()
    ep = c.ep
    first = c.gseq
    c.send(b"B" * 100, seq=first + 100)  # beyond a gap
    assert ep._rcv_buf != NO_RING and ep.readable() == 0
    ep.flush(c.now)
    assert ep._rcv_buf != NO_RING  # the out-of-order bytes live in the ring
    c.send(b"A" * 100, seq=first)
    assert c.read_all() == b"A" * 100 + b"B" * 100
    ep.flush(c.now)
    assert ep._rcv_buf == NO_RING


def map_count() -> int:
    return len(Path("/proc/self/maps").read_text().splitlines())


def test_thousands_of_idle_connections_add_no_mappings_per_connection() -> None:
    """The old rings were two mmaps per connection: 4,000 connections would add 8,000
    mappings (vm.max_map_count is 65,530)."""
    before = map_count()
    conns = []
    for i in range(4000):
        c = Conn(small_params(), iss=1000 + i)
        c.handshake()
        conns.append(c)
    assert map_count() - before < 400, map_count() - before
