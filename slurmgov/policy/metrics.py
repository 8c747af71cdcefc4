"""Prometheus metrics of the governor (prometheus_client), refreshed after every pass."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from slurmgov.policy.forecast import forecasts


class GovernorMetrics:
    def __init__(self, port: int | None = None, addr: str = "127.0.0.1"):
        self.registry = CollectorRegistry()
        acct = ["account"]
        g = lambda name, doc, labels=acct: Gauge(name, doc, labels, registry=self.registry)  # noqa: E731
        self.budget = g("slurmgov_budget_gpu_hours", "Budget of the current period, weighted GPU-hours")
        self.charged = g("slurmgov_charged_gpu_hours", "Charged in the current period")
        self.held = g("slurmgov_held_gpu_hours", "Held by admitted, unfinished work")
        self.available = g("slurmgov_available_gpu_hours", "Budget - charged - held")
        self.burn = g("slurmgov_burn_gpu_hours_per_day", "Charged per day over the last week")
        self.used = g("slurmgov_used_ratio", "(charged + held) / budget")
        self.snapshot_age = Gauge("slurmgov_snapshot_age_seconds", "Age of the hook's snapshot", registry=self.registry)
        self.admissions = Counter("slurmgov_hook_admissions", "Jobs admitted by the submit hook", registry=self.registry)
        self.settlements = Counter("slurmgov_settlements", "Job runs settled", registry=self.registry)
        self.problems = Counter("slurmgov_journal_problems", "Journal lines that could not be applied",
                                registry=self.registry)
        self.drift = Counter("slurmgov_reconcile_drift", "Differences found against sacct", registry=self.registry)
        self.batch_fallbacks = Counter("slurmgov_journal_batch_fallbacks",
                                       "Journal batches that failed whole and were applied event by event (logged)",
                                       registry=self.registry)
        self.refusals = Counter("slurmgov_hook_refusals", "GPU jobs the submit hook refused, by reason",
                                ("reason",), registry=self.registry)
        self.port = None
        if port is not None:
            server, _ = start_http_server(port, addr=addr, registry=self.registry)
            self.port = server.server_port

    def update(self, ledger, rep, snapshot_written: float | None) -> list[str]:
        """Refresh from the ledger after a pass; return the threshold alerts to print."""
        now = time.time()
        self.admissions.inc(rep.admitted)
        self.settlements.inc(rep.settled)
        self.problems.inc(len(rep.problems))
        self.drift.inc(len(rep.drift))
        self.batch_fallbacks.inc(getattr(rep, "batch_fallbacks", 0))
        for reason, n in getattr(rep, "refused", {}).items():
            self.refusals.labels(reason=reason).inc(n)
        if snapshot_written is not None:
            self.snapshot_age.set(max(0.0, now - snapshot_written))
        alerts = []
        # GPU budgets (a CPU budget, ledger account cpu:<account>, is no GPU account)
        balances = {b.account: b for b in ledger.gpu_balances(now=now)}
        for f in forecasts(ledger, now, balances=list(balances.values())):
            b = balances[f.account]
            for gauge, value in ((self.budget, b.budget_h), (self.charged, b.charged_h), (self.held, b.held_h),
                                 (self.available, b.available_h), (self.burn, f.burn_h_per_day),
                                 (self.used, f.used_pct / 100)):
                gauge.labels(account=f.account).set(value)
            if f.alert:
                alerts.append(f"alert: account {f.account} has used {f.used_pct:.0f}% of its budget ({f.alert}); "
                              + f.sentence())
        return alerts
