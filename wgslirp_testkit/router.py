"""The router as a child process: starting it, its client configuration, its exit counters.

:class:`RouterProcess` knows nothing of wgslirp (harness self-tests run plain scripts in
it); the functions below it know how wgslirp announces itself, prints the client
configuration and logs its counters when it stops, so tests and benchmarks read those one
way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from wgslirp_testkit.diagnostics import Diagnosable
from wgslirp_testkit.netns import ipv6_unavailable, unique_name
from wgslirp_testkit.proc import (
    HarnessError,
    file_size,
    group_members,
    kill_group,
    pdeathsig,
    peek_exit,
    read_text,
    tail,
)
from wgslirp_testkit.wgclient import WgClient, wait_tunnel

#: The checkout this testkit belongs to (with an editable install or PYTHONPATH): where a
#: benchmark's router runs from unless it is given other code.
REPO = Path(__file__).resolve().parent.parent


class RouterProcess(Diagnosable):
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
                    preexec_fn=pdeathsig(signal.SIGTERM),
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
        return peek_exit(self.proc)

    def stdout(self) -> str:
        return read_text(self.stdout_path)

    def stderr(self) -> str:
        return read_text(self.stderr_path)

    def output(self) -> str:
        """stdout then stderr, labelled (the two files are not interleaved)."""
        if self._final_output is not None:
            return self._final_output
        return (
            f"--- {self.name} stdout ---\n{tail(self.stdout_path)}\n"
            f"--- {self.name} stderr ---\n{tail(self.stderr_path)}"
        )

    def mark(self) -> tuple[int, int]:
        """Current (stdout, stderr) sizes: pass as ``since`` to wait for *new* lines only."""
        return (file_size(self.stdout_path), file_size(self.stderr_path))

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
        return group_members(self.pid)

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
        rc = peek_exit(proc)
        if rc is not None:
            return rc
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        rc = peek_exit(proc, timeout)
        if rc is None:
            kill_group(proc)
            rc = peek_exit(proc, 5.0)
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
            kill_group(self._proc)
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


# --------------------------------------------------------------------------- wgslirp

GATEWAY = "10.77.0.1"
GATEWAY6 = "fd77::1"  # the zero-config client's IPv6 gateway (WG_GATEWAY_IP6)
LISTENING = r"listening on 127\.0\.0\.1:\d+"
_TOTALS = re.compile(r"stopped; totals: (\{.*\})")
EXIT_COUNTERS = re.compile(r"(ingress|worker \d+) stopped; counters: (\{.*\})")


def router_cmd(*extra: str) -> list[str]:
    return [sys.executable, "-m", "wgslirp", *extra]


def base_env(tmp_path: Path, port: int, workers: int = 2) -> dict[str, str]:
    """A router of its own: fresh state directory, loopback listen port, worker count."""
    return {
        "WGSLIRP_STATE_DIR": str(tmp_path / "state"),
        "WG_LISTEN_ADDR": "127.0.0.1",
        "WG_LISTEN_PORT": str(port),
        "PROCESSOR_WORKERS": str(workers),
    }


@contextlib.contextmanager
def router(env: dict[str, str], *args: str) -> Iterator[RouterProcess]:
    with RouterProcess(router_cmd(*args), env) as r:
        r.wait_for_line(LISTENING, timeout=20)
        yield r


def router_cwd(env: dict[str, str], code_dir: str | None) -> str:
    """Where to start a benchmark's router: the repository, or ``code_dir`` (a ``--rev``
    snapshot or a ``--code`` copy), which then also goes first on the PYTHONPATH in ``env``.
    ``python -m wgslirp`` finds the package in its working directory first."""
    if code_dir is None:
        return str(REPO)
    env["PYTHONPATH"] = os.pathsep.join([code_dir, *filter(None, [os.environ.get("PYTHONPATH")])])
    return code_dir


# --------------------------------------------------------------------------- exit counters


def counters_of(output: str) -> dict[str, int]:
    """Every counter of the run, summed over the router's processes (its last line)."""
    m = _TOTALS.search(output)
    assert m, output
    totals: dict[str, int] = json.loads(m.group(1))
    return totals


def stop_and_counters(r: RouterProcess) -> dict[str, int]:
    assert r.terminate(timeout=5) == 0, r.output()
    return counters_of(r.output())


def parse_exit_counters(output: str) -> dict[str, dict[str, int]]:
    """``ingress``/``worker N`` -> the counters it logged when it stopped."""
    return {m.group(1): json.loads(m.group(2)) for m in EXIT_COUNTERS.finditer(output)}


def exit_counters(output: str) -> dict[str, dict[str, int]]:
    """Per-role counters logged at exit, plus ``totals`` (the router's one summed line, where
    it prints one)."""
    out = parse_exit_counters(output)
    m = _TOTALS.search(output)
    if m is not None:
        out["totals"] = json.loads(m.group(1))
    return out


def summed_exit_counters(output: str) -> dict[str, int]:
    """The integer counters of every per-process exit line, added up."""
    total: dict[str, int] = {}
    for counters in parse_exit_counters(output).values():
        for k, v in counters.items():
            if isinstance(v, int):
                total[k] = total.get(k, 0) + v
    return total


# --------------------------------------------------------------------------- the client


def parse_client_config(text: str) -> dict[str, str]:
    """``Key = value`` lines of a wg-quick configuration (the router's output or a file):
    sections flattened, since a client configuration's keys are distinct; comments dropped."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if "=" in line and not line.startswith("["):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def client_from_router_output(r: RouterProcess, port: int, **kw: object) -> WgClient:
    """The wireguard-go client of the configuration a started router printed."""
    r.wait_for_line(r"^PersistentKeepalive", timeout=5)
    cfg = parse_client_config(r.stdout())
    # zero-config: an IPv4 and an IPv6 tunnel address (docs/configuration.md); on a host
    # with IPv6 off the guest gets the IPv4 one only (its namespace could not take the other)
    addresses = [a.strip() for a in cfg["Address"].split(",")]
    assert addresses == ["10.77.0.2/32", "fd77::2/128"], cfg["Address"]
    if ipv6_unavailable() is not None:
        addresses = addresses[:1]
    assert cfg["Endpoint"].endswith(f":{port}")
    return WgClient(
        cfg["PrivateKey"],
        cfg["PublicKey"],
        port,
        address=addresses,
        allowed_ips=kw.pop("allowed_ips", ("10.77.0.0/24",)),  # type: ignore[arg-type]
        mtu=kw.pop("mtu", int(cfg["MTU"])),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def pinged_client(router: RouterProcess, port: int, **kw: object) -> Iterator[WgClient]:
    """The wireguard-go client of a started ``router`` listening on 127.0.0.1:``port``, once
    a ping through the tunnel got an answer and the handshake is done; ``kw`` go to
    `client_from_router_output` (``allowed_ips=...``)."""
    with client_from_router_output(router, port, log_level="error", **kw) as c:
        wait_tunnel(c, GATEWAY, interval=0.1)
        yield c


def two_peer_env(
    tmp_path: Path, port: int, server: str, a: str, b: str, **extra: str
) -> dict[str, str]:
    """A router with two configured peers (keys as base64 text): 10.77.0.2 and 10.77.0.3,
    the gateway at 10.77.0.1; `extra` adds or overrides settings."""
    return {
        "WGSLIRP_STATE_DIR": str(tmp_path / "state"),
        "WG_LISTEN_ADDR": "127.0.0.1",
        "WG_LISTEN_PORT": str(port),
        "WG_PRIVATE_KEY": server,
        "WG_GATEWAY_IP": GATEWAY,
        "WG_PEERS": "0,1",
        "PROCESSOR_WORKERS": "2",
        "WG_PEER_0_PUBLIC_KEY": a,
        "WG_PEER_0_ALLOWED_IPS": "10.77.0.2/32",
        "WG_PEER_1_PUBLIC_KEY": b,
        "WG_PEER_1_ALLOWED_IPS": "10.77.0.3/32",
        **extra,
    }


def one_peer_env(
    state_dir: Path, port: int, server: str, peer: str, guest: str, **extra: str
) -> dict[str, str]:
    """A router on 127.0.0.1:`port` with one configured peer (keys as base64 text) whose
    tunnel address is `guest`/32, the gateway at 10.77.0.1; `extra` adds or overrides."""
    return {
        "WGSLIRP_STATE_DIR": str(state_dir),
        "WG_LISTEN_ADDR": "127.0.0.1",
        "WG_LISTEN_PORT": str(port),
        "WG_PRIVATE_KEY": server,
        "WG_GATEWAY_IP": GATEWAY,
        "WG_PEERS": "0",
        "WG_PEER_0_PUBLIC_KEY": peer,
        "WG_PEER_0_ALLOWED_IPS": f"{guest}/32",
        **extra,
    }


@contextlib.contextmanager
def one_peer_router(
    peer_private: bytes, guest: str, *, workers: int, mtu: int, code_dir: str | None, prefix: str
) -> Iterator[tuple[RouterProcess, int, bytes]]:
    """A router as `one_peer_env` describes, with a fresh key on a free UDP port, its
    WG_MTU and PROCESSOR_WORKERS set, run from `code_dir` if given (router_cwd); yields
    (process, port, the router's public key) once it listens. For the benchmarks that
    measure one router against one peer."""
    from wgslirp.keys import generate_private_key, public_key
    from wgslirp_testkit.keys import key_to_base64
    from wgslirp_testkit.ports import free_udp_port

    server = generate_private_key()
    port = free_udp_port()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        env = one_peer_env(
            Path(tmp) / "state",
            port,
            key_to_base64(server),
            key_to_base64(public_key(peer_private)),
            guest,
            WG_MTU=str(mtu),
            PROCESSOR_WORKERS=str(workers),
        )
        with RouterProcess(router_cmd(), env, cwd=router_cwd(env, code_dir)) as r:
            r.wait_for_line(LISTENING, timeout=30)
            yield r, port, public_key(server)


def guest_client(private: str, server_public: str, port: int, host: int, **kw: Any) -> WgClient:
    """A wireguard-go guest with tunnel address 10.77.0.`host` routing 10.77.0.0/24 to the
    router on 127.0.0.1:`port`."""
    kw.setdefault("allowed_ips", ("10.77.0.0/24",))
    return WgClient(private, server_public, port, address=f"10.77.0.{host}/32", **kw)


def effective_tcp_config(
    make_env: Callable[[Path], tuple[dict[str, str], str]],
) -> dict[str, Any] | None:
    """The TCP part of ``wgslirp check-config`` run with a benchmark's router code and
    environment (`make_env` gets a scratch state directory and returns env and cwd), or
    None if that fails: the benchmarks print it so a figure says what it measured."""
    tmp = Path(tempfile.mkdtemp(prefix="wgslirp-bench-cfg-"))
    try:
        env, cwd = make_env(tmp)
        r = subprocess.run(
            router_cmd("check-config"),
            env=os.environ | env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        tcp: dict[str, Any] = json.loads(r.stdout)["tcp"]
        return tcp
    except (OSError, ValueError, KeyError, TypeError, subprocess.TimeoutExpired):
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
