#!/usr/bin/env python3
"""Round-trip latency through the real client: wgslirp against the kernel, in one run.

A guest program (this file's ``guest`` subcommand) runs inside the namespace of a stock
WireGuard client (Debian's wireguard-go + wg, wgslirp_testkit/wgclient.py) and times single
round trips with ``time.perf_counter``, from just before the request's syscall to the
return of the call that sees the answer, so neither ``ping``'s print granularity nor
process start-up is in a figure. The cases, each one fresh flow per sample (a new source
port or ICMP sequence), taken round-robin with ``--gap`` seconds between samples:

- ``tcp open``: ``connect()`` to a listening TCP port of the router's host, until it
  returns (SYN out, SYN-ACK back; a listener of this file's ``listen`` accepts and closes).
- ``tcp host``: ``connect()`` to a closed TCP port of the router's host, until it fails
  with ECONNREFUSED (SYN out, RST back).
- ``tcp far``: the same to a closed port of the far host.
- ``udp host``: a connected UDP socket sends one datagram to a closed host port; ``recv``
  returns ECONNREFUSED once the ICMP port unreachable is back.
- ``ping 1420``: ICMP echo whose IP packet is 1420 bytes (``ping -s 1392``, the tunnel MTU)
  to the router's address; ``ping 1448``: ``-s 1420``, so the guest's kernel sends two
  fragments the router reassembles (and fragments the answer).
- ``ping far``: a 64-byte echo (``-s 56``) to the far host; ``ping far 1500``: ``-s 1472``
  to it, reassembled by the router (too big for a ring slot of a 1420 MTU: wgslirp hands
  it to a worker on the big-packet ring) and fragmented again on the way back.

Routers, each fresh, one after the other:

- ``wgslirp-0`` / ``wgslirp-2``: wgslirp with ``PROCESSOR_WORKERS=0`` and ``=2``. The host
  is this machine, reached through the gateway address 10.77.0.1 (closed ports on
  127.0.0.1); the far host is a namespace on a veth (wgslirp_testkit/farhost.py) the
  router's host sockets reach by ordinary routing.
- ``reference``: stock wireguard-go whose TUN sits in namespace R, which forwards through
  nftables masquerade to a far host namespace (wgslirp_testkit/reference.py): the host is R
  itself (its tunnel address 10.77.0.1), so its kernel answers the closed ports and pings.
  R and the far host have ICMP error rate limiting off (wgslirp's host sockets are refused
  over loopback, which Linux never limits).

Printed per router and case: median and p90 in ms, lost samples (no answer within
``--timeout``) and the medians' ratio to the reference. Nothing here asserts a speed; a busy
machine shows as a wide p90.

    python scripts/bench_latency.py                  # 50 samples per case, ~1 minute
    python scripts/bench_latency.py --samples 200 --only wgslirp-2
    python scripts/bench_latency.py --rev HEAD       # router from a commit
    python scripts/bench_latency.py --compare HEAD~3 --repeat 3   # before/after, one run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# =========================================================================== guest side
# Runs inside the guest namespace; stdlib only (plus the pinger's ICMP framing).

from wgslirp_testkit import pinger  # noqa: E402

IP_MTU_DISCOVER = 10  # linux/in.h
IP_PMTUDISC_DONT = 0


def _tcp_connect(host: str, port: int, timeout: float, *, refused: bool) -> float | None:
    """Seconds until connect() ends the way the case expects (`refused`: a closed port's
    ECONNREFUSED; otherwise established); None for any other outcome."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        t0 = time.perf_counter()
        try:
            s.connect((host, port))
        except ConnectionRefusedError:
            return time.perf_counter() - t0 if refused else None
        except OSError:
            return None
        return None if refused else time.perf_counter() - t0
    finally:
        s.close()


def listen_main(host: str, port: int, seconds: float) -> None:
    """The listener of ``tcp open``: accept and close until time is up. Says "ready PORT"
    (port 0: the kernel's choice, so no other program can race us to it)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((host, port))
    srv.listen(512)
    srv.settimeout(0.5)
    sys.stdout.write(f"ready {srv.getsockname()[1]}\n")
    sys.stdout.flush()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        conn.close()


def _udp_refused(host: str, port: int, timeout: float) -> float | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        t0 = time.perf_counter()
        s.send(b"anyone there?")
        try:
            s.recv(64)
        except ConnectionRefusedError:
            return time.perf_counter() - t0
        except OSError:
            return None
        return None
    finally:
        s.close()


class _Pinger:
    """One raw ICMP socket for every echo case; the kernel reassembles fragmented replies."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        # let the kernel fragment a request larger than the tunnel MTU (DF clear)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        self.sock.setblocking(False)
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0
        self.buf = bytearray(65536)

    def echo(self, host: str, size: int, timeout: float) -> float | None:
        self.seq = (self.seq + 1) & 0xFFFF
        packet = pinger.echo_request(self.ident, self.seq, bytes(size))
        while True:  # drop late replies of earlier samples
            try:
                self.sock.recv_into(self.buf)
            except BlockingIOError:
                break
        t0 = time.perf_counter()
        self.sock.sendto(packet, (host, 0))
        deadline = t0 + timeout
        poll = select.poll()
        poll.register(self.sock, select.POLLIN)
        while True:
            left = deadline - time.perf_counter()
            if left <= 0 or not poll.poll(left * 1000.0):
                return None
            try:
                n = self.sock.recv_into(self.buf)
            except BlockingIOError:
                continue
            t1 = time.perf_counter()
            if pinger.parse_reply(bytes(self.buf[:n]), self.ident) == self.seq:
                return t1 - t0


def guest_main(spec: dict[str, Any]) -> None:
    """Take ``samples`` round trips of every case, round-robin; print one JSON line of the
    seconds of each (None = no answer in time). Bounded by ``budget`` seconds."""
    cases: list[dict[str, Any]] = spec["cases"]
    timeout = float(spec["timeout"])
    gap = float(spec["gap"])
    end = time.monotonic() + float(spec["budget"])
    pings = _Pinger()
    out: dict[str, list[float | None]] = {c["name"]: [] for c in cases}
    for _ in range(int(spec["samples"])):
        if time.monotonic() > end:
            break
        for c in cases:
            kind = c["kind"]
            if kind == "tcp":
                rtt = _tcp_connect(c["host"], c["port"], timeout, refused=True)
            elif kind == "tcp-open":
                rtt = _tcp_connect(c["host"], c["port"], timeout, refused=False)
            elif kind == "udp":
                rtt = _udp_refused(c["host"], c["port"], timeout)
            else:
                rtt = pings.echo(c["host"], c["size"], timeout)
            out[c["name"]].append(rtt)
            time.sleep(gap)
    sys.stdout.write(json.dumps(out) + "\n")


if len(sys.argv) > 2 and sys.argv[1] == "guest":
    guest_main(json.loads(sys.argv[2]))
    sys.exit(0)
if len(sys.argv) > 4 and sys.argv[1] == "listen":
    listen_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    sys.exit(0)

# =========================================================================== controller

from wgslirp.keys import generate_private_key, public_key  # noqa: E402
from wgslirp_testkit.bench import (  # noqa: E402
    add_rev_argument,
    rev_exported,
    router_code_note,
    start_controller,
    table,
)
from wgslirp_testkit.farhost import FarHost, far_host  # noqa: E402
from wgslirp_testkit.netns import Namespace  # noqa: E402
from wgslirp_testkit.ports import (  # noqa: E402
    closed_tcp_port,
    closed_udp_port,
)
from wgslirp_testkit.proc import LineReader, spawn, stop_process  # noqa: E402
from wgslirp_testkit.reference import reference_router  # noqa: E402
from wgslirp_testkit.router import (  # noqa: E402
    GATEWAY,
    one_peer_router,
    summed_exit_counters,
)
from wgslirp_testkit.wgclient import WgClient, wait_tunnel  # noqa: E402

GUEST = "10.77.0.2"
MTU = 1420
ROUTERS = ("wgslirp-0", "wgslirp-2", "reference")
# wgslirp's counters that mean a fault, printed when not zero
FAULTS = ("internal_errors", "malformed", "ring_full_dropped", "egress_full", "transport_replayed")
# A closed port in the reference's namespaces: nothing listens there at all.
REF_CLOSED = 9


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # tcp | udp | ping
    where: str  # host | far
    port: int = 0
    size: int = 0  # ICMP payload


def cases(tcp_port: int, udp_port: int, open_port: int) -> list[Case]:
    return [
        Case("tcp open", "tcp-open", "host", open_port),
        Case("tcp host", "tcp", "host", tcp_port),
        Case("tcp far", "tcp", "far", REF_CLOSED),
        Case("udp host", "udp", "host", udp_port),
        Case("ping 1420", "ping", "host", size=MTU - 28),
        Case("ping 1448", "ping", "host", size=MTU),
        Case("ping far", "ping", "far", size=56),
        Case("ping far 1500", "ping", "far", size=1472),
    ]


@dataclass(frozen=True)
class Setup:
    """A router with its guest connected: where the guest finds the host and the far host."""

    guest: WgClient
    host: str
    far: str
    pid: int
    stop: Any = None  # () -> exit counters (wgslirp)


def guest_client(guest_private: bytes, server: bytes, port: int, far: FarHost) -> WgClient:
    return WgClient(
        guest_private,
        server,
        port,
        address=f"{GUEST}/32",
        allowed_ips=("10.77.0.0/24", f"{far.address}/32"),
        mtu=MTU,
        log_level="error",
    )


@contextlib.contextmanager
def wgslirp_setup(workers: int, guest_private: bytes, code_dir: str | None) -> Iterator[Setup]:
    with (
        far_host(204) as far,
        one_peer_router(
            guest_private, GUEST, workers=workers, mtu=MTU, code_dir=code_dir,
            prefix="bench-latency-",
        ) as (r, port, server_public),
        guest_client(guest_private, server_public, port, far) as g,
    ):  # fmt: skip
        wait_tunnel(g, GATEWAY, interval=0.1)

        def stop() -> dict[str, int]:
            r.terminate(timeout=10)
            return summed_exit_counters(r.output())

        yield Setup(g, GATEWAY, far.address, r.pid, stop)


@contextlib.contextmanager
def reference_setup(guest_private: bytes, open_port: int, seconds: float) -> Iterator[Setup]:
    with (
        reference_router(
            public_key(guest_private), (f"{GUEST}/32",), mtu=MTU, unlimited_icmp=True
        ) as ref,
        guest_client(guest_private, ref.public, ref.port, ref.far) as g,
        listener("0.0.0.0", open_port, seconds, ref.wg.namespace),
    ):
        wait_tunnel(g, ref.far.address, interval=0.1)
        yield Setup(g, "10.77.0.1", ref.far.address, ref.wg.pid)


@contextlib.contextmanager
def listener(host: str, port: int, seconds: float, ns: Namespace | None = None) -> Iterator[int]:
    """This file's ``listen`` on host:port in `ns` (None: here), ready; its port."""
    argv = [sys.executable, __file__, "listen", host, str(port), str(seconds)]
    proc = spawn(argv, ns, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = LineReader(proc.stdout.fileno()).readline(10.0) or ""
        if not line.startswith("ready "):
            raise RuntimeError(f"the listener on {host}:{port} did not start")
        yield int(line.split()[1])
    finally:
        stop_process(proc, timeout=3.0)


def sample(setup: Setup, cs: Sequence[Case], args: argparse.Namespace) -> dict[str, list[float]]:
    spec = {
        "cases": [
            {
                "name": c.name,
                "kind": c.kind,
                "host": setup.host if c.where == "host" else setup.far,
                "port": c.port,
                "size": c.size,
            }
            for c in cs
        ],
        "samples": args.samples,
        "timeout": args.timeout,
        "gap": args.gap,
        "budget": args.budget,
    }
    # a few round trips first, so no case pays for a first handshake or ARP
    warm = dict(spec, samples=3, gap=0.01)
    setup.guest.run([sys.executable, __file__, "guest", json.dumps(warm)], timeout=60)
    res = setup.guest.run(
        [sys.executable, __file__, "guest", json.dumps(spec)], timeout=args.budget + 60
    )
    raw: dict[str, list[float | None]] = json.loads(res.stdout.strip().splitlines()[-1])
    return {
        k: [x for x in v if x is not None] + [float("nan")] * v.count(None) for k, v in raw.items()
    }


def quantile(xs: list[float], q: float) -> float:
    ok = sorted(x for x in xs if x == x)
    if not ok:
        return float("nan")
    return ok[min(len(ok) - 1, int(q * len(ok)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--samples", type=int, default=50, help="round trips per case (default 50)")
    p.add_argument("--gap", type=float, default=0.02, help="seconds between samples (0.02)")
    p.add_argument("--timeout", type=float, default=1.0, help="a sample's answer wait, s (1)")
    p.add_argument("--budget", type=float, default=120.0, help="seconds per router at most")
    p.add_argument("--only", action="append", choices=ROUTERS, help="these routers only")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds over every router, each a fresh start, every other one in reverse "
        "order (an even count balances it); samples are pooled (drift and "
        "a neighbour's load spread over all routers alike)",
    )
    p.add_argument(
        "--compare",
        metavar="REV",
        default=None,
        help="also run wgslirp from this git revision (rows NAME@REV), in the same rounds",
    )
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    add_rev_argument(p)
    args = p.parse_args()
    if not start_controller(extra_binaries=("nft",)):
        return 2
    wanted = args.only or list(ROUTERS)
    guest_private = generate_private_key()
    results: dict[str, dict[str, list[float]]] = {}
    notes: list[str] = []
    lifetime = (2 * len(wanted) * args.repeat) * (args.budget + 120)
    with (
        rev_exported(args.rev) as code_dir,
        rev_exported(args.compare) as other_dir,
        closed_tcp_port() as tport,
        closed_udp_port() as uport,
        # one listener on the host for the whole run; the reference's namespace is fresh,
        # so the same port is free there
        listener("127.0.0.1", 0, lifetime) as oport,
    ):
        cs = cases(tport, uport, oport)
        if args.cases:
            cs = [c for c in cs if c.name in args.cases.split(",")]
        if code_dir is None:
            print(router_code_note(), flush=True)
        routers: list[tuple[str, str | None]] = []  # (row name, code directory)
        for name in wanted:
            if name != "reference" and other_dir is not None:
                routers.append((f"{name}@{args.compare}", other_dir))
            routers.append((name, code_dir))
        for i in range(args.repeat):
            # Every other round in reverse: whichever router runs second in a round has
            # come out 0.05-0.1 ms faster with workers (two runs of the same pair, each
            # order once), so an even --repeat gives each side both places.
            for name, code in routers if i % 2 == 0 else routers[::-1]:
                t0 = time.monotonic()
                if name == "reference":
                    cm = reference_setup(guest_private, oport, lifetime)
                else:
                    workers = int(name.split("@")[0].split("-")[1])
                    cm = wgslirp_setup(workers, guest_private, code)
                with cm as setup:
                    for case, xs in sample(setup, cs, args).items():
                        results.setdefault(name, {}).setdefault(case, []).extend(xs)
                    if setup.stop is not None:
                        counters = setup.stop()
                        bad = {k: counters[k] for k in FAULTS if counters.get(k)}
                        if bad:
                            notes.append(f"{name}: {bad}")
                print(f"{name}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    ref = results.get("reference")
    rows = []
    for c in cs:
        for name, _code in routers:
            xs = results[name][c.name]
            med = quantile(xs, 0.5) * 1000
            p90 = quantile(xs, 0.9) * 1000
            lost = sum(1 for x in xs if x != x)
            ratio = ""
            if ref is not None and name != "reference":
                ratio = f"{med / (quantile(ref[c.name], 0.5) * 1000):.2f}"
            rows.append([c.name, name, f"{med:.3f}", f"{p90:.3f}", str(lost), ratio])
    print(table(["case", "router", "median ms", "p90 ms", "lost", "x ref"], rows))
    print(
        f"{args.samples * args.repeat} samples per case and router ({args.repeat} round(s)), "
        f"{args.gap * 1000:.0f} ms apart; cores: {len(os.sched_getaffinity(0))}; "
        f"load at the end: {os.getloadavg()[0]:.2f}"
    )
    for n in notes:
        print("counters:", n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
