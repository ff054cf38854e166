"""SPSC shared-memory ring: single-process rules, then the real thing across two processes.

The cross-process property test keeps one ring and one forked consumer for all examples
(forking per example would dominate the run time); every example leaves the ring empty, so
the counters keep growing and later examples start at arbitrary slot offsets.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import select
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wgslirp.shm.ring import _HEAD, _SLEEPING, _TAIL, HEADER_SIZE, Producer, Ring

SHM_DIR = "/dev/shm"
FORK = multiprocessing.get_context("fork")
CREATED: list[str] = []  # every block name this module made, to prove none is left behind


def make_ring(slots: int, slot_size: int) -> Ring:
    ring = Ring.create(slots, slot_size)
    assert ring._shm is not None
    CREATED.append(ring._shm.name)
    return ring


def shm_names() -> set[str]:
    return set(os.listdir(SHM_DIR))


@pytest.fixture(scope="module", autouse=True)
def no_leaks() -> Iterator[None]:
    """After the module: nothing new in /dev/shm from us, no child process left."""
    # Start the resource tracker now, so the first ring does not make it look like a leak.
    resource_tracker.ensure_running()
    before_shm = shm_names()
    me = psutil.Process()
    before_children = {c.pid for c in me.children(recursive=True)}
    yield
    new = shm_names() - before_shm
    ours = {n.lstrip("/") for n in CREATED}
    # Every name we made is checked; a new name we did not make belongs to another test
    # process sharing this host (xdist workers, other suites) and is not ours to judge.
    assert not new & ours, f"ring blocks left in /dev/shm: {sorted(new & ours)}"
    assert not ours & shm_names()
    # Zombies count too: every child must have been reaped, not merely have exited.
    deadline = time.monotonic() + 5
    while True:
        left = {c.pid for c in me.children(recursive=True)} - before_children
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not left, f"child processes left: {sorted(left)}"


def readable(fd: int) -> bool:
    r, _, _ = select.select([fd], [], [], 0)
    return bool(r)


# -- creation and teardown ----------------------------------------------------------------


def test_create_validates_geometry() -> None:
    for slots in (0, 3, 6, 100):
        with pytest.raises(ValueError, match="power of two"):
            Ring.create(slots, 64)
    with pytest.raises(ValueError, match="slot_size"):
        Ring.create(8, 0)


def test_block_is_unlinked_at_once_and_laid_out_on_cache_lines() -> None:
    before = shm_names()
    ring = make_ring(8, 100)
    assert shm_names() - before == set()
    assert ring.stride == 128
    base = ring._views[0]
    # head, tail and the sleeping flag sit on three different 64-byte lines
    assert {_HEAD * 8 // 64, _TAIL * 8 // 64, _SLEEPING * 8 // 64} == {0, 1, 2}
    assert ring.data.shape == (8, 100) and ring.data.strides == (128, 1)
    assert ring.data.ctypes.data % 64 == 0 and ring.lengths.ctypes.data % 64 == 0
    assert ring.peers.ctypes.data % 64 == 0
    assert len(base) == 100
    del base
    ring.close()


def test_close_releases_everything_and_is_idempotent() -> None:
    ring = make_ring(4, 32)
    prod, cons = ring.producer(), ring.consumer()
    prod.push(b"abc", 1)
    ring.close()
    ring.close()
    assert ring.closed
    with pytest.raises(ValueError):
        prod.push(b"x", 1)
    with pytest.raises(ValueError):
        cons.available()
    with pytest.raises(ValueError, match="closed"):
        ring.stats()


def test_close_with_a_view_still_held_defers_the_unmap() -> None:
    ring = make_ring(4, 32)
    prod, cons = ring.producer(), ring.consumer()
    prod.push(b"abc", 1)
    view, _peer = cons.peek(0)
    rows = ring.data[:2]
    ring.close()  # no BufferError: the mapping now lives exactly as long as the views
    assert ring.closed
    assert bytes(view) == b"abc" and rows.shape == (2, 32)
    with pytest.raises(ValueError):
        cons.peek(0)
    del view, rows


# -- producer and consumer rules ----------------------------------------------------------


def test_push_peek_release_roundtrip_and_numpy_views_agree() -> None:
    ring = make_ring(8, 64)
    prod, cons = ring.producer(), ring.consumer()
    assert prod.push(b"hello", 7)
    assert prod.push(b"", 8)
    assert cons.available() == 2
    v, peer = cons.peek(0)
    assert (bytes(v), peer) == (b"hello", 7)
    assert bytes(ring.data[0, :5]) == b"hello" and ring.lengths[0] == 5 and ring.peers[0] == 7
    v, peer = cons.peek(1)
    assert (bytes(v), peer) == (b"", 8)
    del v
    cons.release(2)
    assert cons.available() == 0
    s = ring.stats()
    assert (s.head, s.tail, s.published, s.drops, s.pending) == (2, 2, 2, 0, 0)
    ring.close()


def test_counters_wrap_around_slots_from_a_large_start() -> None:
    """Counters only grow; indices wrap every `slots` packets, also far past 2**32."""
    ring = make_ring(4, 16)
    start = 2**40 - 3
    ring._ctr[_HEAD] = start
    ring._ctr[_TAIL] = start
    prod, cons = ring.producer(), ring.consumer()  # endpoints adopt the shared counters
    sent: list[bytes] = []
    got: list[bytes] = []
    n = 0
    for batch in [1, 3, 4, 2, 4, 1, 1, 3, 4, 4, 2] * 3:
        granted = prod.reserve(batch)
        assert granted == batch  # always empty before each batch
        for i in range(granted):
            pkt = n.to_bytes(4, "big") * (n % 4 + 1)
            prod.put(i, pkt, n)
            sent.append(pkt)
            n += 1
        prod.publish(granted)
        assert cons.drain(lambda v, p: got.append(bytes(v))) == granted
    assert got == sent
    s = ring.stats()
    assert s.head == s.tail == start + len(sent) and s.published == len(sent)
    ring.close()


def test_numpy_rows_wrap_across_the_end_of_the_array() -> None:
    ring = make_ring(8, 40)
    prod, cons = ring.producer(), ring.consumer()
    rng = np.random.default_rng(5)
    out = np.zeros((8, 32), np.uint8)
    lens = np.zeros(8, np.uint32)
    peers = np.zeros(8, np.uint32)
    for k in (5, 6, 7, 3, 8, 1):  # start offsets 0,5,3,2,5,5: most batches straddle the end
        rows = rng.integers(0, 256, (k, 32), dtype=np.uint8)
        lengths = rng.integers(0, 33, k).astype(np.uint32)
        assert prod.push_rows(rows, lengths, np.arange(k, dtype=np.uint32)) == k
        assert cons.pop_rows(out, lens, peers) == k
        assert (out[:k] == rows).all()
        assert (lens[:k] == lengths).all() and (peers[:k] == np.arange(k)).all()
    ring.close()


def test_full_ring_drops_and_counts_and_never_overwrites() -> None:
    ring = make_ring(4, 16)
    prod, cons = ring.producer(), ring.consumer()
    for i in range(4):
        assert prod.push(bytes([i]), i)
    assert prod.free_slots() == 0
    assert not prod.push(b"late", 9)
    assert prod.reserve(5) == 0  # five more packets that will not fit
    assert ring.stats().drops == 6
    with pytest.raises(ValueError, match="overruns"):
        prod.publish(1)
    cons.available()
    cons.release(2)
    assert prod.reserve(5) == 2
    assert ring.stats().drops == 9
    prod.put(0, b"x", 0)
    prod.put(1, b"y", 0)
    prod.publish(2)
    prod.drop(3)  # a caller-side drop (e.g. no slot fitted) counts the same way
    got: list[bytes] = []
    cons.drain(lambda v, p: got.append(bytes(v)))
    assert got == [b"\x02", b"\x03", b"x", b"y"]
    s = ring.stats()
    assert (s.published, s.drops) == (6, 12)
    ring.close()


def test_oversize_packets_are_refused() -> None:
    ring = make_ring(4, 16)
    prod, cons = ring.producer(), ring.consumer()
    assert not prod.push(b"z" * 17, 1)
    assert ring.stats().drops == 1
    with pytest.raises(ValueError, match="exceeds slot size"):
        prod.put(0, b"z" * 17, 1)
    with pytest.raises(ValueError, match="exceeds slot size"):
        prod.stage(0, 17, 1)
    with pytest.raises(ValueError, match="exceed slot size"):
        prod.push_rows(np.zeros((1, 17), np.uint8), 17, 0)
    with pytest.raises(ValueError, match="row width"):
        prod.push_rows(np.zeros((1, 8), np.uint8), 9, 0)
    assert prod.push(b"z" * 16, 1)  # exactly a slot is fine
    assert cons.available() == 1 and bytes(cons.peek(0)[0]) == b"z" * 16
    s = ring.stats()
    assert (s.published, s.drops) == (1, 1)
    ring.close()


def test_slot_and_stage_fill_in_place() -> None:
    ring = make_ring(4, 16)
    prod, cons = ring.producer(), ring.consumer()
    assert prod.free_slots() == 4
    for i in range(3):
        buf = prod.slot(i)
        assert len(buf) == 16
        buf[:3] = b"ab" + bytes([i])
        prod.stage(i, 3, 100 + i)
    assert cons.available() == 0  # staged is not published
    prod.publish(3)
    assert [(bytes(v), p) for v, p in (cons.peek(i) for i in range(3))] == [
        (b"ab\x00", 100),
        (b"ab\x01", 101),
        (b"ab\x02", 102),
    ]
    cons.release(3)
    with pytest.raises(ValueError):
        cons.release(1)
    ring.close()


def test_drain_releases_up_to_a_failing_packet() -> None:
    ring = make_ring(8, 16)
    prod, cons = ring.producer(), ring.consumer()
    for i in range(5):
        prod.push(bytes([i]), i)
    seen: list[int] = []

    def handle(v: memoryview, peer: int) -> None:
        seen.append(peer)
        if peer == 2:
            raise RuntimeError("bad packet")

    with pytest.raises(RuntimeError):
        cons.drain(handle)
    assert cons.available() == 2  # 0, 1 and the failing 2 are gone
    assert cons.drain(handle, max_count=1) == 1
    assert seen == [0, 1, 2, 3]
    ring.close()


# -- doorbell and sleep protocol ----------------------------------------------------------


def test_doorbell_rings_only_when_the_consumer_said_it_sleeps() -> None:
    ring = make_ring(8, 16)
    prod, cons = ring.producer(), ring.consumer()
    for _ in range(3):
        prod.push(b"busy", 0)
    assert not readable(cons.doorbell_fd) and ring.stats().doorbells == 0
    cons.drain(lambda v, p: None)
    assert cons.prepare_sleep()
    assert ring.stats().consumer_sleeping
    prod.push(b"wake", 0)
    assert readable(cons.doorbell_fd)
    s = ring.stats()
    assert s.doorbells == 1 and not s.consumer_sleeping  # the producer cleared the flag
    prod.push(b"more", 0)  # consumer not re-armed: no second ring
    assert ring.stats().doorbells == 1
    cons.woke()
    assert not readable(cons.doorbell_fd)
    assert cons.available() == 2
    ring.close()


def test_prepare_sleep_refuses_when_data_is_pending() -> None:
    ring = make_ring(8, 16)
    prod, cons = ring.producer(), ring.consumer()
    prod.push(b"x", 0)
    assert not cons.prepare_sleep()
    assert not ring.stats().consumer_sleeping
    prod.push(b"y", 0)
    assert ring.stats().doorbells == 0
    cons.woke(drain=True)  # nothing to read: must not raise
    ring.close()


@pytest.mark.parametrize("order", ["producer-inside-consumer", "consumer-inside-producer"])
def test_no_lost_wakeup_when_the_two_sides_interleave(order: str) -> None:
    """Run one side's whole step at the other side's fence, the only point they can cross.

    Either the consumer sees the packet and does not sleep, or it sleeps and the producer
    rang: never "sleeping, doorbell silent, packet pending".
    """
    ring = make_ring(8, 16)
    prod, cons = ring.producer(), ring.consumer()
    verdict: list[bool] = []
    if order == "producer-inside-consumer":
        # consumer stored its flag, producer publishes before the consumer re-reads head
        orig = cons._fence
        cons._fence = lambda: (orig(), prod.push(b"p", 0))[0]
        verdict.append(cons.prepare_sleep())
    else:
        # producer stored head, consumer arms and checks before the producer reads the flag
        orig = prod._fence
        prod._fence = lambda: (orig(), verdict.append(cons.prepare_sleep()))[0]
        prod.push(b"p", 0)
    sleeps = verdict[0]
    assert not sleeps or readable(cons.doorbell_fd)
    assert cons.available() == 1
    ring.close()


# -- across two processes -----------------------------------------------------------------


def _digest(v: Any) -> bytes:
    return hashlib.blake2b(v, digest_size=8).digest()


def consumer_main(ring: Ring, ctrl: Connection, wait_timeout: float) -> None:
    """The worker side, as the router runs it: drain, arm, wait on doorbell + control.

    Commands: ("expect", n) -> reply ("result", digests, missed) once n packets arrived;
    ("pause",) -> stop draining and reply ("paused",); ("resume",); ("stop",).
    ``missed`` counts waits that timed out while packets were pending: lost wake-ups.
    """
    cons = ring.consumer()
    sel = selectors.DefaultSelector()
    sel.register(cons.doorbell_fd, selectors.EVENT_READ, "bell")
    sel.register(ctrl.fileno(), selectors.EVENT_READ, "ctrl")
    got: list[tuple[bytes, int]] = []
    expect: int | None = None
    paused = False
    missed = 0
    deadline = time.monotonic() + 600

    def record(v: memoryview, peer: int) -> None:
        got.append((_digest(v), peer))

    while time.monotonic() < deadline:
        if not paused and cons.drain(record, 64):
            continue
        if expect is not None and len(got) >= expect:
            ctrl.send(("result", got, missed))
            got, expect, missed = [], None, 0
        if ctrl.poll(0):
            msg = ctrl.recv()
            if msg[0] == "stop":
                return
            if msg[0] == "expect":
                expect = msg[1]
            elif msg[0] == "pause":
                paused = True
                ctrl.send(("paused",))
            elif msg[0] == "resume":
                paused = False
            continue
        if paused:
            ctrl.poll(wait_timeout)
            continue
        if cons.prepare_sleep():
            events = sel.select(wait_timeout)
            bell = any(key.data == "bell" for key, _ in events)
            # Data pending after a timed-out wait is a lost wake-up, unless the producer
            # published just as the wait ended: then it saw our flag and its doorbell is
            # moments away. A lost one never rings.
            if not events and cons.available() and not sel.select(0.05):
                missed += 1
            cons.woke(drain=bell)


@dataclass
class Remote:
    ring: Ring
    prod: Producer
    ctrl: Connection
    proc: Any

    def call(self, *msg: Any) -> Any:
        self.ctrl.send(msg)
        if msg[0] in ("expect", "pause"):
            assert self.ctrl.poll(20), f"consumer did not answer {msg}"
            return self.ctrl.recv()
        return None


def _start_consumer(ring: Ring, wait_timeout: float) -> tuple[Connection, Any]:
    parent, child = FORK.Pipe()
    proc = FORK.Process(target=consumer_main, args=(ring, child, wait_timeout), daemon=True)
    proc.start()
    child.close()
    return parent, proc


def _stop(ctrl: Connection, proc: Any) -> None:
    ctrl.send(("stop",))
    proc.join(10)
    if proc.is_alive():
        proc.kill()
        proc.join(5)
    ctrl.close()
    assert proc.exitcode == 0


@pytest.fixture(scope="module")
def remote() -> Iterator[Remote]:
    ring = make_ring(16, 96)  # stride 128: the row padding is exercised too
    # A long wait: a lost wake-up shows as a timed-out wait with packets pending.
    ctrl, proc = _start_consumer(ring, wait_timeout=0.25)
    r = Remote(ring, ring.producer(), ctrl, proc)
    yield r
    _stop(ctrl, proc)
    del r
    ring.close()


SLOT = 96
packet_sizes = st.integers(0, SLOT)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    sizes=st.lists(st.integers(0, SLOT + 8), max_size=80),
    batches=st.lists(st.integers(1, 24), min_size=1, max_size=8),
    mode=st.sampled_from(["respect", "overfill-paused", "overfill-live", "push"]),
    api=st.sampled_from(["put", "slot"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_two_processes_deliver_every_accepted_packet_once_in_order(
    remote: Remote, sizes: list[int], batches: list[int], mode: str, api: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    if mode != "push":
        sizes = [min(n, SLOT) for n in sizes]  # put/stage refuse oversize by raising
    packets = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    peers = [int(p) for p in rng.integers(0, 2**32, len(packets), dtype=np.uint64)]
    prod = remote.prod
    before = remote.ring.stats()
    accepted: list[tuple[bytes, int]] = []
    rejected = 0
    if mode == "overfill-paused":
        assert remote.call("pause") == ("paused",)

    def write(i: int, pkt: bytes, peer: int) -> None:
        if api == "put":
            prod.put(i, pkt, peer)
        else:
            prod.slot(i)[: len(pkt)] = pkt
            prod.stage(i, len(pkt), peer)

    pos = 0
    b = 0
    deadline = time.monotonic() + 20
    while pos < len(packets):
        assert time.monotonic() < deadline, "producer made no progress"
        want = min(batches[b % len(batches)], len(packets) - pos)
        b += 1
        if mode == "push":
            for pkt, peer in zip(packets[pos : pos + want], peers[pos : pos + want], strict=True):
                if prod.push(pkt, peer):
                    accepted.append((_digest(pkt), peer))
                else:
                    rejected += 1
            pos += want
            continue
        if mode == "respect":
            free = prod.free_slots()
            if free == 0:
                time.sleep(0.0002)
                b -= 1
                continue
            want = min(want, free)
            granted = prod.reserve(want)
            assert granted == want
        else:
            granted = prod.reserve(want)
        for i in range(granted):
            write(i, packets[pos + i], peers[pos + i])
            accepted.append((_digest(packets[pos + i]), peers[pos + i]))
        prod.publish(granted)
        rejected += want - granted
        pos += want

    if mode == "overfill-paused":
        # the consumer ate nothing, so the ring took exactly its size
        assert len(accepted) == min(len(packets), remote.ring.slots)
        remote.call("resume")
    if mode == "respect":
        assert rejected == 0
    if mode == "push":
        assert rejected >= sum(1 for n in sizes if n > SLOT)

    reply = remote.call("expect", len(accepted))
    assert reply[0] == "result"
    _tag, got, missed = reply
    assert got == accepted
    assert missed == 0, "the consumer slept through a published packet"
    after = remote.ring.stats()
    assert after.published - before.published == len(accepted)
    assert after.drops - before.drops == rejected
    assert after.head == after.tail == before.head + len(accepted)


def test_no_lost_wakeup_under_random_gaps_across_processes() -> None:
    """Single packets at random small gaps, so the consumer is forever arming and sleeping."""
    ring = make_ring(8, 32)
    ctrl, proc = _start_consumer(ring, wait_timeout=0.5)
    prod = ring.producer()
    rng = np.random.default_rng(11)
    gaps = rng.exponential(60e-6, 1500)
    sent: list[tuple[bytes, int]] = []
    for i, gap in enumerate(gaps):
        until = time.perf_counter() + gap
        while time.perf_counter() < until:
            pass
        pkt = i.to_bytes(4, "little")
        deadline = time.monotonic() + 10
        while not prod.push(pkt, i):  # ring full (rare): let the consumer catch up
            assert time.monotonic() < deadline
            time.sleep(0.0001)
        sent.append((_digest(pkt), i))
    ctrl.send(("expect", len(sent)))
    assert ctrl.poll(30)
    _tag, got, missed = ctrl.recv()
    assert got == sent
    assert missed == 0
    assert ring.stats().doorbells > 100  # the sleeping path was really exercised
    _stop(ctrl, proc)
    ring.close()


def test_replacement_consumer_resumes_from_the_shared_tail() -> None:
    """A worker killed mid-stream is replaced by a fork of the same ring; nothing is replayed."""
    ring = make_ring(16, 32)
    prod = ring.producer()
    ctrl, proc = _start_consumer(ring, wait_timeout=0.01)
    for i in range(5):
        assert prod.push(bytes([i]), i)
    ctrl.send(("expect", 5))
    assert ctrl.poll(20)
    assert [p for _, p in ctrl.recv()[1]] == [0, 1, 2, 3, 4]
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    ctrl.close()
    assert proc.exitcode == -signal.SIGKILL
    for i in range(5, 9):
        assert prod.push(bytes([i]), i)  # queued while no consumer runs
    ctrl, proc = _start_consumer(ring, wait_timeout=0.01)
    ctrl.send(("expect", 4))
    assert ctrl.poll(20)
    assert [p for _, p in ctrl.recv()[1]] == [5, 6, 7, 8]
    _stop(ctrl, proc)
    ring.close()


# -- process exit -------------------------------------------------------------------------

_EXIT_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from wgslirp.shm.ring import Ring
    rings = [Ring.create(8, 64) for _ in range(3)]
    print(" ".join(r._shm.name.lstrip("/") for r in rings), flush=True)
    prods = [r.producer() for r in rings]
    conss = [r.consumer() for r in rings]
    for p in prods:
        p.push(b"left behind", 1)
    held = conss[0].peek(0)      # a live view into the block at exit
    arr = rings[1].data[:2]      # and a live numpy view
    pid = os.fork()
    if pid == 0:
        c = rings[2].consumer()
        c.prepare_sleep()
        time.sleep(30 if sys.argv[1] == "kill" else 0)
        os._exit(0)
    if sys.argv[1] == "kill":
        print(pid, flush=True)
        time.sleep(30)
    os.waitpid(pid, 0)
    """
)


def _run_exit_script(how: str) -> tuple[list[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _EXIT_SCRIPT, how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert proc.stdout is not None
    names = proc.stdout.readline().split()
    CREATED.extend(names)
    assert len(names) == 3, proc.communicate(timeout=30)
    if how == "kill":
        child = int(proc.stdout.readline())
        os.kill(child, signal.SIGKILL)
        proc.kill()
    # communicate() waits for EOF on stderr, i.e. also for the resource tracker to finish
    _out, err = proc.communicate(timeout=30)
    return names, err


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_process_exit_leaves_nothing_and_prints_nothing(how: str) -> None:
    names, err = _run_exit_script(how)
    assert err == ""
    assert not set(names) & shm_names()


def test_header_size_is_whole_cache_lines() -> None:
    assert HEADER_SIZE % 64 == 0
