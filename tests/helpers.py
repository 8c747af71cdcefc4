"""Helpers the test modules share (one copy each): waiting, acting as an unprivileged user, and
reading or writing the hook files of a test cluster (tests/slurm_harness.py)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from slurmgov.slurm import commands as slurm_cli


def wait_for(pred, timeout: float = 30, what: str = "condition"):
    """Poll ``pred`` until it returns something true (returned); fail after ``timeout`` seconds.
    Generous by default: a busy machine slows everything it waits for."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def as_nobody(c, *cmd):
    """Run a Slurm client command as the cluster's unprivileged user ``c.user`` (``nobody``; irc on
    Slurm 26.05, which refuses nobody), default account chem-ai."""
    return c.run("runuser", "-u", c.user, "--", *cmd, cwd="/", env=c.unprivileged_env())


_PYTHON_AS: dict[tuple[str | None, str], str] = {}


def python_as(c, user: str) -> tuple[str, dict]:
    """(interpreter, environment) with which ``user`` can run this checkout's slurmgov (and the test
    environment's packages): this interpreter if ``user`` may run it, else the system's python of the
    same version with this checkout and the test environment's site-packages on PYTHONPATH (a
    pyenv or venv under /root is not reachable by another user). Skips, or under CI fails, if neither is.
    ``c``: the Slurm test cluster, or None for a machine without one (this process's environment)."""
    root = Path(__file__).resolve().parents[1]
    paths = dict.fromkeys([str(root), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    base = c.unprivileged_env() if c is not None else dict(os.environ)
    env = dict(base, PYTHONPATH=os.pathsep.join(paths), PYTHONDONTWRITEBYTECODE="1")
    for key in ("SLURMGOV_HOME", "SLURMGOV_SITE", "SLURMGOV_LEDGER"):
        env.pop(key, None)
    found = (str(c.root) if c is not None else None, user)
    if found in _PYTHON_AS:  # the probe imports mcp (2-3 s): once per cluster and user, not per call
        return _PYTHON_AS[found], env
    tried = []
    for py in (sys.executable, shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin")):
        if not py:
            continue
        cmd = ["runuser", "-u", user, "--", py, "-c", "import mcp, slurmgov.interface.mcp_server"]
        r = (c.run(*cmd, env=env, cwd="/", timeout=60) if c is not None else
             subprocess.run(cmd, env=env, cwd="/", timeout=60, capture_output=True, text=True, check=False))
        if r.returncode == 0:
            _PYTHON_AS[found] = py
            return py, env
        tried.append(f"{py}: {(r.stderr.strip().splitlines() or ['exit ' + str(r.returncode)])[-1]}")
    why = f"no python that user {user} can run slurmgov with ({'; '.join(tried)})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


def nobody_sbatch(c, *args, held: bool = False, wrap: str = "true") -> str:
    """The unprivileged ``c.user`` submits a job; its id (the submission must succeed)."""
    r = as_nobody(c, "sbatch", "--parsable", *(["-H"] if held else []), "--chdir=/", "-o", "/dev/null", *args,
                  "--wrap", wrap)
    assert r.returncode == 0, r.stderr
    return c.job_id(r)


def show_job(c, jobid: str) -> dict[str, str]:
    """``scontrol show job -o`` as a dict (values without spaces)."""
    out = c.run("scontrol", "show", "job", "-o", jobid).stdout
    return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)


def admin_comment(c, jobid: str) -> str:
    return show_job(c, jobid).get("AdminComment", "")


_serials = itertools.count(int(time.time() * 1000))


def write_snapshot(cluster, accounts: dict[str, float], *, written: float | None = None,
                   max_age_s: int = 600, fail_policy: str = "closed", weights=None,
                   default_weight: float = 1.0, default_time_min: int = 60,
                   max_gpus_per_node: int = 4, extra: tuple[str, ...] = (), end: bool = True) -> str:
    """Write a snapshot (budgets in weighted GPU-seconds) with a fresh serial, renamed into place
    as the real writer does; return the serial."""
    serial = str(next(_serials))
    weights = {"h100": 1.0} if weights is None else weights
    lines = ["slurmgov-snapshot\t1", f"serial\t{serial}", f"written\t{int(written or time.time())}",
             f"max_age_s\t{max_age_s}", f"fail_policy\t{fail_policy}", f"default_time_min\t{default_time_min}",
             f"max_gpus_per_node\t{max_gpus_per_node}", f"default_weight\t{default_weight}"]
    lines += [f"weight\t{t}\t{w}" for t, w in weights.items()]
    lines += [f"account\t{a}\t{v}" for a, v in accounts.items()]
    lines += list(extra)
    if end:
        lines.append("end")
    tmp = cluster.snapshot_path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(cluster.snapshot_path)
    return serial


def journal(cluster, serial: str | None = None) -> list[list[str]]:
    """The hook journal's lines, split on TAB (those of one snapshot serial if given)."""
    if not cluster.journal_path.exists():
        return []
    rows = [ln.split("\t") for ln in cluster.journal_path.read_text().splitlines()]
    return [r for r in rows if serial is None or r[2] == serial]


def settled(c) -> list[str]:
    """jobcomp's settle file, a line each."""
    return c.settle_path.read_text().splitlines() if c.settle_path.exists() else []


def settle_of(c, job: str) -> bool:
    """Whether jobcomp has written a settle line for ``job``."""
    return any(ln.split("\t")[1:2] == [job] for ln in settled(c))


def sync(sg, c, *extra) -> dict:
    """``slurmgov sync --json`` against the test cluster (``sg``: the gov fixture's CLI runner); its report."""
    return json.loads(sg("sync", "--slurm-conf-dir", c.conf_dir, "--json", *extra).stdout)


def sacct_state(job: dict) -> str:
    """A job's state in sacct --json, read independently of slurmgov: 22.05 writes a string
    ("COMPLETED"), 24.11 and 26.05 a list of flags (["COMPLETED"])."""
    state = job["state"]["current"]
    return " ".join(state) if isinstance(state, list) else state


def governor_sees_final(c, job: str) -> bool:
    """Whether the governor's own sacct query (the last two days' window) shows ``job`` ended:
    slurmdbd lists a job that just ended under `sacct -j` a few seconds before its time window
    does, and a pass in between bills it only on the next pass."""
    # slurmgov's own parser: it reads every release's sacct --json (22.05's state is a string, 24.11's a list).
    return any(j.job_id == job and j.state == "COMPLETED" for j in slurm_cli.sacct_jobs("now-2days", env=c.env))


def import_kernels(what: str):
    """(torch, slurmgov_kernels: the triton_kernels/ folder) for a module of kernel tests, imported at its top: without a GPU,
    Triton's interpreter is switched on before the kernels are decorated. Without torch or
    triton the module is skipped, and under CI=true (where the kernels extra is installed) fails."""
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
        import triton  # noqa: F401
    except ImportError as e:  # torch or triton absent
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise ImportError(f"{what} need torch and triton (the kernels extra): {e}") from None
        pytest.skip(f"{what} need torch and triton (pip install .[kernels]): {e}", allow_module_level=True)
    from slurmgov.context.kernels import import_kernels

    tk = import_kernels()  # our own package: an import error here must fail
    assert tk.HAVE_TRITON, "triton imports but slurmgov_kernels could not import its kernels"
    return torch, tk


@contextlib.contextmanager
def governing(cluster, env: dict, *governor_args: str):
    """The hooks installed into ``cluster`` and a `slurmgov governor` keeping its snapshot fresh
    and settling its jobs, with ``env``; stopped (SIGINT, then killed) and the queue emptied after."""
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "slurmgov"), "hooks", "install", "--slurm-conf-dir", str(cluster.conf_dir)], env=env,
                   check=True, capture_output=True)
    gov = subprocess.Popen([str(bin_dir / "slurmgov"), "governor", "--slurm-conf-dir", str(cluster.conf_dir),
                            "--interval", "0.5", *governor_args],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield gov
    finally:
        gov.send_signal(signal.SIGINT)
        try:
            gov.wait(15)
        except subprocess.TimeoutExpired:
            gov.kill()
        cluster.cancel_all()
