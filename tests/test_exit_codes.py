"""Every command's failure paths end with the README's exit code and one line on stderr.

README: 0 success, 1 a step failed (`hooks check`: a probe not governed), 2 bad input, 3 never
placeable, 4 refused by the budget, 5 ledger unusable, 6 not allowed, 7 something slurmgov needs
is unavailable (Slurm does not answer, a port in use, a file), 70 internal error, 130 interrupted.
Each case runs the real entry point in a subprocess. Slurm is "not answering" through stand-in
commands that fail as Slurm's do without a controller, so these cases mean the same on a machine
with a live cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO = ROOT / "site_configs" / "demo-cluster.yaml"


@pytest.fixture
def env(tmp_path, slurmgov_home):
    """Slurm's commands present but no controller answering; the tests' own home."""
    fake = tmp_path / "no-slurm"
    fake.mkdir()
    for cmd in ("scontrol", "sinfo", "squeue", "sacct", "sacctmgr", "sshare", "sbatch", "scancel"):
        p = fake / cmd
        p.write_text(f"#!/bin/sh\necho '{cmd}: error: Unable to contact slurm controller (connect failure)' >&2\n"
                     "exit 1\n")
        p.chmod(0o755)
    return {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "SLURMGOV_HOME": str(slurmgov_home),
            "PYTHONPATH": str(ROOT)}


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def spec(tmp_path, steps: str, account: str = "chem-ai", name: str = "w.yaml") -> str:
    return write(tmp_path, name, f"workflow: w\naccount: {account}\nsteps:\n{steps}")


def run(prog: str, *args, env, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / prog), *map(str, args)], capture_output=True, text=True, env=env,
                          input=stdin, timeout=180, check=False)


def one_line_error(p: subprocess.CompletedProcess, code: int, *words: str) -> None:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == code, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr and len(lines) == 1, p.stderr
    for w in words:
        assert w in lines[0], lines[0]


def cases(tmp_path: Path):
    """(name, program, arguments, exit code, words the error line must hold)."""
    bad = spec(tmp_path, "  - {id: a, run: 'true', resources: {gpus: lots}}\n", name="bad.yaml")
    huge = spec(tmp_path, "  - {id: a, run: 'true', resources: {gpus: 64}}\n", name="huge.yaml")
    rich = spec(tmp_path, "  - {id: a, run: 'true', resources: {gpus: 4, time: '20:00:00'}}\n", account="physics",
                name="rich.yaml")
    fails = spec(tmp_path, "  - {id: a, run: 'exit 3'}\n", name="fails.yaml")
    unknown = spec(tmp_path, "  - {id: a, run: 'true'}\n", account="nobody-has-this", name="unknown.yaml")
    slurm_site = write(tmp_path, "slurm-site.yaml", DEMO.read_text())
    return [
        ("plan: a bad field", "slurmgov", ["plan", bad], 2, ["bad.yaml:4", "gpus"]),
        ("plan: a missing jobspec", "slurmgov", ["plan", str(tmp_path / "missing.yaml")], 2, ["missing.yaml"]),
        ("plan: a step no node can hold", "slurmgov", ["plan", huge], 3, ["huge.yaml:4", "step 'a'"]),
        ("run: over the budget", "slurmgov", ["run", rich], 4, ["physics", "GPU-h left"]),
        ("run: an account nobody budgets", "slurmgov", ["run", unknown], 2, ["unknown.yaml:2", "nobody-has-this"]),
        ("run: a Slurm site whose Slurm does not answer", "slurmgov",
         ["run", spec(tmp_path, "  - {id: a, run: 'true', resources: {gpus: 1}}\n", name="s.yaml"),
          "--site", slurm_site], 7, ["Slurm does not answer", "nothing was admitted"]),
        ("topology show --live without Slurm", "slurmgov", ["topology", "show", "--live", "--site", DEMO], 7,
         ["sinfo"]),
        ("limits sync without Slurm", "slurmgov", ["limits", "sync", "--site", DEMO], 7, ["Unable to contact"]),
        ("sync without Slurm", "slurmgov", ["sync", "--slurm-conf-dir", tmp_path, "--site", DEMO], 7, []),
        ("runs show of no run", "slurmgov", ["runs", "show", "nope"], 2, ["no run 'nope'"]),
        ("runs cancel of no run", "slurmgov", ["runs", "cancel", "nope"], 2, ["no run 'nope'"]),
        ("holds release of no hold", "slurmgov", ["holds", "release", "run:nope", "--reason", "x"], 2, ["run:nope"]),
        ("holds release without a reason", "slurmgov", ["holds", "release", "run:nope"], 2, ["--reason"]),
        ("budget set: a negative amount", "slurmgov", ["budget", "set", "chem-ai", "-5"], 2, []),
        ("an unknown command", "slurmgov", ["frobnicate"], 2, ["frobnicate"]),
        ("a ledger that cannot be opened", "slurmgov", ["budget", "show"], 5, ["ledger"]),
        ("gsbatch: a bad option value", "gsbatch", ["--gsbatch-preview", "--gres=gpu:h100:lots", "--wrap", "true"], 2,
         ["--gres"]),
        ("gsbatch: no node has that many GPUs", "gsbatch",
         ["--gsbatch-preview", "--gsbatch-site", DEMO, "--gres=gpu:h100:64", "-t", "10", "--wrap", "true"], 3, []),
        ("gsbatch: over the budget", "gsbatch",
         ["--gsbatch-preview", "--gsbatch-site", DEMO, "-A", "bio-ml", "--gres=gpu:h100:4", "-N", "4", "-t",
          "1-00:00:00", "--wrap", "true"], 4, ["bio-ml"]),
        ("a run whose step fails", "slurmgov", ["run", fails], 1, ["step a failed"]),
    ]


def test_every_failure_path_has_its_documented_exit_code_and_one_line(tmp_path, env):
    ledger_dir_is_a_file = tmp_path / "file"
    ledger_dir_is_a_file.write_text("")
    for name, prog, args, code, words in cases(tmp_path):
        e = dict(env)
        if name == "a ledger that cannot be opened":
            e["SLURMGOV_LEDGER"] = f"sqlite:///{ledger_dir_is_a_file}/ledger.sqlite"
        p = run(prog, *args, env=e)
        try:
            one_line_error(p, code, *words)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def test_a_dashboard_port_in_use_is_exit_7(env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = run("slurmgov", "dashboard", "--port", port, env=env)
    one_line_error(p, 7, f"127.0.0.1:{port}")


def test_ctrl_c_outside_a_run_says_only_interrupted(env):
    """Ctrl-C on a command that runs no workflow exits 130 with one line, and does not claim that
    steps were stopped or a hold released (only `slurmgov run` has those to report)."""
    import signal

    p = subprocess.Popen([str(BIN / "slurmgov"), "dashboard", "--site", str(DEMO), "--port", "0"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "site dashboard:" in p.stdout.readline()  # serving
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 130 and err.strip() == "slurmgov: interrupted", err
