"""sd_notify: the protocol against sockets the test owns, the watchdog's decisions, and
the real router talking to a fake `$NOTIFY_SOCKET` the way systemd would see it."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from wgslirp.obs.notify import Notifier, Watchdog, watchdog_interval
from wgslirp_testkit.ports import free_udp_port
from wgslirp_testkit.proc import child_pid
from wgslirp_testkit.router import RouterProcess


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notification socket."""
    path = tmp_path / "notify.sock"
    if len(str(path)) > 100:  # sun_path limit
        path = Path("/tmp") / f"wgslirp-notify-{uuid.uuid4().hex[:12]}.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(5)
    try:
        yield s, str(path)
    finally:
        s.close()
        path.unlink(missing_ok=True)


def test_disabled_without_notify_socket() -> None:
    n = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not n.enabled
    assert n.watchdog_interval is None  # no socket, no watchdog, whatever the env says
    assert n.ready("x") is False
    assert n.watchdog() is False
    assert n.sent == 0 and n.failed == 0


def test_path_socket_receives_messages(listener: tuple[socket.socket, str]) -> None:
    s, path = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("serving 1 peers, 2 workers")
    assert s.recv(4096) == b"READY=1\nSTATUS=serving 1 peers, 2 workers"
    assert n.status("hello")
    assert s.recv(4096) == b"STATUS=hello"
    assert n.watchdog()
    assert s.recv(4096) == b"WATCHDOG=1"
    assert n.stopping()
    assert s.recv(4096) == b"STOPPING=1"
    assert n.sent == 4
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"wgslirp-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    try:
        n = Notifier(f"@{name}")
        assert n.ready()
        assert s.recv(4096) == b"READY=1"
        n.close()
    finally:
        s.close()


def test_unreachable_socket_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(str(tmp_path / "nobody-listens"))
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.failed == 2
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per ping


def test_unsupported_address_kind_is_disabled() -> None:
    assert not Notifier("vsock:2:1234").enabled


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "abc"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "200000"}, 0.1),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "4242"}, 0.1),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(env, pid=4242) == expected


class _Recorder(Notifier):
    def __init__(self, interval: float | None) -> None:
        super().__init__("/unused", interval)
        self.pings: list[str] = []

    def notify(self, *fields: str) -> bool:
        self.pings.extend(fields)
        return True


def test_watchdog_pings_every_interval_while_healthy() -> None:
    rec = _Recorder(0.5)
    wd = Watchdog(rec)
    assert wd.tick(0.0)
    assert not wd.tick(0.2)
    assert wd.get_timer() == 0.5
    assert wd.tick(0.5)
    assert not wd.tick(1.0, healthy=False)  # a child is down: no ping...
    assert wd.tick(1.1)  # ...until it is back
    assert rec.pings == ["WATCHDOG=1"] * 3


def test_watchdog_withheld_while_crash_looping(caplog: pytest.LogCaptureFixture) -> None:
    rec = _Recorder(0.5)
    wd = Watchdog(rec, burst=5, window=10.0)
    for i in range(6):
        wd.restarted(float(i))
    assert not wd.tick(6.0)
    assert not wd.tick(7.0)
    assert wd.withheld
    assert sum("withholding" in r.getMessage() for r in caplog.records) == 1
    # The restarts age out of the window: the router is stable again.
    assert wd.tick(10.5)
    assert not wd.withheld


def test_watchdog_without_interval_never_pings() -> None:
    rec = _Recorder(None)
    wd = Watchdog(rec)
    assert wd.get_timer() is None
    assert not wd.tick(100.0)
    wd.handle_timer(200.0)
    assert rec.pings == []


def test_watchdog_as_loop_timer() -> None:
    rec = _Recorder(0.25)
    wd = Watchdog(rec)
    wd.handle_timer(1.0)
    assert wd.get_timer() == 1.25
    assert rec.pings == ["WATCHDOG=1"]


# ------------------------------------------------------------------ the real router


def _collect(s: socket.socket, until: float, stop: str | None = None) -> list[list[str]]:
    """Messages received before `until`, or up to the first one holding `stop`."""
    out: list[list[str]] = []
    while (left := until - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            out.append(s.recv(4096).decode().split("\n"))
        except TimeoutError:
            break
        if stop is not None and stop in out[-1]:
            break
    return out


def _router_env(tmp_path: Path, path: str, workers: int) -> dict[str, str]:
    return {
        "WGSLIRP_STATE_DIR": str(tmp_path / "state"),
        "WG_LISTEN_ADDR": "127.0.0.1",
        "WG_LISTEN_PORT": str(free_udp_port()),
        "PROCESSOR_WORKERS": str(workers),
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "200000",
        "WG_INTERFACE_NAME": f"wgn{uuid.uuid4().hex[:8]}",  # leave the default's wg socket
    }


@pytest.mark.parametrize("workers", [1, 0], ids=["supervisor", "inline"])
def test_router_notifies_ready_status_watchdog_stopping(
    tmp_path: Path, listener: tuple[socket.socket, str], workers: int
) -> None:
    s, path = listener
    env = _router_env(tmp_path, path, workers)
    with RouterProcess([sys.executable, "-m", "wgslirp"], env) as r:
        s.settimeout(20)
        first = s.recv(4096).decode().split("\n")
        assert first[0] == "READY=1", first
        status = [f for f in first if f.startswith("STATUS=")]
        worker_text = "1 workers" if workers else "inline worker"
        assert status == [f"STATUS=serving 1 peers, {worker_text}"], first
        r.wait_for_line(r"listening on 127\.0\.0\.1:\d+", timeout=5)  # announce came first
        msgs = _collect(s, time.monotonic() + 1.0)
        pings = sum(m == ["WATCHDOG=1"] for m in msgs)
        assert pings >= 4, msgs  # every 0.1 s for a second, with slack for a busy machine
        assert r.terminate(timeout=5) == 0, r.output()  # one SIGTERM, as systemd sends
        rest = _collect(s, time.monotonic() + 1.0, stop="STOPPING=1")
        assert ["STOPPING=1", "STATUS=stopping"] in rest, rest


def test_router_withholds_watchdog_while_a_worker_crash_loops(
    tmp_path: Path, listener: tuple[socket.socket, str]
) -> None:
    s, path = listener
    env = _router_env(tmp_path, path, 1)
    with RouterProcess([sys.executable, "-m", "wgslirp"], env) as r:
        s.settimeout(20)
        assert s.recv(4096).startswith(b"READY=1")
        killed: set[int] = set()
        deadline = time.monotonic() + 20
        while len(killed) < 7 and time.monotonic() < deadline:
            pid = child_pid(r.pid, "wgslirp-w0")
            if pid is not None and pid not in killed:
                os.kill(pid, signal.SIGKILL)  # our router's own child, by PID
                killed.add(pid)
            time.sleep(0.02)
        assert len(killed) == 7, r.output()
        r.wait_for_line("withholding the systemd watchdog", timeout=5)
        time.sleep(0.2)
        _collect(s, time.monotonic() + 0.05)  # pings sent before the decision
        msgs = _collect(s, time.monotonic() + 0.8)
        assert ["WATCHDOG=1"] not in msgs, msgs
        assert r.terminate(timeout=5) == 0, r.output()
