#!/usr/bin/env python3
"""UDP packets/s and Mbit/s through the real tunnel, next to plain loopback in the same run.

Path measured: a sender in a network namespace -> its kernel -> TUN -> wireguard-go (root
namespace) -> UDP 127.0.0.1 -> wgslirp (``PROCESSOR_WORKERS=0,1,2``) -> a host socket ->
a sink or echo on 127.0.0.1, addressed through the gateway address 10.77.0.1.
The baseline is the same sender program, from the root namespace, straight to the same sink
on 127.0.0.1 (no tunnel).  Needs root, /dev/net/tun, wireguard-go, wg and ip.

Two tests per payload size (64 bytes, and 1352 bytes so the inner IPv4 packet is exactly
WG_MTU=1380 bytes):

- **upload**: the guest sends as fast as it can (or at ``--rate`` datagrams/s) over
  ``--flows`` sockets (round-robin) for the warm-up plus ``--seconds``.  ``recv/s`` is what
  the sink received during the measured window (what got through); ``sent/s`` what the
  guest's ``send()`` accepted; ``loss%`` compares the totals once the pipeline has drained,
  and ``lost where`` splits the loss:
  ``guest`` never left wireguard-go (TUN queue or wireguard-go's own queues: sent minus the
  packets wireguard-go put on the wire, from ``wg show dump``), ``wgsock`` was dropped on the
  router's WireGuard socket (receive buffer full: ingress too slow), ``router`` got into the
  router but not out (ring full, send errors), ``sink`` was dropped on the sink's socket.
- **echo**: windowed request/response (``--window`` in flight), every reply checked
  byte-for-byte; ``replies/s`` counts verified replies.  A request unanswered for 0.2 s
  counts as lost and is replaced.

CPU columns are percent of one core during the measured window: the router's whole process
tree (broken down by process name: ``main`` is the supervisor, or everything with
``PROCESSOR_WORKERS=0``), wireguard-go, the guest program and the host server; ``busy%`` is
the whole machine (the sum over every process; 200 = both cores of a 2-core box) and
``other%`` what of it no listed process was charged for (kernel threads such as
ksoftirqd, this controller, someone else's load).  Before each test the script waits
(bounded) for the machine to be idle, and marks the row with ``*`` if it never was.
Mbit/s counts UDP payload bytes.  Nothing here asserts a speed.

    python scripts/bench_udp.py                    # everything, ~2 minutes
    python scripts/bench_udp.py --quick            # 1 s windows
    python scripts/bench_udp.py --workers 2 --sizes 1352 --seconds 5
    python scripts/bench_udp.py --rev HEAD         # router from a commit, not the work tree
    python scripts/bench_udp.py --profile /tmp/p   # py-spy each router process, top lines

The same file is also the guest program (``bench_udp.py guest-send|guest-echo ...``), so the
tunnel and the baseline run the very same sender.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wgslirp_testkit.bench import (
    add_quiet_options,
    add_rev_argument,
    pct,
    rev_exported,
    si,
    start_controller,
    table,
)
from wgslirp_testkit.hostservers import ForkedUdpServer
from wgslirp_testkit.ports import free_udp_port
from wgslirp_testkit.proc import HarnessError, LineReader, spawn, stop_and_close, stop_process
from wgslirp_testkit.pyspy import PySpy, print_profile
from wgslirp_testkit.router import (
    GATEWAY,
    REPO,
    RouterProcess,
    base_env,
    parse_exit_counters,
    pinged_client,
    router_cmd,
    router_cwd,
)
from wgslirp_testkit.sampling import (
    CpuMeter,
    drops_between,
    process_tree,
    split_cpu,
    udp_sockets,
    wait_quiet,
)

SO_SNDTIMEO_SECONDS = 1  # a send() blocked longer than this fails (keeps loops bounded)
MAX_PACKETS = 50_000_000  # hard cap on what one guest run sends
ECHO_TIMEOUT = 0.2  # s without any reply: the outstanding requests count as lost
IP_UDP_HEADERS = 28
WG_OVERHEAD = 32  # transport header 16 + Poly1305 tag 16


# =========================================================================== guest side
# Runs inside the namespace (or, for the baseline, in the root namespace).  Stdlib only.
# Protocol on stdout: "mark" when the measured window starts, "mark" when it ends, then
# one JSON line.


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _connected_sockets(host: str, port: int, flows: int, blocking: bool) -> list[socket.socket]:
    socks = []
    for _ in range(flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", SO_SNDTIMEO_SECONDS, 0)
        )
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.connect((host, port))
        s.setblocking(blocking)
        socks.append(s)
    return socks


def guest_send(
    host: str, port: int, size: int, flows: int, warmup: float, seconds: float, rate: float = 0.0
) -> dict[str, Any]:
    """Send ``size``-byte datagrams round-robin over ``flows`` connected sockets, as fast as
    possible (``rate`` 0) or paced to ``rate`` datagrams/s in bursts of about 1 ms."""
    socks = _connected_sockets(host, port, flows, blocking=True)
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    burst = 256 if rate <= 0 else max(1, min(256, int(rate / 1000)))
    batch = [socks[i % flows].send for i in range(burst)]
    sent = errors = 0
    base = window = 0
    marked = False
    t0 = time.monotonic()
    t_mark, t_end, t_abort = t0 + warmup, t0 + warmup + seconds, t0 + warmup + seconds + 5
    tm0 = tm1 = t0
    while sent < MAX_PACKETS:
        for send in batch:
            try:
                send(payload)
            except OSError:
                errors += 1
                break
            sent += 1
        now = time.monotonic()
        if not marked and now >= t_mark:
            _emit("mark")
            marked, base, tm0 = True, sent, now
        elif marked and now >= t_end:
            tm1 = time.monotonic()
            _emit("mark")
            window = sent - base
            break
        elif now >= t_abort:
            break
        if rate > 0:
            ahead = sent / rate - (now - t0)
            if ahead > 0:
                time.sleep(min(ahead, 0.01))
    for s in socks:
        s.close()
    return {"sent": sent, "window_sent": window, "window_s": tm1 - tm0, "errors": errors}


def guest_echo(
    host: str, port: int, size: int, flows: int, window: int, warmup: float, seconds: float
) -> dict[str, Any]:
    """Keep ``window`` requests in flight; verify every reply byte-for-byte."""
    socks = _connected_sockets(host, port, flows, blocking=False)
    tail = (bytes(range(256)) * (size // 256 + 1))[8:size]
    head = struct.Struct(">Q")
    outstanding: dict[int, float] = {}
    buf = bytearray(65535)
    mv = memoryview(buf)
    seq = verified = lost = corrupt = late = errors = 0
    w_verified = w_lost = 0
    rtts: list[float] = []
    marked = False
    t0 = time.monotonic()
    t_mark, t_end = t0 + warmup, t0 + warmup + seconds
    tm0 = tm1 = t0
    for _ in range(100_000_000):
        now = time.monotonic()
        if not marked and now >= t_mark:
            _emit("mark")
            marked, tm0 = True, now
            w_verified, w_lost = verified, lost
        elif marked and now >= t_end:
            tm1 = now
            _emit("mark")
            w_verified, w_lost = verified - w_verified, lost - w_lost
            break
        while len(outstanding) < window:
            try:
                socks[seq % flows].send(head.pack(seq) + tail)
            except OSError:
                errors += 1
                break
            outstanding[seq] = now
            seq += 1
        r, _, _ = select.select(socks, [], [], ECHO_TIMEOUT)
        if not r:
            lost += len(outstanding)
            outstanding.clear()
            continue
        now = time.monotonic()
        for s in r:
            for _ in range(64):
                try:
                    n = s.recv_into(buf)
                except BlockingIOError:
                    break
                except OSError:
                    errors += 1
                    break
                if n < 8:
                    corrupt += 1
                    continue
                sent_at = outstanding.pop(head.unpack_from(buf)[0], None)
                if sent_at is None:
                    late += 1  # already declared lost, or never sent
                elif n != size or mv[8:n] != tail:
                    corrupt += 1
                else:
                    verified += 1
                    if marked and len(rtts) < 200_000:
                        rtts.append(now - sent_at)
    rtts.sort()
    return {
        "sent": seq,
        "verified": verified,
        "window_verified": w_verified,
        "window_lost": w_lost,
        "window_s": tm1 - tm0,
        "lost": lost,
        "corrupt": corrupt,
        "late": late,
        "errors": errors,
        "rtt_p50_ms": 1000 * rtts[len(rtts) // 2] if rtts else None,
        "rtt_p99_ms": 1000 * rtts[len(rtts) * 99 // 100] if rtts else None,
    }


def guest_main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller stops us (by PID)
    cmd, a = argv[0], argv[1:]
    if cmd == "guest-send":
        out = guest_send(
            a[0],
            int(a[1]),
            int(a[2]),
            int(a[3]),
            float(a[4]),
            float(a[5]),
            float(a[6]) if len(a) > 6 else 0.0,
        )
    elif cmd == "guest-echo":
        out = guest_echo(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]), float(a[5]), float(a[6]))
    else:
        raise SystemExit(f"unknown guest command {cmd}")
    _emit(json.dumps(out))


# =========================================================================== controller


@dataclass
class Result:
    mode: str  # "loopback" or "workers=N"
    test: str  # "upload" or "echo"
    size: int
    rate: float = 0.0  # sink packets/s (upload) or verified replies/s (echo)
    sent_rate: float = 0.0
    loss_pct: float = 0.0
    where: dict[str, int] = field(default_factory=dict)  # upload: packets lost, by place
    cpu: dict[str, float] = field(default_factory=dict)
    router_cpu: dict[str, float] = field(default_factory=dict)
    guest: dict[str, Any] = field(default_factory=dict)
    background: float = 0.0  # machine busy % just before the test (others' load)
    profile: dict[str, dict[str, Any]] = field(default_factory=dict)
    others: list[tuple[str, float]] = field(default_factory=list)  # busiest unlisted processes
    error: str | None = None

    @property
    def mbit(self) -> float:
        return self.rate * self.size * 8 / 1e6


@dataclass
class Tunnel:
    """What a measurement needs to know about the tunnel (no Tunnel = the loopback baseline)."""

    client: Any  # WgClient
    router_pid: int
    router_port: int
    wg_port: int
    mtu: int


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.script = str(Path(__file__).resolve())
        self.sink: ForkedUdpServer = args.sink
        self.echo: ForkedUdpServer = args.echo
        self.results: list[Result] = []

    # -------------------------------------------------------------- one measurement

    def _spawn(self, argv: list[str], tunnel: Tunnel | None) -> subprocess.Popen[bytes]:
        return spawn(
            argv,
            tunnel.client if tunnel is not None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def _meter(self, tunnel: Tunnel | None, guest_pid: int, server_pid: int) -> CpuMeter:
        m = CpuMeter()
        if tunnel is not None:
            m.add_router(process_tree(tunnel.router_pid), tunnel.router_pid)
            m.add("wg-go", [tunnel.client.pid])
        m.add("guest", [guest_pid])
        m.add("server", [server_pid])
        return m

    def _wg_tx_bytes(self, tunnel: Tunnel | None) -> int:
        if tunnel is None:
            return 0
        return int(tunnel.client.wg_show_dump().peer.tx_bytes)

    def measure(self, mode: str, test: str, size: int, tunnel: Tunnel | None) -> Result:
        a = self.args
        res = Result(mode, test, size)
        server = self.sink if test == "upload" else self.echo
        host = "127.0.0.1" if tunnel is None else a.gateway
        if test == "upload":
            argv = [
                sys.executable,
                self.script,
                "guest-send",
                host,
                str(server.port),
                str(size),
                str(a.flows),
                str(a.warmup),
                str(a.seconds),
                str(a.rate),
            ]
        else:
            argv = [
                sys.executable,
                self.script,
                "guest-echo",
                host,
                str(server.port),
                str(size),
                str(a.flows),
                str(a.window),
                str(a.warmup),
                str(a.seconds),
            ]
        rport = tunnel.router_port if tunnel else -1
        wport = tunnel.wg_port if tunnel else -1
        lo = "127.0.0.1"

        def where(s: Any) -> str | None:
            if s.local == (lo, rport):
                return "wgsock"
            if s.local == (lo, server.port):
                return "server"
            if s.local[1] == wport:
                return "wg-go sock"
            if s.remote == (lo, server.port):
                return "router host sock" if tunnel else "guest sock"
            return None

        def drops() -> dict[str, dict[int, int]]:
            """place -> {inode: drops} of the sockets this test involves"""
            by: dict[str, dict[int, int]] = {}
            for s in udp_sockets():
                w = where(s)
                if w is not None:
                    by.setdefault(w, {})[s.inode] = s.drops
            return by

        server.settle(quiet=0.2, limit=2.0)
        res.background = wait_quiet(a.quiet_threshold, a.quiet_wait)
        pk0 = server.packets
        drops0 = drops()
        tx0 = self._wg_tx_bytes(tunnel) if test == "upload" else 0
        proc = self._spawn(argv, tunnel)
        spy: PySpy | None = None
        try:
            assert proc.stdout is not None
            reader = LineReader(proc.stdout.fileno())
            meter = self._meter(tunnel, proc.pid, server.pid)
            line = reader.readline(a.warmup + 15)
            if line != "mark":
                raise RuntimeError(f"guest did not start its window (got {line!r})")
            snap_a, pk_a = meter.snapshot(), server.packets
            if tunnel is not None and a.profile is not None:
                spy = PySpy(
                    Path(a.profile),
                    f"{mode.replace('=', '')}-{test}-{size}",
                    meter.router_targets(),
                    a.seconds,
                    source_root=a.code_dir or REPO,
                )
            line = reader.readline(a.seconds + 15)
            snap_b, pk_b = meter.snapshot(), server.packets
            if line != "mark":
                raise RuntimeError(f"guest did not end its window (got {line!r})")
            line = reader.readline(15)
            if not line:
                raise RuntimeError("guest printed no result")
            res.guest = json.loads(line)
            proc.wait(10)
            if spy is not None:
                res.profile = spy.finish()
        except Exception as exc:
            res.error = f"{type(exc).__name__}: {exc}"
            err = b""
            with contextlib.suppress(Exception):
                stop_process(proc)
                err = proc.stderr.read() if proc.stderr else b""
            if err:
                res.error += "\n" + err.decode("utf-8", "replace")[-2000:]
            return res
        finally:
            if spy is not None:
                spy.close()
            stop_and_close(proc)
        dt = snap_b.when - snap_a.when
        res.router_cpu, res.cpu, res.others = split_cpu(
            meter, snap_a, snap_b, router=tunnel is not None
        )
        g = res.guest
        if test == "upload":
            res.rate = (pk_b - pk_a) / dt
            res.sent_rate = g["window_sent"] / g["window_s"] if g["window_s"] else 0.0
            received = server.settle(quiet=0.3, limit=3.0) - pk0
            drops1 = drops()
            sent = int(g["sent"])
            res.loss_pct = 100.0 * (sent - received) / sent if sent else 0.0
            dsink = drops_between(drops0.get("server", {}), drops1.get("server", {}))
            if tunnel is not None:
                wire = self._wg_tx_bytes(tunnel) - tx0
                on_wire = wire // self._wire_size(size, tunnel.mtu)
                dsock = drops_between(drops0.get("wgsock", {}), drops1.get("wgsock", {}))
                res.where = {
                    "guest": sent - on_wire,
                    "wgsock": dsock,
                    "router": on_wire - dsock - received - dsink,
                    "sink": dsink,
                }
            else:
                res.where = {"sink": dsink, "other": sent - received - dsink}
        else:
            res.rate = g["window_verified"] / g["window_s"] if g["window_s"] else 0.0
            res.sent_rate = res.rate
            total = g["window_verified"] + g["window_lost"]
            res.loss_pct = 100.0 * g["window_lost"] / total if total else 0.0
            drops1 = drops()
            res.where = {
                k: drops_between(drops0.get(k, {}), drops1.get(k, {}))
                for k in ("wgsock", "server", "wg-go sock", "router host sock", "guest sock")
            }
        return res

    @staticmethod
    def _wire_size(size: int, mtu: int) -> int:
        inner = size + IP_UDP_HEADERS
        padded = min(-(-inner // 16) * 16, max(mtu, inner))
        return padded + WG_OVERHEAD

    def _run_set(self, mode: str, tunnel: Tunnel | None) -> None:
        for test in ("upload", "echo"):
            for size in self.args.sizes:
                r = self.measure(mode, test, size, tunnel)
                self.results.append(r)
                print(f"  {mode:<10} {test:<6} {size:>5} B: " + _one_line(r), flush=True)

    # -------------------------------------------------------------- configurations

    def run_baseline(self) -> None:
        print("loopback baseline (no tunnel)", flush=True)
        self._run_set("loopback", None)

    def run_tunnel(self, workers: int) -> dict[str, Any]:

        self.args.gateway = GATEWAY
        mode = f"workers={workers}"
        print(f"PROCESSOR_WORKERS={workers}", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix="wgslirp-bench-udp-"))
        info: dict[str, Any] = {"mode": mode}
        port = free_udp_port()
        env = base_env(tmp, port, workers)
        cwd = router_cwd(env, self.args.code_dir)
        try:
            with RouterProcess(router_cmd(), env, cwd=cwd) as r:
                r.wait_for_line(r"listening on 127\.0\.0\.1:\d+", timeout=20)
                with pinged_client(r, port) as c:
                    tunnel = Tunnel(c, r.pid, port, c.udp_port(), c.mtu)
                    info["processes"] = sorted(set(process_tree(r.pid).values()))
                    self._run_set(mode, tunnel)
                rc = r.terminate(timeout=10)
                info["exit"] = rc
                info["counters"] = parse_exit_counters(r.output())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return info


def _one_line(r: Result) -> str:
    if r.error:
        return "ERROR " + r.error.splitlines()[0]
    cpu = " ".join(f"{k} {v:.0f}%" for k, v in r.cpu.items() if k != "machine_ticks")
    if r.test == "upload":
        return (
            f"sent {si(r.sent_rate)}/s recv {si(r.rate)}/s ({r.mbit:.1f} Mbit/s) "
            f"loss {r.loss_pct:.1f}%  cpu: {cpu}"
        )
    return (
        f"{si(r.rate)} replies/s ({r.mbit:.1f} Mbit/s each way) "
        f"lost {r.loss_pct:.2f}% rtt p50 {r.guest.get('rtt_p50_ms') or 0:.2f} ms  "
        f"cpu: {cpu}"
    )


# =========================================================================== report


def report(results: list[Result], infos: list[dict[str, Any]], args: argparse.Namespace) -> None:
    base = {(r.test, r.size): r for r in results if r.mode == "loopback" and not r.error}
    print()
    pace = f"upload paced at {si(args.rate)}/s" if args.rate else "upload unpaced"
    print(
        f"UDP through wgslirp: {args.seconds:g} s windows after {args.warmup:g} s warm-up, "
        f"{args.flows} flows, {pace}, echo window {args.window}, {os.cpu_count()} CPUs. "
        "CPU columns: % of one core."
    )
    for test in ("upload", "echo"):
        rows = []
        for r in results:
            if r.test != test:
                continue
            b = base.get((r.test, r.size))
            ratio = f"{r.rate / b.rate:.3f}" if b and b.rate and not r.error else "-"
            mode = r.mode + ("*" if r.background > args.quiet_threshold else "")
            if r.error:
                rows.append([mode, str(r.size), "ERROR", *["-"] * 12])
                continue
            router = (
                " ".join(f"{k} {v:.0f}" for k, v in sorted(r.router_cpu.items()) if v >= 0.5) or "-"
            )
            common = [
                pct(r.cpu.get("router")),
                router,
                pct(r.cpu.get("wg-go")),
                pct(r.cpu.get("guest")),
                pct(r.cpu.get("server")),
                pct(r.cpu.get("other")),
                pct(r.cpu.get("machine")),
            ]
            if test == "upload":
                sent = max(int(r.guest.get("sent", 0)), 1)
                where = (
                    " ".join(f"{k} {100 * v / sent:.1f}" for k, v in r.where.items() if v) or "-"
                )
                rows.append(
                    [
                        mode,
                        str(r.size),
                        si(r.sent_rate),
                        si(r.rate),
                        f"{r.mbit:.1f}",
                        f"{r.loss_pct:.1f}",
                        ratio,
                        *common,
                        where,
                    ]
                )
            else:
                p50 = r.guest.get("rtt_p50_ms")
                rows.append(
                    [
                        mode,
                        str(r.size),
                        si(r.rate),
                        f"{r.mbit:.1f}",
                        f"{r.loss_pct:.2f}",
                        "-" if p50 is None else f"{p50:.2f}",
                        ratio,
                        *common,
                        " ".join(f"{k} {v}" for k, v in r.where.items() if v) or "-",
                    ]
                )
        if not rows:
            continue
        print()
        if test == "upload":
            print(
                "upload: guest -> sink on host loopback (recv/s = what the sink got; "
                "lost where = % of sent)"
            )
            hdr = [
                "mode",
                "bytes",
                "sent/s",
                "recv/s",
                "Mbit/s",
                "loss%",
                "x base",
                "router%",
                "router by process",
                "wg-go%",
                "sender%",
                "sink%",
                "other%",
                "busy%",
                "lost where (% of sent)",
            ]
        else:
            print("echo: guest <-> echo on host loopback, windowed request/response")
            hdr = [
                "mode",
                "bytes",
                "replies/s",
                "Mbit/s",
                "lost%",
                "rtt p50 ms",
                "x base",
                "router%",
                "router by process",
                "wg-go%",
                "client%",
                "echo%",
                "other%",
                "busy%",
                "socket drops",
            ]
        print(table(hdr, rows))
    print(
        "\nbusy% = CPU time of every process on the machine; other% = the part not charged "
        "to the processes listed (kernel threads, this controller, anyone else's load)."
    )
    busy_others = [r for r in results if r.cpu.get("other", 0.0) >= 15.0]
    for r in busy_others:
        print(
            f"  other% of {r.mode} {r.test} {r.size} B ({r.cpu['other']:.0f}%) mostly: "
            + ", ".join(f"{name} {pct:.0f}%" for name, pct in r.others if pct >= 1.0)
        )
    if any(r.background > args.quiet_threshold for r in results):
        print(
            f"* the machine was already more than {args.quiet_threshold:g}% busy before this "
            f"test (after waiting {args.quiet_wait:g} s): someone else's load; distrust it."
        )
    for info in infos:
        c = info.get("counters") or {}
        ing = c.get("ingress", {})
        workers = {k: v for k, v in c.items() if k.startswith("worker")}
        split = ", ".join(
            f"{k}: {v.get('udp_tx_packets', 0)} tx/{v.get('udp_rx_packets', 0)} rx"
            for k, v in sorted(workers.items())
        )
        print(
            f"\n{info['mode']}: router exit {info.get('exit')}; ingress datagrams "
            f"{si(ing.get('datagrams_received', 0))}, ring_full_dropped "
            f"{ing.get('ring_full_dropped', 0)}, send_errors {ing.get('send_errors', 0)}; "
            f"udp per worker: {split or '-'}; udp_send_errors "
            f"{sum(v.get('udp_send_errors', 0) for v in workers.values())}"
        )
    for r in results:
        if not r.profile:
            continue
        print(
            f"\npy-spy {r.mode} {r.test} {r.size} B: source lines on top of the stack, as a "
            "share of each process's busy samples (running or waiting for a CPU)"
        )
        print_profile(r.profile, r.router_cpu)
    errors = [r for r in results if r.error]
    for r in errors:
        print(f"\nERROR {r.mode} {r.test} {r.size}: {r.error}")


# =========================================================================== main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="measured window per test (default 3, --quick 1)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of traffic before the window (default 0.5, --quick 0.3)",
    )
    p.add_argument("--workers", default="0,1,2", help="PROCESSOR_WORKERS values (default 0,1,2)")
    p.add_argument(
        "--sizes",
        default="64,1352",
        help="UDP payload bytes (default 64,1352: 1352 + 28 = WG_MTU 1380)",
    )
    p.add_argument(
        "--flows",
        type=int,
        default=4,
        help="guest sockets used round-robin, so workers can share them (default 4)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="pace the upload sender to this many datagrams/s (default 0: as fast "
        "as it can); a rate the path sustains shows loss-free capacity",
    )
    p.add_argument("--window", type=int, default=64, help="echo requests in flight (default 64)")
    p.add_argument("--quick", action="store_true", help="1 s windows, 0.3 s warm-up")
    p.add_argument(
        "--json",
        metavar="FILE",
        default=None,
        help="also write every result and the routers' exit counters as JSON",
    )
    add_rev_argument(p)
    p.add_argument(
        "--profile",
        metavar="DIR",
        default=None,
        help="py-spy every router process during each tunnel window; collapsed "
        "stacks go to DIR and the top functions are printed (adds a few %% "
        "of CPU per process)",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the loopback baseline")
    add_quiet_options(p, what="test", wait=5.0)
    a = p.parse_args(argv)
    if a.seconds is None:
        a.seconds = 1.0 if a.quick else 3.0
    if a.warmup is None:
        a.warmup = 0.3 if a.quick else 0.5
    a.workers = [int(x) for x in a.workers.split(",") if x.strip()]
    a.sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
    if not 0 < a.seconds <= 60 or not 0 <= a.warmup <= 10:
        p.error("--seconds must be in (0, 60] and --warmup in [0, 10]")
    if any(s < 8 or s > 65507 for s in a.sizes):
        p.error("--sizes must be 8..65507 bytes (echo requests carry an 8-byte sequence)")
    if any(w < 0 or w > 16 for w in a.workers):
        p.error("--workers must be 0..16")
    if not 0 <= a.rate <= 10_000_000:
        p.error("--rate must be 0..10000000 datagrams/s")
    if not 1 <= a.flows <= 64 or not 1 <= a.window <= 4096:
        p.error("--flows must be 1..64 and --window 1..4096")
    return a


def main(argv: list[str]) -> int:
    if argv and argv[0].startswith("guest-"):
        guest_main(argv)
        return 0
    args = parse_args(argv)
    if not start_controller():
        return 2

    infos: list[dict[str, Any]] = []
    bench: Bench | None = None
    args.code_dir = None
    t0 = time.monotonic()
    code = 0
    try:
        with (
            rev_exported(args.rev) as code_dir,
            ForkedUdpServer(echo=False) as sink,
            ForkedUdpServer(echo=True) as echo,
        ):
            args.code_dir = code_dir
            args.sink, args.echo, args.gateway = sink, echo, "127.0.0.1"
            bench = Bench(args)
            if not args.no_baseline:
                bench.run_baseline()
            for w in args.workers:
                try:
                    infos.append(bench.run_tunnel(w))
                except (HarnessError, RuntimeError) as exc:
                    print(f"PROCESSOR_WORKERS={w} failed: {exc}", file=sys.stderr)
                    infos.append({"mode": f"workers={w}", "error": str(exc)})
                    code = 1
    except KeyboardInterrupt:
        print(
            "\ninterrupted: everything started has been stopped; partial results follow",
            file=sys.stderr,
        )
        code = 130
    if bench is not None and bench.results:
        report(bench.results, infos, args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "args": {k: v for k, v in vars(args).items() if k not in ("sink", "echo")},
                        "results": [dataclasses.asdict(r) for r in bench.results],
                        "routers": infos,
                    },
                    f,
                    indent=1,
                    default=str,
                )
    print(f"\n(total {time.monotonic() - t0:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
