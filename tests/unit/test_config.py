"""Configuration: every variable of the original parsed, every bad value named."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from wgslirp import config as C
from wgslirp.config import (
    Config,
    ConfigError,
    load_config,
    parse_wg_quick,
    redacted,
    render_check,
    render_markdown,
    settings_table,
)
from wgslirp.config.cpus import usable_cpus, workers_for_cpus
from wgslirp.keys import decode_key, encode_key, generate_private_key, public_key

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

# Fixed keys, so parametrized test ids are the same in every xdist worker.
PRIV = bytes(range(1, 33))
PRIV_B64 = encode_key(PRIV)
PEER_A = encode_key(public_key(bytes([0xA]) * 32))
PEER_B = encode_key(public_key(bytes([0xB]) * 32))
PSK_B64 = encode_key(bytes([0x5]) * 32)
BASE = {"XDG_STATE_HOME": "/var/lib/test-state"}


def load(env: dict[str, str], config_file: str | None = None) -> Config:
    def no_dns(host: str) -> str:
        names = {"peer.example": "192.0.2.7"}
        if host not in names:
            raise ValueError(f"cannot resolve {host!r}: test resolver knows no such name")
        return names[host]

    return load_config({**BASE, **env}, config_file, resolve=no_dns)


def err(env: dict[str, str], config_file: str | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(env, config_file)
    return info.value


# ---------------------------------------------------------------- keys


def test_public_key_matches_rfc7748_vector() -> None:
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    expect = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert public_key(alice).hex() == expect


def test_generated_keys_are_clamped_and_distinct() -> None:
    keys = {generate_private_key() for _ in range(8)}
    assert len(keys) == 8
    for k in keys:
        assert len(k) == 32 and k[0] & 7 == 0 and k[31] & 0x80 == 0 and k[31] & 0x40


def test_decode_key_strips_whitespace_and_round_trips() -> None:
    assert decode_key(f"  {PRIV_B64}\n", "X") == PRIV


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("not base64!", "not valid base64"),
        (encode_key(b"\x01" * 31), "31 bytes"),
        (encode_key(b"\x01" * 33), "33 bytes"),
        ("", "empty"),
        (PRIV_B64[:-2] + "B=", "canonical"),  # stray bits in the padding character
    ],
    ids=["garbage", "31-bytes", "33-bytes", "empty", "non-canonical"],
)
def test_decode_key_rejects(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        decode_key(text, "SOME_KEY")
    assert info.value.setting == "SOME_KEY"
    assert words in info.value.problem


def test_keys_do_not_import_the_config_package() -> None:
    code = "import sys, wgslirp.keys; print('wgslirp.config' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


# ---------------------------------------------------------------- basics


def test_config_error_is_one_line_and_picklable() -> None:
    e = ConfigError("WG_LISTEN_PORT", "70000 is out of range 1-65535")
    assert str(e) == "WG_LISTEN_PORT: 70000 is out of range 1-65535"
    again = pickle.loads(pickle.dumps(e))
    assert (again.setting, again.problem) == (e.setting, e.problem)


def test_port_message_is_exact() -> None:
    assert str(err({"WG_LISTEN_PORT": "70000"})) == "WG_LISTEN_PORT: 70000 is out of range 1-65535"


def test_defaults() -> None:
    cfg = load({})
    assert cfg.private_key is None
    assert (cfg.listen_addr, cfg.listen_port, cfg.mtu) == ("::", 51820, 1380)
    assert cfg.peers == ()
    assert cfg.gateway_ip is None and cfg.dns_ip is None and cfg.public_endpoint is None
    assert cfg.gateway_host_ip == "127.0.0.1"
    assert cfg.state_dir == "/var/lib/test-state/wgslirp"
    assert cfg.interface_name == "wgslirp0"
    assert cfg.processor_workers == workers_for_cpus(usable_cpus())  # tests/unit/test_cpus.py
    assert cfg.processor_queue_cap == 1000
    assert cfg.tun_queue_cap == 1024
    assert not (cfg.debug or cfg.wg_debug or cfg.pooling or cfg.copy_tos or cfg.disable_ipv6)
    assert cfg.ip_ttl == 64
    assert cfg.metrics == C.MetricsConfig(log=False, interval=30.0, format="text", listen=None)
    assert not cfg.health.enabled
    assert cfg.tcp.ack_delay_ms == 10 and cfg.tcp.error_signal == "mirror"
    assert cfg.tcp.cc == "bbr" and cfg.tcp.gate_log == "info"
    assert cfg.tcp.ack_idle_gate_ms == 6000 and cfg.tcp.ack_idle_fail_sec == 120
    assert cfg.tcp.fast_dial_ms == 5
    assert cfg.udp.idle_timeout == 60.0
    # Whatever the loader does not set comes from the Struct defaults.
    assert msgspec.structs.replace(cfg, state_dir="x") == Config(state_dir="x")


def test_state_dir_default_follows_xdg_and_home() -> None:
    assert C.default_state_dir({"XDG_STATE_HOME": "/s"}) == "/s/wgslirp"
    assert C.default_state_dir({"XDG_STATE_HOME": "rel", "HOME": "/h"}) == (
        "/h/.local/state/wgslirp"
    )
    assert C.default_state_dir({"HOME": "/h"}) == "/h/.local/state/wgslirp"


def test_empty_values_mean_unset() -> None:
    cfg = load({"WG_LISTEN_PORT": "", "WG_PRIVATE_KEY": "  ", "WG_PEERS": "", "TCP_CC": ""})
    assert cfg == load({})


# Every setting with a non-default value and what it must load as. A test below checks that
# this table covers every variable, so a new setting cannot be added without a test.
SAMPLES: dict[str, tuple[str, str, object]] = {
    "WG_PRIVATE_KEY": (PRIV_B64, "private_key", PRIV),
    "WG_LISTEN_ADDR": ("127.0.0.1", "listen_addr", "127.0.0.1"),
    "WG_LISTEN_PORT": ("51000", "listen_port", 51000),
    "WG_MTU": ("1200", "mtu", 1200),
    "WG_INTERFACE_NAME": ("wg-test", "interface_name", "wg-test"),
    "WG_GATEWAY_IP": ("10.9.0.1", "gateway_ip", "10.9.0.1"),
    "WG_GATEWAY_HOST_IP": ("127.0.0.2", "gateway_host_ip", "127.0.0.2"),
    "WG_DNS_IP": ("10.9.0.53", "dns_ip", "10.9.0.53"),
    "WG_GATEWAY_IP6": ("FD09::1", "gateway_ip6", "fd09::1"),
    "WG_GATEWAY_HOST_IP6": ("0:0::2", "gateway_host_ip6", "::2"),
    "WG_DNS_IP6": ("fd09::53", "dns_ip6", "fd09::53"),
    "EGRESS_NAT64": ("yes", "egress.nat64", True),
    "WG_DNS_UPSTREAM": (
        "127.0.0.1, 127.0.0.2:5353",
        "dns_upstream",
        ("127.0.0.1:53", "127.0.0.2:5353"),
    ),
    "WG_PUBLIC_ENDPOINT": ("vpn.example.com:443", "public_endpoint", "vpn.example.com:443"),
    "WGSLIRP_STATE_DIR": ("/srv/wgslirp", "state_dir", "/srv/wgslirp"),
    "WGSLIRP_PEER_POOL": ("10.99.0.0/16", "peer_pool", "10.99.0.0/16"),
    "WGSLIRP_CONFIG_POLL": ("500ms", "config_poll", 0.5),
    # beyond what an unset PROCESSOR_WORKERS picks on any machine (at most 4)
    "PROCESSOR_WORKERS": ("12", "processor_workers", 12),
    "PROCESSOR_QUEUE_CAP": ("4096", "processor_queue_cap", 4096),
    "WG_TUN_QUEUE_CAP": ("2048", "tun_queue_cap", 2048),
    "PROCESSOR_HUNG_RESTART": ("45s", "hung_restart", 45.0),
    "POOLING": ("1", "pooling", True),
    "POOL_WRAP": ("yes", "pool_wrap", True),
    "DEBUG": ("TRUE", "debug", True),
    "LOG_FORMAT": ("json", "log_format", "json"),
    "WG_DEBUG": ("on", "wg_debug", True),
    "WG_PCAP": ("/tmp/x.pcap", "pcap_path", "/tmp/x.pcap"),
    "WG_OVERLAY_ROUTING": ("1", "overlay_routing", True),
    "WG_OVERLAY_EXCLUDE_CIDRS": (
        "192.168.0.0/16, 10.1.2.3",
        "overlay_exclude_cidrs",
        ("192.168.0.0/16", "10.1.2.3/32"),
    ),
    "WG_DISABLE_IPV6": ("true", "disable_ipv6", True),
    "COPY_TOS": ("1", "copy_tos", True),
    "IP_TTL": ("128", "ip_ttl", 128),
    "METRICS_LOG": ("1", "metrics.log", True),
    "METRICS_INTERVAL": ("1m30s", "metrics.interval", 90.0),
    "METRICS_FORMAT": ("JSON", "metrics.format", "json"),
    "METRICS_LISTEN": ("127.0.0.1:9100", "metrics.listen", ("127.0.0.1", 9100)),
    "HEALTHCHECK": ("x", "health.enabled", True),
    "HEALTH_HTTP_URL": ("http://example.org/", "health.http_url", "http://example.org/"),
    "HEALTH_DNS_NAME": ("example.net", "health.dns_name", "example.net"),
    "HEALTH_DNS_IP": ("9.9.9.9", "health.dns_ip", "9.9.9.9"),
    "TCP_ACK_DELAY_MS": ("5", "tcp.ack_delay_ms", 5),
    "TCP_ENABLE_SACK": ("0", "tcp.enable_sack", False),
    "TCP_MSS_CLAMP": ("1200", "tcp.mss_clamp", 1200),
    "TCP_PACE_US": ("50", "tcp.pace_us", 50),
    "TCP_PACING": ("0", "tcp.pacing", False),
    "TCP_GATE_LOG": ("debug", "tcp.gate_log", "debug"),
    "TCP_CC": ("cubic", "tcp.cc", "cubic"),
    "TCP_ERROR_SIGNAL": ("rst", "tcp.error_signal", "rst"),
    "TCP_FAST_DIAL_MS": ("0", "tcp.fast_dial_ms", 0),
    "TCP_SOCK_RCVBUF": ("1048576", "tcp.sock_rcvbuf", 1048576),
    "TCP_SOCK_SNDBUF": ("262144", "tcp.sock_sndbuf", 262144),
    "TCP_RCV_BUFFER": ("2097152", "tcp.rcv_buffer", 2097152),
    "TCP_SND_BUFFER": ("524288", "tcp.snd_buffer", 524288),
    "TCP_SND_BUFFER_MAX": ("8388608", "tcp.snd_buffer_max", 8 << 20),
    "TCP_SND_BUFFER_POOL": ("1073741824", "tcp.snd_buffer_pool", 1 << 30),
    "TCP_RCV_BUFFER_MAX": ("8388608", "tcp.rcv_buffer_max", 8 << 20),
    "TCP_ECN": ("false", "tcp.ecn", False),
    "TCP_ACK_IDLE_GATE_MS": ("0", "tcp.ack_idle_gate_ms", 0),
    "TCP_ACK_IDLE_MIN_INFLIGHT": ("1460", "tcp.ack_idle_min_inflight", 1460),
    "TCP_ACK_IDLE_FAIL_SEC": ("30", "tcp.ack_idle_fail_sec", 30),
    "TCP_WS_OUT": ("14", "tcp.ws_out", 14),
    "TCP_INIT_CWND_MSS": ("4", "tcp.init_cwnd_mss", 4),
    "TCP_PEND_CAP_BYTES": ("0", "tcp.pend_cap_bytes", 0),
    "TCP_LOG_HANDSHAKE": ("on", "tcp.log_handshake", True),
    "TCP_ACK_TRACE": ("true", "tcp.ack_trace", True),
    "TCP_MAX_FLOWS": ("0", "tcp.max_flows", 0),
    "TCP_MAX_FLOWS_PER_PEER": ("10", "tcp.max_flows_per_peer", 10),
    "UDP_IDLE_TIMEOUT": ("500ms", "udp.idle_timeout", 0.5),
    "UDP_MAX_FLOWS": ("100", "udp.max_flows", 100),
    "UDP_MAX_FLOWS_PER_PEER": ("7", "udp.max_flows_per_peer", 7),
    "EGRESS_ALLOW_CIDRS": ("127.0.0.1/32", "egress.allow_cidrs", ("127.0.0.1/32",)),
    "EGRESS_DENY_CIDRS": (
        "10.0.0.0/8,172.16.0.0/12",
        "egress.deny_cidrs",
        ("10.0.0.0/8", "172.16.0.0/12"),
    ),
    "WG_FORWARD_TCP": ("8080=10.9.0.2:80", "forward_tcp", ("127.0.0.1:8080=10.9.0.2:80",)),
    "WG_FORWARD_UDP": ("0.0.0.0:53=10.9.0.2", "forward_udp", ("0.0.0.0:53=10.9.0.2:53",)),
    "WG_FORWARD_CONNECT_TIMEOUT": ("5s", "forward_connect_timeout", 5.0),
}


def _get(cfg: Config, dotted: str) -> object:
    obj: object = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_samples_cover_every_scalar_setting() -> None:
    scalar = {s.env for s in settings_table() if "<i>" not in s.env and s.env != "WG_PEERS"}
    assert set(SAMPLES) == scalar


@pytest.mark.parametrize("env", sorted(SAMPLES))
def test_each_variable_is_parsed(env: str) -> None:
    raw, field, expected = SAMPLES[env]
    cfg = load({env: raw})
    assert _get(cfg, field) == expected
    assert _get(Config(), field) != expected, "sample must differ from the default"


def test_all_variables_together() -> None:
    cfg = load({env: raw for env, (raw, _, _) in SAMPLES.items()})
    for _env, (_raw, field, expected) in SAMPLES.items():
        assert _get(cfg, field) == expected


def test_every_original_variable_is_kept() -> None:
    ours = {s.env for s in settings_table()}
    assert ours >= C.ORIGINAL_VARIABLES


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "Yes", "on", " ON "])
def test_bool_true_spellings(raw: str) -> None:
    assert load({"DEBUG": raw}).debug is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "OFF"])
def test_bool_false_spellings(raw: str) -> None:
    assert load({"DEBUG": raw}).debug is False


def test_any_non_empty_value_enables_where_the_original_said_so() -> None:
    assert load({"METRICS_LOG": "0"}).metrics.log is True
    assert load({"HEALTHCHECK": "no"}).health.enabled is True
    # As in the original, METRICS_INTERVAL alone also turns metrics on.
    cfg = load({"METRICS_INTERVAL": "15s"})
    assert cfg.metrics.log is True and cfg.metrics.interval == 15.0


def test_choice_aliases() -> None:
    assert load({"TCP_GATE_LOG": "0"}).tcp.gate_log == "off"
    assert load({"TCP_GATE_LOG": "true"}).tcp.gate_log == "info"
    assert load({"TCP_CC": "Reno"}).tcp.cc == "newreno"
    assert load({"TCP_CC": "off"}).tcp.cc == "off"


def test_public_endpoint_port_defaults_to_listen_port() -> None:
    cfg = load({"WG_PUBLIC_ENDPOINT": "203.0.113.9", "WG_LISTEN_PORT": "4500"})
    assert cfg.public_endpoint == "203.0.113.9:4500"


def test_metrics_listen_empty_host_means_any() -> None:
    assert load({"METRICS_LISTEN": ":9100"}).metrics.listen == ("0.0.0.0", 9100)


# ---------------------------------------------------------------- bad values

BAD: list[tuple[dict[str, str], str]] = [
    ({"WG_PRIVATE_KEY": "!!!notbase64!!!"}, "WG_PRIVATE_KEY"),
    ({"WG_PRIVATE_KEY": encode_key(b"\x02" * 31)}, "WG_PRIVATE_KEY"),
    ({"WG_LISTEN_PORT": "0"}, "WG_LISTEN_PORT"),
    ({"WG_LISTEN_PORT": "70000"}, "WG_LISTEN_PORT"),
    ({"WG_LISTEN_PORT": "abc"}, "WG_LISTEN_PORT"),
    ({"WG_LISTEN_PORT": "51820.0"}, "WG_LISTEN_PORT"),
    ({"WG_LISTEN_ADDR": "localhost"}, "WG_LISTEN_ADDR"),
    ({"WG_LISTEN_ADDR": "[::1]:51820"}, "WG_LISTEN_ADDR"),
    ({"WG_LISTEN_ADDR": "ff02::1"}, "WG_LISTEN_ADDR"),
    ({"WG_LISTEN_ADDR": "fe80::1"}, "WG_LISTEN_ADDR"),  # link-local needs its %zone
    ({"WG_LISTEN_ADDR": "2001:db8::1%eth0"}, "WG_LISTEN_ADDR"),
    ({"WG_LISTEN_ADDR": "::1::"}, "WG_LISTEN_ADDR"),
    ({"WG_MTU": "100"}, "WG_MTU"),
    ({"WG_MTU": "65536"}, "WG_MTU"),
    ({"WG_INTERFACE_NAME": "a-name-longer-than-15"}, "WG_INTERFACE_NAME"),
    ({"WG_INTERFACE_NAME": "wg/0"}, "WG_INTERFACE_NAME"),
    ({"WG_GATEWAY_IP": "127.0.0.1"}, "WG_GATEWAY_IP"),
    ({"WG_GATEWAY_IP": "10.0.0.256"}, "WG_GATEWAY_IP"),
    ({"WG_GATEWAY_HOST_IP": "host"}, "WG_GATEWAY_HOST_IP"),
    ({"WG_DNS_UPSTREAM": "resolver"}, "WG_DNS_UPSTREAM"),
    ({"WG_DNS_IP": "224.0.0.1"}, "WG_DNS_IP"),
    ({"WG_GATEWAY_IP6": "fd77::1::2"}, "WG_GATEWAY_IP6"),
    ({"WG_GATEWAY_IP6": "::1"}, "WG_GATEWAY_IP6"),  # loopback, inside ::/96
    ({"WG_GATEWAY_IP6": "::10.77.0.1"}, "WG_GATEWAY_IP6"),  # IPv4-compatible
    ({"WG_GATEWAY_IP6": "::ffff:10.77.0.1"}, "WG_GATEWAY_IP6"),  # IPv4-mapped
    ({"WG_GATEWAY_IP6": "fe80::1"}, "WG_GATEWAY_IP6"),
    ({"WG_GATEWAY_IP6": "10.77.0.1"}, "WG_GATEWAY_IP6"),
    ({"WG_GATEWAY_HOST_IP6": "localhost"}, "WG_GATEWAY_HOST_IP6"),
    ({"WG_GATEWAY_HOST_IP6": "fe80::1%eth0"}, "WG_GATEWAY_HOST_IP6"),
    ({"WG_DNS_IP6": "ff02::1"}, "WG_DNS_IP6"),
    ({"WG_GATEWAY_IP6": "fd77::1", "WG_DNS_IP6": "fd77:0::1"}, "WG_DNS_IP6"),
    ({"WG_DNS_UPSTREAM": "[::1"}, "WG_DNS_UPSTREAM"),
    ({"WG_DNS_UPSTREAM": "[::1]:0"}, "WG_DNS_UPSTREAM"),
    ({"WG_DNS_UPSTREAM": "fd00::1::5"}, "WG_DNS_UPSTREAM"),
    ({"EGRESS_DENY_CIDRS": "2001:db8::/200"}, "EGRESS_DENY_CIDRS"),
    ({"EGRESS_ALLOW_CIDRS": "2001:zz8::/32"}, "EGRESS_ALLOW_CIDRS"),
    ({"WGSLIRP_PEER_POOL": "10.77.0.1/24"}, "WGSLIRP_PEER_POOL"),  # host bits: a typo
    ({"WGSLIRP_PEER_POOL": "10.77.0.5"}, "WGSLIRP_PEER_POOL"),
    ({"WGSLIRP_PEER_POOL": "10.77.0.0/31"}, "WGSLIRP_PEER_POOL"),
    ({"WGSLIRP_PEER_POOL": "fd00::/64"}, "WGSLIRP_PEER_POOL"),
    ({"WG_GATEWAY_IP": "10.0.0.1", "WG_DNS_IP": "10.0.0.1"}, "WG_DNS_IP"),
    ({"WG_PUBLIC_ENDPOINT": "vpn.example.com:0"}, "WG_PUBLIC_ENDPOINT"),
    ({"WG_PUBLIC_ENDPOINT": "2001:db8::1:51820"}, "WG_PUBLIC_ENDPOINT"),
    ({"WG_PUBLIC_ENDPOINT": "[2001:db8::1]:0"}, "WG_PUBLIC_ENDPOINT"),
    ({"WG_PUBLIC_ENDPOINT": "[vpn.example.com]:51820"}, "WG_PUBLIC_ENDPOINT"),
    ({"WG_PUBLIC_ENDPOINT": "bad_host!:1"}, "WG_PUBLIC_ENDPOINT"),
    ({"PROCESSOR_WORKERS": "-1"}, "PROCESSOR_WORKERS"),
    ({"PROCESSOR_QUEUE_CAP": "0"}, "PROCESSOR_QUEUE_CAP"),
    ({"WG_TUN_QUEUE_CAP": "lots"}, "WG_TUN_QUEUE_CAP"),
    ({"PROCESSOR_HUNG_RESTART": "-1s"}, "PROCESSOR_HUNG_RESTART"),
    ({"POOLING": "maybe"}, "POOLING"),
    ({"DEBUG": "2"}, "DEBUG"),
    ({"WG_DISABLE_IPV6": "y"}, "WG_DISABLE_IPV6"),
    ({"WG_OVERLAY_EXCLUDE_CIDRS": "10.0.0.0/33"}, "WG_OVERLAY_EXCLUDE_CIDRS"),
    ({"WG_OVERLAY_EXCLUDE_CIDRS": "fd00::/129"}, "WG_OVERLAY_EXCLUDE_CIDRS"),
    ({"METRICS_INTERVAL": "0s"}, "METRICS_INTERVAL"),
    ({"METRICS_INTERVAL": "0"}, "METRICS_INTERVAL"),
    ({"METRICS_INTERVAL": "15"}, "METRICS_INTERVAL"),
    ({"METRICS_INTERVAL": "-5s"}, "METRICS_INTERVAL"),
    ({"METRICS_INTERVAL": "soon"}, "METRICS_INTERVAL"),
    ({"METRICS_INTERVAL": "1m30"}, "METRICS_INTERVAL"),
    ({"METRICS_FORMAT": "xml"}, "METRICS_FORMAT"),
    ({"METRICS_LISTEN": "9100"}, "METRICS_LISTEN"),
    ({"METRICS_LISTEN": "0.0.0.0:99999"}, "METRICS_LISTEN"),
    ({"HEALTH_HTTP_URL": "ftp://example.org/"}, "HEALTH_HTTP_URL"),
    ({"HEALTH_DNS_NAME": "bad..name"}, "HEALTH_DNS_NAME"),
    ({"HEALTH_DNS_IP": "one.one.one.one"}, "HEALTH_DNS_IP"),
    ({"TCP_ACK_DELAY_MS": "-1"}, "TCP_ACK_DELAY_MS"),
    ({"TCP_ACK_DELAY_MS": "501"}, "TCP_ACK_DELAY_MS"),
    ({"TCP_ENABLE_SACK": "yes please"}, "TCP_ENABLE_SACK"),
    ({"TCP_MSS_CLAMP": "0"}, "TCP_MSS_CLAMP"),
    ({"TCP_GATE_LOG": "loud"}, "TCP_GATE_LOG"),
    ({"TCP_CC": "vegas"}, "TCP_CC"),
    ({"TCP_ERROR_SIGNAL": "icmpp"}, "TCP_ERROR_SIGNAL"),
    ({"TCP_ERROR_SIGNAL": "reset"}, "TCP_ERROR_SIGNAL"),
    ({"TCP_SOCK_RCVBUF": "0"}, "TCP_SOCK_RCVBUF"),
    ({"TCP_ACK_IDLE_FAIL_SEC": "0"}, "TCP_ACK_IDLE_FAIL_SEC"),
    ({"TCP_WS_OUT": "15"}, "TCP_WS_OUT"),
    ({"TCP_MAX_FLOWS": "-3"}, "TCP_MAX_FLOWS"),
    ({"UDP_IDLE_TIMEOUT": "0s"}, "UDP_IDLE_TIMEOUT"),
    ({"UDP_IDLE_TIMEOUT": "60"}, "UDP_IDLE_TIMEOUT"),
    ({"UDP_MAX_FLOWS_PER_PEER": "x"}, "UDP_MAX_FLOWS_PER_PEER"),
    ({"EGRESS_ALLOW_CIDRS": "everything"}, "EGRESS_ALLOW_CIDRS"),
    ({"EGRESS_DENY_CIDRS": "10.0.0.0/8,,nope"}, "EGRESS_DENY_CIDRS"),
    ({"IP_TTL": "0"}, "IP_TTL"),
    ({"IP_TTL": "256"}, "IP_TTL"),
    ({"COPY_TOS": "please"}, "COPY_TOS"),
]


@pytest.mark.parametrize(("env", "setting"), BAD, ids=[f"{k}" for _, k in BAD])
def test_bad_value_names_the_variable(env: dict[str, str], setting: str) -> None:
    e = err(env)
    assert e.setting == setting
    assert "\n" not in str(e) and str(e).startswith(f"{setting}: ")


def test_metrics_interval_zero_message() -> None:
    assert (
        str(err({"METRICS_INTERVAL": "0s"}))
        == "METRICS_INTERVAL: 0s is shorter than the minimum 100ms"
    )


def test_ip_ttl_message_shows_range() -> None:
    assert err({"IP_TTL": "256"}).problem == "256 is out of range 1-255"


# ---------------------------------------------------------------- peers from the environment


def test_peers_from_env() -> None:
    cfg = load(
        {
            "WG_PEERS": "0, 1",
            "WG_PEER_0_PUBLIC_KEY": PEER_A,
            "WG_PEER_0_ALLOWED_IPS": "10.77.0.2/32, 10.77.0.5/24",
            "WG_PEER_0_ENDPOINT": "198.51.100.4:51821",
            "WG_PEER_0_KEEPALIVE": "25",
            "WG_PEER_0_PRESHARED_KEY": PSK_B64,
            "WG_PEER_1_PUBLIC_KEY": PEER_B,
            "WG_PEER_1_ALLOWED_IPS": "10.77.0.3",
            "WG_PEER_1_ENDPOINT": "peer.example:4000",
        }
    )
    a, b = cfg.peers
    assert a.public_key == decode_key(PEER_A, "t")
    assert a.allowed_ips == ("10.77.0.2/32", "10.77.0.0/24")  # host bits cleared
    assert a.endpoint == ("198.51.100.4", 51821)
    assert a.keepalive == 25
    assert a.preshared_key == decode_key(PSK_B64, "t")
    assert b.allowed_ips == ("10.77.0.3/32",)
    assert b.endpoint == ("192.0.2.7", 4000)  # resolved at load time
    assert b.keepalive == 0 and b.preshared_key is None


def test_peer_indices_need_not_be_numbers() -> None:
    cfg = load({"WG_PEERS": "laptop", "WG_PEER_laptop_PUBLIC_KEY": PEER_A})
    assert len(cfg.peers) == 1


PEER_BAD: list[tuple[dict[str, str], str]] = [
    ({"WG_PEERS": "0,1", "WG_PEER_0_PUBLIC_KEY": PEER_A}, "WG_PEER_1_PUBLIC_KEY"),
    ({"WG_PEERS": "0", "WG_PEER_0_PUBLIC_KEY": "AAAA"}, "WG_PEER_0_PUBLIC_KEY"),
    ({"WG_PEERS": "0,0", "WG_PEER_0_PUBLIC_KEY": PEER_A}, "WG_PEERS"),
    ({"WG_PEERS": "0;1", "WG_PEER_0_PUBLIC_KEY": PEER_A}, "WG_PEERS"),
    (
        {"WG_PEERS": "0,1", "WG_PEER_0_PUBLIC_KEY": PEER_A, "WG_PEER_1_PUBLIC_KEY": PEER_A},
        "WG_PEER_1_PUBLIC_KEY",
    ),
    (
        {"WG_PEERS": "0", "WG_PEER_0_PUBLIC_KEY": PEER_A, "WG_PEER_0_ALLOWED_IPS": "10.0.0/8x"},
        "WG_PEER_0_ALLOWED_IPS",
    ),
    (
        {"WG_PEERS": "0", "WG_PEER_0_PUBLIC_KEY": PEER_A, "WG_PEER_0_ALLOWED_IPS": "::1"},
        "WG_PEER_0_ALLOWED_IPS",
    ),
    (
        {"WG_PEERS": "0", "WG_PEER_0_PUBLIC_KEY": PEER_A, "WG_PEER_0_ENDPOINT": "1.2.3.4"},
        "WG_PEER_0_ENDPOINT",
    ),
    (
        {"WG_PEERS": "0", "WG_PEER_0_PUBLIC_KEY": PEER_A, "WG_PEER_0_ENDPOINT": "nowhere:1"},
        "WG_PEER_0_ENDPOINT",
    ),
    (
        {"WG_PEERS": "0", "WG_PEER_0_PUBLIC_KEY": PEER_A, "WG_PEER_0_KEEPALIVE": "65536"},
        "WG_PEER_0_KEEPALIVE",
    ),
    (
        {"WG_PEERS": "0", "WG_PEER_0_PUBLIC_KEY": PEER_A, "WG_PEER_0_PRESHARED_KEY": "x"},
        "WG_PEER_0_PRESHARED_KEY",
    ),
    (
        {
            "WG_PRIVATE_KEY": PRIV_B64,
            "WG_PEERS": "0",
            "WG_PEER_0_PUBLIC_KEY": encode_key(public_key(PRIV)),
        },
        "WG_PEER_0_PUBLIC_KEY",
    ),
]


@pytest.mark.parametrize(("env", "setting"), PEER_BAD, ids=[s for _, s in PEER_BAD])
def test_bad_peer_names_the_variable(env: dict[str, str], setting: str) -> None:
    assert err(env).setting == setting


def test_duplicate_peer_message_names_the_first() -> None:
    e = err({"WG_PEERS": "0,1", "WG_PEER_0_PUBLIC_KEY": PEER_A, "WG_PEER_1_PUBLIC_KEY": PEER_A})
    assert "WG_PEER_0_PUBLIC_KEY" in e.problem


def test_resolve_ipv4_takes_literals_without_lookup() -> None:
    assert C.resolve_ipv4("192.0.2.1") == "192.0.2.1"


def test_host_names_are_resolved_only_through_the_given_resolver() -> None:
    asked: list[str] = []

    def resolve(host: str) -> str:
        asked.append(host)
        return "203.0.113.5"

    env = {
        "WG_PEERS": "0,1",
        "WG_PEER_0_PUBLIC_KEY": PEER_A,
        "WG_PEER_0_ENDPOINT": "peer.example:4000",
        "WG_PEER_1_PUBLIC_KEY": PEER_B,
        "WG_PEER_1_ENDPOINT": "198.51.100.4:51821",
        "WG_PUBLIC_ENDPOINT": "vpn.example.com",  # written into client configs as given
    }
    cfg = load_config({**BASE, **env}, resolve=resolve)
    assert asked == ["peer.example"]
    assert [p.endpoint for p in cfg.peers] == [("203.0.113.5", 4000), ("198.51.100.4", 51821)]
    assert cfg.public_endpoint == "vpn.example.com:51820"


def _peer0(endpoint: str, **extra: str) -> dict[str, str]:
    peer = {"WG_PEER_0_PUBLIC_KEY": PEER_A, "WG_PEER_0_ENDPOINT": endpoint}
    return {"WG_PEERS": "0", **peer, **extra}


def test_peer_endpoints_may_be_ipv6() -> None:
    cfg = load(_peer0("[2001:DB8::1]:51820"))
    assert cfg.listen_addr == "::" and cfg.peers[0].endpoint == ("2001:db8::1", 51820)
    assert load(_peer0("[::ffff:192.0.2.1]:7")).peers[0].endpoint == ("192.0.2.1", 7)
    cfg = load(_peer0("[2001:db8::1]:51820", WG_LISTEN_ADDR="::1"))
    assert cfg.peers[0].endpoint == ("2001:db8::1", 51820)
    assert "WG_PEER_0_ENDPOINT=[2001:db8::1]:51820" in render_check(cfg).splitlines()


@pytest.mark.parametrize(
    ("endpoint", "listen", "message"),
    [
        ("2001:db8::1:51820", "::", "[address]:port"),
        ("[2001:db8::1]", "::", "no port"),
        ("[2001:db8::1]:0", "::", "out of range"),
        ("[peer.example]:1", "::", "not an IPv6 address"),
        ("[2001:db8::1]:51820", "0.0.0.0", "listens on IPv4 only"),
        ("[2001:db8::1]:51820", "127.0.0.1", "listens on IPv4 only"),
        ("192.0.2.1:51820", "::1", "listens on IPv6 only"),
        ("peer.example:51820", "::1", "listens on IPv6 only"),  # resolved to IPv4
    ],
)
def test_bad_peer_endpoints_name_the_setting(endpoint: str, listen: str, message: str) -> None:
    e = err(_peer0(endpoint, WG_LISTEN_ADDR=listen))
    assert e.setting == "WG_PEER_0_ENDPOINT" and message in e.problem, e


def test_a_config_file_endpoint_of_the_wrong_family_names_its_line(tmp_path: Path) -> None:
    conf = tmp_path / "wg0.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {PRIV_B64}\n\n"
        f"[Peer]\nPublicKey = {PEER_A}\nEndpoint = [2001:db8::1]:51820\n"
    )
    assert load({}, str(conf)).peers[0].endpoint == ("2001:db8::1", 51820)
    e = err({"WG_LISTEN_ADDR": "0.0.0.0"}, str(conf))
    assert e.setting == f"{conf} [Peer 1] Endpoint" and "IPv4 only" in e.problem, e


def test_an_ipv6_public_endpoint_is_written_with_brackets() -> None:
    assert load({"WG_PUBLIC_ENDPOINT": "2001:db8::1"}).public_endpoint == "[2001:db8::1]:51820"
    cfg = load({"WG_PUBLIC_ENDPOINT": "[2001:db8::1]:4000"})
    assert cfg.public_endpoint == "[2001:db8::1]:4000"


# ---------------------------------------------------------------- wg-quick files

SERVER_CONF = f"""\
# a server config as wg-quick would use it
[Interface]
PrivateKey = {PRIV_B64}
listenport = 51999   # keys are case-insensitive
MTU = 1400
Address = 10.77.0.1/24
DNS = 1.1.1.1
PostUp = iptables -A FORWARD -i %i -j ACCEPT

[Peer]
PublicKey = {PEER_A}
AllowedIPs = 10.77.0.2/32
AllowedIPs = 10.77.1.0/24
PersistentKeepalive = off

[peer]
PublicKey = {PEER_B}
PresharedKey = {PSK_B64}
AllowedIPs = 10.77.0.3/32, 10.77.0.4
Endpoint = peer.example:51820
PersistentKeepalive = 25
"""


def write(tmp_path: Path, text: str, name: str = "wg0.conf") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_file_with_multiple_peers(tmp_path: Path) -> None:
    cfg = load({}, write(tmp_path, SERVER_CONF))
    assert cfg.private_key == PRIV
    assert (cfg.listen_port, cfg.mtu) == (51999, 1400)
    assert cfg.gateway_ip is None  # Address is ignored on purpose
    a, b = cfg.peers
    assert a.allowed_ips == ("10.77.0.2/32", "10.77.1.0/24") and a.keepalive == 0
    assert b.preshared_key == decode_key(PSK_B64, "t")
    assert b.allowed_ips == ("10.77.0.3/32", "10.77.0.4/32")
    assert b.endpoint == ("192.0.2.7", 51820) and b.keepalive == 25


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, SERVER_CONF)
    other = encode_key(generate_private_key())
    cfg = load({"WG_LISTEN_PORT": "4000", "WG_PRIVATE_KEY": other, "DEBUG": "1"}, path)
    assert cfg.listen_port == 4000 and cfg.private_key == decode_key(other, "t")
    assert cfg.mtu == 1400 and cfg.debug
    assert len(cfg.peers) == 2


def test_env_peers_replace_file_peers(tmp_path: Path) -> None:
    path = write(tmp_path, SERVER_CONF)
    peer_c = encode_key(public_key(generate_private_key()))
    cfg = load({"WG_PEERS": "0", "WG_PEER_0_PUBLIC_KEY": peer_c}, path)
    assert [p.public_key for p in cfg.peers] == [decode_key(peer_c, "t")]


FILE_BAD: list[tuple[str, str]] = [
    (
        f"[Interface]\nPrivateKey = {PRIV_B64}\n[Peer]\nPublicKey = {PEER_A}\n"
        f"[Peer]\nPublicKey = {PEER_B}\nAllowedIPs = 10.0.0.1/40\n",
        "[Peer 2] AllowedIPs",
    ),
    ("[Interface]\nListenPort = 0\n", "[Interface] ListenPort"),
    ("[Interface]\nPrivateKey = short\n", "[Interface] PrivateKey"),
    ("[Interface]\nMTU = big\n", "[Interface] MTU"),
    ("[Interface]\nListenPorts = 1\n", "[Interface] ListenPorts"),
    ("[Interface]\nMTU = 1400\nmtu = 1300\n", "[Interface] MTU"),
    ("[Peer]\nAllowedIPs = 10.0.0.2/32\n", "[Peer 1] PublicKey"),
    (f"[Peer]\nPublicKey = {PEER_A}\nEndpoint = nowhere:1\n", "[Peer 1] Endpoint"),
    (f"[Peer]\nPublicKey = {PEER_A}\nPersistentKeepalive = -1\n", "[Peer 1] PersistentKeepalive"),
    (f"[Peer]\nPublicKey = {PEER_A}\n[Peer]\nPublicKey = {PEER_A}\n", "[Peer 2] PublicKey"),
]


@pytest.mark.parametrize(("text", "where"), FILE_BAD, ids=[w for _, w in FILE_BAD])
def test_file_errors_name_file_section_and_key(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    assert err({}, path).setting == f"{path} {where}"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("PrivateKey = x\n", 1),
        ("[Interface]\nthis line has no equals sign\n", 2),
        ("[Interface]\n[Interface]\n", 2),
        ("[Interface\n", 1),
        ("[Server]\n", 1),
    ],
)
def test_file_structure_errors_name_the_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    assert err({}, path).setting == f"{path}:{line}"


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.conf")
    e = err({}, missing)
    assert e.setting == missing and "cannot read" in e.problem
    assert err({}, str(tmp_path)).setting == str(tmp_path)  # a directory
    binary = tmp_path / "bin.conf"
    binary.write_bytes(b"\xff\xfe\x00")
    assert err({}, str(binary)).setting == str(binary)


def test_parse_wg_quick_sections() -> None:
    sections = parse_wg_quick(SERVER_CONF, "s.conf")
    assert [s.label for s in sections] == ["Interface", "Peer 1", "Peer 2"]
    assert sections[0].get("ListenPort") == "51999"
    assert sections[1].get_all("AllowedIPs") == ["10.77.0.2/32", "10.77.1.0/24"]
    assert sections[0].get("Table") is None


# ---------------------------------------------------------------- showing the configuration


def _full_config() -> Config:
    return load(
        {
            "WG_PRIVATE_KEY": PRIV_B64,
            "WG_PEERS": "0",
            "WG_PEER_0_PUBLIC_KEY": PEER_A,
            "WG_PEER_0_PRESHARED_KEY": PSK_B64,
            "WG_PEER_0_ENDPOINT": "198.51.100.4:51821",
        }
    )


def test_redacted_hides_private_and_preshared_keys() -> None:
    cfg = _full_config()
    data = redacted(cfg)
    text = json.dumps(data)
    assert PRIV_B64 not in text and PSK_B64 not in text
    assert data["private_key"] == "(redacted)"
    assert data["peers"][0]["preshared_key"] == "(redacted)"
    assert data["peers"][0]["public_key"] == PEER_A
    assert data["server_public_key"] == encode_key(public_key(PRIV))
    assert data["tcp"]["error_signal"] == "mirror"
    assert redacted(load({}))["private_key"] is None


def test_render_check_hides_secrets_and_lists_every_variable() -> None:
    text = render_check(_full_config())
    assert PRIV_B64 not in text and PSK_B64 not in text
    assert "WG_PRIVATE_KEY=(redacted)" in text
    assert "WG_PEER_0_PRESHARED_KEY=(redacted)" in text
    assert f"WG_PEER_0_PUBLIC_KEY={PEER_A}" in text
    for env in SAMPLES:
        assert f"\n{env}=" in text


def test_render_check_output_loads_back() -> None:
    cfg = load({env: raw for env, (raw, _, _) in SAMPLES.items() if env != "WG_PRIVATE_KEY"})
    lines = [line for line in render_check(cfg).splitlines() if not line.startswith("#")]
    env = dict(line.split("=", 1) for line in lines)
    assert load(env) == cfg


def test_config_survives_msgpack_round_trip() -> None:
    # Worker processes may receive the configuration this way; the Struct constraints
    # must accept everything the loader produces.
    cfg = _full_config()
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(cfg), type=Config) == cfg


def test_struct_constraints_match_loader_limits() -> None:
    bad = msgspec.to_builtins(Config(state_dir="/x"))
    bad["ip_ttl"] = 256
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(bad, Config)


def test_unknown_variables_flags_typos_only() -> None:
    env = {
        "WG_LISTN_PORT": "1",
        "TCP_ACK_DELAY": "5",
        "WG_LISTEN_PORT": "1",
        "WG_PEER_0_PUBLIC_KEY": "x",
        "SIMPLE_MODE": "1",
        "WG_HIDE_KEYS": "never",
        "PATH": "/bin",
    }
    assert C.unknown_variables(env) == ["TCP_ACK_DELAY", "WG_LISTN_PORT"]


def test_settings_table_documents_every_field() -> None:
    rows = list(settings_table())
    assert all(r.description and r.type and r.default for r in rows)
    assert len({r.env for r in rows}) == len(rows)


def test_docs_are_current() -> None:
    assert DOCS.read_text() == render_markdown(), (
        "docs/configuration.md is stale: run `python -m wgslirp.config --markdown > "
        "docs/configuration.md`"
    )


def test_module_main_check_exits_2_on_bad_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METRICS_INTERVAL", "0s")
    assert C.main(["--check"]) == 2
    assert "METRICS_INTERVAL: 0s is shorter than the minimum 100ms" in capsys.readouterr().err


@pytest.mark.parametrize(
    "line",
    [
        "PrivateKey 2PX21/Fck2oPBHGbZ2IV3l8YQWjzUqu7cfvDEaN9k04=",
        "PrivateKey: 2PX21/Fck2oPBHGbZ2IV3l8YQWjzUqu7cfvDEaN9k04=",
        "2PX21/Fck2oPBHGbZ2IV3l8YQWjzUqu7cfvDEaN9k04=",
        "PrivateKey\t2PX21Fck2oPBHGbZ2IV3l8YQWjzUqu7cfvDEaN9k04",
    ],
)
def test_a_malformed_line_never_echoes_a_key(line: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_wg_quick(f"[Interface]\n{line}\n", "leak.conf")
    assert "Fck2oPBHGbZ2IV3l8YQ" not in str(err.value)
    assert "leak.conf:2" in str(err.value) and "Key = Value" in str(err.value)


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"WG_LISTEN_PORT": "\uff19\uff19"}, "WG_LISTEN_PORT"),  # fullwidth digits
        ({"WG_LISTEN_PORT": "\u0665\u0661\u0668\u0662\u0660"}, "WG_LISTEN_PORT"),  # Arabic-Indic
        ({"WG_LISTEN_PORT": "9" * 5000}, "WG_LISTEN_PORT"),
        ({"METRICS_INTERVAL": "9" * 400 + "s"}, "METRICS_INTERVAL"),
        ({"METRICS_INTERVAL": "1ns"}, "METRICS_INTERVAL"),
        ({"WG_INTERFACE_NAME": "\u00e4" * 8}, "WG_INTERFACE_NAME"),  # 8 chars, 16 bytes
    ],
)
def test_odd_values_are_refused_naming_the_setting(env: dict[str, str], setting: str) -> None:
    e = err(env)
    assert str(e).startswith(f"{setting}:") and "set_int_max_str_digits" not in str(e)


def test_config_file_with_a_bom_and_an_endless_file(tmp_path: Path) -> None:
    key = encode_key(generate_private_key())
    bom = tmp_path / "bom.conf"
    bom.write_bytes(b"\xef\xbb\xbf" + f"[Interface]\nPrivateKey = {key}\n".encode())
    assert load({}, str(bom)).private_key is not None
    with pytest.raises(ConfigError, match="larger than"):
        load({}, "/dev/zero")
