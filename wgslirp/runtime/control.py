"""The main process's control plane, the same whether it supervises children or runs
ingress and a worker inline (PROCESSOR_WORKERS=0).

Both modes serve the same outlets (METRICS_LOG lines, /metrics, /healthz and /readyz,
HEALTHCHECK probes), speak sd_notify the same way, stop on SIGTERM/SIGINT and reload on
SIGHUP or when the configuration file changes. This is that setup, once, on the process's
`Loop`; what differs between the modes (who answers SIGHUP, who judges health, what the
final totals are) is passed in.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Callable, Sequence

from wgslirp.config import Config
from wgslirp.config.forwards import forward_labels
from wgslirp.obs.http import HttpServer
from wgslirp.obs.metrics import MetricsBlock
from wgslirp.obs.notify import Notifier, Watchdog
from wgslirp.obs.probes import Prober
from wgslirp.runtime.filewatch import FileWatch
from wgslirp.runtime.loop import Hook, Loop
from wgslirp.runtime.monitor import Monitor
from wgslirp.shm.ring import Ring

log = logging.getLogger("wgslirp.supervisor")


class ListenError(Exception):
    """A listening socket the configuration asks for cannot be opened (a user error: the
    command line prints it as one line, without a traceback)."""

    def __init__(
        self, addr: str, port: int, reason: str, setting: str = "WG_LISTEN_ADDR/WG_LISTEN_PORT"
    ) -> None:
        host = f"[{addr}]" if ":" in addr else addr
        super().__init__(f"cannot listen on {host}:{port}: {reason} ({setting})")
        self.addr, self.port, self.reason, self.setting = addr, port, reason, setting


def status_line(cfg: Config, nworkers: int, restarts: int = 0) -> str:
    """The STATUS= text `systemctl status` shows."""
    workers = f"{nworkers} workers" if nworkers else "inline worker"
    extra = f", {restarts} restarts" if restarts else ""
    return f"serving {len(cfg.peers)} peers, {workers}{extra}"


class ControlPlane:
    """Metrics, health, probes, sd_notify and the stop/reload signals of the main process.

    `health` is None when the loop turning at all is the health signal (one process: the
    watchdog is a plain loop timer); the supervisor passes its judgement of the children
    instead and calls `tick` once per turn, after it has reaped and restarted.
    """

    def __init__(
        self,
        cfg: Config,
        loop: Loop,
        metrics: MetricsBlock,
        rings: Sequence[tuple[str, Ring]],
        *,
        children: Callable[[], dict[int, str]] = dict,
        restarts: Callable[[], int] = lambda: 0,
        expected_roles: Sequence[str] | None = None,
        health: Callable[[], bool] | None = None,
    ) -> None:
        self.cfg = cfg
        self.loop = loop
        self.health = health
        self.sd = Notifier.from_environ()
        self.watchdog = Watchdog(self.sd)
        self.monitor = Monitor(
            metrics,
            rings,
            children,
            restarts,
            log_format=cfg.metrics.format,
            log_interval=cfg.metrics.interval if cfg.metrics.log else 0.0,
            expected_roles=expected_roles,
            prober=_prober(cfg),
            forwards=lambda: forward_labels(self.cfg),
        )
        # Opened before any child exists or anything is announced or created on disk, so a
        # taken port fails the start cleanly (no client config printed, no UAPI socket).
        self.http = _open_http(cfg, self.monitor, loop)
        if self.http is not None:
            loop.timers.append(self.http)
        loop.timers.append(self.monitor)
        if health is None:
            loop.timers.append(self.watchdog)
        self._stop_logged = False

    def install_signals(self, on_hup: Hook) -> None:
        """SIGTERM/SIGINT stop the loop; SIGHUP runs `on_hup(now)` on it. Installed before
        any fork: a child resets them before it installs its own."""
        self.loop.install_stop_signals(self._on_stop)
        self.loop.on_signal(signal.SIGHUP, on_hup)

    def _on_stop(self, signum: int) -> None:
        if not self._stop_logged:  # systemd and a terminal may both send one
            self._stop_logged = True
            log.info("received %s, shutting down", signal.Signals(signum).name)

    def watch_config(self, path: str | None, on_change: Hook) -> FileWatch | None:
        """WGSLIRP_CONFIG_POLL: reload when the --config file changes on disk (see
        wgslirp/runtime/filewatch.py); nothing to watch without a file."""
        if path is None or self.cfg.config_poll <= 0:
            return None
        watch = FileWatch(path, self.cfg.config_poll, on_change, self.loop.clock())
        self.loop.timers.append(watch)
        return watch

    def ready(self, nworkers: int) -> None:
        """Serving: start the probes (after every fork, so no child inherits their thread)
        and tell systemd."""
        if self.monitor.prober is not None:
            self.monitor.prober.start()
        self.sd.ready(status_line(self.cfg, nworkers))

    def tick(self, now: float) -> None:
        """The supervisor's per-turn watchdog decision (see the class docstring)."""
        assert self.health is not None
        self.watchdog.tick(now, healthy=self.health())

    def run(self) -> None:
        """Turn the loop until a stop signal, then tell systemd the service is stopping."""
        self.loop.run()
        self.sd.stopping("stopping")

    def stopped(self, totals: dict[str, int]) -> None:
        """One line with every counter of the run, summed over the processes."""
        log.info("stopped; totals: %s", json.dumps(totals, sort_keys=True))

    def forget_in_child(self) -> None:
        """In a forked child: drop the copies of the listener and the loop's descriptors;
        the supervisor keeps serving with its own."""
        if self.http is not None:
            self.http.lsock.close()
        self.loop.close()

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
        if self.monitor.prober is not None:
            self.monitor.prober.stop()
        self.loop.close()
        self.sd.close()


def _prober(cfg: Config) -> Prober | None:
    """HEALTHCHECK: periodic probes of HEALTH_HTTP_URL, HEALTH_DNS_NAME, HEALTH_DNS_IP;
    started by `ControlPlane.ready`."""
    h = cfg.health
    if not h.enabled:
        return None
    return Prober(http_url=h.http_url, dns_name=h.dns_name, dns_ip=h.dns_ip)


def _open_http(cfg: Config, monitor: Monitor, loop: Loop) -> HttpServer | None:
    """METRICS_LISTEN: /metrics (Prometheus), /healthz and /readyz."""
    if cfg.metrics.listen is None:
        return None
    host, port = cfg.metrics.listen
    try:
        srv = HttpServer(
            host,
            port,
            {"/metrics": monitor.metrics, "/healthz": monitor.healthz, "/readyz": monitor.readyz},
            loop.selector,
        )
    except OSError as exc:
        raise ListenError(host, port, exc.strerror or str(exc), "METRICS_LISTEN") from exc
    log.info("metrics and health on http://%s:%d/metrics", *srv.address)
    return srv
