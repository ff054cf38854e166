"""The worker as I/O glue (runtime/worker.py): real loopback sockets on the host side, real
shared-memory rings toward ingress, a real open-connection registry, and the loop turned by
hand with a fixed clock. What the bridges decide is tested in test_tcp_*.py and
test_udp_bridge.py; here: that the worker shell feeds them from its rings, performs what they
ask on host sockets, puts their packets on its outbound ring with the peer index kept, and
does the worker's own jobs (forgetting a peer, resetting guests on the way out, resetting
what a dead predecessor left open, sweeping idle flows on its timer).

No subprocesses, no namespaces: the "guest" is whatever this file pushes on the inbound ring,
the "host services" are sockets this file binds on 127.0.0.1 and answers by hand.
"""

from __future__ import annotations

import os
import select
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from wgslirp.config import Config
from wgslirp.net import ipv4, tcp, udp
from wgslirp.net.fragment import Reassembler
from wgslirp.obs.metrics import MetricsBlock
from wgslirp.runtime.loop import Loop
from wgslirp.runtime.worker import WORKER_COUNTERS, Worker
from wgslirp.shm.registry import Entry, FlowRegistry
from wgslirp.shm.ring import Consumer, Producer, Ring
from wgslirp_testkit.clock import FakeClock

GATEWAY = "10.77.0.1"  # the host alias: maps to 127.0.0.1, where this file's services listen
GUEST = "10.77.0.2"
GW = ipv4.addr_to_int(GATEWAY)
GU = ipv4.addr_to_int(GUEST)
PEER = 7  # the peer index ingress stamps on the guest's packets
OTHER_PEER = 8
NOW = 1000.0
TURNS = 200  # each turn blocks at most the loop's idle bound (0.1 s), and only while idle
SLOT = 2048  # one tunnel packet (MTU 1380) plus WireGuard's padding, with room to spare
BIG_SLOT = 65536  # reassembled datagrams, as the supervisor's big ring
GUEST_ISS = 100_000

Packet = tuple[bytes, int]  # (IPv4 packet, peer index), as read off the outbound ring


@dataclass
class Rig:
    worker: Worker
    loop: Loop
    clock: FakeClock
    to_worker: Producer  # ingress's end of the inbound ring
    to_worker_big: Producer
    from_worker: Consumer  # ingress's end of the outbound ring
    registry: FlowRegistry

    def send(self, pkt: bytes | bytearray, peer: int = PEER, *, big: bool = False) -> None:
        assert (self.to_worker_big if big else self.to_worker).push(pkt, peer)

    def turn_until(self, done: Callable[[], bool]) -> None:
        for _ in range(TURNS):
            self.loop.run_once()
            if done():
                return
        raise AssertionError(f"the worker did not get there within {TURNS} turns")

    def take(self) -> list[Packet]:
        """Everything on the outbound ring now."""
        got: list[Packet] = []
        self.from_worker.drain(lambda view, peer: got.append((bytes(view), peer)))
        return got

    def receive(self, count: int = 1) -> list[Packet]:
        """Turn until the worker has put at least `count` packets on its outbound ring."""
        got: list[Packet] = []

        def enough() -> bool:
            got.extend(self.take())
            return len(got) >= count

        self.turn_until(enough)
        return got

    def counter(self, name: str) -> int:
        return self.worker.counters()[name]


def config() -> Config:
    return Config(
        gateway_ip=GATEWAY,
        # The router's own WireGuard port is refused through the gateway; keep it out of the
        # ephemeral range the host services here bind in.
        listen_port=9,
        dns_upstream=("127.0.0.1:53",),  # not /etc/resolv.conf: nothing of the host's
    )


def make_rig(registry: FlowRegistry, rings: list[Ring], metrics: MetricsBlock | None = None) -> Rig:
    """A worker over `rings` (in, in-big, out) and `registry`, whatever it already holds."""
    rin, rbig, rout = rings
    clock = FakeClock(NOW)
    loop = Loop(clock=clock)
    worker = Worker(
        config(),
        0,
        1,
        rin.consumer(),
        rout.producer(),
        loop,
        None,  # no ICMP socket: echo is not this file's business
        rbig.consumer(),
        metrics=metrics,
        registry=registry,
    )
    return Rig(worker, loop, clock, rin.producer(), rbig.producer(), rout.consumer(), registry)


@pytest.fixture
def rings() -> Iterator[list[Ring]]:
    made = [Ring.create(64, SLOT), Ring.create(4, BIG_SLOT), Ring.create(64, SLOT)]
    try:
        yield made
    finally:
        for ring in made:
            ring.close()


@pytest.fixture
def registry() -> Iterator[FlowRegistry]:
    reg = FlowRegistry(16)
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def rig(registry: FlowRegistry, rings: list[Ring]) -> Iterator[Rig]:
    r = make_rig(registry, rings)
    try:
        yield r
    finally:
        r.worker.close(r.clock())  # closes every host socket it opened
        r.loop.close()


@pytest.fixture
def echo() -> Iterator[socket.socket]:
    """A UDP service on the host, answered by hand (no thread)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        yield s
    finally:
        s.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP service on the host."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        s.setblocking(False)
        yield s
    finally:
        s.close()


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def port_of(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


# ------------------------------------------------------------------ guest packets


def udp_packet(sport: int, dport: int, payload: bytes, dst: int = GW) -> bytes:
    out = bytearray(udp.PAYLOAD_OFFSET + len(payload))
    n = udp.build_udp_into(out, GU, dst, sport, dport, payload)
    return bytes(out[:n])


def tcp_segment(
    sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b""
) -> bytes:
    opts = tcp.options_bytes(mss=1340) if flags & tcp.SYN else b""
    out = bytearray(tcp.PAYLOAD_OFFSET + len(opts) + len(payload))
    n = tcp.build_into(
        out,
        src=GU,
        dst=GW,
        sport=sport,
        dport=dport,
        seq=seq,
        ack=ack,
        flags=flags,
        window=65535,
        options=opts,
        payload=payload,
    )
    return bytes(out[:n])


@dataclass(frozen=True)
class Seg:
    """A TCP segment the worker sent toward the guest, checked and taken apart."""

    src: tuple[int, int]
    dst: tuple[int, int]
    seq: int
    ack: int
    flags: int
    window: int
    data: bytes
    peer: int


def seg(packet: Packet) -> Seg:
    pkt, peer = packet
    assert ipv4.header_valid(pkt, len(pkt))
    parsed = tcp.parse(pkt, len(pkt))
    assert parsed is not None, "not a well-formed TCP segment"
    assert tcp.checksum_ok(pkt, len(pkt))
    src, dst, sport, dport, seq, ack, flags, window, _ooff, poff, plen = parsed
    return Seg((src, sport), (dst, dport), seq, ack, flags, window, pkt[poff : poff + plen], peer)


def connect(rig: Rig, listener: socket.socket, sport: int, peer: int = PEER) -> Seg:
    """The guest's SYN to the gateway, until the worker answers it; the SYN-ACK."""
    rig.send(tcp_segment(sport, port_of(listener), GUEST_ISS, 0, tcp.SYN), peer)
    (synack,) = map(seg, rig.receive())
    return synack


def establish(rig: Rig, listener: socket.socket, sport: int) -> tuple[Seg, socket.socket]:
    """A whole handshake: the SYN-ACK and the host's end of the connection."""
    synack = connect(rig, listener, sport)
    rig.send(tcp_segment(sport, port_of(listener), GUEST_ISS + 1, synack.seq + 1, tcp.ACK))
    rig.turn_until(lambda: readable(listener))
    conn, _ = listener.accept()
    conn.settimeout(1.0)
    return synack, conn


# ------------------------------------------------------------------------ UDP


def test_a_guest_datagram_to_the_gateway_reaches_the_host_and_the_answer_comes_back(
    rig: Rig, echo: socket.socket
) -> None:
    rig.send(udp_packet(40000, port_of(echo), b"hello"))
    rig.turn_until(lambda: readable(echo))
    data, addr = echo.recvfrom(2048)
    assert data == b"hello"
    echo.sendto(b"HELLO back", addr)
    ((pkt, peer),) = rig.receive()
    assert peer == PEER  # ingress must know whom to encrypt it for
    assert ipv4.header_valid(pkt, len(pkt)) and udp.checksum_ok(pkt, len(pkt))
    parsed = udp.parse(pkt, len(pkt))
    assert parsed is not None
    src, dst, sport, dport, off, plen = parsed
    # From the address the guest wrote to (the gateway), not the host's 127.0.0.1.
    assert (src, sport, dst, dport) == (GW, port_of(echo), GU, 40000)
    assert pkt[off : off + plen] == b"HELLO back"
    assert rig.counter("udp_flows") == 1 and rig.counter("udp_tx_packets") == 1


def test_a_reassembled_datagram_on_the_big_ring_is_handled_like_any_other(
    rig: Rig, echo: socket.socket
) -> None:
    """Ingress puts datagrams it reassembled beyond a slot on a second ring; the worker
    drains both, and an answer larger than the tunnel MTU leaves in fragments."""
    payload = bytes(range(256)) * 12  # 3072 bytes: more than a slot, more than the MTU
    rig.send(udp_packet(40001, port_of(echo), payload), big=True)
    rig.turn_until(lambda: readable(echo))
    data, addr = echo.recvfrom(65536)
    assert data == payload
    echo.sendto(data[::-1], addr)
    frags = rig.receive(3)
    assert {peer for _, peer in frags} == {PEER}
    assert all(ipv4.is_fragment(pkt) and len(pkt) <= 1380 for pkt, _ in frags)
    whole = None
    reasm = Reassembler()
    for pkt, _ in frags:
        whole = reasm.feed(pkt, len(pkt), NOW) or whole
    assert whole is not None
    parsed = udp.parse(whole, len(whole))
    assert parsed is not None and udp.checksum_ok(whole, len(whole))
    assert bytes(whole[parsed[4] : parsed[4] + parsed[5]]) == payload[::-1]


def test_idle_udp_flows_are_closed_on_the_workers_own_timer(rig: Rig, echo: socket.socket) -> None:
    rig.send(udp_packet(40002, port_of(echo), b"x"))
    rig.turn_until(lambda: rig.counter("udp_flows") == 1)
    deadline = rig.worker.get_timer()
    assert deadline is not None and deadline > NOW  # the loop keeps the sweep for it
    rig.clock.t = NOW + config().udp.idle_timeout + 60  # idle well past the timeout
    rig.turn_until(lambda: rig.counter("udp_flows") == 0)
    assert rig.counter("udp_flows_expired") == 1


# ------------------------------------------------------------------------ TCP


def test_a_guest_syn_to_the_gateway_dials_the_host_and_is_answered_once_connected(
    rig: Rig, listener: socket.socket
) -> None:
    synack = connect(rig, listener, 41000)
    # Answered only now that the host's connect() succeeded (the clock is frozen, so the
    # fast-dial deadline, which would answer optimistically, never came).
    assert rig.counter("tcp_dials_ok") == 1
    assert synack.flags == tcp.SYN | tcp.ACK and synack.ack == GUEST_ISS + 1
    assert synack.src == (GW, port_of(listener)) and synack.dst == (GU, 41000)
    assert synack.peer == PEER
    rig.turn_until(lambda: readable(listener))  # the host has the connection to accept
    conn, _ = listener.accept()
    conn.close()
    # Recorded where a replacement worker would find it, and in the worker's counters.
    assert len(rig.registry) == 1 and rig.counter("tcp_flows") == 1


def test_an_accepted_syns_synack_is_on_the_ring_before_its_socket_is_watched(
    rig: Rig, listener: socket.socket
) -> None:
    """Inline, ingress drains the worker's ring in a hook after the worker's turn and the
    loop's timers run after both: the SYN-ACK of a connect that completed inside connect()
    is sent before the worker watches the host socket and logs the connection, which it
    does in the same turn."""
    watched_before = len(rig.worker.host)
    seen: list[tuple[Seg, int, int]] = []

    def ingress_drain(_now: float) -> None:
        for packet in rig.take():
            seen.append((seg(packet), len(rig.worker.host), len(rig.registry)))

    rig.loop.hooks.append(ingress_drain)  # after the worker's turn, as ingress's drain
    rig.send(tcp_segment(41002, port_of(listener), GUEST_ISS, 0, tcp.SYN))
    turns = rig.loop.turns
    rig.turn_until(lambda: bool(seen))
    ((synack, watched, logged),) = seen
    assert synack.flags == tcp.SYN | tcp.ACK and synack.ack == GUEST_ISS + 1
    assert (watched, logged) == (watched_before, 0)
    assert rig.loop.turns == turns + 1  # all of it in one turn
    assert len(rig.worker.host) == watched_before + 1 and len(rig.registry) == 1
    conn, _ = listener.accept()
    conn.close()


def test_bytes_cross_an_established_connection_both_ways(rig: Rig, listener: socket.socket) -> None:
    synack, conn = establish(rig, listener, 41001)
    with conn:
        lport = port_of(listener)
        ack = synack.seq + 1
        rig.send(tcp_segment(41001, lport, GUEST_ISS + 1, ack, tcp.ACK | tcp.PSH, b"ping"))
        rig.turn_until(lambda: readable(conn))
        assert conn.recv(100) == b"ping"
        conn.sendall(b"pong")
        data: list[Seg] = []

        def got_data() -> bool:
            data.extend(s for s in map(seg, rig.take()) if s.data)
            return bool(data)

        rig.turn_until(got_data)
        (reply,) = data
        assert reply.data == b"pong" and reply.seq == ack and reply.peer == PEER
        assert reply.ack == GUEST_ISS + 1 + 4  # and it acknowledges the guest's bytes


def test_close_resets_every_guest_connection_and_the_host_side(
    rig: Rig, listener: socket.socket
) -> None:
    """SIGTERM: the guest learns at once that nobody serves its connection any more,
    instead of waiting on it until its application gives up."""
    synack, conn = establish(rig, listener, 41002)
    with conn:
        assert rig.take() == []
        rig.worker.close(rig.clock())
        (rst,) = map(seg, rig.take())  # close() flushes: no turn needed
        assert rst.flags & tcp.RST and rst.peer == PEER
        assert rst.seq == synack.seq + 1  # exactly what the guest expects: accepted
        assert rst.dst == (GU, 41002) and rst.src == (GW, port_of(listener))
        assert len(rig.registry) == 0 and rig.counter("tcp_flows") == 0
        with pytest.raises(ConnectionResetError):
            conn.recv(100)


def test_orphans_of_a_dead_predecessor_are_probed_at_construction(
    registry: FlowRegistry, rings: list[Ring]
) -> None:
    """What a SIGKILLed worker left in the registry: its replacement sends each guest an
    ACK below its window (the SYN's own number), so the guest answers and draws an exact
    RST; the registry is then clean for the replacement's own connections."""
    left = Entry(3, GU, 41003, GW, 8080, 5000, 777_000)
    registry.add(left)
    registry.add(Entry(OTHER_PEER, GU, 41004, GW, 8081, 6000, 888_000))
    r = make_rig(registry, rings)
    try:
        probes = sorted(map(seg, r.take()), key=lambda s: s.dst)
        assert len(probes) == 2
        first = probes[0]
        assert first.flags == tcp.ACK and first.window == 0 and first.peer == 3
        assert (first.seq, first.ack) == (5000, 777_001)
        assert first.src == (GW, 8080) and first.dst == (GU, 41003)
        assert probes[1].peer == OTHER_PEER and probes[1].seq == 6000
        assert len(registry) == 0 and r.counter("tcp_orphans_probed") == 2
    finally:
        r.worker.close(r.clock())
        r.loop.close()


# ------------------------------------------------------------- peers, junk, counters


def test_forget_peer_closes_that_peers_flows_and_no_others(
    rig: Rig, listener: socket.socket, echo: socket.socket
) -> None:
    connect(rig, listener, 41005)
    rig.turn_until(lambda: readable(listener))
    conn, _ = listener.accept()
    with conn:
        rig.send(udp_packet(40003, port_of(echo), b"a"))
        rig.send(udp_packet(40003, port_of(echo), b"b"), OTHER_PEER)
        rig.turn_until(lambda: rig.counter("udp_flows") == 2)
        assert len(rig.registry) == 1
        rig.worker.forget_peer(PEER)
        assert rig.counter("peer_flows_closed") == 2  # its TCP and its UDP flow
        assert rig.counter("tcp_flows") == 0 and len(rig.registry) == 0
        assert rig.counter("udp_flows") == 1  # the other peer's
        assert rig.take() == []  # the peer is gone: nothing to tell it
        conn.settimeout(1.0)
        with pytest.raises(ConnectionResetError):  # the host's side is aborted
            conn.recv(100)


def test_a_zero_length_message_on_the_ring_forgets_its_peer(
    rig: Rig, listener: socket.socket, echo: socket.socket
) -> None:
    """How ingress says "this peer was removed" (UAPI, reload): an empty slot with the
    peer's index, in order with the peer's packets."""
    connect(rig, listener, 41006)
    rig.send(udp_packet(40004, port_of(echo), b"a"), OTHER_PEER)
    rig.turn_until(lambda: rig.counter("udp_flows") == 1)
    rig.send(b"", PEER)
    rig.turn_until(lambda: rig.counter("peer_flows_closed") == 1)
    assert rig.counter("tcp_flows") == 0 and len(rig.registry) == 0
    assert rig.counter("udp_flows") == 1
    rig.send(b"", 99)  # a peer with no flows: nothing to close, nothing counted
    rig.turn_until(lambda: rig.worker.inbound.available() == 0)  # drained
    assert rig.counter("peer_flows_closed") == 1 and rig.counter("internal_errors") == 0


def gre_packet() -> bytes:
    """IPv4 carrying protocol 47, which no bridge handles."""
    pkt = bytearray(28)
    ipv4.write_header(pkt, total_length=28, proto=47, src=GU, dst=GW)
    return bytes(pkt)


def test_a_protocol_no_bridge_handles_is_counted_and_dropped(rig: Rig) -> None:
    rig.send(gre_packet())
    rig.turn_until(lambda: rig.counter("not_handled") == 1)
    assert rig.take() == []
    counters = rig.worker.counters()
    assert counters["udp_flows"] == counters["tcp_flows"] == counters["icmp_flows"] == 0
    assert counters["internal_errors"] == 0


def test_a_packet_that_breaks_its_handler_costs_only_itself(rig: Rig, echo: socket.socket) -> None:
    """Ingress validates headers, but a bug must not take the worker's other flows down:
    the error is counted and the rest of the batch is handled."""
    rig.send(b"\x45\x00")  # too short to have a protocol byte
    rig.send(udp_packet(40005, port_of(echo), b"still here"))
    rig.turn_until(lambda: readable(echo))
    assert echo.recv(100) == b"still here"
    assert rig.counter("internal_errors") == 1


def test_counters_are_published_to_the_shared_metrics_block(rings: list[Ring]) -> None:
    """The supervisor lays the block out from WORKER_COUNTERS before any worker runs and
    reads it from another process; a counter missing there would never be seen."""
    metrics = MetricsBlock((), WORKER_COUNTERS, 1)
    registry = FlowRegistry(4)
    r = make_rig(registry, rings, metrics)
    try:
        assert set(r.worker.counters()) == set(WORKER_COUNTERS)
        r.send(gre_packet())
        r.turn_until(lambda: r.counter("not_handled") == 1)
        r.clock.t += 1.0  # the publisher's interval
        section = metrics.workers[0]
        r.turn_until(lambda: section.read()["not_handled"] == 1)
        assert section.pid == os.getpid() and section.turns > 0
    finally:
        r.worker.close(r.clock())
        r.loop.close()
        registry.close()
        metrics.close()


def test_the_ring_messages_keep_their_peer_index_through_several_flows(
    rig: Rig, echo: socket.socket
) -> None:
    """Replies to two peers from one host service: each goes back to its own peer."""
    rig.send(udp_packet(40006, port_of(echo), b"from 7"), PEER)
    rig.send(udp_packet(40006, port_of(echo), b"from 8"), OTHER_PEER)
    got: list[tuple[bytes, tuple[str, int]]] = []

    def both() -> bool:
        while readable(echo):
            got.append(echo.recvfrom(100))
        return len(got) == 2

    rig.turn_until(both)
    for data, addr in got:
        echo.sendto(b"re " + data, addr)
    replies = rig.receive(2)
    by_peer: dict[int, bytes] = {}
    for pkt, peer in replies:
        parsed = udp.parse(pkt, len(pkt))
        assert parsed is not None
        by_peer[peer] = pkt[parsed[4] : parsed[4] + parsed[5]]
    assert by_peer == {PEER: b"re from 7", OTHER_PEER: b"re from 8"}
    for pkt, _ in replies:
        assert struct.unpack_from(">H", pkt, 22)[0] == 40006  # to the guest's own port


def test_a_full_egress_ring_leaves_host_datagrams_in_their_socket(
    rig: Rig, echo: socket.socket
) -> None:
    """Back-pressure towards the host: with the outbound ring (64 slots) not drained, the
    worker stops reading host sockets instead of reading and dropping datagram after
    datagram; once ingress has drained the ring, the rest is read and nothing is lost but
    the one datagram read into a full ring before the mute."""
    rig.send(udp_packet(40002, port_of(echo), b"go"))
    rig.turn_until(lambda: readable(echo))
    _, addr = echo.recvfrom(2048)
    sent = 150
    for i in range(sent):
        echo.sendto(i.to_bytes(2, "big") * 8, addr)
    rig.turn_until(lambda: rig.worker.host.muted)
    for _ in range(30):  # the outbound ring stays full: turns must not read and drop more
        rig.loop.run_once()
    dropped = rig.counter("egress_full")
    assert dropped <= 1 and rig.counter("host_read_pauses") == 1
    got: list[Packet] = []

    def all_in() -> bool:
        got.extend(rig.take())
        return len(got) + dropped >= sent

    rig.turn_until(all_in)
    assert len(got) + dropped == sent and rig.counter("egress_full") == dropped
    payloads = [p[udp.PAYLOAD_OFFSET : udp.PAYLOAD_OFFSET + 2] for p, _ in got]
    assert payloads == sorted(payloads)  # in order, none twice
