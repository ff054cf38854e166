"""Peer endpoints of either family (wireguard/endpoint.py), and what the device does with
them: roaming between IPv4 and IPv6, cookies bound to the full source, handshake budgets
kept per IPv4 address or IPv6 /64 (wireguard/load.py)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import pytest

from wgslirp.config.load import listen_family, resolve_host
from wgslirp.wireguard.endpoint import (
    canonical_host,
    format_endpoint,
    from_sockaddr,
    parse_endpoint,
    to_sockaddr6,
)
from wgslirp.wireguard.load import HandshakeGuard, source_key
from wgslirp_testkit.flood import initiation_with_mac1
from wgslirp_testkit.wgpair import Pair

# ---------------------------------------------------------------- the canonical form


@pytest.mark.parametrize(
    ("sockaddr", "endpoint"),
    [
        (("192.0.2.1", 51820), ("192.0.2.1", 51820)),  # an AF_INET socket's
        (("::ffff:192.0.2.1", 51820, 0, 0), ("192.0.2.1", 51820)),  # dual-stack, IPv4 peer
        (("2001:db8::1", 51820, 0, 0), ("2001:db8::1", 51820)),
        (("2001:db8::1", 51820, 7, 0), ("2001:db8::1", 51820)),  # the flow label is no part
        (("fe80::1%eth0", 51820, 0, 2), ("fe80::1%eth0", 51820)),
    ],
)
def test_socket_addresses_become_canonical_endpoints(
    sockaddr: tuple[object, ...], endpoint: tuple[str, int]
) -> None:
    assert from_sockaddr(sockaddr) == endpoint


def test_an_endpoint_maps_back_to_what_a_dual_stack_socket_sends_to() -> None:
    assert to_sockaddr6(("192.0.2.1", 51820)) == ("::ffff:192.0.2.1", 51820)
    assert to_sockaddr6(("2001:db8::1", 51820)) == ("2001:db8::1", 51820)
    assert to_sockaddr6(("fe80::1%lo", 51820)) == ("fe80::1", 51820, 0, socket.if_nametoindex("lo"))
    assert to_sockaddr6(("fe80::1%5", 51820)) == ("fe80::1", 51820, 0, 5)


def test_a_real_dual_stack_socket_hands_ipv4_peers_over_mapped() -> None:
    """What the translation is for, seen on the kernel's own sockets over loopback."""
    server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind(("::", 0))
        server.settimeout(2)
        client.bind(("127.0.0.1", 0))
        client.sendto(b"x", ("127.0.0.1", server.getsockname()[1]))
        _, sa = server.recvfrom(16)
        assert sa[0] == "::ffff:127.0.0.1" and len(sa) == 4
        endpoint = from_sockaddr(sa)
        assert endpoint == client.getsockname()
        server.sendto(b"y", to_sockaddr6(endpoint))
        client.settimeout(2)
        assert client.recvfrom(16)[0] == b"y"
    finally:
        server.close()
        client.close()


@pytest.mark.parametrize(
    ("endpoint", "text"),
    [
        (("192.0.2.1", 51820), "192.0.2.1:51820"),
        (("2001:db8::1", 51820), "[2001:db8::1]:51820"),
        (("::1", 1), "[::1]:1"),
        (("fe80::1%eth0", 51820), "[fe80::1%eth0]:51820"),
    ],
)
def test_endpoints_print_as_wireguard_go_prints_them(endpoint: tuple[str, int], text: str) -> None:
    assert format_endpoint(endpoint) == text
    assert parse_endpoint(text) == endpoint  # and wg(8) can hand them back


@pytest.mark.parametrize(
    "text",
    ["::1:51820", "[::1]", "[::1]x", "[::1]:", "[::1]:0", "[::1]:65536", "[::1]:+1",
     "[192.0.2.1]:1", "[2001:db8::1%eth0]:1", "example.com:1", "192.0.2.1"],
)  # fmt: skip
def test_parse_endpoint_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)


@pytest.mark.parametrize(
    "typed",
    ["2001:DB8:0:0:1:0:0:1", "2001:db8::1", "1:0:1:1:1:1:1:1", "::", "::1", "0::1.2.3.4",
     "::ffff:10.0.0.1", "fe80:0::7"],
)  # fmt: skip
def test_a_typed_endpoint_equals_the_same_one_seen_on_a_socket(typed: str) -> None:
    """Otherwise a configured endpoint would look like a roam at the first packet."""
    seen = socket.inet_ntop(socket.AF_INET6, ipaddress.IPv6Address(typed).packed)  # recvfrom
    assert from_sockaddr((seen, 1, 0, 0)) == (canonical_host(typed), 1)


def test_canonical_host() -> None:
    assert canonical_host("2001:0DB8:0:0:0:0:0:1") == "2001:db8::1"
    assert canonical_host("::ffff:10.1.2.3") == "10.1.2.3"
    assert canonical_host("10.1.2.3") == "10.1.2.3"
    with pytest.raises(ValueError):
        canonical_host("2001:db8::1%eth0")


# ------------------------------------------------------------------ resolving names


Asked = list[tuple[int, int]]


def _fake_getaddrinfo(answers: dict[int, list[str]]) -> tuple[Callable[..., list[Any]], Asked]:
    """A resolver that knows one name's A and AAAA records, answering AAAA first (what
    RFC 6724 ordering gives a host with IPv6), and records what it was asked."""
    asked: Asked = []

    def getaddrinfo(
        host: str, port: object, family: int, kind: int, proto: int, flags: int
    ) -> list[Any]:
        asked.append((family, flags))
        out: list[Any] = []
        for fam in (socket.AF_INET6, socket.AF_INET):
            if family in (fam, socket.AF_UNSPEC):
                for a in answers.get(fam, []):
                    sa = (a, 0, 0, 0) if fam == socket.AF_INET6 else (a, 0)
                    out.append((fam, kind, 17, "", sa))
        if not out:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return out

    return getaddrinfo, asked


def test_names_resolve_to_the_family_the_socket_reaches() -> None:
    both, asked = _fake_getaddrinfo(
        {socket.AF_INET: ["192.0.2.9"], socket.AF_INET6: ["2001:db8::9"]}
    )
    assert resolve_host("peer.example", socket.AF_INET, getaddrinfo=both) == "192.0.2.9"
    assert resolve_host("peer.example", socket.AF_INET6, getaddrinfo=both) == "2001:db8::9"
    # dual stack: the resolver's first answer, only families the host has an address of
    assert resolve_host("peer.example", socket.AF_UNSPEC, getaddrinfo=both) == "2001:db8::9"
    assert asked[-1] == (socket.AF_UNSPEC, socket.AI_ADDRCONFIG)
    only_a, _ = _fake_getaddrinfo({socket.AF_INET: ["192.0.2.9"]})
    with pytest.raises(ValueError, match=r"cannot resolve 'peer\.example'"):
        resolve_host("peer.example", socket.AF_INET6, getaddrinfo=only_a)
    mapped, _ = _fake_getaddrinfo({socket.AF_INET6: ["::ffff:192.0.2.3"]})
    assert resolve_host("peer.example", socket.AF_UNSPEC, getaddrinfo=mapped) == "192.0.2.3"


def test_the_listen_address_says_which_families_peers_may_have() -> None:
    assert listen_family("::") == socket.AF_UNSPEC
    assert listen_family("::1") == socket.AF_INET6
    assert listen_family("0.0.0.0") == socket.AF_INET
    assert listen_family("127.0.0.1") == socket.AF_INET


# ------------------------------------------------------------------- in the device


def test_the_endpoint_follows_authenticated_packets_between_families() -> None:
    p = Pair()
    p.handshake()
    p.deliver()
    plain = bytearray(2048)
    pb = p.pb
    roams = p.b.roams
    for addr in (("2001:db8::7", 40001), ("192.0.2.7", 40001), ("2001:db8::8", 5)):
        data = p.send_a_to_b()
        assert data is not None
        assert p.b.decrypt(data, addr, p.now, plain) is not None
        assert pb.endpoint == addr
        reply = p.send_b_to_a()  # the answer goes where the last packet came from
        assert reply is not None
    assert p.b.roams == roams + 3
    # a packet that fails authentication moves nothing
    forged = bytearray(p.send_a_to_b() or b"")
    forged[-1] ^= 1
    assert p.b.decrypt(bytes(forged), ("2001:db8::66", 1), p.now, plain) is None
    assert pb.endpoint == ("2001:db8::8", 5)
    # nor does a replayed one from elsewhere
    data = p.send_a_to_b()
    assert data is not None
    assert p.b.decrypt(data, ("2001:db8::8", 5), p.now, plain) is not None
    assert p.b.decrypt(data, ("192.0.2.66", 1), p.now, plain) is None
    assert pb.endpoint == ("2001:db8::8", 5)


def test_a_cookie_is_bound_to_the_full_ipv6_source_address_and_port() -> None:
    """MAC2 proves the sender receives at its address: a cookie got at one IPv6 address
    must not work from another, even in the same /64, nor from another port."""
    p = Pair()
    p.b.guard = HandshakeGuard(0, fresh=(0.0, 0.0))  # under load: no cookie, no handshake
    here = ("2001:db8::1", 40001)
    p.a.initiate(p.pa, p.now)
    ((init, _),) = p.a.outbox
    p.a.outbox.clear()
    p.b.receive_handshake(init, here, p.now)
    ((reply, to),) = p.b.outbox
    p.b.outbox.clear()
    assert to == here and p.b.stats.cookie_replies_sent == 1
    assert p.a.receive_handshake(reply, ("192.0.2.2", 40002), p.now) is not None
    p.clock.advance(5.5)
    for source, completes in (
        (("2001:db8::2", 40001), False),  # same /64, other address
        (("2001:db8::1", 40009), False),  # same address, other port
        (here, True),
    ):
        p.a.handle_timer(p.now)  # the retry, stamped with MAC2
        assert p.a.outbox, "the initiator should have retried"
        ((init, _),) = p.a.outbox
        p.a.outbox.clear()
        got = p.b.receive_handshake(init, source, p.now)
        p.b.outbox.clear()
        assert (got is not None) == completes, source
        p.clock.advance(5.5)


# ------------------------------------------------------------- budgets per source


def test_budget_sources_are_ipv4_addresses_and_ipv6_slash_64s() -> None:
    assert source_key("192.0.2.1") == "192.0.2.1"
    same = {source_key(a) for a in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:2::1")}
    assert len(same) == 1
    assert source_key("2001:db8:1:3::1") not in same
    assert source_key("2001:db8:1:2::1%eth0") in same  # a zone is no other source


def test_a_flooder_cannot_escape_its_budgets_by_walking_its_slash_64() -> None:
    dev_guard = HandshakeGuard(0)
    p = Pair()
    p.b.guard = dev_guard
    msg = initiation_with_mac1(p.b.public_key)
    for i in range(1000):  # a new address of the same /64 for every message
        p.b.receive_handshake(msg, (f"2001:db8:0:1::{i + 1:x}", 40000), p.now)
    p.b.outbox.clear()
    s = p.b.stats
    assert (s.handshake_invalid, s.cookie_replies_sent, s.handshake_shed) == (3, 2, 995)
    # another /64 has budgets of its own, and an IPv4 source too
    p.b.receive_handshake(msg, ("2001:db8:0:2::1", 40000), p.now)
    p.b.receive_handshake(msg, ("192.0.2.1", 40000), p.now)
    assert (s.handshake_invalid, s.handshake_shed) == (5, 995)
