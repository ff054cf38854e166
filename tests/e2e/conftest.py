"""pytest wiring for end-to-end tests.

* Tests marked ``e2e`` skip (with the reason) where root, /dev/net/tun or the binaries are
  missing; tests/conftest.py prints the reason in the header and summary so nobody
  mistakes a skipped e2e run for a passing one.
* When a test fails, the logs of every harness object it used (wireguard-go, router output,
  nft counters) are attached to its report, even if the objects were already closed.
* Each worker sweeps resources left by harness processes that died (see ``sweep_stale``).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from wgslirp_testkit.diagnostics import diagnostic_sections, reset_diagnostics
from wgslirp_testkit.keys import KeyPair, generate_keypair
from wgslirp_testkit.netns import require_root_and_tun, sweep_stale

_SKIP_REASON = require_root_and_tun()


@pytest.fixture(scope="session", autouse=True)
def _e2e_sweep_stale() -> None:
    """Remove namespaces/links/tables left by dead harness processes, once per worker."""
    if _SKIP_REASON is None:
        sweep_stale()


@pytest.fixture(autouse=True)
def _e2e_requirements(request: pytest.FixtureRequest) -> None:
    if _SKIP_REASON is not None and request.node.get_closest_marker("e2e") is not None:
        pytest.skip(_SKIP_REASON)


@pytest.fixture(autouse=True)
def _e2e_diagnostics() -> Iterator[None]:
    reset_diagnostics()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for title, text in diagnostic_sections():
            report.sections.append((f"{title} ({report.when})", text))


@pytest.fixture
def keypair() -> KeyPair:
    """A fresh WireGuard key pair."""
    return generate_keypair()
