"""The control plane both run modes share: listener first, watchdog by mode, sd_notify."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from wgslirp.config import Config, MetricsConfig
from wgslirp.obs.metrics import MetricsBlock
from wgslirp.runtime.control import ControlPlane, ListenError, status_line
from wgslirp.runtime.loop import Loop


@pytest.fixture
def block() -> Iterator[MetricsBlock]:
    b = MetricsBlock(("a",), ("b",), 1)
    yield b
    b.close()


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    s.bind(path)
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield s
    s.close()


def test_one_process_mode_pings_the_watchdog_from_a_loop_timer(
    block: MetricsBlock, notify: socket.socket
) -> None:
    """With no children the loop turning at all is the health signal."""
    loop = Loop()
    control = ControlPlane(Config(), loop, block, [], expected_roles=())
    try:
        assert control.watchdog in loop.timers and control.monitor in loop.timers
        control.ready(0)
        assert notify.recv(4096).decode().split("\n") == [
            "READY=1",
            "STATUS=serving 0 peers, inline worker",
        ]
        loop.run_once(block=False)
        assert notify.recv(4096) == b"WATCHDOG=1"
    finally:
        control.close()


def test_supervised_mode_pings_only_while_its_children_are_healthy(
    block: MetricsBlock, notify: socket.socket
) -> None:
    """The supervisor's judgement gates the ping, and it asks once per turn (no timer that
    would stay due, and so spin the loop, while a restart is pending)."""
    healthy = [False]
    loop = Loop()
    control = ControlPlane(Config(), loop, block, [], health=lambda: healthy[0])
    try:
        assert control.watchdog not in loop.timers
        control.tick(loop.clock())
        notify.settimeout(0.05)
        with pytest.raises(TimeoutError):
            notify.recv(4096)
        healthy[0] = True
        control.tick(loop.clock())
        assert notify.recv(4096) == b"WATCHDOG=1"
    finally:
        control.close()


def test_a_taken_metrics_port_is_a_listen_error_naming_the_setting(block: MetricsBlock) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cfg = msgspec.structs.replace(Config(), metrics=MetricsConfig(listen=("127.0.0.1", port)))
    loop = Loop()
    try:
        with pytest.raises(ListenError, match="METRICS_LISTEN"):
            ControlPlane(cfg, loop, block, [])
    finally:
        loop.close()
        taken.close()


def test_status_line_names_the_mode_and_restarts() -> None:
    assert status_line(Config(), 0) == "serving 0 peers, inline worker"
    assert status_line(Config(), 4, restarts=2) == "serving 0 peers, 4 workers, 2 restarts"
