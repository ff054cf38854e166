"""systemd readiness and watchdog notifications (sd_notify), without libsystemd.

With `Type=notify` systemd considers the service started only when it says READY=1, so
units ordered after wgslirp wait until the WireGuard socket is bound and the workers are
forked, not merely until Python started. With `WatchdogSec=` it expects WATCHDOG=1 at least
that often and restarts a router that stopped saying so; the supervisor says it only while
its children are alive and not crash-looping, which turns "the process exists" into "the
router is serving". STATUS= lines show up in `systemctl status`.

The protocol is one datagram of newline-separated `KEY=value` lines sent to the AF_UNIX
socket named by `$NOTIFY_SOCKET`; a name starting with '@' is in the abstract namespace.
Outside systemd (`NOTIFY_SOCKET` unset) everything here is a no-op, so callers never check.
A send that fails is ignored: a notification must never take the router down.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Mapping

log = logging.getLogger("wgslirp.notify")

# A crash loop: more restarts than this within RESTART_WINDOW seconds stops the watchdog
# pings, so systemd replaces the whole service instead of watching it flap forever.
RESTART_BURST = 5
RESTART_WINDOW = 10.0


def _socket_address(name: str) -> str | None:
    if name.startswith("@"):
        return "\0" + name[1:]  # abstract namespace
    if name.startswith("/"):
        return name
    return None  # systemd also knows vsock addresses; wgslirp does not use them


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3)
    advises, or None when no watchdog is asked for (unset, not a positive integer, or
    `$WATCHDOG_PID` naming another process, e.g. after a fork)."""
    raw = environ.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    wpid = environ.get("WATCHDOG_PID", "")
    if wpid:
        try:
            if int(wpid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2e6


class Notifier:
    """Sends sd_notify messages; a no-op object when `$NOTIFY_SOCKET` is unset."""

    def __init__(self, socket_name: str | None, watchdog: float | None = None) -> None:
        self.address = _socket_address(socket_name) if socket_name else None
        self.watchdog_interval = watchdog if self.address is not None else None
        self._sock: socket.socket | None = None
        self.sent = 0
        self.failed = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send `fields` ("READY=1", "STATUS=...") as one datagram; True if it was sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            self.failed += 1
            if self.failed == 1:
                log.warning("cannot notify systemd at %r: %s", self.address, exc.strerror or exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *(() if status is None else (f"STATUS={status}",)))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *(() if status is None else (f"STATUS={status}",)))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """When to send WATCHDOG=1: every `interval` while the caller reports health, and not
    while restarts come faster than `burst` per `window` seconds.

    It is also a loop timer (`get_timer`/`handle_timer`) for the single-process mode, where
    the loop turning at all is the health signal.
    """

    def __init__(
        self, notifier: Notifier, burst: int = RESTART_BURST, window: float = RESTART_WINDOW
    ) -> None:
        self.notifier = notifier
        self.interval = notifier.watchdog_interval
        self.burst = burst
        self.window = window
        self._restarts: deque[float] = deque()
        self._next = 0.0
        self.withheld = False  # pings stopped for a crash loop (logged once per episode)

    def restarted(self, now: float) -> None:
        """Note a child restart (for crash-loop detection)."""
        self._restarts.append(now)

    def looping(self, now: float) -> bool:
        while self._restarts and self._restarts[0] <= now - self.window:
            self._restarts.popleft()
        return len(self._restarts) > self.burst

    def tick(self, now: float, healthy: bool = True) -> bool:
        """Ping if one is due and the router is healthy; True when a ping was sent."""
        if self.interval is None or now < self._next:
            return False
        if not healthy:
            return False  # a child is being restarted: ask again on the next turn
        if self.looping(now):
            if not self.withheld:
                log.warning(
                    "withholding the systemd watchdog: more than %d restarts in %.0f s",
                    self.burst,
                    self.window,
                )
            self.withheld = True
            return False
        self.withheld = False
        self._next = now + self.interval
        return self.notifier.watchdog()

    def get_timer(self) -> float | None:
        return None if self.interval is None else self._next

    def handle_timer(self, now: float) -> None:
        self.tick(now)
