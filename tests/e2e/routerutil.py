"""Starting the real router for e2e tests and reading the counters it prints at exit."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import RouterProcess, WgClient

GATEWAY = "10.77.0.1"
_TOTALS = re.compile(r"stopped; totals: (\{.*\})")


def router_cmd(*extra: str) -> list[str]:
    return [sys.executable, "-m", "wgslirp", *extra]


def base_env(tmp_path: Path, port: int, workers: int = 2) -> dict[str, str]:
    return {
        "WGSLIRP_STATE_DIR": str(tmp_path / "state"),
        "WG_LISTEN_ADDR": "127.0.0.1",
        "WG_LISTEN_PORT": str(port),
        "PROCESSOR_WORKERS": str(workers),
    }


@contextmanager
def router(env: dict[str, str], *args: str) -> Iterator[RouterProcess]:
    with RouterProcess(router_cmd(*args), env) as r:
        r.wait_for_line(r"listening on 127\.0\.0\.1:\d+", timeout=20)
        yield r


def counters_of(output: str) -> dict[str, int]:
    """Every counter of the run, summed over the router's processes (its last line)."""
    m = _TOTALS.search(output)
    assert m, output
    totals: dict[str, int] = json.loads(m.group(1))
    return totals


def stop_and_counters(r: RouterProcess) -> dict[str, int]:
    assert r.terminate(timeout=5) == 0, r.output()
    return counters_of(r.output())


def parse_client_config(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def client_from_router_output(r: RouterProcess, port: int, **kw: object) -> WgClient:
    r.wait_for_line(r"^PersistentKeepalive", timeout=5)
    cfg = parse_client_config(r.stdout())
    assert cfg["Address"] == "10.77.0.2/32"
    assert cfg["Endpoint"].endswith(f":{port}")
    return WgClient(
        cfg["PrivateKey"],
        cfg["PublicKey"],
        port,
        address=cfg["Address"],
        allowed_ips=kw.pop("allowed_ips", ("10.77.0.0/24",)),  # type: ignore[arg-type]
        mtu=int(cfg["MTU"]),
        **kw,
    )  # type: ignore[arg-type]
