"""Checks on the code itself that the README test command runs: the type checker on slurmgov/.

mypy reads its settings ([tool.mypy] in pyproject.toml: which files, which third-party modules
have no types) from the repository root, so it runs there, as `python -m mypy` would by hand.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def test_mypy_is_clean_on_slurmgov():
    if importlib.util.find_spec("mypy") is None:
        if CI:  # in CI the test extra is installed; mypy's absence is a failure, not a skip
            pytest.fail("mypy is not installed; the test extra has it (pip install -e '.[test]')")
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"mypy (exit {proc.returncode}) on slurmgov/:\n{proc.stdout}{proc.stderr}"
