"""SIGTERM and SIGHUP stop a run the way Ctrl-C does.

A batch system's kill, `kill PID` and a closed SSH session (SIGHUP) must not leave a run's hold
open or its steps running: while a run is going, these signals raise ``Stopped`` (a
KeyboardInterrupt) in the main thread, so the run's own clean-up (steps killed and charged for
what they used, Slurm jobs cancelled, the hold closed) is the one Ctrl-C takes. Only the first
signal counts: the clean-up is not interrupted by a second one.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """The run was stopped by ``signum``; the process exits with 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


# The signal that stopped this process's run, if one did: libraries on the way out (Dask's
# event-loop bridge among them) may turn the Stopped raised into a plain KeyboardInterrupt.
received: list[int] = []


def stopped_by() -> int | None:
    return received[0] if received else None


# What the command had done about its work when it was stopped, for the one line it exits with
# (a run: its steps stopped and its hold released); set while a stop_on_signals block is running.
stop_note: list[str] = []


def note_on_stop() -> str:
    return stop_note[-1] if stop_note else ""


@contextmanager
def stop_on_signals(note: str = ""):
    def handler(signum, frame):
        if received:
            return  # already stopping: let the clean-up finish
        received.append(signum)
        raise Stopped(signum)

    # A signal ignored when the run started stays ignored: `nohup slurmgov run ...` means the
    # user wants the run to outlive the terminal.
    old = {s: signal.signal(s, handler) for s in SIGNALS if signal.getsignal(s) != signal.SIG_IGN}
    stop_note.append(note)
    try:
        yield
    except BaseException:
        raise  # the note stays for the exit line
    else:
        stop_note.pop()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
