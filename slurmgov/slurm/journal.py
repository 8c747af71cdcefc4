"""Reading the hook journals exactly once.

slurmctld's hooks append one tab-separated line per event (job_submit.lua: ``admit``,
``modify``, ``probe``, ``refuse``; jobcomp.lua: ``settle``; format, versions and field counts:
plugins/SNAPSHOT_FORMAT.md). ``parse`` refuses what the hook's own reader of the journal
(``journal_charge`` in plugins/job_submit.lua) refuses, so that what the hook counts against a
budget is what the governor holds; tests/data/hook_files/ holds the golden lines both are
tested on. The
governor reads each file from a saved offset; a last line without its newline is torn (a
crash mid-write, or a write in progress) and is left for the next pass. The offset is only
an optimisation: every event is applied under its own key in the ledger, so reading a line
twice changes nothing.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from slurmgov.slurm.snapshot import lua_int, lua_num


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
    tasks: int | None = None  # array tasks; None on a line written before the hook wrote them (10 fields)
    cpu_cost_s: float = 0.0  # weighted CPU-seconds, worst case, all array tasks (0: CPUs not budgeted; 13 fields)
    cpus: int = 0  # CPUs per array task the CPU cost covers


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
    new_cpu_cost_s: float = 0.0  # weighted CPU-seconds after the change (0: CPUs not budgeted; 20 fields)
    old_cpu_cost_s: float = 0.0
    cpus: int = 0


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
    cpus: int | None = None  # allocated CPUs (12 fields on); None on an older line

    @property
    def gpu_seconds(self) -> float:
        return self.gpus * max(0, self.end - self.start) if self.start else 0.0

    @property
    def cpu_seconds(self) -> float:
        """Unweighted CPU-seconds used (0 on a line without CPUs)."""
        return (self.cpus or 0) * max(0, self.end - self.start) if self.start else 0.0

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
    """A plain decimal >= 0 as the hook reads one (parse_num): no ``nan``, ``inf``, hex or sign
    but a minus; a negative cost would poison every later pass."""
    x = lua_num(text)
    if x is None or x < 0:
        raise ValueError(f"{what} {text!r} is not a finite number >= 0")
    return x


def _count(text: str, what: str) -> int:
    """Digits only (parse_int)."""
    n = lua_int(text)
    if n is None:
        raise ValueError(f"{what} {text!r} is not a count")
    return n


_KEY = re.compile(r"[A-Za-z0-9_.:-]+")  # a hold token or job-<id>, as the hooks write them (never '@')
_NOT_SPACE = re.compile(r"[^ \t\n\r\f\v]")  # Lua's %S


def _key(text: str, what: str) -> str:
    if not _KEY.fullmatch(text):
        raise ValueError(f"{what} {text!r} is not a token")
    return text


def _opt(text: str) -> str | None:
    return None if text in ("", "-") else text


def _flag(text: str, what: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError(f"{what} {text!r} is not 0 or 1")
    return text == "1"


def _admit(f: list[str]) -> Admit:
    tasks = None
    if len(f) >= 11:  # the array's task count, explicit since the 11-field line
        tasks = _count(f[10], "tasks")
        if tasks < 1:
            raise ValueError(f"tasks {f[10]!r} is not a count >= 1")
    cpu_cost, cpus = 0.0, 0
    if len(f) >= 13:  # the CPU cost and CPUs, since CPU budgets
        cpu_cost, cpus = _num(f[11], "CPU cost"), _count(f[12], "CPUs")
    return Admit(_num(f[1], "time"), _count(f[2], "serial"), _key(f[3], "token"), f[4], f[5], _num(f[6], "cost"),
                 _count(f[7], "GPUs"), _count(f[8], "time limit"), _opt(f[9]), tasks, cpu_cost, cpus)


def _modify(f: list[str]) -> Modify:
    if not _NOT_SPACE.search(f[10]):
        raise ValueError("modify line without a job id")
    cpu = (_num(f[17], "new CPU cost"), _num(f[18], "old CPU cost"), _count(f[19], "CPUs")) if len(f) >= 20 \
        else (0.0, 0.0, 0)
    return Modify(_num(f[1], "time"), _count(f[2], "serial"), _key(f[3], "key"), f[4], f[5], _num(f[6], "new cost"),
                  _count(f[7], "GPUs"), _count(f[8], "time limit"), _opt(f[9]), f[10], f[11],
                  _num(f[12], "old cost"), f[13], _flag(f[14], "override"), _key(f[15], "mod_id"),
                  max(1, _count(f[16], "tasks")), *cpu)


def _settle(f: list[str]) -> Settle:
    if not _NOT_SPACE.search(f[7]):
        raise ValueError("settle line without a job state")
    extra = f[8:11] if len(f) >= 11 else ["-", "-", "-"]  # gpu_type, array, restart_cnt: not in 8-field lines
    cpus = _count(f[11], "CPUs") if len(f) >= 12 else None
    return Settle(f[1], _opt(f[2]), f[3], _count(f[4], "GPUs"), _opt(extra[0]), _count(f[5], "start"),
                  _count(f[6], "end"), f[7], _opt(extra[1]), _count("0" if extra[2] == "-" else extra[2], "restarts"),
                  cpus)


def _probe(f: list[str]) -> Probe:
    pairs = (kv.partition("=") for kv in f[3].split())
    return Probe(_num(f[1], "time"), f[2], {k: v for k, sep, v in pairs if sep})


# The field counts each kind of line has had (plugins/SNAPSHOT_FORMAT.md, "Versions"): fields are
# only ever added at the end, so a line with more fields than its kind's newest count is read as
# that count (the extra fields are a later version's); a count between two versions (a settle
# line of 9 or 10 fields) was never written and is refused.
FIELD_COUNTS = {"admit": (10, 11, 13), "modify": (17, 20), "settle": (8, 11, 12), "probe": (4,), "refuse": (5,)}


def known_count(kind: str, n: int) -> bool:
    counts = FIELD_COUNTS.get(kind)
    return counts is not None and (n in counts or n > counts[-1])


def parse(line: str):
    """One journal line -> Admit | Modify | Settle | Probe | Refuse; ValueError with the reason
    for anything else."""
    f = line.split("\t")
    if not known_count(f[0], len(f)):
        raise ValueError(f"unrecognised journal line ({len(f)} fields): {line[:120]!r}")
    if f[0] == "admit":
        return _admit(f)
    if f[0] == "modify":
        return _modify(f)
    if f[0] == "settle":
        return _settle(f)
    if f[0] == "probe":
        return _probe(f)
    return Refuse(_num(f[1], "time"), f[2], f[3], f[4])


def _complete_lines(chunk: bytes, offset: int) -> tuple[list[tuple[int, str]], int]:
    """The complete lines of ``chunk`` (read from ``offset``) as (offset, text), and the offset
    after the last one: the piece after the last newline is torn (a write in progress, or a crash
    mid-write) or empty."""
    lines, pos = [], offset
    for raw in chunk.split(b"\n")[:-1]:
        lines.append((pos, raw.decode("utf-8", "replace")))
        pos += len(raw) + 1
    return lines, pos


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
        lines, pos = _complete_lines(chunk, offset)
        return lines, {"inode": st.st_ino, "offset": pos}

    def read_rotated(self, journal: str | Path) -> tuple[Path, list[tuple[int, str]]] | None:
        """The rest of a journal renamed away since the last pass (logrotate: ``<journal>.1``,
        packaging/logrotate/slurmgov): its complete lines after the saved offset, read before
        the new file so that none written before the rename is lost. None when the journal was
        not rotated, or its old file is gone (compressed or removed: too late)."""
        journal = Path(journal)
        cur = self.data.get(str(journal), {})
        if "inode" not in cur:
            return None
        try:
            if journal.stat().st_ino == cur["inode"]:
                return None
        except FileNotFoundError:
            pass
        old = journal.with_name(journal.name + ".1")
        try:
            with open(old, "rb") as fh:
                if os.fstat(fh.fileno()).st_ino != cur["inode"]:
                    return None
                offset = cur.get("offset", 0)
                fh.seek(offset)
                chunk = fh.read()
        except FileNotFoundError:
            return None
        return old, _complete_lines(chunk, offset)[0]

    def commit(self, journal: str | Path, cursor: dict) -> None:
        self.data[str(Path(journal))] = cursor
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)
