"""The destination policy for IPv6: safe defaults, and one test per form that could smuggle
an IPv4 destination past the IPv4 rules."""

from __future__ import annotations

import ipaddress

import pytest

from wgslirp.net.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, addr_to_int
from wgslirp.slirp.policy import EgressPolicy, Verdict

HOST6 = "2001:db8:1::10"


def a6(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


def denied(pol: EgressPolicy, text: str, proto: int = PROTO_TCP, port: int = 80) -> bool:
    return pol.decide(proto, a6(text), port, v6=True).verdict is Verdict.DENY


@pytest.fixture
def pol() -> EgressPolicy:
    return EgressPolicy(
        gateway="10.77.0.1",
        gateway6="fd77::1",
        own_sockets=frozenset({(PROTO_UDP, 51820)}),
        local_addresses=frozenset({"192.0.2.10", HOST6, "fe80::1%eth0"}),
    )


def test_a_global_destination_is_allowed_as_ipv6(pol: EgressPolicy) -> None:
    d = pol.decide(PROTO_TCP, a6("2001:db8:2::7"), 443, v6=True)
    assert (d.verdict, d.host, d.port, d.v6) == (Verdict.ALLOW, a6("2001:db8:2::7"), 443, True)
    for proto in (PROTO_UDP, PROTO_ICMP, 58):
        assert not denied(pol, "2001:db8:2::7", proto)


@pytest.mark.parametrize(
    "dst",
    ["::1", "::", "fe80::1", "fe80::abcd:1", "ff02::1", "ff05::1:3", "ff0e::101"],
)
def test_loopback_unspecified_link_local_multicast(pol: EgressPolicy, dst: str) -> None:
    assert denied(pol, dst)


@pytest.mark.parametrize("dst", ["fd00:ec2::254", "fd20:ce::254"])
def test_cloud_metadata(pol: EgressPolicy, dst: str) -> None:
    assert denied(pol, dst)
    assert not denied(pol, dst[:-1] + "5")


def test_host_own_ipv6_address_and_its_opening(pol: EgressPolicy) -> None:
    d = pol.decide(PROTO_TCP, a6(HOST6), 5432, v6=True)
    assert d.verdict is Verdict.DENY and d.reason == "host's own address"
    assert not denied(pol, "2001:db8:1::11", PROTO_TCP, 5432)
    # "allow everything" does not open the host, naming its network does, own port stays shut
    wide = EgressPolicy(allow_cidrs=("::/0",), local_addresses=frozenset({HOST6}))
    assert denied(wide, HOST6)
    lan = EgressPolicy(
        allow_cidrs=("2001:db8:1::/64",),
        local_addresses=frozenset({HOST6}),
        own_sockets=frozenset({(PROTO_UDP, 51820)}),
    )
    assert not denied(lan, HOST6)
    assert denied(lan, HOST6, PROTO_UDP, 51820)


def test_host_address_added_later_is_denied() -> None:
    pol = EgressPolicy()
    assert not denied(pol, "2001:db8:9::1")
    pol.set_local_addresses({"2001:db8:9::1"})
    assert denied(pol, "2001:db8:9::1")


def test_router_own_ports_through_ipv6_addresses(pol: EgressPolicy) -> None:
    assert denied(pol, HOST6, PROTO_UDP, 51820)
    assert denied(pol, "fd77::1", PROTO_UDP, 51820)  # the gateway
    assert denied(pol, "::ffff:192.0.2.10", PROTO_UDP, 51820)
    assert not denied(pol, "2001:db8:2::7", PROTO_UDP, 51820)  # someone else's WireGuard


def test_gateway6_maps_to_host_loopback6(pol: EgressPolicy) -> None:
    d = pol.decide(PROTO_TCP, a6("fd77::1"), 8080, v6=True)
    assert (d.verdict, d.host, d.port, d.v6) == (Verdict.ALLOW, 1, 8080, True)
    shut = EgressPolicy(gateway6="fd77::1", deny_cidrs=("::1/128",))
    assert denied(shut, "fd77::1", PROTO_TCP, 8080)
    # the gateway may also lead to an IPv4 host address
    v4host = EgressPolicy(gateway6="fd77::1", gateway_host6="127.0.0.1")
    d = v4host.decide(PROTO_TCP, a6("fd77::1"), 8080, v6=True)
    assert (d.verdict, d.host, d.v6) == (Verdict.ALLOW, addr_to_int("127.0.0.1"), False)


def test_dns6_answers_dns_only() -> None:
    pol = EgressPolicy(dns6="fd77::53", dns_upstream=(("::1", 5353),))
    d = pol.decide(PROTO_UDP, a6("fd77::53"), 53, v6=True)
    assert (d.verdict, d.host, d.port, d.v6) == (Verdict.ALLOW, 1, 5353, True)
    assert denied(pol, "fd77::53", PROTO_UDP, 853)
    assert denied(pol, "fd77::53", PROTO_ICMP, 0)
    v4 = EgressPolicy(dns6="fd77::53", dns_upstream=(("127.0.0.53", 53),))
    d = v4.decide(PROTO_TCP, a6("fd77::53"), 53, v6=True)
    assert (d.host, d.v6) == (addr_to_int("127.0.0.53"), False)


# --- one test per IPv4 smuggling form --------------------------------------------------------


def test_ipv4_mapped_is_judged_as_the_ipv4_address(pol: EgressPolicy) -> None:
    for v4 in ("127.0.0.1", "127.1.2.3", "169.254.169.254", "0.0.0.0", "224.0.0.1"):
        d = pol.decide(PROTO_TCP, a6(f"::ffff:{v4}"), 80, v6=True)
        assert d.verdict is Verdict.DENY and d.reason.startswith("IPv4-mapped"), v4
    assert denied(pol, "::ffff:192.0.2.10")  # the host's own IPv4 address
    d = pol.decide(PROTO_TCP, a6("::ffff:8.8.8.8"), 53, v6=True)
    # allowed, and reached as the IPv4 address it is
    assert (d.verdict, d.host, d.v6) == (Verdict.ALLOW, addr_to_int("8.8.8.8"), False)
    # the IPv4 allow list applies: an allowed IPv4 address is allowed mapped too
    opened = EgressPolicy(allow_cidrs=("127.0.0.1/32",))
    assert not denied(opened, "::ffff:127.0.0.1")
    # and the IPv4 deny list too
    shut = EgressPolicy(deny_cidrs=("8.8.8.0/24",))
    assert denied(shut, "::ffff:8.8.8.8")


def test_ipv4_compatible_is_denied(pol: EgressPolicy) -> None:
    for v4 in ("8.8.8.8", "127.0.0.1", "10.77.0.1"):
        d = pol.decide(PROTO_TCP, a6(f"::{v4}"), 80, v6=True)
        assert d.verdict is Verdict.DENY, v4
    # even with an allow list that would open the IPv4 address
    assert denied(EgressPolicy(allow_cidrs=("8.8.8.8/32",)), "::8.8.8.8")


def test_nat64_prefixes_are_denied_while_nat64_is_off(pol: EgressPolicy) -> None:
    assert denied(pol, "64:ff9b::7f00:1")  # would be 127.0.0.1
    assert denied(pol, "64:ff9b::808:808")  # would be 8.8.8.8: no NAT64 here
    assert denied(pol, "64:ff9b:1::7f00:1")  # RFC 8215 local-use prefix


def test_siit_translated_form_is_denied(pol: EgressPolicy) -> None:
    assert denied(pol, "::ffff:0:7f00:1")


def test_6to4_embedding_a_denied_ipv4_is_denied(pol: EgressPolicy) -> None:
    assert denied(pol, "2002:7f00:1::1")  # 127.0.0.1
    assert denied(pol, "2002:a9fe:a9fe::1")  # 169.254.169.254
    assert denied(pol, "2002:c000:20a::1")  # 192.0.2.10, the host's own address
    assert not denied(pol, "2002:808:808::1")  # 8.8.8.8


def test_teredo_embedding_a_denied_ipv4_is_denied(pol: EgressPolicy) -> None:
    inv = 0xFFFFFFFF ^ addr_to_int("127.0.0.1")
    assert denied(pol, f"2001:0:4136:e378:8000:63bf:{inv >> 16:x}:{inv & 0xFFFF:x}")
    ok = 0xFFFFFFFF ^ addr_to_int("8.8.8.8")
    assert not denied(pol, f"2001:0:4136:e378:8000:63bf:{ok >> 16:x}:{ok & 0xFFFF:x}")


# --- allow and deny lists ---------------------------------------------------------------------


def test_egress_lists_take_ipv6_cidrs() -> None:
    pol = EgressPolicy(
        deny_cidrs=("2001:db8:bad::/48", "2001:db8::/32"),
        allow_cidrs=("2001:db8:600d::/48", "ff05::/16"),
    )
    assert denied(pol, "2001:db8:bad::1")
    assert denied(pol, "2001:db8:1::1")
    assert not denied(pol, "2001:db8:600d::1")  # the longer allow wins
    assert not denied(pol, "ff05::1")  # an explicit allow opens a default-denied range
    assert denied(pol, "ff02::1")
    # IPv6 lists never touch IPv4 decisions
    assert pol.decide(PROTO_TCP, addr_to_int("8.8.8.8"), 80).verdict is Verdict.ALLOW
    assert EgressPolicy(deny_cidrs=("::/0",)).decide(
        PROTO_TCP, addr_to_int("8.8.8.8"), 80
    ).verdict is (Verdict.ALLOW)


def test_nat64_when_enabled_reaches_the_embedded_ipv4_address_judged_as_ipv4() -> None:
    pol = EgressPolicy(nat64=True, local_addresses=frozenset({"192.0.2.10"}))
    d = pol.decide(PROTO_TCP, a6("64:ff9b::8.8.8.8"), 53, v6=True)
    assert (d.verdict, d.host, d.port, d.v6) == (Verdict.ALLOW, addr_to_int("8.8.8.8"), 53, False)
    for v4 in ("127.0.0.1", "169.254.169.254", "192.0.2.10", "224.0.0.1"):
        assert denied(pol, f"64:ff9b::{v4}"), v4
    assert denied(pol, "64:ff9b:1::808:808")  # only the well-known prefix is translated
    assert denied(EgressPolicy(nat64=True, deny_cidrs=("8.8.8.0/24",)), "64:ff9b::8.8.8.8")
