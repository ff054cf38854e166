"""Child processes that cannot outlive the test or benchmark that started them.

Three rules keep a killed pytest worker or an interrupted benchmark from leaking daemons:

* Every child gets ``PR_SET_PDEATHSIG`` (:func:`pdeathsig`, :func:`die_with_parent`), so it
  dies with the process that spawned it, even after a SIGKILL nobody could catch.
* Long-running children get a session of their own, so their PID is also the process group
  of everything they start; cleanup kills that group (:func:`kill_group`).
* Processes are only ever signalled by the PID (or PGID) of a child we started, and the
  group is killed while the leader is still unreaped (:func:`peek_exit`), so the ID cannot
  have been recycled: never by name, never someone else's.

Everything here is stdlib only: guest programs import it (:func:`raise_nofile`) and start
in a fresh interpreter inside a namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import select
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: How much of a log goes into an error message or report section: enough to see the
#: handshake story, short enough to stay readable.
LOG_TAIL_CHARS = 20_000

_PR_SET_PDEATHSIG = 1
# Loaded once in the parent: a preexec hook then only makes the call, after fork.
_LIBC = ctypes.CDLL(None, use_errno=True)


class HarnessError(RuntimeError):
    """A harness step failed; the message carries the command output and relevant logs."""


# --------------------------------------------------------------------------- PDEATHSIG


def pdeathsig(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` so the child gets ``sig`` when the thread that spawned it dies.

    SIGKILL for tools (wireguard-go, ping, guests); SIGTERM for a router, which then gets
    the chance to stop its own workers.
    """

    def hook() -> None:
        with contextlib.suppress(AttributeError):  # no prctl: not Linux
            _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return hook


#: SIGKILL this process when its parent dies: call it first thing in a forked child, or
#: pass it as ``Popen``'s ``preexec_fn``.
die_with_parent = pdeathsig(signal.SIGKILL)


# --------------------------------------------------------------------------- by PID


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], pgrp is [2])."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(int(entry.name))
    return sorted(found)


def child_pid(parent: int, comm: str | None = None) -> int | None:
    """A direct child of ``parent``: the first, or the first whose command name is ``comm``.

    How a test finds a router's worker to kill: by the PID of our own child's child, never
    by name across the machine.
    """
    try:
        kids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return None
    for kid in kids:
        if comm is None:
            return int(kid)
        try:
            if Path(f"/proc/{kid}/comm").read_text().strip() == comm:
                return int(kid)
        except OSError:
            continue
    return None


def peek_exit(proc: subprocess.Popen[Any], timeout: float = 0.0) -> int | None:
    """Wait up to ``timeout`` for the child to exit *without reaping it*; its exit code.

    While the leader is an unreaped zombie its PID (= our PGID) cannot be reused, so a
    following ``killpg`` can only hit processes we started.  Returns None if still running.
    """
    if proc.returncode is not None:
        return proc.returncode
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere
            return proc.poll()
        if info is not None:
            if info.si_code == os.CLD_EXITED:
                return info.si_status
            return -info.si_status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the child's process group (its PGID is its PID: ``start_new_session``).

    If the leader was already reaped, the group ID is only signalled while members remain
    (which keeps the ID reserved), so we never signal a recycled ID.  A child that leads no
    group of its own has no group with its ID, so nothing is hit.
    """
    if proc.returncode is not None and not group_members(proc.pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 2.0, group: bool = True) -> int:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; by PID, or by our own child's PGID.

    ``group`` means the child was started with ``start_new_session`` so its PID is also the
    PGID of everything it spawned; the group is killed before the leader is reaped.
    Returns the exit code (negative = killed by that signal).
    """
    if peek_exit(proc) is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        peek_exit(proc, timeout)
    if group:
        kill_group(proc)
    if peek_exit(proc) is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    return proc.wait(5)


def stop_and_close(proc: subprocess.Popen[Any]) -> None:
    """:func:`stop_process`, then close our ends of the child's pipes."""
    stop_process(proc)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


# --------------------------------------------------------------------------- starting


def run(
    cmd: Sequence[str],
    *,
    timeout: float,
    check: bool,
    input: str | None = None,
    context: Callable[[], str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a hard time bound; on timeout kill its whole process group.

    ``subprocess.run`` only kills the direct child on timeout; commands started through
    ``ip netns exec sh -c`` may leave grandchildren, so the child gets its own session.
    ``context`` adds logs (wireguard-go, router) to the error message.
    """
    proc = subprocess.Popen(
        list(cmd),
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise HarnessError(
            _format_failure(f"timed out after {timeout}s", cmd, None, out, err, context)
        ) from None
    result = subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise HarnessError(_format_failure("failed", cmd, proc.returncode, out, err, context))
    return result


def _format_failure(
    what: str,
    cmd: Sequence[str],
    rc: int | None,
    out: str | None,
    err: str | None,
    context: Callable[[], str] | None,
) -> str:
    parts = [f"command {what}: {' '.join(cmd)}" + (f" (exit {rc})" if rc is not None else "")]
    if out:
        parts.append(f"--- stdout ---\n{out.rstrip()}")
    if err:
        parts.append(f"--- stderr ---\n{err.rstrip()}")
    if context is not None:
        with contextlib.suppress(Exception):
            parts.append(context())
    return "\n".join(parts)


def spawn(argv: Sequence[str], ns: Any = None, **kw: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside the namespace of ``ns`` (a WgClient or Namespace), or here: in a
    session of its own, stdin from /dev/null, killed when we die.  ``kw`` go to Popen."""
    if ns is not None:
        proc: subprocess.Popen[bytes] = ns.popen(argv, **kw)
        return proc
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent, **kw
    )


class LineReader:
    """Lines of a pipe, each read bounded by a deadline (select + os.read)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def readline(self, timeout: float) -> str | None:
        """The next line without its newline; None on EOF or when the time is up."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if self.eof or left <= 0:
                return None
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
                if self.buf:
                    self.buf += b"\n"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("utf-8", "replace")


# --------------------------------------------------------------------------- limits, logs


def raise_nofile(need: int | None = None) -> int:
    """Raise the soft RLIMIT_NOFILE to ``need`` (None: to the hard limit); the result.

    Thousands of flows need thousands of descriptors, and the usual soft limit is 1024.
    When ``need`` is above the hard limit the hard limit is raised too, as far as
    /proc/sys/fs/nr_open and our privileges allow; failing that, the soft limit goes as high
    as the hard one.  Children inherit the result.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if need is None else max(soft, need)
    if want > hard:
        try:
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            nr_open = hard
        new_hard = min(want, nr_open)
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_hard, new_hard))
            return new_hard
        want = hard
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        return want
    return soft


def tail(path: Path, limit: int = LOG_TAIL_CHARS) -> str:
    """The end of a log file, marked when cut: a failure message must stay readable."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError as exc:
        return f"<cannot read {path}: {exc.strerror}>"
    text = data.decode("utf-8", "replace")
    return ("...[truncated]...\n" if size > limit else "") + text


def read_text(path: Path) -> str:
    """A whole log file; "" if it was never created."""
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def file_size(path: Path) -> int:
    """Bytes written to a log so far; 0 if it was never created."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
