"""One place that turns every failure into one line on stderr and a documented exit code."""

from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Any

import click

from slurmgov.errors import SlurmgovError
from slurmgov.interface.signals import Stopped, note_on_stop, stopped_by

EXIT_CODES = """\b
Exit codes:
  0  success
  1  a step of the workflow failed; `hooks check`: the hook does not govern a probe
  2  bad input (jobspec, site file, option)
  3  the request can never be placed on the site
  4  refused: the account's budget does not cover the worst case
  5  the ledger cannot be used, or stayed busy past --wait
  6  not allowed: your role does not permit it (the line names the roles that would)
  7  something slurmgov needs is unavailable (Slurm does not answer, a port in use, a file)
  70 internal error (SLURMGOV_DEBUG=1 shows the traceback)
  130 interrupted (Ctrl-C); a run's hold is released
  143, 129 stopped by SIGTERM, SIGHUP: as Ctrl-C (the governor: 0 on SIGTERM, a service's stop)
"""


# click 8.2 on: a group run without a command raises this, carrying the group's help (8.1 printed
# the help itself and exited 0, through click.exceptions.Exit)
_NO_COMMAND: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def guarded(prog: str):
    """Wrap a click entry point: SlurmgovError -> its one line and exit code; no tracebacks."""

    def wrap(fn):
        @functools.wraps(fn)
        def main(*args, **kwargs):
            try:
                return fn(*args, standalone_mode=False, **kwargs)
            except (click.exceptions.Abort, KeyboardInterrupt) as exc:
                # SIGTERM / SIGHUP (signals.Stopped) as Ctrl-C; after SIGHUP the terminal may be gone
                signum = exc.signum if isinstance(exc, Stopped) else stopped_by()
                how = f"stopped by {signal.Signals(signum).name}" if signum else "interrupted"
                note = note_on_stop()
                try:
                    click.echo(f"{prog}: {how}" + (f"; {note}" if note else ""), err=True)
                except OSError:
                    pass
                sys.exit(128 + signum if signum else 130)
            except _NO_COMMAND as exc:  # `slurmgov budget`: the group's help, as click prints it
                click.echo(exc.format_message(), err=True)
                sys.exit(2)
            except click.UsageError as exc:  # one line, not click's three (usage, hint, error)
                cmd = exc.ctx.command_path if exc.ctx else prog
                usage = " ".join(exc.ctx.get_usage().split()[1:]) if exc.ctx else f"{cmd} --help"
                click.echo(f"{cmd}: {exc.format_message().rstrip('.')} (usage: {usage})", err=True)
                sys.exit(2)
            except click.ClickException as exc:
                click.echo(f"{prog}: {exc.format_message()}", err=True)
                sys.exit(2 if exc.exit_code == 1 else exc.exit_code)
            except click.exceptions.Exit as exc:
                sys.exit(exc.exit_code)
            except SlurmgovError as exc:
                click.echo(f"{prog}: {exc}", err=True)
                sys.exit(exc.exit_code)
            except Exception as exc:
                if os.environ.get("SLURMGOV_DEBUG"):
                    raise
                line = str(exc).strip().splitlines()
                click.echo(f"{prog}: internal error: {type(exc).__name__}: {line[0] if line else ''} "
                           f"(SLURMGOV_DEBUG=1 shows the traceback)", err=True)
                sys.exit(70)

        return main

    return wrap
