"""Plumbing shared by the benchmark scripts' controllers: interrupts that still clean up,
the checks before a run, options every benchmark takes, and plain-text output.

A benchmark starts routers, wireguard-go clients, namespaces and servers; an impatient
Ctrl-C must not leave them behind, nor interrupt the cleanup half-way
(:func:`install_interrupt_handlers`).  ``--rev`` runs the router from a git revision while
others edit the working tree (:func:`rev_exported`).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from wgslirp_testkit.netns import require_root_and_tun
from wgslirp_testkit.router import REPO

# --------------------------------------------------------------------------- signals

_interrupted = False


def install_interrupt_handlers() -> None:
    """First SIGINT/SIGTERM/SIGHUP raises KeyboardInterrupt; later ones are ignored."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        global _interrupted
        if _interrupted:
            print(
                f"\n(got {signal.Signals(signum).name} again; still cleaning up)",
                file=sys.stderr,
                flush=True,
            )
            return
        _interrupted = True
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def interrupted() -> bool:
    return _interrupted


def start_controller(tunnel: bool = True, extra_binaries: Sequence[str] = ()) -> bool:
    """Set up a benchmark's controller process (:func:`install_interrupt_handlers`) and, with
    ``tunnel``, check that this machine can run one: root, a usable /dev/net/tun, the
    harness's tools plus ``extra_binaries``.  False (after saying why on stderr) when it
    cannot."""
    install_interrupt_handlers()
    if not tunnel:
        return True
    why = require_root_and_tun(extra_binaries)
    if why is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return False
    return True


# --------------------------------------------------------------------------- options


def export_rev(rev: str, dest: Path) -> str:
    """Extract the wgslirp package of git revision ``rev`` into ``dest``; its full hash."""
    full = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", rev + "^{commit}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    with subprocess.Popen(
        ["git", "-C", str(REPO), "archive", "--format=tar", full, "wgslirp"], stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            tar.extractall(dest, filter="data")
        if proc.wait(30) != 0:
            raise RuntimeError(f"git archive {rev} failed")
    return full


def add_rev_argument(p: Any) -> None:
    """The ``--rev`` option of an argparse parser (see :func:`rev_exported`)."""
    p.add_argument(
        "--rev",
        default=None,
        help="run the router from this git revision (git archive into a temp dir) "
        "instead of the working tree, e.g. HEAD while others edit",
    )


@contextlib.contextmanager
def rev_exported(rev: str | None) -> Iterator[str | None]:
    """``--rev``: the wgslirp package of ``rev`` in a temporary directory (its path; removed
    at the end), said on stdout; None without a ``rev``."""
    if rev is None:
        yield None
        return
    tmp = tempfile.mkdtemp(prefix="wgslirp-bench-rev-")
    try:
        full = export_rev(rev, Path(tmp))
        print(f"router code: git revision {full} (exported to {tmp})", flush=True)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def add_quiet_options(p: Any, *, what: str, wait: float) -> None:
    """--quiet-threshold/--quiet-wait: wait for a quiet machine before each measurement."""
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=25.0,
        help=f"before each {what} wait until the machine is at most this busy "
        "(%% of one core; default 25)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=wait,
        help=f"longest wait for that, in seconds (default {wait:g})",
    )


# --------------------------------------------------------------------------- output


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: bool = True) -> str:
    """Columns padded to their widest cell; the first column left-aligned."""
    widths = [max(len(str(r[i])) for r in (headers, *rows)) for i in range(len(headers))]

    def fmt(r: Sequence[str]) -> str:
        cells = []
        for i, c in enumerate(r):
            c = str(c)
            cells.append(c.ljust(widths[i]) if i == 0 or not right else c.rjust(widths[i]))
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), rule, *(fmt(r) for r in rows)])


def pct(x: float | None) -> str:
    """A CPU share for a table: whole percent, "-" where nothing was measured."""
    return "-" if x is None else f"{x:.0f}"


def si(x: float) -> str:
    """1234567 -> '1.23M', 12345 -> '12.3k'."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            v = x / div
            return f"{v:.3g}{suffix}" if v < 100 else f"{v:.0f}{suffix}"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def router_code_note() -> str:
    """Which router code a benchmark measures when it runs the working tree."""
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "wgslirp"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    return f"router code: working tree at {head}" + (
        " with uncommitted changes in wgslirp/" if dirty else ""
    )
