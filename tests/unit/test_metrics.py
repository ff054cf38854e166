"""Shared-memory counters across a real fork, and the renderers (Prometheus parsed by the
real prometheus_client parser)."""

from __future__ import annotations

import json
import os
import re

from prometheus_client.parser import text_string_to_metric_families

from wgslirp.obs.metrics import (
    MAX_FORWARD_METRICS,
    MetricsBlock,
    PeerSample,
    render_log,
    render_prometheus,
    snapshot,
)

KEY = bytes(range(32))


def test_child_publishes_parent_reads() -> None:
    block = MetricsBlock(["rx_packets", "rx_bytes"], ["udp_flows", "tcp_dials_ok"], nworkers=2)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                block.ingress.publish({"rx_packets": 5, "rx_bytes": 700, "unknown": 1}, 1, 9)
                block.workers[1].publish({"udp_flows": 3, "tcp_dials_ok": 2}, 2, 4)
                block.publish_peers([PeerSample(KEY, 1, 10, 20, 1, 2, 3, 1700000000.5)])
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        snap = snapshot(block)
        assert snap.ingress == {"rx_packets": 5, "rx_bytes": 700}
        assert snap.workers[1] == {"udp_flows": 3, "tcp_dials_ok": 2}
        assert snap.workers[0] == {"udp_flows": 0, "tcp_dials_ok": 0}
        assert block.ingress.turns == 9 and block.ingress.heartbeat_ns > 0
        assert snap.totals()["udp_flows"] == 3
        (peer,) = snap.peers
        assert peer.public_key == KEY and peer.rx_bytes == 10 and peer.handshakes == 3
        assert abs(peer.last_handshake - 1700000000.5) < 1e-6
        block.publish_peers([])
        assert snapshot(block).peers == []
    finally:
        block.close()


def test_prometheus_text_parses_with_the_reference_parser() -> None:
    block = MetricsBlock(
        ["rx_packets", "mac1_invalid"],
        ["udp_flows", "tcp_flows", "tcp_dials_ok", "policy_denied"],
        1,
    )
    try:
        block.ingress.publish({"rx_packets": 5, "mac1_invalid": 2}, 1, 1)
        block.workers[0].publish(
            {"udp_flows": 4, "tcp_flows": 1, "tcp_dials_ok": 7, "policy_denied": 1}, 2, 1
        )
        block.publish_peers([PeerSample(KEY, 1, 1000, 2000, 10, 20, 1, 123.0)])
        snap = snapshot(
            block,
            {
                "ring_depth:in0": 3,
                "worker_restarts": 1,
                "rss_bytes:ingress": 1e7,
                "cpu_seconds:w0": 1.5,
            },
        )
        text = render_prometheus(snap)
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        rx = fams["wgslirp_peer_rx_bytes"].samples[0]
        assert rx.value == 1000 and rx.labels["public_key"].endswith("=")
        flows = {s.labels["proto"]: s.value for s in fams["wgslirp_flows"].samples}
        assert flows == {"tcp": 1, "udp": 4, "icmp": 0}
        dials = {s.labels["result"]: s.value for s in fams["wgslirp_tcp_dials"].samples}
        assert dials == {"ok": 7, "failed": 0}
        drops = {s.labels["reason"]: s.value for s in fams["wgslirp_dropped_packets"].samples}
        assert drops == {"mac1_invalid": 2}
        assert fams["wgslirp_ring_depth"].samples[0].labels == {"ring": "in0"}
        assert fams["wgslirp_worker_restarts"].samples[0].value == 1
        assert fams["wgslirp_peer_last_handshake_seconds"].samples[0].value == 123.0
        line = render_log(snap, "text")
        assert line.startswith("metrics ") and "rx_packets=5" in line and "udp_flows=4" in line
        doc = json.loads(render_log(snap, "json"))
        assert doc["rx_packets"] == 5 and doc["per_peer"][0]["tx_bytes"] == 2000
    finally:
        block.close()


def test_hung_children_are_judged_by_their_own_heartbeat_or_their_fork_time() -> None:
    import time

    from wgslirp.runtime.monitor import Monitor

    block = MetricsBlock(["rx_packets"], ["udp_flows"], nworkers=2)
    try:
        children = {101: "ingress", 102: "worker 0", 103: "worker 1"}
        mon = Monitor(block, [], lambda: dict(children), lambda: 0)
        now = time.monotonic_ns()
        s = 1_000_000_000
        block.ingress.publish({"rx_packets": 1}, 101, 1)  # its own, fresh heartbeat
        block.workers[0].publish({"udp_flows": 0}, 999, 1)  # a dead predecessor's, fresh
        block.workers[1].publish({"udp_flows": 0}, 999, 1)
        started = {101: now - 60 * s, 102: now - 60 * s, 103: now}
        # worker 0 never published since its fork a minute ago: hung, whatever the section
        # still says; worker 1 was forked just now: not yet judged; ingress is alive
        assert mon.hung(30.0, started, now) == [(102, "worker 0", 60.0)]
        assert mon.hung(90.0, started, now) == []
    finally:
        block.close()


def test_every_counter_any_process_keeps_is_on_the_metrics_endpoint_and_in_the_log() -> None:
    from wgslirp.runtime.ingress import INGRESS_COUNTERS
    from wgslirp.runtime.worker import WORKER_COUNTERS

    block = MetricsBlock(INGRESS_COUNTERS, WORKER_COUNTERS, 2)
    try:
        # Distinct values, so a counter found under the wrong name would not match.
        ing = {name: 1000 + i for i, name in enumerate(INGRESS_COUNTERS)}
        wrk = {name: 5000 + i for i, name in enumerate(WORKER_COUNTERS)}
        block.ingress.publish(ing, 1, 1)
        block.workers[0].publish(wrk, 2, 1)
        block.workers[1].publish(wrk, 3, 1)
        snap = snapshot(block, forwards=[f"f{i}" for i in range(MAX_FORWARD_METRICS)])
        totals = snap.totals()
        fams = {f.name: f for f in text_string_to_metric_families(render_prometheus(snap))}
        per_forward = {
            (s.labels["forward"], s.labels.get("result") or "bytes_" + s.labels["direction"]): (
                s.value
            )
            for fam in ("wgslirp_forward_connections", "wgslirp_forward_bytes")
            for s in fams[fam].samples
        }
        by_label = {
            (fam, k, v): s.value
            for fam, f in fams.items()
            for s in f.samples
            for k, v in s.labels.items()
        }
        curated = {
            "tcp_flows": ("wgslirp_flows", "proto", "tcp"),
            "udp_flows": ("wgslirp_flows", "proto", "udp"),
            "icmp_flows": ("wgslirp_flows", "proto", "icmp"),
            "tcp_dials_ok": ("wgslirp_tcp_dials", "result", "ok"),
            "tcp_dials_failed": ("wgslirp_tcp_dials", "result", "failed"),
        }
        missing = []
        for name in sorted({*INGRESS_COUNTERS, *WORKER_COUNTERS}):
            want = totals[name]
            if name in curated:
                got = by_label.get(curated[name])
            elif ("wgslirp_dropped_packets", "reason", name) in by_label:
                got = by_label[("wgslirp_dropped_packets", "reason", name)]
            elif name == "peers":
                continue  # the gauge counts the peers published (none here), not a sum
            elif m := re.fullmatch(r"fwd(\d+)_(\w+)", name):  # labelled by forward
                got = per_forward.get((f"f{m.group(1)}", m.group(2)))
            else:
                fam = fams.get(f"wgslirp_{name}")
                got = fam.samples[0].value if fam else None
            if got != want:
                missing.append((name, want, got))
        assert missing == []
        doc = json.loads(render_log(snap, "json"))
        assert doc["cookie_replies_sent"] == totals["cookie_replies_sent"]
        assert doc["handshake_rate_limited"] == totals["handshake_rate_limited"]
    finally:
        block.close()
