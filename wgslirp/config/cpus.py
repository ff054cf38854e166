"""How many CPUs this process may really use, and the worker count that fits them.

`os.cpu_count()` is the host's count. In a container or under systemd the process is held
to fewer by its CPU affinity mask (cpusets, `taskset`) and by the CFS quota of its cgroup
(`resources.limits.cpu` in Kubernetes, `--cpus` in Docker, `CPUQuota=` in systemd), and
running more processes than that only makes them wait for each other. Like Go's
GOMAXPROCS and .NET's `Environment.ProcessorCount`, the answer is the smaller of the
affinity count and the quota rounded up, where the quota is the tightest of the process's
cgroup and every ancestor (a limit on a parent caps its children).

Everything is read through a root directory and an affinity callable, so a test gives a
fake `/proc/self/cgroup` + `/sys/fs/cgroup` tree and a fake mask instead of this machine's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "INLINE_UP_TO",
    "MAX_AUTO_WORKERS",
    "auto_workers",
    "cgroup_quota",
    "usable_cpus",
    "workers_for_cpus",
]

# Measured on this project's 2-core VM (README, scripts/bench_tcp.py and bench_latency.py):
# one process (PROCESSOR_WORKERS=0) has the shorter round trips (two process hand-offs
# fewer), and for throughput it beat ingress + 2 workers in most runs; the last one
# (2026-12-04, back-pressure and the shard cache in) had 2 workers ahead, so this is a
# default to re-measure, not a law.
INLINE_UP_TO = 2
# Each worker reserves its rings in /dev/shm (about 8.5 MiB with the image's queue caps),
# and a container's /dev/shm is 64 MiB unless raised (Docker's --shm-size, a memory
# emptyDir in Kubernetes): 4 workers fit it on any host, as the image's old fixed default
# did. More is an explicit choice, made together with a larger /dev/shm; the one ingress
# process, which decrypts everything, limits what more workers could gain anyway.
MAX_AUTO_WORKERS = 4
_MAX_ANCESTORS = 64  # cgroup nesting is a handful of levels; the walk up is bounded anyway


def workers_for_cpus(cpus: int) -> int:
    """PROCESSOR_WORKERS when it is not set: inline (0) on 2 CPUs or fewer, else one
    process per CPU: ingress takes one (it decrypts and encrypts every packet) and the
    workers the rest, at most MAX_AUTO_WORKERS. Not measured above 2 CPUs (this project
    has no bigger machine); an explicit PROCESSOR_WORKERS always wins."""
    if cpus <= INLINE_UP_TO:
        return 0
    return min(cpus - 1, MAX_AUTO_WORKERS)


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        with path.open(encoding="ascii", errors="replace") as fh:
            return fh.read(4096)
    except OSError:
        return None


def _v2_quota(text: str | None) -> float | None:
    """cgroup v2 `cpu.max`: "max 100000" (no limit) or "<quota> <period>" in µs."""
    if text is None:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(quota: str | None, period: str | None) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` (-1 = no limit) and `cpu.cfs_period_us`."""
    if quota is None or period is None:
        return None
    try:
        q, p = int(quota.strip()), int(period.strip())
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _ancestors(base: Path, rel: str) -> list[Path]:
    """`base/rel`, its parents up to `base`, nearest first; `base` alone when `rel` does
    not exist there (inside a cgroup namespace /proc/self/cgroup may name the host's path
    while the mount shows only our own subtree, whose root is then ours)."""
    parts = [p for p in rel.strip("/").split("/") if p and p not in (".", "..")]
    if not (base.joinpath(*parts)).is_dir():
        parts = []
    out = [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return out[:_MAX_ANCESTORS]


def cgroup_quota(root: Path = Path("/")) -> float | None:
    """The tightest CFS quota over this process's cgroup and its ancestors, in CPUs, or
    None where there is none (or no cgroup file system to read)."""
    text = _read(root / "proc/self/cgroup")
    if text is None:
        return None
    fs = root / "sys/fs/cgroup"
    quotas: list[float] = []
    for line in text.splitlines()[:64]:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, rel = fields
        if controllers == "":  # v2 unified hierarchy: "0::/path"
            for d in _ancestors(fs, rel):
                q = _v2_quota(_read(d / "cpu.max"))
                if q is not None:
                    quotas.append(q)
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/path"
            for mount in (fs / controllers, fs / "cpu,cpuacct", fs / "cpu"):
                if mount.is_dir():
                    for d in _ancestors(mount, rel):
                        q = _v1_quota(_read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us"))
                        if q is not None:
                            quotas.append(q)
                    break
    return min(quotas) if quotas else None


def usable_cpus(root: Path = Path("/"), affinity: Callable[[], int] = _affinity) -> int:
    """CPUs this process may use: the affinity mask's size, lowered to the cgroup quota
    rounded up (1.5 CPUs of quota can keep 2 processes busy part of the time)."""
    n = max(1, affinity())
    quota = cgroup_quota(root)
    if quota is not None:
        return min(n, max(1, math.ceil(quota)))
    return n


def auto_workers() -> int:
    """PROCESSOR_WORKERS for this process as it runs now."""
    return workers_for_cpus(usable_cpus())
