"""Every test on the session's Slurm cluster passes on each Slurm release a site runs.

The children that run them were started when collection finished (conftest.py,
tests/release_runs.py), so they ran beside this session, which then leaves those tests to them;
these tests, ordered last, wait for them. Under CI=true a child's skip is a failure, as it is
in this session.
"""

from __future__ import annotations

import pytest
import release_runs
from slurm_fixtures import _in_ci

RELEASES = release_runs.releases()  # checked in conftest.pytest_configure


@pytest.mark.slurm
@pytest.mark.timeout(release_runs.WAIT_S + 60)  # it waits for a whole session; the child bounds each test
@pytest.mark.parametrize("release", RELEASES or [pytest.param(None, marks=pytest.mark.skip(
    reason="SLURMGOV_RELEASES names no release"))])
def test_cluster_tests_pass_on(release):
    out = release_runs.wait(release)
    ran = out.counts["tests"]
    summary = (f"Slurm {release}: {ran} tests, {out.counts['failures']} failed, {out.counts['errors']} errors, "
               f"{out.counts['skipped']} skipped in {out.seconds:.0f} s (exit {out.returncode}; log {out.log})")
    print(summary)
    assert out.returncode == 0 and ran > 0, summary + "\n" + "\n".join(out.problems)
    if _in_ci():
        assert out.counts["skipped"] == 0, summary + "\n" + "\n".join(out.problems)
