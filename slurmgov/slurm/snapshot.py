"""The budget snapshot the submit hook reads inside slurmctld (format: plugins/SNAPSHOT_FORMAT.md).

Line-oriented and tab-separated so the Lua hook parses it with fixed patterns and never
executes it. Written atomically (temp file, fsync, rename), so the hook sees the old file or
the new one, never half of one.

There is one reader, ``parse``, exactly as strict as the hook's ``parse_snapshot``
(plugins/job_submit.lua): a file one refuses the other refuses with the same reason, and a
file both read gives both the same values. tests/data/hook_files/ holds the golden files both
are tested on (tests/test_hook_files.py).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from slurmgov.site.names import is_name

MAGIC = "slurmgov-snapshot"
VERSION = 1
MAX_UID = 4294967295  # a ``user`` line's uid is at most this (a 32-bit uid), in both readers
FAIL_POLICIES = ("open", "closed")


@dataclass
class Snapshot:
    serial: int
    written: float  # unix seconds (the writer writes an integer; the hook reads any plain decimal)
    max_age_s: float
    fail_policy: str = "closed"
    default_time_min: int = 60
    max_gpus_per_node: int | None = None  # None: no such line (no check)
    default_weight: float = 1.0
    journal_offset: int | None = None  # admit-journal bytes already in the ledger's holds
    total_gpus: int | None = None
    weights: dict[str, float] = field(default_factory=dict)
    available_gpu_s: dict[str, float] = field(default_factory=dict)  # weighted GPU-seconds per account
    operator_uids: list[int] = field(default_factory=list)  # may change a job past the budget (besides root)
    partition_gpus: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # GPUs per node, type
    sockets_per_node: int | None = None  # None: no such line (the hook takes 1)
    # capped users: (account, uid) -> (available weighted GPU-seconds, cap in weighted GPU-seconds)
    user_caps: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    # CPU budgets: accounts with one -> available weighted CPU-seconds (absent: CPUs not budgeted)
    available_cpu_s: dict[str, float] = field(default_factory=dict)
    partition_cpus: dict[str, tuple[int, float]] = field(default_factory=dict)  # CPUs per node, weight per CPU-h
    default_cpu_weight: float | None = None  # None: no such line (the hook takes 1.0)
    max_cpus_per_node: int | None = None  # None: no such line

    def render(self) -> str:
        """The file's text. Names the hook could misread (TAB, CR, LF, anything outside
        a name (``site.names``)) are left out; a number the hook would refuse (nan, inf, a negative weight or
        count) raises ValueError: the hook would find the whole file unreadable."""
        for what, x in [("written", self.written), ("max_age_s", self.max_age_s),
                        ("default_weight", self.default_weight), *self.weights.items(),
                        *self.available_gpu_s.items(), *self.available_cpu_s.items(),
                        *((f"partition_cpus {p}", w) for p, (_, w) in self.partition_cpus.items()),
                        ("default_cpu_weight", 1.0 if self.default_cpu_weight is None else self.default_cpu_weight),
                        *((f"user {a} {u}", x) for (a, u), pair in self.user_caps.items() for x in pair)]:
            if not math.isfinite(x):
                raise ValueError(f"snapshot: {what} is {x!r}, not a finite number")
        ints = [self.serial, self.default_time_min, self.max_gpus_per_node, self.total_gpus, self.journal_offset,
                self.sockets_per_node, *(n for n, _ in self.partition_gpus.values()), *(u for _, u in self.user_caps),
                self.max_cpus_per_node, *(n for n, _ in self.partition_cpus.values())]
        if any(n is not None and (not isinstance(n, int) or n < 0) for n in ints) or self.default_time_min <= 0:
            raise ValueError("snapshot: a count, serial or default_time_min is negative or not an integer")
        if self.default_weight < 0 or any(w < 0 for w in self.weights.values()) \
                or any(w < 0 for _, w in self.partition_cpus.values()) or (self.default_cpu_weight or 0) < 0:
            raise ValueError("snapshot: a weight is negative")
        if self.fail_policy not in FAIL_POLICIES:
            raise ValueError(f"snapshot: fail_policy {self.fail_policy!r} is not open or closed")
        lines = [
            f"{MAGIC}\t{VERSION}", f"serial\t{self.serial}", f"written\t{_num(self.written)}",
            f"max_age_s\t{_num(self.max_age_s)}", f"fail_policy\t{self.fail_policy}",
            f"default_time_min\t{self.default_time_min}",
        ]
        if self.max_gpus_per_node is not None:
            lines.append(f"max_gpus_per_node\t{self.max_gpus_per_node}")
        lines.append(f"default_weight\t{self.default_weight:g}")
        if self.journal_offset is not None:
            lines.append(f"journal_offset\t{self.journal_offset}")
        if self.total_gpus is not None:
            lines.append(f"total_gpus\t{self.total_gpus}")
        if self.sockets_per_node is not None:
            lines.append(f"sockets_per_node\t{self.sockets_per_node}")
        lines += [f"weight\t{t}\t{w:g}" for t, w in sorted(self.weights.items()) if is_name(t)]
        lines += [f"operator_uid\t{uid}" for uid in sorted(set(self.operator_uids)) if uid >= 0]
        lines += [f"partition_gpus\t{p}\t{n}\t{t if t and is_name(t) else '-'}"
                  for p, (n, t) in sorted(self.partition_gpus.items()) if is_name(p)]
        # Names that could confuse a line-oriented reader never reach the file.
        lines += [f"account\t{a}\t{max(0.0, v):.3f}" for a, v in sorted(self.available_gpu_s.items()) if is_name(a)]
        if any(u > MAX_UID for _, u in self.user_caps):
            raise ValueError(f"snapshot: a user's uid is beyond {MAX_UID}")
        lines += [f"user\t{a}\t{u}\t{max(0.0, avail):.3f}\t{max(0.0, cap):.3f}"
                  for (a, u), (avail, cap) in sorted(self.user_caps.items()) if is_name(a)]
        # CPU budgets (a hook older than them ignores these keys and never prices CPUs)
        if self.default_cpu_weight is not None:
            lines.append(f"default_cpu_weight\t{self.default_cpu_weight:g}")
        if self.max_cpus_per_node is not None:
            lines.append(f"max_cpus_per_node\t{self.max_cpus_per_node}")
        lines += [f"partition_cpus\t{p}\t{n}\t{w:g}" for p, (n, w) in sorted(self.partition_cpus.items()) if is_name(p)]
        lines += [f"cpu_account\t{a}\t{max(0.0, v):.3f}" for a, v in sorted(self.available_cpu_s.items())
                  if is_name(a)]
        return "\n".join(lines) + "\nend\n"


def _num(x: float) -> str:
    """A number as the hook reads it back exactly: integers in full (``:g`` would round
    1700000000 to 1.7e+09), others by repr (a plain decimal, perhaps with an exponent)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def write(path: str | Path, snap: Snapshot, mode: int = 0o644) -> None:
    path = Path(path)
    text = snap.render()  # before the temp file: a snapshot the hook would refuse is never written
    fd, tmp = tempfile.mkstemp(prefix=".snapshot.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def next_serial(previous: int | None) -> int:
    """Serials only grow, even if the clock steps back."""
    return max(int(time.time() * 1000), (previous or 0) + 1)


# parse_num and parse_int of plugins/job_submit.lua: plain decimals (an optional minus, no plus,
# no hex, no nan/inf, nothing beyond a double); integers are digits only.
_LUA_NUM = re.compile(r"-?[0-9]+\.?[0-9]*|-?[0-9]+\.?[0-9]*[eE][-+]?[0-9]+|-?\.[0-9]+")
_LUA_INT = re.compile(r"[0-9]+")


def lua_num(s: str | None) -> float | None:
    if s is None or not _LUA_NUM.fullmatch(s):
        return None
    n = float(s)
    return n if math.isfinite(n) else None


def lua_int(s: str | None) -> int | None:
    return int(s) if s is not None and _LUA_INT.fullmatch(s) else None


def _printable(s: str) -> str:
    """The hook's printable(): control characters become '?'."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", s)


def _whole(x: float) -> float:
    return int(x) if x.is_integer() else x


_INT_KEYS = ("serial", "max_gpus_per_node", "total_gpus", "sockets_per_node", "journal_offset", "max_cpus_per_node")


def parse(text: str) -> Snapshot:
    """A snapshot's text, read as parse_snapshot in plugins/job_submit.lua reads it: the same
    files refused, with the same reason (ValueError), and the same values where read.

    One record per line (a trailing CR is dropped); line 1 is the magic; the last non-empty
    line is ``end``; blank and ``#`` lines are skipped; unknown keys are ignored; a known key
    with a wrong field count or value, or a duplicate account, makes the whole file unreadable."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline ending the last line starts no line
    s: dict = {}
    weights: dict[str, float] = {}
    partition_gpus: dict[str, tuple[int, str | None]] = {}
    operators: list[int] = []
    accounts: list[tuple[str, float]] = []
    users: list[tuple[tuple[str, int], tuple[float, float]]] = []
    cpu_accounts: list[tuple[str, float]] = []
    partition_cpus: dict[str, tuple[int, float]] = {}
    ended = False
    for i, ln in enumerate(lines, 1):
        ln = ln.removesuffix("\r")
        if ended:
            if ln != "":
                raise ValueError("no end line (incomplete write?)")
        elif i == 1:
            if ln != f"{MAGIC}\t{VERSION}":
                raise ValueError(f"not a version {VERSION} slurmgov snapshot")
        elif ln == "end":
            ended = True
        elif ln.startswith("account\t"):
            f = ln.split("\t")
            v = lua_num(f[2]) if len(f) == 3 and f[1] and f[2] else None
            if v is None:
                raise ValueError(f"bad line {i} (account)")
            accounts.append((f[1], v))
        elif ln.startswith("user\t") or ln == "user":
            f = ln.split("\t")
            ok = len(f) == 5 and f[1] != "" and all(f[1:])
            uid = lua_int(f[2]) if ok else None
            avail, cap = (lua_num(f[3]), lua_num(f[4])) if ok else (None, None)
            if uid is None or uid > MAX_UID or avail is None or cap is None:
                raise ValueError(f"bad line {i} (user)")
            users.append(((f[1], uid), (avail, cap)))
        elif ln.startswith("cpu_account\t") or ln == "cpu_account":
            f = ln.split("\t")
            v = lua_num(f[2]) if len(f) == 3 and f[1] and f[2] else None
            if v is None:
                raise ValueError(f"bad line {i} (cpu_account)")
            cpu_accounts.append((f[1], v))
        elif ln and not ln.startswith("#"):
            f = ln.split("\t")
            key, arg = f[0], (f[1] if len(f) > 1 else None)
            if key in _INT_KEYS:
                s[key] = n = lua_int(arg)
                bad = n is None or len(f) != 2
            elif key in ("written", "max_age_s"):
                s[key] = x = lua_num(arg)
                bad = x is None or len(f) != 2
            elif key == "fail_policy":
                s[key] = arg
                bad = len(f) != 2 or arg not in FAIL_POLICIES
            elif key == "default_time_min":
                s[key] = n = lua_int(arg)
                bad = n is None or n <= 0 or len(f) != 2
            elif key in ("default_weight", "default_cpu_weight"):
                s[key] = x = lua_num(arg)
                bad = x is None or x < 0 or len(f) != 2
            elif key == "weight":
                w = lua_num(f[2] if len(f) > 2 else None)
                bad = len(f) != 3 or f[1] == "" or w is None or w < 0
                if not bad and w is not None:  # bad when None; said again for the type checker
                    weights[f[1]] = w
            elif key == "operator_uid":
                u = lua_int(arg)
                bad = len(f) != 2 or u is None
                if not bad and u is not None:
                    operators.append(u)
            elif key == "partition_gpus":
                n = lua_int(f[2] if len(f) > 2 else None)
                bad = len(f) != 4 or f[1] == "" or n is None
                if not bad and n is not None:
                    partition_gpus[f[1]] = (n, None if f[3] == "-" else f[3])
            elif key == "partition_cpus":
                n = lua_int(f[2] if len(f) > 2 else None)
                w = lua_num(f[3] if len(f) > 3 else None)
                bad = len(f) != 4 or f[1] == "" or n is None or w is None or w < 0
                if not bad and n is not None and w is not None:
                    partition_cpus[f[1]] = (n, w)
            else:
                bad = False  # an unknown key: a later version's, ignored
            if bad:
                raise ValueError(f"bad line {i} ({_printable(key)})")
    if not ended:
        raise ValueError("no end line (incomplete write?)")
    if any(s.get(k) is None for k in ("serial", "written", "max_age_s")):
        raise ValueError("missing serial, written or max_age_s")
    names = sorted(a.encode("utf-8", "surrogateescape") for a, _ in accounts)
    dup = next((a for a, b in zip(names, names[1:]) if a == b), None)
    if dup is not None:
        raise ValueError(f"duplicate account {_printable(dup.decode('utf-8', 'surrogateescape'))}")
    # sorted as the hook sorts them (bytewise, by "<account>:<uid>"), so both name the same duplicate
    keys = sorted((f"{a}:{u}".encode("utf-8", "surrogateescape"), a, u) for (a, u), _ in users)
    udup = next((x for x, y in zip(keys, keys[1:]) if x[0] == y[0]), None)
    if udup is not None:
        raise ValueError(f"duplicate user {_printable(udup[1])} {udup[2]}")
    cnames = sorted(a.encode("utf-8", "surrogateescape") for a, _ in cpu_accounts)
    cdup = next((a for a, b in zip(cnames, cnames[1:]) if a == b), None)
    if cdup is not None:
        raise ValueError(f"duplicate cpu_account {_printable(cdup.decode('utf-8', 'surrogateescape'))}")
    return Snapshot(
        serial=s["serial"], written=_whole(s["written"]), max_age_s=_whole(s["max_age_s"]),
        fail_policy=s.get("fail_policy", "closed"), default_time_min=s.get("default_time_min", 60),
        max_gpus_per_node=s.get("max_gpus_per_node"), default_weight=s.get("default_weight", 1.0),
        journal_offset=s.get("journal_offset"), total_gpus=s.get("total_gpus"), weights=weights,
        available_gpu_s=dict(accounts), operator_uids=operators, partition_gpus=partition_gpus,
        sockets_per_node=s.get("sockets_per_node"), user_caps=dict(users),
        available_cpu_s=dict(cpu_accounts), partition_cpus=partition_cpus,
        default_cpu_weight=s.get("default_cpu_weight"), max_cpus_per_node=s.get("max_cpus_per_node"),
    )


def read(path: str | Path) -> Snapshot:
    """The snapshot at ``path`` (``parse``); ValueError '<path>: <reason>' where the hook would
    find it unreadable, OSError where it cannot be read at all."""
    text = Path(path).read_bytes().decode("utf-8", "surrogateescape")
    try:
        return parse(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def read_price_params(path: str | Path):
    """The pricing parameters of the snapshot at ``path`` (a gpu_request.PriceParams), as the
    submit hook prices with them: ValueError (or OSError) where the hook would find the file
    unreadable."""
    from slurmgov.slurm.gpu_request import PriceParams

    snap = read(path)
    return PriceParams(
        weights=snap.weights, default_weight=snap.default_weight, default_time_min=snap.default_time_min,
        max_gpus_per_node=snap.max_gpus_per_node, total_gpus=snap.total_gpus,
        sockets_per_node=max(1, snap.sockets_per_node or 1), partition_gpus=snap.partition_gpus,
        partition_cpus=snap.partition_cpus, max_cpus_per_node=snap.max_cpus_per_node,
        default_cpu_weight=1.0 if snap.default_cpu_weight is None else snap.default_cpu_weight,
    )
