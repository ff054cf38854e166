"""Host sockets made before a guest's flow needs one.

Why: a guest's first packet to a new destination waits for its host socket, and making one
is several system calls (`socket()`; for UDP also the error queue and GRO options) run cold
when the packet comes after a pause: on the 2-core development VM `socket()` took 61 us
after 20 ms of sleep, against a few in a loop. A spare made in the quiet after the last
flow opened takes that off the round trip: the bridge only connects it. One spare per
kind and family in use is enough for a round trip after a pause; a burst of new flows
takes the spare and then makes the rest as before.

The spares are made on the loop's next quiet beat (it calls them as a warmer,
runtime/loop.py), never in the turn that took one: made in that turn's timers, after the
answer left, they cost every round trip with workers 0.05-0.11 ms and inline up to 0.05
(bench_latency, one run: on 2 cores the refill competed with ingress and the client). A
family the host lacks (no IPv6) fails to make a spare; that is counted and the family is
not tried again, and the bridge's own `socket()` call reports the error as it always did.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

# (socket type, IPv6): what a bridge asks for
Kind = tuple[int, bool]
Prepare = Callable[[socket.socket], None]


class Spares:
    """Per worker: a spare socket for each (type, family) a bridge has used."""

    def __init__(self, keep: int = 1) -> None:
        self.keep = keep
        self._prepare: dict[int, Prepare] = {}
        self._spare: dict[Kind, list[socket.socket]] = {}
        self._broken: set[Kind] = set()
        self._due = False
        self.taken = 0  # handed out ready
        self.made_late = 0  # asked for with none ready: made on the spot
        self.errors = 0  # a spare that could not be made

    def prepare(self, kind: int, setup: Prepare) -> None:
        """How a socket of type `kind` is set up before use (options, non-blocking)."""
        self._prepare[kind] = setup

    def take(self, kind: int, v6: bool) -> socket.socket:
        """A prepared, unconnected socket; made now (OSError as from socket()) if none is
        ready. Either way one is made for next time on the next quiet beat."""
        key = (kind, v6)
        spare = self._spare.get(key)
        if spare is None:
            spare = self._spare[key] = []
        self._due = True
        if spare:
            self.taken += 1
            return spare.pop()
        self.made_late += 1
        return self._make(key)

    def _make(self, key: Kind) -> socket.socket:
        kind, v6 = key
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, kind | socket.SOCK_NONBLOCK)
        setup = self._prepare.get(kind)
        if setup is not None:
            try:
                setup(sock)
            except BaseException:
                sock.close()
                raise
        return sock

    @property
    def due(self) -> bool:
        return self._due

    def __call__(self) -> None:
        """The loop's quiet beat: make what was taken since the last one."""
        if not self._due:
            return
        self._due = False
        for key, spare in self._spare.items():
            while len(spare) < self.keep and key not in self._broken:
                try:
                    spare.append(self._make(key))
                except OSError:
                    self.errors += 1
                    self._broken.add(key)

    def close(self) -> None:
        for spare in self._spare.values():
            for sock in spare:
                with contextlib.suppress(OSError):
                    sock.close()
            spare.clear()
        self._due = False

    def ready(self, kind: int, v6: bool) -> int:
        return len(self._spare.get((kind, v6), ()))
