"""The reference router benchmarks compare wgslirp with: the kernel's data path.

Stock wireguard-go whose TUN sits in a namespace R (tunnel address 10.77.0.1/24) that routes
the guests' packets to a test host S (another namespace, on a veth from R) and masquerades
them with nftables: kernel routing + NAT, what a WireGuard server with NAT does. R itself
plays the router's host (a closed port of 10.77.0.1 answers from R's kernel), S a machine
beyond it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from wgslirp.keys import generate_private_key, public_key
from wgslirp_testkit.farhost import FarHost, far_host
from wgslirp_testkit.wgclient import WgClient

ADDRESS = "10.77.0.1"


@dataclass(frozen=True)
class ReferenceRouter:
    wg: WgClient  # the server side: its namespace is R, its UDP port on 127.0.0.1
    far: FarHost  # the test host S behind R
    public: bytes  # the server's public key

    @property
    def port(self) -> int:
        return self.wg.udp_port()


@contextlib.contextmanager
def reference_router(
    peer_public: bytes,
    peer_ips: Sequence[str],
    *,
    mtu: int,
    far_octet: int = 203,
    unlimited_icmp: bool = False,
) -> Iterator[ReferenceRouter]:
    """wireguard-go for one peer (its AllowedIPs `peer_ips`) in namespace R, forwarding and
    masquerading to a far host (see wgslirp_testkit/farhost.py for `far_octet`). With
    `unlimited_icmp` neither R nor S rate-limits the ICMP errors it sends (Linux allows
    about one a second per destination after a burst of six), so a benchmark that draws a
    port unreachable per sample measures the path, not the limiter; wgslirp's host sockets
    are refused over loopback, which the kernel never limits."""
    server = generate_private_key()
    with WgClient(
        server,
        peer_public,
        None,
        address=f"{ADDRESS}/24",
        allowed_ips=tuple(peer_ips),
        mtu=mtu,
        log_level="error",
    ) as wg:
        r_ns = wg.namespace
        with far_host(far_octet, near=r_ns) as far:
            r_ns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            if unlimited_icmp:
                for ns in (r_ns, far.ns):
                    ns.run(["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"])
            rules = (
                "table ip benchnat {\n chain post {\n"
                "  type nat hook postrouting priority srcnat; policy accept;\n"
                f'  oifname "{far.near_link}" masquerade\n }}\n}}\n'
            )
            r_ns.run(["nft", "-f", "-"], input=rules)
            yield ReferenceRouter(wg, far, public_key(server))
