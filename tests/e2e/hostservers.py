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
            ready, _, _ = select.select([self.sock, *self.extra_sockets()], [], [], 0.1)
            for s in ready:
                if s is not self.sock:
                    self.on_ready(s)
            if self.sock not in ready:
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

    def extra_sockets(self) -> list[socket.socket]:
        """More sockets the serving thread watches (a TCP listener beside the UDP one)."""
        return []

    def on_ready(self, sock: socket.socket) -> None:
        """One of `extra_sockets` is readable."""


class UdpEcho(_UdpServer):
    def answer(self, data: bytes) -> bytes | None:
        return data


class UdpSink(_UdpServer):
    def answer(self, data: bytes) -> bytes | None:
        return None


class TinyDns(_UdpServer):
    """Answers every A query for NAME with ADDRESS, anything else with NXDOMAIN; over UDP,
    and over TCP (RFC 7766 framing) on the same port number."""

    def __init__(self, records: dict[str, str], **kw: float) -> None:
        for _ in range(50):  # a UDP port whose TCP twin is free too
            super().__init__(**kw)  # type: ignore[arg-type]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.tcp.close()
                self.sock.close()
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        self.tcp.listen(8)
        self.tcp_received = 0
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.tcp.close()

    def extra_sockets(self) -> list[socket.socket]:
        return [self.tcp]

    def on_ready(self, sock: socket.socket) -> None:
        self._serve_tcp()

    def _serve_tcp(self) -> None:
        """One length-prefixed query per connection (bounded: 2 s, one message)."""
        try:
            conn, _ = self.tcp.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2)
            try:
                query = read_dns_tcp(conn)
                if query is None:
                    return
                self.tcp_received += 1
                reply = self.answer(query)
                if reply is not None:
                    conn.sendall(struct.pack(">H", len(reply)) + reply)
            except OSError:
                return

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


def read_dns_tcp(sock: socket.socket) -> bytes | None:
    """One DNS message in RFC 7766 framing (2-byte length first); None if the peer closed
    before it was whole. Shared with guestprog.py, which runs this file's neighbour."""
    buf = b""
    while len(buf) < 2 or len(buf) < 2 + struct.unpack_from(">H", buf)[0]:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        buf += chunk
    return buf[2:]


def dns_query(name: str, qid: int = 0x1234) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", 1, 1)


# ---------------------------------------------------------------------------- TCP

PATTERN_LEN = 1_048_583  # prime-ish period: a misplaced segment cannot line up by accident


def pattern(seed: int = 7) -> bytes:
    import random

    return random.Random(seed).randbytes(PATTERN_LEN)


def stream_chunks(total: int, seed: int = 7, chunk: int = 256 * 1024):
    """The deterministic byte stream both ends of a transfer agree on, in chunks."""
    pat = pattern(seed)
    pos = 0
    while pos < total:
        n = min(chunk, total - pos)
        start = pos % PATTERN_LEN
        if start + n <= PATTERN_LEN:
            yield pat[start : start + n]
        else:
            first = PATTERN_LEN - start
            yield pat[start:] + pat[: n - first]
        pos += n


class TcpServer:
    """A selectors-based TCP server on host loopback running `mode` per connection:

    - "sink": read to EOF, record sha256 and byte count, close;
    - "source": send `size` bytes of the pattern, then close;
    - "echo": echo everything, close after EOF;
    - "halfclose": read to EOF, then send `size` bytes of the pattern, then close.
    """

    def __init__(self, mode: str, size: int = 0, lifetime: float = 600) -> None:
        import selectors

        self.mode, self.size = mode, size
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4096)
        self.lsock.setblocking(False)
        self.port: int = self.lsock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.lsock, selectors.EVENT_READ, None)
        self.results: list[tuple[int, str]] = []  # (bytes, sha256) per finished sink
        self.accepted = 0
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TcpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()

    def _run(self) -> None:
        import hashlib
        import selectors

        while not self._stop.is_set() and time.monotonic() < self._deadline:
            for key, mask in self.sel.select(0.1):
                if key.data is None:
                    try:
                        conn, _ = self.lsock.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    self.accepted += 1
                    st = {"sha": hashlib.sha256(), "n": 0, "out": b"", "eof": False, "gen": None}
                    if self.mode == "source":
                        st["gen"] = stream_chunks(self.size)
                    self.sel.register(conn, selectors.EVENT_READ | selectors.EVENT_WRITE, st)
                    continue
                self._service(key.fileobj, key.data, mask)  # type: ignore[arg-type]

    def _service(self, conn: socket.socket, st: dict, mask: int) -> None:  # type: ignore[type-arg]
        import selectors

        try:
            if mask & selectors.EVENT_READ and not st["eof"]:
                data = conn.recv(1 << 20)
                if not data:
                    st["eof"] = True
                    if self.mode == "sink":
                        self.results.append((st["n"], st["sha"].hexdigest()))
                        self._close(conn)
                        return
                    if self.mode == "halfclose":
                        st["gen"] = stream_chunks(self.size)
                    if self.mode == "echo" and not st["out"]:
                        self._close(conn)
                        return
                else:
                    st["n"] += len(data)
                    if self.mode == "sink":
                        st["sha"].update(data)
                    elif self.mode == "echo":
                        st["out"] += data
            if mask & selectors.EVENT_WRITE:
                if not st["out"] and st["gen"] is not None:
                    st["out"] = next(st["gen"], b"")
                    if not st["out"]:
                        self._close(conn)
                        return
                if st["out"]:
                    sent = conn.send(st["out"])
                    st["out"] = st["out"][sent:]
                elif self.mode == "echo" and st["eof"]:
                    self._close(conn)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)

    def _close(self, conn: socket.socket) -> None:
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()
