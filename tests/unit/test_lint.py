"""Style gates from the brief: ruff check and ruff format on the code and tests, mypy --strict
on wgslirp/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_clean() -> None:
    r = _run(["ruff", "check", "wgslirp", "wgslirp_testkit", "tests", "scripts"])
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_format_clean() -> None:
    r = _run(["ruff", "format", "--check", "wgslirp", "tests", "scripts"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_clean() -> None:
    pytest.importorskip("mypy")
    r = _run([sys.executable, "-m", "mypy", "--strict", "wgslirp"])
    assert r.returncode == 0, r.stdout + r.stderr
