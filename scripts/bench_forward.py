#!/usr/bin/env python3
"""Router CPU per forwarded packet, with no WireGuard client in the way.

A real client (wireguard-go + TUN + a guest kernel) cannot offer more than the router takes,
so benchmarks through it measure the client. Here the peer is synthetic, written with the
project's own WireGuard code (wgslirp/wireguard): a real handshake with the router under
test, then packets sealed in advance and sent in UDP GSO trains (UDP_SEGMENT, one sendmsg per
train) at a fixed offered rate. The host side is one small program (this file's ``host``
subcommand) that counts what arrives (up; without UDP_GRO, as an ordinary service) or sends
at a fixed rate (down); the peer counts what the router sends back (with UDP_GRO, as a
current wireguard-go does), and decrypts the first arrivals to prove them valid.

Per cell (direction up/down x UDP payload 64/1392 bytes; 1392 makes the inner packet the
1420-byte tunnel MTU) and per router:

- ``µs/pkt``: router CPU per delivered packet over the measured window: the summed on-CPU
  time of the router's processes (ingress + workers; the single process with
  ``PROCESSOR_WORKERS=0``; all threads of wireguard-go), from
  ``/proc/<pid>/task/<tid>/sched`` (nanoseconds; ``/proc/<pid>/stat`` ticks where that file
  is missing). Kernel work done in the router's context (socket sends, loopback delivery,
  TUN, forwarding and NAT for the reference) is charged to it; softirq time the kernel
  accounts separately is not, on either side.
- ``loss 2x``: the same cell offered twice the rate one core could carry at the measured
  cost of the router's busiest process (for wireguard-go: the whole process), with where the
  packets were lost: ``sock`` on the router's receiving socket (the kernel dropped them before
  the router paid for them), ``in`` inside the router after it had decrypted or read them
  (full rings, full egress), ``out`` at the receiving end (sink or peer socket). For wgslirp
  ``sock`` is what is left of the loss after ``in`` and ``out`` (with UDP GRO a whole train
  the socket could not take is one drop in /proc/net/udp); for wireguard-go the drops
  /proc/net/udp counts on its socket (and nothing inside it is counted).

Routers: wgslirp inline (``PROCESSOR_WORKERS=0``) and with 2 workers, each a fresh process
per cell, and the reference: stock wireguard-go whose TUN sits in a namespace that forwards
to a test host (another namespace, on a veth) through nftables masquerade, i.e. kernel
routing + NAT. Baseline: one bare ChaCha20-Poly1305 ``decrypt_into``/``encrypt_into`` call
on the same inner size, the floor any WireGuard router pays.

Nothing here asserts a speed; a busy machine shows in the repeat spread.

    python scripts/bench_forward.py --quick              # 0.5 s windows, one repeat
    python scripts/bench_forward.py                      # 2 s windows, 3 interleaved repeats
    python scripts/bench_forward.py --only wgslirp-0 --cells up-64 --rate 30000
    python scripts/bench_forward.py --rev HEAD           # router from a commit
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from wgslirp.keys import generate_private_key, public_key  # noqa: E402
from wgslirp.net import ipv4, udp  # noqa: E402
from wgslirp.wireguard.device import Device  # noqa: E402
from wgslirp_testkit.bench import (  # noqa: E402
    add_rev_argument,
    rev_exported,
    router_code_note,
    start_controller,
    table,
)
from wgslirp_testkit.netns import Namespace  # noqa: E402
from wgslirp_testkit.ports import free_udp_port  # noqa: E402
from wgslirp_testkit.proc import die_with_parent, stop_process  # noqa: E402
from wgslirp_testkit.reference import reference_router  # noqa: E402
from wgslirp_testkit.router import (  # noqa: E402
    GATEWAY,
    one_peer_router,
    summed_exit_counters,
)
from wgslirp_testkit.sampling import process_tree, udp_socket_drops  # noqa: E402

SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h
UDP_GRO = 104
SO_SNDBUFFORCE = 32  # asm-generic/socket.h (the socket module lacks them)
SO_RCVBUFFORCE = 33
MTU = 1420
GUEST = "10.77.0.2"
SIZES = (64, 1392)  # UDP payload; 1392 + 28 = the 1420-byte tunnel MTU
FLOWS = 8  # guest source ports: enough that 2 workers both get some
SOCK_BUF = 32 << 20
MAX_GSO_BYTES = 65000
CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------- CPU


def cpu_seconds(pid: int) -> float:
    """On-CPU time of every thread of `pid` so far (0.0 once it is gone)."""
    total = 0.0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/sched") as f:
                for line in f:
                    if line.startswith("se.sum_exec_runtime"):
                        total += float(line.split(":")[1]) / 1000.0
                        break
        except OSError:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
            except (OSError, IndexError, ValueError):
                pass
    return total


def cpu_of(pids: dict[int, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid, label in pids.items():
        out[label] = out.get(label, 0.0) + cpu_seconds(pid)
    return out


# --------------------------------------------------------------------------- host program


def own_drops(sock: socket.socket) -> int:
    """Receive drops of `sock`, from its namespace's /proc/net/udp."""
    ino = os.fstat(sock.fileno()).st_ino
    return sum(udp_socket_drops(lambda s: s.inode == ino).values())


def recv_counting(sock: socket.socket, buf: bytearray, limit: int = 512) -> tuple[int, list[Any]]:
    """Drain up to `limit` datagrams of a socket without GRO: (count, source addresses)."""
    got = 0
    addrs = []
    for _ in range(limit):
        try:
            _n, addr = sock.recvfrom_into(buf)
        except (BlockingIOError, InterruptedError):
            break
        got += 1
        addrs.append(addr)
    return got, addrs


def recv_counting_gro(
    sock: socket.socket, buf: bytearray, limit: int = 512
) -> tuple[int, list[Any]]:
    """Drain up to `limit` reads of a UDP_GRO socket: (datagrams, source addresses)."""
    got = 0
    addrs = []
    space = socket.CMSG_SPACE(4)
    for _ in range(limit):
        try:
            n, anc, _flags, addr = sock.recvmsg_into([buf], space)
        except (BlockingIOError, InterruptedError):
            break
        seg = 0
        for level, typ, data in anc:
            if level == SOL_UDP and typ == UDP_GRO:
                seg = struct.unpack("i", data[:4])[0]
        got += (n + seg - 1) // seg if seg else 1
        addrs.append(addr)
    return got, addrs


def paced_send(
    sock: socket.socket,
    trains: list[tuple[bytes, int, Any]],
    rate: float,
    per_train: int,
    seconds: float,
) -> tuple[int, float]:
    """Send (data, segment size, destination) trains round-robin, `per_train` datagrams
    each, at `rate` datagrams/s for `seconds`; (datagrams sent, seconds it took)."""
    interval = per_train / rate
    t0 = time.perf_counter()
    end = t0 + seconds
    sent = 0
    i = 0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        target = t0 + i * interval
        if target > now:
            time.sleep(target - now)
        data, seg, dest = trains[i % len(trains)]
        try:
            sock.sendmsg([data], [(SOL_UDP, UDP_SEGMENT, struct.pack("H", seg))], 0, dest)
            sent += (len(data) + seg - 1) // seg
        except OSError:
            pass
        i += 1
    return sent, time.perf_counter() - t0


def host_main(argv: list[str]) -> None:
    """``host --bind IP --port P --size S --flows F``: count what arrives; learn the
    flows' addresses; on ``send RATE SECONDS TRAIN`` send S-byte datagrams to them."""
    ap = argparse.ArgumentParser(prog="bench_forward.py host")
    ap.add_argument("--bind", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--flows", type=int, required=True)
    ap.add_argument(
        "--gro",
        action="store_true",
        help="UDP_GRO on the socket (a host service "
        "seldom sets it; it would make the router's GSO sends cheaper to receive)",
    )
    a = ap.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
    if a.gro:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    recv = recv_counting_gro if a.gro else recv_counting
    sock.bind((a.bind, a.port))
    sock.setblocking(False)
    buf = bytearray(1 << 16)
    count = 0
    learned: dict[Any, None] = {}
    print("ready", flush=True)
    stdin = sys.stdin
    while True:
        ready, _, _ = select.select([sock, stdin], [], [], 0.05)
        if sock in ready:
            got, addrs = recv(sock, buf)
            count += got
            if len(learned) < a.flows:
                for addr in addrs:
                    learned[addr] = None
        if stdin in ready:
            line = stdin.readline().split()
            if not line or line[0] == "quit":
                return
            if line[0] == "count":
                print(count, own_drops(sock), len(learned), flush=True)
            elif line[0] == "flows":
                print(" ".join(f"{ip}:{port}" for ip, port in learned), flush=True)
            elif line[0] == "send":
                rate, seconds, per = float(line[1]), float(line[2]), int(line[3])
                per = max(1, min(per, MAX_GSO_BYTES // a.size))
                payload = b"\x5a" * (a.size * per)
                trains = [(payload, a.size, addr) for addr in learned]
                sent, took = paced_send(sock, trains, rate, per, seconds) if trains else (0, 0.0)
                print(sent, took, flush=True)


class Host:
    """The host program as a child (in `ns` if given), driven line by line."""

    def __init__(self, bind: str, port: int, size: int, ns: Namespace | None) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "host", "--bind", bind]
        cmd += ["--port", str(port), "--size", str(size), "--flows", str(FLOWS)]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        kw: dict[str, Any] = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.proc: subprocess.Popen[str]
        if ns is not None:
            self.proc = ns.popen(cmd, **kw)
        else:
            self.proc = subprocess.Popen(
                cmd, start_new_session=True, preexec_fn=die_with_parent, **kw
            )
        self.port = port
        self.ask_line(None, 10.0)

    def ask_line(self, cmd: str | None, timeout: float) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if cmd is not None:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"host program: no answer to {cmd!r} in {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("host program exited")
        return line.strip()

    def count(self) -> tuple[int, int, int]:
        c, drops, learned = self.ask_line("count", 10.0).split()
        return int(c), int(drops), int(learned)

    def flows(self) -> set[tuple[str, int]]:
        out = set()
        for item in self.ask_line("flows", 10.0).split():
            ip, port = item.rsplit(":", 1)
            out.add((ip, int(port)))
        return out

    def start_send(self, rate: float, seconds: float, per: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"send {rate} {seconds} {per}\n")
        self.proc.stdin.flush()

    @property
    def stdout(self) -> IO[str]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        stop_process(self.proc, timeout=2.0, group=True)


# --------------------------------------------------------------------------- synthetic peer


class SynthPeer:
    """A WireGuard peer of our own code: handshake, seal in advance, count what comes back."""

    def __init__(self, private: bytes, server_public: bytes, endpoint: tuple[str, int]) -> None:
        self.dev = Device(private, mtu=MTU)
        self.peer = self.dev.add_peer(
            server_public, allowed_ips=["0.0.0.0/0"], endpoint=endpoint, now=time.monotonic()
        )
        self.endpoint = endpoint
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
        self.sock.bind(("127.0.0.1", 0))
        self.buf = bytearray(1 << 16)
        self.plain = bytearray(1 << 16)
        self.verified = 0

    def _flush(self) -> None:
        for data, addr in self.dev.outbox:
            self.sock.sendto(bytes(data), addr)
        self.dev.outbox.clear()

    def handshake(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.peer.current is None:
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError("no handshake response from the router")
            self.dev.initiate(self.peer, now, retry=True)
            self._flush()
            ready, _, _ = select.select([self.sock], [], [], 1.0)
            if ready:
                data, addr = self.sock.recvfrom(2048)
                if data[0] == 2:
                    self.dev.receive_handshake(data, addr, time.monotonic())
            self._flush()
        self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        self.sock.setblocking(False)

    def seal(self, dst: tuple[str, int], size: int, count: int) -> list[bytes]:
        """`count` transport messages carrying UDP from the guest's FLOWS ports to `dst`,
        `size` payload bytes each, in counter order (flows round-robin)."""
        src, daddr = ipv4.addr_to_int(GUEST), ipv4.addr_to_int(dst[0])
        pkts = []
        for i in range(FLOWS):
            b = bytearray(size + 28 + 16)
            n = udp.build_udp_into(b, src, daddr, 40000 + i, dst[1], b"\xa5" * size)
            pkts.append((b, n))
        out = bytearray(size + 28 + 64)
        now = time.monotonic()
        sealed = []
        enc = self.dev.encrypt
        peer = self.peer
        for i in range(count):
            b, n = pkts[i % FLOWS]
            k = enc(peer, b, n, now, out)
            sealed.append(bytes(out[:k]))
        return sealed

    def sealed_trains(
        self, dst: tuple[str, int], size: int, count: int, per: int
    ) -> list[tuple[bytes, int, Any]]:
        """seal() in GSO trains of up to `per` datagrams (one sendmsg each)."""
        seg = len(self.seal(dst, size, 1)[0])
        per = max(1, min(per, MAX_GSO_BYTES // seg))
        return [
            (b"".join(self.seal(dst, size, min(per, count - i))), seg, self.endpoint)
            for i in range(0, count, per)
        ]

    def send_trains(self, trains: list[tuple[bytes, int, Any]], rate: float) -> tuple[int, float]:
        """All trains once, paced at `rate` datagrams/s (counters must stay in order)."""
        per = (len(trains[0][0]) + trains[0][1] - 1) // trains[0][1]
        interval = per / rate
        t0 = time.perf_counter()
        sent = 0
        for i, (data, seg, dest) in enumerate(trains):
            target = t0 + i * interval
            now = time.perf_counter()
            if target > now:
                time.sleep(target - now)
            try:
                self.sock.sendmsg([data], [(SOL_UDP, UDP_SEGMENT, struct.pack("H", seg))], 0, dest)
                sent += (len(data) + seg - 1) // seg
            except OSError:
                pass
        return sent, time.perf_counter() - t0

    def receive(self) -> int:
        """Datagrams waiting now; the first few are decrypted to prove them valid."""
        got = 0
        space = socket.CMSG_SPACE(4)
        for _ in range(512):
            try:
                n, anc, _fl, addr = self.sock.recvmsg_into([self.buf], space)
            except (BlockingIOError, InterruptedError):
                break
            seg = n
            for level, typ, data in anc:
                if level == SOL_UDP and typ == UDP_GRO:
                    seg = struct.unpack("i", data[:4])[0]
            got += (n + seg - 1) // seg
            if self.verified < 16 and self.buf[0] == 4:
                r = self.dev.decrypt(memoryview(self.buf)[:seg], addr, time.monotonic(), self.plain)
                if r is None:
                    raise RuntimeError(f"the router sent a datagram that does not decrypt: {r}")
                self.verified += 1
        return got

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- routers


@dataclass
class Target:
    """A router under test, ready for a cell."""

    name: str
    endpoint: tuple[str, int]
    server_public: bytes
    dst: tuple[str, int]  # where the guest's packets go (the host program)
    host_bind: str
    host_ns: Namespace | None
    pids: dict[int, str]
    stop: Any = None  # () -> counters dict, for wgslirp
    internal: dict[str, int] = field(default_factory=dict)


# wgslirp's counters of packets it had already decrypted or read when it dropped them
INSIDE_DROPS = ("ring_full_dropped", "egress_full", "udp_send_errors", "too_big_dropped")
# and what would mean a fault, printed when not zero
FAULTS = (
    "transport_replayed",
    "transport_auth_failed",
    "invalid_datagrams",
    "unknown_index",
    "internal_errors",
    "malformed",
)


@contextlib.contextmanager
def wgslirp_target(
    workers: int, peer_private: bytes, host_port: int, code_dir: str | None
) -> Iterator[Target]:
    with one_peer_router(
        peer_private, GUEST, workers=workers, mtu=MTU, code_dir=code_dir, prefix="bench-forward-"
    ) as (r, port, server_public):
        deadline = time.monotonic() + 20.0
        while True:  # every worker up (ingress + N; inline: the one process)
            tree = process_tree(r.pid)
            up = sum(n == "wgslirp-ingress" or n[:9] == "wgslirp-w" for n in tree.values())
            if workers == 0 or up >= workers + 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        pids = {}
        for pid, name in tree.items():
            if workers == 0 and pid == r.pid:
                pids[pid] = "main"
            elif name.startswith("wgslirp-"):
                pids[pid] = name.removeprefix("wgslirp-")

        def stop() -> dict[str, int]:
            r.terminate(timeout=10)
            return summed_exit_counters(r.output())

        yield Target(
            f"wgslirp-{workers}",
            ("127.0.0.1", port),
            server_public,
            (GATEWAY, host_port),
            "127.0.0.1",
            None,
            pids,
            stop,
        )


@contextlib.contextmanager
def reference_target(peer_private: bytes, host_port: int) -> Iterator[Target]:
    """The kernel data path (wgslirp_testkit/reference.py), its far host as the host."""
    with reference_router(public_key(peer_private), (f"{GUEST}/32",), mtu=MTU) as ref:
        far = ref.far
        yield Target(
            "wireguard-go",
            ("127.0.0.1", ref.port),
            ref.public,
            (far.address, host_port),
            far.address,
            far.ns,
            {ref.wg.pid: "wireguard-go"},
        )


# --------------------------------------------------------------------------- one cell


@dataclass
class Cell:
    us_per_pkt: float
    delivered: int
    offered_rate: float
    busiest: float  # CPU seconds per delivered packet of the busiest process
    per_proc: dict[str, float]


@dataclass
class Overload:
    offered: int
    delivered: int
    sock_drops: int
    out_drops: int
    inside: int = 0  # dropped inside the router after it paid for them (wgslirp counters)

    @property
    def loss(self) -> float:
        return 100.0 * (1 - self.delivered / self.offered) if self.offered else 0.0

    @property
    def sock_pct(self) -> float:
        return 100.0 * self.sock_drops / self.offered if self.offered else 0.0

    @property
    def inside_pct(self) -> float:
        return 100.0 * self.inside / self.offered if self.offered else 0.0


def run_up(
    t: Target, peer: SynthPeer, host: Host, size: int, rate: float, seconds: float, per: int
) -> tuple[int, int, float, dict[str, float], int]:
    """Offer `rate` for `seconds` upstream: (sent, delivered, window, CPU by process,
    sink drops)."""
    trains = peer.sealed_trains(t.dst, size, max(per, int(rate * seconds)), per)
    c0, d0, _ = host.count()
    cpu0, w0 = cpu_of(t.pids), time.perf_counter()
    sent, _took = peer.send_trains(trains, rate)
    deadline = time.monotonic() + 2.0
    c1, d1 = c0, d0
    while time.monotonic() < deadline:  # drained: the sink's count stopped moving
        time.sleep(0.1)
        last = c1
        c1, d1, _ = host.count()
        if c1 == last:
            break
    cpu1, w1 = cpu_of(t.pids), time.perf_counter()
    return sent, c1 - c0, w1 - w0, {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}, d1 - d0


def run_down(
    t: Target, peer: SynthPeer, host: Host, rate: float, seconds: float, per: int
) -> tuple[int, int, float, dict[str, float], int]:
    """The host sends `rate` for `seconds` to the flows: (sent, delivered, window, CPU by
    process, peer socket drops)."""
    peer.receive()
    d0 = own_drops(peer.sock)
    cpu0, w0 = cpu_of(t.pids), time.perf_counter()
    host.start_send(rate, seconds, per)
    got = 0
    sent = -1
    quiet_since = None
    deadline = time.monotonic() + seconds + 10.0
    watched: list[Any] = [peer.sock, host.stdout]  # a socket and a pipe, both selectable
    while time.monotonic() < deadline:
        ready, _, _ = select.select(watched, [], [], 0.05)
        if peer.sock in ready:
            got += peer.receive()
            quiet_since = None
        if host.stdout in ready:
            sent = int(host.stdout.readline().split()[0])
        if sent >= 0 and not ready:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 0.1:
                break
    cpu1, w1 = cpu_of(t.pids), time.perf_counter()
    return (
        sent,
        got,
        w1 - w0,
        {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1},
        own_drops(peer.sock) - d0,
    )


def router_socket_drops(t: Target, direction: str, flows: set[tuple[str, int]]) -> int:
    """Receive drops of the router's receiving sockets: its WireGuard socket (up) or its
    sockets toward the host (down; wgslirp only, the reference has none: the kernel NATs)."""
    port = t.endpoint[1]
    if direction == "up":
        return sum(udp_socket_drops(lambda s: s.local[1] == port).values())
    return sum(udp_socket_drops(lambda s: s.local in flows).values())


def measure_cell(
    t: Target,
    peer_private: bytes,
    direction: str,
    size: int,
    rate: float,
    seconds: float,
    overload_seconds: float,
    per: int,
    port: int,
) -> tuple[Cell, Overload | None]:
    host = Host(t.host_bind, port, size, t.host_ns)
    peer = SynthPeer(peer_private, t.server_public, t.endpoint)
    try:
        peer.handshake()
        # First packets of each flow: confirm the session, open the flows, let the host
        # learn their addresses; then a short warm-up at the rate.
        warm = peer.seal(t.dst, size, FLOWS * 4)
        for d in warm:
            peer.sock.sendto(d, t.endpoint)
        time.sleep(0.3)
        if host.count()[2] < FLOWS:
            raise RuntimeError(f"{t.name}: the host saw {host.count()[2]} of {FLOWS} flows")
        if direction == "up":
            run_up(t, peer, host, size, rate, min(0.3, seconds), per)
            sent, got, _w, cpu, _drops = run_up(t, peer, host, size, rate, seconds, per)
        else:
            run_down(t, peer, host, rate, min(0.3, seconds), per)
            sent, got, _w, cpu, _drops = run_down(t, peer, host, rate, seconds, per)
        if got <= 0:
            raise RuntimeError(f"{t.name} {direction} {size}: nothing delivered (sent {sent})")
        total = sum(cpu.values())
        cell = Cell(total / got * 1e6, got, sent / seconds, max(cpu.values()) / got, cpu)
        over = None
        if overload_seconds > 0:
            # What the router could carry: its busiest process on one core, or all its
            # processes sharing the machine's cores, whichever is less.
            cap = min(1.0 / cell.busiest, CORES / (total / got))
            flows = host.flows()
            s0 = router_socket_drops(t, direction, flows)
            if direction == "up":
                sent2, got2, _w, _c, od = run_up(
                    t, peer, host, size, 2 * cap, overload_seconds, per
                )
            else:
                sent2, got2, _w, _c, od = run_down(t, peer, host, 2 * cap, overload_seconds, per)
            over = Overload(sent2, got2, router_socket_drops(t, direction, flows) - s0, od)
        if peer.verified == 0 and direction == "down":
            raise RuntimeError("no datagram from the router was checked")
        return cell, over
    finally:
        peer.close()
        host.close()


def describe(
    name: str,
    direction: str,
    size: int,
    cell: Cell,
    over: Overload | None,
    internal: dict[str, int] | None,
) -> str:
    """One cell's line of the running log."""
    procs = " ".join(
        f"{k} {v / cell.delivered * 1e6:.2f}" for k, v in sorted(cell.per_proc.items())
    )
    text = (
        f"{name:<12} {direction:<4} {size:>4} B: {cell.us_per_pkt:6.2f} µs/pkt ({procs}), "
        f"delivered {cell.delivered:,} at {cell.offered_rate:,.0f}/s offered"
    )
    if over is not None:
        text += (
            f"; 2x overload: offered {over.offered:,}, loss {over.loss:.1f} % (sock "
            f"{over.sock_drops:,}, in {over.inside:,}, out {over.out_drops:,}; offered "
            f"{over.offered / max(1, over.delivered):.1f}x what got through)"
        )
    if internal:
        dropped = {
            k: v
            for k, v in internal.items()
            if v and (k in INSIDE_DROPS or any(k.endswith(f) for f in FAULTS))
        }
        if dropped:
            text += f"; router drops {dropped}"
    return text


# --------------------------------------------------------------------------- baseline


def aead_floor(size: int, count: int = 20000) -> tuple[float, float]:
    """µs per bare ChaCha20-Poly1305 decrypt_into / encrypt_into of the sealed inner packet."""
    inner = size + 28
    padded = min((inner + 15) & ~15, MTU) if inner <= MTU else inner
    aead = ChaCha20Poly1305(b"k" * 32)
    nonce = bytes(12)
    plain = memoryview(bytearray(padded))
    sealed = memoryview(bytearray(aead.encrypt(nonce, bytes(plain), None)))
    out_enc = memoryview(bytearray(padded + 16))
    out_dec = memoryview(bytearray(padded))
    t0 = time.perf_counter()
    for _ in range(count):
        aead.decrypt_into(nonce, sealed, None, out_dec)
    t_dec = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(count):
        aead.encrypt_into(nonce, plain, None, out_enc)
    t_enc = time.perf_counter() - t0
    return t_dec / count * 1e6, t_enc / count * 1e6


# --------------------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "host":
        host_main(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="0.5 s windows, 1 repeat")
    ap.add_argument("--seconds", type=float, default=2.0, help="measured window per cell")
    ap.add_argument("--overload-seconds", type=float, default=1.0, help="0 = no 2x overload")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (median shown)")
    ap.add_argument("--rate", type=float, default=20000, help="offered datagrams/s (default 20k)")
    ap.add_argument("--train", type=int, default=32, help="datagrams per GSO sendmsg")
    ap.add_argument(
        "--only",
        default="wgslirp-0,wgslirp-2,wireguard-go",
        help="routers, comma-separated: wgslirp-0, wgslirp-2 (workers), wireguard-go",
    )
    ap.add_argument("--cells", default="up-64,up-1392,down-64,down-1392")
    add_rev_argument(ap)
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.overload_seconds, args.repeats = 0.5, 0.5, 1
    if not start_controller(tunnel=True):
        return 1
    cells = [(c.split("-")[0], int(c.split("-")[1])) for c in args.cells.split(",")]
    routers = args.only.split(",")
    peer_private = generate_private_key()
    results: dict[tuple[str, str, int], list[Cell]] = {}
    overloads: dict[tuple[str, str, int], list[Overload]] = {}
    print(router_code_note() if args.rev is None else "", flush=True)
    print(
        f"offered {args.rate:,.0f} datagrams/s in GSO trains of up to {args.train}, "
        f"{FLOWS} flows, {args.seconds:g} s windows, {args.repeats} repeat(s)",
        flush=True,
    )
    with rev_exported(args.rev) as code_dir:
        for rep in range(args.repeats):
            for name in routers:
                for direction, size in cells:
                    port = free_udp_port()
                    if name == "wireguard-go":
                        cm = reference_target(peer_private, port)
                    else:
                        cm = wgslirp_target(int(name.split("-")[1]), peer_private, port, code_dir)
                    with cm as t:
                        cell, over = measure_cell(
                            t,
                            peer_private,
                            direction,
                            size,
                            args.rate,
                            args.seconds,
                            args.overload_seconds,
                            args.train,
                            port,
                        )
                        internal = t.stop() if t.stop is not None else None
                    if over is not None and internal is not None:
                        over.inside = sum(internal.get(k, 0) for k in INSIDE_DROPS)
                        # With UDP_GRO a train the socket could not take counts as one drop
                        # in /proc/net/udp: what was lost neither inside nor at the far end
                        # was lost on the socket.
                        over.sock_drops = max(
                            over.sock_drops,
                            over.offered - over.delivered - over.inside - over.out_drops,
                        )
                    key = (name, direction, size)
                    results.setdefault(key, []).append(cell)
                    if over is not None:
                        overloads.setdefault(key, []).append(over)
                    print(f"  [{rep + 1}] {describe(name, direction, size, cell, over, internal)}")
    floors = {size: aead_floor(size) for _, size in cells}
    heads = ["router µs/pkt", *(f"{d} {s} B" for d, s in cells)]
    rows = []
    med: dict[tuple[str, str, int], float] = {}
    for name in routers:
        row = [name]
        for d, s in cells:
            xs = [c.us_per_pkt for c in results.get((name, d, s), [])]
            if xs:
                med[(name, d, s)] = statistics.median(xs)
                spread = f" ({min(xs):.2f}-{max(xs):.2f})" if len(xs) > 1 else ""
                row.append(f"{med[(name, d, s)]:.2f}{spread}")
            else:
                row.append("-")
        rows.append(row)
    rows.append(
        ["ChaCha20-Poly1305 call", *(f"{floors[s][0 if d == 'up' else 1]:.2f}" for d, s in cells)]
    )
    print()
    print(table(heads, rows))
    if "wireguard-go" in routers:
        print()
        rrows = []
        for name in routers:
            if name == "wireguard-go":
                continue
            rrows.append(
                [
                    f"{name} / wireguard-go",
                    *(
                        f"{med[(name, d, s)] / med[('wireguard-go', d, s)]:.2f}"
                        if (name, d, s) in med and ("wireguard-go", d, s) in med
                        else "-"
                        for d, s in cells
                    ),
                ]
            )
        print(table(["ratio", *heads[1:]], rrows))
    print()
    frows = [
        [
            f"{name} / AEAD call",
            *(
                f"{med[(name, d, s)] / floors[s][0 if d == 'up' else 1]:.1f}"
                if (name, d, s) in med
                else "-"
                for d, s in cells
            ),
        ]
        for name in routers
    ]
    print(table(["ratio", *heads[1:]], frows))
    if overloads:
        print()
        orows = []
        for name in routers:
            row = [name]
            for d, s in cells:
                os_ = overloads.get((name, d, s), [])
                if not os_:
                    row.append("-")
                    continue
                o = os_[len(os_) // 2]
                row.append(f"{o.loss:.0f} % (sock {o.sock_pct:.0f}, in {o.inside_pct:.0f})")
            orows.append(row)
        print(table(["loss % at 2x overload", *heads[1:]], orows))
        print(
            "(sock: % of offered dropped on the router's receiving socket, before it paid "
            "for them; in: % dropped inside wgslirp after decrypting or reading them)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
