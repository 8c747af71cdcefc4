"""The test cluster's own bookkeeping (tests/slurm_harness.py), checked without Slurm: the check
after every session that stop() left no daemon behind must name only this cluster's daemons."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import start_ticks  # noqa: E402
from slurm_harness import SlurmCluster  # noqa: E402


def test_a_daemon_left_running_is_known_by_its_start_time_not_by_a_pid_reused_since(tmp_path):
    cluster = SlurmCluster(tmp_path / "cluster")
    cluster.log_dir.mkdir(parents=True)
    daemon = cluster._spawn("slurmd", ["sleep", "300"])
    # Another cluster's process, named like a daemon, now holding a PID this cluster once had:
    # what a wrapped PID gives after a restart (PIDs wrap at 32768 here).
    fake = tmp_path / "slurmstepd"
    shutil.copy("/bin/sleep", fake)
    other = subprocess.Popen([str(fake), "300"])
    try:
        ticks = start_ticks(other.pid)
        assert ticks is not None
        cluster.started.append((other.pid, ticks - 1))  # the earlier process that had this PID
        assert cluster.running_pids() == [daemon.pid]
        cluster.stop()
        assert daemon.poll() is not None
        assert cluster.running_pids() == []
        # The same record, had it been the cluster's own process, is found while it runs.
        cluster.started.append((other.pid, ticks))
        assert cluster.running_pids() == [other.pid]
    finally:
        other.kill()
        other.wait()
        cluster.stop()
    assert cluster.running_pids() == []
