"""The guest side of the e2e tests: runs INSIDE a guest namespace and prints one JSON line.

A separate program because only a process inside the namespace sends through the tunnel;
tests start it with :func:`run` (``python -m wgslirp_testkit.guestprog CMD ...``).  It
shares the DNS framing and the TCP byte stream with the host servers, so both ends agree by
construction.  Every loop is bounded in count and time.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import selectors
import socket
import struct
import sys
import time
from typing import Any

from wgslirp_testkit.hostservers import dns_query, read_dns_tcp, stream_chunks
from wgslirp_testkit.proc import raise_nofile

MODULE = "wgslirp_testkit.guestprog"


def command(*args: object) -> list[str]:
    """The command line that runs ``CMD ARGS...`` as the guest (inside a namespace via
    ``WgClient.run``/``popen``)."""
    return [sys.executable, "-m", MODULE, *map(str, args)]


def run(client: Any, *args: object, timeout: float = 300) -> dict[str, Any]:
    """Run the guest command ``args`` in ``client``'s namespace; its JSON result."""
    r = client.run(command(*args), timeout=timeout)
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def _family(host: str) -> socket.AddressFamily:
    """The socket family of a literal address (IPv6 literals hold a colon)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def dns(server: str, port: int, name: str) -> dict[str, object]:
    msg = dns_query(name, qid=0xBEEF)
    s = socket.socket(_family(server), socket.SOCK_DGRAM)
    s.settimeout(2)
    for _ in range(3):
        s.sendto(msg, (server, port))
        try:
            data, src = s.recvfrom(2048)
        except TimeoutError:
            continue
        qid, flags, _qd, an = struct.unpack_from(">HHHH", data)
        out: dict[str, object] = {"id": qid, "rcode": flags & 15, "from": list(src)}
        if an:
            out["address"] = socket.inet_ntoa(data[-4:])
        return out
    return {"error": "timeout"}


def dns_tcp(server: str, port: int, name: str) -> dict[str, object]:
    """The same query over TCP (what a resolver does after a truncated UDP answer)."""
    msg = dns_query(name, qid=0xBEEF)
    try:
        with socket.create_connection((server, port), timeout=3) as s:
            s.sendall(struct.pack(">H", len(msg)) + msg)
            data = read_dns_tcp(s)
    except OSError as exc:
        return {"error": errno.errorcode.get(exc.errno or 0, "timeout")}
    if data is None or len(data) < 12:
        return {"error": "short answer"}
    qid, flags, _qd, an = struct.unpack_from(">HHHH", data)
    out: dict[str, object] = {"id": qid, "rcode": flags & 15}
    if an:
        out["address"] = socket.inet_ntoa(data[-4:])
    return out


def udp_echo(host: str, port: int, count: int, size: int, window: int) -> dict[str, object]:
    s = socket.socket(_family(host), socket.SOCK_DGRAM)
    s.connect((host, port))
    s.settimeout(0.5)
    pad = bytes(range(256)) * (size // 256 + 1)

    def payload(i: int) -> bytes:
        return struct.pack(">I", i) + pad[4:size] if size >= 4 else struct.pack(">I", i)

    outstanding: dict[int, float] = {}
    verified, corrupt, retries, nxt = 0, 0, 0, 0
    got: set[int] = set()
    deadline = time.monotonic() + 120
    while (nxt < count or outstanding) and time.monotonic() < deadline:
        while nxt < count and len(outstanding) < window:
            s.send(payload(nxt))
            outstanding[nxt] = time.monotonic()
            nxt += 1
        try:
            data = s.recv(65535)
        except TimeoutError:
            now = time.monotonic()
            for i, t in list(outstanding.items()):
                if now - t > 0.5:
                    retries += 1
                    s.send(payload(i))
                    outstanding[i] = now
            continue
        i = struct.unpack_from(">I", data)[0]
        if data != payload(i):
            corrupt += 1
            continue
        if i in outstanding:
            del outstanding[i]
            if i not in got:
                got.add(i)
                verified += 1
    return {
        "sent": nxt,
        "verified": verified,
        "corrupt": corrupt,
        "retries": retries,
        "missing": len(outstanding),
    }


def udp_error(host: str, port: int) -> dict[str, object]:
    s = socket.socket(_family(host), socket.SOCK_DGRAM)
    s.connect((host, port))
    s.settimeout(2)
    for _ in range(3):
        try:
            s.send(b"anyone there?")
            s.recv(100)
            return {"error": None}
        except TimeoutError:
            continue
        except OSError as exc:
            return {"error": errno.errorcode.get(exc.errno or 0, str(exc.errno))}
    return {"error": "timeout"}


def raw_udp(ifname: str, src: str, dst: str, port: int, count: int) -> dict[str, object]:
    """Hand IPv4 packets straight to the tunnel device, bypassing the guest's routing: the
    only way a guest can put a packet for 127.0.0.1 into the tunnel (its kernel would keep
    it on its own loopback otherwise)."""
    payload = b"loopback probe"
    udp = struct.pack(">HHHH", 40000, port, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    hdr = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        total,
        1,
        0,
        64,
        17,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    csum = sum(struct.unpack(">10H", hdr))
    while csum >> 16:
        csum = (csum & 0xFFFF) + (csum >> 16)
    hdr = hdr[:10] + struct.pack(">H", ~csum & 0xFFFF) + hdr[12:]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    for _ in range(count):
        s.sendto(hdr + udp, (ifname, 0x0800))
    return {"sent": count}


def raw_udp6(ifname: str, src: str, dst: str, port: int, count: int) -> dict[str, object]:
    """`raw_udp` for IPv6: the only way a guest puts a packet for ::1 or an IPv4-mapped
    address into the tunnel (its kernel keeps the first on its own loopback and sends the
    second as IPv4). The UDP checksum is computed: zero is invalid in IPv6."""
    payload = b"loopback probe"
    s_addr = socket.inet_pton(socket.AF_INET6, src)
    d_addr = socket.inet_pton(socket.AF_INET6, dst)
    ulen = 8 + len(payload)
    udp = struct.pack(">HHHH", 40000, port, ulen, 0) + payload
    pseudo = s_addr + d_addr + struct.pack(">I3xB", ulen, 17) + udp
    if len(pseudo) % 2:
        pseudo += b"\x00"
    csum = sum(struct.unpack(f">{len(pseudo) // 2}H", pseudo))
    while csum >> 16:
        csum = (csum & 0xFFFF) + (csum >> 16)
    udp = udp[:6] + struct.pack(">H", (~csum & 0xFFFF) or 0xFFFF) + udp[8:]
    hdr = struct.pack(">IHBB", 6 << 28, ulen, 17, 64) + s_addr + d_addr
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x86DD))
    for _ in range(count):
        s.sendto(hdr + udp, (ifname, 0x86DD))
    return {"sent": count}


def tcp_upload(host: str, port: int, size: int) -> dict[str, object]:
    h = hashlib.sha256()
    t0 = time.monotonic()
    with socket.create_connection((host, port), timeout=60) as s:
        for chunk in stream_chunks(size):
            h.update(chunk)
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # wait for the server's close: everything was read
    dt = time.monotonic() - t0
    return {"bytes": size, "sha256": h.hexdigest(), "seconds": dt, "mbit": size * 8 / dt / 1e6}


def tcp_download(host: str, port: int, halfclose: bool) -> dict[str, object]:
    h = hashlib.sha256()
    n = 0
    t0 = time.monotonic()
    with socket.create_connection((host, port), timeout=60) as s:
        if halfclose:
            s.sendall(b"request")
            s.shutdown(socket.SHUT_WR)
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            h.update(data)
            n += len(data)
    dt = time.monotonic() - t0
    return {"bytes": n, "sha256": h.hexdigest(), "seconds": dt, "mbit": n * 8 / dt / 1e6}


def tcp_echo_many(host: str, port: int, conns: int, size: int) -> dict[str, object]:
    raise_nofile()
    sel = selectors.DefaultSelector()
    payloads: dict[int, bytes] = {}
    state: dict[int, list] = {}
    for i in range(conns):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, port))
        data = os.urandom(size)
        payloads[i] = data
        state[i] = [s, 0, bytearray()]
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
    ok = failed = 0
    deadline = time.monotonic() + 120
    while state and time.monotonic() < deadline:
        for key, mask in sel.select(1.0):
            i = key.data
            s, sent, got = state[i]
            try:
                if mask & selectors.EVENT_WRITE and sent < size:
                    sent += s.send(payloads[i][sent:])
                    state[i][1] = sent
                    if sent == size:
                        sel.modify(s, selectors.EVENT_READ, i)
                if mask & selectors.EVENT_READ:
                    data = s.recv(65536)
                    got += data
                    if len(got) >= size or not data:
                        ok += bytes(got) == payloads[i]
                        failed += bytes(got) != payloads[i]
                        sel.unregister(s)
                        s.close()
                        del state[i]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                failed += 1
                sel.unregister(s)
                s.close()
                del state[i]
    return {"ok": ok, "failed": failed, "unfinished": len(state)}


def _verified_connect(s: socket.socket, deadline: float) -> str:
    """What a connect() that returned without error really achieved.

    Observed on this box's kernel: when the router's ICMP port-unreachable races the
    client's own connect(), connect() with a timeout can return success while the socket is
    still in SYN-SENT, the refusal arriving in SO_ERROR (or as a soft error) a moment later.
    A careful client does not believe connect() alone: it waits (bounded) until the socket
    has left SYN-SENT or an error is pending, and reports that.
    """
    while True:
        soerr = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if soerr:
            return errno.errorcode.get(soerr, "?")
        if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != 2:  # past SYN-SENT
            return "connected"
        if time.perf_counter() >= deadline:
            return "timeout"
        time.sleep(0.0005)


def tcp_connect_time(host: str, port: int, tries: int, timeout: float) -> dict[str, object]:
    results = []
    for _ in range(tries):
        s = socket.socket(_family(host))
        s.settimeout(timeout)
        t0 = time.perf_counter()
        try:
            s.connect((host, port))
            err = _verified_connect(s, t0 + timeout)
        except OSError as exc:
            err = errno.errorcode.get(exc.errno or 0, "timeout" if exc.errno is None else "?")
        results.append((err, (time.perf_counter() - t0) * 1000))
        s.close()
    return {"results": results}


def tcp_connect_many(host: str, port: int, conns: int, concurrency: int) -> dict[str, object]:
    """Open `conns` connections, at most `concurrency` in progress at once (as a busy client
    does, and what puts several of them into one of the router's batches), then close them
    all: how many connected, and the errors of the others by name."""
    raise_nofile()
    sel = selectors.DefaultSelector()
    done: list[socket.socket] = []
    errors: dict[str, int] = {}
    started = pending = 0
    deadline = time.monotonic() + 60
    while (started < conns or pending) and time.monotonic() < deadline:
        while started < conns and pending < concurrency:
            s = socket.socket(_family(host))
            s.setblocking(False)
            s.connect_ex((host, port))
            sel.register(s, selectors.EVENT_WRITE)
            started += 1
            pending += 1
        for key, _ in sel.select(0.2):
            s = key.fileobj  # type: ignore[assignment]
            sel.unregister(s)
            pending -= 1
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                name = errno.errorcode.get(err, str(err))
                errors[name] = errors.get(name, 0) + 1
                s.close()
            else:
                done.append(s)
    for key in list(sel.get_map().values()):
        errors["unfinished"] = errors.get("unfinished", 0) + 1
        key.fileobj.close()  # type: ignore[union-attr]
    for s in done:
        s.close()
    return {"connected": len(done), "errors": errors}


def tcp_hold(host: str, port: int, conns: int, seconds: float) -> dict[str, object]:
    """Open `conns` connections that only wait for data (a download that has not started),
    print "ready" once all are up, then report how each ended: ("reset", unix time) or
    ("open", None) at the deadline. The unix time lets a test compare with when it broke
    something, on the one clock the namespaces share."""
    socks = []
    for _ in range(conns):
        s = socket.create_connection((host, port), timeout=10)
        s.setblocking(False)
        socks.append(s)
    print("ready", flush=True)
    ended: dict[int, tuple[str, float | None]] = {}
    deadline = time.monotonic() + seconds
    sel = selectors.DefaultSelector()  # select() stops at descriptor 1023
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    while len(ended) < conns and time.monotonic() < deadline:
        for key, _ in sel.select(0.1):
            s = key.fileobj  # type: ignore[assignment]
            sel.unregister(s)
            try:
                data = s.recv(100)
                how = "eof" if not data else "data"
            except ConnectionResetError:
                how = "reset"
            except OSError as exc:
                how = errno.errorcode.get(exc.errno or 0, "error")
            ended[s.getsockname()[1]] = (how, time.time())
    results = [[s.getsockname()[1], *ended.get(s.getsockname()[1], ("open", None))] for s in socks]
    for s in socks:
        s.close()
    return {"results": results}


def serve(kind: str, mode: str, host: str, port: int, size: int, seconds: float, out: str) -> None:
    """A server inside the guest (what an inbound forward reaches): TCP in a
    hostservers.TcpServer `mode`, or UDP echo. Prints {"ready": true} once listening, then
    appends each finished sink's [bytes, sha256] to the file `out` as a JSON line, until
    `seconds` have passed (or it is stopped)."""
    from wgslirp_testkit.hostservers import TcpServer, UdpEcho

    raise_nofile()
    srv: Any = (
        TcpServer(mode, size, lifetime=seconds, host=host, port=port)
        if kind == "tcp"
        else UdpEcho(host, port, lifetime=seconds)
    )
    with srv:
        print(json.dumps({"ready": True}), flush=True)
        written = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.05)
            results = getattr(srv, "results", [])
            if len(results) > written:
                with open(out, "a") as f:
                    for r in results[written:]:
                        f.write(json.dumps(r) + "\n")
                written = len(results)


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(args[0], args[1], args[2], int(args[3]), int(args[4]), float(args[5]), args[6])
        return
    if cmd == "dns":
        out = dns(args[0], int(args[1]), args[2])
    elif cmd == "dns_tcp":
        out = dns_tcp(args[0], int(args[1]), args[2])
    elif cmd == "udp_echo":
        out = udp_echo(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]))
    elif cmd == "udp_error":
        out = udp_error(args[0], int(args[1]))
    elif cmd == "tcp_upload":
        out = tcp_upload(args[0], int(args[1]), int(args[2]))
    elif cmd == "tcp_download":
        out = tcp_download(args[0], int(args[1]), args[2] == "1")
    elif cmd == "tcp_echo_many":
        out = tcp_echo_many(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "tcp_connect_time":
        out = tcp_connect_time(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif cmd == "tcp_connect_many":
        out = tcp_connect_many(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "tcp_hold":
        out = tcp_hold(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif cmd == "raw_udp":
        out = raw_udp(args[0], args[1], args[2], int(args[3]), int(args[4]))
    elif cmd == "raw_udp6":
        out = raw_udp6(args[0], args[1], args[2], int(args[3]), int(args[4]))
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
