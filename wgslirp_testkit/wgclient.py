"""A stock WireGuard client (Debian's ``wireguard-go`` configured with ``wg``) whose TUN
sits in a namespace the test owns, so a test can send traffic "from a guest" without
touching any real network.

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
  worker are removed by ``netns.sweep_stale`` (only when the PID in their name is dead).
* An nft ``drop`` in the output hook makes ``sendto()`` fail with ``EPERM`` in the sender:
  the router will see that error when an ``nft.NftGuard`` catches its packet.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from wgslirp_testkit.diagnostics import Diagnosable
from wgslirp_testkit.keys import key_to_base64, public_key_of
from wgslirp_testkit.netns import SYS_NET, WG_SOCKET_DIR, Namespace, link_exists, unique_name
from wgslirp_testkit.proc import HarnessError, die_with_parent, run, stop_process, tail

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


# --------------------------------------------------------------------------- the client


def _endpoint_text(host: str, port: int) -> str:
    """host:port as wg(8) takes it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_PING_RE = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


class WgClient(Diagnosable):
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
        UDP port of the peer on ``endpoint_host`` (a 127.0.0.0/8 address or ::1); None = no
        endpoint.
    address:
        Tunnel address(es) of the interface, e.g. ``"10.77.0.2/32"`` or
        ``"10.77.0.2/32, fd77::2/128"``.
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
            raise ValueError("this machine's rule: WireGuard endpoints must be loopback")
        self.private_key = key_to_base64(private_key)
        self.public_key = public_key_of(self.private_key)
        self.server_public_key = key_to_base64(server_public_key)
        self.endpoint_port = endpoint_port
        self.endpoint_host = endpoint_host
        # a string may list several, as a wg-quick Address line does ("a/32, b/128")
        self.addresses = (
            [a.strip() for a in address.split(",")] if isinstance(address, str) else list(address)
        )
        self.allowed_ips = list(allowed_ips)
        self.peer_allowed_ips = list(peer_allowed_ips or allowed_ips)
        self.mtu = mtu
        self.preshared_key = None if preshared_key is None else key_to_base64(preshared_key)
        self.keepalive = keepalive
        self.listen_port = listen_port
        self.log_level = log_level

        self.interface = unique_name("i", link_exists)
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
            preexec_fn=die_with_parent,
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
        run(
            ["ip", "link", "set", self.interface, "mtu", str(self.mtu)],
            timeout=10,
            check=True,
            context=ctx,
        )
        run(
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
            cmd += ["endpoint", _endpoint_text(self.endpoint_host, self.endpoint_port)]
        cmd += ["allowed-ips", ",".join(self.peer_allowed_ips)]
        cmd += ["persistent-keepalive", str(self.keepalive) if self.keepalive else "off"]
        run(cmd, timeout=10, check=True, context=self._log_section)

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
                stop_process(self._proc, timeout=3.0, group=True)
            except Exception as exc:
                errors.append(f"stopping wireguard-go pid {self._proc.pid}: {exc!r}")
        try:
            self.namespace.close()
        except Exception as exc:
            errors.append(str(exc))
        if (SYS_NET / self.interface).exists():
            res = run(["ip", "link", "del", self.interface], timeout=10, check=False)
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
        return tail(self.log_path)

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
            res = run(cmd, timeout=5, check=False)
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

    def set_endpoint(self, host: str, port: int) -> None:
        """Point the client at another endpoint of the router (``wg set ... endpoint``), e.g.
        from 127.0.0.1 to ::1: its next packet leaves from wireguard-go's socket of that
        family, which the router sees as the peer roaming."""
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError("this machine's rule: WireGuard endpoints must be loopback")
        self.endpoint_host, self.endpoint_port = host, port
        cmd = ["wg", "set", self.interface, "peer", self.server_public_key]
        cmd += ["endpoint", _endpoint_text(host, port)]
        run(cmd, timeout=10, check=True, context=self._log_section)

    def wg_show_dump(self) -> WgDump:
        """Parsed ``wg show IF dump`` (handshake time, rx/tx bytes per peer)."""
        out = run(
            ["wg", "show", self.interface, "dump"],
            timeout=10,
            check=True,
            context=self._log_section,
        ).stdout
        return WgDump.parse(out)

    def udp_port(self) -> int:
        """wireguard-go's UDP listen port (bound on the wildcard, so on 127.0.0.1 too)."""
        out = run(
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
            preexec_fn=die_with_parent,
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


def wait_tunnel(c: WgClient, address: str, interval: float = 0.2) -> None:
    """Return once a ping to ``address`` through the tunnel was answered and the handshake
    shows: traffic measured before that would time the handshake, not the router."""
    _sent, got = c.ping(address, count=3, interval=interval)
    if got == 0:
        raise RuntimeError(f"no ping reply from {address} through the tunnel\n{c.diagnostics()}")
    c.wait_handshake(10)


def first_reply_after(c: WgClient, address: str, limit: float) -> float | None:
    """Seconds until a ping of ``address`` through the tunnel is answered, or None within
    ``limit`` (one probe at a time, so the answer is the first one)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if c.ping(address, count=1, interval=0.1, wait=0.3)[1]:
            return time.monotonic() - t0
    return None


# --------------------------------------------------------------------------- socket buffers

SYS_PIDFD_GETFD = 438  # the same number on every architecture (new syscalls are unified)
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # Linux; Python's socket module lacks the names


def grow_client_buffers(pid: int, port: int, size: int) -> str:
    """Give wireguard-go's UDP socket(s) on ``port`` ``size``-byte buffers; what was done.

    wireguard-go sets 7 MiB socket buffers itself since 0.0.20230223; Debian's older build
    keeps the kernel default (about 208 KiB), so under a burst from the router the *client's*
    socket drops datagrams: TCP recovers, the UDP flows of a load test count them as lost.
    A copy of the socket taken with pidfd_getfd(2) is the same socket, so setting the size
    on it resizes the client's own; only a process we started is touched.
    """
    inodes = _udp_inodes_on_port(port)
    if not inodes:
        return f"wireguard-go socket buffers left as they are (no socket on port {port})"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    done = 0
    pidfd = os.pidfd_open(pid)
    try:
        for entry in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{entry}")
            except OSError:
                continue
            m = re.fullmatch(r"socket:\[(\d+)\]", link)
            if m is None or int(m.group(1)) not in inodes:
                continue
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(entry), 0)
            if fd < 0:
                err = ctypes.get_errno()
                return f"wireguard-go socket buffers left as they are ({os.strerror(err)})"
            with socket.socket(fileno=fd) as dup:
                dup.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
                dup.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size)
            done += 1
    finally:
        os.close(pidfd)
    return f"wireguard-go socket buffers set to {size >> 10} KiB ({done} sockets)"


def _udp_inodes_on_port(port: int) -> set[int]:
    """Inodes of the root namespace's UDP sockets (IPv4 and IPv6) bound to ``port``."""
    found: set[int] = set()
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[1].rpartition(":")[2] == f"{port:04X}":
                found.add(int(f[9]))
    return found


def reference_pair(
    stack: contextlib.ExitStack,
    net: tuple[str, str],
    mtu: int,
    net6: tuple[str, str] | None = None,
) -> tuple[WgClient, WgClient]:
    """Two stock wireguard-go instances in namespaces of their own, tunnel addresses
    `net` = (server, client), and `net6` as well when given: the kernel-TCP reference the
    benchmarks measure beside the router. Returns (server side, client side) once a ping
    crossed the tunnel; both are closed with `stack`."""
    from wgslirp_testkit.keys import generate_keypair

    srv_ip, cli_ip = net
    srv_addrs, cli_addrs = [f"{srv_ip}/32"], [f"{cli_ip}/32"]
    if net6 is not None:
        srv_addrs.append(f"{net6[0]}/128")
        cli_addrs.append(f"{net6[1]}/128")
    ka, kb = generate_keypair(), generate_keypair()
    b = stack.enter_context(
        WgClient(
            kb.private,
            ka.public,
            None,
            address=srv_addrs,
            allowed_ips=tuple(cli_addrs),
            mtu=mtu,
            log_level="error",
        )
    )
    c = stack.enter_context(
        WgClient(
            ka.private,
            kb.public,
            b.udp_port(),
            address=cli_addrs,
            allowed_ips=tuple(srv_addrs),
            mtu=mtu,
            keepalive=25,
            log_level="error",
        )
    )
    _sent, got = c.ping(srv_ip, count=3, interval=0.1)
    if got == 0:
        raise HarnessError(f"reference tunnel: no ping reply\n{c.diagnostics()}")
    return b, c
