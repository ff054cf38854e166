"""An ICMP echo sampler with microsecond resolution, run inside a guest namespace.

``ping`` prints a round trip of 100 ms or more in whole milliseconds, too coarse for the
queueing delay a flow adds at a bottleneck (a 100-datagram queue at 100 Mbit/s holds
~11 ms).  This one sends an echo request every ``interval`` seconds and prints one line per
reply, flushed at once, so whoever reads it can split the samples by time (idle before a
transfer, under load during it)::

    python -m wgslirp_testkit.pinger ADDR INTERVAL COUNT LIFETIME
    -> "ready"
    -> "<unix time of the reply> <seq> <rtt ms>" per reply

It stops after ``COUNT`` requests have had a second to be answered, after ``LIFETIME``
seconds, on SIGTERM, or when stdout goes away.  Needs a raw socket (root in the
namespace).  Stdlib only: it starts in a fresh interpreter inside the namespace.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import sys
import time

ECHO_REQUEST, ECHO_REPLY = 8, 0


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    head = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum(head + payload), ident, seq) + payload


def parse_reply(packet: bytes, ident: int) -> int | None:
    """The sequence number of an echo reply to us in ``packet`` (an IPv4 datagram)."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8:
        return None
    kind, _code, _sum, pid, seq = struct.unpack_from("!BBHHH", packet, ihl)
    return seq if kind == ECHO_REPLY and pid == ident else None


def run(addr: str, interval: float, count: int, lifetime: float) -> None:
    stop = [False]

    def on_term(_sig: int, _frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    payload = b"wgslirp-pinger".ljust(56, b".")
    sent: dict[int, float] = {}
    seq = 0
    t0 = time.monotonic()
    end = t0 + lifetime
    next_send = t0
    last_sent = t0
    print("ready", flush=True)
    for _ in range(10_000_000):  # bounded; the deadline below ends it long before
        now = time.monotonic()
        if stop[0] or now >= end or (seq >= count and now >= last_sent + 1.0):
            break
        if seq < count and now >= next_send:
            seq += 1
            try:
                s.sendto(echo_request(ident, seq & 0xFFFF, payload), (addr, 0))
                sent[seq & 0xFFFF] = now
            except OSError:
                pass
            last_sent = now
            next_send += interval
            if next_send < now:  # fell behind (descheduled): do not send a burst
                next_send = now + interval
        wake = min(next_send if seq < count else last_sent + 1.0, end)
        try:
            ready, _, _ = select.select([s], [], [], max(0.0, wake - time.monotonic()))
        except InterruptedError:
            continue
        if not ready:
            continue
        try:
            packet = s.recv(2048)
        except OSError:
            continue
        got = time.monotonic()
        n = parse_reply(packet, ident)
        if n is None or n not in sent:
            continue
        rtt = (got - sent.pop(n)) * 1000.0
        try:
            print(f"{time.time():.6f} {n} {rtt:.3f}", flush=True)
        except BrokenPipeError:
            break
    s.close()


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    run(argv[0], float(argv[1]), int(argv[2]), float(argv[3]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
