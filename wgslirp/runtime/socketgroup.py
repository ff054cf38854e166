"""A worker's host sockets behind one descriptor of its event loop, so they can be muted
together: while the egress ring towards ingress has no room, nothing read from a host
socket could leave, and a datagram read only to be dropped costs a receive and a turn of
the loop; left in the socket it costs nothing, and the kernel drops it when its buffer is
full. Muting thousands of flows one by one would cost an epoll_ctl each; muting the group
is one (an epoll descriptor is itself pollable: the loop watches the group's, which is
readable while any socket in it is ready).

It is the Poller the bridges register their sockets with (slirp/bridge_context.py): the
same register / modify / unregister, handlers called as `handler(now, mask)`.
"""

from __future__ import annotations

import logging
import selectors
import socket
from collections.abc import Callable

from wgslirp.runtime.loop import Handler, Loop

log = logging.getLogger("wgslirp.loop")

ERROR_LOG_INTERVAL = 10.0


class SocketGroup:
    def __init__(self, loop: Loop, has_room: Callable[[], bool] | None = None) -> None:
        self._loop = loop
        # Asked before each ready socket's handler; once it says no, the sockets still
        # ready wait for a later turn. Muting happens between turns, and one turn's ready
        # sockets can bring more than the room left (each flow up to its RECV_BATCH).
        self._has_room = has_room
        self.deferred = 0  # turns whose ready sockets were cut short for want of room
        # Where the next turn starts in the ready list: epoll reports sockets that stay
        # ready in the same order every time, so a turn cut short starts the next one
        # after the last socket it served, or the first few would be served forever.
        self._resume = 0
        self._sel = selectors.DefaultSelector()
        self._fd = self._sel.fileno() if hasattr(self._sel, "fileno") else -1
        if self._fd < 0:  # not epoll/kqueue: nothing to nest, so no muting either
            self._sel.close()
            raise OSError("this platform's selector cannot be nested")
        self.muted = False
        self.mutes = 0  # times the group was muted
        self.errors = 0
        self._next_error_log = float("-inf")
        loop.register(self._fd, self._ready)

    def register(
        self, fileobj: socket.socket, handler: Handler, events: int = selectors.EVENT_READ
    ) -> None:
        self._sel.register(fileobj, events, handler)

    def modify(self, fileobj: socket.socket, handler: Handler, events: int) -> None:
        self._sel.modify(fileobj, events, handler)

    def unregister(self, fileobj: socket.socket) -> None:
        try:
            self._sel.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def __len__(self) -> int:
        return len(self._sel.get_map())

    def mute(self) -> None:
        if not self.muted:
            self._loop.unregister(self._fd)
            self.muted = True
            self.mutes += 1

    def unmute(self) -> None:
        if self.muted:
            self._loop.register(self._fd, self._ready)
            self.muted = False

    def _ready(self, _now: float, _mask: int = 0) -> None:
        clock = self._loop.clock
        has_room = self._has_room
        ready = self._sel.select(0)
        start = self._resume
        if start:
            self._resume = 0
            if start < len(ready):
                ready = ready[start:] + ready[:start]
            else:
                start = 0
        for served, (key, mask) in enumerate(ready):
            if has_room is not None and not has_room():
                self.deferred += 1
                self._resume = (start + served) % len(ready)
                return
            try:
                key.data(clock(), mask)
            except Exception:
                self.errors += 1
                self._loop.errors += 1
                now = clock()
                if now >= self._next_error_log:
                    self._next_error_log = now + ERROR_LOG_INTERVAL
                    log.exception(
                        "error in a host socket handler (%d so far; more in the next %.0f s "
                        "are only counted)",
                        self.errors,
                        ERROR_LOG_INTERVAL,
                    )

    def close(self) -> None:
        self._loop.unregister(self._fd)
        self._sel.close()
