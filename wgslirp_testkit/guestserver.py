"""A server inside a guest namespace, for the inbound-forward tests: the service a host
client reaches through WG_FORWARD_TCP / WG_FORWARD_UDP.

Runs guestprog's `serve` in the client's namespace (so it listens on the guest's tunnel
address) and waits until it listens; sink results come back through a file, since the
namespace shares the file system.
"""

from __future__ import annotations

import json
import select
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from wgslirp_testkit import guestprog
from wgslirp_testkit.proc import stop_and_close


class GuestServer:
    def __init__(
        self,
        client: Any,
        kind: str,
        mode: str,
        host: str,
        port: int,
        *,
        size: int = 0,
        seconds: float = 300,
    ) -> None:
        self.client = client
        self._dir = Path(tempfile.mkdtemp(prefix="wgslirp-guestsrv-"))
        self.results_path = self._dir / "results.jsonl"
        self._args = (kind, mode, host, port, size, seconds, self.results_path)
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self._proc = self.client.popen(
            guestprog.command("serve", *self._args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + 60  # a Python start-up on a busy machine
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([self._proc.stdout], [], [], 0.5)
            if ready:
                chunk = self._proc.stdout.read1(4096)  # type: ignore[attr-defined]
                if not chunk:
                    break
                line += chunk
        if b'"ready"' not in line:
            self.close()
            raise RuntimeError(f"guest server did not start: {line!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def results(self) -> list[tuple[int, str]]:
        """(bytes, sha256) of each connection a sink server read to its end."""
        if not self.results_path.exists():
            return []
        return [tuple(json.loads(x)) for x in self.results_path.read_text().splitlines()]  # type: ignore[misc]

    def wait_results(self, n: int, timeout: float) -> list[tuple[int, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.results()
            if len(got) >= n:
                return got
            time.sleep(0.05)
        return self.results()

    def close(self) -> None:
        if self._proc is not None:
            stop_and_close(self._proc)
            self._proc = None
        for p in self._dir.iterdir():
            p.unlink()
        self._dir.rmdir()
