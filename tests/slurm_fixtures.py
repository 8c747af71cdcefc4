"""pytest fixtures of the real Slurm test cluster, registered once in tests/conftest.py:
``slurm_cluster`` (one cluster per test session), ``gov`` (that cluster with a fresh governor
state, ledger and `slurmgov`/`gsbatch` runners) and ``clean_hook_conf`` (no slurmgov_hook.conf
before or after a test).  When the cluster cannot run here the tests skip with the
reason, except under ``CI=true`` where they fail: CI must never silently skip Slurm tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so "import slurm_harness" works

import slurm_release  # noqa: E402
from slurm_harness import HarnessError, can_run, start_cluster  # noqa: E402

from slurmgov.ledger.store import Ledger  # noqa: E402
from slurmgov.site import model as site_mod  # noqa: E402

BIN = Path(sys.executable).parent


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _unavailable(reason: str):
    if _in_ci():
        pytest.fail(f"Slurm cluster unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    try:
        release = slurm_release.selected()
    except slurm_release.ReleaseError as e:
        pytest.exit(str(e), returncode=4)  # a typo in SLURMGOV_SLURM: one line, no test runs
    ok, why = can_run()
    if not ok:
        _unavailable(why)
    root = tmp_path_factory.mktemp("slurm")
    try:
        cluster = start_cluster(root)
    except HarnessError as e:
        if release != slurm_release.DEFAULT:  # asked for by name: its failure is an error, never a skip
            pytest.fail(f"Slurm {release} cluster did not start: {e}", pytrace=False)
        _unavailable(f"Slurm cluster did not start: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()
        left = cluster.running_pids()
        if left:
            pytest.fail(f"Slurm test daemons still running after stop(): {left}", pytrace=False)


@pytest.fixture
def gov(slurm_cluster, root, slurmgov_home):
    c = slurm_cluster
    c.cancel_all()
    # A fresh governor state and ledger: start the hooks' journals afresh as well (a rotation).
    for p in (c.journal_path, c.settle_path, c.hook_conf_path, c.conf_dir / "slurmgov_refusals.log"):
        if p.exists():
            p.unlink()
    site_path = root / "site_configs" / "demo-cluster.yaml"
    env = {**c.env, "SLURMGOV_HOME": str(slurmgov_home), "SLURMGOV_SITE": str(site_path)}

    def sg(*args, check=0):
        p = subprocess.run([str(BIN / "slurmgov"), *map(str, args)], capture_output=True, text=True, env=env, timeout=60)
        assert "Traceback" not in p.stderr
        assert check is None or p.returncode == check, p.stderr + p.stdout
        return p

    def gsbatch(*args):
        return subprocess.run([str(BIN / "gsbatch"), *map(str, args)], capture_output=True, text=True, env=env,
                              cwd=c.work_dir, timeout=60)

    site = site_mod.load(site_path)
    ledger = Ledger.open(site.ledger_url())
    ledger.set_budget("physics", 1.0, "quarterly", actor="test", reason="e2e")
    yield c, sg, gsbatch, ledger
    c.cancel_all()


@pytest.fixture
def clean_hook_conf(slurm_cluster):
    """No slurmgov_hook.conf before or after the test, and no job left behind."""
    slurm_cluster.hook_conf_path.unlink(missing_ok=True)
    yield
    slurm_cluster.hook_conf_path.unlink(missing_ok=True)
    slurm_cluster.cancel_all()
