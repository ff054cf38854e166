"""Supervisor: creates the rings and the WireGuard socket, forks ingress and the workers,
restarts whatever dies, and stops everything on SIGTERM.

Everything shared is created here before any fork, so a replacement process inherits the
same mappings and socket: a dead worker is replaced within a second and the other shards
never notice. Ring blocks are unlinked from /dev/shm as soon as they exist, so nothing is
left behind however the router ends, SIGKILL included.

The supervisor runs on the same `Loop` as every other process, with the same control plane
as the one-process mode (wgslirp/runtime/control.py); its own work is one per-turn hook that
reaps, restarts and judges its children.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from wgslirp.config import Config
from wgslirp.obs.metrics import MetricsBlock
from wgslirp.runtime.control import ControlPlane, ListenError, status_line
from wgslirp.runtime.ingress import INGRESS_COUNTERS, Ingress, local_endpoint, open_wg_socket
from wgslirp.runtime.loop import SPLIT_SLEEP_BOUND, Hook, Loop
from wgslirp.runtime.worker import (
    WORKER_COUNTERS,
    Worker,
    die_with_parent,
    registry_for,
    set_process_name,
)
from wgslirp.shm.ring import Ring
from wgslirp.slirp.icmp_bridge import probe_mode

log = logging.getLogger("wgslirp.supervisor")

BIG_SLOTS = 16  # per worker, for reassembled datagrams larger than a normal slot
BIG_SLOT_SIZE = 65536
STOP_GRACE = 1.5  # seconds children get to exit after SIGTERM before SIGKILL
# ... plus, for the workers, this much per open TCP connection, up to STOP_GRACE_MAX: each
# is reset both ways on the way out, and ingress encrypts and sends every guest's RST.
# STOP_GRACE_MAX plus ingress's STOP_GRACE stays under the 10 s `docker stop` waits before
# its own SIGKILL.
STOP_GRACE_PER_FLOW = 50e-6
STOP_GRACE_MAX = 7.0
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
RESTART_MIN_INTERVAL = 0.2  # per slot, so a crash loop cannot eat the CPU
# The supervisor turns at least this often: restarts and hang checks are judged on that
# beat, and a much longer gap between turns means the process itself was paused.
SUPERVISOR_TICK = 0.1
PAUSED_AFTER = 1.0  # seconds between turns that count as this process having been paused


def _pow2(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


@dataclass
class Plan:
    nworkers: int  # 0 = inline
    in_slots: int
    out_slots: int
    slot_size: int


def plan_for(cfg: Config) -> Plan:
    # A slot holds a whole tunnel packet plus WireGuard's padding to 16 bytes.
    slot_size = (cfg.mtu + 16 + 63) & ~63
    return Plan(
        cfg.processor_workers,
        _pow2(max(cfg.processor_queue_cap, 64)),
        _pow2(max(cfg.tun_queue_cap, 64)),
        slot_size,
    )


def _counters_line(role: str, counters: dict[str, int]) -> None:
    log.info("%s stopped; counters: %s", role, json.dumps(counters, sort_keys=True))


def worker_turn_first(loop: Loop, turn: Hook) -> None:
    """Inline, run the worker's per-turn hook before every other (the ingress's drain of
    the workers' rings in particular): what the worker answers in its turn (a refused SYN's
    RST, an echo reply) is then encrypted and sent in the same turn instead of the next
    one. Measured through the real client, inline, busy 2-core machine: the SYN's RST left
    ~20 us sooner (one more loop turn and its epoll_wait)."""
    loop.hooks.remove(turn)
    loop.hooks.insert(0, turn)


def run_inline(
    cfg: Config,
    sock: socket.socket,
    icmp_mode: str | None,
    announce: Callable[[tuple[str, int]], None],
    reload: Callable[[], Config] | None = None,
    watch: str | None = None,
) -> int:
    """PROCESSOR_WORKERS=0: one process, one loop, ingress and a worker side by side."""
    plan = plan_for(cfg)
    rin = Ring.create(plan.in_slots, plan.slot_size)
    rout = Ring.create(plan.out_slots, plan.slot_size)
    rbig = Ring.create(BIG_SLOTS, BIG_SLOT_SIZE)
    metrics = MetricsBlock(INGRESS_COUNTERS, WORKER_COUNTERS, 1)
    registry = registry_for(cfg, 1)
    loop = Loop()
    control: ControlPlane | None = None
    ingress: Ingress | None = None
    try:
        control = ControlPlane(
            cfg, loop, metrics, [("in0", rin), ("out0", rout)], expected_roles=()
        )
        ingress = Ingress(
            cfg,
            sock,
            loop,
            [rin.producer()],
            [rout.consumer()],
            [rbig.producer()],
            metrics=metrics,
            reload=reload,
        )
        worker = Worker(
            cfg,
            0,
            1,
            rin.consumer(),
            rout.producer(),
            loop,
            icmp_mode,
            rbig.consumer(),
            metrics=metrics,
            registry=registry,
        )
        worker_turn_first(loop, worker.turn)
        control.install_signals(ingress.reload)

        def forwards_changed(ingress: Ingress = ingress) -> None:  # the metrics' labels
            control.cfg = msgspec.structs.replace(
                control.cfg, forward_tcp=ingress.forwards[0], forward_udp=ingress.forwards[1]
            )

        ingress.config_changed.append(forwards_changed)
        if reload is not None:
            control.watch_config(watch, ingress.reload)
        announce(ingress.address)
        control.ready(0)
        control.run()
        # Resets the guests' connections; ingress sends those RSTs as the egress ring fills
        # (there are more of them than slots with many connections open) ...
        worker.close(loop.clock(), exiting=True, drain=lambda: ingress.finish(loop.clock()))
        ingress.finish(loop.clock())  # ... and the last of them before the process ends
        ingress.close()
        _counters_line("ingress", ingress.stats())
        _counters_line("worker 0", worker.counters())
        control.stopped(ingress.stats() | worker.counters())
    finally:
        for server in ingress.uapi if ingress is not None else ():
            server.close()  # the loop closes them when it stops; also if it never ran
        if control is not None:
            control.close()
        else:
            loop.close()
        metrics.close()
        registry.close()
        rin.close()
        rout.close()
        rbig.close()
    return 0


class RuntimeState(msgspec.Struct, frozen=True):
    """Ingress -> supervisor after a run-time change: the configuration as it now is and
    the index number of every peer (public key, index), plus the next free number."""

    config: Config
    indices: list[tuple[bytes, int]]
    next_index: int
    # (public key, unix time of the last handshake): a replacement re-initiates to these
    sessions: list[tuple[bytes, float]] = []


_CFG_LEN = struct.Struct(">I")
MAX_CFG_MESSAGE = 64 << 20  # a configuration with ~100k peers; anything larger is a bug


class Supervisor:
    def __init__(
        self,
        cfg: Config,
        sock: socket.socket,
        icmp_mode: str | None,
        reload: Callable[[], Config] | None = None,
        watch: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.reload = reload
        self.watch = watch
        # A reload asked for while no ingress runs (it is being replaced): the next one
        # starts with it, so a change of the file on disk is not lost in between.
        self._reload_at_start = False
        self.sock = sock
        self.icmp_mode = icmp_mode
        self.plan = plan_for(cfg)
        n = self.plan.nworkers
        self.rings_in = [Ring.create(self.plan.in_slots, self.plan.slot_size) for _ in range(n)]
        self.rings_out = [Ring.create(self.plan.out_slots, self.plan.slot_size) for _ in range(n)]
        self.rings_big = [Ring.create(BIG_SLOTS, BIG_SLOT_SIZE) for _ in range(n)]
        self.children: dict[int, str] = {}  # pid -> role ("ingress" or "worker K")
        self.started_ns: dict[int, int] = {}  # pid -> fork time (monotonic ns)
        self.last_start: dict[str, float] = {}
        self.restarts = 0
        self._pending: list[str] = []  # roles waiting to be (re)started
        self._last_turn = 0.0
        self._next_hang_check = 0.0
        self.metrics = MetricsBlock(INGRESS_COUNTERS, WORKER_COUNTERS, n)
        rings = [(f"in{k}", r) for k, r in enumerate(self.rings_in)] + [
            (f"out{k}", r) for k, r in enumerate(self.rings_out)
        ]
        self.loop = Loop()
        self.loop.max_sleep = SUPERVISOR_TICK
        # Opens the metrics listener before any child exists or anything is announced: a
        # taken port fails the start cleanly. Children close their copies after the fork.
        self.control = ControlPlane(
            cfg,
            self.loop,
            self.metrics,
            rings,
            children=lambda: dict(self.children),
            restarts=lambda: self.restarts,
            health=lambda: not self._pending,
        )
        self.monitor = self.control.monitor
        # Ingress -> supervisor: the configuration after each run-time change (wg set,
        # reload), length-prefixed msgpack, so a restarted ingress starts from it.
        self._cfg_r, self._cfg_w = socket.socketpair()
        self._cfg_r.setblocking(False)
        self._cfg_w.settimeout(2.0)
        self._cfg_buf = bytearray()
        # What the last ingress numbered its peers (with what it reported): a replacement
        # keeps the numbers, since the workers' flows outlive an ingress restart.
        self._peer_indices: dict[bytes, int] = {}
        self._next_peer_index = 1
        self._sessions: list[tuple[bytes, float]] = []
        # Each worker's open TCP connections, where its replacement finds them.
        self.registries = [registry_for(cfg, n) for _ in range(n)]

    # ------------------------------------------------------- run-time config

    def _send_config(self, ingress: Ingress) -> None:
        """In ingress: hand the supervisor the configuration as it now is, with the peers'
        index numbers (the workers' flows are keyed by them; a replacement must keep them)."""
        cfg = msgspec.structs.replace(
            self.cfg,
            private_key=ingress.device.identity.private_bytes,
            peers=ingress.effective_peers(),
            forward_tcp=ingress.forwards[0],  # a replacement worker listens on these
            forward_udp=ingress.forwards[1],
        )
        state = RuntimeState(
            config=cfg,
            indices=list(ingress.peer_indices().items()),
            next_index=ingress.device.next_peer_index,
            sessions=ingress.active_peers(),
        )
        data = msgspec.msgpack.encode(state)
        self._cfg_w.sendall(_CFG_LEN.pack(len(data)) + data)

    def _read_config_reports(self) -> None:
        """In the supervisor: keep the newest configuration ingress reported."""
        buf = self._cfg_buf
        for _ in range(64):
            try:
                chunk = self._cfg_r.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break
            buf += chunk
        while len(buf) >= _CFG_LEN.size:
            (n,) = _CFG_LEN.unpack_from(buf)
            if n > MAX_CFG_MESSAGE:
                log.error("run-time configuration message of %d bytes refused", n)
                buf.clear()
                return
            if len(buf) < _CFG_LEN.size + n:
                return
            payload = bytes(buf[_CFG_LEN.size : _CFG_LEN.size + n])
            del buf[: _CFG_LEN.size + n]
            try:
                state = msgspec.msgpack.decode(payload, type=RuntimeState)
            except msgspec.DecodeError as exc:
                log.error("run-time configuration from ingress unreadable: %s", exc)
                continue
            changed = state.config != self.cfg
            self.cfg = self.control.cfg = state.config
            self._peer_indices = dict(state.indices)
            self._next_peer_index = state.next_index
            self._sessions = state.sessions
            if changed:  # most reports only carry sessions and endpoints
                log.info(
                    "run-time configuration kept for restarts: %d peer(s)", len(self.cfg.peers)
                )
                self.control.sd.status(status_line(self.cfg, self.plan.nworkers, self.restarts))

    # ------------------------------------------------------------- children

    def _fork(self, role: str, body: Callable[[], int]) -> None:
        # Signals stay blocked across the fork until the child has its own handlers (its
        # Loop unblocks them), so a SIGTERM racing the start-up is handled, never lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        gc.freeze()  # keep the parent's objects out of the children's GC: fewer COW copies
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            log.exception("cannot fork %s; will retry", role)
            self.last_start[role] = time.monotonic()
            return
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        if pid == 0:  # child
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # ingress installs its own
                self.control.forget_in_child()  # the metrics listener and loop are ours
                die_with_parent(parent)
                set_process_name(f"wgslirp-{role.replace('worker ', 'w')}")
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                code = body()
            except BaseException:
                log.exception("%s crashed", role)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = role
        self.last_start[role] = time.monotonic()
        self.started_ns[pid] = time.monotonic_ns()

    def _ingress_body(self) -> int:
        loop = Loop(sleep_bound=SPLIT_SLEEP_BOUND)
        self._cfg_r.close()
        ingress = Ingress(
            self.cfg,
            self.sock,
            loop,
            [r.producer() for r in self.rings_in],
            [r.consumer() for r in self.rings_out],
            [r.producer() for r in self.rings_big],
            metrics=self.metrics,
            reload=self.reload,
            peer_indices=self._peer_indices,
            next_peer_index=self._next_peer_index,
            resume=self._sessions,
        )
        ingress.config_changed.append(lambda: self._send_config(ingress))
        loop.install_stop_signals()
        loop.on_signal(signal.SIGHUP, ingress.reload)
        if self._reload_at_start:
            ingress.reload(loop.clock())
        loop.run()
        ingress.finish(loop.clock())  # the workers stopped first: send their last packets
        ingress.close()
        if ingress.publisher is not None:
            ingress.publisher.publish()  # final numbers for the supervisor's totals line
        _counters_line("ingress", ingress.stats())
        return 0

    def _worker_body(self, k: int) -> Callable[[], int]:
        def body() -> int:
            self.sock.close()  # workers never touch the WireGuard socket
            self._cfg_r.close()
            self._cfg_w.close()
            loop = Loop(sleep_bound=SPLIT_SLEEP_BOUND)
            worker = Worker(
                self.cfg,
                k,
                self.plan.nworkers,
                self.rings_in[k].consumer(),
                self.rings_out[k].producer(),
                loop,
                self.icmp_mode,
                self.rings_big[k].consumer(),
                metrics=self.metrics,
                registry=self.registries[k],
            )
            loop.install_stop_signals()
            loop.run()
            worker.close(loop.clock(), exiting=True)
            if worker.publisher is not None:
                worker.publisher.publish()
            _counters_line(f"worker {k}", worker.counters())
            return 0

        return body

    def _start(self, role: str) -> None:
        if role == "ingress":
            self._fork(role, self._ingress_body)
            if "ingress" in self.children.values():
                self._reload_at_start = False  # the new ingress took it along
        else:
            self._fork(role, self._worker_body(int(role.split()[1])))

    # ----------------------------------------------------------------- loop

    def run(self) -> int:
        loop, control = self.loop, self.control
        try:
            control.install_signals(lambda _now: self._forward_hup())
            if self.reload is not None:
                control.watch_config(self.watch, lambda _now: self._forward_hup())
            loop.on_signal(signal.SIGCHLD, lambda _now: None)  # wakes the loop; _turn reaps
            self._start("ingress")
            for k in range(self.plan.nworkers):
                self._start(f"worker {k}")
            loop.register(self._cfg_r, lambda _now, _mask: self._read_config_reports())
            self._pending = [
                role
                for role in ["ingress", *(f"worker {k}" for k in range(self.plan.nworkers))]
                if role not in self.children.values()
            ]
            self._last_turn = loop.clock()
            loop.hooks.append(self._turn)
            control.ready(self.plan.nworkers)
            control.run()
            self._stop_children()
            control.stopped(self.monitor.snapshot().totals())
        finally:
            control.close()
            self._cfg_r.close()
            self._cfg_w.close()
            for ring in (*self.rings_in, *self.rings_out, *self.rings_big):
                ring.close()
            for registry in self.registries:
                registry.close()
            self.metrics.close()
        log.info("supervisor stopped; worker restarts: %d", self.restarts)
        return 0

    def _turn(self, now: float) -> None:
        """Once per loop turn (at least every SUPERVISOR_TICK): reap the dead, restart
        what may be restarted, look for hung children, and tell systemd how it went."""
        self._pending.extend(self._reap())
        for role in list(self._pending):
            if self.loop.stopping:
                break
            if now - self.last_start.get(role, 0.0) >= RESTART_MIN_INTERVAL:
                self._pending.remove(role)
                self.restarts += 1
                log.warning("restarting %s (restart #%d)", role, self.restarts)
                self._start(role)
                if role not in self.children.values():
                    self._pending.append(role)  # the fork failed: try again shortly
                self.control.watchdog.restarted(now)
                self.control.sd.status(status_line(self.cfg, self.plan.nworkers, self.restarts))
        if now - self._last_turn > PAUSED_AFTER:
            # This process did not run for a while (SIGSTOP of the whole group, docker
            # pause, a frozen cgroup): neither did the children. Give them the full grace
            # again before judging their heartbeats.
            self._next_hang_check = now + self.cfg.hung_restart
        self._last_turn = now
        if now >= self._next_hang_check and self.cfg.hung_restart > 0:
            self._next_hang_check = now + min(1.0, self.cfg.hung_restart / 4)
            self._kill_hung()
        self.control.tick(now)

    def _kill_hung(self) -> None:
        """A child whose loop stopped turning (a deadlock, a blocking call that never
        returns, SIGSTOP) is killed so the restart logic replaces it."""
        limit = self.cfg.hung_restart
        for pid, role, silent in self.monitor.hung(limit, self.started_ns):
            log.error(
                "%s (pid %d) has not turned its loop for %.2f s (PROCESSOR_HUNG_RESTART "
                "is %g s); killing it so it is replaced",
                role,
                pid,
                silent,
                limit,
            )
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _forward_hup(self) -> None:
        """SIGHUP re-reads the configuration; ingress owns the peers, so it does the work."""
        for pid, role in self.children.items():
            if role == "ingress":
                try:
                    os.kill(pid, signal.SIGHUP)
                    return
                except ProcessLookupError:
                    break
        self._reload_at_start = True

    def _reap(self) -> list[str]:
        died: list[str] = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            role = self.children.pop(pid, None)
            self.started_ns.pop(pid, None)
            if role is None:
                continue
            if role == "ingress":
                # Whatever it managed to report is complete by now; a half-sent message
                # would misframe the next ingress's reports.
                self._read_config_reports()
                self._cfg_buf.clear()
            if os.WIFSIGNALED(status):
                how = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
            else:
                how = f"exited with status {os.WEXITSTATUS(status)}"
            if not self.loop.stopping:
                log.warning("%s (pid %d) %s", role, pid, how)
                died.append(role)
        return died

    def _stop_children(self) -> None:
        """Workers first: each resets its guests' connections on the way out, and ingress,
        still running, encrypts and sends those RSTs before it is stopped itself."""
        flows = sum(w.read().get("tcp_flows", 0) for w in self.metrics.workers)
        for first in (True, False):
            deadline = time.monotonic() + (stop_grace(flows) if first else STOP_GRACE)
            for pid, role in list(self.children.items()):
                if (role != "ingress") == first:
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            while time.monotonic() < deadline and any(
                (role != "ingress") == first for role in self.children.values()
            ):
                self._reap()
                time.sleep(0.01)
        for pid, role in list(self.children.items()):
            log.warning("%s (pid %d) did not stop in time; killing it", role, pid)
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.children.pop(pid, None)


def stop_grace(tcp_flows: int) -> float:
    """Seconds the workers get to stop, holding `tcp_flows` connections between them
    (as last published: at most a second old)."""
    return min(STOP_GRACE + max(tcp_flows, 0) * STOP_GRACE_PER_FLOW, STOP_GRACE_MAX)


def run(
    cfg: Config,
    announce: Callable[[tuple[str, int]], None],
    reload: Callable[[], Config] | None = None,
    watch: str | None = None,
) -> int:
    """Run the router until SIGTERM/SIGINT; returns the process exit status. `reload`
    re-reads the configuration (SIGHUP); `watch` is the file whose changes on disk
    trigger the same (WGSLIRP_CONFIG_POLL)."""
    try:
        sock = open_wg_socket(cfg.listen_addr, cfg.listen_port)
    except OSError as exc:
        raise ListenError(cfg.listen_addr, cfg.listen_port, exc.strerror or str(exc)) from exc
    _raise_fd_limit()
    icmp_mode = probe_mode()
    if icmp_mode is None:
        log.warning(
            "no ICMP socket available (net.ipv4.ping_group_range excludes this group "
            "and CAP_NET_RAW is missing): guest pings to the outside will be dropped"
        )
    try:
        if cfg.processor_workers == 0:
            return run_inline(cfg, sock, icmp_mode, announce, reload, watch)
        set_process_name("wgslirp-main")
        sup = Supervisor(cfg, sock, icmp_mode, reload, watch)
        announce(local_endpoint(sock))
        return sup.run()
    finally:
        sock.close()


def _raise_fd_limit() -> None:
    """Every flow is a host socket: take the whole hard limit of file descriptors."""
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        pass
