"""A UDP load balancer on loopback made of one nft DNAT rule: what a Kubernetes Service (or a
cloud network load balancer) does in front of N router replicas, on one machine.

Locally generated datagrams to ``127.0.0.1:vport`` are DNATed to one of the backends'
``127.0.0.1:port`` by ``jhash(source address . source port) mod N`` with a fixed seed, so
each client (wireguard-go's own source port) sticks to one backend, and conntrack turns the
replies' source back into the virtual port. Only packets to the virtual port are touched.

Failover is what kube-proxy does when an endpoint goes away: the dead backend's slot of the
map is pointed at a live one, and the conntrack entries toward it are deleted (else the
clients' packets keep following their old entries to a dead port). The table's name carries
our PID, so ``netns.sweep_stale`` removes it if this process dies without closing it.
"""

from __future__ import annotations

import socket
import time
from types import TracebackType
from typing import Self

from wgslirp_testkit.diagnostics import Diagnosable
from wgslirp_testkit.netns import nft_table_exists, unique_name
from wgslirp_testkit.proc import HarnessError, run

SEED = 0x5CA1E


class UdpBalancer(Diagnosable):
    def __init__(self, vport: int, backends: list[int]) -> None:
        if not backends:
            raise ValueError("no backends")
        self.vport = vport
        self.backends = list(backends)
        self.slots = list(backends)  # slot -> backend port (what the map says now)
        self.table = unique_name("t", nft_table_exists)
        self._created = False

    def _elements(self) -> str:
        return ", ".join(f"{i} : 127.0.0.1 . {p}" for i, p in enumerate(self.slots))

    def __enter__(self) -> Self:
        n = len(self.backends)
        script = (
            f"table inet {self.table} {{\n"
            f"  map lb {{\n"
            f"    typeof numgen inc mod {n} : ip daddr . udp dport\n"
            f"    elements = {{ {self._elements()} }}\n"
            f"  }}\n"
            f"  chain out {{\n"
            f"    type nat hook output priority -100; policy accept;\n"
            f"    ip daddr 127.0.0.1 udp dport {self.vport} counter "
            f"dnat ip to jhash ip saddr . udp sport mod {n} seed {SEED:#x} map @lb\n"
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

    def slot_of(self, source_ports: list[int], timeout: float = 2.0) -> dict[int, int]:
        """Which slot each source port hashes to, found by sending one datagram from it
        while plain sockets hold the backend ports (so call it before the backends start).
        The probes' conntrack entries are deleted afterwards."""
        listeners = []
        try:
            for port in self.backends:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                listeners.append(s)
                s.bind(("127.0.0.1", port))
                s.settimeout(timeout)
            out: dict[int, int] = {}
            for sport in source_ports:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                    c.bind(("127.0.0.1", sport))
                    c.sendto(b"probe", ("127.0.0.1", self.vport))
                deadline = time.monotonic() + timeout
                while sport not in out and time.monotonic() < deadline:
                    for i, s in enumerate(listeners):
                        s.settimeout(0.01)
                        try:
                            _, (_, src) = s.recvfrom(64)
                        except TimeoutError:
                            continue
                        if src == sport:
                            out[sport] = i
                if sport not in out:
                    raise HarnessError(f"probe from port {sport} reached no backend")
            return out
        finally:
            for s in listeners:
                s.close()
            self.forget_flows()

    def reroute(self, slot: int, port: int) -> None:
        """Point `slot` at backend `port` (a health check removed the old one)."""
        old = self.slots[slot]
        self.slots[slot] = port
        script = (  # one transaction: the slot is never missing from the map
            f"delete element inet {self.table} lb {{ {slot} : 127.0.0.1 . {old} }}\n"
            f"add element inet {self.table} lb {{ {slot} : 127.0.0.1 . {port} }}\n"
        )
        run(["nft", "-f", "-"], input=script, timeout=10, check=True)

    def forget_flows(self, backend: int | None = None) -> None:
        """Delete the conntrack entries of the virtual port (toward `backend` only, if
        given): kube-proxy's clean-up of UDP flows to an endpoint that went away."""
        cmd = ["conntrack", "-D", "-p", "udp", "--orig-port-dst", str(self.vport)]
        if backend is not None:
            cmd += ["--reply-port-src", str(backend)]
        run(cmd, timeout=10, check=False)  # exit 1 when nothing matched

    def packets(self) -> int:
        out = run(["nft", "list", "chain", "inet", self.table, "out"], timeout=10, check=True)
        for line in out.stdout.splitlines():
            if "counter packets" in line:
                return int(line.split("counter packets")[1].split()[0])
        raise HarnessError(f"no counter in {out.stdout}")

    def _diag_title(self) -> str:
        return f"udp balancer {self.table} :{self.vport}"

    def diagnostics(self) -> str:
        res = run(["nft", "list", "table", "inet", self.table], timeout=10, check=False)
        ct = run(
            ["conntrack", "-L", "-p", "udp", "--orig-port-dst", str(self.vport)],
            timeout=10,
            check=False,
        )
        return f"{res.stdout}{res.stderr}\nconntrack:\n{ct.stdout}{ct.stderr}"

    def close(self, raise_errors: bool = True) -> None:
        if not self._created:
            return
        self._unregister()
        res = run(["nft", "delete", "table", "inet", self.table], timeout=10, check=False)
        self.forget_flows()
        self._created = False
        if res.returncode != 0 and raise_errors:
            raise HarnessError(f"nft delete table {self.table}: {res.stderr.strip()}")
