#!/usr/bin/env python3
"""Many concurrent idle TCP connections through the real tunnel, and the router's memory
per idle flow.

A guest (Debian's wireguard-go + its own kernel, in a namespace) opens ``--flows``
connections (default 100,000) through a fresh wgslirp router to a host program that
accepts and holds them on 127.0.0.1, reached via the gateway address, and keeps them idle.
Printed: how many opened and how fast, how many were established at once (counted by the
guest's and the host's kernels, so one reset after it opened does not count), how many
were refused, the router's user-space memory (PSS and USS summed over its processes) per
idle flow, after minus before (before = after a warm-up of a few hundred connections,
opened and closed by the guest; the host program keeps its ends, so the router holds
them half-closed and the guest later reuses their ports), and its kernel mappings
(``/proc/<pid>/maps`` lines: rings that were an mmap each made two per connection, and
vm.max_map_count, 65,530 by default, then stopped a process near 32,000 connections).
Then the router is stopped (SIGTERM) while it holds them all: how long it took, whether
every process logged its exit counters, and how many guest connections it left
established (each should have been reset). A last ``summary:`` line has the figures.

Limits this needs and takes care of:

- file descriptors: one per connection in the guest, in the router process holding it
  and in the host program. RLIMIT_NOFILE (hard too, where the process may: as root with
  CAP_SYS_RESOURCE) is raised before anything starts, and children inherit it; where one
  process cannot hold them all, the guest and the host program are several processes and
  the router gets enough workers (PROCESSOR_WORKERS) that each holds its share (this
  machine's container: hard limit 20,000, no CAP_SYS_RESOURCE: 100,000 flows take 7);
- 4-tuples: a guest (and the router toward the host) has about 28,000 ephemeral ports
  (net.ipv4.ip_local_port_range) per destination, so connections are spread over
  ``ceil(flows / 20,000)`` host ports;
- the router's flow caps: TCP_MAX_FLOWS and TCP_MAX_FLOWS_PER_PEER are raised to the
  flow count (plus the warm-up).

Kernel socket memory (three sockets per connection: guest, router's host socket, host
program's) is kernel memory, not counted per flow; the machine's slab growth is printed for
scale. Nothing here asserts a figure.

    python scripts/bench_flows.py                      # 100,000 flows
    python scripts/bench_flows.py --flows 10000 --workers 2
    python scripts/bench_flows.py --rev HEAD~3         # router from a commit

The same file is also the guest and the host program (``bench_flows.py guest|hold ...``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import json
import os
import resource
import select
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PER_PORT = 20_000  # connections per host port (ephemeral ports per destination: ~28,000)
KIB = 1024


def raise_nofile(need: int) -> int:
    """Soft and, as root, hard RLIMIT_NOFILE up to `need` (capped by fs.nr_open)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if need <= soft:
        return soft
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    want = min(need, nr_open)
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
        return want
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


# =========================================================================== guest


def guest_main(host: str, ports: list[int], n: int, concurrency: int, timeout: float) -> None:
    """Open `n` connections round-robin over `ports`, at most `concurrency` pending; report;
    hold them until stdin says ``close`` (or closes)."""
    raise_nofile(n + 256)
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    pending = 0
    errors: dict[str, int] = {}
    started = 0
    t0 = time.monotonic()
    deadline = t0 + timeout

    def fail(s: socket.socket, err: int) -> None:
        name = errno.errorcode.get(err, str(err))
        errors[name] = errors.get(name, 0) + 1
        s.close()

    while (started < n or pending) and time.monotonic() < deadline:
        while started < n and pending < concurrency:
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                name = errno.errorcode.get(exc.errno or 0, "socket")
                errors[name] = errors.get(name, 0) + n - started
                started = n
                break
            s.setblocking(False)
            err = s.connect_ex((host, ports[started % len(ports)]))
            started += 1
            if err == 0:
                socks.append(s)
            elif err == errno.EINPROGRESS:
                sel.register(s, selectors.EVENT_WRITE)
                pending += 1
            else:
                fail(s, err)
        for key, _ in sel.select(0.2):
            s = key.fileobj  # type: ignore[assignment]
            sel.unregister(s)
            pending -= 1
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                fail(s, err)
            else:
                socks.append(s)
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj)
        fail(key.fileobj, errno.ETIMEDOUT)  # type: ignore[arg-type]
    emit({"phase": "open", "ok": len(socks), "errors": errors, "seconds": time.monotonic() - t0})
    while True:
        line = sys.stdin.readline()
        if not line or line.strip() == "close":
            break
    t1 = time.monotonic()
    for s in socks:
        s.close()
    emit({"phase": "close", "closed": len(socks), "seconds": time.monotonic() - t1})


# =========================================================================== host program


def hold_main(nports: int, need: int) -> None:
    """Listen on `nports` ports of 127.0.0.1, accept and hold; ``count`` on stdin prints
    how many are held."""
    raise_nofile(need + 256)
    sel = selectors.DefaultSelector()
    lsocks = []
    for _ in range(nports):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0))
        ls.listen(4096)
        ls.setblocking(False)
        sel.register(ls, selectors.EVENT_READ)
        lsocks.append(ls)
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    held: list[socket.socket] = []
    errors = 0
    emit({"ports": [ls.getsockname()[1] for ls in lsocks]})
    while True:
        for key, _ in sel.select(1.0):
            if key.data == "stdin":
                cmd = sys.stdin.readline().strip()
                if cmd == "count":
                    emit({"held": len(held), "errors": errors})
                elif cmd == "release":
                    for c in held:
                        c.close()
                    emit({"released": len(held)})
                    held.clear()
                elif cmd in ("", "quit"):
                    return
                continue
            lsock = key.fileobj
            assert isinstance(lsock, socket.socket)
            for _ in range(512):
                try:
                    c, _ = lsock.accept()
                except BlockingIOError:
                    break
                except OSError:
                    errors += 1
                    break
                held.append(c)


# =========================================================================== controller


def router_memory(pid: int) -> dict[str, dict[str, int]]:
    """Process label -> pss/uss/rss bytes and kernel mappings, over the router's tree."""
    import psutil

    from wgslirp_testkit.sampling import router_label, tree_processes

    out: dict[str, dict[str, int]] = {}
    for p in tree_processes(pid):
        try:
            m = p.memory_full_info()
            fds = p.num_fds()
            maps = len(Path(f"/proc/{p.pid}/maps").read_text().splitlines())
            label = router_label(p.pid, p.name(), pid, other=p.name())
        except (psutil.Error, OSError):
            continue
        out[label] = {"pss": m.pss, "uss": m.uss, "rss": m.rss, "maps": maps, "fds": fds}
    return out


def stable_memory(pid: int, limit: float = 10.0) -> dict[str, dict[str, int]]:
    """Sample until two totals (USS) a second apart agree within 256 KiB."""
    last = router_memory(pid)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(1.0)
        cur = router_memory(pid)
        if abs(total(cur, "uss") - total(last, "uss")) <= 256 * KIB:
            return cur
        last = cur
    return last


def total(snap: dict[str, dict[str, int]], key: str) -> int:
    return sum(v[key] for v in snap.values())


def slab() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1]) * KIB
    return 0


class Lines:
    """JSON lines from a child's stdout, with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None and proc.stdin is not None
        self.proc = proc

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"no answer from {self.proc.args!r} in {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args!r} exited ({self.proc.poll()})")
        out: dict[str, Any] = json.loads(line)
        return out

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()


def subprocess_run(cmd: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)


def established(run: Any, ports: list[int] | None) -> int:
    """Established TCP sockets where `run` runs commands (the guest's namespace: all of
    them; the host: those of the host programs' `ports`). Counted by the kernel, so a
    connection reset after it opened is not counted as held."""
    cmd = ["ss", "-Htn", "state", "established"]
    if ports:
        cmd.append("( " + " or ".join(f"sport = :{p}" for p in ports) + " )")
    out = run(cmd, timeout=60).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def full_output(r: Any) -> str:
    """The router's whole log (RouterProcess.output() keeps the last 20,000 characters:
    fewer than eight processes' exit counters)."""
    out: str = r.stdout() + r.stderr()
    return out


def kernel_drops() -> tuple[int, int]:
    """Machine-wide: UDP datagrams dropped for a full receive buffer, and packets dropped
    for a full per-CPU input backlog (netdev_max_backlog)."""
    udp = 0
    lines = Path("/proc/net/snmp").read_text().splitlines()
    for head, vals in itertools.pairwise(lines):
        if head.startswith("Udp:") and vals.startswith("Udp:") and head != vals:
            udp = int(dict(zip(head.split(), vals.split(), strict=True))["RcvbufErrors"])
            break
    backlog = sum(
        int(line.split()[1], 16) for line in Path("/proc/net/softnet_stat").read_text().splitlines()
    )
    return udp, backlog


def stop_holding(r: Any, c: Any) -> tuple[int, float, str, int]:
    """SIGTERM the router while it holds every connection: each worker resets its
    guests' connections on the way out. Exit code, seconds, output, and how many guest
    connections were still established 10 s later (not told)."""
    drops0 = kernel_drops()
    t0 = time.monotonic()
    code = r.terminate(timeout=60)
    took = time.monotonic() - t0
    drops1 = kernel_drops()
    print(
        "  kernel drops during the stop: UDP receive buffers "
        f"{drops1[0] - drops0[0]:,}, softnet backlog {drops1[1] - drops0[1]:,} "
        "(machine-wide: wireguard-go's socket, and its writes to the guest's TUN)",
        flush=True,
    )
    left = established(c.run, None)
    deadline = time.monotonic() + 10.0
    while left > 0 and time.monotonic() < deadline:
        time.sleep(1.0)
        left = established(c.run, None)
    return code, took, full_output(r), left


def stop_after_closing(
    r: Any, gs: list[Lines], holds: list[Lines], before: dict[str, dict[str, int]], close: Any
) -> tuple[int, float, str, int]:
    """Close both ends first, wait until the router's flows are gone (its descriptors say
    when), then stop it."""
    closed, took = close(gs)
    print(f"  closed {closed:,} in {took:.1f} s", flush=True)
    for h in holds:  # the host side closes too, so the router's flows end
        h.say("release")
        h.read(60)
    base = sum(v["fds"] for v in before.values())
    deadline = time.monotonic() + 180.0
    while time.monotonic() < deadline:
        if sum(v["fds"] for v in router_memory(r.pid).values()) <= base + 64:
            break
        time.sleep(1.0)
    time.sleep(3.0)  # the endpoints' TIME_WAIT (2 s)
    t0 = time.monotonic()
    code = r.terminate(timeout=120)
    return code, time.monotonic() - t0, full_output(r), 0


def split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def run(args: argparse.Namespace) -> int:
    from wgslirp_testkit.bench import rev_exported, router_code_note, start_controller
    from wgslirp_testkit.ports import free_udp_port
    from wgslirp_testkit.proc import die_with_parent, stop_process
    from wgslirp_testkit.router import (
        GATEWAY,
        LISTENING,
        RouterProcess,
        base_env,
        client_from_router_output,
        parse_exit_counters,
        router_cmd,
        router_cwd,
        summed_exit_counters,
    )
    from wgslirp_testkit.wgclient import grow_client_buffers, wait_tunnel

    if not start_controller(tunnel=True):
        return 1
    n, warm = args.flows, args.warm
    limit = raise_nofile(n + warm + 4096)
    # What one process may hold: the guest's and the host program's connections are split
    # over as many processes as that takes, and so are the router's (PROCESSOR_WORKERS).
    per_proc = limit - 1024
    if per_proc < 1000:
        print(f"RLIMIT_NOFILE is only {limit}", file=sys.stderr)
        return 1
    procs = -(-(n + warm) // per_proc)
    workers = args.workers
    if workers is None:
        # flows spread over workers by hash: a quarter's margin over the even share
        workers = 0 if procs == 1 else -(-(n + warm) * 5 // (4 * per_proc))
    elif (n + warm) / max(workers, 1) * 1.1 > per_proc:
        print(
            f"{n:,} flows need more than {workers} workers with RLIMIT_NOFILE {limit:,} "
            "(leave --workers out to choose)",
            file=sys.stderr,
        )
        return 1
    ports_each = max(1, -(-(n + warm) // (procs * PER_PORT)))
    script = str(Path(__file__).resolve())
    env_py = dict(os.environ, PYTHONPATH=str(REPO))
    holds: list[Lines] = []
    try:
        for _ in range(procs):
            holds.append(
                Lines(
                    subprocess.Popen(
                        [sys.executable, script, "hold", str(ports_each), str(per_proc)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                        env=env_py,
                        start_new_session=True,
                        preexec_fn=die_with_parent,
                    )
                )
            )
        ports = [p for h in holds for p in h.read(10)["ports"]]
        with contextlib.ExitStack() as stack:
            code_dir = stack.enter_context(rev_exported(args.rev))
            if args.rev is None:
                print(router_code_note(), flush=True)
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-flows-")))
            port = free_udp_port()
            env = base_env(tmp, port, workers) | {
                "TCP_MAX_FLOWS": str(n + warm + 64),
                "TCP_MAX_FLOWS_PER_PEER": str(n + warm + 64),
            }
            r = stack.enter_context(RouterProcess(router_cmd(), env, cwd=router_cwd(env, code_dir)))
            r.wait_for_line(LISTENING, timeout=30)
            c = stack.enter_context(client_from_router_output(r, port, log_level="error"))
            wait_tunnel(c, GATEWAY, interval=0.1)
            if args.client_sockbuf:
                print(grow_client_buffers(c.pid, c.udp_port(), args.client_sockbuf), flush=True)

            def guests(count: int) -> list[Lines]:
                out = []
                for share in split(count, procs):
                    p: subprocess.Popen[str] = c.popen(
                        [
                            sys.executable,
                            script,
                            "guest",
                            GATEWAY,
                            ",".join(map(str, ports)),
                            str(share),
                            str(max(1, args.concurrency // procs)),
                            str(args.timeout),
                        ],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                        env=env_py,
                    )
                    out.append(Lines(p))
                return out

            def opened_by(gs: list[Lines], timeout: float) -> tuple[int, dict[str, int], float]:
                errors: dict[str, int] = {}
                ok, seconds = 0, 0.0
                for g in gs:
                    o = g.read(timeout)
                    ok += int(o["ok"])
                    seconds = max(seconds, float(o["seconds"]))
                    for k, v in o["errors"].items():
                        errors[k] = errors.get(k, 0) + v
                return ok, errors, seconds

            def close(gs: list[Lines]) -> tuple[int, float]:
                for g in gs:
                    g.say("close")
                res = [g.read(120) for g in gs]
                return sum(x["closed"] for x in res), max(x["seconds"] for x in res)

            print(
                f"PROCESSOR_WORKERS={workers}: {n:,} idle connections over {len(ports)} host "
                f"ports; RLIMIT_NOFILE {limit:,}, so {procs} guest and host process(es)",
                flush=True,
            )
            gs = guests(warm)  # code paths, imports and allocator pools in "before"
            opened_by(gs, args.timeout + 30)
            close(gs)
            time.sleep(3.0)  # the endpoints' TIME_WAIT (2 s)
            before = stable_memory(r.pid)
            slab0 = slab()
            gs = guests(n)
            opened, errors, seconds = opened_by(gs, args.timeout + 60)
            time.sleep(args.idle)
            held_guest = established(c.run, None)
            held_host = established(subprocess_run, ports)
            idle = stable_memory(r.pid)
            slab1 = slab()
            refused = errors.get("ECONNREFUSED", 0)
            print(
                f"  opened {opened:,} of {n:,} in {seconds:.1f} s "
                f"({opened / max(seconds, 1e-9):,.0f}/s); errors {errors or 'none'}; "
                f"established at once: {held_guest:,} in the guest, "
                f"{held_host:,} in the host programs (the warm-up's are half-closed)",
                flush=True,
            )
            per_pss = 0.0
            if opened:
                for key in ("pss", "uss"):
                    per = (total(idle, key) - total(before, key)) / opened
                    per_pss = per if key == "pss" else per_pss
                    print(f"  router {key.upper()} per idle flow: {per / KIB:.2f} KiB", flush=True)
                for name in sorted(idle):
                    b = before.get(name, {"pss": 0, "maps": 0})
                    print(
                        f"    {name:<8} PSS {b['pss'] / 2**20:7.1f} -> "
                        f"{idle[name]['pss'] / 2**20:7.1f} MiB, mappings {b['maps']:,} -> "
                        f"{idle[name]['maps']:,}",
                        flush=True,
                    )
                print(
                    f"  kernel slab +{(slab1 - slab0) / opened / KIB:.1f} KiB per flow "
                    "(three sockets each: guest, router, host; for scale)",
                    flush=True,
                )
            maps0 = max(v["maps"] for v in before.values())
            maps1 = max(v["maps"] for v in idle.values())
            if args.close_first:
                stopped = stop_after_closing(r, gs, holds, before, close)
            else:
                stopped = stop_holding(r, c)
                close(gs)
                for h in holds:
                    h.say("release")
                    h.read(60)
            code, took, output, left = stopped
            counters = summed_exit_counters(output)
            noted = [ln for ln in output.splitlines() if " WARNING " in ln or " ERROR " in ln]
            for line in noted[:10]:
                print(f"  router: {line}", flush=True)
            if code != 0:
                print(f"  router exited with {code}", flush=True)
            lost_counters = any("did not stop in time" in line for line in noted)
            roles = parse_exit_counters(output)
            print(f"  exit counters logged by {', '.join(sorted(roles)) or 'nobody'}", flush=True)
            if counters and not lost_counters:
                print(
                    f"  router exit counters: "
                    f"tcp_opened {counters.get('tcp_opened', 0):,}, refused at the cap "
                    f"{counters.get('tcp_refused_cap', 0):,}, refused by RST "
                    f"{counters.get('tcp_refused_rst', 0):,} / ICMP "
                    f"{counters.get('tcp_refused_icmp', 0):,}, dials failed "
                    f"{counters.get('tcp_dials_failed', 0):,}, socket errors "
                    f"{counters.get('socket_errors', 0):,}, stray RSTs "
                    f"{counters.get('tcp_rst_sent', 0):,}, ring/egress full "
                    f"{counters.get('ring_full_dropped', 0):,}/{counters.get('egress_full', 0):,}, "
                    f"guests not told at stop {counters.get('tcp_close_rst_lost', 0):,}, "
                    f"ingress send errors {counters.get('send_errors', 0):,}",
                    flush=True,
                )
            if not args.close_first:
                print(
                    f"  stopped holding them in {took:.1f} s (SIGTERM to exit "
                    f"{code}); exit counters {'LOST' if lost_counters else 'logged'}; "
                    f"guest connections left established: {left:,}",
                    flush=True,
                )
            print(
                f"summary: {n:,} attempted, {held_guest:,} established at once "
                f"(guest side), {refused:,} refused; router PSS {per_pss / KIB:.2f} KiB per "
                f"idle flow; mappings per process at most {maps0:,} -> {maps1:,}; "
                + (
                    ""
                    if args.close_first
                    else f"stopped holding them in {took:.1f} s, {left:,} guests not reset; "
                )
                + f"exit counters from {len(roles)} of {max(workers, 1) + 1} "
                "processes (ingress, workers)",
                flush=True,
            )
        return 0 if opened == n else 2
    finally:
        for h in holds:
            with contextlib.suppress(OSError):
                h.say("quit")
            stop_process(h.proc, timeout=5.0, group=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "guest":
        a = sys.argv[2:]
        guest_main(a[0], [int(p) for p in a[1].split(",")], int(a[2]), int(a[3]), float(a[4]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "hold":
        hold_main(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="PROCESSOR_WORKERS (default: 0 if one process may hold every flow's socket, "
        "else enough workers for RLIMIT_NOFILE)",
    )
    ap.add_argument("--warm", type=int, default=500, help="warm-up connections (default 500)")
    ap.add_argument("--concurrency", type=int, default=512, help="connects pending at once")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to open them all")
    ap.add_argument("--idle", type=float, default=3.0, help="seconds idle before measuring")
    ap.add_argument("--rev", default=None, help="run the router from this git revision")
    ap.add_argument(
        "--close-first",
        action="store_true",
        help="close both ends and let the router's flows end before stopping it (default: "
        "stop it while it holds every connection, and see every guest reset)",
    )
    ap.add_argument(
        "--client-sockbuf",
        type=int,
        default=32 << 20,
        help="wireguard-go's UDP socket buffers, bytes (default 32 MiB; Debian's build keeps "
        "208 KiB, newer ones set 7 MiB, which dropped 6,251 of the 100,000 RSTs of a stop "
        "while it shared 2 cores with 7 workers); 0 leaves them",
    )
    args = ap.parse_args()
    if not 1 <= args.flows <= 1_000_000:
        ap.error("--flows must be 1..1000000")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
