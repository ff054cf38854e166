"""Helpers shared by the end-to-end benchmarks in scripts/ (not a public API).

What lives here:

- :func:`install_interrupt_handlers`: the first SIGINT/SIGTERM/SIGHUP raises
  ``KeyboardInterrupt`` (so every ``with`` block and ``finally`` cleans up); later ones are
  ignored, so an impatient second Ctrl-C cannot interrupt the cleanup half-way.
- :func:`start_controller`: both of those, and a check for root, TUN and the tools a tunnel
  needs.
- :class:`ForkedServer`: a server loop in a forked process with shared counters, as a
  context manager (started on entry; terminated, killed if need be, sockets closed on exit).
- :class:`UdpServer`: a UDP sink or echo on 127.0.0.1 in a forked process with a tight
  non-blocking receive loop and shared counters.  The harness's ``UdpSink``/``UdpEcho`` are
  threads of the calling process doing one ``select`` per datagram, which caps a loopback
  baseline and competes with the benchmark's own bookkeeping for the GIL.
- :class:`CpuMeter`: CPU seconds of named process groups (e.g. a router's process tree) and of
  the whole machine between two snapshots, as percent of one core; :func:`split_cpu` turns
  them into the benchmarks' router/other columns.
- :func:`udp_socket_drops`: per-socket receive-buffer drops from ``/proc/net/udp``.
- :class:`LineReader`: read a child's stdout line by line with a deadline.
- :func:`spawn`: start a child here or in a client's namespace; :func:`stop_popen`: SIGTERM,
  wait, SIGKILL a child (and its session) by PID; :func:`stop_and_close` also closes its pipes.
- :func:`export_rev`/:func:`rev_exported`: the wgslirp package of a git revision, for
  ``--rev``; :func:`router_cwd`: where a router runs from that code;
  :func:`pinged_client`: a router's wireguard-go client, checked with a ping.
- :func:`parse_exit_counters`: the counters a router logs when it stops.
- :func:`table`: plain-text table; :func:`print_profile`: a py-spy summary.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import linecache
import multiprocessing as mp
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Self

import psutil

from wgslirp_testkit.netns import require_root_and_tun

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- signals

_interrupted = False


def install_interrupt_handlers() -> None:
    """First SIGINT/SIGTERM/SIGHUP raises KeyboardInterrupt; later ones are ignored."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        global _interrupted
        if _interrupted:
            print(
                f"\n(got {signal.Signals(signum).name} again; still cleaning up)",
                file=sys.stderr,
                flush=True,
            )
            return
        _interrupted = True
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def interrupted() -> bool:
    return _interrupted


def start_controller(tunnel: bool = True, extra_binaries: Sequence[str] = ()) -> bool:
    """Set up a benchmark's controller process (:func:`install_interrupt_handlers`) and, with
    ``tunnel``, check that this machine can run one: root, a usable /dev/net/tun, the
    harness's tools plus ``extra_binaries``.  False (after saying why on stderr) when it
    cannot."""
    install_interrupt_handlers()
    if not tunnel:
        return True
    why = require_root_and_tun(extra_binaries)
    if why is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return False
    return True


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (use as Popen's preexec_fn too)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)


# --------------------------------------------------------------------------- processes


def spawn(argv: Sequence[str], ns: Any = None, **kw: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside the namespace of ``ns`` (a harness WgClient), or here: in a
    session of its own, stdin from /dev/null, killed when we die.  ``kw`` go to Popen."""
    if ns is not None:
        proc: subprocess.Popen[bytes] = ns.popen(argv, **kw)
        return proc
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent, **kw
    )


def stop_popen(proc: subprocess.Popen[Any], timeout: float = 2.0) -> None:
    """Stop a child we started (by PID; its session too if it leads one)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    # the child was started with start_new_session: its PGID is its PID, and while it is
    # unreaped (or has live members) that ID cannot belong to anyone else
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def stop_and_close(proc: subprocess.Popen[Any]) -> None:
    """:func:`stop_popen`, then close our ends of the child's pipes."""
    stop_popen(proc)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


class LineReader:
    """Lines of a pipe, each read bounded by a deadline (select + os.read)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def readline(self, timeout: float) -> str | None:
        """The next line without its newline; None on EOF or when the time is up."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if self.eof or left <= 0:
                return None
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
                if self.buf:
                    self.buf += b"\n"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("utf-8", "replace")


# --------------------------------------------------------------------------- forked servers


class ForkedServer:
    """A server loop in its own forked process, as a context manager.

    A subclass opens its sockets (closing them itself if that fails), then calls
    ``super().__init__``: the child will run ``target(counters, *args)``, where ``counters``
    (also ``self.counters``) are ``n_counters`` int64s in shared memory for it to update.
    Entering starts the process; :meth:`close` (and leaving) stops it, SIGTERM then SIGKILL,
    waiting ``join_timeout`` s after each, and closes the parent's copies of the sockets
    through the :meth:`_close_socks` hook, which also runs if the start fails.
    """

    def __init__(
        self,
        target: Callable[..., None],
        args: tuple[Any, ...],
        name: str,
        n_counters: int,
        join_timeout: float = 2.0,
    ) -> None:
        ctx = mp.get_context("fork")
        self.counters = ctx.RawArray("q", n_counters)
        self.join_timeout = join_timeout
        self._proc = ctx.Process(target=target, args=(self.counters, *args), daemon=True, name=name)

    def _close_socks(self) -> None:
        """Close the sockets handed to the child (our copies of them)."""
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self._proc.pid is not None
        return self._proc.pid

    def __enter__(self) -> Self:
        try:
            self._proc.start()
        except BaseException:
            self._close_socks()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._proc.pid is not None:
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(self.join_timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(self.join_timeout)
        self._close_socks()


def _serve(counters: Any, sock: socket.socket, echo: bool, lifetime: float) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    buf = bytearray(65535)
    mv = memoryview(buf)
    recv_into, recvfrom_into, sendto = sock.recv_into, sock.recvfrom_into, sock.sendto
    packets = nbytes = errors = 0
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        r, _, _ = select.select([sock], [], [], 0.2)
        if not r:
            continue
        for _ in range(512):
            try:
                if echo:
                    n, addr = recvfrom_into(buf)
                    try:
                        sendto(mv[:n], addr)
                    except OSError:
                        errors += 1
                else:
                    n = recv_into(buf)
            except BlockingIOError:
                break
            except OSError:
                errors += 1
                break
            packets += 1
            nbytes += n
            if not packets & 63:
                counters[0], counters[1] = packets, nbytes
        counters[0], counters[1], counters[2] = packets, nbytes, errors


class UdpServer(ForkedServer):
    """A UDP sink (``echo=False``) or echo on ``host`` in its own forked process.

    ``packets``/``nbytes`` are read from shared memory; they lag by at most 64 datagrams.
    """

    def __init__(
        self, echo: bool, host: str = "127.0.0.1", rcvbuf: int = 4 << 20, lifetime: float = 900.0
    ) -> None:
        self.echo = echo
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for opt, fallback, size in (
                (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF, rcvbuf),
                (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF, rcvbuf),
            ):
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, opt or fallback, size)
                except PermissionError:
                    self.sock.setsockopt(socket.SOL_SOCKET, fallback, size)
            self.sock.bind((host, 0))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.port: int = self.sock.getsockname()[1]
        super().__init__(
            _serve, (self.sock, echo, lifetime), "bench-echo" if echo else "bench-sink", 3
        )

    def _close_socks(self) -> None:
        self.sock.close()

    @property
    def packets(self) -> int:
        return int(self.counters[0])

    @property
    def nbytes(self) -> int:
        return int(self.counters[1])

    def settle(self, quiet: float = 0.3, limit: float = 3.0) -> int:
        """Wait until the packet count stops moving for ``quiet`` s (at most ``limit`` s)."""
        last, since = self.packets, time.monotonic()
        deadline = since + limit
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now_count = self.packets
            if now_count != last:
                last, since = now_count, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last


# --------------------------------------------------------------------------- CPU


def tree_processes(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants ([] if ``pid`` is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def process_tree(pid: int) -> dict[int, str]:
    """PID -> name for ``pid`` and all its descendants (that still exist)."""
    out: dict[int, str] = {}
    for p in tree_processes(pid):
        with contextlib.suppress(psutil.Error):
            out[p.pid] = p.name()
    return out


def router_label(pid: int, name: str, root: int, other: str = "other") -> str:
    """A router process's short name: ``main`` for the supervisor ``root`` (or the only
    process with PROCESSOR_WORKERS=0, which keeps python's name), ``ingress``/``wN`` for
    ``wgslirp-*`` processes, else ``other`` (e.g. multiprocessing's resource tracker)."""
    if pid == root:
        return "main"
    return name.removeprefix("wgslirp-") if name.startswith("wgslirp-") else other


def _cpu_seconds(pid: int) -> float | None:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)


@dataclass
class CpuSnapshot:
    when: float
    per_pid: dict[int, float]
    all_pids: dict[int, float]
    machine_ticks: float


def _all_cpu_seconds() -> dict[int, float]:
    out: dict[int, float] = {}
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = float(t.user + t.system)
    return out


def _ticks_busy() -> float:
    m = psutil.cpu_times()
    return float(
        sum(m)
        - m.idle
        - getattr(m, "iowait", 0.0)
        - getattr(m, "guest", 0.0)
        - getattr(m, "guest_nice", 0.0)
    )


@dataclass
class CpuMeter:
    """CPU use of labelled processes between two snapshots, in percent of one core.

    ``groups`` maps a label to PIDs (e.g. ``{"ingress": [..], "wg-go": [..]}``); a process
    that exits in between counts up to its last sample.  The machine total is the sum over
    every process, from the same per-task run times: ``/proc/stat``'s tick sampling was seen
    to under-count a paced workload by a factor of four on this VM.
    """

    groups: dict[str, list[int]] = field(default_factory=dict)

    def add(self, label: str, pids: Iterable[int]) -> None:
        self.groups.setdefault(label, []).extend(pids)

    def add_router(self, procs: dict[int, str], root: int) -> None:
        """One group ``router:LABEL`` per router process (``procs``: PID -> name, as from
        :func:`process_tree` of ``root``; labels from :func:`router_label`)."""
        for pid, name in sorted(procs.items()):
            self.add("router:" + router_label(pid, name, root), [pid])

    def router_targets(self) -> dict[str, int]:
        """Label -> PID of the router's own processes (for :class:`PySpy`)."""
        return {
            k.removeprefix("router:"): pids[0]
            for k, pids in self.groups.items()
            if k.startswith("router:") and k != "router:other"
        }

    def snapshot(self) -> CpuSnapshot:
        every = _all_cpu_seconds()
        per_pid: dict[int, float] = {}
        for pids in self.groups.values():
            for pid in pids:
                s = every.get(pid)
                if s is None:
                    s = _cpu_seconds(pid)
                if s is not None:
                    per_pid[pid] = s
        return CpuSnapshot(time.monotonic(), per_pid, every, _ticks_busy())

    def percent(self, a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
        """Label -> % of one core; plus ``machine`` (every process on the machine: 200 = both
        cores of a 2-core box) and ``machine_ticks`` (the same from /proc/stat)."""
        dt = max(b.when - a.when, 1e-9)
        out: dict[str, float] = {}
        for label, pids in self.groups.items():
            used = 0.0
            for pid in pids:
                if pid in a.per_pid:
                    used += b.per_pid.get(pid, a.per_pid[pid]) - a.per_pid[pid]
            out[label] = 100.0 * used / dt
        total = 0.0
        for pid, sec in b.all_pids.items():
            total += sec - a.all_pids.get(pid, 0.0)  # a process born in between: all of it
        out["machine"] = 100.0 * total / dt
        out["machine_ticks"] = 100.0 * (b.machine_ticks - a.machine_ticks) / dt
        return out

    def top_others(
        self, a: CpuSnapshot, b: CpuSnapshot, n: int = 3, exclude: Iterable[int] = ()
    ) -> list[tuple[str, float]]:
        """The ``n`` busiest processes outside the groups: [(name[pid], % of one core)]."""
        dt = max(b.when - a.when, 1e-9)
        ours = {pid for pids in self.groups.values() for pid in pids} | set(exclude)
        used = sorted(
            (
                (sec - a.all_pids.get(pid, 0.0), pid)
                for pid, sec in b.all_pids.items()
                if pid not in ours
            ),
            reverse=True,
        )[:n]
        out = []
        for sec, pid in used:
            if sec <= 0:
                break
            try:
                name = psutil.Process(pid).name()
            except psutil.Error:
                name = "?"
            out.append((f"{name}[{pid}]", 100.0 * sec / dt))
        return out


def split_cpu(
    meter: CpuMeter, a: CpuSnapshot, b: CpuSnapshot, router: bool
) -> tuple[dict[str, float], dict[str, float], list[tuple[str, float]]]:
    """A benchmark's CPU columns between two snapshots: (router processes by label, the other
    groups plus ``machine``, ``other`` = what no group was charged for and, if ``router``,
    ``router`` = their sum, the busiest processes outside the groups and this one)."""
    pct = meter.percent(a, b)
    router_cpu = {k.removeprefix("router:"): v for k, v in pct.items() if k.startswith("router:")}
    cpu = {k: v for k, v in pct.items() if not k.startswith("router:")}
    ours = sum(v for k, v in pct.items() if k not in ("machine", "machine_ticks"))
    cpu["other"] = max(0.0, pct["machine"] - ours)
    others = meter.top_others(a, b, exclude=(os.getpid(),))
    if router:
        cpu["router"] = sum(router_cpu.values())
    return router_cpu, cpu, others


def machine_busy(interval: float) -> float:
    """CPU time of every process over ``interval`` s, in percent of one core."""
    a, t0 = _all_cpu_seconds(), time.monotonic()
    time.sleep(interval)
    b, dt = _all_cpu_seconds(), time.monotonic() - t0
    return 100.0 * sum(v - a.get(pid, 0.0) for pid, v in b.items()) / dt


def wait_quiet(threshold: float = 25.0, max_wait: float = 10.0, sample: float = 0.25) -> float:
    """Wait (at most ``max_wait`` s) until the machine is busier than ``threshold`` % of one
    core no more; return the last sample.  Other people's benchmarks on a 2-core box would
    otherwise be measured as ours."""
    deadline = time.monotonic() + max_wait
    busy = machine_busy(sample)
    while busy > threshold and time.monotonic() < deadline:
        busy = machine_busy(sample)
    return busy


# --------------------------------------------------------------------------- /proc/net/udp


def _hexaddr(text: str) -> tuple[str, int]:
    ip, port = text.split(":")
    return socket.inet_ntoa(struct.pack("<I", int(ip, 16))), int(port, 16)


@dataclass(frozen=True)
class UdpSocketInfo:
    local: tuple[str, int]
    remote: tuple[str, int]
    rx_queue: int
    inode: int
    drops: int


def udp_sockets(path: str = "/proc/net/udp") -> list[UdpSocketInfo]:
    """IPv4 UDP sockets of the current network namespace."""
    out = []
    try:
        lines = Path(path).read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        if len(f) < 13:
            continue
        out.append(
            UdpSocketInfo(
                _hexaddr(f[1]), _hexaddr(f[2]), int(f[4].split(":")[1], 16), int(f[9]), int(f[12])
            )
        )
    return out


def udp_socket_drops(match: Callable[[UdpSocketInfo], bool]) -> dict[int, int]:
    """inode -> receive drops of every socket ``match`` selects (diff two calls per inode)."""
    return {s.inode: s.drops for s in udp_sockets() if match(s)}


def drops_between(a: dict[int, int], b: dict[int, int]) -> int:
    return sum(v - a.get(k, 0) for k, v in b.items())


# --------------------------------------------------------------------------- router code


def export_rev(rev: str, dest: Path) -> str:
    """Extract the wgslirp package of git revision ``rev`` into ``dest``; its full hash."""
    full = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", rev + "^{commit}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    with subprocess.Popen(
        ["git", "-C", str(REPO), "archive", "--format=tar", full, "wgslirp"], stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            tar.extractall(dest, filter="data")
        if proc.wait(30) != 0:
            raise RuntimeError(f"git archive {rev} failed")
    return full


def add_rev_argument(p: Any) -> None:
    """The ``--rev`` option of an argparse parser (see :func:`rev_exported`)."""
    p.add_argument(
        "--rev",
        default=None,
        help="run the router from this git revision (git archive into a temp dir) "
        "instead of the working tree, e.g. HEAD while others edit",
    )


@contextlib.contextmanager
def rev_exported(rev: str | None) -> Iterator[str | None]:
    """``--rev``: the wgslirp package of ``rev`` in a temporary directory (its path; removed
    at the end), said on stdout; None without a ``rev``."""
    if rev is None:
        yield None
        return
    tmp = tempfile.mkdtemp(prefix="wgslirp-bench-rev-")
    try:
        full = export_rev(rev, Path(tmp))
        print(f"router code: git revision {full} (exported to {tmp})", flush=True)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def router_cwd(env: dict[str, str], code_dir: str | None) -> str:
    """Where to start a router: the repository, or ``code_dir`` (a ``--rev`` snapshot or a
    ``--code`` copy), which then also goes first on the PYTHONPATH in ``env``."""
    if code_dir is None:
        return str(REPO)
    env["PYTHONPATH"] = os.pathsep.join([code_dir, *filter(None, [os.environ.get("PYTHONPATH")])])
    return code_dir


EXIT_COUNTERS = re.compile(r"(ingress|worker \d+) stopped; counters: (\{.*\})")


def parse_exit_counters(output: str) -> dict[str, dict[str, int]]:
    """``ingress``/``worker N`` -> the counters it logged when it stopped."""
    return {m.group(1): json.loads(m.group(2)) for m in EXIT_COUNTERS.finditer(output)}


# --------------------------------------------------------------------------- py-spy


class PySpy:
    """``py-spy record`` of some processes for a fixed time, summarised as top functions.

    Runs non-blocking (the targets are never paused); costs a few % of a core per target.
    Output files are py-spy's collapsed-stack "raw" format, one per process.
    """

    RATE = 200

    def __init__(
        self,
        outdir: Path,
        tag: str,
        targets: dict[str, int],
        seconds: float,
        source_root: str | os.PathLike[str] = ".",
    ) -> None:
        self.source_root = Path(source_root)
        self.duration = max(1, round(seconds))
        self.procs: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
        exe = _which("py-spy")
        if exe is None:
            raise RuntimeError("py-spy not found (pip install py-spy)")
        outdir.mkdir(parents=True, exist_ok=True)
        try:
            for label, pid in targets.items():
                path = outdir / f"{tag}-{label}.txt"
                proc = subprocess.Popen(
                    [
                        exe,
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(self.duration),
                        "--rate",
                        str(self.RATE),
                        "--nonblocking",
                        "--format",
                        "raw",
                        "-o",
                        str(path),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
                self.procs.append((label, path, proc))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for _, _, proc in self.procs:
            stop_popen(proc)
            if proc.stderr is not None:
                proc.stderr.close()

    def finish(self, top: int = 8) -> dict[str, dict[str, Any]]:
        """Wait for the recordings; label -> summary (see :func:`collapsed_summary`)."""
        out: dict[str, dict[str, Any]] = {}
        try:
            for label, path, proc in self.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(self.duration + 10)
                out[label] = collapsed_summary(path, top, self.source_root)
        finally:
            self.close()
        return out


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found is None:  # pip installs scripts next to the interpreter
        cand = Path(sys.executable).with_name(name)
        found = str(cand) if cand.exists() else None
    return found


def _split_frame(frame: str) -> tuple[str, str, int]:
    """'func (path/to/file.py:123)' -> ('func', 'path/to/file.py', 123)."""
    name, _, where = frame.rpartition(" (")
    path, _, line = where.rstrip(")").rpartition(":")
    return (name or frame), path, int(line) if line.isdigit() else 0


def _short(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[parts.index("wgslirp") :]) if "wgslirp" in parts else parts[-1]


def collapsed_summary(path: Path, top: int, source_root: Path = Path(".")) -> dict[str, Any]:
    """Summarise a py-spy collapsed-stack file.

    ``samples``: how many non-idle samples (running or waiting for a CPU);
    ``lines``: [(share %, "file:line function", source)] with the most samples at the top of
    the stack (self time, which includes the C calls and syscalls made from that line);
    ``funcs``: [(self %, inclusive %, "function (file)")].  Relative file names (modules
    found through the target's working directory) are read from ``source_root``.
    """
    by_line: dict[tuple[str, str, int], int] = {}
    selfc: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    try:
        text = path.read_text()
    except OSError:
        return {"samples": 0, "lines": [], "funcs": []}
    for row in text.splitlines():
        stack, _, count = row.rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        n = int(count)
        total += n
        frames = [_split_frame(f) for f in stack.split(";") if f]
        leaf = frames[-1]
        by_line[leaf] = by_line.get(leaf, 0) + n
        names = [f"{f[0]} ({_short(f[1])})" for f in frames]
        selfc[names[-1]] = selfc.get(names[-1], 0) + n
        for name in set(names):
            incl[name] = incl.get(name, 0) + n
    if not total:
        return {"samples": 0, "lines": [], "funcs": []}
    lines = []
    for (func, file, line), n in sorted(by_line.items(), key=lambda kv: -kv[1])[:top]:
        full = file if os.path.isabs(file) else str(source_root / file)
        src = linecache.getline(full, line).strip() if line else ""
        lines.append((100.0 * n / total, f"{_short(file)}:{line} {func}", src))
    funcs = [
        (100.0 * c / total, 100.0 * incl[f] / total, f)
        for f, c in sorted(selfc.items(), key=lambda kv: -kv[1])[:top]
    ]
    return {"samples": total, "lines": lines, "funcs": funcs}


# --------------------------------------------------------------------------- output


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: bool = True) -> str:
    """Columns padded to their widest cell; the first column left-aligned."""
    widths = [max(len(str(r[i])) for r in (headers, *rows)) for i in range(len(headers))]

    def fmt(r: Sequence[str]) -> str:
        cells = []
        for i, c in enumerate(r):
            c = str(c)
            cells.append(c.ljust(widths[i]) if i == 0 or not right else c.rjust(widths[i]))
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), rule, *(fmt(r) for r in rows)])


def print_profile(
    profile: dict[str, dict[str, Any]], cpu: dict[str, float], funcs: bool = False
) -> None:
    """Print :meth:`PySpy.finish`'s summaries: per process (with its CPU % from ``cpu``, if
    known) the top source lines, and with ``funcs`` the top functions."""
    for label, prof in sorted(profile.items()):
        if not prof["samples"]:
            continue
        pct = cpu.get(label)
        print(
            f"  {label} ({prof['samples']} samples"
            + (f", {pct:.0f}% CPU" if pct is not None else "")
            + "):"
        )
        for share, where, src in prof["lines"]:
            print(f"    {share:5.1f}%  {where:<50} {src[:60]}")
        if funcs:
            print("    functions (self% / inclusive%):")
            for s_, inc, fn in prof["funcs"]:
                print(f"    {s_:5.1f}% {inc:5.1f}%  {fn}")


def si(x: float) -> str:
    """1234567 -> '1.23M', 12345 -> '12.3k'."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            v = x / div
            return f"{v:.3g}{suffix}" if v < 100 else f"{v:.0f}{suffix}"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def add_quiet_options(p: Any, *, what: str, wait: float) -> None:
    """--quiet-threshold/--quiet-wait: wait for a quiet machine before each measurement."""
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=25.0,
        help=f"before each {what} wait until the machine is at most this busy "
        "(%% of one core; default 25)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=wait,
        help=f"longest wait for that, in seconds (default {wait:g})",
    )
