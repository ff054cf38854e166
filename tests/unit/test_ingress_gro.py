"""UDP GRO on the WireGuard socket (runtime/ingress.py GroSwitch): a train of datagrams in
one receive is split back into every one of them, and GRO is on only while trains come."""

from __future__ import annotations

import struct

import pytest

from tests.unit.test_ingress import GUEST, REMOTE, Rig, rig, udp_packet
from wgslirp.runtime import ingress as ingress_module
from wgslirp.shm.ring import Ring

__all__ = ["rig"]  # the fixture, used by name

SOL_UDP = 17
UDP_SEGMENT = 103


def sealed(r: Rig, sizes: list[int], sport: int = 30000) -> list[bytes]:
    out = []
    for i, size in enumerate(sizes):
        pkt = bytearray(udp_packet(GUEST, REMOTE, sport + i % 4, 9, bytes([i % 251]) * size))
        buf = bytearray(len(pkt) + 64)
        k = r.client.encrypt(r.peer, pkt, len(pkt), 0.0, buf)
        out.append(bytes(buf[:k]))
    return out


def send_train(r: Rig, datagrams: list[bytes]) -> None:
    """One sendmsg, the kernel splits it (UDP GSO): datagrams of equal size, the last
    may be shorter."""
    seg = len(datagrams[0])
    r.sock.sendmsg(
        [b"".join(datagrams)], [(SOL_UDP, UDP_SEGMENT, struct.pack("H", seg))], 0, r.ingress.address
    )


def ring_packets(rings: list[Ring]) -> list[bytes]:
    got = []
    for ring in rings:
        cons = ring.consumer()
        for i in range(cons.available()):
            slot, length, _peer = cons.peek_slot(i)
            got.append(bytes(slot[:length]))
        cons.release(cons.available())
    return got


def drain(r: Rig, want: int) -> list[bytes]:
    got: list[bytes] = []

    def done() -> bool:
        got.extend(ring_packets(r.to_workers))
        return len(got) >= want

    r.turn_until(done)
    return got


def test_a_gso_train_is_received_whole_and_split_into_every_datagram(rig: Rig) -> None:
    gro = rig.ingress._gro
    assert gro is not None and gro.on and gro.quiet > 0  # the handshake came alone
    before = rig.ingress.datagrams_received
    train = sealed(rig, [100] * 23 + [40])  # equal sizes, then a shorter last one
    send_train(rig, train)
    got = drain(rig, 24)
    assert len(got) == 24 and rig.ingress.datagrams_received - before == 24
    assert gro.quiet == 0  # it came as one train
    payloads = sorted(p[28:] for p in got)
    assert payloads == sorted(bytes([i % 251]) * (40 if i == 23 else 100) for i in range(24))


def test_gro_goes_off_without_trains_and_is_tried_again_later(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingress_module, "GRO_QUIET", 8)
    gro = rig.ingress._gro
    assert gro is not None
    for d in sealed(rig, [60] * 12):
        rig.send(d)
    assert len(drain(rig, 12)) == 12
    assert not gro.on  # lone datagrams only: back to recvfrom_into
    for d in sealed(rig, [60] * 5, sport=31000):
        rig.send(d)
    assert len(drain(rig, 5)) == 5
    assert not gro.reading
    gro.probe_at = 0.0  # the probe interval is over: the next receive turns GRO on
    rig.send(sealed(rig, [60], sport=31500)[0])
    assert len(drain(rig, 1)) == 1
    assert gro.on and gro.reading
    send_train(rig, sealed(rig, [80] * 10, sport=32000))
    assert len(drain(rig, 10)) == 10
    assert gro.on and gro.quiet == 0  # a train again: GRO stays on
