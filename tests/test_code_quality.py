"""Checks on the code itself that the README test command runs: the linter (ruff) on the whole
repository and the type checker (mypy) on slurmgov/, both configured in pyproject.toml and run
from the repository root, as `python -m ruff check .` and `python -m mypy` would be by hand.

They fail the suite like any other test; under CI=true a missing tool is a failure, not a skip.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{module} is not installed (it is in the test extra: pip install -e '.[test]')")
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")


def test_ruff_is_clean():
    _tool("ruff")
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-2000:]


def test_mypy_is_clean_on_slurmgov():
    _tool("mypy")
    p = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       check=False)
    assert p.returncode == 0, f"mypy (exit {p.returncode}) on slurmgov/:\n{p.stdout[-5000:]}{p.stderr[-2000:]}"
