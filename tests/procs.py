"""Processes the test harnesses started, known by PID and start time: a PID alone is reused once
its process is reaped (PIDs wrap at pid_max, 32768 here), and signalling or waiting for a reused
PID hits a stranger: another release's cluster daemon, another session's server."""

from __future__ import annotations

from pathlib import Path


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields from the third (the state) on, or None if the process is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    return data.rsplit(")", 1)[1].split()


def state(pid: int) -> str | None:
    """Single-letter state from /proc/PID/stat, or None if the process is gone."""
    fields = stat_fields(pid)
    return fields[0] if fields else None


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot (stat field 22), or None if gone.
    With its PID it names one process for good."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def alive(pid: int) -> bool:
    """The process runs (a zombie, exited and not reaped yet, runs nothing)."""
    return state(pid) not in (None, "Z", "X")


def still_running(pid: int, ticks: int | None) -> bool:
    """The process that had ``pid`` when it started at ``ticks`` still runs: not one that got
    its PID since. Unknown ticks (it was gone before they were read) count as not running."""
    return ticks is not None and alive(pid) and start_ticks(pid) == ticks
