"""N wgslirp replicas sharing one key and one peer file, as a Kubernetes Deployment runs
them: the file laid out the way kubelet mounts a Secret (updated by a `..data` symlink
swap), each replica on its own loopback port with its own metrics listener, and each
replica's per-peer handshake counters read from its /metrics. Used by
tests/e2e/test_replicas_e2e.py and scripts/bench_failover.py; the balancer in front is
:class:`wgslirp_testkit.balancer.UdpBalancer`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path

from wgslirp.obs.http import http_get
from wgslirp_testkit.keys import KeyPair
from wgslirp_testkit.netns import WG_SOCKET_DIR, link_exists, unique_name
from wgslirp_testkit.ports import free_tcp_port
from wgslirp_testkit.proc import HarnessError, peek_exit
from wgslirp_testkit.router import GATEWAY, RouterProcess, router_cmd

_HANDSHAKES = re.compile(r'^wgslirp_peer_handshakes_total\{public_key="([^"]+)"\} (\d+)', re.M)


def conf_text(server: KeyPair, peers: list[KeyPair]) -> str:
    """The shared wg-quick file: the router's key and peer i at 10.77.0.(2+i)."""
    text = f"[Interface]\nPrivateKey = {server.private}\n"
    for i, p in enumerate(peers):
        text += f"\n[Peer]\nPublicKey = {p.public}\nAllowedIPs = 10.77.0.{2 + i}/32\n"
    return text


def publish(secret_dir: Path, version: int, text: str) -> None:
    """kubelet's update of a mounted Secret: a new directory, then `..data` swapped to it."""
    d = secret_dir / f"..v{version}"
    d.mkdir()
    (d / "wg0.conf").write_text(text)
    (d / "wg0.conf").chmod(0o600)
    tmp = secret_dir / "..data_tmp"
    tmp.symlink_to(d.name)
    tmp.replace(secret_dir / "..data")
    if not (secret_dir / "wg0.conf").is_symlink():
        (secret_dir / "wg0.conf").symlink_to("..data/wg0.conf")


class Cluster:
    """Replica i listens on 127.0.0.1:ports[i] and reads secret/wg0.conf, which it polls
    for changes every 200 ms. Processes are entered on the caller's ExitStack."""

    def __init__(self, tmp_path: Path, secret: Path, ports: list[int]) -> None:
        self.tmp_path, self.secret, self.ports = tmp_path, secret, ports
        self.metrics = [free_tcp_port() for _ in ports]
        self.routers: list[RouterProcess] = []
        self.ifnames = [unique_name("i", link_exists) for _ in ports]

    def clean_sockets_at_exit(self, stack: contextlib.ExitStack) -> None:
        """Register first, so it runs last: the wg(8) socket a SIGKILLed replica leaves."""
        for name in self.ifnames:
            stack.callback((WG_SOCKET_DIR / f"{name}.sock").unlink, missing_ok=True)

    def kill(self, i: int) -> None:
        """SIGKILL replica i by its PID and wait for it to be dead, without reaping it (its
        group is killed again at cleanup, so its PID must not be reused meanwhile)."""
        r = self.routers[i]
        os.kill(r.pid, signal.SIGKILL)
        if peek_exit(r.proc, 10) != -signal.SIGKILL:
            raise HarnessError(f"replica {i} did not die of SIGKILL\n{r.output()}")

    def env(self, i: int) -> dict[str, str]:
        return {
            "WGSLIRP_STATE_DIR": str(self.tmp_path / f"state{i}"),
            "WG_LISTEN_ADDR": "127.0.0.1",
            "WG_LISTEN_PORT": str(self.ports[i]),
            "WG_GATEWAY_IP": GATEWAY,
            "WG_INTERFACE_NAME": self.ifnames[i],
            "METRICS_LISTEN": f"127.0.0.1:{self.metrics[i]}",
            "WGSLIRP_CONFIG_POLL": "200ms",
            "PROCESSOR_WORKERS": "0",  # what an unset value picks on 2 CPUs
        }

    def start(self, stack: contextlib.ExitStack, i: int) -> RouterProcess:
        cmd = router_cmd("--config", str(self.secret / "wg0.conf"))
        r = stack.enter_context(RouterProcess(cmd, self.env(i), name=f"replica{i}"))
        r.wait_for_line(r"listening on 127\.0\.0\.1:\d+", timeout=20)
        if i < len(self.routers):
            self.routers[i] = r
        else:
            self.routers.append(r)
        return r

    def handshakes(self, i: int) -> dict[str, int]:
        """Public key (base64) -> completed handshakes, from replica i's /metrics."""
        status, body = http_get("127.0.0.1", self.metrics[i], "/metrics")
        if status != 200:
            raise HarnessError(f"/metrics of replica {i}: {status} {body}")
        return {k: int(v) for k, v in _HANDSHAKES.findall(body)}

    def wait_handshakes(self, want: dict[int, dict[str, int]], timeout: float = 5.0) -> None:
        """Until each replica's counters reach `want` (they are published once a second)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = {i: self.handshakes(i) for i in want}
            if all(seen[i].get(k, 0) >= n for i, w in want.items() for k, n in w.items()):
                return
            if time.monotonic() > deadline:
                raise HarnessError(f"handshake counters {seen}, wanted {want}")
            time.sleep(0.2)
