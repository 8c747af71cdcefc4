"""The budget snapshot the submit hook reads inside slurmctld (format: plugins/SNAPSHOT_FORMAT.md).

Line-oriented and tab-separated so the Lua hook parses it with fixed patterns and never
executes it. Written atomically (temp file, fsync, rename), so the hook sees the old file or
the new one, never half of one.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = "slurmgov-snapshot"
VERSION = 1
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Snapshot:
    serial: int
    written: int
    max_age_s: int
    fail_policy: str
    default_time_min: int
    max_gpus_per_node: int
    default_weight: float
    journal_offset: int | None = None  # admit-journal bytes already in the ledger's holds
    total_gpus: int | None = None
    weights: dict[str, float] = field(default_factory=dict)
    available_gpu_s: dict[str, float] = field(default_factory=dict)  # weighted GPU-seconds per account
    operator_uids: list[int] = field(default_factory=list)  # may change a job past the budget (besides root)
    partition_gpus: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # GPUs per node, type

    def render(self) -> str:
        lines = [
            f"{MAGIC}\t{VERSION}", f"serial\t{self.serial}", f"written\t{self.written}",
            f"max_age_s\t{self.max_age_s}", f"fail_policy\t{self.fail_policy}",
            f"default_time_min\t{self.default_time_min}", f"max_gpus_per_node\t{self.max_gpus_per_node}",
            f"default_weight\t{self.default_weight:g}",
        ]
        if self.journal_offset is not None:
            lines.append(f"journal_offset\t{self.journal_offset}")
        if self.total_gpus is not None:
            lines.append(f"total_gpus\t{self.total_gpus}")
        lines += [f"weight\t{t}\t{w:g}" for t, w in sorted(self.weights.items()) if _SAFE.match(t)]
        lines += [f"operator_uid\t{uid}" for uid in sorted(set(self.operator_uids)) if uid >= 0]
        lines += [f"partition_gpus\t{p}\t{n}\t{t if t and _SAFE.match(t) else '-'}"
                  for p, (n, t) in sorted(self.partition_gpus.items()) if _SAFE.match(p)]
        # Names that could confuse a line-oriented reader never reach the file.
        lines += [f"account\t{a}\t{max(0.0, v):.3f}" for a, v in sorted(self.available_gpu_s.items()) if _SAFE.match(a)]
        return "\n".join(lines) + "\nend\n"


def write(path: str | Path, snap: Snapshot, mode: int = 0o644) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".snapshot.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(snap.render())
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read(path: str | Path) -> Snapshot:
    """Parse a snapshot; a file without its final ``end`` line is torn and refused."""
    text = Path(path).read_text()
    lines = text.split("\n")
    if not lines or lines[0] != f"{MAGIC}\t{VERSION}":
        raise ValueError(f"{path}: not a slurmgov snapshot (version {VERSION})")
    if "end" not in lines:
        raise ValueError(f"{path}: snapshot is incomplete (no end line)")
    kv: dict[str, str] = {}
    weights, avail, operators, part_gpus = {}, {}, [], {}
    for ln in lines[1:]:
        if ln == "end":
            break
        if not ln or ln.startswith("#"):
            continue
        parts = ln.split("\t")
        if parts[0] == "weight" and len(parts) == 3:
            weights[parts[1]] = float(parts[2])
        elif parts[0] == "account" and len(parts) == 3:
            avail[parts[1]] = float(parts[2])
        elif parts[0] == "operator_uid" and len(parts) == 2:
            operators.append(int(parts[1]))
        elif parts[0] == "partition_gpus" and len(parts) == 4:
            part_gpus[parts[1]] = (int(parts[2]), None if parts[3] == "-" else parts[3])
        elif len(parts) == 2:
            kv[parts[0]] = parts[1]
        else:
            raise ValueError(f"{path}: malformed line {ln!r}")
    return Snapshot(
        serial=int(kv["serial"]), written=int(kv["written"]), max_age_s=int(kv["max_age_s"]),
        fail_policy=kv["fail_policy"], default_time_min=int(kv["default_time_min"]),
        max_gpus_per_node=int(kv["max_gpus_per_node"]), default_weight=float(kv["default_weight"]),
        journal_offset=int(kv["journal_offset"]) if "journal_offset" in kv else None,
        total_gpus=int(kv["total_gpus"]) if "total_gpus" in kv else None,
        weights=weights, available_gpu_s=avail, operator_uids=operators, partition_gpus=part_gpus,
    )


def next_serial(previous: int | None) -> int:
    """Serials only grow, even if the clock steps back."""
    return max(int(time.time() * 1000), (previous or 0) + 1)


_LUA_NUM = re.compile(r"-?[0-9]+\.?[0-9]*|-?[0-9]+\.?[0-9]*[eE][-+]?[0-9]+|-?\.[0-9]+")
_LUA_INT = re.compile(r"[0-9]+")


def _lua_num(s: str | None) -> float | None:
    if s is None or not _LUA_NUM.fullmatch(s):
        return None
    n = float(s)
    return n if float("-inf") < n < float("inf") else None  # not nan, not inf


def _lua_int(s: str | None) -> int | None:
    return int(s) if s is not None and _LUA_INT.fullmatch(s) else None


def read_price_params(path: str | Path):
    """The pricing parameters of the snapshot at ``path`` (a gpu_request.PriceParams), read as
    the submit hook reads them (parse_snapshot in plugins/job_submit.lua): ValueError (or
    OSError) where the hook would find the file unreadable."""
    from slurmgov.slurm.gpu_request import PriceParams

    lines = Path(path).read_text(errors="surrogateescape").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    snap: dict = {"default_time_min": 60, "sockets_per_node": 1, "default_weight": 1.0}
    weights: dict[str, float] = {}
    partition_gpus: dict[str, tuple[int, str | None]] = {}
    accounts: list[str] = []
    ended = False
    for i, ln in enumerate(lines, 1):
        ln = ln.removesuffix("\r")
        if ended:
            if ln != "":
                raise ValueError(f"{path}: no end line (incomplete write?)")
        elif i == 1:
            if ln != f"{MAGIC}\t{VERSION}":
                raise ValueError(f"{path}: not a version {VERSION} slurmgov snapshot")
        elif ln == "end":
            ended = True
        elif ln.startswith("account\t"):
            f = ln.split("\t")
            if len(f) != 3 or not f[1] or not f[2] or _lua_num(f[2]) is None:
                raise ValueError(f"{path}: bad line {i} (account)")
            accounts.append(f[1])
        elif ln and not ln.startswith("#"):
            f = ln.split("\t")
            key, bad = f[0], False
            if key in ("serial", "max_gpus_per_node", "total_gpus", "sockets_per_node", "journal_offset"):
                snap[key] = _lua_int(f[1] if len(f) > 1 else None)
                bad = snap[key] is None or len(f) != 2
            elif key in ("written", "max_age_s"):
                snap[key] = _lua_num(f[1] if len(f) > 1 else None)
                bad = snap[key] is None or len(f) != 2
            elif key == "fail_policy":
                bad = len(f) != 2 or f[1] not in ("open", "closed")
            elif key == "default_time_min":
                snap[key] = _lua_int(f[1] if len(f) > 1 else None)
                bad = snap[key] is None or snap[key] <= 0 or len(f) != 2
            elif key == "default_weight":
                snap[key] = _lua_num(f[1] if len(f) > 1 else None)
                bad = snap[key] is None or snap[key] < 0 or len(f) != 2
            elif key == "weight":
                w = _lua_num(f[2] if len(f) > 2 else None)
                bad = len(f) != 3 or f[1] == "" or w is None or w < 0
                if not bad and w is not None:  # bad when None; said again for the type checker
                    weights[f[1]] = w
            elif key == "operator_uid":
                bad = len(f) != 2 or _lua_int(f[1]) is None
            elif key == "partition_gpus":
                n = _lua_int(f[2] if len(f) > 2 else None)
                bad = len(f) != 4 or f[1] == "" or n is None
                if not bad and n is not None:  # bad when None; said again for the type checker
                    partition_gpus[f[1]] = (n, None if f[3] == "-" else f[3])
            if bad:
                raise ValueError(f"{path}: bad line {i} ({key})")
    if not ended:
        raise ValueError(f"{path}: no end line (incomplete write?)")
    if any(snap.get(k) is None for k in ("serial", "written", "max_age_s")):
        raise ValueError(f"{path}: missing serial, written or max_age_s")
    dups = sorted({a for a in accounts if accounts.count(a) > 1}) if len(set(accounts)) < len(accounts) else []
    if dups:
        raise ValueError(f"{path}: duplicate account {dups[0]}")
    return PriceParams(
        weights=weights, default_weight=snap["default_weight"], default_time_min=snap["default_time_min"],
        max_gpus_per_node=snap.get("max_gpus_per_node"), total_gpus=snap.get("total_gpus"),
        sockets_per_node=max(1, snap["sockets_per_node"]), partition_gpus=partition_gpus,
    )
