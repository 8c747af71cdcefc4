"""The session's Slurm tests on the other releases, each in its own pytest session beside this one.

The README test command runs every test on the release SLURMGOV_SLURM names (default 22.05) and,
while it does, the tests marked ``cluster`` (those on the session's Slurm cluster, see
conftest.py) once more on each other release in SLURMGOV_RELEASES (default all three), each
in a child ``pytest -m cluster`` with SLURMGOV_SLURM set to it. The clusters are independent
(private munge socket, free ports, their own directories) and mostly wait on Slurm, so side by
side they cost little more wall time than one. tests/test_releases.py waits for each child and
fails with its failures.
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


class SpecError(ValueError):
    pass


def others() -> list[str]:
    """The releases the children run: SLURMGOV_RELEASES (comma-separated; empty: none) less the
    session's own. An unknown name raises ReleaseError naming the supported ones."""
    own = slurm_release.selected()
    raw = os.environ.get("SLURMGOV_RELEASES")
    wanted = list(slurm_release.RELEASES) if raw is None else [r.strip() for r in raw.split(",") if r.strip()]
    for r in wanted:
        if r not in slurm_release.RELEASES:
            raise slurm_release.ReleaseError(f"SLURMGOV_RELEASES names {r!r}, not a Slurm release the test "
                                             f"harness knows; supported: {', '.join(slurm_release.RELEASES)}")
    return [r for r in wanted if r != own]


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
    seconds = time.monotonic() - child.started
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    try:
        suite = ET.parse(child.junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        for k in counts:
            counts[k] = int(suite.get(k, 0)) if suite is not None else 0
    except (OSError, ET.ParseError):
        pass
    text = child.log.read_text(errors="replace") if child.log.exists() else ""
    problems = [line for line in text.splitlines() if re.match(r"(FAILED|ERROR|SKIPPED) ", line)]
    if rc != 0 and not problems:
        problems = text.splitlines()[-15:]
    return Outcome(rc, seconds, counts, problems, child.log)
