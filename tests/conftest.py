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

# The shared fixtures, registered once for every test module: the real Slurm cluster (and it
# governed), the throw-away PostgreSQL server, lua5.1.
from hook_cases import lua51_fixture  # noqa: E402, F401
from pg_harness import pg_url  # noqa: E402, F401
from slurm_fixtures import clean_hook_conf, gov, slurm_cluster  # noqa: E402, F401


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
