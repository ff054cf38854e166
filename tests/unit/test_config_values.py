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
    with pytest.raises(ValueError, match="IPv6"):
        V.parse_public_endpoint("[2001:db8::1]:51820")


def test_ranges_and_choices_take_their_limits_as_arguments() -> None:
    assert V.parse_int("25", ge=0, le=65535) == 25
    with pytest.raises(ValueError, match="out of range 1-65535"):
        V.parse_int("70000", ge=1, le=65535)
    with pytest.raises(ValueError, match="shorter than the minimum 100ms"):
        V.check_range(0.0, "0s", ge=0.1, le=None, duration=True)
    assert V.parse_choice("Reno", ("newreno", "cubic"), {"reno": "newreno"}) == "newreno"
    with pytest.raises(ValueError, match="not one of: newreno, cubic"):
        V.parse_choice("bbr", ("newreno", "cubic"), {})
