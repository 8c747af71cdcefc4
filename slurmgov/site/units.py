"""Slurm's spellings of time and memory, parsed once for every plane."""

from __future__ import annotations

import re

_TIME = re.compile(
    r"^(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"  # D-HH[:MM[:SS]]
    r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$",  # MM | MM:SS | HH:MM:SS
    re.ASCII,  # Slurm reads ASCII digits only; Python's \d also takes '١٢' (and int() reads it as 12)
)


def slurm_seconds(text: str) -> int | None:
    """Seconds of a Slurm time string (all of sbatch's forms), or None if it is not one."""
    m = _TIME.match(text.strip())
    if not m:
        return None
    if m["d"] is not None:
        secs = int(m["d"]) * 86400 + int(m["dh"]) * 3600 + int(m["dm"] or 0) * 60 + int(m["ds"] or 0)
    elif m["c"] is not None:
        secs = int(m["a"]) * 3600 + int(m["b"]) * 60 + int(m["c"])
    elif m["b"] is not None:
        secs = int(m["a"]) * 60 + int(m["b"])
    else:
        secs = int(m["a"]) * 60
    return secs


def parse_time_seconds(value) -> int:
    """Slurm time limit (``30``, ``30:00``, ``1:00:00``, ``2-12``, ``1-00:30:00``) or int minutes -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a time limit: {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("time limit must be positive")
        return value * 60
    secs = slurm_seconds(str(value))
    if secs is None:
        raise ValueError(f"not a Slurm time limit: {str(value).strip()!r} (use MM, HH:MM:SS or D-HH:MM:SS)")
    if secs <= 0:
        raise ValueError("time limit must be positive")
    return secs


def format_time(seconds: float) -> str:
    """Seconds -> Slurm's ``D-HH:MM:SS`` / ``HH:MM:SS``, rounded up to the minute."""
    minutes = max(1, -(-int(seconds) // 60))
    d, rem = divmod(minutes, 1440)
    h, m = divmod(rem, 60)
    return f"{d}-{h:02d}:{m:02d}:00" if d else f"{h:02d}:{m:02d}:00"


_MEM = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?$", re.IGNORECASE | re.ASCII)
_MEM_MULT = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_memory_mb(value) -> int:
    """``16G``, ``512M``, ``1.5T`` or an int of megabytes (Slurm's default unit) -> MB."""
    if isinstance(value, bool):
        raise ValueError(f"not a memory size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("memory must not be negative")
        return value
    m = _MEM.match(str(value).strip())
    if not m:
        raise ValueError(f"not a memory size: {value!r} (use e.g. 512M, 16G)")
    return int(float(m[1]) * _MEM_MULT[m[2].upper()])
