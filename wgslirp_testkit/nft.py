"""An nft rule in the root namespace that drops and counts what the router must never send.

Where a guest targets something the router must refuse (cloud metadata, host loopback
ports), a test cannot just observe "no answer": a wrongly forwarded packet would really
leave the host.  The guard makes sure nothing leaves, and its counter tells the test
whether the router tried.
"""

from __future__ import annotations

import ipaddress
import json
from types import TracebackType
from typing import Self

from wgslirp_testkit.diagnostics import Diagnosable
from wgslirp_testkit.netns import nft_table_exists, unique_name
from wgslirp_testkit.proc import HarnessError, run


class NftGuard(Diagnosable):
    """Drop and count locally generated packets to an address, in the root namespace.

    For tests where the guest targets something the router must refuse (cloud metadata,
    host loopback ports): even if the router wrongly forwards, nothing leaves the host, and
    :meth:`count` tells the test whether the router tried.  The hook is ``output`` at a
    priority before conntrack/NAT, so it sees the router's host sockets' packets (not
    packets generated inside other namespaces).  ``drop=False`` only counts.  A dropped
    packet makes the sender's ``send`` fail with EPERM.
    """

    PRIORITY = -500

    def __init__(
        self,
        address: str,
        port: int | None = None,
        proto: str | None = None,
        *,
        drop: bool = True,
    ) -> None:
        net = ipaddress.ip_network(address, strict=False)
        if proto not in (None, "udp", "tcp", "icmp", "icmpv6"):
            raise ValueError(f"unsupported proto {proto!r}")
        if port is not None and proto in ("icmp", "icmpv6"):
            raise ValueError("ports make no sense for ICMP")
        self.address = str(net)
        self.port = port
        self.proto = proto
        self.drop = drop
        self.table = unique_name("t", nft_table_exists)
        fam = "ip6" if net.version == 6 else "ip"
        match = [fam, "daddr", str(net)]
        if proto in ("icmp", "icmpv6"):
            match += ["meta", "l4proto", proto]
        if port is not None:
            match += (
                [proto, "dport", str(port)]
                if proto
                else ["meta", "l4proto", "{", "tcp,", "udp", "}", "th", "dport", str(port)]
            )
        elif proto in ("tcp", "udp"):
            match += ["meta", "l4proto", proto]
        self.rule = " ".join([*match, "counter", "name", "hits", *(["drop"] if drop else [])])
        self._created = False

    def __enter__(self) -> Self:
        script = (
            f"table inet {self.table} {{\n"
            f"  counter hits {{ }}\n"
            f"  chain out {{\n"
            f"    type filter hook output priority {self.PRIORITY}; policy accept;\n"
            f"    {self.rule}\n"
            f"  }}\n"
            f"}}\n"
        )
        run(["nft", "-f", "-"], input=script, timeout=10, check=True)
        self._created = True
        self._register()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(raise_errors=exc_type is None)

    def counts(self) -> tuple[int, int]:
        """(packets, bytes) matched so far."""
        out = run(
            ["nft", "-j", "list", "counter", "inet", self.table, "hits"], timeout=10, check=True
        ).stdout
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"]), int(item["counter"]["bytes"])
        raise HarnessError(f"no counter in nft output: {out}")

    def count(self) -> int:
        """Packets matched so far."""
        return self.counts()[0]

    def _diag_title(self) -> str:
        return f"nft guard {self.table}"

    def diagnostics(self) -> str:
        try:
            pkts, nbytes = self.counts()
            return f"rule: {self.rule}\nmatched {pkts} packets, {nbytes} bytes"
        except Exception as exc:
            return f"rule: {self.rule}\n<counter unavailable: {exc!r}>"

    def close(self, raise_errors: bool = True) -> None:
        if not self._created:
            return
        self._unregister()
        res = run(["nft", "delete", "table", "inet", self.table], timeout=10, check=False)
        self._created = False
        if res.returncode != 0 and raise_errors:
            raise HarnessError(f"nft delete table {self.table}: {res.stderr.strip()}")
