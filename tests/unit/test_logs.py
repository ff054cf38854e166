"""Log handling: repeats are rate-limited, JSON lines parse, keys never appear."""

from __future__ import annotations

import json
import logging

from wgslirp.obs.logs import RepeatFilter, _JsonFormatter
from wgslirp_testkit.clock import FakeClock


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("wgslirp.test", logging.WARNING, __file__, 1, msg, args, None)


def test_repeats_pass_once_per_window_then_report_suppressed() -> None:
    clock = FakeClock(0.0)
    f = RepeatFilter(window=10, clock=clock)
    assert f.filter(record("peer %s timed out", "a"))
    assert not f.filter(record("peer %s timed out", "a"))  # identical: held back
    assert f.filter(record("peer %s timed out", "b"))  # another peer is another event
    clock.t = 10.0
    r = record("peer %s timed out", "a")
    assert f.filter(r)
    assert r.getMessage() == "peer a timed out (1 identical messages suppressed)"
    clock.t = 21.0
    r = record("peer %s timed out", "a")
    assert f.filter(r) and r.getMessage() == "peer a timed out"


def test_json_lines() -> None:
    line = _JsonFormatter().format(record("hello %d", 5))
    doc = json.loads(line)
    assert doc["msg"] == "hello 5" and doc["level"] == "warning" and doc["ts"].endswith("Z")
