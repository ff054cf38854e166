"""iperf3 for the benchmarks: a server that cannot outlive us, the client's command line, and
what its JSON report says (goodput, the sender's retransmissions).

Shared by ``scripts/bench_tcp.py`` (loopback, the tunnel, the wireguard-go reference) and
``scripts/bench_wan.py`` (the same through the impairment relay).  The server and the client
run in the root namespace or inside a namespace the benchmark owns; they are stopped by PID.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from wgslirp_testkit.proc import LineReader, spawn, stop_process


class Iperf3Server:
    """``iperf3 -s`` on ``addr``: in the root namespace, or inside ``ns`` (a WgClient)."""

    def __init__(self, addr: str, port: int, ns: Any = None) -> None:
        self.addr, self.port, self.ns = addr, port, ns
        self.proc: subprocess.Popen[bytes] | None = None
        self._drain: Any = None

    def __enter__(self) -> Iperf3Server:
        argv = ["iperf3", "-s", "-B", self.addr, "-p", str(self.port), "--forceflush"]
        self.proc = spawn(argv, self.ns, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert self.proc.stdout is not None
            reader = LineReader(self.proc.stdout.fileno())
            for _ in range(20):
                line = reader.readline(5.0)
                if line is None:
                    raise RuntimeError(f"iperf3 -s on {self.addr}:{self.port} did not start")
                if "Server listening" in line:
                    break
            else:
                raise RuntimeError(f"iperf3 -s on {self.addr}:{self.port}: no listening line")
            # nobody reads its output from now on: a log line per test must not block it
            self._drain = reader
        except BaseException:
            self.close()
            raise
        return self

    def drain(self) -> None:
        """Read (and forget) what the server printed, so its pipe never fills up."""
        if self._drain is not None:
            while self._drain.readline(0.0) is not None:
                pass

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def client_argv(
    host: str,
    port: int,
    *,
    seconds: int,
    omit: int,
    reverse: bool,
    streams: int = 1,
    connect_timeout_ms: int = 3000,
    congestion: str | None = None,
) -> list[str]:
    """``iperf3 -c`` with a JSON report; ``reverse`` (``-R``): the server sends.
    ``congestion`` (``-C``) sets the congestion control of the test's sockets at both ends
    (the server takes it from the client); root may name any algorithm the kernel has, where
    a namespace's default may only be one of net.ipv4.tcp_allowed_congestion_control."""
    argv = [
        "iperf3",
        "-c",
        host,
        "-p",
        str(port),
        "-t",
        str(seconds),
        "-O",
        str(omit),
        "-P",
        str(streams),
        "-J",
        "--connect-timeout",
        str(connect_timeout_ms),
    ]
    if reverse:
        argv.append("-R")
    if congestion:
        argv += ["-C", congestion]
    return argv


@dataclass(frozen=True)
class Iperf3Result:
    mbit: float  # the receiver's goodput over the measured seconds (after -O)
    retransmits: int | None  # the sender's (with -R: the server's), None if not reported
    sender_cc: str | None = None  # the sending socket's congestion control, as it reports


def parse_client_output(out: bytes, err: bytes = b"") -> Iperf3Result:
    """The figures of an ``iperf3 -c -J`` run; RuntimeError with what it said if it failed."""
    try:
        doc = json.loads(out.decode("utf-8", "replace"))
    except ValueError:
        raise RuntimeError(
            "iperf3 printed no JSON: " + (out + err).decode("utf-8", "replace")[-800:]
        ) from None
    if doc.get("error"):
        raise RuntimeError(f"iperf3: {doc['error']}")
    end = doc["end"]
    retr = end.get("sum_sent", {}).get("retransmits")
    return Iperf3Result(
        mbit=float(end["sum_received"]["bits_per_second"]) / 1e6,
        retransmits=None if retr is None else int(retr),
        sender_cc=end.get("sender_tcp_congestion"),
    )
