"""The code checks the README test command runs: a linter (ruff, configured in pyproject.toml).

They fail the suite like any other test, so CI enforces them; under CI=true a missing tool is a
failure, not a skip.
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
        pytest.skip(f"{module} is not installed")


def test_ruff_is_clean():
    _tool("ruff")
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-2000:]
