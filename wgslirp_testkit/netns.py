"""Network namespaces owned by a test, the names of everything the harness creates, and the
sweep of what dead harness processes left behind.

Network rule of this machine: traffic goes only to 127.0.0.0/8 or into namespaces the test
created, so a guest lives in a namespace of its own and reaches the host only through the
tunnel.

Names are ``wgh<pid-hex><kind><counter-hex>`` (kind ``n`` namespace, ``i`` interface,
``t`` nft table, ``r`` router temp directory), unique per pytest-xdist worker and at most
15 characters (an interface name's limit).  Temp directories start with the owner's name
followed by ``-``.  The PID in the name is what lets :func:`sweep_stale` remove a dead
worker's leftovers without ever touching a live worker's.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from wgslirp_testkit.proc import HarnessError, die_with_parent, pid_alive, run, stop_process

if TYPE_CHECKING:
    import pytest

REQUIRED_BINARIES: tuple[str, ...] = ("wireguard-go", "wg", "ip", "ping", "nft")
"""Binaries every e2e test may rely on; missing ones make e2e tests skip, not fail."""

NETNS_DIR = Path("/run/netns")
WG_SOCKET_DIR = Path("/var/run/wireguard")
SYS_NET = Path("/sys/class/net")

_NAME_PREFIX = "wgh"
_NAME_RE = re.compile(rf"^{_NAME_PREFIX}([0-9a-f]+)([nitr])([0-9a-f]+)$")
_counter = itertools.count(1)


# --------------------------------------------------------------------------- environment


def require_root_and_tun(extra_binaries: Sequence[str] = ()) -> str | None:
    """Return why e2e tests cannot run here, or None when they can.

    A missing capability must skip a test with a reason, never fail it: developers without
    root still run the unit suite.  Checked: effective root (netns, TUN, nft all need it),
    a usable ``/dev/net/tun`` (opened for real, since containers often show the node but
    deny it), and the binaries in :data:`REQUIRED_BINARIES` plus ``extra_binaries``.
    """
    if os.geteuid() != 0:
        return "e2e tests need root (network namespaces, TUN devices, nftables)"
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as exc:
        return f"e2e tests need a usable /dev/net/tun ({exc.strerror})"
    os.close(fd)
    missing = [b for b in (*REQUIRED_BINARIES, *extra_binaries) if shutil.which(b) is None]
    if missing:
        return (
            f"e2e tests need {', '.join(missing)} "
            "(apt-get install -y wireguard-go wireguard-tools iproute2 iputils-ping nftables)"
        )
    return None


def ipv6_unavailable() -> str | None:
    """Why IPv6 cannot be used in tests here (a kernel or container with it off), or None.

    Checked by binding [::1], which every IPv6-enabled host has; the namespaces tests create
    inherit the same setting.
    """
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        return f"IPv6 is off on this host ({exc.strerror or exc})"
    return None


def skip_unless_e2e(extra_binaries: Sequence[str] = ()) -> pytest.MarkDecorator:
    """Marker that skips a test, with the reason, where :func:`require_root_and_tun` fails.

    Tests marked ``e2e`` under tests/e2e already get this from the conftest; use it for
    tests that need extra binaries, e.g. ``@skip_unless_e2e(["iperf3"])``.
    """
    import pytest  # only tests need it; benchmarks use this module without pytest

    reason = require_root_and_tun(extra_binaries)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


# --------------------------------------------------------------------------- names


def unique_name(kind: str, exists: Callable[[str], bool] | None = None) -> str:
    """Return a resource name unique to this process, at most 15 characters.

    pytest-xdist runs workers in parallel, so names embed the worker PID and a per-process
    counter.  ``exists`` lets the caller skip names left over by a crashed run whose PID has
    been reused.
    """
    if kind not in ("n", "i", "t", "r"):
        raise ValueError(f"unknown resource kind {kind!r}")
    for _ in range(1000):
        name = f"{_NAME_PREFIX}{os.getpid():x}{kind}{next(_counter):x}"
        if len(name) > 15:
            raise HarnessError(f"resource name {name!r} exceeds 15 characters")
        if exists is None or not exists(name):
            return name
    raise HarnessError("could not find an unused resource name in 1000 tries")


def link_exists(name: str) -> bool:
    return (SYS_NET / name).exists() or (WG_SOCKET_DIR / f"{name}.sock").exists()


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def nft_table_exists(name: str) -> bool:
    return (
        subprocess.run(
            ["nft", "list", "table", "inet", name], capture_output=True, timeout=10, check=False
        ).returncode
        == 0
    )


# --------------------------------------------------------------------------- namespace


class Namespace:
    """A network namespace owned by one test; deleted with everything started in it.

    ``ip netns del`` only unmounts the namespace handle: it lives on while any process runs
    in it.  So cleanup first kills (by PID) every process started through :meth:`popen`.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name or unique_name("n", netns_exists)
        self._procs: list[subprocess.Popen[Any]] = []
        self._created = False

    def __enter__(self) -> Self:
        run(["ip", "netns", "add", self.name], timeout=10, check=True)
        self._created = True
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(raise_errors=exc_type is None)

    def exec_prefix(self) -> list[str]:
        """Argument prefix that runs a command inside this namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(
        self,
        cmd: Sequence[str],
        *,
        timeout: float = 10.0,
        check: bool = True,
        input: str | None = None,
        context: Callable[[], str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace, bounded by ``timeout`` (whole group killed)."""
        return run(
            [*self.exec_prefix(), *cmd],
            timeout=timeout,
            check=check,
            input=input,
            context=context,
        )

    def ip(self, *args: str, timeout: float = 10.0) -> str:
        """``ip -n NS ...``: cheaper than ``ip netns exec`` (no mount namespace setup)."""
        return run(["ip", "-n", self.name, *args], timeout=timeout, check=True).stdout

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running command in the namespace; killed at cleanup.

        The child gets its own session (so cleanup can kill its whole group by PGID) and
        dies with SIGKILL if the test process dies.  ``kwargs`` go to ``subprocess.Popen``.
        """
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("preexec_fn", die_with_parent)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen([*self.exec_prefix(), *cmd], **kwargs)
        self._procs.append(proc)
        return proc

    def close(self, raise_errors: bool = True) -> None:
        """Kill processes started here, then delete the namespace; idempotent."""
        errors: list[str] = []
        for proc in self._procs:
            try:
                stop_process(proc, timeout=2.0, group=True)
            except Exception as exc:
                errors.append(f"stopping pid {proc.pid}: {exc!r}")
        self._procs.clear()
        if self._created:
            for attempt in range(20):
                res = run(["ip", "netns", "del", self.name], timeout=10, check=False)
                if res.returncode == 0 or not netns_exists(self.name):
                    break
                if attempt == 19:
                    errors.append(f"ip netns del {self.name}: {res.stderr.strip()}")
                time.sleep(0.05)
            self._created = False
        if errors and raise_errors:
            raise HarnessError("namespace cleanup failed:\n" + "\n".join(errors))


# --------------------------------------------------------------------------- stale sweep


def _stale(name: str) -> bool:
    m = _NAME_RE.match(name)
    return m is not None and not pid_alive(int(m.group(1), 16))


def sweep_stale() -> list[str]:
    """Delete namespaces, links, nft tables, UAPI sockets, temp dirs of dead harness processes.

    Only resources whose name carries the PID of a process that no longer exists are
    touched, so parallel workers never remove each other's.  Processes are never killed
    here (leaked wireguard-go daemons already died through PDEATHSIG).  Returns what was
    removed.
    """
    removed: list[str] = []
    if NETNS_DIR.is_dir():
        for entry in NETNS_DIR.iterdir():
            if (
                _stale(entry.name)
                and run(["ip", "netns", "del", entry.name], timeout=10, check=False).returncode == 0
            ):
                removed.append(f"netns {entry.name}")
    if SYS_NET.is_dir():
        for entry in SYS_NET.iterdir():
            if (
                _stale(entry.name)
                and run(["ip", "link", "del", entry.name], timeout=10, check=False).returncode == 0
            ):
                removed.append(f"link {entry.name}")
    res = run(["nft", "list", "tables", "inet"], timeout=10, check=False)
    for line in res.stdout.splitlines():
        parts = line.split()
        if (
            len(parts) == 3
            and _stale(parts[2])
            and run(
                ["nft", "delete", "table", "inet", parts[2]], timeout=10, check=False
            ).returncode
            == 0
        ):
            removed.append(f"nft table {parts[2]}")
    if WG_SOCKET_DIR.is_dir():
        for entry in WG_SOCKET_DIR.glob("*.sock"):
            if _stale(entry.stem):
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(f"socket {entry}")
    for entry in Path(tempfile.gettempdir()).glob(f"{_NAME_PREFIX}*-*"):
        if entry.is_dir() and _stale(entry.name.split("-", 1)[0]):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(f"temp dir {entry}")
    return removed


def iter_harness_netns() -> Iterator[str]:
    """Names of harness namespaces currently present (for leak assertions)."""
    if NETNS_DIR.is_dir():
        for entry in NETNS_DIR.iterdir():
            if _NAME_RE.match(entry.name):
                yield entry.name
