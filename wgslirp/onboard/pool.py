"""Choosing a client's tunnel address from the pool (WGSLIRP_PEER_POOL).

The lowest free address wins, so a removed client's address is handed out again before
the pool grows into new ones, and the same state always gives the same answer. Taken
ranges are merged as integer intervals, so a /8 pool with thousands of peers costs a sort,
not a walk over sixteen million addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from wgslirp.onboard.errors import PeerError

__all__ = ["PoolExhausted", "allocate", "reserved"]


class PoolExhausted(PeerError):
    """Every usable address of the pool is taken."""


def reserved(pool: str) -> list[str]:
    """Addresses of the pool never handed to a client: the network and broadcast addresses
    and the first address, which routers (and wgslirp's own 10.77.0.1) conventionally use."""
    net = ipaddress.IPv4Network(pool)
    return [
        f"{net.network_address}/32",
        f"{net.network_address + 1}/32",
        f"{net.broadcast_address}/32",
    ]


def allocate(pool: str, taken: Iterable[str]) -> str:
    """The lowest address of `pool` (as ``a.b.c.d/32``) outside `reserved(pool)` and every
    CIDR or address in `taken` (other peers' AllowedIPs, the gateway and DNS addresses).
    IPv6 entries in `taken` cannot collide with an IPv4 pool and are skipped."""
    net = ipaddress.IPv4Network(pool)
    lo, hi = int(net.network_address), int(net.broadcast_address)
    spans: list[tuple[int, int]] = []
    for cidr in [*reserved(pool), *taken]:
        try:
            t = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue
        if t.version != 4:
            continue
        a, b = int(t.network_address), int(t.broadcast_address)
        if b >= lo and a <= hi:
            spans.append((max(a, lo), min(b, hi)))
    spans.sort()
    candidate = lo
    for a, b in spans:
        if a > candidate:
            break
        candidate = max(candidate, b + 1)
    if candidate > hi:
        usable = hi - lo + 1 - 3
        raise PoolExhausted(
            f"no free address left in WGSLIRP_PEER_POOL {pool} (all {usable} client "
            "addresses are taken); remove a peer or choose a larger pool",
            exit_code=1,
        )
    return f"{ipaddress.IPv4Address(candidate)}/32"
