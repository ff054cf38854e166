"""The impairment model (wgslirp_testkit/impair.py) with a fake clock, and its relay process
over loopback."""

from __future__ import annotations

import random
import socket
import time

import pytest

from wgslirp_testkit.impair import ImpairedRelay, Impairment, Link


def link(**kw: float) -> Link:
    return Link(Impairment(**kw), random.Random(7))  # type: ignore[arg-type]


def test_no_impairment_delivers_at_once() -> None:
    assert link().offer(1400, 5.0) == (5.0,)


def test_delay_is_added_and_order_is_kept_under_jitter() -> None:
    lk = link(delay=0.02, jitter=0.005)
    sent = [1.0 + i * 0.0001 for i in range(1000)]
    arrivals = [lk.offer(100, t)[0] for t in sent]
    assert arrivals == sorted(arrivals)
    assert all(a >= t + 0.02 - 1e-9 for t, a in zip(sent, arrivals, strict=True))
    # Late only by its own jitter, or held behind an earlier datagram's.
    assert all(
        a <= max(t + 0.025 + 1e-9, prev)
        for t, a, prev in zip(sent, arrivals, arrivals[:1] + arrivals[:-1], strict=True)
    )
    assert len(set(arrivals)) > 100  # the jitter is really drawn


def test_the_bottleneck_serialises_at_its_rate_and_drops_at_the_tail() -> None:
    lk = link(rate=10e6, queue=3)  # 1250 bytes take 1 ms at 10 Mbit/s
    got = [lk.offer(1250, 0.0) for _ in range(5)]
    assert got[:3] == [(pytest.approx(0.001),), (pytest.approx(0.002),), (pytest.approx(0.003),)]
    assert got[3:] == [(), ()]
    assert lk.stats.dropped_queue == 2 and lk.stats.max_queue == 3
    # Once the first has left, there is room for one more, behind the last.
    assert lk.offer(1250, 0.0015) == (pytest.approx(0.004),)
    # Queueing waits: 0, 1 and 2 ms for the first three, 1.5 ms for the last (not the
    # dropped ones, which never waited).
    assert lk.stats.queue_wait == pytest.approx(0.0045)


def test_random_loss_rate() -> None:
    lk = link(loss=0.1)
    lost = sum(not lk.offer(100, float(i)) for i in range(10_000))
    assert 880 <= lost <= 1120  # binomial: 1000 +- 4 sigma
    assert lk.stats.lost_random == lost


def test_gilbert_elliott_losses_come_in_bursts() -> None:
    lk = link(ge_p=0.01, ge_r=0.25, ge_loss=1.0)
    outcome = [bool(lk.offer(100, float(i))) for i in range(50_000)]
    lost = outcome.count(False)
    runs = sum(1 for i in range(1, len(outcome)) if not outcome[i] and outcome[i - 1])
    # Stationary share in the bad state p / (p + r) = 3.8 %; mean burst 1 / r = 4.
    assert 0.03 <= lost / len(outcome) <= 0.047
    assert 3.0 <= lost / runs <= 5.0


def test_a_reordered_datagram_overtakes_the_one_before_it() -> None:
    lk = link(delay=0.02, reorder=1.0, reorder_gap=0.002)
    first = link(delay=0.02).offer(100, 0.0)[0]
    assert lk.offer(100, 0.0005)[0] < first
    assert lk.stats.reordered == 1


def test_duplicates_arrive_twice() -> None:
    lk = link(duplicate=1.0, delay=0.01)
    assert lk.offer(100, 0.0) == (0.01, 0.01)
    assert lk.stats.delivered == 2


def test_parse_reads_units() -> None:
    imp = Impairment.parse("delay=20ms,loss=1%,rate=100mbit,queue=50,jitter=500us")
    assert imp == Impairment(delay=0.02, loss=0.01, rate=100e6, queue=50, jitter=0.0005)
    with pytest.raises(ValueError, match="unknown"):
        Impairment.parse("latency=20ms")


def test_the_relay_process_carries_datagrams_both_ways_with_the_delay() -> None:
    router = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    router.bind(("127.0.0.1", 0))
    router.settimeout(5)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    delay = Impairment(delay=0.01)
    try:
        with ImpairedRelay(router.getsockname()[1], up=delay, down=delay, lifetime=60) as relay:
            for i in range(20):
                sent = time.monotonic()
                client.sendto(b"ping %d" % i, ("127.0.0.1", relay.port))
                data, addr = router.recvfrom(100)
                router.sendto(data.replace(b"ping", b"pong"), addr)
                assert client.recvfrom(100)[0] == b"pong %d" % i
                # Measured from our own send, which precedes the relay's receipt.
                assert time.monotonic() - sent >= 0.02
        report = relay.report
        assert report is not None
        assert report.up.delivered == report.down.delivered == 20
        assert report.socket_drops == 0
    finally:
        router.close()
        client.close()
