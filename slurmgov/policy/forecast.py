"""Burn rate, run-out date and threshold alerts for an account, from its recent charges."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

WINDOW_DAYS = 7
THRESHOLDS = (80, 95)  # percent of the budget used (charged + held)
HORIZON_DAYS = 3650  # a run-out further away than this is "not in sight"


@dataclass(frozen=True)
class Forecast:
    account: str
    burn_h_per_day: float
    runs_out: str | None  # ISO date, None when nothing burns or it lasts past the period
    used_pct: float
    alert: str | None  # None | "80%" | "95%" | "exhausted"

    def sentence(self) -> str:
        if self.runs_out is None:
            return f"{self.account}: no run-out in sight at {self.burn_h_per_day:.2f} GPU-h/day"
        return f"{self.account} runs out on {self.runs_out} at this rate ({self.burn_h_per_day:.2f} GPU-h/day)"


def forecast(balance, burned_h: float, now: float, window_days: float = WINDOW_DAYS) -> Forecast:
    """``burned_h``: what the account was charged in the last ``window_days``."""
    rate = burned_h / window_days
    used = balance.charged_h + balance.held_h
    pct = 100 * used / balance.budget_h if balance.budget_h > 0 else (100.0 if used > 0 else 0.0)
    runs_out = None
    if balance.available_h <= 0:
        runs_out = datetime.fromtimestamp(now, timezone.utc).date().isoformat()
    elif rate > 0 and balance.available_h / rate < HORIZON_DAYS:
        runs_out = (datetime.fromtimestamp(now, timezone.utc) + timedelta(days=balance.available_h / rate)).date().isoformat()
    expires = getattr(balance, "expires", None)
    if expires and (runs_out is None or expires < runs_out):
        runs_out = expires  # the budget ends with the account, whatever the burn rate
    alert = "exhausted" if balance.available_h <= 0 else next(
        (f"{t}%" for t in sorted(THRESHOLDS, reverse=True) if pct >= t), None)
    return Forecast(balance.account, rate, runs_out, pct, alert)


def forecasts(ledger, now: float, window_days: float = WINDOW_DAYS, balances=None) -> list[Forecast]:
    """One per account; ``balances`` (as of ``now``) when the caller has read them already."""
    burned = {r["key"]: r["charged_h"] for r in ledger.usage(by="account", since=now - window_days * 86400)}
    balances = ledger.balances(now=now) if balances is None else balances
    return [forecast(b, burned.get(b.account, 0.0), now, window_days) for b in balances]
