"""A lossy, reordering UDP relay between the WireGuard client and the router.

The kernel here has no netem qdisc, so loss and reordering are applied to the WireGuard
datagrams themselves, in both directions; to the TCP inside the tunnel that is the same as
a lossy, reordering link. A seeded RNG keeps runs reproducible.
"""

from __future__ import annotations

import random
import select
import socket
import threading
import time


class LossyRelay:
    """`record=True` also keeps every datagram the client sent (a capture to replay)."""

    def __init__(
        self,
        router_port: int,
        *,
        loss: float = 0.01,
        reorder: float = 0.05,
        seed: int = 1,
        lifetime: float = 600,
        record: bool = False,
    ) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        self.back.connect(("127.0.0.1", router_port))
        for s in (self.front, self.back):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.setblocking(False)
        self.port: int = self.front.getsockname()[1]
        self.loss, self.reorder = loss, reorder
        self.rng = random.Random(seed)
        self.record = record
        self.sent: list[bytes] = []
        self.client: tuple[str, int] | None = None
        self.dropped = self.reordered = self.relayed = 0
        self._held: dict[int, bytes | None] = {0: None, 1: None}
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LossyRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.front.close()
        self.back.close()

    def _forward(self, direction: int, data: bytes) -> None:
        # Only transport data is perturbed: losing handshakes just slows the start down.
        if data[:1] == b"\x04" and len(data) > 32:
            r = self.rng.random()
            if r < self.loss:
                self.dropped += 1
                return
            if r < self.loss + self.reorder and self._held[direction] is None:
                self._held[direction] = data  # goes out after the next datagram
                self.reordered += 1
                return
        self._send(direction, data)
        held = self._held[direction]
        if held is not None:
            self._held[direction] = None
            self._send(direction, held)

    def _send(self, direction: int, data: bytes) -> None:
        try:
            if direction == 0:
                self.back.send(data)
            elif self.client is not None:
                self.front.sendto(data, self.client)
            self.relayed += 1
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            ready, _, _ = select.select([self.front, self.back], [], [], 0.05)
            if not ready:
                for d in (0, 1):  # flush a held datagram when the link went quiet
                    held = self._held[d]
                    if held is not None:
                        self._held[d] = None
                        self._send(d, held)
                continue
            for s in ready:
                for _ in range(64):
                    try:
                        if s is self.front:
                            data, self.client = self.front.recvfrom(65535)
                            if self.record:
                                self.sent.append(data)
                            self._forward(0, data)
                        else:
                            self._forward(1, self.back.recv(65535))
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
