"""Counters in shared memory: every process publishes, the supervisor reads and reports.

The hot paths keep their counters as plain Python ints on their own objects (one add per
event, no locks, no syscalls). Once per publish interval each process copies them into its
own section of one shared block, with a heartbeat; the supervisor, which owns nothing on the
hot path, sums the sections and renders a log line (text or JSON) or Prometheus text. A
section is written by exactly one process, so no locking is needed anywhere; a reader may
see a section half-updated for a moment, which for monotonically increasing counters means
a value at most one interval old.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from wgslirp.shm.ring import anonymous_block

MAX_COUNTERS = 128  # per process section
# Inbound forwards with counters of their own (the first ones in configuration order, TCP
# then UDP); the rest count only in the totals. Five counters each fit beside the ~50 a
# worker keeps.
MAX_FORWARD_METRICS = 12
FORWARD_FIELDS = ("accepted", "refused", "failed", "bytes_to_guest", "bytes_to_host")
_FORWARD_COUNTER = re.compile(r"fwd\d+_")
MAX_PEERS = 1024  # peers whose counters are exported (the rest are summed into totals only)
_SECTION_HEAD = 4  # heartbeat_ns, pid, loop_turns, publishes
PEER_FIELDS = (
    "index",
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "handshakes",
    "last_handshake_ns",
    "valid",
)

# Counters that are gauges (current values), not totals: summed across workers all the same.
GAUGES = frozenset({"udp_flows", "tcp_flows", "icmp_flows", "peers"})


@dataclass
class Section:
    """One process's slice of the block."""

    head: npt.NDArray[np.uint64]
    values: npt.NDArray[np.uint64]
    names: tuple[str, ...]
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.names) > MAX_COUNTERS:
            raise ValueError(f"{len(self.names)} counters exceed the section size")
        self.index = {n: i for i, n in enumerate(self.names)}

    def publish(self, counters: Mapping[str, int], pid: int, turns: int) -> None:
        idx = self.index
        vals = self.values
        for name, v in counters.items():
            i = idx.get(name)
            if i is not None:
                vals[i] = v if v >= 0 else 0
        self.head[1] = pid
        self.head[2] = turns
        self.head[3] += 1
        self.head[0] = time.monotonic_ns()  # last: a fresh heartbeat implies fresh values

    def read(self) -> dict[str, int]:
        vals = self.values.tolist()
        return {n: int(vals[i]) for i, n in enumerate(self.names)}

    @property
    def heartbeat_ns(self) -> int:
        return int(self.head[0])

    @property
    def pid(self) -> int:
        return int(self.head[1])

    @property
    def turns(self) -> int:
        return int(self.head[2])


class MetricsBlock:
    """Created by the supervisor before forking; sections are found by role."""

    def __init__(
        self, ingress_names: Sequence[str], worker_names: Sequence[str], nworkers: int
    ) -> None:
        self.nworkers = nworkers
        nsec = 1 + max(nworkers, 1)
        sec_words = _SECTION_HEAD + MAX_COUNTERS
        peer_words = len(PEER_FIELDS)
        size = 8 * (nsec * sec_words + MAX_PEERS * peer_words) + MAX_PEERS * 32
        self._shm = anonymous_block(size)
        buf = self._shm.buf
        assert buf is not None
        words = np.ndarray(
            (nsec * sec_words + MAX_PEERS * peer_words,), dtype=np.uint64, buffer=buf
        )
        words[:] = 0
        secs = words[: nsec * sec_words].reshape(nsec, sec_words)
        self._peers = words[nsec * sec_words :].reshape(MAX_PEERS, peer_words)
        self._keys = np.ndarray((MAX_PEERS, 32), dtype=np.uint8, buffer=buf, offset=8 * words.size)
        self.ingress = Section(
            secs[0, :_SECTION_HEAD], secs[0, _SECTION_HEAD:], tuple(ingress_names)
        )
        self.workers = [
            Section(secs[k, :_SECTION_HEAD], secs[k, _SECTION_HEAD:], tuple(worker_names))
            for k in range(1, nsec)
        ]

    # ---------------------------------------------------------------- peers

    def publish_peers(self, peers: Iterable[PeerSample]) -> None:
        """Ingress: rewrite the peer table (a handful of peers; once per interval)."""
        rows = self._peers
        n = 0
        for p in peers:
            if n >= MAX_PEERS:
                break
            self._keys[n, :] = np.frombuffer(p.public_key, dtype=np.uint8)
            rows[n, :] = (
                p.index,
                p.rx_bytes,
                p.tx_bytes,
                p.rx_packets,
                p.tx_packets,
                p.handshakes,
                int(p.last_handshake * 1e9),
                1,
            )
            n += 1
        rows[n:, 7] = 0

    def read_peers(self) -> list[PeerSample]:
        out = []
        for n in range(MAX_PEERS):
            row = self._peers[n].tolist()
            if not row[7]:
                break
            out.append(
                PeerSample(
                    bytes(self._keys[n].tobytes()),
                    int(row[0]),
                    int(row[1]),
                    int(row[2]),
                    int(row[3]),
                    int(row[4]),
                    int(row[5]),
                    row[6] / 1e9,
                )
            )
        return out

    def close(self) -> None:
        try:
            self._shm.close()
        except BufferError:
            pass  # numpy views still alive; the mapping goes with the last of them


@dataclass(frozen=True)
class PeerSample:
    public_key: bytes
    index: int
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    handshakes: int
    last_handshake: float  # unix seconds, 0 = never


@dataclass
class Snapshot:
    """What the supervisor reports: totals, per-worker detail, peers, process health."""

    ingress: dict[str, int]
    workers: list[dict[str, int]]
    peers: list[PeerSample]
    extra: dict[str, float] = field(default_factory=dict)  # supervisor's own gauges
    forwards: list[str] = field(default_factory=list)  # labels of the fwd<i>_* counters

    def totals(self) -> dict[str, int]:
        out = dict(self.ingress)
        for w in self.workers:
            for k, v in w.items():
                out[k] = out.get(k, 0) + v
        return out


def snapshot(
    block: MetricsBlock,
    extra: Mapping[str, float] | None = None,
    forwards: Sequence[str] = (),
) -> Snapshot:
    return Snapshot(
        block.ingress.read(),
        [w.read() for w in block.workers],
        block.read_peers(),
        dict(extra or {}),
        list(forwards),
    )


# ---------------------------------------------------------------- rendering

LOG_FIELDS = (
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
    "handshakes_completed",
    "udp_flows",
    "tcp_flows",
    "icmp_flows",
    "tcp_dials_ok",
    "tcp_dials_failed",
    "policy_denied",
    "ring_full_dropped",
    "egress_full",
    "source_rejected",
    "transport_replayed",
    "transport_auth_failed",
    "mac1_invalid",
    "internal_errors",
)


def render_log(snap: Snapshot, fmt: str) -> str:
    """One line per interval: `text` is key=value pairs, `json` one object (docs/metrics.md).

    The LOG_FIELDS always appear; any other counter appears once it is nonzero, so a rare
    event (a cookie reply, a rate-limited handshake) is in the log when it happens without
    every line carrying a hundred zeros."""
    totals = snap.totals()
    doc: dict[str, object] = {k: totals.get(k, 0) for k in LOG_FIELDS}
    doc.update((k, v) for k, v in sorted(totals.items()) if v and k not in doc)
    doc["peers"] = len(snap.peers)
    doc.update({k: v for k, v in snap.extra.items()})
    if fmt == "json":
        doc["per_peer"] = [
            {
                "public_key": _b64(p.public_key),
                "rx_bytes": p.rx_bytes,
                "tx_bytes": p.tx_bytes,
                "last_handshake": p.last_handshake,
            }
            for p in snap.peers
        ]
        return json.dumps(doc, sort_keys=True)
    return "metrics " + " ".join(f"{k}={_fmt(v)}" for k, v in doc.items())


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".")
    return str(v)


def _b64(key: bytes) -> str:
    import base64

    return base64.b64encode(key).decode()


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus(snap: Snapshot) -> str:
    """Prometheus text exposition format 0.0.4."""
    out: list[str] = []

    def metric(
        name: str, kind: str, help_: str, samples: Iterable[tuple[dict[str, str], float]]
    ) -> None:
        out.append(f"# HELP wgslirp_{name} {help_}")
        out.append(f"# TYPE wgslirp_{name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            out.append(f"wgslirp_{name}{{{lab}}} {value}" if lab else f"wgslirp_{name} {value}")

    peers = snap.peers
    for field_, kind, help_ in (
        ("rx_bytes", "counter", "Bytes received from the peer (WireGuard datagrams)."),
        ("tx_bytes", "counter", "Bytes sent to the peer (WireGuard datagrams)."),
        ("rx_packets", "counter", "Datagrams received from the peer."),
        ("tx_packets", "counter", "Datagrams sent to the peer."),
        ("handshakes", "counter", "Completed handshakes with the peer."),
    ):
        metric(
            f"peer_{field_}" + ("_total" if kind == "counter" else ""),
            kind,
            help_,
            (({"public_key": _b64(p.public_key)}, getattr(p, field_)) for p in peers),
        )
    metric(
        "peer_last_handshake_seconds",
        "gauge",
        "Unix time of the last completed handshake (0 = never).",
        (({"public_key": _b64(p.public_key)}, p.last_handshake) for p in peers),
    )
    metric("peers", "gauge", "Configured peers.", [({}, len(peers))])
    totals = snap.totals()
    metric(
        "flows",
        "gauge",
        "Open flows by protocol.",
        [({"proto": p}, totals.get(f"{p}_flows", 0)) for p in ("tcp", "udp", "icmp")],
    )
    metric(
        "tcp_dials_total",
        "counter",
        "Host TCP connects by outcome.",
        [
            ({"result": "ok"}, totals.get("tcp_dials_ok", 0)),
            ({"result": "failed"}, totals.get("tcp_dials_failed", 0)),
        ],
    )
    metric(
        "policy_denied_total",
        "counter",
        "Guest flows refused by the egress policy.",
        [({}, totals.get("policy_denied", 0))],
    )
    drops = [(k, v) for k, v in sorted(totals.items()) if k in _DROP_COUNTERS]
    metric(
        "dropped_packets_total",
        "counter",
        "Packets dropped, by reason.",
        [({"reason": k}, v) for k, v in drops],
    )

    def labelled(prefix: str, label: str) -> list[tuple[dict[str, str], float]]:
        return [
            ({label: k.split(":", 1)[1]}, v)
            for k, v in snap.extra.items()
            if k.startswith(prefix + ":")
        ]

    metric("ring_depth", "gauge", "Packets waiting in a ring.", labelled("ring_depth", "ring"))
    metric(
        "ring_drops_total",
        "counter",
        "Packets a full ring refused.",
        labelled("ring_drops", "ring"),
    )
    metric(
        "health_probe_up",
        "gauge",
        "HEALTHCHECK probe results (1 = passing).",
        labelled("probe_up", "probe"),
    )
    metric(
        "worker_restarts_total",
        "counter",
        "Processes restarted by the supervisor.",
        [({}, snap.extra.get("worker_restarts", 0))],
    )
    metric(
        "process_cpu_seconds_total",
        "counter",
        "CPU time per process.",
        labelled("cpu_seconds", "process"),
    )
    metric(
        "process_rss_bytes",
        "gauge",
        "Resident memory per process.",
        labelled("rss_bytes", "process"),
    )
    # Inbound forwards: workers publish fwd<i>_<field>; the i-th name says which forward.
    names = snap.forwards
    metric(
        "forward_connections_total",
        "counter",
        "Inbound forwards: host connections (TCP) or client flows (UDP) by outcome "
        "(accepted; refused: the guest reset or never answered; failed: reset at once).",
        [
            ({"forward": name, "result": r}, totals.get(f"fwd{i}_{r}", 0))
            for i, name in enumerate(names[:MAX_FORWARD_METRICS])
            for r in ("accepted", "refused", "failed")
        ],
    )
    metric(
        "forward_bytes_total",
        "counter",
        "Inbound forwards: payload bytes by direction.",
        [
            ({"forward": name, "direction": d}, totals.get(f"fwd{i}_bytes_{d}", 0))
            for i, name in enumerate(names[:MAX_FORWARD_METRICS])
            for d in ("to_guest", "to_host")
        ],
    )
    # Every other counter a process keeps, one metric each (summed over the processes that
    # keep it), so nothing is visible only in the exit log: a handshake flood shows up as
    # wgslirp_cookie_replies_sent_total while it happens.
    for name in sorted(totals):
        if name in _CURATED or name in _DROP_COUNTERS or _FORWARD_COUNTER.match(name):
            continue
        metric(
            f"{name}_total",
            "counter",
            f"Router counter {name} (docs/operations.md), summed over processes.",
            [({}, totals[name])],
        )
    return "\n".join(out) + "\n"


# Counters and gauges the curated metrics above already carry.
_CURATED = frozenset(
    {
        "peers",
        "tcp_flows",
        "udp_flows",
        "icmp_flows",
        "tcp_dials_ok",
        "tcp_dials_failed",
        "policy_denied",
    }
)


_DROP_COUNTERS = frozenset(
    {
        "invalid_datagrams",
        "mac1_invalid",
        "unknown_index",
        "unknown_peer",
        "handshake_invalid",
        "handshake_replayed",
        "transport_auth_failed",
        "transport_expired",
        "transport_replayed",
        "source_rejected",
        "not_ipv4",
        "no_session_dropped",
        "ring_full_dropped",
        "egress_full",
        "udp_malformed",
        "too_big_dropped",
        "not_handled",
        "icmp_unavailable",
        "icmp_unsupported",
        "ipv6_malformed",
        "ipv6_v4_compatible_dropped",
        "ipv6_udp_zero_checksum",
    }
)


class Publisher:
    """A loop timer that copies one process's counters into its section every interval."""

    def __init__(
        self,
        section: Section,
        counters: Callable[[], Mapping[str, int]],
        turns: Callable[[], int],
        *,
        interval: float = 1.0,
        peers: Callable[[], Iterable[PeerSample]] | None = None,
        block: MetricsBlock | None = None,
    ) -> None:
        self.section = section
        self.counters = counters
        self.turns = turns
        self.interval = interval
        self.peers = peers
        self.block = block
        self.pid = os.getpid()
        self._next = 0.0  # publish on the first turn: the supervisor sees us alive at once

    def get_timer(self) -> float | None:
        return self._next

    def handle_timer(self, now: float) -> None:
        self.publish()
        self._next = now + self.interval

    def publish(self) -> None:
        self.section.publish(self.counters(), self.pid, self.turns())
        if self.peers is not None and self.block is not None:
            self.block.publish_peers(self.peers())
