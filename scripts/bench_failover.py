#!/usr/bin/env python3
"""How long a client of a replica that dies takes to be served by another (issue #14).

Two replicas with one key and peer file behind the nft hashing balancer of the e2e test
(wgslirp_testkit.balancer), one wireguard-go client that hashes to replica 0. Replica 0 is
SIGKILLed, then, per scenario:

- ``active``: the balancer drops it at once (kube-proxy deleting the endpoint and its UDP
  conntrack entries); the client pings every 0.2 s from the kill on. Printed: seconds from
  the kill to the first answer.
- ``late-lb``: as ``active`` but the balancer only drops it ``--lb-delay`` s after the kill
  (readiness probe period x failure threshold, endpoint propagation).
- ``restart``: the balancer keeps the slot; replica 0 is restarted on the same port after
  ``--lb-delay`` s, as a container restart keeps the pod's address.
- ``keepalive-idle``: the client has PersistentKeepalive = ``--keepalive`` and sends
  nothing; the balancer drops the replica at once. Printed: seconds until the client's
  next completed handshake (``wg show``), or "none" within ``--idle-wait`` s: a
  keepalive alone does not make wireguard-go notice the silence, only data does.

    python scripts/bench_failover.py
    python scripts/bench_failover.py --scenarios active,late-lb --lb-delay 10
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path

from wgslirp_testkit.balancer import UdpBalancer
from wgslirp_testkit.bench import start_controller
from wgslirp_testkit.keys import generate_keypair
from wgslirp_testkit.ports import free_udp_port
from wgslirp_testkit.replicas import Cluster, conf_text, publish
from wgslirp_testkit.router import GATEWAY, guest_client
from wgslirp_testkit.wgclient import WgClient, wait_tunnel

SCENARIOS = ("active", "late-lb", "restart", "keepalive-idle")


def first_answer(c: WgClient, t0: float, limit: float) -> float | None:
    r = c.run(
        ["ping", "-n", "-c", "1", "-i", "0.2", "-w", str(int(limit)), GATEWAY],
        timeout=limit + 10,
        check=False,
    )
    return time.monotonic() - t0 if r.returncode == 0 else None


def next_handshake(c: WgClient, after: int, t0: float, limit: float) -> float | None:
    deadline = t0 + limit
    while time.monotonic() < deadline:
        if c.wg_show_dump().peer.latest_handshake > after:
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def run_one(scenario: str, args: argparse.Namespace) -> float | None:
    server, key = generate_keypair(), generate_keypair()
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp, contextlib.ExitStack() as st:
        tmp_path = Path(tmp)
        secret = tmp_path / "secret"
        secret.mkdir()
        publish(secret, 1, conf_text(server, [key]))
        vport, ports = free_udp_port(), [free_udp_port(), free_udp_port()]
        cluster = Cluster(tmp_path, secret, ports)
        cluster.clean_sockets_at_exit(st)
        lb = st.enter_context(UdpBalancer(vport, ports))
        where = lb.slot_of(
            [p for p in {free_udp_port() for _ in range(16)} if p not in {vport, *ports}]
        )
        sport = next(p for p, s in where.items() if s == 0)
        for i in range(2):
            cluster.start(st, i)
        keepalive = args.keepalive if scenario == "keepalive-idle" else 0
        c = st.enter_context(
            guest_client(
                key.private,
                server.public,
                vport,
                2,
                listen_port=sport,
                keepalive=keepalive,
                log_level="error",
            )
        )
        wait_tunnel(c, GATEWAY, interval=0.1)
        # wg show counts handshakes in whole seconds: let the first one age past a second
        time.sleep(1.1)
        last = c.wg_show_dump().peer.latest_handshake
        t0 = time.monotonic()
        cluster.kill(0)
        if scenario == "keepalive-idle":
            lb.reroute(0, ports[1])
            lb.forget_flows(ports[0])
            return next_handshake(c, last, t0, args.idle_wait)
        # The client pings from the kill on, in a thread; what the balancer or the
        # orchestrator does happens here (a router started from another thread would get
        # its parent-death signal when that thread ends).
        result: list[float | None] = []
        pinger = threading.Thread(target=lambda: result.append(first_answer(c, t0, args.limit)))
        pinger.start()
        if scenario != "active":
            time.sleep(args.lb_delay)
        if scenario == "restart":
            cluster.start(st, 0)
        else:
            lb.reroute(0, ports[1])
            lb.forget_flows(ports[0])
        pinger.join(args.limit + 15)
        return result[0] if result else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--lb-delay", type=float, default=10.0)
    p.add_argument("--keepalive", type=int, default=5)
    p.add_argument("--idle-wait", type=float, default=45.0)
    p.add_argument("--limit", type=float, default=60.0, help="give up after this many s")
    args = p.parse_args()
    if not start_controller(extra_binaries=("conntrack",)):
        return 2
    for scenario in args.scenarios.split(","):
        if scenario not in SCENARIOS:
            p.error(f"unknown scenario {scenario!r}")
        for _ in range(args.repeat):
            t = run_one(scenario, args)
            shown = "none" if t is None else f"{t:.2f} s"
            print(f"{scenario:16} {shown}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
