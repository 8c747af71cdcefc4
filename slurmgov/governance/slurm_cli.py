"""Slurm behind a small interface: its command-line tools with JSON output (22.05+).

pyslurm cannot be built against Slurm 22.05 here, so the CLI is the tested backend.
Commands run with an argument list (never a shell) and a bounded time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass

from slurmgov.errors import SlurmgovError

TOKEN = re.compile(r"slurmgov:hold=([A-Za-z0-9_.:-]+)")
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
         "OUT_OF_MEMORY"}


@dataclass(frozen=True)
class Job:
    job_id: str
    account: str
    state: str
    token: str | None
    gpus: int  # allocated
    start: int
    end: int
    elapsed: int

    @property
    def final(self) -> bool:
        return self.state.split()[0] in FINAL


def run(cmd: list[str], env=None, timeout: float = 60, ok_codes=(0,)) -> str:
    """Run one Slurm command (argument list, no shell); a failure is one SlurmgovError line."""
    what = " ".join([os.path.basename(cmd[0]), *cmd[1:3]])
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except FileNotFoundError:
        raise SlurmgovError(f"{cmd[0]}: not found; is this a Slurm login node?") from None
    except subprocess.TimeoutExpired:
        raise SlurmgovError(f"{what}: no answer in {timeout:g} s") from None
    if p.returncode not in ok_codes:
        last = ((p.stderr.strip() or p.stdout.strip()).splitlines() or ["(no message)"])[-1].strip()
        raise SlurmgovError(f"{what} failed (rc {p.returncode}): {last}")
    return p.stdout


def _token(comment) -> str | None:
    text = comment.get("administrator") if isinstance(comment, dict) else comment
    m = TOKEN.search(text or "")
    return m.group(1) if m else None


def _gpus(tres: list) -> int:
    return sum(int(t.get("count") or 0) for t in tres or () if t.get("type") == "gres" and t.get("name") == "gpu")


def sacct_jobs(since: str = "now-2days", env=None, job_ids=None) -> list[Job]:
    """Jobs of every user that ended or ran since ``since`` (sacct's -S syntax), or just the
    jobs ``job_ids`` (whenever they ran: sacct's -j reaches back to the epoch)."""
    window = ["-j", ",".join(job_ids)] if job_ids else ["-S", since, "-E", "now"]
    data = json.loads(run(["sacct", "--json", "-a", *window], env=env))
    out = []
    for j in data.get("jobs", []):
        t = j.get("time", {})
        state = j.get("state", {}).get("current", "")
        out.append(Job(str(j["job_id"]), j.get("account") or "", state, _token(j.get("comment")),
                       _gpus(j.get("tres", {}).get("allocated")), int(t.get("start") or 0),
                       int(t.get("end") or 0), int(t.get("elapsed") or 0)))
    return out


def squeue_tokens(env=None) -> set[str]:
    """Hold tokens of the jobs Slurm still has pending or running."""
    data = json.loads(run(["squeue", "--json", "-a"], env=env))
    tokens = set()
    for j in data.get("jobs", []):
        tok = _token({"administrator": j.get("admin_comment") or ""}) or _token(j.get("comment"))
        if tok:
            tokens.add(tok)
    return tokens
