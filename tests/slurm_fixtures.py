"""pytest fixture ``slurm_cluster``: one real Slurm cluster per test session.

Import it where needed (``from slurm_fixtures import slurm_cluster  # noqa: F401``) or list
this module in ``pytest_plugins``.  When the cluster cannot run here the tests skip with the
reason, except under ``CI=true`` where they fail: CI must never silently skip Slurm tests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so "import slurm_harness" works

from slurm_harness import HarnessError, can_run, start_cluster  # noqa: E402


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _unavailable(reason: str):
    if _in_ci():
        pytest.fail(f"Slurm cluster unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    ok, why = can_run()
    if not ok:
        _unavailable(why)
    root = tmp_path_factory.mktemp("slurm")
    try:
        cluster = start_cluster(root)
    except HarnessError as e:
        _unavailable(f"Slurm cluster did not start: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()
        left = cluster.running_pids()
        if left:
            pytest.fail(f"Slurm test daemons still running after stop(): {left}", pytrace=False)
