#!/usr/bin/env python3
"""A handshake flood against the real router, and what a legitimate peer sees meanwhile.

A flooder process sends handshake initiations with a valid MAC1 (anyone who knows the
router's public key can make them: it is public) from 127.0.0.2 as fast as one core can,
while:

- an established peer (peer A, 10.77.0.2) pings the gateway: its loss shows whether
  sessions keep flowing;
- a fresh peer (peer B, 10.77.0.3, from 127.0.0.1) brings its tunnel up: the time until its
  first ping is answered is the time to complete a handshake under the flood.

Printed next to the same figures without the flood, plus what the router did: datagrams
it took per second, the CPU its ingress spent, so the rejections per core-second, cookie
replies sent, datagrams its socket dropped (it fell behind), and the flooder's own rate.

    python scripts/flood.py                 # 10 s flood, inline router
    python scripts/flood.py --workers 2 --seconds 20
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from wgslirp_testkit.bench import start_controller, table
from wgslirp_testkit.flood import flooder, initiation_with_mac1, time_to_first_reply
from wgslirp_testkit.keys import generate_keypair
from wgslirp_testkit.ports import free_udp_port
from wgslirp_testkit.router import (
    GATEWAY,
    RouterProcess,
    guest_client,
    router_cmd,
    summed_exit_counters,
    two_peer_env,
)
from wgslirp_testkit.sampling import drops_between, udp_socket_drops


def ingress_cpu(root: int) -> float:
    for p in [*psutil.Process(root).children(recursive=True), psutil.Process(root)]:
        try:
            if p.name() in ("wgslirp-ingress",) or (p.pid == root and not p.children()):
                t = p.cpu_times()
                return float(t.user + t.system)
        except psutil.Error:
            continue
    t = psutil.Process(root).cpu_times()
    return float(t.user + t.system)


def run(args: argparse.Namespace, flood: bool) -> dict[str, Any]:
    port = free_udp_port()
    a, b = generate_keypair(), generate_keypair()
    tmp = Path(tempfile.mkdtemp(prefix="wgslirp-flood-"))
    server = generate_keypair()
    env = two_peer_env(
        tmp, port, server.private, a.public, b.public, PROCESSOR_WORKERS=str(args.workers)
    )
    out: dict[str, Any] = {"flood": flood}
    with RouterProcess(router_cmd(), env) as r:
        r.wait_for_line(r"listening on 127\.0\.0\.1:\d+", timeout=20)
        with (
            guest_client(a.private, server.public, port, 2, log_level="error") as ca,
            guest_client(b.private, server.public, port, 3, log_level="error") as cb,
        ):
            if time_to_first_reply(ca, 10) is None:
                raise RuntimeError(f"peer A never got a reply\n{r.output()[-3000:]}")
            sent = mp.Value("q", 0)
            proc = None
            drops0 = udp_socket_drops(lambda s: s.local[1] == port)
            cpu0 = ingress_cpu(r.pid)
            t0 = time.monotonic()
            if flood:
                msg = initiation_with_mac1(server.public_bytes)
                proc = mp.Process(target=flooder, args=(port, msg, args.seconds, sent))
                proc.start()
                time.sleep(args.lead)  # the flood is at full rate before B starts
            # Peer A pings through the whole window while peer B brings its tunnel up.
            a_result: list[tuple[int, int]] = []
            count = max(1, int(args.seconds / 0.1))
            pinger = threading.Thread(
                target=lambda: a_result.append(ca.ping(GATEWAY, count=count, interval=0.1, wait=1))
            )
            pinger.start()
            out["b_first_reply_s"] = time_to_first_reply(cb, args.seconds)
            pinger.join(args.seconds + 30)
            pings, got = a_result[0] if a_result else (1, 0)
            out["a_ping_loss"] = 1 - got / pings if pings else 1.0
            if proc is not None:
                proc.join(args.seconds + 10)
            elapsed = time.monotonic() - t0
            out["ingress_cpu_s"] = ingress_cpu(r.pid) - cpu0
            out["socket_drops"] = drops_between(
                drops0, udp_socket_drops(lambda s: s.local[1] == port)
            )
            out["flood_sent"] = sent.value
            out["flood_rate"] = sent.value / args.seconds if flood else 0.0
            out["elapsed_s"] = elapsed
        assert r.terminate(timeout=10) == 0, r.output()[-2000:]
    counters = summed_exit_counters(r.output())
    out["counters"] = counters
    taken = counters.get("datagrams_received", 0)
    out["taken_per_s"] = taken / out["elapsed_s"]  # the flood dominates what was taken
    out["per_core_s"] = taken / out["ingress_cpu_s"] if out["ingress_cpu_s"] else 0.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the flood")
    ap.add_argument("--lead", type=float, default=2.0, help="flood seconds before peer B starts")
    ap.add_argument("--workers", type=int, default=0, help="PROCESSOR_WORKERS")
    args = ap.parse_args()
    if not start_controller():
        sys.exit(1)
    rows = []
    results = [run(args, flood=False), run(args, flood=True)]
    for res in results:
        c = res["counters"]
        first = res["b_first_reply_s"]
        rows.append(
            [
                "flood" if res["flood"] else "no flood",
                f"{res['flood_rate'] / 1000:.0f}k/s" if res["flood"] else "-",
                f"{res['taken_per_s'] / 1000:.1f}k/s",
                f"{res['ingress_cpu_s'] / res['elapsed_s']:.0%}",
                f"{res['per_core_s'] / 1000:.0f}k",
                str(c.get("cookie_replies_sent", 0)),
                str(res["socket_drops"]),
                "never" if first is None else f"{first:.2f} s",
                f"{res['a_ping_loss']:.0%}",
            ]
        )
    print(
        table(
            [
                "run",
                "flood sent",
                "router took",
                "ingress CPU",
                "taken per core-s",
                "cookie replies",
                "socket drops",
                "peer B first reply",
                "peer A ping loss",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
