import os
import sys
from pathlib import Path

import pytest

# Triton kernels run in its interpreter unless a GPU is here; this must be set before any
# kernel module is imported (the @triton.jit decorator reads it).
if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def slurmgov_home(tmp_path, monkeypatch):
    """Every test gets its own ledger and run records, never the user's."""
    home = tmp_path / "sg-home"
    monkeypatch.setenv("SLURMGOV_HOME", str(home))
    monkeypatch.delenv("SLURMGOV_LEDGER", raising=False)
    monkeypatch.delenv("SLURMGOV_SITE", raising=False)
    return home


@pytest.fixture
def root():
    return ROOT


def ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
