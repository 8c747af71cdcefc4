"""apt-get on the test machine itself, one call at a time.

The fixtures install what a fresh Debian lacks (Slurm, lua5.1, PostgreSQL, chromium, the .deb
build tools) as root when missing. The README test command runs the Slurm tests of each release
in its own pytest session side by side (tests/test_releases.py), so two of these can start
together; dpkg allows one, and the loser used to fail at once ("Could not get lock
/var/lib/dpkg/lock-frontend"). A file lock orders our own callers, and apt's own lock timeout
covers anything else on the machine (unattended-upgrades).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from pathlib import Path

LOCK = Path("/run/lock/slurmgov-test-apt.lock")
APT = ("apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=600")
TIMEOUT_S = 900


@contextlib.contextmanager
def _locked():
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def install(*packages: str, log: Path | None = None, env: dict | None = None,
            timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """``apt-get install --no-install-recommends packages``; when it fails, ``apt-get update`` (the
    package lists may be missing or stale) and once more. Output goes to ``log`` when given (the
    result's stdout is then empty), else it is captured in the result."""
    run_env = {**os.environ, **(env or {}), "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [*APT, "install", "--no-install-recommends", *packages]
    with _locked(), (open(log, "a") if log else contextlib.nullcontext()) as fh:
        out: dict = {"stdout": fh, "stderr": subprocess.STDOUT} if fh else {"capture_output": True}

        def run(argv: list[str]) -> subprocess.CompletedProcess:
            try:
                return subprocess.run(argv, env=run_env, text=True, timeout=timeout, check=False, **out)
            except subprocess.TimeoutExpired as e:
                return subprocess.CompletedProcess(argv, 124, "", f"{' '.join(argv)}: timed out after {e.timeout:.0f} s")

        r = run(cmd)
        if r.returncode != 0:
            run([*APT, "update"])
            r = run(cmd)
    return r
