"""How long the supervisor lets its workers stop before SIGKILL."""

from __future__ import annotations

from wgslirp.runtime.supervisor import STOP_GRACE, STOP_GRACE_MAX, stop_grace


def test_the_stop_grace_grows_with_the_connections_held_and_is_bounded() -> None:
    """A worker resets every connection it holds on the way out (and ingress sends each
    guest's RST): 100,000 took longer than a fixed 1.5 s, the workers were killed and their
    exit counters lost. The grace grows with what is held, but stays under the 10 s
    `docker stop` gives before its own SIGKILL, ingress's own STOP_GRACE included."""
    assert stop_grace(0) == STOP_GRACE
    assert stop_grace(-5) == STOP_GRACE  # a counter read mid-update never shortens it
    assert STOP_GRACE < stop_grace(20_000) < stop_grace(60_000) < STOP_GRACE_MAX
    assert stop_grace(10**7) == STOP_GRACE_MAX
    assert STOP_GRACE_MAX + STOP_GRACE < 10.0
