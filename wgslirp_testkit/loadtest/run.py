"""The load test's controller side: a tunnel to run through (a router started here, or an
existing one), the guest started inside its namespace, and what to read around the run
(socket drops on both sides, the router's memory and exit counters).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from wgslirp_testkit.loadtest import guest
from wgslirp_testkit.loadtest.protocol import MAX_TURNS
from wgslirp_testkit.ports import free_udp_port
from wgslirp_testkit.proc import spawn, stop_and_close, stop_process
from wgslirp_testkit.router import (
    LISTENING,
    REPO,
    RouterProcess,
    base_env,
    client_from_router_output,
    parse_client_config,
    router_cmd,
    summed_exit_counters,
)
from wgslirp_testkit.sampling import MemSampler, drops_between, udp_socket_drops
from wgslirp_testkit.wgclient import WgClient, grow_client_buffers, wait_tunnel


def parse_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint {text!r} is not HOST:PORT")
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"endpoint host {host!r} is not an IP address") from None
    if not addr.is_loopback or addr.version != 4:
        raise ValueError(f"endpoint {text}: only 127.0.0.0/8 endpoints are allowed here")
    return str(addr), int(port)


def read_client_config(path: str) -> dict[str, str]:
    """The settings of a wg-quick file, with the ones a client cannot do without checked."""
    out = parse_client_config(Path(path).read_text())
    missing = [k for k in ("PrivateKey", "PublicKey", "Address") if k not in out]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)}")
    return out


def guest_config(args: argparse.Namespace, host: str, ports: dict[str, int]) -> dict[str, Any]:
    """What the guest needs of the options (it gets them as one JSON argument)."""
    return {
        "host": host,
        "ports": ports,
        "tcp_flows": args.tcp_flows,
        "tcp_bytes": args.tcp_bytes,
        "tcp_chunk": args.tcp_chunk,
        "tcp_mix": args.tcp_mix,
        "udp_flows": args.udp_flows,
        "udp_count": args.udp_count,
        "udp_size": args.udp_size,
        "udp_window": args.udp_window,
        "udp_timeout": args.udp_timeout,
        "duration": args.duration,
        "timeout": args.timeout,
        "connect_timeout": args.connect_timeout,
        "stall_timeout": args.stall_timeout,
        "progress": not args.quiet,
    }


def relay_guest(proc: subprocess.Popen[bytes], limit: float) -> tuple[str, str]:
    """Relay the guest's stderr (progress) live; return (stdout, stderr tail).  Bounded by
    ``limit`` seconds, after which the guest is killed."""
    assert proc.stdout is not None and proc.stderr is not None
    fds = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}
    out = bytearray()
    err = bytearray()
    pending = b""
    deadline = time.monotonic() + limit
    for _ in range(MAX_TURNS):
        left = deadline - time.monotonic()
        if not fds or left <= 0:
            break
        ready, _, _ = select.select(list(fds), [], [], min(left, 1.0))
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                del fds[fd]
                continue
            if fds[fd] == "out":
                out += chunk
                continue
            err += chunk
            del err[:-20_000]
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                print("  " + line.decode("utf-8", "replace"), file=sys.stderr, flush=True)
    if fds:
        stop_process(proc)
        raise RuntimeError(
            f"guest did not finish within {limit:.0f} s (killed)\n"
            + err.decode("utf-8", "replace")[-2000:]
        )
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    stop_process(proc)
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def run_guest(
    args: argparse.Namespace, cfg: dict[str, Any], client: Any, places: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Start the guest (in the client's namespace, or here) and wait for its result.
    ``places``: UDP sockets whose receive drops during the run go into the result."""
    lo, echo = "127.0.0.1", cfg["ports"]["udp"]
    places = {
        "udp echo server": lambda s: s.local == (lo, echo),
        "router's host sockets": lambda s: s.remote == (lo, echo),
        **(places or {}),
    }
    drops0 = {p: udp_socket_drops(match) for p, match in places.items()}

    argv = [sys.executable, "-m", guest.MODULE, json.dumps(cfg)]
    proc = spawn(argv, client, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = relay_guest(proc, args.timeout + 30)
    finally:
        stop_and_close(proc)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"guest failed (exit {proc.returncode})\n{err[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    drops1 = {p: udp_socket_drops(match) for p, match in places.items()}
    result["udp_socket_drops"] = {p: drops_between(drops0[p], drops1[p]) for p in places}
    return result


ROUTER_COUNTERS = (
    "tcp_dials_ok",
    "tcp_dials_failed",
    "internal_errors",
    "ring_full_dropped",
    "egress_full",
    "send_errors",
    "udp_send_errors",
    "policy_denied",
)


def prepare_client(c: Any, args: argparse.Namespace) -> None:
    """``--client-sockbuf``: the client gets what newer wireguard-go builds give themselves,
    so drops in the client do not count against the router."""
    if args.client_sockbuf:
        try:
            msg = grow_client_buffers(c.pid, c.udp_port(), args.client_sockbuf)
        except OSError as exc:
            msg = f"wireguard-go socket buffers left as they are ({exc})"
        print(msg, file=sys.stderr, flush=True)
        # The guest's queue into the TUN device (500 packets by default) overflows when
        # wireguard-go falls behind for a moment: client-side loss that says nothing
        # about the router. Same knob, same spirit as the socket buffers above.
        r = c.run(["ip", "link", "set", "dev", c.interface, "txqueuelen", "10000"], check=False)
        if r.returncode == 0:
            print("client TUN txqueuelen set to 10000", file=sys.stderr, flush=True)


def guest_side_drops(c: Any) -> dict[str, int]:
    """Drop counters inside the client's namespace: the guest's UDP receive buffers and the
    TUN device (what wireguard-go delivered but the guest's stack could not take).  Losses
    there are the client's, not the router's; the summary says which side lost what."""
    out: dict[str, int] = {}
    snmp = c.run(["cat", "/proc/net/snmp"], check=False).stdout.splitlines()
    udp = [ln.split()[1:] for ln in snmp if ln.startswith("Udp:")]
    if len(udp) == 2:
        row = dict(zip(udp[0], udp[1], strict=False))
        for k in ("RcvbufErrors", "InErrors"):
            if row.get(k, "").isdigit():
                out[f"guest udp {k}"] = int(row[k])
    for stat in ("rx_dropped", "tx_dropped"):
        r = c.run(["cat", f"/sys/class/net/{c.interface}/statistics/{stat}"], check=False)
        if r.stdout.strip().isdigit():
            out[f"tun {stat}"] = int(r.stdout)
    return out


def run_self(
    args: argparse.Namespace, cfg: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--router self``: a router of our own from this checkout, so its memory can be
    sampled and its exit counters judged; (guest result, router info)."""
    tmp = Path(tempfile.mkdtemp(prefix="wgslirp-loadtest-"))
    info: dict[str, Any] = {"mode": "self", "workers": args.workers}
    try:
        port = free_udp_port()
        env = base_env(tmp, port, args.workers)
        env.update(kv.split("=", 1) for kv in args.router_env)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        print(
            f"starting wgslirp on 127.0.0.1:{port} (PROCESSOR_WORKERS={args.workers})",
            file=sys.stderr,
            flush=True,
        )
        with RouterProcess(router_cmd(), env, cwd=str(REPO), name="wgslirp") as r:
            r.wait_for_line(LISTENING, timeout=20)
            with client_from_router_output(r, port, log_level="error") as c:
                prepare_client(c, args)
                wait_tunnel(c, args.gateway)
                print(
                    f"tunnel up (wireguard-go {c.interface} in namespace "
                    f"{c.namespace.name}, MTU {c.mtu})",
                    file=sys.stderr,
                    flush=True,
                )
                wg_port = c.udp_port()
                before = guest_side_drops(c)
                with MemSampler(r.pid) as mem:
                    result = run_guest(
                        args,
                        cfg,
                        c,
                        {
                            "router's WireGuard socket": lambda s: s.local == ("127.0.0.1", port),
                            "wireguard-go socket": lambda s: s.local[1] == wg_port,
                        },
                    )
                info["memory"] = mem.summary()
                info["memory_series"] = [(round(t, 1), v) for t, v in mem.samples]
                after = guest_side_drops(c)
                result["udp_socket_drops"].update(
                    {k: v - before.get(k, 0) for k, v in after.items()}
                )
            info["exit"] = r.terminate(timeout=10)
            counters = summed_exit_counters(r.output())
            info["counters"] = {k: counters[k] for k in ROUTER_COUNTERS if k in counters}
            if not counters:
                info["counters_missing"] = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result, info


def run_endpoint(
    args: argparse.Namespace, cfg: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--endpoint``: someone else's router, reached through a client of its wg-quick file
    (routed to the gateway only, so nothing else of the guest goes through it)."""
    conf = read_client_config(args.client_config)
    address = next(
        (
            a.strip()
            for a in conf["Address"].split(",")
            if ipaddress.ip_interface(a.strip()).version == 4
        ),
        None,
    )
    if address is None:
        raise ValueError(f"{args.client_config}: no IPv4 Address")
    peer_ips = [a.strip() for a in conf.get("AllowedIPs", "0.0.0.0/0").split(",") if a.strip()]
    client = WgClient(
        conf["PrivateKey"],
        conf["PublicKey"],
        args.endpoint_port,
        address=address,
        allowed_ips=[f"{args.gateway}/32"],
        peer_allowed_ips=peer_ips,
        mtu=int(conf.get("MTU", "1420")),
        preshared_key=conf.get("PresharedKey"),
        endpoint_host=args.endpoint_host,
        log_level="error",
    )
    print(
        f"connecting to the router at {args.endpoint_host}:{args.endpoint_port}",
        file=sys.stderr,
        flush=True,
    )
    with client as c:
        prepare_client(c, args)
        wait_tunnel(c, args.gateway)
        print(
            f"tunnel up (wireguard-go {c.interface} in namespace {c.namespace.name}, MTU {c.mtu})",
            file=sys.stderr,
            flush=True,
        )
        wg_port = c.udp_port()
        result = run_guest(
            args,
            cfg,
            c,
            {
                "router's WireGuard socket": lambda s: (
                    s.local == (args.endpoint_host, args.endpoint_port)
                ),
                "wireguard-go socket": lambda s: s.local[1] == wg_port,
            },
        )
    return result, {"mode": "endpoint", "endpoint": args.endpoint}
