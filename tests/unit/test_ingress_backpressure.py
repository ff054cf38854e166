"""Back-pressure in ingress (runtime/readgate.py through runtime/ingress.py), with real
sockets and rings: what a full ring cannot take stays in the WireGuard socket, undecrypted,
and arrives whole once the worker drains; a ring that stays full holds the other worker's
traffic up no longer than PAUSE_MAX."""

from __future__ import annotations

from tests.unit.test_ingress import GUEST, NOW, REMOTE, Rig, rig, udp_packet
from wgslirp.net import flowkey
from wgslirp.runtime.readgate import PAUSE_MAX
from wgslirp.shm.ring import Ring

__all__ = ["rig"]  # the fixture, used by name


def packets_for(shard: int, count: int, first_port: int = 20000) -> list[bytes]:
    out: list[bytes] = []
    port = first_port
    while len(out) < count:
        pkt = udp_packet(GUEST, REMOTE, port, 9, port.to_bytes(2, "big") * 20)
        if flowkey.shard_of(pkt, len(pkt), 2) == shard:
            out.append(pkt)
        port += 1
    return out


def take(ring: Ring) -> list[bytes]:
    cons = ring.consumer()
    got = []
    for i in range(cons.available()):
        slot, length, _peer = cons.peek_slot(i)
        got.append(bytes(slot[:length]))
    cons.release(cons.available())
    return got


def test_a_full_ring_leaves_datagrams_in_the_socket_not_decrypted_and_dropped(rig: Rig) -> None:
    ing = rig.ingress
    sent = packets_for(0, 150)  # more than the 64-slot ring holds
    before = ing.datagrams_received
    for pkt in sent:
        rig.send_packet(pkt)
    rig.turn_until(lambda: ing.stats()["read_pauses"] >= 1)
    for _ in range(20):  # the clock stands still: the pause cannot run out
        rig.loop.run_once()
    st = ing.stats()
    assert st["ring_full_dropped"] == 0
    assert ing.datagrams_received - before <= 64  # the rest still waits in the socket
    got: list[bytes] = []

    def drained() -> bool:
        got.extend(take(rig.to_workers[0]))
        return len(got) >= len(sent)

    rig.turn_until(drained)
    assert got == sent  # every one, in order
    assert ing.stats()["ring_full_dropped"] == 0 and ing.stats()["ring_passed_over"] == 0


def test_a_ring_that_stays_full_holds_the_other_worker_up_only_pause_max(rig: Rig) -> None:
    ing = rig.ingress
    t = [NOW]  # the session is keyed to this clock
    rig.loop.clock = lambda: t[0]
    stuck = packets_for(0, 70)
    for pkt in stuck:
        rig.send_packet(pkt)
    rig.turn_until(lambda: ing.stats()["read_pauses"] >= 1)
    others = packets_for(1, 10, first_port=40000)
    for pkt in others:
        rig.send_packet(pkt)
    for _ in range(5):
        rig.loop.run_once()
    assert take(rig.to_workers[1]) == []  # held in the socket behind the full ring
    t[0] += PAUSE_MAX
    got: list[bytes] = []

    def arrived() -> bool:
        got.extend(take(rig.to_workers[1]))
        return len(got) >= len(others)

    rig.turn_until(arrived)
    assert got == others
    st = ing.stats()
    assert st["ring_passed_over"] == 1
    # worker 0 never drained: what did not fit was dropped at its ring, as without the gate
    assert st["ring_full_dropped"] == len(stuck) - rig.to_workers[0].consumer().available()
