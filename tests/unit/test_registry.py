"""The open-connection registry a replacement worker reads (shm/registry.py)."""

from __future__ import annotations

import os

from wgslirp.shm.registry import Entry, FlowRegistry


def test_a_forked_replacement_adopts_what_its_predecessor_left_open() -> None:
    reg = FlowRegistry(8)
    try:
        pid = os.fork()
        if pid == 0:  # the worker: opens three, closes one, then dies without cleaning up
            slots = [
                reg.add(Entry(3, 0x0A4D0002, 40000 + i, 0x7F000001, 80, 1000 + i, 7))
                for i in range(3)
            ]
            reg.remove(slots[1])
            os._exit(0)
        os.waitpid(pid, 0)
        left = reg.adopt()  # what the replacement finds
        assert sorted(left) == [
            Entry(3, 0x0A4D0002, 40000, 0x7F000001, 80, 1000, 7),
            Entry(3, 0x0A4D0002, 40002, 0x7F000001, 80, 1002, 7),
        ]
        assert reg.adopt() == [] and len(reg) == 0  # adopted once: the table is clean
    finally:
        reg.close()


def test_a_full_registry_refuses_and_counts() -> None:
    reg = FlowRegistry(2)
    try:
        e = Entry(1, 1, 1, 2, 2, 0, 0)
        a, b = reg.add(e), reg.add(e)
        assert -1 not in (a, b) and reg.add(e) == -1 and reg.full == 1
        reg.remove(a)
        assert reg.add(e) == a and len(reg) == 2
        reg.remove(-1)  # a connection that never got a slot: nothing to do
        assert len(reg) == 2
    finally:
        reg.close()


def test_ipv6_connections_are_kept_whole() -> None:
    guest6 = int.from_bytes(bytes.fromhex("fd77" + "00" * 13 + "02"), "big")
    remote6 = (0x20010DB8 << 96) | 0xFFFF_FFFF_FFFF_FFFF_0000_0007
    reg = FlowRegistry(4)
    try:
        reg.add(Entry(2, guest6, 40000, remote6, 443, 0xFFFFFFFF, 5))
        reg.add(Entry(2, 0x0A4D0002, 40001, 0x7F000001, 80, 1, 2))
        assert sorted(reg.adopt()) == [
            Entry(2, 0x0A4D0002, 40001, 0x7F000001, 80, 1, 2),
            Entry(2, guest6, 40000, remote6, 443, 0xFFFFFFFF, 5),
        ]
    finally:
        reg.close()
