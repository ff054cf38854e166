"""Flow keys and worker choice: affinity for a flow's packets and the errors about it."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgslirp.net import flowkey, icmp, ipv4, udp
from wgslirp.net.checksum import checksum

GUEST = ipv4.addr_to_int("10.77.0.2")
REMOTE = ipv4.addr_to_int("203.0.113.9")


def ip_packet(src: int, dst: int, proto: int, body: bytes, frag_word: int = 0) -> bytearray:
    pkt = bytearray(
        struct.pack(">BBHHHBBHII", 0x45, 0, 20 + len(body), 1, frag_word, 64, proto, 0, src, dst)
        + body
    )
    struct.pack_into(">H", pkt, 10, checksum(memoryview(pkt)[:20]))
    return pkt


def tcp_packet(src: int, dst: int, sport: int, dport: int, payload: bytes = b"") -> bytearray:
    # Only the ports matter to the flow layer; the rest of the header can stay zero.
    return ip_packet(
        src,
        dst,
        ipv4.PROTO_TCP,
        struct.pack(">HHIIBBHHH", sport, dport, 0, 0, 0x50, 0x02, 0, 0, 0) + payload,
    )


def udp_packet(src: int, dst: int, sport: int, dport: int, payload: bytes = b"") -> bytearray:
    out = bytearray(2048)
    return out[: udp.build_udp_into(out, src, dst, sport, dport, payload)]


def echo(src: int, dst: int, kind: int, ident: int, seq: int) -> bytearray:
    body = bytearray(struct.pack(">BBHHH", kind, 0, 0, ident, seq) + b"abcdefgh")
    struct.pack_into(">H", body, 2, checksum(body))
    return ip_packet(src, dst, ipv4.PROTO_ICMP, bytes(body))


def guest_error_about(sent_to_guest: bytearray, code: int = icmp.PORT_UNREACHABLE) -> bytearray:
    """What the guest answers when a packet the router delivered finds no taker."""
    out = bytearray(1024)
    n = icmp.dest_unreachable_into(out, sent_to_guest, len(sent_to_guest), code)
    assert n
    return out[:n]


hosts = st.integers(0x01000000, 0xDFFFFFFF).filter(ipv4.is_host_address)
flows = st.tuples(hosts, hosts, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))


@given(flows, st.sampled_from([ipv4.PROTO_TCP, ipv4.PROTO_UDP]), st.integers(1, 16))
def test_flow_packets_and_errors_about_replies_share_a_worker(
    f: tuple[int, int, int, int],
    proto: int,
    nworkers: int,
) -> None:
    guest, remote, gport, rport = f
    make = tcp_packet if proto == ipv4.PROTO_TCP else udp_packet
    outbound = [make(guest, remote, gport, rport, p) for p in (b"", b"a", b"hello" * 50)]
    reply = make(remote, guest, rport, gport, b"response")
    error = guest_error_about(reply)
    key = flowkey.flow_key(guest, remote, proto, gport, rport)
    for pkt in [*outbound, error]:
        assert flowkey.packet_flow_key(pkt, len(pkt)) == key
        assert flowkey.shard_of(memoryview(pkt), len(pkt), nworkers) == flowkey.shard_of_key(
            key, nworkers
        )
    assert 0 <= flowkey.shard_of_key(key, nworkers) < nworkers


@given(flows, st.integers(0, 0xFFFF), st.integers(2, 16))
def test_echo_keyed_by_identifier(f: tuple[int, int, int, int], ident: int, n: int) -> None:
    guest, remote, _, _ = f
    key = flowkey.flow_key(guest, remote, ipv4.PROTO_ICMP, ident, ident)
    shards = set()
    for seq in (0, 1, 2, 0xFFFF):
        pkt = echo(guest, remote, icmp.ECHO_REQUEST, ident, seq)
        assert flowkey.packet_flow_key(pkt, len(pkt)) == key
        shards.add(flowkey.shard_of(pkt, len(pkt), n))
    # The guest reporting that the echo reply the router delivered was undeliverable.
    err = guest_error_about(echo(remote, guest, icmp.ECHO_REPLY, ident, 7), icmp.HOST_UNREACHABLE)
    assert flowkey.packet_flow_key(err, len(err)) == key
    shards.add(flowkey.shard_of(err, len(err), n))
    assert len(shards) == 1


def test_echo_identifiers_spread_over_workers() -> None:
    shards = {
        flowkey.shard_of(p, len(p), 4) for p in (echo(GUEST, REMOTE, 8, i, 1) for i in range(64))
    }
    assert shards == {0, 1, 2, 3}


def test_time_exceeded_from_guest_also_follows_the_quote() -> None:
    reply = udp_packet(REMOTE, GUEST, 53, 33434, b"x")
    out = bytearray(1024)
    n = icmp.time_exceeded_into(out, reply, len(reply))
    assert flowkey.packet_flow_key(out, n) == (GUEST, REMOTE, ipv4.PROTO_UDP, 33434, 53)


def test_defensive_fallbacks() -> None:
    first = ip_packet(GUEST, REMOTE, ipv4.PROTO_UDP, bytes(16), frag_word=ipv4.FLAG_MF)
    later = ip_packet(GUEST, REMOTE, ipv4.PROTO_UDP, bytes(16), frag_word=ipv4.FLAG_MF | 2)
    fallback = (GUEST, REMOTE, ipv4.PROTO_UDP, 0, 0)
    # Every piece of one datagram keyed alike, ports or not.
    assert flowkey.packet_flow_key(first, len(first)) == fallback
    assert flowkey.packet_flow_key(later, len(later)) == fallback
    assert flowkey.shard_of(first, len(first), 8) == flowkey.shard_of(later, len(later), 8)

    short = ip_packet(GUEST, REMOTE, ipv4.PROTO_TCP, b"\x01")  # ports cut off
    assert flowkey.packet_flow_key(short, len(short)) == (GUEST, REMOTE, ipv4.PROTO_TCP, 0, 0)
    gre = ip_packet(GUEST, REMOTE, 47, bytes(8))
    assert flowkey.packet_flow_key(gre, len(gre)) == (GUEST, REMOTE, 47, 0, 0)
    ts = ip_packet(GUEST, REMOTE, ipv4.PROTO_ICMP, bytes([13]) + bytes(19))  # timestamp
    assert flowkey.packet_flow_key(ts, len(ts)) == (GUEST, REMOTE, ipv4.PROTO_ICMP, 0, 0)
    bogus_err = ip_packet(GUEST, REMOTE, ipv4.PROTO_ICMP, bytes([3, 3]) + bytes(10))
    assert flowkey.packet_flow_key(bogus_err, len(bogus_err)) == (GUEST, REMOTE, 1, 0, 0)

    for garbage in (b"", b"\x45" * 19, b"\x60" + bytes(38), b"\x70" + bytes(39)):
        assert flowkey.packet_flow_key(garbage, len(garbage)) is None
        assert flowkey.shard_of(garbage, len(garbage), 4) == 0
    pkt = udp_packet(GUEST, REMOTE, 1, 2)
    assert flowkey.shard_of(pkt, len(pkt), 1) == 0
    assert flowkey.shard_of(pkt, len(pkt), 0) == 0


def test_distribution_over_four_workers_is_roughly_uniform() -> None:
    rng = random.Random(1234)
    counts: Counter[int] = Counter()
    for _ in range(8000):
        pkt = udp_packet(
            GUEST,
            rng.getrandbits(32) | 1,
            rng.randrange(1024, 65536),
            rng.choice((53, 443, 123, rng.randrange(1, 65536))),
        )
        counts[flowkey.shard_of(pkt, len(pkt), 4)] += 1
    assert set(counts) == {0, 1, 2, 3}
    assert all(1700 <= c <= 2300 for c in counts.values()), counts  # expected 2000, sd ~39


def test_sequential_ports_from_one_guest_spread() -> None:
    # The common real case: one guest, one server, ephemeral ports counting up.
    counts = Counter(
        flowkey.shard_of_key((GUEST, REMOTE, 6, port, 443), 4) for port in range(40000, 44000)
    )
    assert all(850 <= c <= 1150 for c in counts.values()), counts


_CHILD = """
import json, sys
from wgslirp.net import flowkey
keys = json.loads(sys.stdin.read())
print(json.dumps([[flowkey.flow_hash(*k), flowkey.shard_of_key(tuple(k), 7)] for k in keys]))
"""


@pytest.mark.parametrize("seed", ["0", "12345"])
def test_deterministic_across_processes(seed: str) -> None:
    rng = random.Random(99)
    keys = [
        [
            rng.getrandbits(32),
            rng.getrandbits(32),
            rng.choice((1, 6, 17)),
            rng.getrandbits(16),
            rng.getrandbits(16),
        ]
        for _ in range(200)
    ]
    env = dict(os.environ, PYTHONHASHSEED=seed)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps(keys),
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    here = [
        [flowkey.flow_hash(*k), flowkey.shard_of_key((k[0], k[1], k[2], k[3], k[4]), 7)]
        for k in keys
    ]
    assert json.loads(out.stdout) == here


def test_hash_is_pinned() -> None:
    # Ingress and a restarted ingress must agree; a change here reshuffles every flow.
    assert flowkey.flow_hash(0x0A4D0002, 0xCB007109, 17, 40000, 53) == 0xEBAA7480F3D25BA1
    assert flowkey.flow_hash(0x0A4D0002, 0xCB007109, 1, 7, 7) == 0xC1376C148743B869
    assert flowkey.flow_hash(0, 0, 0, 0, 0) == 0
    assert flowkey.flow_hash(GUEST, REMOTE, 6, 1, 2) != flowkey.flow_hash(REMOTE, GUEST, 6, 2, 1)
