"""Seeding the ledger's accounts from the site file (kept light: no Dask, no Slurm)."""

from __future__ import annotations


def ensure_budget(ledger, site, account: str) -> None:
    """Seed the account's budget and terms from the site file the first time the ledger sees it."""
    acct = site.accounts.get(account)
    if acct is not None:
        ledger.ensure_account(account, acct.budget_gpu_hours, acct.period, **acct.terms())
