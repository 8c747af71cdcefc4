"""Where runs are recorded: one JSON file per run under ``$SLURMGOV_HOME/runs``.

A run writes its record when it is admitted (status ``running``, with the process and host that
run it, so `slurmgov runs cancel` can reach it) and again when it ends (everything that
happened, for reports). A record that still says ``running`` whose process is gone from this
host is shown as ``lost``: its hold lapses and is released (see ledger/lease.py).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from slurmgov.errors import InputError
from slurmgov.site.model import slurmgov_home
from slurmgov.site.names import is_name


def runs_dir() -> Path:
    return slurmgov_home() / "runs"




def check_run_id(run_id: str) -> str:
    """``run_id`` if it is one a run could have (letters, digits, . _ -): never a path."""
    if not is_name(run_id):  # a file name, a hold key, a Slurm comment
        raise InputError(f"run_id: {str(run_id)[:80]!r} is not a run id (letters, digits, . _ -; at most 64)")
    return run_id


def new_run_id(run_id: str) -> str:
    """``run_id`` for a new run: a valid id no run has used (its record and hold would be another's)."""
    check_run_id(run_id)
    if record_path(run_id).exists():
        raise InputError(f"run_id: run {run_id} already exists; a new run needs a new id")
    return run_id


def record_path(run_id: str) -> Path:
    return runs_dir() / f"{run_id}.json"


def write(run_id: str, doc: dict) -> Path | None:
    """Write ``doc`` as the run's record, atomically; None where the directory cannot be made."""
    runs = runs_dir()
    try:
        runs.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    path = record_path(run_id)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)
    return path


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot): a pid reused later has another."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def this_process() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": _start_ticks(os.getpid())}


def read(run_id: str) -> dict:
    path = record_path(check_run_id(run_id))
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"no run {run_id!r}: no record {path}") from None
    except (OSError, ValueError) as e:
        raise InputError(f"run {run_id!r}: record {path} is unreadable: {e}") from None


def read_all(directory: Path | None = None, limit: int | None = None) -> list[dict]:
    """The readable run records of ``directory`` (default: this home's), most recently written
    first, at most ``limit`` of them (a record being written, or unreadable, is skipped)."""
    runs = runs_dir() if directory is None else directory
    if not runs.is_dir():
        return []
    docs: list[dict] = []
    for f in sorted(runs.glob("*.json"), key=_mtime, reverse=True):
        if limit is not None and len(docs) >= limit:
            break
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("run_id"):
            docs.append(doc)
    return docs


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile: read_text skips it
        return 0.0


def alive(doc: dict) -> bool | None:
    """Whether the run's process still lives: None when it runs on another host (unknowable here)."""
    if doc.get("host") != socket.gethostname():
        return None
    try:
        pid = int(doc["pid"])
        os.kill(pid, 0)
    except (KeyError, TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass  # someone else's live process: its start time still tells whether it is the run
    started = doc.get("pid_start")
    return started is None or _start_ticks(pid) == started


def state(doc: dict) -> str:
    """The record's status, with ``lost`` for a run that says it is running but whose process is gone."""
    status = doc.get("status") or "?"
    if status == "running" and alive(doc) is False:
        return "lost"
    return status
