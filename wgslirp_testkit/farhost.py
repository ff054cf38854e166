"""A test host beyond the router's machine: a namespace on a veth, reached by routing.

The host side of the veth holds the first address of a /30 and the namespace the second, so
the router's host sockets reach the far host through the host's ordinary routing, as they
would reach any machine on a LAN, and the network rule holds (the traffic never leaves a
namespace this test created). Guests need an AllowedIPs route for the address (10.0.0.0/8).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from wgslirp_testkit.netns import Namespace, link_exists, unique_name
from wgslirp_testkit.proc import run


@dataclass(frozen=True)
class FarHost:
    ns: Namespace
    address: str  # the far host's address
    near: str  # the near end's address (one of the host's own, without `near`)
    near_link: str  # the near end's interface name


def _subnet(second_octet: int) -> int:
    """A /30 unique to this process (PID-derived), only ever routed to our namespace."""
    pid = os.getpid()
    return 10 << 24 | second_octet << 16 | (pid % 64) << 8 | (pid // 64 % 60) * 4


@contextlib.contextmanager
def far_host(second_octet: int = 202, near: Namespace | None = None) -> Iterator[FarHost]:
    """A namespace at 10.<second_octet>.x.y+2 behind a veth whose near end is .y+1, in the
    root namespace or in `near`; both removed on exit. Pick another `second_octet` for a
    second far host in one process."""
    net = _subnet(second_octet)

    def a(k: int) -> str:
        n = net + k
        return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"

    def near_ip(*args: str) -> None:
        if near is None:
            run(["ip", *args], timeout=10, check=True)
        else:
            near.ip(*args)

    veth = unique_name("i", link_exists)
    with Namespace() as ns:
        run(
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p"],
            timeout=10,
            check=True,
        )
        try:
            run(["ip", "link", "set", veth + "p", "netns", ns.name], timeout=10, check=True)
            if near is not None:
                run(["ip", "link", "set", veth, "netns", near.name], timeout=10, check=True)
            near_ip("addr", "add", f"{a(1)}/30", "dev", veth)
            near_ip("link", "set", veth, "up")
            ns.ip("addr", "add", f"{a(2)}/30", "dev", veth + "p")
            ns.ip("link", "set", veth + "p", "up")
            yield FarHost(ns, a(2), a(1), veth)
        finally:
            # Deleting either end removes the pair; in `near` it may be gone with it already.
            if near is None:
                run(["ip", "link", "del", veth], timeout=10, check=False)
            else:
                run(["ip", "-n", near.name, "link", "del", veth], timeout=10, check=False)
