"""Which beat the supervisor gives the loops of the processes it forks."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from wgslirp.runtime import supervisor
from wgslirp.runtime.loop import SHARED_SLEEP_BOUND, SPLIT_SLEEP_BOUND


class Built(Exception):
    """Raised by the stand-in Loop: the body is stopped right after choosing its loop."""


def test_ingress_and_workers_in_their_own_processes_get_the_split_beat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loop built for a forked ingress or worker waits up to SPLIT_SLEEP_BOUND; one made
    without saying (inline, the supervisor itself) keeps the short SHARED_SLEEP_BOUND.
    The bodies are entered in this process and stopped as soon as they build their loop."""
    bounds: list[float] = []

    def loop(*_a: Any, sleep_bound: float = SHARED_SLEEP_BOUND, **_k: Any) -> None:
        bounds.append(sleep_bound)
        raise Built

    monkeypatch.setattr(supervisor, "Loop", loop)
    sup = object.__new__(supervisor.Supervisor)
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        sup.sock, sup._cfg_r = pairs[0]
        sup._cfg_w = pairs[1][0]
        with pytest.raises(Built):
            sup._ingress_body()
        with pytest.raises(Built):
            sup._worker_body(0)()
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    assert bounds == [SPLIT_SLEEP_BOUND, SPLIT_SLEEP_BOUND]
    assert SPLIT_SLEEP_BOUND > SHARED_SLEEP_BOUND
