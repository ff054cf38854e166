"""A host's train of datagrams read in one receive (UDP GRO) reaches the guest datagram by
datagram: real loopback sockets, the host sending with UDP GSO, which loopback hands to a
GRO socket whole."""

from __future__ import annotations

import selectors
import socket
import struct
from collections.abc import Iterator

import pytest

from wgslirp.net import fragment, ipv6, udp
from wgslirp.net.ipv4 import addr_to_int
from wgslirp.runtime.loop import Loop
from wgslirp.shm.ring import BatchWriter, Ring
from wgslirp.slirp.bridge_context import BridgeContext
from wgslirp.slirp.nat_table import FlowTable
from wgslirp.slirp.policy import EgressPolicy
from wgslirp.slirp.udp_bridge import (
    RECV_BATCH,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    UdpBridge,
    UdpFlow,
)
from wgslirp_testkit.netns import ipv6_unavailable
from wgslirp_testkit.tcpconn import Egress

GUEST, GATEWAY = addr_to_int("10.77.0.2"), addr_to_int("10.77.0.1")
GUEST6, GW6 = ipv6.addr_to_int("fd77::2"), ipv6.addr_to_int("fd77::1")
MTU = 1380


def _no_gro() -> str | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError as exc:
        return f"no UDP GRO on this kernel ({exc})"
    finally:
        s.close()
    return None


pytestmark = pytest.mark.skipif(_no_gro() is not None, reason=str(_no_gro()))


class RingEgress(BatchWriter):
    """A real ring's BatchWriter (reserve hands out the same slot until commit), whose
    packets are read back in order."""

    def __init__(self) -> None:
        self.ring = Ring.create(64, 2048)
        super().__init__(self.ring.producer())
        self.cons = self.ring.consumer()
        self.packets: list[bytes] = []

    def take(self) -> list[bytes]:
        self.flush()
        self.cons.drain(lambda view, _peer: self.packets.append(bytes(view)))
        return self.packets


class SmallEgress(Egress):
    """The recording egress with room for `room` packets, then full."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def reserve(self) -> memoryview | None:
        if len(self.packets) >= self.room:
            return None
        return super().reserve()


class Rig:
    """A bridge with one flow to a loopback server, and a count of coalesced receives."""

    def __init__(
        self, family: socket.AddressFamily, room: int = 1000, egress: Egress | None = None
    ) -> None:
        self.server = socket.socket(family, socket.SOCK_DGRAM)
        self.server.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.server.settimeout(2)
        self.eg = egress if egress is not None else SmallEgress(room)
        v6 = family == socket.AF_INET6
        ctx = BridgeContext(self.eg, Loop(), mtu=MTU, gateway6=GW6 if v6 else None)
        policy = EgressPolicy(gateway6="fd77::1") if v6 else EgressPolicy(gateway="10.77.0.1")
        self.bridge = UdpBridge(ctx, policy, FlowTable[UdpFlow](60.0))
        self.trains = 0
        split = self.bridge._split_train

        def counting(flow: UdpFlow, slot: memoryview, nbytes: int, seg: int) -> bool:
            self.trains += 1
            return split(flow, slot, nbytes, seg)

        self.bridge._split_train = counting  # type: ignore[method-assign]
        port = self.server.getsockname()[1]
        buf = bytearray(2048)
        if v6:
            n = udp.build_udp_into6(buf, GUEST6, GW6, 40000, port, b"hi")
        else:
            n = udp.build_udp_into(buf, GUEST, GATEWAY, 40000, port, b"hi")
        self.bridge.from_guest(0, memoryview(buf), n, 0.0)
        self.bridge.flush()
        _, self.flow_addr = self.server.recvfrom(100)
        (self.flow,) = self.bridge.table.values()

    def train(self, payload: bytes, seg: int) -> None:
        """One GSO send: `payload` as datagrams of `seg` bytes (the last may be shorter)."""
        cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", seg))]
        self.server.sendmsg([payload], cmsg, 0, self.flow_addr)
        sel = selectors.DefaultSelector()
        sel.register(self.flow.sock, selectors.EVENT_READ)
        assert sel.select(2), "nothing arrived within 2 s"
        sel.close()
        self.bridge.on_readable(self.flow, 1.0)

    def close(self) -> None:
        self.bridge.close()
        self.server.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig(socket.AF_INET)
    yield r
    r.close()


def payloads(r: Rig, v6: bool = False) -> list[bytes]:
    """The payloads of what reached the guest, each checked to be a whole datagram from
    the server's port through the gateway address to the guest's."""
    out = []
    port = r.server.getsockname()[1]
    want = (GW6, GUEST6) if v6 else (GATEWAY, GUEST)
    for p in r.eg.packets:
        parsed = udp.parse(p, len(p))
        assert parsed is not None, "not a whole UDP datagram"
        src, dst, sport, dport, off, n = parsed
        assert (src, dst, sport, dport) == (*want, port, 40000)
        if v6:
            assert udp.checksum_ok(p, len(p))
        out.append(bytes(p[off : off + n]))
    return out


def test_a_flows_host_socket_asks_for_coalesced_receives(rig: Rig) -> None:
    assert rig.flow.sock.getsockopt(SOL_UDP, UDP_GRO) == 1


def test_a_train_read_at_once_reaches_the_guest_datagram_by_datagram(rig: Rig) -> None:
    """Ten 100-byte datagrams and a 37-byte one, sent as one GSO train and read in one
    receive, leave as eleven packets with their own bytes, in order, and are counted."""
    payload = bytes(i % 251 for i in range(1037))
    before = rig.bridge.ctx.stats.udp_rx_packets
    rig.train(payload, 100)
    assert rig.trains == 1
    got = payloads(rig)
    assert got == [payload[i : i + 100] for i in range(0, 1037, 100)]
    assert rig.bridge.ctx.stats.udp_rx_packets - before == 11
    idents = {struct.unpack_from("!H", p, 4)[0] for p in rig.eg.packets}
    assert len(idents) == 11


def test_a_train_longer_than_one_ring_slot_keeps_its_tail(rig: Rig) -> None:
    """32 datagrams of 1000 bytes: the receive fills the slot and runs on into scratch."""
    payload = bytes((i * 7) % 256 for i in range(32_000))
    rig.train(payload, 1000)
    assert rig.trains == 1
    assert payloads(rig) == [payload[i : i + 1000] for i in range(0, 32_000, 1000)]


def test_datagrams_of_a_train_too_big_for_the_tunnel_are_each_fragmented(rig: Rig) -> None:
    """Loopback carries 3,000-byte datagrams; each is fragmented to the tunnel MTU and
    reassembles to its own payload."""
    payload = bytes((i * 13) % 256 for i in range(3 * 3000))
    rig.train(payload, 3000)
    assert rig.trains == 1
    assert all(len(p) <= MTU for p in rig.eg.packets) and len(rig.eg.packets) == 9
    r = fragment.Reassembler()
    whole = [w for p in rig.eg.packets if (w := r.feed(p, len(p), 0.0)) is not None]
    got = [bytes(w[udp.PAYLOAD_OFFSET :]) for w in whole]
    assert got == [payload[i : i + 3000] for i in range(0, 9000, 3000)]


def test_a_train_the_egress_cannot_hold_is_cut_and_the_rest_counted() -> None:
    """Room for four packets: the first four datagrams go out, the other six are dropped
    and counted as egress_full, as when read one by one, and the socket is left drained."""
    r = Rig(socket.AF_INET, room=4)
    try:
        payload = bytes(range(200)) * 5
        r.train(payload, 100)
        assert payloads(r) == [payload[i : i + 100] for i in range(0, 400, 100)]
        assert r.bridge.ctx.stats.egress_full == 6
        assert r.bridge.ctx.stats.udp_rx_packets == 4
        sel = selectors.DefaultSelector()
        sel.register(r.flow.sock, selectors.EVENT_READ)
        assert sel.select(0) == []
        sel.close()
    finally:
        r.close()


@pytest.mark.skipif(ipv6_unavailable(), reason="no IPv6 loopback here")
def test_an_ipv6_train_becomes_ipv6_datagrams_with_their_checksums() -> None:
    r = Rig(socket.AF_INET6)
    try:
        payload = bytes(i % 256 for i in range(5 * 300 + 1))
        r.train(payload, 300)
        assert r.trains == 1
        assert payloads(r, v6=True) == [payload[i : i + 300] for i in range(0, 1501, 300)]
    finally:
        r.close()


def test_one_readiness_reads_at_most_a_batch_of_datagrams_in_trains_too(rig: Rig) -> None:
    """RECV_BATCH counts datagrams, not receives: three 32-datagram trains take two calls,
    64 then 32, so one call never brings more than the host back-pressure (checked
    between turns) allows for. Counted by receives, the first call took all 96."""
    payload = bytes(range(64)) * 32
    cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 64))]
    for _ in range(3):
        rig.server.sendmsg([payload], cmsg, 0, rig.flow_addr)
    sel = selectors.DefaultSelector()
    sel.register(rig.flow.sock, selectors.EVENT_READ)
    try:
        assert sel.select(2)
        rig.bridge.on_readable(rig.flow, 1.0)
        assert len(rig.eg.packets) == RECV_BATCH == 64 and rig.trains == 2
        assert sel.select(0), "the third train is left for the next turn"
        rig.bridge.on_readable(rig.flow, 1.0)
        assert len(rig.eg.packets) == 96 and payloads(rig) == [bytes(range(64))] * 96
    finally:
        sel.close()


def test_a_train_mixing_datagrams_above_and_below_the_tunnel_mtu_on_a_real_ring() -> None:
    """3,000 + 3,000 + 500 bytes: the first two are fragmented (their fragments take ring
    slots of their own, the slot held for the read first), the last goes whole in the
    next slot, not over a fragment already committed (a real BatchWriter hands out the same
    slot until commit, unlike the recording egress)."""
    eg = RingEgress()
    r = Rig(socket.AF_INET, egress=eg)  # type: ignore[arg-type]
    try:
        payload = bytes((i * 11) % 256 for i in range(6500))
        eg.take()  # nothing yet; the rig's first datagram went to the host, not back
        r.train(payload, 3000)
        assert r.trains == 1
        packets = eg.take()
        assert all(len(p) <= MTU for p in packets)
        reasm = fragment.Reassembler()
        whole = [w for p in packets if (w := reasm.feed(p, len(p), 0.0)) is not None]
        got = [bytes(w[udp.PAYLOAD_OFFSET :]) for w in whole]
        assert got == [payload[:3000], payload[3000:6000], payload[6000:]]
        assert r.bridge.ctx.stats.udp_rx_packets == 3
    finally:
        r.close()
        eg.ring.close()


def test_a_train_read_only_to_be_dropped_counts_each_of_its_datagrams() -> None:
    """No room at all: the tail drop takes the whole coalesced train out of the socket, and
    egress_full says ten, not one; udp_rx_packets counts none of them."""
    r = Rig(socket.AF_INET, room=0)
    try:
        r.train(bytes(1000), 100)
        assert r.bridge.ctx.stats.egress_full == 10
        assert r.bridge.ctx.stats.udp_rx_packets == 0 and r.eg.packets == []
    finally:
        r.close()
