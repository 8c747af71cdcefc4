"""Reading the hook journals exactly once.

slurmctld's hooks append one tab-separated line per event (job_submit.lua: ``admit``,
``modify``, ``probe``; jobcomp.lua: ``settle``; format: plugins/SNAPSHOT_FORMAT.md). The
governor reads each file from a saved offset; a last line without its newline is torn (a
crash mid-write, or a write in progress) and is left for the next pass. The offset is only
an optimisation: every event is applied under its own key in the ledger, so reading a line
twice changes nothing.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Admit:
    ts: float
    serial: int
    token: str
    account: str
    user: str
    cost_gpu_s: float  # weighted, worst case, all array tasks
    gpus: int
    time_limit_min: int
    gpu_type: str | None


@dataclass(frozen=True)
class Modify:
    """A priced change to a job (job_modify): its hold ``key`` moves to ``account`` and grows or
    shrinks by ``new_cost_gpu_s - old_cost_gpu_s``."""

    ts: float
    serial: int
    key: str  # the job's hold token, or job-<job_id> when it has none
    account: str
    user: str
    new_cost_gpu_s: float  # weighted, worst case, the job's remaining array tasks
    gpus: int
    time_limit_min: int
    gpu_type: str | None
    job_id: str
    old_account: str
    old_cost_gpu_s: float  # 0 when the job had no token (nothing was held)
    modify_uid: str
    override: bool  # an operator grew the job past the account's budget
    mod_id: str
    tasks: int


@dataclass(frozen=True)
class Settle:
    job_id: str
    token: str | None
    account: str
    gpus: int
    gpu_type: str | None
    start: int
    end: int
    state: str
    array: str | None = None  # <array_job_id>_<task_id>, or <array_job_id>_* for the never-started rest
    restart_cnt: int = 0  # how often the job was requeued before this run

    @property
    def gpu_seconds(self) -> float:
        return self.gpus * max(0, self.end - self.start) if self.start else 0.0

    @property
    def array_rest(self) -> bool:
        """The array's record of its tasks that never started: none of them will run."""
        return self.array is not None and self.array.endswith("_*")


@dataclass(frozen=True)
class Probe:
    """What Slurm handed the submit hook for a probe job (``slurmgov hooks check``): nothing to apply."""

    ts: float
    job_name: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Refuse:
    """The submit hook refused a GPU job (counted for metrics; nothing to apply)."""

    ts: float
    reason: str
    account: str
    user: str


def _num(text: str, what: str) -> float:
    """A finite number >= 0: ``nan``, ``inf`` or a negative cost would poison every later pass."""
    x = float(text)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{what} {text!r} is not a finite number >= 0")
    return x


def _count(text: str, what: str) -> int:
    n = int(text or 0)
    if n < 0:
        raise ValueError(f"{what} {text!r} is negative")
    return n


_KEY = re.compile(r"^[A-Za-z0-9_.:-]+$")  # a hold token or job-<id>, as the hooks write them (never '@')


def _key(text: str, what: str) -> str:
    if not _KEY.match(text):
        raise ValueError(f"{what} {text!r} is not a token")
    return text


def _opt(text: str) -> str | None:
    return None if text in ("", "-") else text


def _flag(text: str, what: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError(f"{what} {text!r} is not 0 or 1")
    return text == "1"


def _modify(f: list[str]) -> Modify:
    if not f[10].strip():
        raise ValueError("modify line without a job id")
    return Modify(_num(f[1], "time"), int(f[2]), _key(f[3], "key"), f[4], f[5], _num(f[6], "new cost"),
                  _count(f[7], "GPUs"), _count(f[8], "time limit"), _opt(f[9]), f[10], f[11],
                  _num(f[12], "old cost"), f[13], _flag(f[14], "override"), _key(f[15], "mod_id"),
                  max(1, _count(f[16], "tasks")))


def _settle(f: list[str]) -> Settle:
    if not f[7].strip():
        raise ValueError("settle line without a job state")
    extra = f[8:] + ["-"] * (11 - len(f))  # gpu_type, array, restart_cnt: absent from older lines
    return Settle(f[1], _opt(f[2]), f[3], _count(f[4], "GPUs"), _opt(extra[0]), _count(f[5], "start"),
                  _count(f[6], "end"), f[7], _opt(extra[1]), _count("0" if extra[2] == "-" else extra[2], "restarts"))


def _probe(f: list[str]) -> Probe:
    pairs = (kv.partition("=") for kv in f[3].split())
    return Probe(_num(f[1], "time"), f[2], {k: v for k, sep, v in pairs if sep})


def parse(line: str):
    """One journal line -> Admit | Modify | Settle | Probe | Refuse; ValueError with the reason
    for anything else."""
    f = line.split("\t")
    if f[0] == "admit" and len(f) == 10:
        return Admit(_num(f[1], "time"), int(f[2]), f[3], f[4], f[5], _num(f[6], "cost"), _count(f[7], "GPUs"),
                     _count(f[8], "time limit"), _opt(f[9]))
    if f[0] == "modify" and len(f) == 17:
        return _modify(f)
    if f[0] == "settle" and 8 <= len(f) <= 11:
        return _settle(f)
    if f[0] == "probe" and len(f) == 4:
        return _probe(f)
    if f[0] == "refuse" and len(f) == 5:
        return Refuse(float(f[1]), f[2], f[3], f[4])
    raise ValueError(f"unrecognised journal line ({len(f)} fields): {line[:120]!r}")


class Cursors:
    """Per-file (inode, offset), saved atomically beside the ledger."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            self.data = {}

    def read_new(self, journal: str | Path) -> tuple[list[tuple[int, str]], dict]:
        """Complete new lines as (offset, text), and the cursor to save once they are applied."""
        journal = Path(journal)
        try:
            st = journal.stat()
        except FileNotFoundError:
            return [], self.data.get(str(journal), {})
        cur = self.data.get(str(journal), {})
        offset = cur.get("offset", 0) if cur.get("inode") == st.st_ino and cur.get("offset", 0) <= st.st_size else 0
        with open(journal, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
        lines, pos = [], offset
        for raw in chunk.split(b"\n")[:-1]:  # the piece after the last newline is torn or empty
            lines.append((pos, raw.decode("utf-8", "replace")))
            pos += len(raw) + 1
        return lines, {"inode": st.st_ino, "offset": pos}

    def commit(self, journal: str | Path, cursor: dict) -> None:
        self.data[str(Path(journal))] = cursor
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)
