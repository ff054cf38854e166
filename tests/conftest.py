"""Root test configuration: tells every run whether end-to-end tests can run here.

It lives at the root (not in tests/e2e) because pytest loads it at start-up for any
invocation, including the xdist controller, so the reason e2e tests are skipped is printed
in the header and the summary even for a plain ``pytest`` or ``pytest -n 2``.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

from wgslirp_testkit.netns import require_root_and_tun

# Property tests explore the same examples on every run (a CI result must not depend on
# luck); run with --hypothesis-profile=explore locally to search with fresh randomness.
settings.register_profile("deterministic", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile("deterministic")

E2E_SKIP_REASON = require_root_and_tun()


def pytest_report_header(config: pytest.Config) -> str:
    if E2E_SKIP_REASON is None:
        return "e2e: enabled (root, /dev/net/tun, wireguard-go, wg, ip, ping, nft present)"
    return f"e2e: tests marked e2e will be SKIPPED: {E2E_SKIP_REASON}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if E2E_SKIP_REASON is not None and terminalreporter.stats.get("skipped"):
        terminalreporter.write_sep("=", "e2e tests skipped", yellow=True)
        terminalreporter.write_line(E2E_SKIP_REASON)
