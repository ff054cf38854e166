"""``py-spy`` profiles of running processes, summarised as top source lines and functions.

For ``--profile`` in the benchmarks: the router runs unmodified and is never paused
(``--nonblocking``), at a cost of a few % of a core per target.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from wgslirp_testkit.proc import die_with_parent, stop_process


class PySpy:
    """``py-spy record`` of some processes for a fixed time, summarised as top functions.

    Runs non-blocking (the targets are never paused); costs a few % of a core per target.
    Output files are py-spy's collapsed-stack "raw" format, one per process.
    """

    RATE = 200

    def __init__(
        self,
        outdir: Path,
        tag: str,
        targets: dict[str, int],
        seconds: float,
        source_root: str | os.PathLike[str] = ".",
    ) -> None:
        self.source_root = Path(source_root)
        self.duration = max(1, round(seconds))
        self.procs: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
        exe = _which("py-spy")
        if exe is None:
            raise RuntimeError("py-spy not found (pip install py-spy)")
        outdir.mkdir(parents=True, exist_ok=True)
        try:
            for label, pid in targets.items():
                path = outdir / f"{tag}-{label}.txt"
                proc = subprocess.Popen(
                    [
                        exe,
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(self.duration),
                        "--rate",
                        str(self.RATE),
                        "--nonblocking",
                        "--format",
                        "raw",
                        "-o",
                        str(path),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
                self.procs.append((label, path, proc))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for _, _, proc in self.procs:
            stop_process(proc)
            if proc.stderr is not None:
                proc.stderr.close()

    def finish(self, top: int = 8) -> dict[str, dict[str, Any]]:
        """Wait for the recordings; label -> summary (see :func:`collapsed_summary`)."""
        out: dict[str, dict[str, Any]] = {}
        try:
            for label, path, proc in self.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(self.duration + 10)
                out[label] = collapsed_summary(path, top, self.source_root)
        finally:
            self.close()
        return out


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found is None:  # pip installs scripts next to the interpreter
        cand = Path(sys.executable).with_name(name)
        found = str(cand) if cand.exists() else None
    return found


def _split_frame(frame: str) -> tuple[str, str, int]:
    """'func (path/to/file.py:123)' -> ('func', 'path/to/file.py', 123)."""
    name, _, where = frame.rpartition(" (")
    path, _, line = where.rstrip(")").rpartition(":")
    return (name or frame), path, int(line) if line.isdigit() else 0


def _short(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[parts.index("wgslirp") :]) if "wgslirp" in parts else parts[-1]


def collapsed_summary(path: Path, top: int, source_root: Path = Path(".")) -> dict[str, Any]:
    """Summarise a py-spy collapsed-stack file.

    ``samples``: how many non-idle samples (running or waiting for a CPU);
    ``lines``: [(share %, "file:line function", source)] with the most samples at the top of
    the stack (self time, which includes the C calls and syscalls made from that line);
    ``funcs``: [(self %, inclusive %, "function (file)")].  Relative file names (modules
    found through the target's working directory) are read from ``source_root``.
    """
    by_line: dict[tuple[str, str, int], int] = {}
    selfc: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    try:
        text = path.read_text()
    except OSError:
        return {"samples": 0, "lines": [], "funcs": []}
    for row in text.splitlines():
        stack, _, count = row.rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        n = int(count)
        total += n
        frames = [_split_frame(f) for f in stack.split(";") if f]
        leaf = frames[-1]
        by_line[leaf] = by_line.get(leaf, 0) + n
        names = [f"{f[0]} ({_short(f[1])})" for f in frames]
        selfc[names[-1]] = selfc.get(names[-1], 0) + n
        for name in set(names):
            incl[name] = incl.get(name, 0) + n
    if not total:
        return {"samples": 0, "lines": [], "funcs": []}
    lines = []
    for (func, file, line), n in sorted(by_line.items(), key=lambda kv: -kv[1])[:top]:
        full = file if os.path.isabs(file) else str(source_root / file)
        src = linecache.getline(full, line).strip() if line else ""
        lines.append((100.0 * n / total, f"{_short(file)}:{line} {func}", src))
    funcs = [
        (100.0 * c / total, 100.0 * incl[f] / total, f)
        for f, c in sorted(selfc.items(), key=lambda kv: -kv[1])[:top]
    ]
    return {"samples": total, "lines": lines, "funcs": funcs}


def print_profile(
    profile: dict[str, dict[str, Any]], cpu: dict[str, float], funcs: bool = False
) -> None:
    """Print :meth:`PySpy.finish`'s summaries: per process (with its CPU % from ``cpu``, if
    known) the top source lines, and with ``funcs`` the top functions."""
    for label, prof in sorted(profile.items()):
        if not prof["samples"]:
            continue
        pct = cpu.get(label)
        print(
            f"  {label} ({prof['samples']} samples"
            + (f", {pct:.0f}% CPU" if pct is not None else "")
            + "):"
        )
        for share, where, src in prof["lines"]:
            print(f"    {share:5.1f}%  {where:<50} {src[:60]}")
        if funcs:
            print("    functions (self% / inclusive%):")
            for s_, inc, fn in prof["funcs"]:
                print(f"    {s_:5.1f}% {inc:5.1f}%  {fn}")
