"""The cipher rehearsal ingress runs on quiet beats (wgslirp/wireguard/rehearsal.py)."""

from __future__ import annotations

from wgslirp.wireguard.rehearsal import SIZES, CipherRehearsal


def test_each_call_really_opens_and_seals_both_sizes() -> None:
    r = CipherRehearsal()
    for i in range(len(SIZES)):
        got, want = r.outputs(i)
        assert got != want  # nothing opened or sealed yet
    r()
    r()
    assert r.calls == 2
    for i, size in enumerate(SIZES):
        got, want = r.outputs(i)
        assert got == want and len(want) == 2 * size + 16


def test_a_tunnel_sized_packet_is_among_the_rehearsed() -> None:
    """Pings and bulk packets of the tunnel MTU take OpenSSL's long-input path."""
    assert min(SIZES) <= 96 and max(SIZES) == 1420
