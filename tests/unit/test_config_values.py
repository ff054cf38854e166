"""The value parsers alone: text in, value or ValueError out, no settings and no network."""

from __future__ import annotations

import pytest

from wgslirp.config import format_duration, parse_duration
from wgslirp.config import values as V


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15s", 15.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("1h2m3s", 3723.0),
        ("250us", 0.00025),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("seconds", [0.5, 1.0, 15.0, 60.0, 90.0, 3723.0, 1.5, 0.025])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_endpoint_host_names_come_back_unresolved() -> None:
    # resolving is the loader's I/O, through the callable it is given
    assert V.parse_endpoint("peer.example:4000") == ("peer.example", 4000)
    assert V.parse_endpoint("198.51.100.4:51821") == ("198.51.100.4", 51821)
    with pytest.raises(ValueError, match="has no host"):
        V.parse_endpoint(":4000")
    with pytest.raises(ValueError, match="no port"):
        V.parse_endpoint("peer.example")


def test_hostport_and_public_endpoint() -> None:
    assert V.parse_hostport(":9100") == ("0.0.0.0", 9100)
    assert V.parse_public_endpoint("vpn.example.com") == ("vpn.example.com", None)
    assert V.parse_public_endpoint("[2001:DB8:0::1]:51820") == ("2001:db8::1", 51820)
    assert V.parse_public_endpoint("[2001:db8::1]") == ("2001:db8::1", None)
    assert V.parse_public_endpoint("2001:db8::1") == ("2001:db8::1", None)
    with pytest.raises(ValueError, match=r"\[address\]:port"):
        V.parse_public_endpoint("2001:db8::1:51820")
    with pytest.raises(ValueError, match="IPv6"):  # the metrics listener stays IPv4
        V.parse_hostport("[::1]:9100")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("[2001:db8::1]:51820", ("2001:db8::1", 51820)),
        ("[2001:0DB8:0000::0001]:1", ("2001:db8::1", 1)),  # canonical text
        ("[::ffff:192.0.2.7]:51820", ("192.0.2.7", 51820)),  # IPv4-mapped is IPv4
        ("[fe80::1%eth0]:51820", ("fe80::1%eth0", 51820)),
        ("192.0.2.7:51820", ("192.0.2.7", 51820)),
        ("peer.example:4000", ("peer.example", 4000)),
    ],
)
def test_endpoints_take_bracketed_ipv6(text: str, want: tuple[str, int]) -> None:
    assert V.parse_endpoint(text) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2001:db8::1:51820", r"\[address\]:port"),  # ambiguous without brackets
        ("[2001:db8::1]", "no port"),
        ("[2001:db8::1]51820", "not \\[IPv6 address\\]:port"),
        ("[2001:db8::1", "not \\[IPv6 address\\]:port"),
        ("[192.0.2.7]:51820", "not an IPv6 address"),
        ("[peer.example]:51820", "not an IPv6 address"),
        ("[2001:db8::g]:51820", "not an IPv6 address"),
        ("[2001:db8::1%eth0]:51820", "link-local"),
        ("[2001:db8::1]:0", "out of range"),
        ("[2001:db8::1]:65536", "out of range"),
        ("[2001:db8::1]:port", "not a number"),
        ("bad_host!:1", "neither an IP address nor a host name"),
    ],
)
def test_bad_endpoints_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        V.parse_endpoint(text)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0.0.0.0", "0.0.0.0"),
        ("::", "::"),
        ("[::]", "::"),
        ("::1", "::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
    ],
)
def test_listen_addresses_of_both_families(text: str, want: str) -> None:
    assert V.parse_listen_addr(text) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost", "not an IPv4 or IPv6 address"),
        ("[::1]:51820", "not an IPv4 or IPv6 address"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("fe80::1", "link-local"),
        ("2001:db8::1%eth0", "%zone"),
    ],
)
def test_bad_listen_addresses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        V.parse_listen_addr(text)


def test_ranges_and_choices_take_their_limits_as_arguments() -> None:
    assert V.parse_int("25", ge=0, le=65535) == 25
    with pytest.raises(ValueError, match="out of range 1-65535"):
        V.parse_int("70000", ge=1, le=65535)
    with pytest.raises(ValueError, match="shorter than the minimum 100ms"):
        V.check_range(0.0, "0s", ge=0.1, le=None, duration=True)
    assert V.parse_choice("Reno", ("newreno", "cubic"), {"reno": "newreno"}) == "newreno"
    with pytest.raises(ValueError, match="not one of: newreno, cubic"):
        V.parse_choice("bbr", ("newreno", "cubic"), {})
