"""Faults from outside (issue #10): a process of the router dies or is stopped while guests
have traffic in flight; what each guest sees, and how soon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from wgslirp.net import flowkey, ipv4
from wgslirp_testkit import guestprog
from wgslirp_testkit.hostservers import TcpServer
from wgslirp_testkit.ports import free_udp_port
from wgslirp_testkit.proc import child_pid
from wgslirp_testkit.router import (
    GATEWAY,
    base_env,
    client_from_router_output,
    parse_exit_counters,
    router,
)
from wgslirp_testkit.wgclient import WgClient, first_reply_after, grow_client_buffers

pytestmark = pytest.mark.e2e

GUEST = "10.77.0.2"


def test_traffic_flows_again_at_once_after_ingress_is_killed(tmp_path: Path) -> None:
    """Sessions die with ingress. The replacement used to wait for the client's own timer
    (~15 s of silence); now it initiates to every peer it had a session with."""
    port = free_udp_port()
    with router(base_env(tmp_path, port, workers=2)) as r, client_from_router_output(r, port) as c:
        assert first_reply_after(c, GATEWAY, 10) is not None
        c.wait_handshake(10)
        time.sleep(1.0)  # the session report (sent at once) is read by the supervisor
        ingress = child_pid(r.pid, "wgslirp-ingress")
        assert ingress is not None
        mark = r.mark()
        os.kill(ingress, signal.SIGKILL)
        back = first_reply_after(c, GATEWAY, 20)
        assert back is not None, "no reply within 20 s"
        # ~0.1 s measured; the client's own recovery would take ~15 s.
        assert back < 5.0, f"traffic resumed only after {back:.1f} s"
        r.wait_for_line(r"re-establishing 1 session", timeout=5, since=mark)
        assert r.terminate(timeout=10) == 0


def hold(c: WgClient, port: int, conns: int, seconds: float) -> Any:
    proc = c.popen(
        guestprog.command("tcp_hold", GATEWAY, port, conns, seconds),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", line
    return proc


def outcome(proc: Any) -> list[tuple[int, str, float | None]]:
    out, _ = proc.communicate(timeout=60)
    return [tuple(x) for x in json.loads(out.strip().splitlines()[-1])["results"]]


def test_a_killed_workers_guest_connections_are_reset_at_once(tmp_path: Path) -> None:
    """Connections that only wait for data used to hang until the application gave up; the
    replacement worker finds them in the dead one's registry and has each guest reset."""
    port = free_udp_port()
    with (
        TcpServer("sink") as server,
        router(base_env(tmp_path, port, workers=2)) as r,
        client_from_router_output(r, port) as c,
    ):
        proc = hold(c, server.port, 16, 20.0)
        victim = child_pid(r.pid, "wgslirp-w1")
        assert victim is not None
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        results = outcome(proc)
        assert r.terminate(timeout=10) == 0
    gw = ipv4.addr_to_int(GATEWAY)
    shard = {
        gport: flowkey.shard_of_key(
            flowkey.flow_key(ipv4.addr_to_int(GUEST), gw, ipv4.PROTO_TCP, gport, server.port), 2
        )
        for gport, _, _ in results
    }
    on_victim = [(how, t) for gport, how, t in results if shard[gport] == 1]
    others = [how for gport, how, _ in results if shard[gport] == 0]
    assert on_victim and others, "16 connections should land on both workers"
    assert all(how == "reset" for how, _ in on_victim), results
    # Measured on the clock the namespaces share, from the kill: ~0.1 s.
    assert max(t for _, t in on_victim if t is not None) - killed_at < 5.0
    assert all(how == "open" for how in others), "the other worker's connections were hit"


def test_sigterm_resets_every_guest_connection_before_the_router_exits(tmp_path: Path) -> None:
    port = free_udp_port()
    with (
        TcpServer("sink") as server,
        router(base_env(tmp_path, port, workers=2)) as r,
        client_from_router_output(r, port) as c,
    ):
        proc = hold(c, server.port, 8, 20.0)
        stopped_at = time.time()
        assert r.terminate(timeout=10) == 0
        results = outcome(proc)
    assert [how for _, how, _ in results] == ["reset"] * 8, results
    assert max(t for _, _, t in results if t is not None) - stopped_at < 5.0


def test_inline_router_resets_guest_connections_on_sigterm(tmp_path: Path) -> None:
    port = free_udp_port()
    with (
        TcpServer("sink") as server,
        router(base_env(tmp_path, port, workers=0)) as r,
        client_from_router_output(r, port) as c,
    ):
        proc = hold(c, server.port, 4, 20.0)
        assert r.terminate(timeout=10) == 0
        results = outcome(proc)
    assert [how for _, how, _ in results] == ["reset"] * 4, results


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_resets_more_guest_connections_than_the_egress_ring_holds(
    tmp_path: Path, workers: int
) -> None:
    """Each guest's RST takes a slot of the worker's egress ring, and a worker holds far
    more connections than it has slots (~14,000 and 1,024 at 100,000 connections): the
    RSTs that did not fit were lost, and so were the exit counters of a worker that took
    longer than the stop grace. Here 64 slots (the least WG_TUN_QUEUE_CAP gives) and 400
    connections."""
    port = free_udp_port()
    n = 400
    env = base_env(tmp_path, port, workers=workers) | {"WG_TUN_QUEUE_CAP": "64"}
    with (
        TcpServer("sink") as server,
        router(env) as r,
        client_from_router_output(r, port) as c,
    ):
        # Debian's wireguard-go keeps the kernel's 208 KiB socket buffers and drops part
        # of a burst of 400 RSTs (newer builds set 7 MiB themselves): give it those.
        grow_client_buffers(c.pid, c.udp_port(), 7 << 20)
        proc = hold(c, server.port, n, 30.0)
        assert r.terminate(timeout=15) == 0
        results = outcome(proc)
        counters = parse_exit_counters(r.output())
    assert [how for _, how, _ in results] == ["reset"] * n, [x for x in results if x[1] != "reset"][
        :5
    ]
    roles = ["worker 0"] if workers == 0 else [f"worker {k}" for k in range(workers)]
    assert all(role in counters for role in roles), r.output()[-2000:]
    assert sum(counters[role]["tcp_close_rst_lost"] for role in roles) == 0
    assert sum(counters[role]["tcp_closed"] for role in roles) >= n
