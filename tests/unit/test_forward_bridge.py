"""Inbound forwards in one worker: the NAT port that brings the guest's replies back to
it, the peer a forwarded flow learns from the guest's answer, the caps, and the metrics."""

from __future__ import annotations

import logging
import random
import select
import socket
from collections.abc import Callable, Iterator

import pytest

from wgslirp.config.forwards import Forward
from wgslirp.errors import ConfigError
from wgslirp.net import flowkey, ipv4, tcp, udp
from wgslirp.obs.metrics import Snapshot, render_prometheus
from wgslirp.runtime.loop import Loop
from wgslirp.slirp.bridge_context import ROUTE_BY_DESTINATION, BridgeContext
from wgslirp.slirp.forward_bridge import (
    ForwardTally,
    nat_port_for,
    open_listener,
    probe_forwards,
)
from wgslirp.slirp.nat_table import FlowTable
from wgslirp.slirp.policy import EgressPolicy
from wgslirp.slirp.tcp_bridge import TcpBridge, TcpFlow
from wgslirp.slirp.tcp_endpoint import TcpParams, TcpState
from wgslirp.slirp.udp_bridge import UdpBridge, UdpFlow

GW = ipv4.addr_to_int("10.77.0.1")
GUEST = ipv4.addr_to_int("10.77.0.2")
GPORT = 80
PEER = 5


@pytest.mark.parametrize("nworkers", [1, 2, 3, 4])
def test_nat_port_hashes_the_guests_replies_to_the_choosing_worker(nworkers: int) -> None:
    rng = random.Random(1)
    for index in range(nworkers):
        for _ in range(50):
            port = nat_port_for(GUEST, GW, GPORT, ipv4.PROTO_TCP, index, nworkers, _free, rng)
            assert port is not None and 32768 <= port <= 60999
            # the guest's reply, keyed as ingress keys it
            key = flowkey.flow_key(GUEST, GW, ipv4.PROTO_TCP, GPORT, port)
            assert flowkey.shard_of_key(key, nworkers) == index


def _free(_port: int) -> bool:
    return False


def test_nat_port_skips_taken_ports_and_gives_up_bounded() -> None:
    rng = random.Random(2)
    taken = {p for p in range(32768, 61000) if p % 7}
    port = nat_port_for(GUEST, GW, GPORT, ipv4.PROTO_TCP, 0, 1, taken.__contains__, rng)
    assert port is not None and port % 7 == 0
    assert nat_port_for(GUEST, GW, GPORT, 6, 0, 1, lambda p: True, rng) is None


class PeerEgress:
    """Records (packet, peer index) pairs."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, int]] = []
        self._buf = bytearray(2048)

    def reserve(self) -> memoryview | None:
        self._buf = bytearray(2048)
        return memoryview(self._buf)

    def commit(self, length: int, peer: int) -> None:
        self.sent.append((bytes(self._buf[:length]), peer))

    def flush(self, now: float = 0.0) -> None:
        pass

    def take(self) -> list[tuple[tuple[int, ...], int]]:
        out = []
        for pkt, peer in self.sent:
            parsed = tcp.parse(pkt, len(pkt))
            assert parsed is not None
            out.append((parsed, peer))
        self.sent.clear()
        return out


@pytest.fixture
def host_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(host client, the router's accepted socket) over loopback."""
    with socket.create_server(("127.0.0.1", 0)) as lst:
        client = socket.create_connection(lst.getsockname())
        accepted, _ = lst.accept()
    try:
        yield client, accepted
    finally:
        client.close()
        accepted.close()


def _bridge(per_peer: int = 0) -> tuple[TcpBridge, PeerEgress]:
    eg = PeerEgress()
    ctx = BridgeContext(eg, Loop(), mtu=1380, gateway=GW)
    table = FlowTable[TcpFlow](float("inf"), 0, per_peer)
    return TcpBridge(ctx, EgressPolicy(), table, TcpParams(mss=1340)), eg


def _synack(nat_port: int, ack: int) -> bytearray:
    buf = bytearray(60)
    n = tcp.build_into(
        buf,
        src=GUEST,
        dst=GW,
        sport=GPORT,
        dport=nat_port,
        seq=777,
        ack=ack,
        flags=tcp.SYN | tcp.ACK,
        window=65535,
        options=tcp.options_bytes(mss=1340),
    )
    return buf[:n]


def _open(b: TcpBridge, eg: PeerEgress, sock: socket.socket) -> tuple[int, int, ForwardTally]:
    tally = ForwardTally(Forward("127.0.0.1", 8080, "10.77.0.2", GPORT))
    assert b.open_forwarded(sock, GUEST, GPORT, 40000, b.params, 1.0, tally)
    ((syn, peer),) = eg.take()
    src, dst, sport, dport, seq, _ack, flags = syn[:7]
    assert (src, dst, sport, dport, flags) == (GW, GUEST, 40000, GPORT, tcp.SYN)
    assert peer == ROUTE_BY_DESTINATION  # ingress picks the peer by the guest's address
    return 40000, seq, tally


def test_guests_answer_binds_the_flow_to_its_peer(
    host_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, accepted = host_pair
    b, eg = _bridge()
    nat, iss, _ = _open(b, eg, accepted)
    assert b.forwarded_port_taken(GUEST, GPORT, nat)
    sa = _synack(nat, iss + 1)
    b.from_guest(PEER, memoryview(sa), len(sa), 1.1)
    b.flush_dirty(1.1)
    flow = b.table.get((PEER, GUEST, GPORT, GW, nat))
    assert flow is not None and flow.ep.state is TcpState.ESTABLISHED
    assert b.table.get((ROUTE_BY_DESTINATION, GUEST, GPORT, GW, nat)) is None
    assert b.table.peer_count(PEER) == 1 and b.table.peer_count(ROUTE_BY_DESTINATION) == 0
    ((ack, peer),) = eg.take()
    assert ack[6] == tcp.ACK and peer == PEER  # from now on to the guest's own peer
    # The peer goes (reload, wg set): its forwarded connection is reset toward the host.
    assert b.forget_peer(PEER) == 1
    client.settimeout(5)
    with pytest.raises(ConnectionResetError):
        client.recv(1)
    assert not b.forwarded_port_taken(GUEST, GPORT, nat)


def test_guest_rst_is_counted_as_a_refusal_and_resets_the_host(
    host_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, accepted = host_pair
    b, eg = _bridge()
    nat, iss, tally = _open(b, eg, accepted)
    buf = bytearray(40)
    n = tcp.build_into(
        buf, src=GUEST, dst=GW, sport=GPORT, dport=nat, seq=0, ack=iss + 1,
        flags=tcp.RST | tcp.ACK, window=0,
    )  # fmt: skip
    b.from_guest(PEER, memoryview(buf), n, 1.1)
    b.flush_dirty(1.1)
    assert len(b.table) == 0 and tally.refused == 1 and b.stats.forward_refused == 1
    client.settimeout(5)
    with pytest.raises(ConnectionResetError):
        client.recv(1)


def test_forwarded_flow_over_the_peers_cap_is_reset(
    host_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, accepted = host_pair
    b, eg = _bridge(per_peer=1)
    # the peer already holds its one connection
    with socket.create_server(("127.0.0.1", 0)) as lst:
        c2 = socket.create_connection(lst.getsockname())
        a2, _ = lst.accept()
    try:
        tally = ForwardTally(Forward("127.0.0.1", 8081, "10.77.0.2", GPORT))
        assert b.open_forwarded(a2, GUEST, GPORT, 40001, b.params, 1.0, tally)
        ((syn, _),) = eg.take()
        sa = _synack(40001, syn[4] + 1)
        b.from_guest(PEER, memoryview(sa), len(sa), 1.0)
        assert b.table.peer_count(PEER) == 1
        nat, iss, _ = _open(b, eg, accepted)
        sa = _synack(nat, iss + 1)
        b.from_guest(PEER, memoryview(sa), len(sa), 1.1)
        assert b.stats.refused_cap == 1 and b.table.peer_count(PEER) == 1
        assert any(p[6] & tcp.RST for p, _ in eg.take())  # the guest is told too
        client.settimeout(5)
        with pytest.raises(ConnectionResetError):
            client.recv(1)
    finally:
        c2.close()


def test_prometheus_names_each_forward() -> None:
    snap = Snapshot(
        {},
        [{"fwd0_accepted": 3, "fwd0_refused": 1, "fwd1_bytes_to_guest": 10}, {"fwd0_accepted": 2}],
        [],
        forwards=["tcp 127.0.0.1:8080->10.77.0.2:80", "udp 127.0.0.1:53->10.77.0.2:53"],
    )
    text = render_prometheus(snap)
    assert (
        'wgslirp_forward_connections_total{forward="tcp 127.0.0.1:8080->10.77.0.2:80",'
        'result="accepted"} 5' in text
    )
    assert (
        'wgslirp_forward_bytes_total{forward="udp 127.0.0.1:53->10.77.0.2:53",'
        'direction="to_guest"} 10' in text
    )
    assert "wgslirp_fwd0_accepted_total" not in text  # not also as a raw counter


# ---------------------------------------------------------------------- UDP


def _udp_bridge(idle: float = 5.0, per_peer: int = 0) -> tuple[UdpBridge, PeerEgress]:
    eg = PeerEgress()
    ctx = BridgeContext(eg, Loop(), mtu=1380, gateway=GW)
    return UdpBridge(ctx, EgressPolicy(), FlowTable[UdpFlow](idle, 0, per_peer)), eg


def _udp_out(eg: PeerEgress) -> list[tuple[tuple[int, ...], bytes, int]]:
    out = []
    for pkt, peer in eg.sent:
        p = udp.parse(pkt, len(pkt))
        assert p is not None
        out.append((p[:4], pkt[p[4] : p[4] + p[5]], peer))
    eg.sent.clear()
    return out


def _take_datagrams(
    b: UdpBridge,
    eg: PeerEgress,
    lst: socket.socket,
    pick: Callable[[], int | None],
    tally: ForwardTally,
    now: float,
    want: int,
) -> None:
    """Hand the forward's socket to the bridge until `want` packets went to the guest
    (bounded: the datagrams are on loopback, but need not be queued yet)."""
    for _ in range(100):
        if len(eg.sent) >= want:
            return
        select.select([lst], [], [], 0.1)
        b.from_forward(lst, GUEST, 53, pick, tally, now)
    raise AssertionError(f"{len(eg.sent)} of {want} datagrams reached the guest")


def _from_guest(b: UdpBridge, peer: int, nat: int, payload: bytes, now: float) -> None:
    buf = bytearray(28 + len(payload))
    n = udp.build_udp_into(buf, GUEST, GW, 53, nat, payload)
    b.from_guest(peer, memoryview(buf), n, now)


def test_udp_forward_flow_per_client_bound_to_its_peer_and_expired_alone() -> None:
    b, eg = _udp_bridge(idle=5.0)
    lst = open_listener(Forward("127.0.0.1", 0, "10.77.0.2", 53), ipv4.PROTO_UDP)
    tally = ForwardTally(Forward("127.0.0.1", lst.getsockname()[1], "10.77.0.2", 53))
    ports = iter([40000, 40001])
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for i, c in enumerate(clients):
            c.settimeout(5)
            c.sendto(f"query {i}".encode(), lst.getsockname())
        _take_datagrams(b, eg, lst, lambda: next(ports), tally, 1.0, 2)
        got = sorted(_udp_out(eg))
        assert [(hdr, peer) for hdr, _, peer in got] == [
            ((GW, GUEST, 40000, 53), ROUTE_BY_DESTINATION),
            ((GW, GUEST, 40001, 53), ROUTE_BY_DESTINATION),
        ]
        assert sorted(p for _, p, _ in got) == [b"query 0", b"query 1"]
        assert tally.accepted == 2 and tally.bytes_to_guest == 14
        # (which client got which NAT port depends on the order the datagrams were read)
        port_of = {p: hdr[2] for hdr, p, _ in got}
        first = port_of[b"query 0"]
        # The guest answers each through its peer: each client gets its own answer.
        _from_guest(b, PEER, port_of[b"query 1"], b"answer 1", 1.1)
        _from_guest(b, PEER, first, b"answer 0", 1.1)
        assert clients[0].recvfrom(100) == (b"answer 0", lst.getsockname())
        assert clients[1].recvfrom(100) == (b"answer 1", lst.getsockname())
        assert b.table.peer_count(PEER) == 2 and tally.bytes_to_host == 16
        # A client's next datagram reuses its flow, now to the guest's own peer.
        clients[0].sendto(b"again", lst.getsockname())
        _take_datagrams(b, eg, lst, lambda: None, tally, 2.0, 1)
        (again,) = _udp_out(eg)
        assert again[0][2] == first and again[2] == PEER
        # Idle flows expire like outbound ones; the forward's socket stays.
        b.expire(6.5)
        assert len(b.table) == 1  # one went idle at 1.1, client 0 was active at 2.0
        assert b.forward_port_taken(GUEST, 53, first)
        b.expire(7.5)
        assert len(b.table) == 0 and lst.fileno() != -1
        assert not b.forward_port_taken(GUEST, 53, first)
    finally:
        for c in clients:
            c.close()
        lst.close()


def test_udp_forward_flows_go_with_their_peer_and_their_forward() -> None:
    b, eg = _udp_bridge()
    lst = open_listener(Forward("127.0.0.1", 0, "10.77.0.2", 53), ipv4.PROTO_UDP)
    tally = ForwardTally(Forward("127.0.0.1", lst.getsockname()[1], "10.77.0.2", 53))
    ports = iter(range(40000, 40010))
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for c in clients:
            c.sendto(b"q", lst.getsockname())
        _take_datagrams(b, eg, lst, lambda: next(ports), tally, 1.0, 3)
        _from_guest(b, PEER, 40000, b"a", 1.0)
        assert len(b.table) == 3
        assert b.forget_peer(PEER) == 1  # the bound one
        b.close_forward(lst)  # the forward removed by a reload: the rest
        assert len(b.table) == 0 and lst.fileno() != -1
    finally:
        for c in clients:
            c.close()
        lst.close()


def test_probe_names_the_setting_and_logs_an_exposed_forward(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            probe_forwards(
                [("WG_FORWARD_TCP", ipv4.PROTO_TCP, [Forward("127.0.0.1", port, "10.77.0.2", 1)])]
            )
    assert info.value.setting == "WG_FORWARD_TCP" and str(port) in info.value.problem
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a free port, for a moment
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with caplog.at_level(logging.WARNING, "wgslirp.forward"):
        probe_forwards(
            [
                ("WG_FORWARD_UDP", ipv4.PROTO_UDP, [Forward("127.0.0.1", free, "10.77.0.2", 53)]),
                ("WG_FORWARD_UDP", ipv4.PROTO_UDP, [Forward("0.0.0.0", free, "10.77.0.2", 53)]),
            ]
        )
    exposed = [r.getMessage() for r in caplog.records]
    assert exposed == [f"WG_FORWARD_UDP: 0.0.0.0:{free} is exposed beyond this host "
                       f"(forwards to 10.77.0.2:53)"]  # fmt: skip
