"""A real `slurmgov run` stopped by every signal a user, a batch system or a dying SSH session
sends: its hold never stays open, what its steps used is charged, and no step outlives it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import procs
import pytest
from helpers import wait_for

from slurmgov.ledger.store import Ledger
from slurmgov.site import model as site_mod

ROOT = Path(__file__).resolve().parents[1]


def slurmgov(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slurmgov.interface.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def _default_signals() -> None:
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def _as_under_nohup() -> None:
    _default_signals()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what `nohup` does before it runs the command


def start_run(tmp_path: Path, env: dict, preexec=_default_signals) -> tuple[subprocess.Popen, int]:
    """A run whose first step finishes (and is charged) and whose second runs until stopped,
    with a background child in its process group: (the run's process, that child's pid).
    ``preexec``: the signal dispositions it starts with."""
    pidfile = tmp_path / "child.pid"
    spec = tmp_path / "sig.yaml"
    spec.write_text(
        "workflow: sig\naccount: chem-ai\nsteps:\n"
        "  - {id: warm, run: 'sleep 0.2', resources: {gpus: 1, time: '00:05:00'}}\n"
        f"  - {{id: long, after: [warm], run: 'sleep 300 & echo $! > {pidfile}; wait', "
        "resources: {gpus: 2, time: '00:10:00'}}\n")
    # as from a terminal or a batch system: none of the signals sent here ignored, even where
    # the test runner was started ignoring them (`nohup` ignores SIGHUP, and the run rightly keeps
    # an ignored SIGHUP ignored: interface/signals.py)
    proc = subprocess.Popen([sys.executable, "-m", "slurmgov.interface.cli", "run", str(spec), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=preexec)
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the long step to start")
    except AssertionError:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the run did not start its long step: {err[-2000:]}") from None
    return proc, int(pidfile.read_text())


def the_run(env) -> dict:
    (run,) = json.loads(slurmgov("runs", "--json", env=env).stdout)
    return run


@pytest.fixture
def env(tmp_path, slurmgov_home):
    (tmp_path / "tmp").mkdir()  # the run's temporary files: this test's own, not the machine's /tmp
    e = dict(os.environ, SLURMGOV_HOME=str(slurmgov_home), PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path / "tmp"))
    e.pop("SLURMGOV_LEASE_S", None)
    return e


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signalled_run_settles_its_hold_charges_what_ran_and_ends_its_steps(tmp_path, env, sig, code):
    proc, child = start_run(tmp_path, env)
    assert the_run(env)["state"] == "running"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == code, err[-2000:]
    assert "running steps were stopped" in err and "Traceback" not in err
    wait_for(lambda: not procs.alive(child), what="the step's background child to die")
    run = the_run(env)
    assert run["state"] == "cancelled" and run["hold_state"] == "cancelled" and run["held_h"] == 0
    ledger = Ledger.open(site_mod.load(ROOT / "site_configs" / "local.yaml").ledger_url())
    charges = {c["step"]: c for c in ledger.charges(run["hold_key"])}
    assert set(charges) == {"warm", "long"}  # the finished step, and what the stopped one used
    assert charges["long"]["status"] == "cancelled" and charges["long"]["gpu_seconds"] > 0
    bal = ledger.balance("chem-ai")
    assert bal.held_h == 0 and bal.charged_h == pytest.approx(sum(c["charged_h"] for c in charges.values()))


def test_a_run_started_under_nohup_outlives_a_hangup_and_still_stops_on_sigterm(tmp_path, env):
    """`nohup slurmgov run ...`: the user asked the run to outlive the terminal. The hangup comes
    first and the run handles only the first signal it takes, so an exit by SIGTERM (143, not
    129) shows the hangup was ignored, without waiting to see that nothing happens."""
    proc, child = start_run(tmp_path, env, preexec=_as_under_nohup)
    proc.send_signal(signal.SIGHUP)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 143, err[-2000:]
    assert "running steps were stopped" in err and "Traceback" not in err
    wait_for(lambda: not procs.alive(child), what="the step's background child to die")
    run = the_run(env)
    assert run["state"] == "cancelled" and run["hold_state"] == "cancelled" and run["held_h"] == 0


def test_a_killed_run_leaves_a_lease_that_lapses_and_the_next_command_releases(tmp_path, env):
    env["SLURMGOV_LEASE_S"] = "3"
    proc, child = start_run(tmp_path, env)
    held = the_run(env)
    assert held["state"] == "running" and held["held_h"] > 0
    proc.kill()
    proc.communicate(timeout=30)
    wait_for(lambda: not procs.alive(child), what="the guard to kill the step's process group")
    assert the_run(env)["state"] == "lost"  # its process is gone; `runs` says so at once
    # The lease lapses 3 s after the last renewal; any command that opens the ledger releases it.
    wait_for(lambda: not json.loads(slurmgov("holds", "--json", env=env).stdout), what="the lease to lapse")
    run = the_run(env)
    assert run["hold_state"] == "failed" and run["held_h"] == 0
    ledger = Ledger.open(site_mod.load(ROOT / "site_configs" / "local.yaml").ledger_url())
    assert [c["step"] for c in ledger.charges(run["hold_key"])] == ["warm"]  # what was recorded, only
    assert ledger.balance("chem-ai").held_h == 0
    (row,) = [a for a in ledger.audit() if a["action"] == "release"]
    assert run["hold_key"] in row["reason"]
    # and no step input file is left behind by the killed run
    assert not list(Path(env["TMPDIR"]).glob("sg-*.json"))


def test_runs_cancel_stops_a_running_run_and_holds_release_frees_a_stuck_hold(tmp_path, env):
    proc, child = start_run(tmp_path, env)
    run_id = the_run(env)["run_id"]
    r = slurmgov("runs", "cancel", run_id, env=env)
    assert r.returncode == 0, r.stderr
    assert "cancelled" in r.stdout
    assert proc.wait(timeout=60) == 143
    wait_for(lambda: not procs.alive(child), what="the step's child to die")
    assert the_run(env)["hold_state"] == "cancelled"

    ledger = Ledger.open(site_mod.load(ROOT / "site_configs" / "local.yaml").ledger_url())
    ledger.admit("run:stuck", "chem-ai", "wf", {"s": 1.0}, user="someone")  # no lease: never lapses
    (h,) = json.loads(slurmgov("holds", "--json", env=env).stdout)
    assert h["hold_key"] == "run:stuck" and h["held_h"] == 1.0
    r = slurmgov("holds", "release", "run:stuck", env=env)
    assert r.returncode == 2 and "--reason" in r.stderr  # the audit trail needs a why
    r = slurmgov("holds", "release", "run:stuck", "--reason", "run gone with its host", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(slurmgov("holds", "--json", env=env).stdout) == []
    rows = [a for a in ledger.audit() if a["action"] == "release"]
    assert len(rows) == 1 and "run gone with its host" in rows[0]["reason"]
    r = slurmgov("runs", "show", "nope", env=env)
    assert r.returncode == 2 and "no run 'nope'" in r.stderr
