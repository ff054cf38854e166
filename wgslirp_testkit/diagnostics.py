"""Logs of harness objects, kept for the report of a failing test.

Logs must survive the object that wrote them: a test usually leaves its ``with`` block
(and the harness deletes the temp files) before pytest builds the failure report.  Objects
register while alive and leave a copy of their log tail when they close; the e2e conftest
attaches both to the report of a failing test and resets between tests.
"""

from __future__ import annotations

import contextlib

_live: dict[int, Diagnosable] = {}
_closed: list[tuple[str, str]] = []


class Diagnosable:
    """Base of harness objects whose state a failing test's report should show."""

    def diagnostics(self) -> str:
        raise NotImplementedError

    def _diag_title(self) -> str:
        raise NotImplementedError

    def _register(self) -> None:
        _live[id(self)] = self

    def _unregister(self) -> None:
        if _live.pop(id(self), None) is not None:
            with contextlib.suppress(Exception):
                _closed.append((self._diag_title(), self.diagnostics()))
            del _closed[:-20]


def diagnostic_sections() -> list[tuple[str, str]]:
    """(title, text) for every harness object alive or closed since the last reset."""
    sections = list(_closed)
    for obj in list(_live.values()):
        try:
            sections.append((obj._diag_title(), obj.diagnostics()))
        except Exception as exc:
            sections.append((obj._diag_title(), f"<diagnostics failed: {exc!r}>"))
    return sections


def reset_diagnostics() -> None:
    """Forget logs of closed objects (called by the e2e conftest before each test)."""
    _closed.clear()
