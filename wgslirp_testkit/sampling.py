"""What the machine counts while a benchmark or load test runs: CPU time of process trees
and of the whole machine, memory of a process tree, receive drops of UDP sockets.

Sampled from outside, so the router under test runs unmodified: psutil's per-task run
times for CPU (``/proc/stat``'s tick sampling was seen to under-count a paced workload by a
factor of four on this VM), PSS for memory (workers share copy-on-write pages with the
supervisor, and RSS would count those once per process), ``/proc/net/udp`` for drops.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

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


# --------------------------------------------------------------------------- socket drops


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
    out: list[UdpSocketInfo] = []
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


# --------------------------------------------------------------------------- memory


def _median(xs: list[int]) -> float:
    s = sorted(xs)
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2


class MemSampler:
    """Samples the memory of a process tree (a router: PSS summed over its processes) every
    ``period`` s in a thread while the guest runs, so a soak shows whether memory stays
    bounded; a last sample is taken on exit."""

    def __init__(self, pid: int, period: float = 1.0) -> None:
        self.pid, self.period = pid, period
        self.samples: list[tuple[float, int]] = []
        self.last_by_process: dict[str, int] = {}
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="mem-sampler", daemon=True)

    def __enter__(self) -> MemSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def sample(self) -> None:
        total = 0
        by_name: dict[str, int] = {}
        try:
            root = psutil.Process(self.pid)
            for p in (root, *root.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    pss = p.memory_full_info().pss
                    total += pss
                    by_name[p.name()] = by_name.get(p.name(), 0) + pss
        except psutil.Error:
            return
        self.samples.append((time.monotonic() - self._t0, total))
        self.last_by_process = by_name

    def _run(self) -> None:
        for _ in range(100_000_000):  # bounded, like every loop of the load test
            self.sample()
            if self._stop.wait(self.period):
                return

    def summary(self) -> dict[str, Any] | None:
        """start/mid/end/peak in bytes; growth = median of the last quarter of the samples
        minus the median of the second quarter. After the first quarter has warmed caches
        and pools, steady traffic should hold memory flat; medians, not single samples,
        because memory swings with the flows open at the moment."""
        if len(self.samples) < 2:
            return None
        vals = [v for _, v in self.samples]
        q = max(1, len(vals) // 4)  # a run too short for quarters judges no growth
        start, mid, end = vals[0], vals[len(vals) // 2], vals[-1]
        growth = _median(vals[-q:]) - _median(vals[q : 2 * q])
        return {
            "start": start,
            "mid": mid,
            "end": end,
            "peak": max(vals),
            "growth": growth,
            "samples": len(vals),
            "seconds": self.samples[-1][0] - self.samples[0][0],
            "end_by_process": dict(self.last_by_process),
        }
