"""Shell steps never outlive the process that started them, however it ends (SIGKILL included).

Signals a process can catch are handled where the run ends (its steps are killed and charged);
SIGKILL, an OOM kill or a crash run no code at all. So the first shell step a process starts
also starts a small guard process, which is told the process group of every running shell step
over a pipe whose write end only this process holds. However this process ends, the kernel then
closes that end: the guard reads end-of-file, kills every group still listed, removes the steps'
input files, and exits. (On a Slurm pilot the same guard runs beside each Dask worker.)
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

log = logging.getLogger(__name__)

# Runs with -I -S (no site packages, no user paths): it starts in milliseconds and imports
# nothing that could fail. It ignores the terminal's signals (SIGINT, SIGHUP: it lives in its own
# session anyway); it exits when the pipe closes.
_GUARD = r"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
groups, files = set(), set()
for line in sys.stdin:
    op, _, arg = line.rstrip("\n").partition(" ")
    if op == "+":
        groups.add(int(arg))
    elif op == "-":
        groups.discard(int(arg))
    elif op == "f+":
        files.add(arg)
    elif op == "f-":
        files.discard(arg)
for g in groups:
    try:
        os.killpg(g, signal.SIGKILL)
    except OSError:
        pass
for f in files:
    try:
        os.unlink(f)
    except OSError:
        pass
"""

_lock = threading.Lock()
_guard: subprocess.Popen | None = None


def _send(line: str) -> None:
    global _guard
    with _lock:
        if _guard is None or _guard.poll() is not None:
            try:
                _guard = subprocess.Popen([sys.executable, "-I", "-S", "-c", _GUARD], stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                                          start_new_session=True)
            except OSError as e:  # steps still run; only the SIGKILL case loses its guard
                log.warning("cannot start the shell-step guard: %s", e)
                _guard = None
                return
        try:
            assert _guard.stdin is not None  # started with stdin=PIPE
            _guard.stdin.write(line + "\n")
            _guard.stdin.flush()
        except OSError as e:
            log.warning("the shell-step guard is gone: %s", e)


def watch(pgid: int, *files: str) -> None:
    """Kill process group ``pgid`` (and remove ``files``) if this process ends before ``forget``."""
    _send(f"+ {pgid}")
    for f in files:
        _send(f"f+ {f}")


def forget(pgid: int, *files: str) -> None:
    """The group ended and its files were removed here: nothing left for the guard to do."""
    _send(f"- {pgid}")
    for f in files:
        _send(f"f- {f}")
