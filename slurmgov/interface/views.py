"""What portals read: budgets, usage, runs, holds and audit rows, as plain JSON-ready dicts.

One set of functions for every reader that is not a terminal: the HTTP API (`api.py`) serves
them, and the site dashboard (`site_dashboard.py`) shows them, so a number on the page is the
number the API gives. Each takes the accounts its caller may see (``None``: every account) and
reads the ledger and the run records; nothing here writes, and nothing here decides who may see
what (the caller does).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection
from pathlib import Path

from slurmgov.intent import run_records
from slurmgov.ledger.cpu import is_cpu_account
from slurmgov.ledger.store import Ledger, per_1k_tokens
from slurmgov.policy.forecast import forecasts

RECENT_RUNS = 30
SCAN_RUNS = 2000  # newest run records read to find an account's recent ones
USAGE_BY = ("account", "workflow", "user", "step", "gpu_type")


def _seen(account: str | None, accounts: Collection[str] | None) -> bool:
    return accounts is None or account in accounts


def budgets(ledger: Ledger, accounts: Collection[str] | None = None, now: float | None = None) -> list[dict]:
    """Each account's budget this period: budget, charged, held, available and used share, with
    its forecast (burn per day, run-out date, alert), as `slurmgov budget show --json` has them."""
    now = time.time() if now is None else now
    balances = [b for b in ledger.balances(now) if _seen(b.account, accounts) and not is_cpu_account(b.account)]
    fc = {f.account: f for f in forecasts(ledger, now, balances=balances)}
    out = []
    for b in balances:
        f = fc.get(b.account)
        out.append({
            **dataclasses.asdict(b),
            "used_pct": 100 * (b.charged_h + b.held_h) / b.budget_h if b.budget_h else 0.0,
            "burn_h_per_day": f.burn_h_per_day if f else 0.0, "runs_out": f.runs_out if f else None,
            "alert": f.alert if f else None,
        })
    return out


def usage(ledger: Ledger, by: str = "account", since: float | None = None, until: float | None = None,
          accounts: Collection[str] | None = None) -> list[dict]:
    """Charged GPU time in [since, until) grouped ``by`` (`slurmgov usage --json`), counting only
    the charges of ``accounts``."""
    return ledger.usage(by=by, since=since, until=until, accounts=accounts)


def _run_tokens(steps) -> dict:
    """A run's reported tokens (its record's steps) and its steps' GPU-seconds per 1,000 of them."""
    reporting = [s for s in steps if s.get("prompt_tokens") is not None or s.get("completion_tokens") is not None]
    if not reporting:
        return {"tokens": None, "gpu_s_per_1k_tokens": None}
    n = sum((s.get("prompt_tokens") or 0) + (s.get("completion_tokens") or 0) for s in reporting)
    return {"tokens": n, "gpu_s_per_1k_tokens": per_1k_tokens(sum(s.get("gpu_seconds") or 0 for s in reporting), n)}


def run_row(doc: dict) -> dict:
    """A run record, summarised: what it ran, its state, its charge, its GPUs' held and idle time."""
    allocs = [a.get("cost") or {} for a in (doc.get("allocations") or {}).values()]
    steps = (doc.get("steps") or {}).values()
    return {
        "run_id": doc.get("run_id"), "workflow": doc.get("workflow"), "account": doc.get("account"),
        "user": doc.get("user"), "status": doc.get("status"), "state": run_records.state(doc),
        "executor": doc.get("executor", "local"), "started": doc.get("started"), "ended": doc.get("ended"),
        "steps": len(doc.get("steps") or {}), "steps_ok": sum(s.get("status") == "ok" for s in steps),
        # the run's charge (steps + waste), as its own report and `slurmgov runs` show it
        "cost_h": doc["charged_h"] if isinstance(doc.get("charged_h"), (int, float))
        else sum(a.get("cost_h", 0) for a in allocs),
        "held_gpu_s": sum(a.get("held_gpu_s", 0) for a in allocs),
        "idle_gpu_s": sum(a.get("idle_gpu_s", 0) for a in allocs),
        "nodes": sorted({n for a in allocs for n in a.get("nodes", [])}),
        "hold_key": doc.get("hold_key"),
        **_run_tokens(steps),
    }


def runs(accounts: Collection[str] | None = None, limit: int = RECENT_RUNS, runs_dir: Path | None = None,
         user: str | None = None) -> list[dict]:
    """The newest run records of ``accounts``, and ``user``'s own runs on any account (as
    `slurmgov runs` lists them), summarised (run_records.read_all: one reader)."""
    # another account's runs are skipped: read further back for them, but not without end
    docs = run_records.read_all(runs_dir, limit if accounts is None else max(limit, SCAN_RUNS))
    return [run_row(d) for d in docs if _seen(d.get("account"), accounts) or (user is not None and
                                                                              d.get("user") == user)][:limit]


def holds(ledger: Ledger, accounts: Collection[str] | None = None, now: float | None = None) -> list[dict]:
    """Open holds (`slurmgov holds --json`): what each still reserves, whose, how old, its lease."""
    now = time.time() if now is None else now
    return [{**h, "age_s": now - h["created_at"]} for h in ledger.holds_open() if _seen(h["account"], accounts)]


def audit(ledger: Ledger, accounts: Collection[str] | None = None) -> list[dict]:
    """Every budget change (`slurmgov audit --json`): who (as which role), when, what and why, oldest first."""
    return ledger.audit(accounts=accounts)


def waste(ledger: Ledger, accounts: Collection[str] | None = None) -> list[dict]:
    """Allocated GPU time that sat idle, by account (`slurmgov waste --json`)."""
    return ledger.waste(by="account", accounts=accounts)
