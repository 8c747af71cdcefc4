import os
import signal
import sys
from pathlib import Path

import pytest

# Triton kernels run in its interpreter unless a GPU is here; this must be set before any
# kernel module is imported (the @triton.jit decorator reads it).
if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# A session started in the background (`cmd &` in a script) inherits SIGINT ignored, and so would
# every program the tests start: their Ctrl-C tests would then fail. A terminal user's SIGINT is
# not ignored; a handler here is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The shared fixtures, registered once for every test module: the real Slurm cluster (and it
# governed), the throw-away PostgreSQL server, lua5.1.
from hook_cases import lua51_fixture  # noqa: E402, F401
from pg_harness import pg_url  # noqa: E402, F401
from slurm_fixtures import clean_hook_conf, gov, slurm_cluster  # noqa: E402, F401


def pytest_configure(config):
    import release_runs
    import slurm_release

    try:
        release_runs.releases()
    except slurm_release.ReleaseError as e:  # a typo in SLURMGOV_SLURM or _RELEASES: one line, exit 4
        raise pytest.UsageError(str(e)) from None
    config.pluginmanager.register(_LeaveClusterTestsToTheReleaseRuns(), "slurmgov-release-runs")


@pytest.hookimpl(tryfirst=True)  # before -m and -k select by these marks
def pytest_collection_modifyitems(config, items):
    # A test on the session's Slurm cluster is marked `cluster` (and `slurm`) by the fixture it
    # uses, not by hand: `-m cluster` is then exactly the tests to run on each release.
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker("cluster")
            item.add_marker("slurm")


class _LeaveClusterTestsToTheReleaseRuns:
    """Where the release runs are among the tests (tests/test_releases.py), their children run the
    cluster tests on each release, this session's included: this session leaves those to them and
    waits for the children last, so that they run beside everything else."""

    @pytest.hookimpl(trylast=True)  # after -m and -k have deselected what they do
    def pytest_collection_modifyitems(self, config, items):
        import release_runs
        import slurm_release

        waits = [item for item in items if item.path.name == "test_releases.py"]
        if waits and slurm_release.selected() in release_runs.releases():
            left = [item for item in items if item.get_closest_marker("cluster")]
            if left:
                config.hook.pytest_deselected(items=left)
                items[:] = [item for item in items if not item.get_closest_marker("cluster")]
        items.sort(key=lambda item: item.path.name == "test_releases.py")


def pytest_collection_finish(session):
    waits = [item for item in session.items if item.path.name == "test_releases.py"]
    if waits and not session.config.option.collectonly:
        import release_runs

        releases = [item.callspec.params["release"] for item in waits
                    if hasattr(item, "callspec") and item.callspec.params.get("release")]
        release_runs.start(releases, session.config._tmp_path_factory.getbasetemp() / "releases")


def pytest_unconfigure(config):
    if "release_runs" in sys.modules:
        sys.modules["release_runs"].stop_all()


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
