"""Harness for end-to-end tests that drive a real WireGuard client against the router.

The client is Debian's ``wireguard-go`` configured with ``wg``; the guest side of the tunnel
lives in a network namespace the test creates, so a test can send traffic "from a guest"
without touching any real network.

How the pieces are wired (verified on this machine, wireguard-go v0.0.20220316)
-------------------------------------------------------------------------------
1. ``wireguard-go -f IFNAME`` is started in the ROOT namespace.  Its UDP socket is created
   there and stays there, so it can reach a router listening on 127.0.0.1.
2. We wait for its UAPI socket ``/var/run/wireguard/IFNAME.sock``.
3. ``ip link set IFNAME mtu M`` is done *in the root namespace, before the move*:
   wireguard-go learns MTU changes only from netlink events of the namespace it runs in,
   so an MTU set after the move would never reach it (it would keep padding for 1420).
4. ``ip link set IFNAME netns NS`` moves the TUN device into the test namespace.  The TUN
   file descriptor keeps working across the move, and wireguard-go keeps the device "up"
   because Linux TUN devices emit their first "up" event at creation; the later link
   up/down inside the namespace is invisible to it (and does not matter).
5. ``wg`` keeps working from the root namespace: it talks to the UAPI socket by its path,
   which does not depend on where the link lives.
6. ``wg set IF private-key FILE listen-port 0 peer ... endpoint 127.0.0.1:PORT``.
   Note that wireguard-go binds its UDP socket to the wildcard address (0.0.0.0 and ::),
   not to 127.0.0.1; ``udp_port()`` is reachable at 127.0.0.1:PORT.

Other things worth knowing:

* On SIGTERM wireguard-go removes its UAPI socket and closes the TUN, which destroys the
  interface wherever it lives.  After SIGKILL the socket file is left behind; cleanup removes
  it.
* Every process the harness spawns gets ``PR_SET_PDEATHSIG`` so that a pytest worker killed
  with SIGKILL does not leave wireguard-go running; namespaces and nft tables left by such a
  worker are removed by :func:`sweep_stale` (only when the PID in their name is dead).
* An nft ``drop`` in the output hook makes ``sendto()`` fail with ``EPERM`` in the sender:
  the router will see that error when a :class:`NftGuard` catches its packet.

Network rule of this machine: traffic goes only to 127.0.0.0/8 or into namespaces the test
created.  The harness enforces the loopback part for WireGuard endpoints.

Names are ``wgh<pid-hex><kind><counter-hex>`` (kind ``n`` namespace, ``i`` interface,
``t`` nft table, ``r`` router temp directory), unique per pytest-xdist worker and at most
15 characters.  Temp directories start with the owner's name followed by ``-``.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import dataclasses
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "REQUIRED_BINARIES",
    "HarnessError",
    "KeyPair",
    "Namespace",
    "NftGuard",
    "RouterProcess",
    "WgClient",
    "WgDump",
    "WgPeerStats",
    "closed_tcp_port",
    "closed_udp_port",
    "diagnostic_sections",
    "free_tcp_port",
    "free_udp_port",
    "generate_keypair",
    "generate_preshared_key",
    "iter_harness_netns",
    "key_to_base64",
    "public_key_of",
    "require_root_and_tun",
    "reset_diagnostics",
    "skip_unless_e2e",
    "sweep_stale",
    "unique_name",
]

REQUIRED_BINARIES: tuple[str, ...] = ("wireguard-go", "wg", "ip", "ping", "nft")
"""Binaries every e2e test may rely on; missing ones make e2e tests skip, not fail."""

NETNS_DIR = Path("/run/netns")
WG_SOCKET_DIR = Path("/var/run/wireguard")
SYS_NET = Path("/sys/class/net")

#: How much of a log goes into an error message or report section: enough to see the
#: handshake story, short enough to stay readable.
LOG_TAIL_CHARS = 20_000

_NAME_PREFIX = "wgh"
_NAME_RE = re.compile(rf"^{_NAME_PREFIX}([0-9a-f]+)([nitr])([0-9a-f]+)$")
_counter = itertools.count(1)


class HarnessError(RuntimeError):
    """A harness step failed; the message carries the command output and relevant logs."""


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


def skip_unless_e2e(extra_binaries: Sequence[str] = ()) -> pytest.MarkDecorator:
    """Marker that skips a test, with the reason, where :func:`require_root_and_tun` fails.

    Tests marked ``e2e`` under tests/e2e already get this from the conftest; use it for
    tests that need extra binaries, e.g. ``@skip_unless_e2e(["iperf3"])``.
    """
    reason = require_root_and_tun(extra_binaries)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


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


def _link_exists(name: str) -> bool:
    return (SYS_NET / name).exists() or (WG_SOCKET_DIR / f"{name}.sock").exists()


def _netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def _nft_table_exists(name: str) -> bool:
    return (
        subprocess.run(
            ["nft", "list", "table", "inet", name], capture_output=True, timeout=10, check=False
        ).returncode
        == 0
    )


# --------------------------------------------------------------------------- processes


_PR_SET_PDEATHSIG = 1


def _pdeathsig(sig: int) -> Callable[[], None]:
    """Build a preexec hook so the child gets ``sig`` when the spawning thread dies.

    This is what keeps a SIGKILLed pytest worker from leaking wireguard-go daemons.
    """

    def hook() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return hook


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], pgrp is [2])."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(int(entry.name))
    return sorted(found)


def _peek_exit(proc: subprocess.Popen[Any], timeout: float = 0.0) -> int | None:
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


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the child's process group (its PGID is its PID: ``start_new_session``).

    If the leader was already reaped, the group ID is only signalled while members remain
    (which keeps the ID reserved), so we never signal a recycled ID.
    """
    if proc.returncode is not None and not _group_members(proc.pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _stop_process(proc: subprocess.Popen[Any], timeout: float, group: bool) -> int:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; by PID, or by our own child's PGID.

    ``group`` means the child was started with ``start_new_session`` so its PID is also the
    PGID of everything it spawned; the group is killed before the leader is reaped.
    """
    if _peek_exit(proc) is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        _peek_exit(proc, timeout)
    if group:
        _kill_group(proc)
    if _peek_exit(proc) is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    return proc.wait(5)


def _run(
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
        preexec_fn=_pdeathsig(signal.SIGKILL),
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


def _tail(path: Path, limit: int = LOG_TAIL_CHARS) -> str:
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


# --------------------------------------------------------------------------- diagnostics
#
# Logs must survive the object that wrote them: a test usually leaves its `with` block
# (and the harness deletes the temp files) before pytest builds the failure report.  Objects
# register while alive and leave a copy of their log tail when they close; the e2e conftest
# attaches both to the report of a failing test and resets between tests.

_live: dict[int, _Diagnosable] = {}
_closed: list[tuple[str, str]] = []


class _Diagnosable:
    def diagnostics(self) -> str:
        raise NotImplementedError

    def _diag_title(self) -> str:
        raise NotImplementedError

    def _register(self) -> None:
        _live[id(self)] = self

    def _unregister(self) -> None:
        if _live.pop(id(self), None) is not None:
            with contextlib.suppress(Exception):
                _closed.append((self._diag_title(), self.diagnostics()))
            del _closed[:-20]


def diagnostic_sections() -> list[tuple[str, str]]:
    """(title, text) for every harness object alive or closed since the last reset."""
    sections = list(_closed)
    for obj in list(_live.values()):
        try:
            sections.append((obj._diag_title(), obj.diagnostics()))
        except Exception as exc:
            sections.append((obj._diag_title(), f"<diagnostics failed: {exc!r}>"))
    return sections


def reset_diagnostics() -> None:
    """Forget logs of closed objects (called by the e2e conftest before each test)."""
    _closed.clear()


# --------------------------------------------------------------------------- keys


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A Curve25519 key pair in WireGuard's base64 text form."""

    private: str
    public: str

    @property
    def private_bytes(self) -> bytes:
        return base64.b64decode(self.private)

    @property
    def public_bytes(self) -> bytes:
        return base64.b64decode(self.public)


def key_to_base64(key: bytes | str) -> str:
    """Normalise a 32-byte key given raw or as base64 text; reject anything else early.

    A malformed key otherwise surfaces as an opaque ``wg set`` failure.
    """
    raw = key if isinstance(key, bytes) else base64.b64decode(key.strip(), validate=True)
    if len(raw) != 32:
        raise ValueError(f"WireGuard keys are 32 bytes, got {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def public_key_of(private_key: bytes | str, *, use_wg: bool = False) -> str:
    """Public key (base64) for a private key; ``use_wg`` cross-checks with ``wg pubkey``."""
    priv = key_to_base64(private_key)
    if use_wg:
        return _run(["wg", "pubkey"], input=priv + "\n", timeout=10, check=True).stdout.strip()
    sk = X25519PrivateKey.from_private_bytes(base64.b64decode(priv))
    return base64.b64encode(sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def generate_keypair(*, use_wg: bool = False) -> KeyPair:
    """New key pair from the cryptography package (default) or ``wg genkey``/``wg pubkey``.

    The private key is clamped the way ``wg genkey`` does so both sources look alike.
    """
    if use_wg:
        priv = _run(["wg", "genkey"], timeout=10, check=True).stdout.strip()
    else:
        raw = bytearray(os.urandom(32))
        raw[0] &= 248
        raw[31] = (raw[31] & 127) | 64
        priv = base64.b64encode(bytes(raw)).decode()
    return KeyPair(private=priv, public=public_key_of(priv, use_wg=use_wg))


def generate_preshared_key() -> str:
    """Random 32-byte preshared key, base64 (what ``wg genpsk`` prints)."""
    return base64.b64encode(os.urandom(32)).decode()


# --------------------------------------------------------------------------- ports


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago.

    Inherently racy (another process may take it before you bind); prefer binding port 0
    and reading the port back where the program under test allows it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (same race as free_udp_port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def closed_tcp_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that refuses connections and stays ours while the block runs.

    A socket bound without listen() answers every SYN with RST, and its binding keeps the
    kernel from handing the port to anyone else (a parallel test's listener, or an outgoing
    connect choosing it as its own source port, which would self-connect). A port that was
    merely free a moment ago gives a test that expects a refusal a rare false "connected".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@contextlib.contextmanager
def closed_udp_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 that answers port-unreachable and stays ours meanwhile.

    A UDP socket connected to another peer does not match datagrams from anyone else, so the
    kernel answers them with ICMP port unreachable exactly as for an unbound port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.connect(("127.0.0.1", 9))
        yield int(s.getsockname()[1])


# --------------------------------------------------------------------------- namespace


class Namespace:
    """A network namespace owned by one test; deleted with everything started in it.

    ``ip netns del`` only unmounts the namespace handle: it lives on while any process runs
    in it.  So cleanup first kills (by PID) every process started through :meth:`popen`.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name or unique_name("n", _netns_exists)
        self._procs: list[subprocess.Popen[Any]] = []
        self._created = False

    def __enter__(self) -> Self:
        _run(["ip", "netns", "add", self.name], timeout=10, check=True)
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
        return _run(
            [*self.exec_prefix(), *cmd],
            timeout=timeout,
            check=check,
            input=input,
            context=context,
        )

    def ip(self, *args: str, timeout: float = 10.0) -> str:
        """``ip -n NS ...``: cheaper than ``ip netns exec`` (no mount namespace setup)."""
        return _run(["ip", "-n", self.name, *args], timeout=timeout, check=True).stdout

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running command in the namespace; killed at cleanup.

        The child gets its own session (so cleanup can kill its whole group by PGID) and
        dies with SIGKILL if the test process dies.  ``kwargs`` go to ``subprocess.Popen``.
        """
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("preexec_fn", _pdeathsig(signal.SIGKILL))
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen([*self.exec_prefix(), *cmd], **kwargs)
        self._procs.append(proc)
        return proc

    def close(self, raise_errors: bool = True) -> None:
        """Kill processes started here, then delete the namespace; idempotent."""
        errors: list[str] = []
        for proc in self._procs:
            try:
                _stop_process(proc, timeout=2.0, group=True)
            except Exception as exc:
                errors.append(f"stopping pid {proc.pid}: {exc!r}")
        self._procs.clear()
        if self._created:
            for attempt in range(20):
                res = _run(["ip", "netns", "del", self.name], timeout=10, check=False)
                if res.returncode == 0 or not _netns_exists(self.name):
                    break
                if attempt == 19:
                    errors.append(f"ip netns del {self.name}: {res.stderr.strip()}")
                time.sleep(0.05)
            self._created = False
        if errors and raise_errors:
            raise HarnessError("namespace cleanup failed:\n" + "\n".join(errors))


# --------------------------------------------------------------------------- wg show


@dataclasses.dataclass(frozen=True)
class WgPeerStats:
    """One peer line of ``wg show IF dump``."""

    public_key: str
    preshared_key: str | None
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # unix seconds, 0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int  # seconds, 0 = off


@dataclasses.dataclass(frozen=True)
class WgDump:
    """Parsed ``wg show IF dump``: the interface line and one entry per peer."""

    private_key: str
    public_key: str
    listen_port: int
    fwmark: int
    peers: dict[str, WgPeerStats]

    @property
    def peer(self) -> WgPeerStats:
        """The only peer (client configurations have exactly one)."""
        if len(self.peers) != 1:
            raise HarnessError(f"expected exactly one peer, found {len(self.peers)}")
        return next(iter(self.peers.values()))

    @classmethod
    def parse(cls, text: str) -> WgDump:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise HarnessError("empty wg show dump")
        f = lines[0].split("\t")
        if len(f) != 4:
            raise HarnessError(f"unexpected interface line in wg dump: {lines[0]!r}")
        peers: dict[str, WgPeerStats] = {}
        for line in lines[1:]:
            p = line.split("\t")
            if len(p) != 8:
                raise HarnessError(f"unexpected peer line in wg dump: {line!r}")
            peers[p[0]] = WgPeerStats(
                public_key=p[0],
                preshared_key=None if p[1] == "(none)" else p[1],
                endpoint=None if p[2] == "(none)" else p[2],
                allowed_ips=() if p[3] == "(none)" else tuple(p[3].split(",")),
                latest_handshake=int(p[4]),
                rx_bytes=int(p[5]),
                tx_bytes=int(p[6]),
                persistent_keepalive=0 if p[7] == "off" else int(p[7]),
            )
        return cls(
            private_key=f[0],
            public_key=f[1],
            listen_port=int(f[2]),
            fwmark=0 if f[3] == "off" else int(f[3], 0),
            peers=peers,
        )


# --------------------------------------------------------------------------- wg client


_PING_RE = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


class WgClient(_Diagnosable):
    """A stock WireGuard client (wireguard-go + wg) whose TUN sits in its own namespace.

    See the module docstring for why wireguard-go runs in the root namespace while its
    interface is moved into the test's namespace.  The same class serves as the "server"
    side in harness self-tests: pass ``endpoint_port=None`` and let it learn the endpoint
    from the first handshake.

    Parameters
    ----------
    private_key, server_public_key:
        32-byte keys, raw or base64.
    endpoint_port:
        UDP port of the peer on ``endpoint_host`` (a 127.0.0.0/8 address); None = no endpoint.
    address:
        Tunnel address(es) of the interface, e.g. ``"10.77.0.2/32"``.
    allowed_ips:
        CIDRs routed through the tunnel inside the namespace, and the peer's allowed-ips
        unless ``peer_allowed_ips`` says otherwise.  ``0.0.0.0/0`` is the default route.
    mtu:
        Interface MTU, set before the move so wireguard-go sees it.
    preshared_key, keepalive:
        Optional PSK (raw or base64); persistent keepalive seconds (0 = off).  A nonzero
        keepalive makes wireguard-go handshake right away instead of on first traffic.
    listen_port:
        0 = kernel's choice; read it back with :meth:`udp_port`.
    """

    def __init__(
        self,
        private_key: bytes | str,
        server_public_key: bytes | str,
        endpoint_port: int | None,
        address: str | Sequence[str] = "10.77.0.2/32",
        allowed_ips: Sequence[str] = ("0.0.0.0/0",),
        *,
        mtu: int = 1420,
        preshared_key: bytes | str | None = None,
        keepalive: int = 0,
        listen_port: int = 0,
        endpoint_host: str = "127.0.0.1",
        peer_allowed_ips: Sequence[str] | None = None,
        log_level: str = "debug",
    ) -> None:
        if not ipaddress.ip_address(endpoint_host).is_loopback:
            raise ValueError("this machine's rule: WireGuard endpoints must be on 127.0.0.0/8")
        self.private_key = key_to_base64(private_key)
        self.public_key = public_key_of(self.private_key)
        self.server_public_key = key_to_base64(server_public_key)
        self.endpoint_port = endpoint_port
        self.endpoint_host = endpoint_host
        self.addresses = [address] if isinstance(address, str) else list(address)
        self.allowed_ips = list(allowed_ips)
        self.peer_allowed_ips = list(peer_allowed_ips or allowed_ips)
        self.mtu = mtu
        self.preshared_key = None if preshared_key is None else key_to_base64(preshared_key)
        self.keepalive = keepalive
        self.listen_port = listen_port
        self.log_level = log_level

        self.interface = unique_name("i", _link_exists)
        self.namespace = Namespace()
        self.last_ping_output = ""
        # created on __enter__, so a client that is built but never entered leaks nothing
        self._tmpdir: Path | None = None
        self.log_path = Path("/nonexistent")
        self._log_file: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._final_diag: str | None = None
        self._closed = False

    # ---- lifecycle

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise HarnessError("wireguard-go is not running")
        return self._proc.pid

    @property
    def socket_path(self) -> Path:
        return WG_SOCKET_DIR / f"{self.interface}.sock"

    def __enter__(self) -> Self:
        if self._closed or self._proc is not None:
            raise HarnessError("a WgClient can be entered only once")
        self._register()
        try:
            self._start()
        except BaseException:
            self.close(raise_errors=False)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(raise_errors=exc_type is None)

    def _start(self) -> None:
        self._tmpdir = Path(tempfile.mkdtemp(prefix=f"{self.interface}-"))
        self.log_path = self._tmpdir / "wireguard-go.log"
        self.namespace.__enter__()
        env = dict(os.environ, LOG_LEVEL=self.log_level, WG_PROCESS_FOREGROUND="1")
        self._log_file = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            ["wireguard-go", "-f", self.interface],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_pdeathsig(signal.SIGKILL),
        )
        deadline = time.monotonic() + 5.0
        while not self.socket_path.exists():
            if self._proc.poll() is not None:
                raise HarnessError(
                    f"wireguard-go exited with {self._proc.returncode} before its UAPI "
                    f"socket appeared\n{self._log_section()}"
                )
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"no UAPI socket {self.socket_path} after 5s\n{self._log_section()}"
                )
            time.sleep(0.01)

        ctx = self._log_section
        # MTU first, in the root namespace, so wireguard-go's netlink listener sees it.
        _run(
            ["ip", "link", "set", self.interface, "mtu", str(self.mtu)],
            timeout=10,
            check=True,
            context=ctx,
        )
        _run(
            ["ip", "link", "set", self.interface, "netns", self.namespace.name],
            timeout=10,
            check=True,
            context=ctx,
        )
        ns = self.namespace
        for addr in self.addresses:
            extra = ["nodad"] if ipaddress.ip_interface(addr).version == 6 else []
            ns.ip("addr", "add", addr, "dev", self.interface, *extra)
        # No IPv6 link-local address: otherwise the guest sends router solicitations and
        # MLD reports into the tunnel, noise a router test would have to filter out.
        ns.ip("link", "set", self.interface, "addrgenmode", "none")
        ns.ip("link", "set", self.interface, "mtu", str(self.mtu), "up")
        for cidr in self.allowed_ips:
            family = "-6" if ipaddress.ip_network(cidr, strict=False).version == 6 else "-4"
            ns.ip(family, "route", "replace", cidr, "dev", self.interface)
        self._configure()

    def _configure(self) -> None:
        """Apply keys and the peer with one ``wg set`` (keys via 0600 temp files)."""
        assert self._tmpdir is not None
        key_file = self._tmpdir / "private.key"
        key_file.write_text(self.private_key + "\n")
        key_file.chmod(0o600)
        cmd = [
            "wg",
            "set",
            self.interface,
            "private-key",
            str(key_file),
            "listen-port",
            str(self.listen_port),
            "peer",
            self.server_public_key,
        ]
        if self.preshared_key is not None:
            psk_file = self._tmpdir / "preshared.key"
            psk_file.write_text(self.preshared_key + "\n")
            psk_file.chmod(0o600)
            cmd += ["preshared-key", str(psk_file)]
        if self.endpoint_port is not None:
            cmd += ["endpoint", f"{self.endpoint_host}:{self.endpoint_port}"]
        cmd += ["allowed-ips", ",".join(self.peer_allowed_ips)]
        cmd += ["persistent-keepalive", str(self.keepalive) if self.keepalive else "off"]
        _run(cmd, timeout=10, check=True, context=self._log_section)

    def close(self, raise_errors: bool = True) -> None:
        """Tear everything down in an order that cannot leak; idempotent.

        wireguard-go first (its exit destroys the TUN, wherever it lives), then the
        namespace, then leftovers of an abnormal exit: a root-namespace interface if the
        move never happened, a stale UAPI socket after SIGKILL, the temp directory.
        """
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._final_diag = self._diagnostics_live()
            try:
                _stop_process(self._proc, timeout=3.0, group=True)
            except Exception as exc:
                errors.append(f"stopping wireguard-go pid {self._proc.pid}: {exc!r}")
        try:
            self.namespace.close()
        except Exception as exc:
            errors.append(str(exc))
        if (SYS_NET / self.interface).exists():
            res = _run(["ip", "link", "del", self.interface], timeout=10, check=False)
            if res.returncode != 0 and (SYS_NET / self.interface).exists():
                errors.append(f"ip link del {self.interface}: {res.stderr.strip()}")
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._proc is not None:
            self._final_diag = (self._final_diag or "") + "\n" + self._log_section()
        self._unregister()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        if errors and raise_errors:
            raise HarnessError("WgClient cleanup failed:\n" + "\n".join(errors))

    # ---- diagnostics

    def log(self) -> str:
        """wireguard-go's output so far (tail)."""
        return _tail(self.log_path)

    def _log_section(self) -> str:
        return f"--- wireguard-go {self.interface} log ---\n{self.log()}"

    def _diag_title(self) -> str:
        return f"wg client {self.interface} (ns {self.namespace.name})"

    def _diagnostics_live(self) -> str:
        parts = []
        for title, cmd in (
            ("wg show", ["wg", "show", self.interface]),
            ("ip addr", ["ip", "-n", self.namespace.name, "addr"]),
            ("ip route", ["ip", "-n", self.namespace.name, "route"]),
        ):
            res = _run(cmd, timeout=5, check=False)
            parts.append(f"--- {title} ---\n{(res.stdout + res.stderr).rstrip()}")
        return "\n".join(parts)

    def diagnostics(self) -> str:
        """State worth reading when a test fails: wg show, addresses, routes, the log.

        Use it as an assertion message: ``assert received == 20, client.diagnostics()``.
        """
        if self._final_diag is not None:
            return self._final_diag
        try:
            live = self._diagnostics_live()
        except Exception as exc:
            live = f"<state unavailable: {exc!r}>"
        return f"{live}\n{self._log_section()}"

    # ---- operations

    def run(
        self,
        cmd: Sequence[str],
        timeout: float = 10.0,
        *,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the client namespace; errors carry the wireguard-go log."""
        return self.namespace.run(
            cmd, timeout=timeout, check=check, input=input, context=self._log_section
        )

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a background command in the client namespace (killed at cleanup)."""
        return self.namespace.popen(cmd, **kwargs)

    def wg_show_dump(self) -> WgDump:
        """Parsed ``wg show IF dump`` (handshake time, rx/tx bytes per peer)."""
        out = _run(
            ["wg", "show", self.interface, "dump"],
            timeout=10,
            check=True,
            context=self._log_section,
        ).stdout
        return WgDump.parse(out)

    def udp_port(self) -> int:
        """wireguard-go's UDP listen port (bound on the wildcard, so on 127.0.0.1 too)."""
        out = _run(
            ["wg", "show", self.interface, "listen-port"],
            timeout=10,
            check=True,
            context=self._log_section,
        ).stdout
        return int(out.strip())

    def wait_handshake(self, timeout: float = 10.0, *, peer: str | None = None) -> WgPeerStats:
        """Poll until the peer shows a completed handshake; return its stats.

        wireguard-go only initiates when it has something to send: set ``keepalive`` or
        send traffic (e.g. a ping) first.  A retried initiation takes 5 s (REKEY_TIMEOUT),
        so timeouts shorter than that only cover the first attempt.
        """
        peer = key_to_base64(peer) if peer is not None else self.server_public_key
        deadline = time.monotonic() + timeout
        while True:
            stats = self.wg_show_dump().peers.get(peer)
            if stats is not None and stats.latest_handshake > 0:
                return stats
            if self._proc is not None and self._proc.poll() is not None:
                raise HarnessError(f"wireguard-go died\n{self.diagnostics()}")
            if time.monotonic() > deadline:
                raise HarnessError(f"no handshake within {timeout}s\n{self.diagnostics()}")
            time.sleep(0.05)

    def ping(
        self,
        addr: str,
        count: int = 5,
        interval: float = 0.2,
        timeout: float | None = None,
        *,
        wait: float = 1.0,
        size: int | None = None,
        dont_fragment: bool = False,
    ) -> tuple[int, int]:
        """Ping ``addr`` from the namespace; return (sent, received) from ping's summary.

        ``ping -c`` keeps the sent count exact (``-w`` would send extra probes to make up
        for losses).  On the overall ``timeout`` ping gets SIGINT first so it still prints
        its summary; the full output is kept in ``last_ping_output``.
        """
        if timeout is None:
            timeout = count * interval + wait + 5.0
        cmd = [
            *self.namespace.exec_prefix(),
            "ping",
            "-n",
            "-c",
            str(count),
            "-i",
            f"{interval:g}",
            "-W",
            f"{wait:g}",
        ]
        if size is not None:
            cmd += ["-s", str(size)]
        if dont_fragment:
            cmd += ["-M", "do"]
        cmd.append(addr)
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=_pdeathsig(signal.SIGKILL),
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                out, _ = proc.communicate(timeout=2.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
        self.last_ping_output = out
        m = _PING_RE.search(out)
        if m is None:
            raise HarnessError(
                f"cannot parse ping output (exit {proc.returncode}):\n{out}\n{self.diagnostics()}"
            )
        return int(m.group(1)), int(m.group(2))


# --------------------------------------------------------------------------- nft guard


class NftGuard(_Diagnosable):
    """Drop and count locally generated packets to an address, in the root namespace.

    For tests where the guest targets something the router must refuse (cloud metadata,
    host loopback ports): even if the router wrongly forwards, nothing leaves the host, and
    :meth:`count` tells the test whether the router tried.  The hook is ``output`` at a
    priority before conntrack/NAT, so it sees the router's host sockets' packets (not
    packets generated inside other namespaces).  ``drop=False`` only counts.  A dropped
    packet makes the sender's ``send`` fail with EPERM.
    """

    PRIORITY = -500

    def __init__(
        self,
        address: str,
        port: int | None = None,
        proto: str | None = None,
        *,
        drop: bool = True,
    ) -> None:
        net = ipaddress.ip_network(address, strict=False)
        if proto not in (None, "udp", "tcp", "icmp", "icmpv6"):
            raise ValueError(f"unsupported proto {proto!r}")
        if port is not None and proto in ("icmp", "icmpv6"):
            raise ValueError("ports make no sense for ICMP")
        self.address = str(net)
        self.port = port
        self.proto = proto
        self.drop = drop
        self.table = unique_name("t", _nft_table_exists)
        fam = "ip6" if net.version == 6 else "ip"
        match = [fam, "daddr", str(net)]
        if proto in ("icmp", "icmpv6"):
            match += ["meta", "l4proto", proto]
        if port is not None:
            match += (
                [proto, "dport", str(port)]
                if proto
                else ["meta", "l4proto", "{", "tcp,", "udp", "}", "th", "dport", str(port)]
            )
        elif proto in ("tcp", "udp"):
            match += ["meta", "l4proto", proto]
        self.rule = " ".join([*match, "counter", "name", "hits", *(["drop"] if drop else [])])
        self._created = False

    def __enter__(self) -> Self:
        script = (
            f"table inet {self.table} {{\n"
            f"  counter hits {{ }}\n"
            f"  chain out {{\n"
            f"    type filter hook output priority {self.PRIORITY}; policy accept;\n"
            f"    {self.rule}\n"
            f"  }}\n"
            f"}}\n"
        )
        _run(["nft", "-f", "-"], input=script, timeout=10, check=True)
        self._created = True
        self._register()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(raise_errors=exc_type is None)

    def counts(self) -> tuple[int, int]:
        """(packets, bytes) matched so far."""
        out = _run(
            ["nft", "-j", "list", "counter", "inet", self.table, "hits"], timeout=10, check=True
        ).stdout
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"]), int(item["counter"]["bytes"])
        raise HarnessError(f"no counter in nft output: {out}")

    def count(self) -> int:
        """Packets matched so far."""
        return self.counts()[0]

    def _diag_title(self) -> str:
        return f"nft guard {self.table}"

    def diagnostics(self) -> str:
        try:
            pkts, nbytes = self.counts()
            return f"rule: {self.rule}\nmatched {pkts} packets, {nbytes} bytes"
        except Exception as exc:
            return f"rule: {self.rule}\n<counter unavailable: {exc!r}>"

    def close(self, raise_errors: bool = True) -> None:
        if not self._created:
            return
        self._unregister()
        res = _run(["nft", "delete", "table", "inet", self.table], timeout=10, check=False)
        self._created = False
        if res.returncode != 0 and raise_errors:
            raise HarnessError(f"nft delete table {self.table}: {res.stderr.strip()}")


# --------------------------------------------------------------------------- router process


class RouterProcess(_Diagnosable):
    """A subprocess in its own process group with captured output; knows nothing of wgslirp.

    ``env`` is added to the inherited environment (``inherit_env=False`` uses it alone);
    ``PYTHONUNBUFFERED=1`` is set unless given, so :meth:`wait_for_line` sees prints at once.
    The process gets SIGTERM if the test process dies, letting it stop its own children.
    Cleanup always SIGKILLs the process group (PGID = our child's PID, signalled while the
    leader is still unreaped so the ID cannot have been recycled).
    """

    def __init__(
        self,
        cmd: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        cwd: str | os.PathLike[str] | None = None,
        inherit_env: bool = True,
        name: str = "router",
    ) -> None:
        self.cmd = list(cmd)
        base = dict(os.environ) if inherit_env else {}
        base.setdefault("PYTHONUNBUFFERED", "1")
        self.env = {**base, **(env or {})}
        self.cwd = cwd
        self.name = name
        self._tmpdir: Path | None = None
        self.stdout_path = Path("/nonexistent")
        self.stderr_path = Path("/nonexistent")
        self._proc: subprocess.Popen[bytes] | None = None
        self._final_output: str | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Spawn the command; output goes to files in a private temp directory."""
        if self._proc is not None:
            raise HarnessError(f"{self.name} already started")
        self._tmpdir = Path(tempfile.mkdtemp(prefix=f"{unique_name('r')}-{self.name}-"))
        self.stdout_path = self._tmpdir / "stdout.log"
        self.stderr_path = self._tmpdir / "stderr.log"
        try:
            with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
                self._proc = subprocess.Popen(
                    self.cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                    preexec_fn=_pdeathsig(signal.SIGTERM),
                )
        except BaseException:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise
        self._register()

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise HarnessError(f"{self.name} was not started")
        return self._proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit code if the process has exited (negative = signal), else None."""
        return _peek_exit(self.proc)

    def stdout(self) -> str:
        return _read_text(self.stdout_path)

    def stderr(self) -> str:
        return _read_text(self.stderr_path)

    def output(self) -> str:
        """stdout then stderr, labelled (the two files are not interleaved)."""
        if self._final_output is not None:
            return self._final_output
        return (
            f"--- {self.name} stdout ---\n{_tail(self.stdout_path)}\n"
            f"--- {self.name} stderr ---\n{_tail(self.stderr_path)}"
        )

    def mark(self) -> tuple[int, int]:
        """Current (stdout, stderr) sizes: pass as ``since`` to wait for *new* lines only."""
        return (_size(self.stdout_path), _size(self.stderr_path))

    def wait_for_line(
        self,
        pattern: str | re.Pattern[str],
        timeout: float = 10.0,
        *,
        since: tuple[int, int] = (0, 0),
    ) -> re.Match[str]:
        """Wait until a complete line of stdout or stderr matches ``pattern`` (``re.search``).

        Lines before ``since`` (from :meth:`mark`) are ignored, so a test can wait for e.g.
        a second "worker started" after killing a worker.  Each byte is scanned once.
        Raises with the captured output if the process exits first or time runs out.
        """
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern)
        paths = (self.stdout_path, self.stderr_path)
        pos = list(since)
        deadline = time.monotonic() + timeout
        while True:
            exited = self.returncode is not None  # sample before reading: no line is missed
            for i, path in enumerate(paths):
                with path.open("rb") as f:
                    f.seek(pos[i])
                    data = f.read()
                # a line still being written is scanned once complete (or at exit)
                cut = len(data) if exited else data.rfind(b"\n") + 1
                for line in data[:cut].decode("utf-8", "replace").splitlines():
                    m = rx.search(line)
                    if m is not None:
                        return m
                pos[i] += cut
            if exited:
                raise HarnessError(
                    f"{self.name} exited with {self.returncode} before printing a line "
                    f"matching {rx.pattern!r}\n{self.output()}"
                )
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"no line matching {rx.pattern!r} from {self.name} within {timeout}s\n"
                    f"{self.output()}"
                )
            time.sleep(0.02)

    def group_pids(self) -> list[int]:
        """Live (non-zombie) processes still in our process group, e.g. leaked workers."""
        return _group_members(self.pid)

    def send_signal(self, sig: int) -> None:
        """Signal the main process only (not the group)."""
        if self.returncode is None:
            self.proc.send_signal(sig)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM the main process, wait up to ``timeout``, then SIGKILL the whole group.

        Only the main process gets SIGTERM, as a service manager would do; whether it
        stops its children is part of what tests check (see :meth:`group_pids`).
        Returns the exit code (negative = killed by that signal).  The process is not
        reaped here, so :meth:`close` can still safely kill leftovers of its group.
        """
        proc = self.proc
        rc = _peek_exit(proc)
        if rc is not None:
            return rc
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        rc = _peek_exit(proc, timeout)
        if rc is None:
            _kill_group(proc)
            rc = _peek_exit(proc, 5.0)
        if rc is None:
            raise HarnessError(f"{self.name} pid {proc.pid} survived SIGKILL\n{self.output()}")
        return rc

    def close(self) -> None:
        """Stop the process (if needed), SIGKILL whatever is left of its group, keep output."""
        if self._proc is None or self._final_output is not None:
            return
        try:
            self.terminate(timeout=5.0)
        finally:
            _kill_group(self._proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            self._final_output = self.output()
            self._unregister()
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)

    def _diag_title(self) -> str:
        return f"{self.name} pid {self._proc.pid if self._proc else '-'}"

    def diagnostics(self) -> str:
        rc = self.returncode if self._proc else None
        return f"command: {' '.join(self.cmd)}\nexit: {rc}\n{self.output()}"


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# --------------------------------------------------------------------------- stale sweep


def _stale(name: str) -> bool:
    m = _NAME_RE.match(name)
    return m is not None and not _pid_alive(int(m.group(1), 16))


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
                and _run(["ip", "netns", "del", entry.name], timeout=10, check=False).returncode
                == 0
            ):
                removed.append(f"netns {entry.name}")
    if SYS_NET.is_dir():
        for entry in SYS_NET.iterdir():
            if (
                _stale(entry.name)
                and _run(["ip", "link", "del", entry.name], timeout=10, check=False).returncode == 0
            ):
                removed.append(f"link {entry.name}")
    res = _run(["nft", "list", "tables", "inet"], timeout=10, check=False)
    for line in res.stdout.splitlines():
        parts = line.split()
        if (
            len(parts) == 3
            and _stale(parts[2])
            and _run(
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
