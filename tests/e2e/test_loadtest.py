"""scripts/loadtest.py (wgslirp_testkit.loadtest): a small run through a real tunnel must
show zero errors, and its verification must be able to fail (a corrupted byte, a corrupted
datagram, a lying sink).

Only the tunnel run needs root (it is marked e2e); the verifier checks and the loopback runs
(``--router none``) run everywhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from wgslirp_testkit.loadtest.cli import parse_args
from wgslirp_testkit.loadtest.protocol import (
    MAX_CHUNK,
    PERIOD,
    StreamVerifier,
    count_corrupt,
    make_pattern,
    new_stats,
    udp_payload,
    udp_reply_status,
)
from wgslirp_testkit.loadtest.report import percentile, summarize
from wgslirp_testkit.sampling import MemSampler

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "loadtest.py"
CI_SIZE = ["--tcp-flows", "20", "--tcp-bytes", "256K", "--udp-flows", "10", "--udp-count", "200"]


def run_loadtest(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def total_row(stdout: str) -> dict[str, str]:
    """The summary's ``total`` row, by column (the cells of the latency columns are empty)."""
    lines = stdout.splitlines()
    hdr = next(i for i, ln in enumerate(lines) if ln.startswith("kind "))
    total = next(ln for ln in lines[hdr:] if ln.startswith("total "))
    cells = total.split()
    # total, flows, ok, bytes (2 words), Mbit/s, conn fail, resets, corrupt, timeouts, lost
    return dict(
        zip(
            [
                "kind",
                "flows",
                "ok",
                "bytes",
                "unit",
                "mbit",
                "conn_fail",
                "resets",
                "corrupt",
                "timeouts",
                "udp_lost",
            ],
            cells,
            strict=True,
        )
    )


# --------------------------------------------------------------------------- through a tunnel


@pytest.mark.e2e
def test_small_load_through_a_real_tunnel_has_zero_errors(tmp_path: Path) -> None:
    out = tmp_path / "lt.json"
    # a 3 s UDP timeout: parallel e2e tests may starve the router for a moment, and a late
    # reply is not a lost one
    r = run_loadtest(
        "--router", "self", "--workers", "2", *CI_SIZE, "--udp-timeout", "3", "--json", str(out)
    )
    report = f"exit {r.returncode}\n--- stdout ---\n{r.stdout}\n--- stderr ---\n{r.stderr}"
    assert r.returncode == 0, report
    assert "RESULT: PASS (0 errors)" in r.stdout, report
    assert re.search(r"tcp \d+/20 flows done", r.stderr), "no progress relayed\n" + report
    row = total_row(r.stdout)
    assert (row["flows"], row["ok"]) == ("30", "30"), report
    assert [row[k] for k in ("conn_fail", "resets", "corrupt", "timeouts", "udp_lost")] == [
        "0"
    ] * 5, report
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["passed"] and data["errors"] == 0 and data["problems"] == [], report
    rows = data["rows"]
    assert sum(rows[k]["ok"] for k in ("tcp echo", "tcp download", "tcp upload")) == 20
    assert rows["tcp echo"]["bytes"] == 7 * 2 * 256 * 1024  # both directions
    assert rows["tcp download"]["bytes"] == 7 * 256 * 1024
    assert rows["tcp upload"]["bytes"] == 6 * 256 * 1024
    udp = rows["udp echo"]
    assert (udp["ok"], udp["sent"], udp["replies"], udp["lost"]) == (10, 2000, 2000, 0)
    assert data["router"]["exit"] == 0
    assert data["router"]["counters"]["internal_errors"] == 0
    assert data["router"]["counters"]["tcp_dials_ok"] == 20
    mem = data["router"]["memory"]  # sampled from the live router: tens of MiB, not 0
    assert mem["samples"] >= 2 and 10 * 2**20 < mem["peak"] < 2**30, report
    assert "router memory (PSS, all processes" in r.stdout, report
    # the namespace-side drop counters were read (present in the JSON even when zero)
    assert "guest udp RcvbufErrors" in data["udp_socket_drops"], report


# --------------------------------------------------------------------------- the verifiers


def test_stream_verifier_counts_a_corrupted_byte() -> None:
    pat = make_pattern()
    size = 3 * MAX_CHUNK + 1234  # several pieces, across the pattern's wrap-around
    offset = PERIOD - 1000
    good = (pat[:PERIOD] * 2)[offset : offset + size]
    v = StreamVerifier(pat, offset, size)
    for i in range(0, size, 70_001):
        assert v.feed(good[i : i + 70_001]) == 0
    assert v.complete and v.corrupt == 0

    bad = bytearray(good)
    bad[MAX_CHUNK + 17] ^= 0x01
    v = StreamVerifier(pat, offset, size)
    assert sum(v.feed(bad[i : i + 4096]) for i in range(0, size, 4096)) == 1
    assert v.corrupt == 1 and v.complete

    v = StreamVerifier(pat, offset, 10)
    assert v.feed(good[:10] + b"xyz") == 3  # bytes past the end are corrupt
    assert StreamVerifier(pat, offset + 1, size).feed(good[:1000]) > 900  # misplaced


def test_count_corrupt() -> None:
    assert count_corrupt(b"abcdef", b"abcdef") == 0
    assert count_corrupt(b"abcdef", b"abXdeY") == 2
    assert count_corrupt(b"abcdef", b"abc") == 3
    assert count_corrupt(b"", b"ab") == 2


def test_udp_reply_check_catches_corruption() -> None:
    pat = make_pattern()
    req = udp_payload(pat, 3, 41, 1000)
    assert len(req) == 1000
    assert udp_reply_status(pat, 3, 1000, req) == ("ok", 41)
    flipped = bytearray(req)
    flipped[500] ^= 0x80
    assert udp_reply_status(pat, 3, 1000, bytes(flipped)) == ("corrupt", 41)
    assert udp_reply_status(pat, 3, 1000, req[:-1]) == ("corrupt", 41)
    assert udp_reply_status(pat, 4, 1000, req) == ("corrupt", None)  # another flow's
    assert udp_reply_status(pat, 3, 1000, req[:5]) == ("corrupt", None)
    assert req != udp_payload(pat, 3, 42, 1000)


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 90) == 7.0
    assert percentile([], 50) is None


def test_udp_loss_over_the_limit_fails_the_run() -> None:
    args = parse_args(
        ["--router", "none", "--tcp-flows", "0", "--udp-flows", "1", "--udp-count", "100"]
    )
    st = new_stats()
    st.update(started=1, ok=0, failed=1, sent=100, replies=99, lost=1, bytes=99 * 2000)
    result = {
        "elapsed": 1.0,
        "stats": {"udp echo": st},
        "latency_ms": {"udp echo": [1.0]},
        "latency_counts": {"udp echo": 1},
        "connect_ms": [],
        "timeline": [],
    }
    s = summarize(result, {"mode": "none"}, args)
    assert not s["passed"] and s["errors"] == 1 and "lost" in s["problems"][0]
    args.max_udp_loss = 1.0
    assert summarize(result, {"mode": "none"}, args)["passed"]


def test_memory_growth_over_the_limit_fails_the_run() -> None:
    args = parse_args(
        ["--router", "none", "--tcp-flows", "1", "--max-mem-growth", "8", "--duration", "1"]
    )
    result = {
        "elapsed": 1.0,
        "stats": {},
        "latency_ms": {},
        "latency_counts": {},
        "connect_ms": [],
        "timeline": [],
    }
    mib = 2**20
    info: dict[str, Any] = {
        "mode": "self",
        "exit": 0,
        "counters": {"internal_errors": 0},
        "memory": {
            "start": 50 * mib,
            "mid": 60 * mib,
            "end": 67 * mib,
            "peak": 67 * mib,
            "growth": 7 * mib,
            "samples": 9,
            "seconds": 8.0,
        },
    }
    assert summarize(result, info, args)["passed"]
    info["memory"] |= {"end": 69 * mib, "peak": 69 * mib, "growth": 9 * mib}
    s = summarize(result, info, args)
    assert not s["passed"] and "memory grew 9.00 MiB" in s["problems"][0]
    args.max_mem_growth = None  # report only
    assert summarize(result, info, args)["passed"]


def test_mem_sampler_reads_a_live_process_tree() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with MemSampler(os.getpid(), period=0.05) as m:
            time.sleep(0.3)
        s = m.summary()
        assert s is not None and s["samples"] >= 3 and s["peak"] > 5 * 2**20
    finally:
        child.kill()
        child.wait()


# --------------------------------------------------------------------------- loopback runs


def test_loopback_run_passes_and_injected_corruption_fails_it(tmp_path: Path) -> None:
    r = run_loadtest("--router", "none", *CI_SIZE, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT: PASS (0 errors)" in r.stdout

    out = tmp_path / "bad.json"
    r = run_loadtest(
        "--router", "none", *CI_SIZE, "--inject-corruption", "--json", str(out), timeout=120
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "RESULT: FAIL" in r.stdout
    assert int(total_row(r.stdout)["corrupt"]) > 0
    rows = json.loads(out.read_text())["rows"]
    # every kind of flow noticed: echo and source streams, the sink's verdict, UDP replies
    for kind in ("tcp echo", "tcp download", "tcp upload", "udp echo"):
        assert rows[kind]["corrupt"] > 0, (kind, rows[kind])
        assert rows[kind]["ok"] == 0, (kind, rows[kind])


def test_bad_arguments_exit_2() -> None:
    r = run_loadtest("--endpoint", "192.0.2.1:51820", "--client-config", "/nonexistent")
    assert r.returncode == 2 and "127.0.0.0/8" in r.stderr
    r = run_loadtest("--tcp-mix", "sideways")
    assert r.returncode == 2
