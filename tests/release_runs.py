"""The tests on the session's Slurm cluster, run on every release, each in its own pytest session.

The README test command runs the tests marked ``cluster`` (those on the session's Slurm cluster,
see conftest.py) once on each release in SLURMGOV_RELEASES (default all three), each in a child
``pytest -m cluster`` with SLURMGOV_SLURM set to that release, all side by side with the main
session, which runs everything else. The clusters are independent (private munge socket, free
ports, their own directories) and mostly wait on Slurm, so the three cost little more wall time
than one, and the main session's CPU-bound tests run meanwhile. tests/test_releases.py waits for
each child and fails with its failures.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import slurm_release

TESTS = Path(__file__).resolve().parent
WAIT_S = 3600.0  # a child's own tests time out after 300 s each; this bounds a wedged child


def releases() -> list[str]:
    """The releases the children run: SLURMGOV_RELEASES (comma-separated; empty: none). An unknown
    name (there or in SLURMGOV_SLURM) raises ReleaseError naming the supported ones."""
    slurm_release.selected()
    raw = os.environ.get("SLURMGOV_RELEASES")
    wanted = list(slurm_release.RELEASES) if raw is None else [r.strip() for r in raw.split(",") if r.strip()]
    for r in wanted:
        if r not in slurm_release.RELEASES:
            raise slurm_release.ReleaseError(f"SLURMGOV_RELEASES names {r!r}, not a Slurm release the test "
                                             f"harness knows; supported: {', '.join(slurm_release.RELEASES)}")
    return list(dict.fromkeys(wanted))


@dataclass
class Child:
    release: str
    dir: Path
    proc: subprocess.Popen
    started: float

    @property
    def log(self) -> Path:
        return self.dir / "pytest.log"

    @property
    def junit(self) -> Path:
        return self.dir / "junit.xml"


_children: dict[str, Child] = {}


def start(releases: list[str], base: Path) -> None:
    """Start a child session per release (once per process)."""
    for release in releases:
        if release in _children:
            continue
        d = base / f"slurm-{release}"
        d.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pytest", "-m", "cluster", "-p", "no:cacheprovider", "-q",
               f"--basetemp={d / 'tmp'}", f"--junitxml={d / 'junit.xml'}", "--rootdir", str(TESTS.parent),
               "-c", str(TESTS.parent / "setup.cfg"), str(TESTS)]
        env = {**os.environ, "SLURMGOV_SLURM": release, "SLURMGOV_RELEASES": release}
        log = open(d / "pytest.log", "w")
        proc = subprocess.Popen(cmd, cwd=TESTS.parent, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own group: stop() ends its daemons' parent too
        log.close()
        _children[release] = Child(release, d, proc, time.monotonic())


def stop_all() -> None:
    """End children still running (the parent session was interrupted); their fixtures stop
    their clusters on SIGTERM's KeyboardInterrupt-like exit, else the group is killed."""
    for child in _children.values():
        if child.proc.poll() is None:
            os.killpg(child.proc.pid, signal.SIGINT)
            try:
                child.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()


@dataclass
class Outcome:
    returncode: int
    seconds: float
    counts: dict[str, int]
    problems: list[str]  # "FAILED ..." / "ERROR ..." lines, and the log's tail when there are none
    log: Path


def wait(release: str, timeout: float = WAIT_S) -> Outcome:
    child = _children[release]
    try:
        rc = child.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.proc.pid, signal.SIGKILL)
        rc = child.proc.wait()
    seconds = time.monotonic() - child.started  # until waited for; the child's own time if it wrote it
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    try:
        suite = ET.parse(child.junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        if suite is not None:
            counts = {k: int(suite.get(k, 0)) for k in counts}
            seconds = float(suite.get("time", seconds))
    except (OSError, ET.ParseError, ValueError):
        pass
    text = child.log.read_text(errors="replace") if child.log.exists() else ""
    problems = [line for line in text.splitlines() if re.match(r"(FAILED|ERROR|SKIPPED) ", line)]
    if rc != 0 and not problems:
        problems = text.splitlines()[-15:]
    return Outcome(rc, seconds, counts, problems, child.log)
