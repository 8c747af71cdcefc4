"""User-facing errors: each carries one line that names the file, field or account at fault.

The CLI prints ``str(err)`` and exits with ``err.exit_code``; no traceback reaches a user.
"""


class SlurmgovError(Exception):
    """Base of every error a user may see; the message is one line. Raised as itself, it means
    something slurmgov needs is unavailable or failed: Slurm's commands, a port, a file (exit 7;
    exit 1 is kept for "a step of the workflow failed")."""

    exit_code = 7


class InputError(SlurmgovError):
    """Bad input (jobspec, site file, command-line value)."""

    exit_code = 2


class UnknownAccount(InputError):
    """An account the ledger has no budget for; ``account`` says which, so a caller that knows
    where the name came from (a jobspec's ``account:`` line) can say so."""

    def __init__(self, account: str, message: str):
        super().__init__(message)
        self.account = account


class InfeasibleError(SlurmgovError):
    """A request that can never be placed on the site."""

    exit_code = 3


class BudgetRefused(SlurmgovError):
    """Admission refused: the account's budget does not cover the worst case."""

    exit_code = 4


class LedgerError(SlurmgovError):
    """The ledger cannot be opened or is inconsistent."""

    exit_code = 5


class LedgerUnavailable(LedgerError):
    """The ledger's database cannot be reached or keeps failing: not the data's fault. Work
    that meets it stops and is done again later, rather than skipping what it was doing."""


class PermissionDenied(SlurmgovError):
    """The caller may not do this (e.g. change budgets without being an admin)."""

    exit_code = 6
