"""IPv6 in the configuration: values, the zero-config client, and what reaches the router."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_config import load
from wgslirp.config.values import (
    parse_allowed_ips,
    parse_cidrs,
    parse_unicast_ipv6,
    parse_upstreams,
    split_upstream,
)
from wgslirp.runtime.worker import build_policy
from wgslirp.slirp.policy import Verdict


def test_cidrs_of_both_families_are_normalised() -> None:
    assert parse_cidrs("10.0.0.7/8, FD77:0::5/64, 2001:db8::1") == (
        "10.0.0.0/8",
        "fd77::/64",
        "2001:db8::1/128",
    )


def test_allowed_ips_refuse_prefixes_inside_v4_compatible_space() -> None:
    assert parse_allowed_ips("0.0.0.0/0, ::/0") == ("0.0.0.0/0", "::/0")
    assert parse_allowed_ips("fd77::2") == ("fd77::2/128",)
    for bad in ("::1", "::/96", "::10.77.0.2/128", "::/128"):
        with pytest.raises(ValueError, match="::/96"):
            parse_allowed_ips(bad)


def test_unicast_ipv6() -> None:
    assert parse_unicast_ipv6("FD77:0::1") == "fd77::1"
    for bad in ("::1", "::", "::8.8.8.8", "ff02::1", "fe80::1", "::ffff:1.2.3.4", "nope"):
        with pytest.raises(ValueError):
            parse_unicast_ipv6(bad)


def test_upstreams_of_both_families() -> None:
    ups = parse_upstreams("127.0.0.53, [::1]:5353, 2001:db8::53, [fd00::1]")
    assert ups == ("127.0.0.53:53", "[::1]:5353", "[2001:db8::53]:53", "[fd00::1]:53")
    assert [split_upstream(u) for u in ups] == [
        ("127.0.0.53", 53),
        ("::1", 5353),
        ("2001:db8::53", 53),
        ("fd00::1", 53),
    ]


def test_ipv6_settings_reach_the_policy() -> None:
    cfg = load(
        {
            "WG_GATEWAY_IP6": "fd77::1",
            "WG_DNS_IP6": "fd77::53",
            "WG_DNS_UPSTREAM": "[::1]:5353",
            "EGRESS_DENY_CIDRS": "2001:db8:bad::/48",
        }
    )
    pol = build_policy(cfg)
    d = pol.decide(17, int.from_bytes(bytes.fromhex("fd77" + "00" * 12 + "0053"), "big"), 53, True)
    assert (d.verdict, d.host, d.port, d.v6) == (Verdict.ALLOW, 1, 5353, True)
    gw = pol.decide(6, int.from_bytes(bytes.fromhex("fd77" + "00" * 13 + "01"), "big"), 22, True)
    assert (gw.verdict, gw.host, gw.v6) == (Verdict.ALLOW, 1, True)
    bad = int.from_bytes(bytes.fromhex("20010db80bad" + "00" * 9 + "01"), "big")
    assert pol.decide(6, bad, 80, True).verdict is Verdict.DENY


def test_resolv_conf_keeps_ipv6_nameservers_but_not_scoped_ones(tmp_path: Path) -> None:
    from wgslirp.runtime.worker import read_resolv_conf

    f = tmp_path / "resolv.conf"
    f.write_text("nameserver fe80::1%eth0\nnameserver 2001:db8::53\nnameserver 192.0.2.53\n")
    assert read_resolv_conf(str(f)) == (("2001:db8::53", 53), ("192.0.2.53", 53))
