"""The read gate (runtime/readgate.py) on its own, with rings whose free space the test
sets: credit from the fullest ring, a pause when one lacks room for a train, resuming at a
quarter free, and a ring that stays full passed over after pause_max."""

from __future__ import annotations

from dataclasses import dataclass

from wgslirp.runtime.readgate import GRO_TRAIN_MAX, PAUSE_MAX, ReadGate


@dataclass
class FakeRing:
    slots: int
    free: int

    def free_slots(self) -> int:
        return self.free


def test_credit_is_the_fullest_rings_room_less_one_train() -> None:
    a, b = FakeRing(1024, 1024), FakeRing(1024, 500)
    gate = ReadGate([a, b])
    assert gate.headroom == GRO_TRAIN_MAX and gate.resume_free == 256
    assert gate.credit(0.0, 256) == 256  # capped by what was asked
    b.free = 200
    assert gate.credit(0.0, 256) == 200 - GRO_TRAIN_MAX
    assert not gate.paused


def test_a_ring_without_room_for_a_train_pauses_until_a_quarter_is_free() -> None:
    a, b = FakeRing(1024, 1024), FakeRing(1024, GRO_TRAIN_MAX)
    gate = ReadGate([a, b])
    assert gate.credit(1.0, 256) == 0 and gate.paused and gate.pauses == 1
    assert gate.credit(1.0, 256) == 0 and gate.pauses == 1  # still the same pause
    b.free = 255
    assert not gate.ready(1.001)
    b.free = 256
    assert gate.ready(1.002) and not gate.paused
    assert abs(gate.paused_seconds - 0.002) < 1e-9
    assert gate.credit(1.002, 256) == 256 - GRO_TRAIN_MAX
    assert gate.passed_over == 0


def test_a_ring_still_full_after_pause_max_is_passed_over_until_it_drains() -> None:
    slow, other = FakeRing(1024, 10), FakeRing(1024, 1024)
    gate = ReadGate([slow, other])
    assert gate.credit(5.0, 256) == 0
    assert not gate.ready(5.0 + PAUSE_MAX / 2)
    assert gate.ready(5.0 + PAUSE_MAX)  # the others wait no longer than this
    assert gate.passed_over == 1
    # Passed over: the other ring alone decides, while the slow one stays full ...
    assert gate.credit(5.1, 256) == 256
    other.free = 100
    assert gate.credit(5.1, 256) == 100 - GRO_TRAIN_MAX
    # ... and once it has drained to the resume level it holds reading up again when full.
    slow.free = 300
    other.free = 1024
    assert gate.credit(5.2, 256) == 300 - GRO_TRAIN_MAX  # counted again
    slow.free = 10
    assert gate.credit(5.3, 256) == 0 and gate.pauses == 2


def test_small_rings_keep_proportionally_less_back() -> None:
    gate = ReadGate([FakeRing(64, 64)])
    assert gate.headroom == 8 and gate.resume_free == 16
    assert gate.credit(0.0, 256) == 56


def test_without_rings_reading_is_never_held() -> None:
    gate = ReadGate([])
    assert gate.credit(0.0, 256) == 256 and gate.ready(0.0)
