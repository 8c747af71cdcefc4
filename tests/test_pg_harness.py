"""The throwaway PostgreSQL server's bookkeeping (tests/pg_harness.py), checked without starting
one: stop() must only ever wait for and signal the postmaster it started, never a process that got
its PID after it exited (PIDs wrap at 32768 here; the suite starts thousands of processes)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pg_harness  # noqa: E402
from procs import start_ticks  # noqa: E402


def _server_that_ran(tmp_path: Path, pid: int, ticks: int) -> pg_harness.Server:
    """A Server as stop() finds it after its postmaster (``pid``, started at ``ticks``) ran: no
    pg_ctl to ask (the stop falls back to signals), no admin connection, no child to reap."""
    s = pg_harness.Server.__new__(pg_harness.Server)
    s.bindir, s.dir, s.data = str(tmp_path / "no-bin"), str(tmp_path), str(tmp_path / "data")
    s.port, s.pid, s.pid_ticks, s._proc, s._admin = None, pid, ticks, None, None
    return s


def test_stop_leaves_alone_a_process_that_got_the_postmasters_pid_after_it(tmp_path):
    fake = tmp_path / "postgres"  # a stranger named like the server, as a reused PID may be
    shutil.copy("/bin/sleep", fake)
    other = subprocess.Popen([str(fake), "300"])
    try:
        ticks = start_ticks(other.pid)
        assert ticks is not None
        # The same PID, had it been the server's own postmaster, is taken as running.
        assert _server_that_ran(tmp_path, other.pid, ticks)._postmaster_runs()
        server = _server_that_ran(tmp_path, other.pid, ticks - 1)  # the earlier process with this PID
        assert not server._postmaster_runs()
        server.stop()
        assert other.poll() is None  # not signalled: it runs on
        assert server.pid is None and server.pid_ticks is None
    finally:
        other.kill()
        other.wait()
