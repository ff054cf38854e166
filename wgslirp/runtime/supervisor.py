"""Supervisor: creates the rings and the WireGuard socket, forks ingress and the workers,
restarts whatever dies, and stops everything on SIGTERM.

Everything shared is created here before any fork, so a replacement process inherits the
same mappings and socket: a dead worker is replaced within a second and the other shards
never notice. Ring blocks are unlinked from /dev/shm as soon as they exist, so nothing is
left behind however the router ends, SIGKILL included.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import selectors
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from wgslirp.config import Config
from wgslirp.obs.http import HttpServer
from wgslirp.obs.metrics import MetricsBlock
from wgslirp.obs.notify import Notifier, Watchdog
from wgslirp.obs.probes import Prober
from wgslirp.runtime.ingress import INGRESS_COUNTERS, Ingress, open_wg_socket
from wgslirp.runtime.loop import Loop
from wgslirp.runtime.monitor import Monitor
from wgslirp.runtime.worker import WORKER_COUNTERS, Worker, die_with_parent, set_process_name
from wgslirp.shm.ring import Ring
from wgslirp.slirp.icmp_bridge import probe_mode

log = logging.getLogger("wgslirp.supervisor")

BIG_SLOTS = 16  # per worker, for reassembled datagrams larger than a normal slot
BIG_SLOT_SIZE = 65536
STOP_GRACE = 1.5  # seconds children get to exit after SIGTERM before SIGKILL
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
RESTART_MIN_INTERVAL = 0.2  # per slot, so a crash loop cannot eat the CPU


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


def _totals_line(totals: dict[str, int]) -> None:
    """One line with every counter of the run, summed over the processes."""
    log.info("stopped; totals: %s", json.dumps(totals, sort_keys=True))


def run_inline(
    cfg: Config,
    sock: socket.socket,
    icmp_mode: str | None,
    announce: Callable[[tuple[str, int]], None],
    reload: Callable[[], Config] | None = None,
) -> int:
    """PROCESSOR_WORKERS=0: one process, one loop, ingress and a worker side by side."""
    plan = plan_for(cfg)
    rin = Ring.create(plan.in_slots, plan.slot_size)
    rout = Ring.create(plan.out_slots, plan.slot_size)
    rbig = Ring.create(BIG_SLOTS, BIG_SLOT_SIZE)
    metrics = MetricsBlock(INGRESS_COUNTERS, WORKER_COUNTERS, 1)
    loop = Loop()
    http: HttpServer | None = None
    monitor: Monitor | None = None
    ingress: Ingress | None = None
    try:
        monitor = Monitor(
            metrics,
            [("in0", rin), ("out0", rout)],
            dict,
            lambda: 0,
            log_format=cfg.metrics.format,
            log_interval=cfg.metrics.interval if cfg.metrics.log else 0.0,
            expected_roles=(),
            prober=_prober(cfg, start=False),
        )
        # Every listener is opened before anything is announced or created on disk, so a
        # taken port fails the start cleanly (no client config printed, no UAPI socket).
        http = _open_http(cfg, monitor, loop.selector)
        if http is not None:
            loop.timers.append(http)
        loop.timers.append(monitor)
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
        )
        if monitor.prober is not None:
            monitor.prober.start()
        loop.install_stop_signals(
            lambda s: log.info("received %s, shutting down", signal.Signals(s).name)
        )
        loop.on_signal(signal.SIGHUP, ingress.reload)
        announce(ingress.address)
        sd = Notifier.from_environ()
        loop.timers.append(Watchdog(sd))  # the loop turning is the health signal here
        sd.ready(_status_line(cfg, 0))
        loop.run()
        sd.stopping("stopping")
        ingress.close()
        worker.close()
        _counters_line("ingress", ingress.stats())
        _counters_line("worker 0", worker.counters())
        _totals_line(ingress.stats() | worker.counters())
    finally:
        if ingress is not None and ingress.uapi is not None:
            ingress.uapi.close()  # the loop closes it when it stops; also if it never ran
        if http is not None:
            http.close()
        if monitor is not None and monitor.prober is not None:
            monitor.prober.stop()
        metrics.close()
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


_CFG_LEN = struct.Struct(">I")
MAX_CFG_MESSAGE = 64 << 20  # a configuration with ~100k peers; anything larger is a bug


class Supervisor:
    def __init__(
        self,
        cfg: Config,
        sock: socket.socket,
        icmp_mode: str | None,
        reload: Callable[[], Config] | None = None,
    ) -> None:
        self.cfg = cfg
        self.reload = reload
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
        self.stopping = False
        self.sd = Notifier.from_environ()
        self.watchdog = Watchdog(self.sd)
        self.metrics = MetricsBlock(INGRESS_COUNTERS, WORKER_COUNTERS, n)
        rings = [(f"in{k}", r) for k, r in enumerate(self.rings_in)] + [
            (f"out{k}", r) for k, r in enumerate(self.rings_out)
        ]
        self.monitor = Monitor(
            self.metrics,
            rings,
            lambda: dict(self.children),
            lambda: self.restarts,
            log_format=cfg.metrics.format,
            log_interval=cfg.metrics.interval if cfg.metrics.log else 0.0,
            prober=_prober(cfg, start=False),
        )
        # Opened before any child exists or anything is announced: a taken port fails the
        # start cleanly. Children close their copies right after the fork.
        self._sel = selectors.DefaultSelector()
        self.http: HttpServer | None = _open_http(cfg, self.monitor, self._sel)
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

    # ------------------------------------------------------- run-time config

    def _send_config(self, ingress: Ingress) -> None:
        """In ingress: hand the supervisor the configuration as it now is, with the peers'
        index numbers (the workers' flows are keyed by them; a replacement must keep them)."""
        cfg = msgspec.structs.replace(
            self.cfg,
            private_key=ingress.device.identity.private_bytes,
            peers=ingress.effective_peers(),
        )
        state = RuntimeState(
            config=cfg,
            indices=list(ingress.peer_indices().items()),
            next_index=ingress.device.next_peer_index,
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
            self.cfg = state.config
            self._peer_indices = dict(state.indices)
            self._next_peer_index = state.next_index
            log.info("run-time configuration kept for restarts: %d peer(s)", len(self.cfg.peers))
            self.sd.status(_status_line(self.cfg, self.plan.nworkers, self.restarts))

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
                signal.set_wakeup_fd(-1)
                if self.http is not None:  # the metrics listener is the supervisor's
                    self.http.lsock.close()
                self._sel.close()
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
        loop = Loop()
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
        )
        ingress.config_changed.append(lambda: self._send_config(ingress))
        loop.install_stop_signals()
        loop.on_signal(signal.SIGHUP, ingress.reload)
        loop.run()
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
            loop = Loop()
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
            )
            loop.install_stop_signals()
            loop.run()
            worker.close()
            if worker.publisher is not None:
                worker.publisher.publish()
            _counters_line(f"worker {k}", worker.counters())
            return 0

        return body

    def _start(self, role: str) -> None:
        if role == "ingress":
            self._fork(role, self._ingress_body)
        else:
            self._fork(role, self._worker_body(int(role.split()[1])))

    # ----------------------------------------------------------------- loop

    def run(self) -> int:
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)

        def on_stop(signum: int, _frame: object) -> None:
            if not self.stopping:
                log.info("received %s, shutting down", signal.Signals(signum).name)
            self.stopping = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # just wake the selector
        signal.signal(signal.SIGHUP, lambda *_: self._forward_hup())
        self._start("ingress")
        for k in range(self.plan.nworkers):
            self._start(f"worker {k}")
        sel = self._sel
        sel.register(r, selectors.EVENT_READ)
        sel.register(
            self._cfg_r, selectors.EVENT_READ, lambda _now, _mask: self._read_config_reports()
        )
        if self.monitor.prober is not None:
            self.monitor.prober.start()  # after the forks: children never inherit the thread
        pending: list[str] = [
            role
            for role in ["ingress", *(f"worker {k}" for k in range(self.plan.nworkers))]
            if role not in self.children.values()
        ]
        self.sd.ready(_status_line(self.cfg, self.plan.nworkers))
        next_hang_check = 0.0
        last_turn = time.monotonic()
        try:
            while not self.stopping:
                for key, mask in sel.select(0.1):
                    if key.data is not None:
                        key.data(time.monotonic(), mask)
                try:
                    r.recv(4096)
                except OSError:
                    pass
                pending.extend(self._reap())
                now = time.monotonic()
                if self.http is not None:
                    self.http.expire(now)
                due = self.monitor.get_timer()
                if due is not None and due <= now:
                    self.monitor.handle_timer(now)
                for role in list(pending):
                    if self.stopping:
                        break
                    if now - self.last_start.get(role, 0.0) >= RESTART_MIN_INTERVAL:
                        pending.remove(role)
                        self.restarts += 1
                        log.warning("restarting %s (restart #%d)", role, self.restarts)
                        self._start(role)
                        if role not in self.children.values():
                            pending.append(role)  # the fork failed: try again shortly
                        self.watchdog.restarted(now)
                        self.sd.status(_status_line(self.cfg, self.plan.nworkers, self.restarts))
                if now - last_turn > 1.0:
                    # This process did not run for a while (SIGSTOP of the whole group,
                    # docker pause, a frozen cgroup): neither did the children. Give them
                    # the full grace again before judging their heartbeats.
                    next_hang_check = now + self.cfg.hung_restart
                last_turn = now
                if now >= next_hang_check and self.cfg.hung_restart > 0:
                    next_hang_check = now + min(1.0, self.cfg.hung_restart / 4)
                    self._kill_hung()
                self.watchdog.tick(now, healthy=not pending)
            self.sd.stopping("stopping")
            self._stop_children()
            _totals_line(self.monitor.snapshot().totals())
        finally:
            if self.http is not None:
                self.http.close()
            if self.monitor.prober is not None:
                self.monitor.prober.stop()
            sel.close()
            r.close()
            w.close()
            self._cfg_r.close()
            self._cfg_w.close()
            for ring in (*self.rings_in, *self.rings_out, *self.rings_big):
                ring.close()
            self.metrics.close()
        log.info("supervisor stopped; worker restarts: %d", self.restarts)
        return 0

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
                except ProcessLookupError:
                    pass

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
            if not self.stopping:
                log.warning("%s (pid %d) %s", role, pid, how)
                died.append(role)
        return died

    def _stop_children(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        while self.children and time.monotonic() < deadline:
            self._reap()
            if self.children:
                time.sleep(0.01)
        for pid, role in list(self.children.items()):
            log.warning("%s (pid %d) did not stop in time; killing it", role, pid)
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.children.pop(pid, None)


def _status_line(cfg: Config, nworkers: int, restarts: int = 0) -> str:
    """The STATUS= text `systemctl status` shows."""
    workers = f"{nworkers} workers" if nworkers else "inline worker"
    extra = f", {restarts} restarts" if restarts else ""
    return f"serving {len(cfg.peers)} peers, {workers}{extra}"


def run(
    cfg: Config,
    announce: Callable[[tuple[str, int]], None],
    reload: Callable[[], Config] | None = None,
) -> int:
    """Run the router until SIGTERM/SIGINT; returns the process exit status."""
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
            return run_inline(cfg, sock, icmp_mode, announce, reload)
        set_process_name("wgslirp-main")
        sup = Supervisor(cfg, sock, icmp_mode, reload)
        announce(sock.getsockname())
        return sup.run()
    finally:
        sock.close()


def _prober(cfg: Config, *, start: bool = True) -> Prober | None:
    """HEALTHCHECK: periodic probes of HEALTH_HTTP_URL, HEALTH_DNS_NAME, HEALTH_DNS_IP."""
    h = cfg.health
    if not h.enabled:
        return None
    prober = Prober(http_url=h.http_url, dns_name=h.dns_name, dns_ip=h.dns_ip)
    return prober.start() if start else prober


def _open_http(cfg: Config, monitor: Monitor, sel: selectors.BaseSelector) -> HttpServer | None:
    """METRICS_LISTEN: /metrics (Prometheus), /healthz and /readyz."""
    if cfg.metrics.listen is None:
        return None
    host, port = cfg.metrics.listen
    try:
        srv = HttpServer(
            host,
            port,
            {"/metrics": monitor.metrics, "/healthz": monitor.healthz, "/readyz": monitor.readyz},
            sel,
        )
    except OSError as exc:
        raise ListenError(host, port, exc.strerror or str(exc), "METRICS_LISTEN") from exc
    log.info("metrics and health on http://%s:%d/metrics", *srv.address)
    return srv


def _raise_fd_limit() -> None:
    """Every flow is a host socket: take the whole hard limit of file descriptors."""
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        pass


class ListenError(Exception):
    def __init__(
        self, addr: str, port: int, reason: str, setting: str = "WG_LISTEN_ADDR/WG_LISTEN_PORT"
    ) -> None:
        super().__init__(f"cannot listen on {addr}:{port}: {reason} ({setting})")
        self.addr, self.port, self.reason, self.setting = addr, port, reason, setting
