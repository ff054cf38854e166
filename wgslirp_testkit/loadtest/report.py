"""The load test's verdict and what it prints: the summary table, the problems that fail
a run, and an optional plot.

The verdict is strict on purpose: a load test that passes with a few corrupt bytes or lost
datagrams would hide exactly the bugs it exists to find, so every error counts unless an
option (``--max-udp-loss``) says otherwise.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from wgslirp_testkit.bench import table
from wgslirp_testkit.loadtest.protocol import KINDS, errors_of


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(k, len(sorted_values)) - 1]


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def summarize(
    result: dict[str, Any], info: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Rows, totals and the verdict (a list of problems; empty = pass)."""
    stats: dict[str, dict[str, Any]] = result["stats"]
    elapsed = float(result["elapsed"])
    rows: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    extra = 0  # errors beyond the per-flow counters (loss over the limit, router, missing)
    for kind, st in stats.items():
        lat = sorted(result["latency_ms"].get(kind, []))
        secs = st["t_last"] or elapsed
        row = {k: v for k, v in st.items() if k != "t_last"}
        row.update(
            {
                "seconds": secs,
                "mbit_s": st["bytes"] * 8 / max(secs, 1e-9) / 1e6,
                "p50_ms": percentile(lat, 50),
                "p90_ms": percentile(lat, 90),
                "p99_ms": percentile(lat, 99),
                "max_ms": lat[-1] if lat else None,
                "latency_samples": result["latency_counts"].get(kind, 0),
            }
        )
        if kind == "udp echo":
            row["loss_pct"] = 100.0 * st["lost"] / st["sent"] if st["sent"] else 0.0
        rows[kind] = row
        errs = errors_of(st)
        if errs:
            what = ", ".join(
                f"{st[k]} {k.replace('_', ' ')}"
                for k in ("connect_fail", "reset", "corrupt", "timeout", "send_errors")
                if st[k]
            )
            problems.append(f"{kind}: {what}")
        if kind == "udp echo" and row["loss_pct"] > args.max_udp_loss:
            extra += 1
            problems.append(
                f"udp echo: {row['loss_pct']:.2f}% lost > --max-udp-loss {args.max_udp_loss:g}%"
            )
    if args.duration <= 0:
        tcp_ok = sum(stats[k]["ok"] for k in stats if k.startswith("tcp"))
        if tcp_ok != args.tcp_flows:
            extra += (
                args.tcp_flows
                - tcp_ok
                - sum(stats[k]["failed"] for k in stats if k.startswith("tcp"))
            )
            problems.append(f"tcp: {tcp_ok} of {args.tcp_flows} flows completed and verified")
        udp_done = stats.get("udp echo", {}).get("sent", 0)
        if args.udp_flows and udp_done != args.udp_flows * args.udp_count:
            extra += 1
            problems.append(f"udp: {udp_done} of {args.udp_flows * args.udp_count} requests sent")
    if info.get("mode") == "self":
        if info.get("exit") != 0:
            extra += 1
            problems.append(f"router exited with {info.get('exit')}")
        if info.get("counters_missing"):
            extra += 1
            problems.append("router printed no exit counters")
        internal = info.get("counters", {}).get("internal_errors", 0)
        if internal:
            extra += internal
            problems.append(f"router: {internal} internal errors")
        mem = info.get("memory")
        if (
            args.max_mem_growth is not None
            and mem is not None
            and mem["growth"] > args.max_mem_growth * 2**20
        ):
            extra += 1
            problems.append(
                f"router memory grew {_mib(mem['growth'])} from the second to the "
                f"last quarter of the run > --max-mem-growth "
                f"{args.max_mem_growth:g} MiB"
            )
    conn = sorted(result.get("connect_ms", []))
    total_bytes = sum(st["bytes"] for st in stats.values())
    errors = sum(errors_of(st) for st in stats.values()) + max(extra, 0)
    if problems and errors == 0:
        errors = len(problems)
    return {
        "rows": rows,
        "elapsed": elapsed,
        "bytes": total_bytes,
        "mbit_s": total_bytes * 8 / max(elapsed, 1e-9) / 1e6,
        "connect_ms": {
            "p50": percentile(conn, 50),
            "p99": percentile(conn, 99),
            "max": conn[-1] if conn else None,
            "samples": len(conn),
        },
        "udp_socket_drops": result.get("udp_socket_drops", {}),
        "problems": problems,
        "errors": errors,
        "passed": not problems,
    }


def render(summary: dict[str, Any], info: dict[str, Any], args: argparse.Namespace) -> str:
    hdr = [
        "kind",
        "flows",
        "ok",
        "bytes",
        "Mbit/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "conn fail",
        "resets",
        "corrupt",
        "timeouts",
        "udp lost",
    ]
    body = []
    tot = {k: 0 for k in ("flows", "ok", "connect_fail", "reset", "corrupt", "timeout")}
    for kind, r in summary["rows"].items():
        udp = kind.startswith("udp")
        flows = r["ok"] + r["failed"]
        tot["flows"] += flows
        tot["ok"] += r["ok"]
        for k in ("connect_fail", "reset", "corrupt", "timeout"):
            tot[k] += r[k]
        tot["reset"] += r["send_errors"]
        body.append(
            [
                kind,
                str(flows),
                str(r["ok"]),
                _mib(r["bytes"]),
                f"{r['mbit_s']:.1f}",
                _ms(r["p50_ms"]),
                _ms(r["p90_ms"]),
                _ms(r["p99_ms"]),
                _ms(r["max_ms"]),
                "-" if udp else str(r["connect_fail"]),
                str(r["send_errors"] if udp else r["reset"]),
                str(r["corrupt"]),
                str(r["timeout"]),
                f"{r['lost']} ({r['loss_pct']:.2f}%)" if udp else "-",
            ]
        )
    lost = sum(r.get("lost", 0) for r in summary["rows"].values())
    body.append(
        [
            "total",
            str(tot["flows"]),
            str(tot["ok"]),
            _mib(summary["bytes"]),
            f"{summary['mbit_s']:.1f}",
            "",
            "",
            "",
            "",
            str(tot["connect_fail"]),
            str(tot["reset"]),
            str(tot["corrupt"]),
            str(tot["timeout"]),
            str(lost) if "udp echo" in summary["rows"] else "-",
        ]
    )
    where = {
        "self": f"wgslirp started here, PROCESSOR_WORKERS={args.workers}",
        "endpoint": f"router at {args.endpoint}",
        "none": "no tunnel (loopback baseline)",
    }[info.get("mode", "none")]
    lines = [
        "",
        f"Load test summary: {where}; {summary['elapsed']:.2f} s of traffic",
        "",
        table(hdr, body),
        "",
    ]
    c = summary["connect_ms"]
    if c["samples"]:
        lines.append(
            f"tcp connect: p50 {_ms(c['p50'])} ms, p99 {_ms(c['p99'])} ms, "
            f"max {_ms(c['max'])} ms ({c['samples']} connects)"
        )
    lines.append(
        f"latency: tcp echo = round trip of one {args.tcp_chunk}-byte request; "
        "tcp download = request to first byte; tcp upload = last byte sent to the "
        "sink's verdict; udp echo = datagram round trip"
    )
    lines.append(
        "bytes: payload verified end to end (echo traffic counts both directions); "
        "corrupt: bytes (tcp) or datagrams (udp); resets: for udp, send errors"
    )
    udp = summary["rows"].get("udp echo")
    if udp and (udp["late"] or udp["dup"]):
        lines.append(
            f"udp: {udp['late']} late replies (after being counted lost), {udp['dup']} duplicates"
        )
    drops = {k: v for k, v in summary.get("udp_socket_drops", {}).items() if v}
    if drops:
        lines.append(
            "drops during the run (any traffic, both sides of the tunnel): "
            + ", ".join(f"{k} {v}" for k, v in drops.items())
        )
    mem = info.get("memory")
    if mem:
        lines.append(
            f"router memory (PSS, all processes, {mem['samples']} samples over "
            f"{mem['seconds']:.0f} s): start {_mib(mem['start'])}, middle "
            f"{_mib(mem['mid'])}, end {_mib(mem['end'])}, peak {_mib(mem['peak'])}; "
            f"growth, last quarter vs second (medians) "
            f"{'-' if mem['growth'] < 0 else ''}{_mib(abs(mem['growth']))}"
        )
    counters = info.get("counters")
    if counters:
        lines.append(
            f"router: exit {info.get('exit')}; "
            + ", ".join(f"{k} {v}" for k, v in counters.items())
        )
    for kind, r in summary["rows"].items():
        for detail, n in sorted(r["details"].items(), key=lambda kv: -kv[1])[:8]:
            lines.append(f"  {kind}: {n} x {detail}")
    if summary["passed"]:
        lines.append("RESULT: PASS (0 errors)")
    else:
        lines.append(f"RESULT: FAIL ({summary['errors']} errors)")
        lines += [f"  - {p}" for p in summary["problems"]]
    return "\n".join(lines)


def plot(path: str, result: dict[str, Any], summary: dict[str, Any]) -> str:
    """Write the PNG; a one-line message saying what happened."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]  # optional

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return f"--plot {path}: matplotlib is not installed (pip install matplotlib); skipped"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    prev_t, prev = 0.0, {k: 0 for k in KINDS}
    series: dict[str, tuple[list[float], list[float]]] = {
        k: ([0.0], [0.0]) for k in summary["rows"]
    }
    timeline = result["timeline"]
    for i, (t, nbytes, _errs) in enumerate(timeline):
        dt = t - prev_t
        if dt < 0.25 and 0 < i == len(timeline) - 1:
            break  # a last sliver of a second: its rate is noise
        for k in series:
            series[k][0].append(t)
            series[k][1].append((nbytes.get(k, 0) - prev.get(k, 0)) * 8 / max(dt, 1e-3) / 1e6)
        prev_t, prev = t, nbytes
    for k, (xs, ys) in series.items():
        ys[0] = ys[1] if len(ys) > 1 else 0.0
        ax1.step(xs, ys, where="pre", label=k)  # each value covers the second before it
    ax1.set_xlabel("seconds")
    ax1.set_ylabel("Mbit/s (verified payload)")
    ax1.set_ylim(bottom=0)
    ax1.set_title("throughput")
    ax1.grid(alpha=0.3)
    ax1.legend()
    for k in summary["rows"]:
        lat = sorted(result["latency_ms"].get(k, []))
        if lat:
            ax2.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=k)
    ax2.set_xscale("log")
    ax2.set_xlabel("latency, ms")
    ax2.set_ylabel("fraction of requests")
    ax2.set_title("latency CDF")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend()
    verdict = "PASS" if summary["passed"] else f"FAIL ({summary['errors']} errors)"
    fig.suptitle(f"wgslirp load test: {verdict}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot written to {path}"
