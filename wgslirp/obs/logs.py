"""Log setup: one line per event on stderr, plain text or JSON.

Hot paths never log per packet; they count, and the counters are reported instead.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class RepeatFilter(logging.Filter):
    """Rate-limits repeats: the same message (as rendered) from the same logger passes once
    per `window` seconds; the next one that passes says how many were held back. A flood of
    identical lines then costs a line per window and nothing is silently lost, while
    distinct events (another peer, another reason) are never held back."""

    def __init__(
        self,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._seen: dict[tuple[str, str], list[float]] = {}  # key -> [last pass, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.getMessage())
        now = self.clock()
        entry = self._seen.get(key)
        if entry is None:
            if len(self._seen) >= self.max_keys:
                self._seen.clear()
            self._seen[key] = [now, 0]
            return True
        if now - entry[0] < self.window:
            entry[1] += 1
            return False
        if entry[1]:
            record.msg = f"{record.getMessage()} ({int(entry[1])} identical messages suppressed)"
            record.args = ()
        entry[0], entry[1] = now, 0
        return True


def setup_logging(debug: bool = False, json_lines: bool = False, wg_debug: bool = False) -> None:
    """DEBUG makes everything verbose; WG_DEBUG only the WireGuard side (handshakes,
    sessions, cookies), as in the original."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RepeatFilter())
    if json_lines:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("wgslirp")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    if wg_debug:
        logging.getLogger("wgslirp.ingress").setLevel(logging.DEBUG)
        logging.getLogger("wgslirp.uapi").setLevel(logging.DEBUG)
