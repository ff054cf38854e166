"""Real servers on host loopback for e2e tests: UDP echo and a tiny authoritative DNS.

Each runs in a thread with a bounded lifetime and counts what it saw, so a test can also
prove that something never arrived.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time


class _UdpServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, lifetime: float = 300) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, port))
        self.port: int = self.sock.getsockname()[1]
        self.received = 0
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _UdpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                continue
            self.received += 1
            reply = self.answer(data)
            if reply is not None:
                self.sock.sendto(reply, addr)

    def answer(self, data: bytes) -> bytes | None:
        raise NotImplementedError


class UdpEcho(_UdpServer):
    def answer(self, data: bytes) -> bytes | None:
        return data


class UdpSink(_UdpServer):
    def answer(self, data: bytes) -> bytes | None:
        return None


class TinyDns(_UdpServer):
    """Answers every A query for NAME with ADDRESS, anything else with NXDOMAIN."""

    def __init__(self, records: dict[str, str], **kw: float) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}

    def answer(self, data: bytes) -> bytes | None:
        if len(data) < 12:
            return None
        qid, _flags, qd = struct.unpack_from(">HHH", data, 0)
        if qd != 1:
            return None
        labels, i = [], 12
        while i < len(data) and data[i]:
            n = data[i]
            labels.append(data[i + 1 : i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        qtype, _qclass = struct.unpack_from(">HH", data, i + 1)
        question = data[12 : i + 5]
        name = ".".join(labels).lower()
        addr = self.records.get(name)
        if addr is None or qtype != 1:
            return struct.pack(">HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(addr)
        return struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + answer


def dns_query(name: str, qid: int = 0x1234) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", 1, 1)
