"""The supervisor's view of the router: aggregated counters, health, and their outlets
(METRICS_LOG lines, the Prometheus endpoint, /healthz and /readyz).

Health is judged from the outside of the data path only: every process's heartbeat in the
metrics block (a process whose loop stopped turning stops publishing), the supervisor's own
record of live children, and ring progress (a ring with packets waiting whose consumer has
not moved for a while is stuck).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import psutil

from wgslirp.obs.metrics import MetricsBlock, Snapshot, render_log, render_prometheus, snapshot
from wgslirp.obs.probes import Prober
from wgslirp.shm.ring import Ring

log = logging.getLogger("wgslirp.metrics")

HEARTBEAT_STALE = 5.0  # seconds without a publish before a process counts as stuck
RING_STUCK = 5.0  # seconds a non-empty ring may go without its consumer advancing


@dataclass
class _RingWatch:
    name: str
    ring: Ring
    last_tail: int = -1
    since: float = 0.0


class Monitor:
    def __init__(
        self,
        block: MetricsBlock,
        rings: Sequence[tuple[str, Ring]],
        children: Callable[[], dict[int, str]],
        restarts: Callable[[], int],
        *,
        log_format: str = "text",
        log_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        expected_roles: Sequence[str] | None = None,
        prober: Prober | None = None,
        forwards: Callable[[], list[str]] = list,
    ) -> None:
        """`forwards`: the names of the forwards, in the order the workers publish their
        per-forward counters (fwd<i>_*), for the metrics' labels."""
        self.forwards = forwards
        self.block = block
        self.rings = [_RingWatch(n, r) for n, r in rings]
        self.children = children
        self.restarts = restarts
        self.log_format = log_format
        self.log_interval = log_interval
        self.clock = clock
        self._next_log = clock() + log_interval if log_interval > 0 else None
        self._procs: dict[int, psutil.Process] = {}
        self.prober = prober
        self.expected_roles = (
            ["ingress"] + [f"worker {k}" for k in range(block.nworkers)]
            if expected_roles is None
            else list(expected_roles)
        )

    # --------------------------------------------------------------- snapshot

    def extra(self) -> dict[str, float]:
        out: dict[str, float] = {"worker_restarts": self.restarts()}
        if self.prober is not None:
            for name, res in self.prober.results.items():
                out[f"probe_up:{name}"] = 1.0 if res.ok else 0.0
        for w in self.rings:
            st = w.ring.stats()
            out[f"ring_depth:{w.name}"] = st.pending
            out[f"ring_drops:{w.name}"] = st.drops
        for pid, role in {**self.children(), **{_self_pid(): "supervisor"}}.items():
            name = role.replace("worker ", "w")
            try:
                p = self._procs.get(pid) or self._procs.setdefault(pid, psutil.Process(pid))
                cpu = p.cpu_times()
                out[f"cpu_seconds:{name}"] = cpu.user + cpu.system
                out[f"rss_bytes:{name}"] = p.memory_info().rss
            except (psutil.Error, OSError):
                self._procs.pop(pid, None)
        return out

    def snapshot(self) -> Snapshot:
        return snapshot(self.block, self.extra(), self.forwards())

    # ------------------------------------------------------------------ health

    def health(self) -> tuple[bool, list[str]]:
        now_ns = time.monotonic_ns()
        problems: list[str] = []
        roles = set(self.children().values())
        for role in self.expected_roles:
            if role not in roles:
                problems.append(f"{role} not running")
        sections = [("ingress", self.block.ingress)] + [
            (f"worker {k}", s) for k, s in enumerate(self.block.workers[: self.block.nworkers])
        ]
        for role, sec in sections:
            hb = sec.heartbeat_ns
            if hb == 0:
                problems.append(f"{role} has not reported yet")
            elif (now_ns - hb) / 1e9 > HEARTBEAT_STALE:
                problems.append(f"{role} loop stalled ({(now_ns - hb) / 1e9:.1f}s)")
        now = self.clock()
        for w in self.rings:
            st = w.ring.stats()
            if st.pending == 0 or st.tail != w.last_tail:
                w.last_tail, w.since = st.tail, now
            elif now - w.since > RING_STUCK:
                problems.append(f"ring {w.name} not draining ({st.pending} waiting)")
        return not problems, problems

    def hung(
        self, older_than: float, started_ns: Mapping[int, int], now_ns: int | None = None
    ) -> list[tuple[int, str, float]]:
        """(pid, role, seconds silent) of running children with no sign of life for
        `older_than` seconds: alive but not serving, which no exit status would reveal.

        The sign of life is the child's own heartbeat, or its fork time (`started_ns`)
        until it has published: a section may still hold a previous process's heartbeat,
        and a child that hangs before its first publish is caught too.
        """
        if now_ns is None:
            now_ns = time.monotonic_ns()
        by_role = {"ingress": self.block.ingress} | {
            f"worker {k}": s for k, s in enumerate(self.block.workers[: self.block.nworkers])
        }
        out = []
        for pid, role in self.children().items():
            sec = by_role.get(role)
            if sec is None:
                continue
            last = started_ns.get(pid, now_ns)
            hb = sec.heartbeat_ns
            if sec.pid == pid and hb > last:
                last = hb
            silent = (now_ns - last) / 1e9
            if silent > older_than:
                out.append((pid, role, silent))
        return out

    def healthz(self) -> tuple[int, str, str]:
        ok, problems = self.health()
        return (
            (200, "text/plain", "ok\n") if ok else (503, "text/plain", "\n".join(problems) + "\n")
        )

    def readyz(self) -> tuple[int, str, str]:
        """Healthy, reporting, and (with HEALTHCHECK) able to reach what the probes check."""
        ok, problems = self.health()
        if self.prober is not None:
            failing = self.prober.failing()
            problems += failing
            ok = ok and not failing
        if ok and self.block.ingress.heartbeat_ns:
            return 200, "text/plain", "ready\n"
        return 503, "text/plain", "\n".join(problems or ["starting"]) + "\n"

    def metrics(self) -> tuple[int, str, str]:
        return 200, "text/plain; version=0.0.4; charset=utf-8", render_prometheus(self.snapshot())

    # ------------------------------------------------------------- log timer

    def get_timer(self) -> float | None:
        return self._next_log

    def handle_timer(self, now: float) -> None:
        if self._next_log is None:
            return
        self._next_log = now + self.log_interval
        log.info("%s", render_log(self.snapshot(), self.log_format))


def _self_pid() -> int:
    import os

    return os.getpid()
