"""Host sockets made ahead of the flows that need them (wgslirp/slirp/spares.py)."""

from __future__ import annotations

import socket

import pytest

from wgslirp.slirp.spares import Spares


def test_a_spare_is_made_after_the_first_take_and_handed_out_next() -> None:
    sp = Spares()
    assert not sp.due
    first = sp.take(socket.SOCK_DGRAM, False)  # none ready: made on the spot
    assert sp.made_late == 1 and sp.taken == 0
    assert sp.due and sp.ready(socket.SOCK_DGRAM, False) == 0  # not in the taking turn
    sp()  # the loop's next quiet beat
    assert not sp.due and sp.ready(socket.SOCK_DGRAM, False) == 1
    spare = sp._spare[(socket.SOCK_DGRAM, False)][0]
    second = sp.take(socket.SOCK_DGRAM, False)
    assert second is spare and sp.taken == 1 and sp.ready(socket.SOCK_DGRAM, False) == 0
    assert second.family == socket.AF_INET and second.type == socket.SOCK_DGRAM
    assert second.getblocking() is False
    for s in (first, second):
        s.close()
    sp()
    sp.close()
    assert sp.ready(socket.SOCK_DGRAM, False) == 0


def test_only_kinds_and_families_in_use_get_spares() -> None:
    sp = Spares()
    sp.take(socket.SOCK_STREAM, False).close()
    sp()
    assert sp.ready(socket.SOCK_STREAM, False) == 1
    assert sp.ready(socket.SOCK_STREAM, True) == 0 and sp.ready(socket.SOCK_DGRAM, False) == 0
    sp.close()


def test_spares_are_set_up_as_the_bridge_asks() -> None:
    sp = Spares()
    sp.prepare(socket.SOCK_DGRAM, lambda s: s.setsockopt(socket.SOL_IP, socket.IP_TTL, 7))
    sp.take(socket.SOCK_DGRAM, False).close()
    sp()
    s = sp.take(socket.SOCK_DGRAM, False)
    assert s.getsockopt(socket.SOL_IP, socket.IP_TTL) == 7
    s.close()
    sp.close()


def test_a_spare_that_cannot_be_made_is_counted_and_not_retried() -> None:
    """A host without a family (or out of descriptors): the bridge's own take reports the
    error as socket() did; the timer does not try again every turn."""
    sp = Spares()
    calls: list[int] = []

    def broken(_s: socket.socket) -> None:
        calls.append(1)
        raise OSError(97, "Address family not supported by protocol")

    sp.prepare(socket.SOCK_STREAM, broken)
    with pytest.raises(OSError):
        sp.take(socket.SOCK_STREAM, True)
    sp()
    sp()
    assert sp.errors == 1 and len(calls) == 2  # the take's own try, one refill
    with pytest.raises(OSError):
        sp.take(socket.SOCK_STREAM, True)
    sp.close()


def test_without_keep_nothing_is_made_ahead() -> None:
    """What a bridge without a worker's spares uses: every socket made on the spot."""
    sp = Spares(keep=0)
    sp.take(socket.SOCK_DGRAM, False).close()
    sp()
    assert sp.ready(socket.SOCK_DGRAM, False) == 0
