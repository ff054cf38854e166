#!/usr/bin/env python3
"""What one process wake-up costs on this machine: the floor under wgslirp's workers.

With workers, every train of packets ingress hands over wakes each worker that owns some
of it: an eventfd doorbell, the worker's epoll_wait returning, its turn, and back to sleep.
This measures that hand-off alone, between two plain processes: a sender pinned to CPU 0
writes an eventfd every ``--gap`` seconds (as trains arrive), a receiver sleeps on it and
counts its own CPU time per wake (``time.process_time``, the scheduler's runtime: what
bench_forward charges a router per packet). Cases:

- ``epoll``: the receiver waits in ``epoll.poll`` and reads the eventfd (a worker's loop).
- ``read``: the receiver blocks in ``read()`` on the eventfd (no epoll: the least a wake
  can cost in Python).

each with the receiver on the other CPU (the two cores both working, as with workers) and
on the sender's own CPU (the baseline: no idle vCPU to wake). On a VM whose idle vCPUs halt
at once (``cpuidle_haltpoll`` with ``guest_halt_poll_ns=0``), waking the other CPU is the
expensive case; the ratio to the same-CPU figure says how much of a worker's cost per
train is the machine's rather than wgslirp's.

    python scripts/bench_wake.py                 # 2,000 wakes 1.5 ms apart per case
    python scripts/bench_wake.py --wakes 5000 --gap 0.0005
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import time


def receiver(efd: int, mode: str, cpu: int, wakes: int, report: int) -> None:
    os.sched_setaffinity(0, {cpu})
    ep = select.epoll()
    ep.register(efd, select.EPOLLIN)
    n = 0
    t0 = time.process_time()
    deadline = time.monotonic() + 60.0  # bounded: a lost sender cannot hang the bench
    while n < wakes and time.monotonic() < deadline:
        if mode == "read":
            os.eventfd_read(efd)
            n += 1
        elif ep.poll(1.0):
            n += 1
            try:
                os.eventfd_read(efd)
            except BlockingIOError:
                pass
    cpu_s = time.process_time() - t0
    os.write(report, f"{cpu_s / max(n, 1) * 1e6:.2f} {n}".encode())
    os._exit(0)


def one(mode: str, same_cpu: bool, wakes: int, gap: float) -> tuple[float, int]:
    """(receiver CPU us per wake, wakes seen)."""
    efd = os.eventfd(0, 0 if mode == "read" else os.EFD_NONBLOCK)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        receiver(efd, mode, 0 if same_cpu else 1, wakes, w)
    os.close(w)
    try:
        os.sched_setaffinity(0, {0})
        time.sleep(0.2)
        for _ in range(wakes):
            os.eventfd_write(efd, 1)
            time.sleep(gap)
        _, status = os.waitpid(pid, 0)
        out = os.read(r, 100).decode().split()
    finally:
        os.close(r)
        os.close(efd)
    if not out:
        raise RuntimeError(f"receiver reported nothing (status {status})")
    return float(out[0]), int(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--wakes", type=int, default=2000)
    ap.add_argument("--gap", type=float, default=0.0015, help="seconds between doorbells")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs 2 CPUs (0 and 1) to compare the two placements")
    saved = os.sched_getaffinity(0)
    results: dict[tuple[str, bool], list[float]] = {}
    try:
        for _ in range(args.repeats):  # interleaved, so drift spreads over every case
            for mode in ("epoll", "read"):
                for same in (False, True):
                    us, n = one(mode, same, args.wakes, args.gap)
                    if n < args.wakes:
                        print(f"  {mode} same_cpu={same}: only {n} of {args.wakes} wakes")
                    results.setdefault((mode, same), []).append(us)
    finally:
        os.sched_setaffinity(0, saved)
    print(f"receiver CPU per wake-up, us (median of {args.repeats}; gap {args.gap * 1e3:g} ms)")
    print(f"{'wait':8} {'other CPU':>10} {'same CPU':>10} {'ratio':>7}")
    for mode in ("epoll", "read"):
        far = statistics.median(results[(mode, False)])
        near = statistics.median(results[(mode, True)])
        print(f"{mode:8} {far:10.1f} {near:10.1f} {far / near:7.2f}")


if __name__ == "__main__":
    main()
