"""HEALTHCHECK probes: can the host actually reach what guests will want to reach?

The Go original ran its probes once at start; these run periodically in a background
thread of the supervisor (they block on the network, so they never run on an event loop),
log each change of state, and feed /readyz and the metrics.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import threading
import time
import urllib.request
from dataclasses import dataclass

log = logging.getLogger("wgslirp.health")

PROBE_INTERVAL = 30.0
PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    at: float  # unix time


def probe_http(url: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    try:
        req = urllib.request.Request(url, method="GET", headers={"User-Agent": "wgslirp"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            code = int(resp.status)
        return code < 400, f"HTTP {code}"
    except Exception as exc:  # every failure is a probe result, not a crash
        return False, str(exc)


def probe_resolve(name: str) -> tuple[bool, str]:
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return False, str(exc)
    return bool(infos), str(infos[0][4][0]) if infos else "no address"


def probe_dns_server(
    server: str, name: str, timeout: float = PROBE_TIMEOUT, port: int = 53
) -> tuple[bool, str]:
    """One A query for `name` straight to `server`: is that resolver reachable and
    answering?"""
    qid = random.getrandbits(16)
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".") if p)
    msg = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + b"\x00" + struct.pack(">HH", 1, 1)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect((server, port))
            s.send(msg)
            data = s.recv(4096)
    except OSError as exc:
        return False, str(exc)
    if len(data) < 12 or struct.unpack_from(">H", data)[0] != qid:
        return False, "malformed answer"
    rcode = struct.unpack_from(">H", data, 2)[0] & 15
    return rcode in (0, 3), f"rcode {rcode}"


class Prober:
    def __init__(
        self,
        *,
        http_url: str | None,
        dns_name: str | None,
        dns_ip: str | None,
        interval: float = PROBE_INTERVAL,
        dns_port: int = 53,
    ) -> None:
        self.checks: dict[str, object] = {}
        if http_url:
            self.checks["http"] = lambda: probe_http(http_url)
        if dns_name:
            self.checks["resolve"] = lambda: probe_resolve(dns_name)
        if dns_ip:
            self.checks["dns_server"] = lambda: probe_dns_server(
                dns_ip, dns_name or "localhost", port=dns_port
            )
        self.interval = interval
        self.results: dict[str, ProbeResult] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wgslirp-probes", daemon=True)

    def start(self) -> Prober:
        if self.checks:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(PROBE_TIMEOUT + 1)

    def run_once(self) -> None:
        for name, check in self.checks.items():
            ok, detail = check()  # type: ignore[operator]
            prev = self.results.get(name)
            self.results[name] = ProbeResult(ok, detail, time.time())
            if prev is None or prev.ok != ok:
                (log.info if ok else log.warning)(
                    "health probe %s %s: %s", name, "ok" if ok else "FAILED", detail
                )

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval)

    def failing(self) -> list[str]:
        return [f"probe {n} failing: {r.detail}" for n, r in self.results.items() if not r.ok]
