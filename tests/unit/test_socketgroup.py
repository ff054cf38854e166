"""SocketGroup (runtime/socketgroup.py): sockets watched through one descriptor of the
loop, muted and unmuted together, a broken handler costing only itself."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator

import pytest

from wgslirp.runtime.loop import Loop
from wgslirp.runtime.socketgroup import SocketGroup


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_a_muted_group_is_not_read_until_unmuted(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    loop = Loop(clock=lambda: 5.0)
    group = SocketGroup(loop)
    got: list[bytes] = []
    group.register(a, lambda now, mask: got.append(a.recv(100)))
    b.send(b"one")
    loop.run_once()
    assert got == [b"one"]
    group.mute()
    group.mute()  # idempotent
    b.send(b"two")
    for _ in range(3):
        loop.run_once(block=False)
    assert got == [b"one"] and group.mutes == 1
    group.unmute()
    loop.run_once()
    assert got == [b"one", b"two"]
    group.unregister(a)
    group.unregister(a)  # not registered any more: ignored
    assert len(group) == 0
    group.close()
    loop.close()


def test_a_handler_that_raises_costs_only_itself(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    c, d = socket.socketpair()
    try:
        loop = Loop(clock=lambda: 5.0)
        group = SocketGroup(loop)
        got: list[bytes] = []

        def broken(now: float, mask: int) -> None:
            a.recv(100)
            raise RuntimeError("bug")

        group.register(a, broken)
        group.register(c, lambda now, mask: got.append(c.recv(100)))
        b.send(b"x")
        d.send(b"y")
        loop.run_once()
        assert got == [b"y"] and group.errors == 1 and loop.errors == 1
        group.close()
        loop.close()
    finally:
        c.close()
        d.close()


Pairs = list[tuple[socket.socket, socket.socket]]


@contextlib.contextmanager
def rationed_group(n: int) -> Iterator[tuple[Loop, SocketGroup, Pairs, list[int]]]:
    """`n` socket pairs and a group with room for as many handler calls as `room[0]`
    says (each handler used here takes one)."""
    pairs = [socket.socketpair() for _ in range(n)]
    loop = Loop(clock=lambda: 5.0)
    room = [0]
    group = SocketGroup(loop, lambda: room[0] > 0)
    try:
        yield loop, group, pairs, room
    finally:
        group.close()
        loop.close()
        for a, b in pairs:
            a.close()
            b.close()


def test_ready_sockets_wait_for_a_later_turn_once_there_is_no_room() -> None:
    """Three sockets ready in one turn, room for one handler's output: the first is read,
    the other two stay ready (level-triggered) and are read in the turn after room came
    back, none of them lost or read only to be dropped."""
    with rationed_group(3) as (loop, group, pairs, room):
        got: list[bytes] = []

        def reader(s: socket.socket) -> None:
            def handler(now: float, mask: int) -> None:
                got.append(s.recv(100))
                room[0] -= 1

            group.register(s, handler)

        for a, b in pairs:
            reader(a)
            b.send(b"x")
        room[0] = 1
        loop.run_once()
        assert len(got) == 1 and group.deferred == 1
        room[0] = 10
        loop.run_once()
        assert len(got) == 3 and group.deferred == 1


def test_sockets_that_stay_ready_are_served_in_turn_when_room_is_short() -> None:
    """Five sockets that stay ready (a byte each, never read), room for two handlers a
    turn: epoll reports them in the same order every time, so without resuming where the
    last turn stopped the same two would be served forever. In five turns each socket is
    served twice."""
    with rationed_group(5) as (loop, group, pairs, room):
        served: list[int] = []

        def handler_for(i: int) -> Callable[[float, int], None]:
            def handler(now: float, mask: int) -> None:
                served.append(i)
                room[0] -= 1

            return handler

        for i, (a, b) in enumerate(pairs):
            group.register(a, handler_for(i))
            b.send(b"x")  # left unread: ready every turn
        for _ in range(5):
            room[0] = 2
            loop.run_once(block=False)
        assert sorted(served) == sorted(list(range(5)) * 2)
