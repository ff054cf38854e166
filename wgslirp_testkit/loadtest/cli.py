"""Load test: concurrent TCP and UDP flows through a real WireGuard tunnel, every byte verified.

Path: a guest program in a network namespace -> TUN -> wireguard-go -> UDP 127.0.0.1 ->
wgslirp -> host sockets -> TCP echo/source/sink and UDP echo servers on 127.0.0.1, which
the guest reaches through the gateway address (10.77.0.1).  Needs root, /dev/net/tun,
wireguard-go, wg and ip (``--router none`` needs none of them).

Where the router comes from:

- ``--router self`` (default): start ``python -m wgslirp`` with a fresh state directory on a
  free loopback port (``--workers`` sets PROCESSOR_WORKERS), then a wireguard-go client in
  a namespace of our own from the client configuration it prints.  Its exit counters are
  checked at the end (internal errors fail the run).
- ``--endpoint 127.0.0.1:PORT --client-config FILE``: an existing router, through a client
  built from a wg-quick file (only loopback endpoints are allowed on this machine).
- ``--router none``: no tunnel; the same guest program against 127.0.0.1 (a baseline, and a
  check of this script itself without root).

What the guest does (all flows at once, one event loop, bounded in count and time):

- ``--tcp-flows`` TCP flows, kinds taken round-robin from ``--tcp-mix``:
  ``echo`` sends ``--tcp-bytes`` of a deterministic pattern in ``--tcp-chunk`` requests and
  verifies each echoed chunk byte for byte; ``download`` asks the source server for
  ``--tcp-bytes`` at a flow-specific offset of the pattern and verifies every byte;
  ``upload`` sends them to the sink, which verifies every byte and answers with a verdict.
- ``--udp-flows`` UDP flows, each ``--udp-count`` request/response datagrams with sequence
  numbers, ``--udp-window`` in flight; replies are verified byte for byte.  A request
  without a reply after ``--udp-timeout`` is lost (counted apart from corruption).
- With ``--duration S`` every TCP slot starts a new flow when one ends, and UDP flows keep
  sending, until S seconds have passed.

It prints a progress line per second (relayed live to stderr), then a summary table:
flows, bytes, throughput, latency percentiles and errors per kind of flow.  The exit status
is 0 only when nothing failed: no connect failure, reset, corrupt byte or timeout, UDP loss
within ``--max-udp-loss`` percent, every flow completed, and (``--router self``) the
router stopped cleanly without internal errors.  1 = errors, 2 = could not run, 130 =
interrupted.  With ``--router self`` the router's memory (PSS over its processes) is sampled
every second and reported; ``--max-mem-growth MIB`` turns that into a leak check that fails
a soak whose memory grew by more than MIB from the second to the last quarter (medians).

    python scripts/loadtest.py                          # 20 TCP x 256 KiB, 10 UDP x 200
    python scripts/loadtest.py --tcp-flows 200 --tcp-bytes 1M --duration 30 --plot lt.png
    python scripts/loadtest.py --endpoint 127.0.0.1:51820 --client-config client.conf
    python scripts/loadtest.py --router none --json baseline.json
    python scripts/loadtest.py --workers 2 --tcp-flows 100 --tcp-bytes 64K --duration 300 \\
        --max-mem-growth 8                              # soak with a leak check

The parts live in the wgslirp_testkit.loadtest package: the guest program (run inside the
namespace as ``python -m wgslirp_testkit.loadtest.guest CONFIG-JSON``) and the host
servers share one byte pattern and its verifiers (``protocol``), so both ends agree on it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from wgslirp_testkit.bench import start_controller
from wgslirp_testkit.loadtest.protocol import MAX_CHUNK, TCP_MODES, UDP_HEADER
from wgslirp_testkit.loadtest.report import plot, render, summarize
from wgslirp_testkit.loadtest.run import (
    guest_config,
    parse_endpoint,
    run_endpoint,
    run_guest,
    run_self,
)
from wgslirp_testkit.loadtest.servers import HostServers
from wgslirp_testkit.router import GATEWAY as DEFAULT_GATEWAY


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?b?)\s*", text, re.IGNORECASE)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4096, 256K, 1M)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("router")
    g.add_argument(
        "--router",
        choices=("self", "none"),
        default="self",
        help="self: start wgslirp here (default); none: no tunnel, straight to "
        "127.0.0.1 (baseline). Ignored with --endpoint.",
    )
    g.add_argument(
        "--endpoint",
        metavar="HOST:PORT",
        help="use a running router at this loopback address (with --client-config)",
    )
    g.add_argument(
        "--client-config",
        metavar="FILE",
        help="wg-quick client file for --endpoint (keys, Address, MTU, AllowedIPs)",
    )
    g.add_argument(
        "--workers", type=int, default=2, help="PROCESSOR_WORKERS of a --router self (default 2)"
    )
    g.add_argument(
        "--router-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for a --router self (repeatable)",
    )
    g.add_argument(
        "--client-sockbuf",
        type=parse_size,
        default=7 << 20,
        help="socket buffer size given to the wireguard-go client's UDP socket, as "
        "wireguard-go 0.0.20230223 and later set themselves (default 7M; 0 = "
        "leave Debian's older build at the kernel default, whose drops under "
        "bursts show up as UDP loss); unless 0, the client TUN's txqueuelen "
        "is raised to 10000 too",
    )
    g.add_argument(
        "--gateway",
        default=DEFAULT_GATEWAY,
        help=f"address the guest uses for host loopback (default {DEFAULT_GATEWAY})",
    )
    t = p.add_argument_group("traffic")
    t.add_argument("--tcp-flows", type=int, default=20, help="concurrent TCP flows (default 20)")
    t.add_argument(
        "--tcp-bytes", type=parse_size, default=256 * 1024, help="bytes per TCP flow (default 256K)"
    )
    t.add_argument(
        "--tcp-chunk",
        type=parse_size,
        default=32 * 1024,
        help="echo request size: each is sent, echoed and checked in turn; its "
        "round trip is one latency sample (default 32K, at most 256K)",
    )
    t.add_argument(
        "--tcp-mix",
        default="echo,download,upload",
        help="kinds of TCP flow, assigned round-robin (default echo,download,upload)",
    )
    t.add_argument("--udp-flows", type=int, default=10, help="concurrent UDP flows (default 10)")
    t.add_argument(
        "--udp-count",
        type=int,
        default=200,
        help="request/response datagrams per UDP flow (default 200)",
    )
    t.add_argument(
        "--udp-size", type=parse_size, default=1000, help="UDP payload bytes (default 1000)"
    )
    t.add_argument(
        "--udp-window", type=int, default=4, help="UDP requests in flight per flow (default 4)"
    )
    t.add_argument(
        "--udp-timeout",
        type=float,
        default=1.0,
        help="seconds without a reply before a UDP request counts as lost (default 1)",
    )
    t.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="keep starting TCP flows and sending UDP for this many seconds "
        "(default 0: every flow moves its bytes/count once)",
    )
    t.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="hard bound on the traffic phase in seconds; flows still open count "
        "as timeouts (default 120, or duration + 60)",
    )
    t.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        help="TCP connect bound in seconds (default 5)",
    )
    t.add_argument(
        "--stall-timeout",
        type=float,
        default=15.0,
        help="a TCP flow moving no byte this long is a timeout (default 15)",
    )
    o = p.add_argument_group("verdict and output")
    o.add_argument(
        "--max-udp-loss",
        type=float,
        default=0.0,
        help="UDP loss in percent that still passes (default 0)",
    )
    o.add_argument(
        "--max-mem-growth",
        type=float,
        default=None,
        metavar="MIB",
        help="(--router self) fail when the router's memory (PSS, all its "
        "processes; median of the last quarter of the samples against the "
        "second quarter) grew by more than MIB: a leak check for --duration "
        "soaks (default: report only)",
    )
    o.add_argument("--json", metavar="FILE", help="write the results as JSON")
    o.add_argument(
        "--plot",
        metavar="FILE.png",
        help="throughput over time and latency CDFs (needs matplotlib)",
    )
    o.add_argument("--quiet", action="store_true", help="no progress lines")
    o.add_argument(
        "--inject-corruption",
        action="store_true",
        help="make the host servers corrupt some bytes on purpose (checks that "
        "verification catches it: the run must fail)",
    )
    a = p.parse_args(argv)
    if a.timeout is None:
        a.timeout = a.duration + 60.0 if a.duration > 0 else 120.0
    a.tcp_mix = [m.strip() for m in a.tcp_mix.split(",") if m.strip()]
    if not a.tcp_mix or any(m not in TCP_MODES for m in a.tcp_mix):
        p.error(f"--tcp-mix takes a comma-separated list of {', '.join(TCP_MODES)}")
    checks = [
        (0 <= a.tcp_flows <= 10_000, "--tcp-flows must be 0..10000"),
        (0 <= a.udp_flows <= 1_000, "--udp-flows must be 0..1000"),
        (a.tcp_flows + a.udp_flows > 0, "nothing to do: --tcp-flows and --udp-flows are 0"),
        (1 <= a.tcp_bytes <= 1 << 34, "--tcp-bytes must be 1..16G"),
        (1 <= a.tcp_chunk <= MAX_CHUNK, f"--tcp-chunk must be 1..{MAX_CHUNK}"),
        (1 <= a.udp_count <= 10_000_000, "--udp-count must be 1..10000000"),
        (UDP_HEADER.size <= a.udp_size <= 65_507, "--udp-size must be 8..65507"),
        (1 <= a.udp_window <= 1024, "--udp-window must be 1..1024"),
        (0.01 <= a.udp_timeout <= 60, "--udp-timeout must be 0.01..60"),
        (0 <= a.duration <= 3600, "--duration must be 0..3600"),
        (1 <= a.timeout <= 7200, "--timeout must be 1..7200"),
        (0.1 <= a.connect_timeout <= 120, "--connect-timeout must be 0.1..120"),
        (0.5 <= a.stall_timeout <= 600, "--stall-timeout must be 0.5..600"),
        (0 <= a.max_udp_loss <= 100, "--max-udp-loss must be 0..100"),
        (0 <= a.workers <= 16, "--workers must be 0..16"),
        (bool(a.endpoint) == bool(a.client_config), "--endpoint and --client-config go together"),
    ]
    for ok, msg in checks:
        if not ok:
            p.error(msg)
    for kv in a.router_env:
        if "=" not in kv:
            p.error(f"--router-env wants KEY=VALUE, got {kv!r}")
    if a.endpoint:
        try:
            a.endpoint_host, a.endpoint_port = parse_endpoint(a.endpoint)
        except ValueError as exc:
            p.error(str(exc))
    return a


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    mode = "endpoint" if args.endpoint else args.router
    try:
        if not start_controller(tunnel=mode != "none"):
            return 2
        with HostServers(inject=args.inject_corruption) as hs:
            host = "127.0.0.1" if mode == "none" else args.gateway
            cfg = guest_config(args, host, hs.ports)
            print(
                f"host servers on 127.0.0.1: tcp echo {hs.ports['echo']}, source "
                f"{hs.ports['source']}, sink {hs.ports['sink']}, udp echo {hs.ports['udp']}"
                f"{' (INJECTING CORRUPTION)' if args.inject_corruption else ''}",
                file=sys.stderr,
                flush=True,
            )
            if mode == "self":
                result, info = run_self(args, cfg)
            elif mode == "endpoint":
                result, info = run_endpoint(args, cfg)
            else:
                result, info = run_guest(args, cfg, None), {"mode": "none"}
            info["host_servers"] = hs.info()
        summary = summarize(result, info, args)
        print(render(summary, info, args), flush=True)
        if args.json:
            out = {
                "args": dict(vars(args)),
                "router": info,
                "timeline": result["timeline"],
                **summary,
            }
            Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
        if args.plot:
            print(plot(args.plot, result, summary), file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: everything started has been stopped", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, OSError) as exc:  # HarnessError is a RuntimeError
        print(f"load test could not run: {exc}", file=sys.stderr)
        return 2
    return 0 if summary["passed"] else 1
