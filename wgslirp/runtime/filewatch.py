"""Reload when the configuration file changes on disk, no SIGHUP needed.

Kubernetes updates a mounted Secret or ConfigMap in place by an atomic swap: the files are
written into a new timestamped directory and the `..data` symlink is renamed over to it, so
the path we were given (`wg0.conf -> ..data/wg0.conf`) resolves to a new inode. Nobody can
send the router a signal then, and each replica must pick the change up by itself.

Polling the resolved file's identity (device, inode, mtime in ns, size) every few seconds
catches that swap and an editor's in-place write alike, costs one stat(2) per interval in
the control-plane process, and needs no inotify descriptor (which does not follow a
symlink swap of a parent directory without watching it too). A change is acted on once the
new identity is seen on two polls in a row, so a file caught half-written by a
non-atomic writer is not read until the writer is done; a file that disappears is left
alone (the running configuration stays) until it comes back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

log = logging.getLogger("wgslirp.supervisor")

Identity = tuple[int, int, int, int]


def file_identity(path: str) -> Identity | None:
    """What changes when the file does, following symlinks; None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class FileWatch:
    """A loop timer (`get_timer`/`handle_timer`) that calls `on_change(now)` after the file
    at `path` settled into a new identity. `identity` is injectable so a test can drive the
    states without a file system or real time."""

    def __init__(
        self,
        path: str,
        interval: float,
        on_change: Callable[[float], None],
        now: float,
        *,
        identity: Callable[[str], Identity | None] = file_identity,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.path = path
        self.interval = interval
        self.on_change = on_change
        self._identity = identity
        self.current = identity(path)  # as it was when the running configuration was read
        self._candidate: Identity | None = None
        self._next = now + interval
        self.changes = 0

    def get_timer(self) -> float:
        return self._next

    def handle_timer(self, now: float) -> None:
        if now < self._next:
            return
        self._next = now + self.interval
        seen = self._identity(self.path)
        if seen is None or seen == self.current:
            self._candidate = None  # gone (kept running as is) or back to what we run
            return
        if seen != self._candidate:
            self._candidate = seen  # changed: read it once it holds still for one interval
            return
        self.current, self._candidate = seen, None
        self.changes += 1
        log.info("%s changed on disk; reloading", self.path)
        self.on_change(now)
