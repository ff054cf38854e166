#!/usr/bin/env python3
"""Packets per second through one shared-memory ring between two processes.

The producer is this process and the consumer a forked child, as ingress and a worker are.
Each mode moves the same number of 1200-byte packets:

- ``ring/put+drain``: the router's path. The producer copies each packet (a bytes object)
  into a slot with ``put`` and publishes per batch; the consumer's ``drain`` hands each
  packet's memoryview to a handler that copies it out into a bytearray.
- ``ring/slot+stage+drain``: as ingress does it: ``slot(i)[:n] = packet`` (where the real
  router decrypts into the slot) and ``stage(i, n, peer)``, same consumer.
- ``ring/put+peek``: the same, with the consumer calling ``peek`` per packet.
- ``ring/numpy rows``: whole batches copied in and out as [batch, 1200] arrays, the best
  case for the ring itself with no per-packet Python.

Baselines in the same run: the same packets over an AF_UNIX SOCK_SEQPACKET socketpair (one
``send``/``recv_into`` per packet: the obvious way to pass packets between processes) and the
same per-packet copy-in/copy-out done in one process (what Python costs with no IPC at all).
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
import time
from collections.abc import Callable

import numpy as np

from wgslirp.shm.ring import MISSED_WAKEUP_BOUND, Consumer, Producer, Ring

PKT = 1200
SLOT = 1280


def _payloads(k: int = 64) -> list[bytes]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, PKT, dtype=np.uint8).tobytes() for _ in range(k)]


_CPUS = sorted(os.sched_getaffinity(0))


def _pin(cpu: int) -> None:
    """Put producer and consumer on different CPUs (read once: pinning narrows our own mask)."""
    if len(_CPUS) >= 2:
        os.sched_setaffinity(0, {_CPUS[cpu % len(_CPUS)]})


def _wait(cons: Consumer) -> None:
    if cons.prepare_sleep():
        r, _, _ = select.select([cons.doorbell_fd], [], [], MISSED_WAKEUP_BOUND)
        cons.woke(drain=bool(r))


def consume_drain(cons: Consumer, count: int) -> None:
    out = memoryview(bytearray(SLOT))

    def handle(v: memoryview, peer: int) -> None:
        out[: len(v)] = v

    got = 0
    while got < count:
        n = cons.drain(handle, 256)
        if n == 0:
            _wait(cons)
        got += n


def consume_peek(cons: Consumer, count: int) -> None:
    out = memoryview(bytearray(SLOT))
    got = 0
    peek = cons.peek
    while got < count:
        n = cons.available()
        if n == 0:
            _wait(cons)
            continue
        n = min(n, 256)
        for i in range(n):
            v, _peer = peek(i)
            out[: len(v)] = v
        cons.release(n)
        got += n


def consume_rows(cons: Consumer, count: int, batch: int) -> None:
    out = np.zeros((batch, PKT), np.uint8)
    lens = np.zeros(batch, np.uint32)
    peers = np.zeros(batch, np.uint32)
    got = 0
    while got < count:
        n = cons.pop_rows(out, lens, peers)
        if n == 0:
            _wait(cons)
        got += n


def produce_put(prod: Producer, count: int, batch: int) -> None:
    pays = _payloads()
    npay = len(pays)
    put = prod.put
    sent = 0
    while sent < count:
        n = min(prod.free_slots(), batch, count - sent)
        if n == 0:
            continue  # the consumer is behind; a real producer would drop instead
        for i in range(n):
            put(i, pays[(sent + i) % npay], 1)
        prod.publish(n)
        sent += n


def produce_slot_stage(prod: Producer, count: int, batch: int) -> None:
    """What ingress does: write into the slot buffer itself, then stage the length."""
    pays = _payloads()
    npay = len(pays)
    slot = prod.slot
    stage = prod.stage
    sent = 0
    while sent < count:
        n = min(prod.free_slots(), batch, count - sent)
        if n == 0:
            continue
        for i in range(n):
            pkt = pays[(sent + i) % npay]
            slot(i)[:PKT] = pkt
            stage(i, PKT, 1)
        prod.publish(n)
        sent += n


def produce_rows(prod: Producer, count: int, batch: int) -> None:
    rows = np.stack([np.frombuffer(p, np.uint8) for p in _payloads(batch)])
    sent = 0
    while sent < count:
        want = min(batch, count - sent, prod.free_slots())
        if want == 0:
            continue
        sent += prod.push_rows(rows[:want], PKT, 1)


def run_ring(mode: str, count: int, batch: int, slots: int) -> tuple[float, dict[str, int]]:
    ring = Ring.create(slots, SLOT)
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # consumer
        code = 1
        try:
            os.close(ready_r)
            os.close(done_r)
            _pin(1)
            cons = ring.consumer()
            os.write(ready_w, b"r")
            if mode in ("drain", "stage"):
                consume_drain(cons, count)
            elif mode == "peek":
                consume_peek(cons, count)
            else:
                consume_rows(cons, count, batch)
            os.write(done_w, repr(time.perf_counter()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(done_w)
    _pin(0)
    prod = ring.producer()
    os.read(ready_r, 1)
    t0 = time.perf_counter()
    if mode == "rows":
        produce_rows(prod, count, batch)
    elif mode == "stage":
        produce_slot_stage(prod, count, batch)
    else:
        produce_put(prod, count, batch)
    t1 = float(os.read(done_r, 64))
    _, status = os.waitpid(pid, 0)
    os.close(ready_r)
    os.close(done_r)
    if status != 0:
        raise RuntimeError(f"consumer failed with status {status}")
    s = ring.stats()
    del prod
    ring.close()
    assert s.published == count and s.tail == count and s.drops == 0, s
    return count / (t1 - t0), {"doorbells": s.doorbells}


def run_socketpair(count: int) -> float:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            a.close()
            _pin(1)
            buf = bytearray(SLOT)
            recv_into = b.recv_into
            b.send(b"r")
            for _ in range(count):
                recv_into(buf)
            b.send(repr(time.perf_counter()).encode())
            code = 0
        finally:
            os._exit(code)
    b.close()
    _pin(0)
    pays = _payloads()
    npay = len(pays)
    send = a.send
    a.recv(1)
    t0 = time.perf_counter()
    for i in range(count):
        send(pays[i % npay])
    t1 = float(a.recv(64))
    os.waitpid(pid, 0)
    a.close()
    return count / (t1 - t0)


def run_inprocess(count: int, batch: int) -> float:
    """Copy in, publish, copy out, release, in one process: Python's cost without IPC."""
    ring = Ring.create(1024, SLOT)
    prod, cons = ring.producer(), ring.consumer()
    pays = _payloads()
    npay = len(pays)
    out = memoryview(bytearray(SLOT))

    def handle(v: memoryview, peer: int) -> None:
        out[: len(v)] = v

    put = prod.put
    t0 = time.perf_counter()
    sent = 0
    while sent < count:
        n = min(batch, count - sent)
        for i in range(n):
            put(i, pays[(sent + i) % npay], 1)
        prod.publish(n)
        cons.drain(handle, n)
        sent += n
    dt = time.perf_counter() - t0
    del prod, cons
    ring.close()
    return count / dt


def best(fn: Callable[[], float], repeat: int) -> tuple[float, float]:
    runs = sorted(fn() for _ in range(repeat))
    return runs[-1], runs[len(runs) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2_000_000, help="packets per run")
    ap.add_argument("--batch", type=int, default=64, help="packets per publish")
    ap.add_argument("--slots", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode; best and median shown")
    args = ap.parse_args()
    shm_before = set(os.listdir("/dev/shm"))
    print(
        f"{args.count:,} packets of {PKT} bytes per run, batch {args.batch}, "
        f"{args.slots} slots of {SLOT} bytes, {len(_CPUS)} CPUs, "
        f"Python {sys.version.split()[0]}"
    )
    results: dict[str, tuple[float, float]] = {}
    doorbells: dict[str, int] = {}
    for mode, label in (
        ("drain", "ring/put+drain"),
        ("stage", "ring/slot+stage+drain"),
        ("peek", "ring/put+peek"),
        ("rows", "ring/numpy rows"),
    ):

        def one(mode: str = mode, label: str = label) -> float:
            pps, extra = run_ring(mode, args.count, args.batch, args.slots)
            doorbells[label] = extra["doorbells"]
            return pps

        results[label] = best(one, args.repeat)
    results["socketpair (baseline)"] = best(lambda: run_socketpair(args.count), args.repeat)
    results["in-process (baseline)"] = best(
        lambda: run_inprocess(args.count, args.batch), args.repeat
    )
    base = results["socketpair (baseline)"][0]
    print(f"{'path':22s} {'best pkt/s':>12s} {'median':>12s} {'Gbit/s':>7s} {'x sockpair':>10s}")
    for label, (top, med) in results.items():
        ring_note = f"  ({doorbells[label]} doorbells in last run)" if label in doorbells else ""
        print(
            f"{label:22s} {top:12,.0f} {med:12,.0f} {top * PKT * 8 / 1e9:7.1f} "
            f"{top / base:10.2f}{ring_note}"
        )
    leaked = set(os.listdir("/dev/shm")) - shm_before
    print("/dev/shm: clean" if not leaked else f"/dev/shm: LEAKED {sorted(leaked)}")
    return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main())
