#!/usr/bin/env python3
"""TCP throughput up and down through the real tunnel, and memory per idle flow.

Paths measured (needs root, /dev/net/tun, wireguard-go, wg, ip and iperf3):

- **loopback**: iperf3 client -> iperf3 server, both on 127.0.0.1 in the root namespace
  (no tunnel): the ceiling of this machine for one TCP stream.
- **wg-go<->wg-go** (kernel-path reference): a second wireguard-go plays the server.  Its TUN
  sits in a second namespace with an iperf3 server; the client's TUN in the guest
  namespace.  Both wireguard-go UDP sockets are on 127.0.0.1 in the root namespace, so all
  traffic stays on loopback or inside the namespaces this script creates; no veth, no
  routing into the host.  Kernel TCP at both ends, two user-space WireGuard hops: what a
  tunnel can do on this box without wgslirp's user-space TCP.
- **workers=N**: guest namespace -> TUN -> wireguard-go -> UDP 127.0.0.1 -> wgslirp
  (``PROCESSOR_WORKERS=N``), which terminates the guest's TCP in user space and bridges it
  to a host socket -> the iperf3 server on 127.0.0.1, reached as the gateway 10.77.0.1.
  ``up`` is ``iperf3 -c`` (guest sends), ``down`` is ``iperf3 -R`` (host sends).
- **workers=N ipv6** (``--family 6`` or ``4,6``): the same over IPv6 inside the tunnel: the
  guest's fd77::2 to the gateway fd77::1, bridged to an iperf3 server on [::1] (MSS from
  MTU - 60), printed next to the IPv4 rows of the same run.
- **fwd workers=N** (``--direction forward``): the same router and guest, the other way in:
  an iperf3 server inside the guest namespace on 10.77.0.2, reached by an iperf3 client on
  the host through an inbound forward (``WG_FORWARD_TCP=127.0.0.1:P=10.77.0.2:Q``), so the
  router's TCP endpoint opens actively toward the guest. ``up`` is still the guest sending
  (``-R`` here), ``down`` the host sending; the summary sets each next to the outbound row.

Mbit/s is iperf3's receiver-side goodput over the window after the omitted first seconds;
``retr`` the sender's retransmissions (the guest kernel's going up; the host's going down,
which, over loopback to the router, are ~0 whatever the tunnel does); ``udp drops`` the
receive-buffer drops of the tunnel's UDP sockets over the run (wireguard-go's, the
router's; for the reference both wireguard-go's), from /proc/net/udp: a drop there is a
lost tunnel packet the inner TCP must recover from.  CPU columns are % of
one core over the same window from psutil (per-task run time): the router's processes by
name (``main`` = supervisor, or everything when ``PROCESSOR_WORKERS=0``; ``ingress``;
``wN``), wireguard-go (both instances for the reference), the iperf3 client and server;
``busy%`` is the whole machine (200 = both cores), ``other%`` what of it no listed process
was charged for (softirq in kernel threads, this controller, others' load).

Memory per idle flow: a fresh router (``TCP_MAX_FLOWS``/``TCP_MAX_FLOWS_PER_PEER`` raised to
``20000`` by default so the default caps of 4096/1024 do not refuse the test) and a guest
that opens ``--flows`` connections (default 10,000) to an accept-and-hold server on
127.0.0.1 (via the gateway) and keeps them idle.  Reported per flow: the router's
user-space memory (USS, and RSS/PSS) summed over its processes, after minus before
(before = after a warm-up of a few connections); the same after each connection carried
``--touch`` bytes each way and went idle again; and what is still held after every
connection closed.  Kernel socket memory (socket structs, skbs: three sockets per flow --
guest, router's host socket, the server's) is kernel memory, not user space, and is not
counted; the kernel's slab and TCP page totals are printed next to it for scale.

The summary names the router's effective TCP_ENABLE_SACK (``wgslirp check-config`` with the
same code and environment; ``--router-env TCP_ENABLE_SACK=0`` compares).  Nothing here
asserts a speed.  Targets (from the TCP issue): >= 500 Mbit/s each way on a
2-core machine with the client on the same box, <= 16 KiB of user-space memory per idle flow.

    python scripts/bench_tcp.py                     # everything, ~3 minutes
    python scripts/bench_tcp.py --quick             # 3 s windows, 2,000 flows
    python scripts/bench_tcp.py --workers 2 --skip memory
    python scripts/bench_tcp.py --family 4,6 --skip memory,reference  # IPv6 next to IPv4
    python scripts/bench_tcp.py --repeat 3          # median of 3 iperf3 runs per row
    python scripts/bench_tcp.py --rev HEAD          # router from a commit, not the work tree
    python scripts/bench_tcp.py --code /tmp/patched # router from a patched copy (experiments)
    python scripts/bench_tcp.py --router-env TCP_ENABLE_SACK=1
    python scripts/bench_tcp.py --direction forward --workers 2 --skip memory,reference
    python scripts/bench_tcp.py --profile /tmp/p    # py-spy each router process, top lines

The same file is also the guest program (``bench_tcp.py guest-hold ...``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wgslirp_testkit.bench import (
    add_quiet_options,
    add_rev_argument,
    pct,
    rev_exported,
    router_code_note,
    start_controller,
    table,
)
from wgslirp_testkit.hostservers import ForkedServer
from wgslirp_testkit.iperf import Iperf3Server, client_argv, parse_client_output
from wgslirp_testkit.ports import free_tcp_port, free_udp_port
from wgslirp_testkit.proc import (
    HarnessError,
    LineReader,
    die_with_parent,
    raise_nofile,
    spawn,
    stop_and_close,
    stop_process,
)
from wgslirp_testkit.pyspy import PySpy, print_profile
from wgslirp_testkit.router import (
    GATEWAY,
    GATEWAY6,
    REPO,
    RouterProcess,
    base_env,
    effective_tcp_config,
    exit_counters,
    pinged_client,
    router_cmd,
    router_cwd,
)
from wgslirp_testkit.sampling import (
    CpuMeter,
    UdpSocketInfo,
    drops_between,
    process_tree,
    router_label,
    split_cpu,
    tree_processes,
    udp_socket_drops,
    wait_quiet,
)
from wgslirp_testkit.wgclient import grow_client_buffers, reference_pair

KIB = 1024
TARGET_MBIT = 500.0
TARGET_FLOW_KIB = 16.0
GUEST = "10.77.0.2"  # the tunnel address of the client the router prints (pinged_client)
GUEST_LIFETIME = 1800.0  # s: the guest program exits (closing everything) after this
SERVER_LIFETIME = 3600.0
REF_NET = ("10.78.0.1", "10.78.0.2")  # the reference tunnel's addresses (its own namespaces)
REF_NET6 = ("fd78::1", "fd78::2")  # and its IPv6 ones, with --family 6


# =========================================================================== shared helpers


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# =========================================================================== guest side
# Runs inside the guest namespace.  Stdlib only.  Opens N connections, reports one JSON
# line, then obeys commands on stdin ("touch SIZE", "close"); EOF or GUEST_LIFETIME closes.


def _open_many(
    host: str, port: int, n: int, concurrency: int, timeout: float
) -> tuple[list[socket.socket], dict[str, Any]]:
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    pending: dict[int, tuple[socket.socket, float]] = {}
    errors: dict[str, int] = {}
    started = 0
    t0 = time.monotonic()
    deadline = t0 + timeout

    def fail(s: socket.socket, err: int) -> None:
        name = errno.errorcode.get(err, str(err))
        errors[name] = errors.get(name, 0) + 1
        s.close()

    while (started < n or pending) and time.monotonic() < deadline:
        while started < n and len(pending) < concurrency:
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:  # out of descriptors: the rest cannot be tried
                name = errno.errorcode.get(exc.errno or 0, "socket")
                errors[name] = errors.get(name, 0) + n - started
                started = n
                break
            s.setblocking(False)
            started += 1
            err = s.connect_ex((host, port))
            if err == 0:
                socks.append(s)
            elif err == errno.EINPROGRESS:
                sel.register(s, selectors.EVENT_WRITE)
                pending[s.fileno()] = (s, time.monotonic())
            else:
                fail(s, err)
        for key, _ in sel.select(0.2):
            s = key.fileobj  # type: ignore[assignment]
            sel.unregister(s)
            pending.pop(s.fileno(), None)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                fail(s, err)
            else:
                socks.append(s)
    for s, _ in pending.values():
        sel.unregister(s)
        fail(s, errno.ETIMEDOUT)
    sel.close()
    return socks, {
        "phase": "open",
        "ok": len(socks),
        "failed": n - len(socks),
        "errors": errors,
        "seconds": time.monotonic() - t0,
    }


def _touch(socks: list[socket.socket], size: int, timeout: float) -> dict[str, Any]:
    """Send ``size`` bytes on every connection, read as many back (the server echoes)."""
    payload = b"x" * size
    t0 = time.monotonic()
    deadline = t0 + timeout
    sel = selectors.DefaultSelector()
    want: dict[int, int] = {}
    send_failed = 0
    for s in socks:
        try:
            s.send(payload)
        except OSError:
            send_failed += 1
            continue
        want[s.fileno()] = size
        sel.register(s, selectors.EVENT_READ)
    bad = 0
    while want and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            s = key.fileobj  # type: ignore[assignment]
            try:
                got = len(s.recv(65536))
            except BlockingIOError:
                continue
            except OSError:
                got = 0
            left = want[s.fileno()] - got
            if got == 0 or left <= 0:
                if got == 0:
                    bad += 1
                sel.unregister(s)
                del want[s.fileno()]
            else:
                want[s.fileno()] = left
    sel.close()
    return {
        "phase": "touch",
        "ok": len(socks) - send_failed - bad - len(want),
        "failed": send_failed + bad,
        "unfinished": len(want),
        "seconds": time.monotonic() - t0,
    }


def guest_hold(host: str, port: int, n: int, concurrency: int, timeout: float) -> None:
    raise_nofile(n + 64)
    socks, out = _open_many(host, port, n, concurrency, timeout)
    _emit(out)
    deadline = time.monotonic() + GUEST_LIFETIME
    buf = b""
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([sys.stdin.fileno()], [], [], 1.0)
            if not r:
                continue
            chunk = os.read(sys.stdin.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = line.decode().split()
                if cmd and cmd[0] == "touch":
                    _emit(_touch(socks, int(cmd[1]), timeout))
                elif cmd and cmd[0] == "close":
                    deadline = 0.0
                    break
    finally:
        t0 = time.monotonic()
        for s in socks:
            s.close()
        _emit({"phase": "close", "closed": len(socks), "seconds": time.monotonic() - t0})


def guest_main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller stops us (by PID)
    cmd, a = argv[0], argv[1:]
    if cmd == "guest-hold":
        guest_hold(a[0], int(a[1]), int(a[2]), int(a[3]), float(a[4]))
    else:
        raise SystemExit(f"unknown guest command {cmd}")


# =========================================================================== host side


def _hold_serve(counters: Any, lsock: socket.socket, need: int, lifetime: float) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise_nofile(need + 64)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ)
    accepted = open_ = echoed = errors = 0
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            s = key.fileobj
            if s is lsock:
                for _ in range(256):
                    try:
                        c, _ = lsock.accept()
                    except BlockingIOError:
                        break
                    except OSError:
                        errors += 1
                        break
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ)
                    accepted += 1
                    open_ += 1
                continue
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                try:
                    echoed += s.send(data)
                except OSError:
                    errors += 1
            else:
                sel.unregister(s)
                s.close()
                open_ -= 1
        counters[0], counters[1], counters[2], counters[3] = accepted, open_, echoed, errors


def _on_port(port: int) -> Callable[[UdpSocketInfo], bool]:
    """A /proc/net/udp filter: the socket bound to local `port`."""

    def match(si: UdpSocketInfo) -> bool:
        return bool(si.local[1] == port)

    return match


class HoldServer(ForkedServer):
    """Accept TCP connections on 127.0.0.1 and hold them (echoing anything received) in a
    forked process; ``accepted``/``open`` come from shared memory (updated every turn)."""

    def __init__(self, need: int, lifetime: float = SERVER_LIFETIME) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", 0))
            self.sock.listen(4096)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.port: int = self.sock.getsockname()[1]
        super().__init__(
            _hold_serve, (self.sock, need, lifetime), "bench-tcp-hold", 4, join_timeout=5.0
        )

    def _close_socks(self) -> None:
        self.sock.close()

    @property
    def accepted(self) -> int:
        return int(self.counters[0])

    @property
    def open(self) -> int:
        return int(self.counters[1])

    def wait_open(self, want: int, limit: float) -> int:
        deadline = time.monotonic() + limit
        while self.open != want and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.open


# =========================================================================== results


@dataclass
class Tput:
    path: str  # "loopback", "wg-go<->wg-go", "workers=N"
    direction: str  # "up" or "down"
    mbit: float = 0.0
    retransmits: int | None = None
    drops: dict[str, int] = field(default_factory=dict)  # UDP receive drops by socket
    cpu: dict[str, float] = field(default_factory=dict)
    router_cpu: dict[str, float] = field(default_factory=dict)
    background: float = 0.0
    run: int = 1  # which of --repeat
    others: list[tuple[str, float]] = field(default_factory=list)
    profile: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Mem:
    mode: str
    flows: int
    opened: int = 0
    open_seconds: float = 0.0
    failed: dict[str, int] = field(default_factory=dict)
    before: dict[str, dict[str, int]] = field(default_factory=dict)  # proc -> {uss,..}
    idle: dict[str, dict[str, int]] = field(default_factory=dict)
    touched: dict[str, dict[str, int]] = field(default_factory=dict)
    closed: dict[str, dict[str, int]] = field(default_factory=dict)
    touch_ok: int = 0
    kernel_before: dict[str, int] = field(default_factory=dict)
    kernel_idle: dict[str, int] = field(default_factory=dict)
    server_open: int = 0
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    error: str | None = None

    def per_flow(self, state: str, key: str = "pss") -> float | None:
        after = getattr(self, state)
        if not after or not self.before or not self.opened:
            return None
        return (_total(after, key) - _total(self.before, key)) / self.opened


def _total(snap: dict[str, dict[str, int]], key: str) -> int:
    return sum(v.get(key, 0) for v in snap.values())


# =========================================================================== measuring


def router_memory(pid: int) -> dict[str, dict[str, int]]:
    """Process name -> uss/pss/rss bytes, mappings and fds, for the router's process tree."""
    import psutil

    out: dict[str, dict[str, int]] = {}
    for p in tree_processes(pid):
        try:
            name = p.name()
            m = p.memory_full_info()
            maps = sum(1 for _ in open(f"/proc/{p.pid}/maps", "rb"))  # noqa: SIM115
            fds = p.num_fds()
        except (psutil.Error, OSError):
            continue
        label = router_label(p.pid, name, pid, other=name)
        if label in out:
            label = f"{label}[{p.pid}]"
        out[label] = {
            "uss": int(m.uss),
            "pss": int(m.pss),
            "rss": int(m.rss),
            "maps": maps,
            "fds": fds,
        }
    return out


def kernel_memory() -> dict[str, int]:
    """Machine-wide figures for scale: kernel slab bytes, TCP buffer pages (bytes), and
    Shmem (the endpoint's rings are shared anonymous mappings: a page dropped from RSS
    with MADV_DONTNEED stays in Shmem, so this cross-checks the per-process figures)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("Slab", "SUnreclaim", "Shmem"):
                out[k.lower()] = int(v.split()[0]) * KIB
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                f = line.split()
                out["tcp_mem"] = int(f[f.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE")
    return out


def stable_memory(pid: int, quiet: float = 0.5, limit: float = 6.0) -> dict[str, dict[str, int]]:
    """Sample until two consecutive totals (USS) are within 64 KiB (at most ``limit`` s)."""
    last = router_memory(pid)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(quiet)
        cur = router_memory(pid)
        if abs(_total(cur, "uss") - _total(last, "uss")) <= 64 * KIB:
            return cur
        last = cur
    return last


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.script = str(Path(__file__).resolve())
        self.tput: list[Tput] = []
        self.mem: list[Mem] = []
        self.infos: list[dict[str, Any]] = []
        self.mtu: int | None = None
        self.tcp_config: dict[str, Any] | None = None
        self._ns: str | None = None  # the current guest namespace, checked before each run
        self.router_port = 0

    # -------------------------------------------------------------- one iperf3 run

    def iperf(
        self,
        path: str,
        direction: str,
        host: str,
        server: Iperf3Server,
        client_ns: Any,
        groups: dict[str, list[int]],
        router: dict[int, str] | None = None,
        router_pid: int = -1,
        udp_ports: dict[str, int] | None = None,
        *,
        port: int = 0,
        server_in_guest: bool = False,
    ) -> Tput:
        """One iperf3 client run; CPU of ``groups`` (+ the ``router`` processes, whose root is
        ``router_pid``) over its window; receive drops of the UDP sockets on ``udp_ports``
        (label -> local port, root namespace) over the whole run. ``port``: where the
        client connects (an inbound forward), if not the server's own port;
        ``server_in_guest``: the server runs in the guest, so "up" (guest sends) is -R."""
        a = self.args
        res = Tput(path, direction)
        argv = client_argv(
            host,
            port or server.port,
            seconds=a.seconds,
            omit=a.omit,
            reverse=(direction == "up") if server_in_guest else (direction == "down"),
            streams=a.streams,
        )
        server.drain()
        res.background = wait_quiet(a.quiet_threshold, a.quiet_wait)
        ports = udp_ports or {}

        def drops() -> dict[str, dict[int, int]]:
            return {k: udp_socket_drops(_on_port(p)) for k, p in ports.items()}

        drops0 = drops()
        proc = spawn(argv, client_ns, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        spy: PySpy | None = None
        try:
            meter = CpuMeter()
            meter.add_router(router or {}, router_pid)
            for label, pids in groups.items():
                meter.add(label, pids)
            meter.add("iperf3 -c", [proc.pid])  # `ip netns exec` execs: same PID
            meter.add("iperf3 -s", [server.pid])
            t0 = time.monotonic()
            window = max(a.seconds - 0.6, 0.5)
            time.sleep(a.omit + 0.3)
            snap_a = meter.snapshot()
            if router and a.profile is not None:
                spy = PySpy(
                    Path(a.profile),
                    f"{path.replace('=', '')}-{direction}",
                    meter.router_targets(),
                    window,
                    source_root=a.code_dir or REPO,
                )
            time.sleep(max(0.0, t0 + a.omit + 0.3 + window - time.monotonic()))
            snap_b = meter.snapshot()
            try:
                out, err = proc.communicate(timeout=a.seconds + a.omit + 20)
            except subprocess.TimeoutExpired:
                stop_process(proc)
                raise RuntimeError("iperf3 client did not finish in time") from None
            if spy is not None:
                res.profile = spy.finish()
            drops1 = drops()
            res.drops = {k: drops_between(drops0[k], drops1[k]) for k in ports}
            parsed = parse_client_output(out, err)
            res.mbit, res.retransmits = parsed.mbit, parsed.retransmits
        except Exception as exc:
            res.error = f"{type(exc).__name__}: {exc}"
            return res
        finally:
            if spy is not None:
                spy.close()
            stop_and_close(proc)
        res.router_cpu, res.cpu, res.others = split_cpu(meter, snap_a, snap_b, router=bool(router))
        return res

    def _both_ways(self, run: Callable[[str], Tput]) -> None:
        """``--repeat`` runs up, then as many down (so a direction's runs are comparable)."""
        for d in ("up", "down"):
            for i in range(self.args.repeat):
                if self._ns is not None and not Path("/run/netns", self._ns).exists():
                    raise RuntimeError(
                        f"network namespace {self._ns} was deleted by another "
                        "process (someone's stale-resource sweep?)"
                    )
                r = run(d)
                r.run = i + 1
                self._record(r)

    def _record(self, r: Tput) -> None:
        self.tput.append(r)
        if r.error:
            line = "ERROR " + r.error.splitlines()[0]
        else:
            cpu = " ".join(
                f"{k} {v:.0f}%"
                for k, v in {**r.router_cpu, **r.cpu}.items()
                if k not in ("machine_ticks", "router")
            )
            retr = "-" if r.retransmits is None else str(r.retransmits)
            dr = " ".join(f"{k} {v}" for k, v in r.drops.items())
            line = f"{r.mbit:7.1f} Mbit/s  retr {retr}  cpu: {cpu}" + (
                f"  udp drops: {dr}" if dr else ""
            )
        tag = f"#{r.run}" if self.args.repeat > 1 else ""
        print(f"  {r.path:<14} {r.direction:<4}{tag:>3} {line}", flush=True)

    # -------------------------------------------------------------- configurations

    def run_loopback(self, server: Iperf3Server) -> None:
        print("loopback baseline (iperf3 on 127.0.0.1, no tunnel)", flush=True)
        self._both_ways(lambda d: self.iperf("loopback", d, "127.0.0.1", server, None, {}))

    def run_reference(self) -> None:
        """wireguard-go <-> wireguard-go, iperf3 server inside the second namespace."""

        mtu = self.mtu or 1380
        print(
            f"kernel-path reference: wireguard-go <-> wireguard-go (MTU {mtu}), kernel TCP "
            "both ends",
            flush=True,
        )
        v6 = "6" in self.args.family
        with contextlib.ExitStack() as stack:
            b, c = reference_pair(stack, REF_NET, mtu, REF_NET6 if v6 else None)
            self._grow_buffers(c)
            self._grow_buffers(b)
            stack.callback(setattr, self, "_ns", None)
            self._ns = c.namespace.name
            ports = {"cli": c.udp_port(), "srv": b.udp_port()}
            # The same pair carries both families when IPv6 is asked for, so the kernel
            # path's own IPv6/IPv4 ratio sits next to the router's.
            for label, srv_ip in (("wg-go<->wg-go", REF_NET[0]),) + (
                (("wg-go<->wg-go ipv6", REF_NET6[0]),) if v6 else ()
            ):
                with Iperf3Server(srv_ip, free_tcp_port(), ns=b) as server:

                    def run(
                        d: str, label: str = label, srv_ip: str = srv_ip, server: Any = server
                    ) -> Tput:
                        groups = {"wg-go": [c.pid, b.pid]}
                        return self.iperf(label, d, srv_ip, server, c, groups, udp_ports=ports)

                    self._both_ways(run)

    def _grow_buffers(self, c: Any) -> None:
        """--client-sockbuf: the socket buffers newer wireguard-go builds set themselves."""
        if self.args.client_sockbuf:
            try:
                msg = grow_client_buffers(c.pid, c.udp_port(), self.args.client_sockbuf)
            except OSError as exc:
                msg = f"client socket buffers left as they are ({exc})"
            print(f"  {msg}", flush=True)

    def effective_tcp_config(self) -> dict[str, Any] | None:
        """The router's TCP settings (``wgslirp check-config`` with the routers' code and
        environment), or None if that fails."""
        return effective_tcp_config(lambda tmp: self._router_env(tmp, 51820, 0, {}))

    def _router_env(
        self, tmp: Path, port: int, workers: int, extra: dict[str, str]
    ) -> tuple[dict[str, str], str]:

        env = base_env(tmp, port, workers) | extra
        env |= dict(self.args.router_env)
        return env, router_cwd(env, self.args.code_dir)

    @contextlib.contextmanager
    def _tunnel(self, workers: int, extra: dict[str, str], v6: bool = False) -> Any:

        tmp = Path(tempfile.mkdtemp(prefix="wgslirp-bench-tcp-"))
        port = free_udp_port()
        env, cwd = self._router_env(tmp, port, workers, extra)
        try:
            with RouterProcess(router_cmd(), env, cwd=cwd) as r:
                r.wait_for_line(r"listening on 127\.0\.0\.1:\d+", timeout=30)
                allowed = ("10.77.0.0/24", "fd77::/64") if v6 else ("10.77.0.0/24",)
                with pinged_client(r, port, allowed_ips=allowed) as c:
                    self._grow_buffers(c)
                    self.mtu = c.mtu
                    self.router_port = port
                    self._ns = c.namespace.name
                    try:
                        yield r, c
                    finally:
                        self._ns = None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def run_throughput(self, workers: int, server: Iperf3Server, v6: bool = False) -> None:

        mode = f"workers={workers}" + (" ipv6" if v6 else "")
        print(f"PROCESSOR_WORKERS={workers}: throughput{' over IPv6' if v6 else ''}", flush=True)
        info: dict[str, Any] = {"mode": mode, "test": "throughput"}
        self.infos.append(info)
        forward = self.args.direction == "forward" and not v6  # forwards are IPv4 for now
        fport, gport = free_tcp_port(), free_tcp_port()
        extra = {"WG_FORWARD_TCP": f"127.0.0.1:{fport}={GUEST}:{gport}"} if forward else {}
        with self._tunnel(workers, extra, v6) as (r, c):
            procs = process_tree(r.pid)
            info["processes"] = sorted(set(procs.values()))
            ports = {"wg-go": c.udp_port(), "router": self.router_port}
            self._both_ways(
                lambda d: self.iperf(
                    mode,
                    d,
                    GATEWAY6 if v6 else GATEWAY,
                    server,
                    c,
                    {"wg-go": [c.pid]},
                    router=procs,
                    router_pid=r.pid,
                    udp_ports=ports,
                )
            )
            if forward:
                # The same router and guest, the other way in: iperf3's server inside the
                # guest, its client on the host's forwarded port (WG_FORWARD_TCP).
                print(f"PROCESSOR_WORKERS={workers}: throughput over an inbound forward")
                with Iperf3Server(GUEST, gport, ns=c) as gserver:
                    self._both_ways(
                        lambda d: self.iperf(
                            f"fwd {mode}",
                            d,
                            "127.0.0.1",
                            gserver,
                            None,
                            {"wg-go": [c.pid]},
                            router=procs,
                            router_pid=r.pid,
                            udp_ports=ports,
                            port=fport,
                            server_in_guest=True,
                        )
                    )
            info["exit"] = r.terminate(timeout=10)
            info["counters"] = exit_counters(r.output())

    def run_memory(self, workers: int) -> None:

        a = self.args
        n = a.flows
        mode = f"workers={workers}"
        print(f"PROCESSOR_WORKERS={workers}: memory with {n} idle flows", flush=True)
        res = Mem(mode, n)
        self.mem.append(res)
        info: dict[str, Any] = {"mode": mode, "test": "memory"}
        self.infos.append(info)
        caps = {"TCP_MAX_FLOWS": str(a.max_flows), "TCP_MAX_FLOWS_PER_PEER": str(a.max_flows)}
        try:
            with HoldServer(n + a.warm_flows + 64) as hold, self._tunnel(workers, caps) as (r, c):

                def guest(count: int) -> tuple[subprocess.Popen[bytes], LineReader]:
                    p: subprocess.Popen[bytes] = c.popen(
                        [
                            sys.executable,
                            self.script,
                            "guest-hold",
                            GATEWAY,
                            str(hold.port),
                            str(count),
                            str(a.concurrency),
                            str(a.open_timeout),
                        ],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                    )
                    assert p.stdout is not None
                    return p, LineReader(p.stdout.fileno())

                def result(rd: LineReader, phase: str, timeout: float) -> dict[str, Any]:
                    line = rd.readline(timeout)
                    if line is None:
                        raise RuntimeError(f"guest printed nothing for {phase}")
                    out: dict[str, Any] = json.loads(line)
                    if out.get("phase") != phase:
                        raise RuntimeError(f"guest: expected {phase}, got {line}")
                    return out

                def command(p: subprocess.Popen[bytes], text: str) -> None:
                    assert p.stdin is not None
                    p.stdin.write(text.encode() + b"\n")
                    p.stdin.flush()

                # warm-up: a few connections opened, touched, closed, so code paths, imports
                # and allocator pools the first flow needs are in "before"
                p, rd = guest(a.warm_flows)
                try:
                    result(rd, "open", a.open_timeout + 10)
                    command(p, f"touch {a.touch}")
                    result(rd, "touch", a.open_timeout + 10)
                    command(p, "close")
                    result(rd, "close", 30)
                    p.wait(10)
                finally:
                    stop_and_close(p)
                hold.wait_open(0, 10)
                time.sleep(2.5)  # the endpoint's TIME_WAIT (2 s)
                res.before = stable_memory(r.pid)
                res.kernel_before = kernel_memory()

                p, rd = guest(n)
                try:
                    o = result(rd, "open", a.open_timeout + 30)
                    res.opened, res.open_seconds, res.failed = o["ok"], o["seconds"], o["errors"]
                    res.server_open = hold.wait_open(res.opened, 10)
                    time.sleep(a.idle)
                    res.idle = stable_memory(r.pid)
                    res.kernel_idle = kernel_memory()
                    print(
                        f"  opened {res.opened}/{n} in {res.open_seconds:.1f} s; server holds "
                        f"{res.server_open}; router PSS +{_kib_flow(res, 'idle')} KiB/flow",
                        flush=True,
                    )
                    if a.touch:
                        command(p, f"touch {a.touch}")
                        t = result(rd, "touch", a.open_timeout + 30)
                        res.touch_ok = t["ok"]
                        time.sleep(a.idle)
                        res.touched = stable_memory(r.pid)
                        print(
                            f"  {t['ok']} flows carried {a.touch} B each way in "
                            f"{t['seconds']:.1f} s; router PSS +{_kib_flow(res, 'touched')} "
                            f"KiB/flow",
                            flush=True,
                        )
                    command(p, "close")
                    result(rd, "close", 60)
                    p.wait(10)
                finally:
                    stop_and_close(p)
                hold.wait_open(0, 30)
                time.sleep(3.0)
                res.closed = stable_memory(r.pid)
                info["exit"] = r.terminate(timeout=15)
                res.counters = info["counters"] = exit_counters(r.output())
        except Exception as exc:
            res.error = f"{type(exc).__name__}: {exc}"
            print(f"  ERROR {res.error.splitlines()[0]}", flush=True)


_TCP_KEYS = ("tcp_opened", "tcp_refused_cap", "tcp_dials_failed", "tcp_host_resets", "tcp_rst_sent")


def tcp_counters(counters: dict[str, dict[str, int]]) -> dict[str, int] | None:
    """The TCP bridge counters summed over the workers (or from the totals line)."""
    if "totals" in counters:
        src = [counters["totals"]]
    else:
        src = [v for k, v in counters.items() if k.startswith("worker")]
    if not src:
        return None
    return {k: sum(v.get(k, 0) for v in src) for k in _TCP_KEYS}


def _kib_flow(m: Mem, state: str, key: str = "pss") -> str:
    v = m.per_flow(state, key)
    return "-" if v is None else f"{v / KIB:.2f}"


# =========================================================================== report


def medians(results: list[Tput]) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(path, direction) -> (median, min, max) Mbit/s over the runs that worked."""
    by: dict[tuple[str, str], list[float]] = {}
    for r in results:
        if not r.error:
            by.setdefault((r.path, r.direction), []).append(r.mbit)
    out = {}
    for k, v in by.items():
        v.sort()
        n = len(v)
        med = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
        out[k] = (med, v[0], v[-1])
    return out


def report(b: Bench, args: argparse.Namespace) -> None:
    print()
    base = {d: m for (path, d), (m, _, _) in medians(b.tput).items() if path == "loopback"}
    if b.tput:
        print(
            f"TCP throughput: iperf3, {args.streams} stream(s), {args.seconds} s after "
            f"{args.omit} s omitted, {os.cpu_count()} CPUs, router MTU {b.mtu or '-'}. "
            "CPU columns: % of one core."
        )
        rows = []
        for r in b.tput:
            path = (
                r.path
                + (f" #{r.run}" if args.repeat > 1 else "")
                + ("*" if r.background > args.quiet_threshold else "")
            )
            if r.error:
                rows.append([path, r.direction, "ERROR", *["-"] * 10])
                continue
            ratio = f"{r.mbit / base[r.direction]:.3f}" if base.get(r.direction) else "-"
            router = (
                " ".join(f"{k} {v:.0f}" for k, v in sorted(r.router_cpu.items()) if v >= 0.5) or "-"
            )
            rows.append(
                [
                    path,
                    r.direction,
                    f"{r.mbit:.1f}",
                    ratio,
                    "-" if r.retransmits is None else str(r.retransmits),
                    " ".join(f"{k} {v}" for k, v in r.drops.items() if v) or "-",
                    pct(r.cpu.get("router")),
                    router,
                    pct(r.cpu.get("wg-go")),
                    pct(r.cpu.get("iperf3 -c")),
                    pct(r.cpu.get("iperf3 -s")),
                    pct(r.cpu.get("other")),
                    pct(r.cpu.get("machine")),
                ]
            )
        print(
            table(
                [
                    "path",
                    "dir",
                    "Mbit/s",
                    "x loopback",
                    "retr",
                    "udp drops",
                    "router%",
                    "router by process",
                    "wg-go%",
                    "iperf-c%",
                    "iperf-s%",
                    "other%",
                    "busy%",
                ],
                rows,
            )
        )
        for r in b.tput:
            if not r.error and r.cpu.get("other", 0.0) >= 15.0:
                print(
                    f"  other% of {r.path} {r.direction} ({r.cpu['other']:.0f}%) mostly: "
                    + ", ".join(f"{n} {p:.0f}%" for n, p in r.others if p >= 1.0)
                )
        for info in b.infos:
            tcp = tcp_counters(info.get("counters") or {})
            if info.get("test") == "throughput" and tcp is not None:
                print(
                    f"  {info['mode']} router at exit: "
                    + ", ".join(f"{k} {v}" for k, v in tcp.items())
                )
        if any(r.background > args.quiet_threshold for r in b.tput):
            print(
                f"* the machine was already more than {args.quiet_threshold:g}% busy before "
                "this test: someone else's load; distrust it."
            )
    if b.mem:
        print()
        print(
            "memory per TCP flow: router user-space memory (sum over its processes), "
            "(state - before) / flows opened"
        )
        rows = []
        for m in b.mem:
            if not m.opened:
                rows.append([m.mode, str(m.flows), "0", *["-"] * 11])
                continue
            maps = _total(m.idle, "maps") - _total(m.before, "maps")
            maps_c = _total(m.closed, "maps") - _total(m.before, "maps") if m.closed else None
            fds = _total(m.idle, "fds") - _total(m.before, "fds")
            rows.append(
                [
                    m.mode,
                    str(m.flows),
                    str(m.opened),
                    f"{m.opened / m.open_seconds:.0f}" if m.open_seconds else "-",
                    f"{_total(m.before, 'pss') / KIB / KIB:.1f}",
                    f"{_total(m.idle, 'pss') / KIB / KIB:.1f}",
                    _kib_flow(m, "idle"),
                    _kib_flow(m, "idle", "uss"),
                    _kib_flow(m, "idle", "rss"),
                    _kib_flow(m, "touched") if m.touched else "-",
                    _kib_flow(m, "closed") if m.closed else "-",
                    f"{maps / m.opened:.2f}",
                    "-" if maps_c is None else f"{maps_c / m.opened:.2f}",
                    f"{fds / m.opened:.2f}",
                ]
            )
        print(
            table(
                [
                    "mode",
                    "flows",
                    "opened",
                    "open/s",
                    "before MiB",
                    "idle MiB",
                    "idle KiB/flow",
                    "USS",
                    "RSS",
                    f"after {args.touch} B",
                    "after close",
                    "maps/flow",
                    "maps after close",
                    "fds/flow",
                ],
                rows,
            )
        )
        print(
            "  MiB and KiB/flow are PSS (proportional set size: summed over the router's "
            "processes it is the physical memory they hold; USS double-counts pages whose "
            "copy-on-write sharing between supervisor and workers broke, RSS misses the "
            "copies) unless named USS/RSS.  'after close' = still held per flow once every "
            "connection closed (allocator retention or a leak); maps = memory mappings "
            "(vm.max_map_count caps them per process)."
        )
        for m in b.mem:
            if not m.opened:
                continue
            per_proc = ", ".join(
                f"{k} {(v['pss'] - m.before.get(k, {}).get('pss', 0)) / m.opened / KIB:.2f}"
                for k, v in sorted(m.idle.items())
            )
            kb, ki = m.kernel_before, m.kernel_idle
            kern = ", ".join(
                f"{k} {(ki[k] - kb[k]) / m.opened / KIB:.2f}"
                for k in ("slab", "sunreclaim", "tcp_mem")
                if k in kb and k in ki
            )
            print(f"  {m.mode}: idle KiB/flow by process (PSS): {per_proc}")
            print(
                f"  {m.mode}: kernel, NOT counted above (machine-wide, 3 sockets per flow: "
                f"guest, router's host socket, hold server): KiB/flow {kern or '-'}"
            )
            if "shmem" in kb and "shmem" in ki:
                shm = (ki["shmem"] - kb["shmem"]) / m.opened / KIB
                print(
                    f"  {m.mode}: machine-wide Shmem {shm:+.2f} KiB/flow (user pages of "
                    "shared mappings, counted above while mapped)"
                )
            if m.failed:
                print(f"  {m.mode}: connections that failed: {m.failed}")
            if m.opened and m.server_open != m.opened:
                print(f"  {m.mode}: the hold server held {m.server_open}, not {m.opened}")
            if m.touched and m.touch_ok != m.opened:
                print(f"  {m.mode}: only {m.touch_ok} flows completed the {args.touch} B echo")
            tcp = tcp_counters(m.counters)
            if tcp is not None:
                print(
                    f"  {m.mode}: router counters: " + ", ".join(f"{k} {v}" for k, v in tcp.items())
                )
            elif m.counters:
                print(f"  {m.mode}: the router printed no worker counters at exit")
        for m in b.mem:
            if m.error:
                print(f"  {m.mode}: ERROR {m.error}")
    for r in b.tput:
        if not r.profile:
            continue
        print(
            f"\npy-spy {r.path} {r.direction}: source lines on top of the stack, as a "
            "share of each process's busy samples"
        )
        print_profile(r.profile, r.router_cpu, funcs=True)
    for r in b.tput:
        if r.error:
            print(f"\nERROR {r.path} {r.direction}: {r.error}")
    summary(b, args)


def summary(b: Bench, args: argparse.Namespace) -> None:
    print("\nSUMMARY (targets from the TCP issue)")
    med = medians(b.tput)
    for mode in dict.fromkeys(r.path for r in b.tput if r.path.startswith("fwd ")):
        outbound = mode.removeprefix("fwd ")
        parts = []
        for d in ("up", "down"):
            if (mode, d) in med and (outbound, d) in med:
                f, o = med[(mode, d)][0], med[(outbound, d)][0]
                parts.append(f"{d} {f:.0f} vs {o:.0f} ({100 * (f - o) / o:+.0f} %)")
            else:
                parts.append(f"{d} no result")
        print(
            f"  inbound forward within 10 % of outbound, {outbound}: "
            f"{', '.join(parts)} Mbit/s (up: guest sends)"
        )
    for mode in dict.fromkeys(r.path for r in b.tput if r.path.startswith("workers=")):
        parts = []
        ok: bool | None = True
        for d in ("up", "down"):
            if (mode, d) not in med:
                parts.append(f"{d} no result")
                ok = None
                continue
            m, lo, hi = med[(mode, d)]
            parts.append(f"{d} {m:.0f}" + (f" ({lo:.0f}-{hi:.0f})" if args.repeat > 1 else ""))
            if ok and m < TARGET_MBIT:
                ok = False
        what = "median of " + str(args.repeat) + " runs, " if args.repeat > 1 else ""
        print(
            f"  throughput >= {TARGET_MBIT:.0f} Mbit/s each way, {mode}: {what}"
            f"{', '.join(parts)} Mbit/s -> "
            + ("MET" if ok else "NOT MET" if ok is False else "INCOMPLETE")
        )
    for mem in b.mem:
        v = mem.per_flow("idle")
        if v is None:
            print(f"  memory <= {TARGET_FLOW_KIB:.0f} KiB per idle flow, {mem.mode}: no result")
            continue
        uss = mem.per_flow("idle", "uss") or 0.0
        tail = ""
        if mem.touched:
            t = mem.per_flow("touched") or 0.0
            tail = (
                f"; after {args.touch} B each way {t / KIB:.1f} KiB "
                f"({'within' if t / KIB <= TARGET_FLOW_KIB else 'over'} target)"
            )
        if mem.closed:
            c = mem.per_flow("closed") or 0.0
            tail += f"; still held after close {c / KIB:.1f} KiB"
        print(
            f"  memory <= {TARGET_FLOW_KIB:.0f} KiB per idle flow, {mem.mode} ({mem.opened} flows):"
            f" PSS {v / KIB:.1f} KiB (USS {uss / KIB:.1f}) -> "
            f"{'MET' if v / KIB <= TARGET_FLOW_KIB else 'NOT MET'}{tail}"
        )
    ref = [(d, med[("wg-go<->wg-go", d)][0]) for d in ("up", "down") if ("wg-go<->wg-go", d) in med]
    if ref:
        print(
            "  kernel-path reference (wireguard-go both ends, kernel TCP): "
            + ", ".join(f"{d} {m:.0f} Mbit/s" for d, m in ref)
        )
    elif not {"reference", "throughput"} & args.skip:
        print("  kernel-path reference: not measured (see the error above)")
    tcp = b.tcp_config
    if tcp is None:
        print("  router TCP settings: unknown (wgslirp check-config failed)")
    else:
        sack = tcp.get("enable_sack")
        print(
            f"  router TCP settings (check-config): TCP_ENABLE_SACK={sack} ("
            + (
                "SACK negotiated when the guest offers it"
                if sack
                else "SACK not negotiated even though Linux guests offer it"
            )
            + f"), TCP_CC={tcp.get('cc')}, TCP_ACK_DELAY_MS={tcp.get('ack_delay_ms')}"
        )
    print(
        "  Kernel socket memory is not counted in the per-flow figures: it belongs to the "
        "host sockets (kernel), not to user space."
    )


# =========================================================================== main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--seconds",
        type=int,
        default=None,
        help="iperf3 measured seconds per test (default 6, --quick 3)",
    )
    p.add_argument(
        "--omit", type=int, default=1, help="iperf3 -O: seconds of slow start left out (default 1)"
    )
    p.add_argument("--streams", type=int, default=1, help="iperf3 -P (default 1)")
    p.add_argument(
        "--direction",
        choices=("outbound", "forward"),
        default="outbound",
        help="outbound: the guest connects out (default); forward: also, in the same "
        "router and run, over an inbound forward (WG_FORWARD_TCP: iperf3 server inside "
        "the guest, client on the host), printed next to the outbound rows",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="iperf3 runs per path and direction; the summary takes the median "
        "(default 1; 3 smooths where the scheduler puts the processes)",
    )
    p.add_argument("--workers", default="0,2", help="PROCESSOR_WORKERS values (default 0,2)")
    p.add_argument(
        "--family",
        default="4",
        help="address families inside the tunnel for the throughput rows: 4, 6 or 4,6 (default 4)",
    )
    p.add_argument(
        "--flows",
        type=int,
        default=None,
        help="idle flows for the memory test (default 10000, --quick 2000)",
    )
    p.add_argument(
        "--max-flows",
        type=int,
        default=20000,
        help="TCP_MAX_FLOWS and TCP_MAX_FLOWS_PER_PEER for the memory test's router",
    )
    p.add_argument(
        "--touch",
        type=int,
        default=64,
        help="bytes each flow echoes once after the idle measurement, then idles "
        "again (0 = skip that state; default 64)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=128,
        help="guest connects in progress at once (default 128)",
    )
    p.add_argument(
        "--open-timeout",
        type=float,
        default=180.0,
        help="longest the guest spends opening the flows (default 180 s)",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=2.0,
        help="seconds the flows stay idle before memory is sampled (default 2)",
    )
    p.add_argument(
        "--warm-flows",
        type=int,
        default=50,
        help="connections opened, touched and closed before 'before' (default 50)",
    )
    p.add_argument(
        "--skip",
        default="",
        help="comma list of parts to skip: throughput, memory, loopback, reference",
    )
    p.add_argument(
        "--client-sockbuf",
        type=int,
        default=0,
        metavar="BYTES",
        help="give every wireguard-go client's UDP socket BYTES of buffer, as "
        "wireguard-go 0.0.20230223 and later do themselves (7340032); default "
        "0 keeps Debian's build at the kernel default, whose drops under "
        "bursts make downloads vary",
    )
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the wireguard-go <-> wireguard-go reference",
    )
    p.add_argument(
        "--router-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the router, e.g. TCP_ENABLE_SACK=1 (repeatable)",
    )
    p.add_argument("--quick", action="store_true", help="3 s windows, 2,000 flows")
    p.add_argument("--json", metavar="FILE", default=None, help="also write results as JSON")
    add_rev_argument(p)
    p.add_argument(
        "--code",
        metavar="DIR",
        default=None,
        help="run the router from the wgslirp package in DIR (a patched copy for an "
        "experiment) instead of the working tree",
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        default=None,
        help="py-spy every router process during each tunnel window; collapsed "
        "stacks go to DIR and the top lines are printed",
    )
    add_quiet_options(p, what="iperf3 run", wait=20.0)
    a = p.parse_args(argv)
    if a.seconds is None:
        a.seconds = 3 if a.quick else 6
    if a.flows is None:
        a.flows = 2000 if a.quick else 10_000
    a.workers = [int(x) for x in a.workers.split(",") if x.strip()]
    a.family = [x.strip() for x in a.family.split(",") if x.strip()]
    if not a.family or set(a.family) - {"4", "6"}:
        p.error("--family must be 4, 6 or 4,6")
    a.skip = {x.strip() for x in a.skip.split(",") if x.strip()}
    if a.no_reference:
        a.skip.add("reference")
    unknown = a.skip - {"throughput", "memory", "loopback", "reference"}
    if unknown:
        p.error(f"--skip: unknown part(s) {', '.join(sorted(unknown))}")
    env = []
    for kv in a.router_env:
        k, eq, v = kv.partition("=")
        if not eq or not k:
            p.error(f"--router-env wants KEY=VALUE, got {kv!r}")
        env.append((k, v))
    a.router_env = env
    if not 1 <= a.seconds <= 60 or not 0 <= a.omit <= 10 or not 1 <= a.streams <= 16:
        p.error("--seconds must be 1..60, --omit 0..10, --streams 1..16")
    if not 1 <= a.repeat <= 10:
        p.error("--repeat must be 1..10")
    if any(w < 0 or w > 16 for w in a.workers):
        p.error("--workers must be 0..16")
    if not 1 <= a.flows <= 100_000 or not 1 <= a.concurrency <= 4096:
        p.error("--flows must be 1..100000 and --concurrency 1..4096")
    if not 0 <= a.touch <= 65536 or not 0 <= a.idle <= 60 or not 1 <= a.warm_flows <= 1000:
        p.error("--touch must be 0..65536, --idle 0..60, --warm-flows 1..1000")
    if not 1 <= a.open_timeout <= 900:
        p.error("--open-timeout must be 1..900")
    if a.profile is not None and Path(a.profile).exists() and not Path(a.profile).is_dir():
        p.error(f"--profile {a.profile}: exists and is not a directory")
    if a.code is not None and (
        a.rev is not None or not (Path(a.code) / "wgslirp" / "__init__.py").is_file()
    ):
        p.error("--code wants a directory holding a wgslirp package, and excludes --rev")
    if a.max_flows < a.flows + a.warm_flows:
        p.error("--max-flows must cover --flows plus --warm-flows")
    return a


def main(argv: list[str]) -> int:
    if argv and argv[0].startswith("guest-"):
        guest_main(argv)
        return 0
    args = parse_args(argv)
    if not start_controller(extra_binaries=["iperf3"]):
        return 2

    raise_nofile(args.flows + 256)  # children (iperf3, hold server) inherit it
    args.code_dir = None
    bench = Bench(args)
    t0 = time.monotonic()
    code = 0
    rev_code = contextlib.ExitStack()  # removes a --rev export at the end
    try:
        if args.code is not None:
            args.code_dir = str(Path(args.code).resolve())
            print(f"router code: {args.code_dir}", flush=True)
        elif args.rev is not None:
            args.code_dir = rev_code.enter_context(rev_exported(args.rev))
        else:
            print(router_code_note(), flush=True)
        bench.tcp_config = bench.effective_tcp_config()
        if "throughput" not in args.skip:
            port = free_tcp_port()
            with contextlib.ExitStack() as servers:
                server = servers.enter_context(Iperf3Server("127.0.0.1", port))
                server6 = None
                if "6" in args.family:
                    server6 = servers.enter_context(Iperf3Server("::1", free_tcp_port()))
                if "loopback" not in args.skip:
                    bench.run_loopback(server)
                for w in args.workers:
                    for fam in args.family:
                        try:
                            if fam == "6":
                                assert server6 is not None
                                bench.run_throughput(w, server6, v6=True)
                            else:
                                bench.run_throughput(w, server)
                        except (HarnessError, RuntimeError) as exc:
                            label = f"workers={w}" + (" ipv6" if fam == "6" else "")
                            print(f"{label} failed: {exc}", file=sys.stderr)
                            bench.tput.append(Tput(label, "up", error=str(exc)))
                            code = 1
            if "reference" not in args.skip:
                try:
                    bench.run_reference()
                except (HarnessError, RuntimeError) as exc:
                    print(f"reference failed: {exc}", file=sys.stderr)
                    bench.tput.append(Tput("wg-go<->wg-go", "up", error=str(exc)))
        if "memory" not in args.skip:
            for w in args.workers:
                bench.run_memory(w)
                if bench.mem[-1].error:
                    code = 1
    except KeyboardInterrupt:
        print(
            "\ninterrupted: everything started has been stopped; partial results follow",
            file=sys.stderr,
        )
        code = 130
    finally:
        rev_code.close()
    if args.json:  # first: a bug in the report must not lose the measurements
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": {
                        k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()
                    },
                    "throughput": [dataclasses.asdict(r) for r in bench.tput],
                    "memory": [dataclasses.asdict(m) for m in bench.mem],
                    "routers": bench.infos,
                    "tcp_config": bench.tcp_config,
                },
                f,
                indent=1,
                default=str,
            )
    report(bench, args)
    print(f"\n(total {time.monotonic() - t0:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
