"""CPU-hour budgets as ledger accounts of their own (pure: no I/O).

An account's optional CPU budget is the ledger account ``cpu:<account>``, and a Slurm job's CPU
hold is the hold of token ``cpu:<token>`` in it: every money rule (admission with the held total,
charge, close, period, rollover, audit, reconcile) applies to CPU budgets unchanged, written once in
rules.py and the Ledger, with CPU holds and charges keyed apart from GPU ones. No site account
(site.names), Slurm account the hook can see (snapshot names) or token contains ``:`` in its
first part, so ``cpu:`` names collide with none. Amounts in a CPU account are weighted CPU-hours
where a GPU account's are weighted GPU-hours.
"""

from __future__ import annotations

PREFIX = "cpu:"


def cpu_account(account: str) -> str:
    """The ledger account of ``account``'s CPU budget."""
    return PREFIX + account


def is_cpu_account(account: str) -> bool:
    return account.startswith(PREFIX)


def of_cpu_account(ledger_account: str) -> str:
    """The account whose CPU budget ``ledger_account`` (``cpu:<account>``) is."""
    return ledger_account[len(PREFIX):]


def cpu_token(token: str) -> str:
    """The token of a job's CPU hold (beside its GPU hold ``token``)."""
    return PREFIX + token
