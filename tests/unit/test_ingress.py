"""Ingress as I/O glue (runtime/ingress.py): real loopback UDP sockets and shared-memory
rings, a client Device of our own in place of wireguard-go, and the loop turned by hand with
a fixed clock. What is decided (ping answers, TTL, overlay, shards) is tested in
test_forward.py; here: that ingress carries out each decision to the right socket or ring."""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from wgslirp.keys import generate_private_key, public_key
from wgslirp.net import flowkey, icmp, ipv4, udp
from wgslirp.net.checksum import checksum
from wgslirp.runtime.ingress import Ingress, open_wg_socket
from wgslirp.runtime.loop import Loop
from wgslirp.runtime.supervisor import worker_turn_first
from wgslirp.shm.ring import Ring
from wgslirp.wireguard.device import Device
from wgslirp.wireguard.load import HandshakeGuard
from wgslirp.wireguard.peer import Peer
from wgslirp_testkit.flood import initiation_with_mac1

GATEWAY = "10.77.0.1"
GUEST = "10.77.0.2"
REMOTE = "127.0.0.9"
NOW = 500.0


@dataclass(frozen=True)
class PeerSpec:
    public_key: bytes
    preshared_key: bytes | None = None
    allowed_ips: tuple[str, ...] = (f"{GUEST}/32",)
    endpoint: tuple[str, int] | None = None
    keepalive: int = 0


@dataclass(frozen=True)
class Settings:
    private_key: bytes
    peers: tuple[PeerSpec, ...]
    mtu: int = 1420
    gateway_ip: str | None = GATEWAY
    dns_ip: str | None = None
    gateway_ip6: str | None = None
    dns_ip6: str | None = None
    ip_ttl: int = 64
    overlay_routing: bool = False
    overlay_exclude_cidrs: tuple[str, ...] = ()
    interface_name: str = ""  # no UAPI socket
    pcap_path: str | None = None
    state_dir: str = ""  # nor one in a state directory


@dataclass
class Rig:
    ingress: Ingress
    loop: Loop
    to_workers: list[Ring]
    from_workers: list[Ring]
    client: Device
    peer: Peer  # the router, as the client knows it
    sock: socket.socket
    target: tuple[str, int]  # where the client sends: the router's address in its family
    plain: bytearray = field(default_factory=lambda: bytearray(70000))

    def send(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendto(data, self.target)

    def turn_until(self, done: Callable[[], bool]) -> None:
        for _ in range(500):  # bounded: each turn waits at most the loop's 1 ms bound
            self.loop.run_once()
            if done():
                return
        raise AssertionError("ingress did not get there within 500 turns")

    def receive(self) -> bytes:
        """The next datagram ingress sent to the client, decrypted (handshake messages
        are fed to the client device and skipped)."""
        for _ in range(50):
            ready, _, _ = select.select([self.sock], [], [], 1.0)
            assert ready, "no datagram from ingress within 1 s"
            data, sa = self.sock.recvfrom(70000)
            addr = (sa[0], sa[1])
            if data[0] != 4:
                self.client.receive_handshake(data, addr, NOW)
                continue
            res = self.client.decrypt(data, addr, NOW, self.plain)
            assert res is not None
            return bytes(self.plain[: res[1]])
        raise AssertionError("only handshake messages arrived")

    def send_packet(self, pkt: bytes | bytearray) -> None:
        out = bytearray(len(pkt) + 64)
        k = self.client.encrypt(self.peer, bytearray(pkt), len(pkt), NOW, out)
        assert k
        self.send(out[:k])


@pytest.fixture
def rig() -> Iterator[Rig]:
    with make_rig("127.0.0.1", "127.0.0.1") as r:
        yield r


@contextlib.contextmanager
def make_rig(listen: str, client_host: str) -> Iterator[Rig]:
    """An ingress listening on `listen`, its client's socket on `client_host` (the family
    decides which of the router's addresses it sends to), handshake and first ping done."""
    router_key, client_key = generate_private_key(), generate_private_key()
    settings = Settings(router_key, (PeerSpec(public_key(client_key)),))
    rings_in = [Ring.create(64, 2048) for _ in range(2)]
    rings_out = [Ring.create(64, 2048) for _ in range(2)]
    loop = Loop(clock=lambda: NOW)
    wg = open_wg_socket(listen, 0)
    ingress = Ingress(
        settings,
        wg,
        loop,
        [r.producer() for r in rings_in],
        [r.consumer() for r in rings_out],
    )
    v6 = ":" in client_host
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((client_host, 0))
    client = Device(client_key)
    target = (client_host, ingress.address[1])
    peer = client.add_peer(
        public_key(router_key), allowed_ips=["0.0.0.0/0"], endpoint=target, now=NOW
    )
    r = Rig(ingress, loop, rings_in, rings_out, client, peer, sock, target)
    try:
        assert client.initiate(peer, NOW)
        for data, _addr in client.outbox:
            r.send(data)
        client.outbox.clear()
        r.turn_until(lambda: bool(select.select([sock], [], [], 0)[0]))
        data, sa = sock.recvfrom(2048)  # the handshake response
        client.receive_handshake(data, (sa[0], sa[1]), NOW)
        assert peer.current is not None
        # The responder may send only once the initiator's first transport message has
        # confirmed the session (whitepaper 5.4.7): a ping of the gateway does that.
        r.send_packet(ping(GATEWAY))
        r.turn_until(lambda: ingress.stats()["gateway_echo_replies"] == 1)
        assert r.receive()[20] == icmp.ECHO_REPLY
        yield r
    finally:
        sock.close()
        wg.close()
        for ring in (*rings_in, *rings_out):
            ring.close()


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes = b"hello") -> bytes:
    out = bytearray(2048)
    n = udp.build_udp_into(out, ipv4.addr_to_int(src), ipv4.addr_to_int(dst), sport, dport, payload)
    return bytes(out[:n])


def ping(dst: str, ttl: int = 64) -> bytes:
    body = bytearray(struct.pack(">BBHHH", icmp.ECHO_REQUEST, 0, 0, 7, 1) + b"payload!")
    struct.pack_into(">H", body, 2, checksum(body))
    total = 20 + len(body)
    pkt = bytearray(total)
    ipv4.write_header(
        pkt,
        total_length=total,
        proto=ipv4.PROTO_ICMP,
        src=ipv4.addr_to_int(GUEST),
        dst=ipv4.addr_to_int(dst),
        ttl=ttl,
    )
    pkt[20:] = body
    return bytes(pkt)


def test_a_guest_packet_lands_on_the_ring_of_the_worker_that_owns_its_flow(rig: Rig) -> None:
    sent = [udp_packet(GUEST, REMOTE, sport, 9) for sport in range(20000, 20016)]
    for pkt in sent:
        rig.send_packet(pkt)
    got: dict[int, list[tuple[bytes, int]]] = {0: [], 1: []}
    consumers = [r.consumer() for r in rig.to_workers]

    def drained() -> bool:
        for k, cons in enumerate(consumers):
            for i in range(cons.available()):
                slot, length, peer = cons.peek_slot(i)
                got[k].append((bytes(slot[:length]), peer))
            cons.release(cons.available())
        return sum(map(len, got.values())) == len(sent)

    rig.turn_until(drained)
    index = next(iter(rig.ingress.device.peers.values())).index
    for k, packets in got.items():
        for pkt, peer in packets:
            assert peer == index
            assert flowkey.shard_of(pkt, len(pkt), 2) == k
    assert sorted(p for ps in got.values() for p, _ in ps) == sorted(sent)
    assert got[0] and got[1]  # 16 flows over 2 workers: both carry some


def test_a_ping_of_the_gateway_is_answered_through_the_tunnel(rig: Rig) -> None:
    rig.send_packet(ping(GATEWAY))
    rig.turn_until(lambda: rig.ingress.stats()["gateway_echo_replies"] == 2)  # 1: the fixture
    reply = rig.receive()
    assert reply[20] == icmp.ECHO_REPLY
    assert ipv4.src_dst(reply) == (ipv4.addr_to_int(GATEWAY), ipv4.addr_to_int(GUEST))


def test_ttl_1_beyond_the_router_is_answered_with_time_exceeded(rig: Rig) -> None:
    rig.send_packet(ping(REMOTE, ttl=1))
    rig.turn_until(lambda: rig.ingress.stats()["ttl_expired"] == 1)
    err = rig.receive()
    assert err[20] == icmp.TIME_EXCEEDED
    assert ipv4.src_dst(err)[0] == ipv4.addr_to_int(GATEWAY)


def test_packets_the_workers_queue_leave_encrypted_to_the_peer(rig: Rig) -> None:
    index = next(iter(rig.ingress.device.peers.values())).index
    replies = [udp_packet(REMOTE, GUEST, 9, 20000 + i, bytes([i]) * 100) for i in range(5)]
    for k, pkt in enumerate(replies):
        assert rig.from_workers[k % 2].producer().push(pkt, index)
    rig.turn_until(lambda: all(r.consumer().available() == 0 for r in rig.from_workers))
    got = sorted(rig.receive() for _ in replies)
    assert got == sorted(replies)


def test_inline_what_the_worker_answers_in_its_turn_leaves_in_that_turn(rig: Rig) -> None:
    """PROCESSOR_WORKERS=0 shares one loop: with the worker's turn first, a packet it queues
    there is encrypted and sent by the same turn's drain, not one turn (and one
    epoll_wait) later."""
    index = next(iter(rig.ingress.device.peers.values())).index
    reply = udp_packet(REMOTE, GUEST, 9, 20000)
    queued: list[bool] = []

    def worker_turn(_now: float) -> None:  # a worker's turn publishing one answer
        if not queued:
            queued.append(rig.from_workers[0].producer().push(reply, index))

    rig.loop.hooks.append(worker_turn)
    worker_turn_first(rig.loop, worker_turn)
    rig.loop.run_once(block=False)
    assert queued == [True] and rig.from_workers[0].consumer().available() == 0
    assert select.select([rig.sock], [], [], 0)[0], "the answer waits for another turn"
    assert rig.receive() == reply


def test_a_removed_peer_is_forgotten_by_every_worker(rig: Rig) -> None:
    (key,) = rig.ingress.device.peers
    index = rig.ingress.device.peers[key].index
    rig.ingress.device.remove_peer(key)
    rig.loop.run_once(block=False)
    for ring in rig.to_workers:
        cons = ring.consumer()
        assert cons.available() == 1
        _slot, length, peer = cons.peek_slot(0)
        assert (length, peer) == (0, index)  # the zero-length "forget this peer" message


def test_a_replacement_ingress_initiates_to_the_peers_its_predecessor_had_sessions_with() -> None:
    """Sessions die with an ingress; the replacement reaches out at once to every peer with a
    recent handshake and a known endpoint, instead of waiting for the peers' own timers."""
    import time

    router_key, client_key, idle_key = (generate_private_key() for _ in range(3))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    idle = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    idle.bind(("127.0.0.1", 0))
    settings = Settings(
        router_key,
        (
            PeerSpec(public_key(client_key), endpoint=sock.getsockname()),
            PeerSpec(
                public_key(idle_key), allowed_ips=("10.77.0.9/32",), endpoint=idle.getsockname()
            ),
        ),
    )
    rings = [Ring.create(64, 2048) for _ in range(2)]
    wg = open_wg_socket("127.0.0.1", 0)
    try:
        loop = Loop(clock=lambda: NOW)
        wall = time.time()
        ingress = Ingress(
            settings,
            wg,
            loop,
            [rings[0].producer()],
            [rings[1].consumer()],
            resume=[
                (public_key(client_key), wall - 5),  # a live session a moment ago
                (public_key(idle_key), wall - 600),  # long expired: left alone
            ],
        )
        sock.settimeout(2)
        data, addr = sock.recvfrom(2048)  # sent during construction, before any turn
        assert data[0] == 1 and addr == ingress.address
        client = Device(client_key)
        peer = client.add_peer(public_key(router_key), allowed_ips=["0.0.0.0/0"], now=NOW)
        assert client.receive_handshake(data, addr, NOW) is peer
        ((response, _),) = client.outbox
        sock.sendto(response, ingress.address)
        r = Rig(ingress, loop, [rings[0]], [rings[1]], client, peer, sock, ingress.address)
        r.turn_until(lambda: ingress.stats()["handshakes_completed"] == 1)
        assert r.receive() == b""  # the initiator's keepalive confirms the session to the peer
        r.send_packet(ping(GATEWAY))  # which then carries traffic both ways
        r.turn_until(lambda: ingress.stats()["gateway_echo_replies"] == 1)
        assert r.receive()[20] == icmp.ECHO_REPLY
        idle.setblocking(False)
        with pytest.raises(BlockingIOError):
            idle.recv(2048)
    finally:
        sock.close()
        idle.close()
        wg.close()
        for ring in rings:
            ring.close()


def test_a_reload_asked_for_while_one_reads_runs_once_more_after_it() -> None:
    """The file may have changed again after the running reload read it (a Secret updated
    twice, SIGHUP and the file watch together): one more reload follows, not one per ask."""
    settings = Settings(generate_private_key(), (PeerSpec(public_key(generate_private_key())),))
    gate = threading.Event()
    calls: list[float] = []

    def load() -> Settings:
        calls.append(time.monotonic())
        if len(calls) == 1:
            gate.wait(5)
        return settings

    rings_in, rings_out = [Ring.create(64, 2048)], [Ring.create(64, 2048)]
    loop = Loop(clock=lambda: NOW)
    wg = open_wg_socket("127.0.0.1", 0)
    try:
        ingress = Ingress(
            settings,
            wg,
            loop,
            [r.producer() for r in rings_in],
            [r.consumer() for r in rings_out],
            reload=load,
        )
        ingress.reload(NOW)
        ingress.reload(NOW)  # while the first one reads
        ingress.reload(NOW)
        gate.set()
        for _ in range(2000):  # bounded: each turn waits at most 1 ms
            loop.run_once()
            if (
                len(calls) == 2
                and not ingress._reloading.is_alive()
                and (ingress._reload_result is None)
            ):
                break
        assert len(calls) == 2
        for _ in range(50):
            loop.run_once()
        assert len(calls) == 2  # the three asks became two reads, not three
    finally:
        gate.set()
        wg.close()
        for ring in (*rings_in, *rings_out):
            ring.close()


# ------------------------------------------------------------- the socket's address family


def _router_peer(r: Rig) -> Peer:
    (peer,) = r.ingress.device.peers.values()
    return peer


@pytest.mark.parametrize(
    ("listen", "client_host"),
    [("::", "127.0.0.1"), ("::", "::1"), ("::1", "::1")],
)
def test_a_peer_reaches_the_router_over_either_family(listen: str, client_host: str) -> None:
    """On a dual-stack socket an IPv4 peer arrives as ::ffff:127.0.0.1 with four address
    fields; the device, `wg show` and the cookies must see 127.0.0.1 (and the replies must
    still reach it), an IPv6 peer its own address."""
    with make_rig(listen, client_host) as r:
        assert r.ingress.sock.family == socket.AF_INET6
        peer = _router_peer(r)
        assert peer.endpoint == (client_host, r.sock.getsockname()[1])
        r.send_packet(ping(GATEWAY))
        r.turn_until(lambda: r.ingress.stats()["gateway_echo_replies"] == 2)
        assert r.receive()[20] == icmp.ECHO_REPLY
        assert r.ingress.stats()["send_errors"] == 0


def test_a_peer_roams_between_ipv4_and_ipv6_on_a_dual_stack_socket() -> None:
    with make_rig("::", "127.0.0.1") as r:
        peer = _router_peer(r)
        v4 = (peer.endpoint, r.sock)
        six = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        six.bind(("::1", 0))
        try:
            for sock, target, replies in (
                (six, ("::1", r.target[1]), 2),
                (v4[1], r.target, 3),
            ):
                r.sock, r.target = sock, target
                r.send_packet(ping(GATEWAY))
                r.turn_until(lambda n=replies: r.ingress.stats()["gateway_echo_replies"] == n)
                host = sock.getsockname()[0]
                assert peer.endpoint == (host, sock.getsockname()[1])
                assert r.receive()[20] == icmp.ECHO_REPLY  # the answer went to the new address
            assert r.ingress.device.roams == 2
        finally:
            six.close()


def test_an_ipv4_socket_counts_sends_to_an_ipv6_endpoint_as_errors(rig: Rig) -> None:
    peer = _router_peer(rig)
    peer.endpoint = ("::1", 9)  # e.g. set by `wg set` on a router listening on 0.0.0.0
    rig.ingress.send_packet(peer, bytearray(ping(GUEST)) + bytearray(16), 36, NOW)
    assert rig.ingress.stats()["send_errors"] == 1


class _NoIPv6:
    """A socket constructor of a host whose kernel has no IPv6 (ipv6.disable=1)."""

    def __init__(self) -> None:
        self.families: list[int] = []

    def __call__(self, family: int, kind: int) -> socket.socket:
        self.families.append(family)
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return socket.socket(family, kind)


def test_the_dual_stack_default_falls_back_to_ipv4_on_a_host_without_ipv6() -> None:
    make = _NoIPv6()
    sock = open_wg_socket("::", 0, make=make)
    try:
        assert make.families == [socket.AF_INET6, socket.AF_INET]
        assert sock.family == socket.AF_INET and sock.getsockname()[0] == "0.0.0.0"
    finally:
        sock.close()


def test_a_specific_ipv6_address_does_not_fall_back() -> None:
    with pytest.raises(OSError) as exc:
        open_wg_socket("::1", 0, make=_NoIPv6())
    assert exc.value.errno == errno.EAFNOSUPPORT


def test_dual_stack_means_v6only_off_and_a_specific_address_v6only_on() -> None:
    for addr, v6only in (("::", 0), ("::1", 1)):
        sock = open_wg_socket(addr, 0)
        try:
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == v6only
        finally:
            sock.close()


def test_ipv4_sources_on_a_dual_stack_socket_keep_budgets_of_their_own() -> None:
    """Seen raw, 127.0.0.1 and 127.0.0.2 are ::ffff:7f00:1 and ::ffff:7f00:2: one IPv6
    /64, which would make every IPv4 client share one handshake budget under load. After
    the translation each IPv4 address is its own source, and cookie replies reach it."""
    with make_rig("::", "127.0.0.1") as r:
        r.ingress.device.guard = HandshakeGuard(0)  # every message counts as load
        msg = initiation_with_mac1(r.ingress.device.public_key)
        stats = r.ingress.device.stats
        socks = []
        try:
            for host in ("127.0.0.1", "127.0.0.2"):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, 0))
                for _ in range(10):
                    s.sendto(msg, ("127.0.0.1", r.target[1]))
            r.turn_until(lambda: stats.handshake_shed == 10)
            # each source: three admitted fresh (garbage: invalid), two cookie replies
            assert (stats.handshake_invalid, stats.cookie_replies_sent) == (6, 4)
            for s in socks:
                s.settimeout(2)
                replies = [s.recvfrom(2048)[0][0] for _ in range(2)]
                assert replies == [3, 3]  # MSG_COOKIE_REPLY
        finally:
            for s in socks:
                s.close()
