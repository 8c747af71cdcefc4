"""Reading the hook journals exactly once.

slurmctld's hooks append one tab-separated line per event (job_submit.lua: ``admit``;
jobcomp.lua: ``settle``). The governor reads each file from a saved offset; a last line
without its newline is torn (a crash mid-write, or a write in progress) and is left for the
next pass. The offset is only an optimisation: every event is applied under its own key in
the ledger, so reading a line twice changes nothing.
"""

from __future__ import annotations

import math

import json
import os
from dataclasses import dataclass
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
class Settle:
    job_id: str
    token: str | None
    account: str
    gpus: int
    gpu_type: str | None
    start: int
    end: int
    state: str

    @property
    def gpu_seconds(self) -> float:
        return self.gpus * max(0, self.end - self.start) if self.start else 0.0


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


def parse(line: str):
    """One journal line -> Admit | Settle | Refuse; ValueError with the reason for anything else."""
    f = line.split("\t")
    if f[0] == "admit" and len(f) == 10:
        return Admit(_num(f[1], "time"), int(f[2]), f[3], f[4], f[5], _num(f[6], "cost"), _count(f[7], "GPUs"),
                     _count(f[8], "time limit"), None if f[9] in ("", "-") else f[9])
    if f[0] == "settle" and len(f) in (8, 9):
        gpu_type = (None if f[8] in ("", "-") else f[8]) if len(f) == 9 else None
        if not f[7].strip():
            raise ValueError("settle line without a job state")
        return Settle(f[1], None if f[2] in ("", "-") else f[2], f[3], _count(f[4], "GPUs"), gpu_type,
                      _count(f[5], "start"), _count(f[6], "end"), f[7])
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
