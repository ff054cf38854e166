"""pytest wiring for end-to-end tests.

* Tests marked ``e2e`` skip (with the reason) where root, /dev/net/tun or the binaries are
  missing; tests/conftest.py prints the reason in the header and summary so nobody
  mistakes a skipped e2e run for a passing one.
* When a test fails, the logs of every harness object it used (wireguard-go, router output,
  nft counters) are attached to its report, even if the objects were already closed.
* Each worker sweeps resources left by harness processes that died (see ``sweep_stale``).
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

# e2e tests import the harness as a top-level module (``import harness``) whatever the
# import mode and whether or not tests/ becomes a package later.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402

_SKIP_REASON = harness.require_root_and_tun()


@pytest.fixture(scope="session", autouse=True)
def _e2e_sweep_stale() -> None:
    """Remove namespaces/links/tables left by dead harness processes, once per worker."""
    if _SKIP_REASON is None:
        harness.sweep_stale()


@pytest.fixture(autouse=True)
def _e2e_requirements(request: pytest.FixtureRequest) -> None:
    if _SKIP_REASON is not None and request.node.get_closest_marker("e2e") is not None:
        pytest.skip(_SKIP_REASON)


@pytest.fixture(autouse=True)
def _e2e_diagnostics() -> Iterator[None]:
    harness.reset_diagnostics()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for title, text in harness.diagnostic_sections():
            report.sections.append((f"{title} ({report.when})", text))


@pytest.fixture
def keypair() -> harness.KeyPair:
    """A fresh WireGuard key pair."""
    return harness.generate_keypair()
