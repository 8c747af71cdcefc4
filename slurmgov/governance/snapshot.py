"""The budget snapshot the submit hook reads inside slurmctld (format: the header of plugins/job_submit.lua).

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
    weights, avail = {}, {}
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
        weights=weights, available_gpu_s=avail,
    )


def next_serial(previous: int | None) -> int:
    """Serials only grow, even if the clock steps back."""
    return max(int(time.time() * 1000), (previous or 0) + 1)
