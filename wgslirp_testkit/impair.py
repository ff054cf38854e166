"""An impaired path for the WireGuard datagrams: delay, jitter, loss, reordering, duplication
and a rate-limited bottleneck with a bounded queue, applied per direction.

This kernel has no netem qdisc, so the path is a user-space UDP relay between the client's
WireGuard socket and the router. Everything inside the tunnel (the guest's TCP, the router's
TCP) sees it as one link with these properties. The model (`Link`) is sans-I/O: fed a size
and a time, it answers when the datagram arrives (or that it is lost), so its rules have
unit tests with a fake clock; `run_relay` is the thin socket shell, run in a process of its
own so it competes with neither the test's threads nor the GIL.

The relay must not be the bottleneck of what it measures: it counts what its own sockets
dropped (/proc/net/udp) and the CPU it used, and benchmarks print both beside their figures.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Self

DOWN = 1  # router -> client: what wgslirp's TCP sends (a download)
UP = 0  # client -> router: what the guest's kernel sends (an upload)


@dataclass(frozen=True)
class Impairment:
    """One direction of the path. Times in seconds, rate in bit/s (0: no bottleneck)."""

    delay: float = 0.0
    jitter: float = 0.0  # uniform in [0, jitter) added to the delay; order is kept
    loss: float = 0.0  # independent random loss
    # Gilbert-Elliott bursty loss: per datagram, good -> bad with ge_p, bad -> good with ge_r;
    # in the bad state a datagram is lost with ge_loss (0: model off).
    ge_p: float = 0.0
    ge_r: float = 0.0
    ge_loss: float = 0.0
    reorder: float = 0.0  # share of datagrams that arrive `reorder_gap` early
    reorder_gap: float = 0.002
    duplicate: float = 0.0
    rate: float = 0.0
    queue: int = 100  # datagrams the bottleneck holds; more are tail-dropped

    @classmethod
    def parse(cls, text: str) -> Impairment:
        """'delay=20ms,loss=1%,rate=100mbit,queue=100' -> Impairment."""
        kw: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key not in cls.__dataclass_fields__:
                raise ValueError(f"impairment: unknown or malformed item {item!r}")
            kw[key] = int(value) if key == "queue" else _quantity(value)
        return cls(**kw)


def _quantity(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)\s*(ms|us|s|%|kbit|mbit|gbit)?", text.strip().lower())
    if m is None:
        raise ValueError(f"impairment: cannot read {text!r}")
    scale = {
        None: 1.0,
        "s": 1.0,
        "ms": 1e-3,
        "us": 1e-6,
        "%": 1e-2,
        "kbit": 1e3,
        "mbit": 1e6,
        "gbit": 1e9,
    }[m.group(2)]
    return float(m.group(1)) * scale


@dataclass
class LinkStats:
    offered: int = 0
    delivered: int = 0  # scheduled for delivery (duplicates count twice)
    lost_random: int = 0
    lost_burst: int = 0
    dropped_queue: int = 0
    reordered: int = 0
    duplicated: int = 0
    max_queue: int = 0
    # Seconds datagrams spent waiting in the bottleneck's queue (before their own
    # transmission), summed: divided by `delivered`, the queueing delay they met.
    queue_wait: float = 0.0


class Link:
    """One direction: `offer(size, now)` returns the arrival times of the datagram (empty
    when it is lost, two when duplicated). The bottleneck serialises datagrams at `rate`
    behind each other and drops at the tail when `queue` are waiting; delay and jitter
    follow it; a reordered datagram skips the order and arrives `reorder_gap` early."""

    def __init__(self, imp: Impairment, rng: random.Random) -> None:
        self.imp = imp
        self.rng = rng
        self.stats = LinkStats()
        self._bad = False
        self._finishes: deque[float] = deque()  # departure times of queued datagrams
        self._last_arrival = 0.0

    def offer(self, size: int, now: float) -> tuple[float, ...]:
        imp, st, rnd = self.imp, self.stats, self.rng.random
        st.offered += 1
        if imp.ge_loss:
            self._bad = (rnd() >= imp.ge_r) if self._bad else (rnd() < imp.ge_p)
            if self._bad and rnd() < imp.ge_loss:
                st.lost_burst += 1
                return ()
        if imp.loss and rnd() < imp.loss:
            st.lost_random += 1
            return ()
        leave = now
        if imp.rate:
            q = self._finishes
            while q and q[0] <= now:
                q.popleft()
            if len(q) >= imp.queue:
                st.dropped_queue += 1
                return ()
            start = q[-1] if q and q[-1] > now else now
            st.queue_wait += start - now
            leave = start + size * 8 / imp.rate
            q.append(leave)
            st.max_queue = max(st.max_queue, len(q))
        arrive = leave + imp.delay + (rnd() * imp.jitter if imp.jitter else 0.0)
        if imp.reorder and rnd() < imp.reorder:
            st.reordered += 1
            arrive = max(leave, arrive - imp.reorder_gap)  # overtakes, order not kept
        else:
            arrive = max(arrive, self._last_arrival)  # a link does not reorder by itself
            self._last_arrival = arrive
        if imp.duplicate and rnd() < imp.duplicate:
            st.duplicated += 1
            st.delivered += 2
            return (arrive, arrive)
        st.delivered += 1
        return (arrive,)


# --------------------------------------------------------------------------- the shell


@dataclass
class RelayReport:
    up: LinkStats = field(default_factory=LinkStats)
    down: LinkStats = field(default_factory=LinkStats)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    socket_drops: int = 0  # datagrams the relay's own sockets dropped (it fell behind)
    late_max_ms: float = 0.0  # worst lateness of a delivery against its due time

    @property
    def cpu_share(self) -> float:
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0


def _udp_drops(sockets: list[socket.socket]) -> int:
    """The kernel's drop counters of these sockets (the last column of /proc/net/udp)."""
    inodes = {str(os.fstat(s.fileno()).st_ino) for s in sockets}
    total = 0
    try:
        with open("/proc/net/udp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if len(parts) >= 13 and parts[9] in inodes:
                    total += int(parts[12])
    except OSError:
        pass
    return total


def run_relay(
    front: socket.socket,
    back: socket.socket,
    up: Impairment,
    down: Impairment,
    *,
    seed: int = 1,
    lifetime: float = 600.0,
    stop: list[bool] | None = None,
) -> RelayReport:
    """Relay until `lifetime` runs out or `stop[0]` turns true. `front` faces the client
    (its address is learned from the first datagram), `back` is connected to the router."""
    rng = random.Random(seed)
    links = (Link(up, rng), Link(down, rng))
    heap: list[tuple[float, int, int, bytes]] = []
    client: tuple[str, int] | None = None
    seq = 0
    late = 0.0
    t0 = time.monotonic()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    stop = stop if stop is not None else [False]
    deadline = t0 + lifetime
    socks = [front, back]
    while not stop[0]:
        now = time.monotonic()
        if now >= deadline:
            break
        timeout = min(0.05, heap[0][0] - now) if heap else 0.05
        try:
            ready, _, _ = select.select(socks, [], [], max(0.0, timeout))
        except InterruptedError:
            continue
        for s in ready:
            direction = UP if s is front else DOWN
            link = links[direction]
            for _ in range(256):
                try:
                    if direction == UP:
                        data, client = front.recvfrom(65535)
                    else:
                        data = back.recv(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue
                now = time.monotonic()
                for at in link.offer(len(data), now):
                    seq += 1
                    heapq.heappush(heap, (at, seq, direction, data))
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            at, _, direction, data = heapq.heappop(heap)
            late = max(late, now - at)
            try:
                if direction == UP:
                    back.send(data)
                elif client is not None:
                    front.sendto(data, client)
            except OSError:
                pass
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return RelayReport(
        up=links[UP].stats,
        down=links[DOWN].stats,
        cpu_seconds=(r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
        wall_seconds=time.monotonic() - t0,
        socket_drops=_udp_drops(socks),
        late_max_ms=late * 1000,
    )


class ImpairedRelay:
    """The relay in a child process: `port` is where the client's endpoint should point.

    ``with ImpairedRelay(router_port, up=..., down=...) as relay:`` ... ``relay.report``
    (after the block) holds what it did."""

    def __init__(
        self,
        router_port: int,
        *,
        up: Impairment,
        down: Impairment,
        seed: int = 1,
        lifetime: float = 600.0,
        router_host: str = "127.0.0.1",
    ) -> None:
        self.args = [
            sys.executable,
            "-m",
            "wgslirp_testkit.impair",
            "--target",
            f"{router_host}:{router_port}",
            "--up",
            _render(up),
            "--down",
            _render(down),
            "--seed",
            str(seed),
            "--lifetime",
            str(lifetime),
        ]
        self.port = 0
        self.report: RelayReport | None = None
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("port "):
            self._proc.kill()
            self._proc.wait(5)
            raise RuntimeError(f"impairment relay did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    @property
    def pid(self) -> int:
        """The relay process (single-threaded), e.g. to pin it to a CPU."""
        assert self._proc is not None, "the relay is not started"
        return self._proc.pid

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=5)
        for line in out.splitlines():
            if line.startswith("report "):
                self.report = _report_from(json.loads(line[len("report ") :]))


def _render(imp: Impairment) -> str:
    return ",".join(f"{k}={v!r}" for k, v in asdict(imp).items() if v != getattr(NONE, k))


NONE = Impairment()


def _report_from(d: dict[str, Any]) -> RelayReport:
    return RelayReport(up=LinkStats(**d.pop("up")), down=LinkStats(**d.pop("down")), **d)


def profile(delay_ms: float, loss: float = 0.0, **extra: Any) -> tuple[Impairment, Impairment]:
    """A symmetric path: the same one-way delay and loss each way (`extra` too)."""
    imp = replace(NONE, delay=delay_ms / 1000, loss=loss, **extra)
    return imp, imp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="router HOST:PORT")
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT for the client side")
    ap.add_argument("--up", default="", help="client->router, e.g. delay=20ms,loss=1%%")
    ap.add_argument("--down", default="", help="router->client, same form")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lifetime", type=float, default=600.0)
    a = ap.parse_args(argv)
    host, _, port = a.target.rpartition(":")
    lhost, _, lport = a.listen.rpartition(":")
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (front, back):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        s.setblocking(False)
    front.bind((lhost, int(lport)))
    back.bind(("127.0.0.1", 0))
    back.connect((host, int(port)))
    stop = [False]

    def on_term(_sig: int, _frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print(f"port {front.getsockname()[1]}", flush=True)
    report = run_relay(
        front,
        back,
        Impairment.parse(a.up.replace("'", "")),
        Impairment.parse(a.down.replace("'", "")),
        seed=a.seed,
        lifetime=a.lifetime,
        stop=stop,
    )
    print("report " + json.dumps(asdict(report)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
