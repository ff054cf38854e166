"""A reload the supervisor is asked for (SIGHUP, the config file changing on disk) reaches
ingress; while no ingress runs (it is being replaced) it is kept for the next one, so a
Secret updated during a restart is not lost. The forking is replaced by a stand-in; what
the forked ingress does with the request is covered by the e2e reload tests."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wgslirp.config import Config, load_config
from wgslirp.runtime.ingress import open_wg_socket
from wgslirp.runtime.supervisor import Supervisor


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[Supervisor]:
    cfg: Config = load_config(
        {"HOME": str(tmp_path), "PROCESSOR_WORKERS": "1", "PROCESSOR_QUEUE_CAP": "64"},
        resolve=lambda h: h,
    )
    sock = open_wg_socket("127.0.0.1", 0)
    s = Supervisor(cfg, sock, None, reload=lambda: cfg, watch=None)
    try:
        yield s
    finally:
        s.control.close()
        for ring in (*s.rings_in, *s.rings_out, *s.rings_big):
            ring.close()
        for registry in s.registries:
            registry.close()
        s.metrics.close()
        s._cfg_r.close()
        s._cfg_w.close()
        sock.close()


def fake_fork(sup: Supervisor, pid: int) -> Callable[[str, Callable[[], int]], None]:
    def fork(role: str, _body: Callable[[], int]) -> None:
        sup.children[pid] = role

    return fork


def test_reload_with_no_ingress_is_kept_for_the_next_one(
    sup: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    sup._forward_hup()
    assert sup._reload_at_start
    monkeypatch.setattr(sup, "_fork", fake_fork(sup, 999_999_999))
    sup._start("ingress")
    assert not sup._reload_at_start  # the new ingress took it along


def test_reload_to_an_ingress_that_just_died_is_kept(sup: Supervisor) -> None:
    sup.children[999_999_999] = "ingress"  # no such process: it died, not yet reaped
    sup._forward_hup()
    assert sup._reload_at_start


def test_reload_reaches_a_running_ingress(sup: Supervisor) -> None:
    # a stand-in ingress whose default SIGHUP action (terminate) shows the signal came
    # (SIGHUP set back to its default in the child: an ignored signal survives exec, and
    # another test in this pytest worker may have left SIGHUP ignored)
    child = subprocess.Popen(
        ["sleep", "30"],
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    try:
        sup.children[child.pid] = "ingress"
        sup._forward_hup()
        assert child.wait(10) == -signal.SIGHUP
        assert not sup._reload_at_start
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
