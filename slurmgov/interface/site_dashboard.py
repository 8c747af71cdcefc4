"""`slurmgov dashboard`: the site-wide page (every account, recent workflows, waste, topology).

A small tornado server (tornado comes with Dask) with two routes: ``/`` (the page) and
``/state.json`` (what the page polls every few seconds). Everything is read from the ledger,
the run records under ``$SLURMGOV_HOME/runs`` and the governor's placement log; nothing here
writes anywhere.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from slurmgov.intent import run_records
from slurmgov.ledger.store import per_1k_tokens, period_of
from slurmgov.policy.forecast import forecasts
from slurmgov.slurm import placement

RECENT_RUNS = 30


def _day_starts(period_start: float, now: float) -> list[float]:
    days, t = [], period_start
    while t <= now:
        days.append(t)
        t += 86400
    return days


def _plot_start(period_kind: str, now: float) -> float:
    # an open-ended period: the last quarter is enough to plot (from a UTC midnight, as periods start)
    return max(period_of(period_kind, now)[1], (now - 92 * 86400) // 86400 * 86400)


def daily_usage(ledger, since: float, now: float) -> dict[float, dict[str, float]]:
    """GPU-h charged per account on each day from ``since``: one ledger read per day, all accounts."""
    return {day: {r["key"]: r["charged_h"] for r in ledger.usage(by="account", since=day,
                                                                 until=min(day + 86400, now + 1))}
            for day in _day_starts(since, now)}


def burn_down(daily: dict[float, dict[str, float]], account: str, start: float) -> list[tuple[float, float]]:
    """(day start, GPU-h charged so far this period) for each day from the period's ``start``."""
    points, total = [], 0.0
    for day, used in daily.items():
        if day >= start:
            total += used.get(account, 0.0)
            points.append((day, total))
    return points


def _run_tokens(steps) -> dict:
    """A run's reported tokens (its record's steps) and its steps' GPU-seconds per 1,000 of them."""
    reporting = [s for s in steps if s.get("prompt_tokens") is not None or s.get("completion_tokens") is not None]
    if not reporting:
        return {"tokens": None, "gpu_s_per_1k_tokens": None}
    n = sum((s.get("prompt_tokens") or 0) + (s.get("completion_tokens") or 0) for s in reporting)
    return {"tokens": n, "gpu_s_per_1k_tokens": per_1k_tokens(sum(s.get("gpu_seconds") or 0 for s in reporting), n)}


def recent_runs(runs_dir: Path, limit: int = RECENT_RUNS) -> list[dict]:
    """The newest run records, summarised (run_records.read_all: one reader of the records)."""
    out = []
    for doc in run_records.read_all(runs_dir, limit):
        allocs = [a.get("cost") or {} for a in doc.get("allocations", {}).values()]
        steps = doc.get("steps", {}).values()
        out.append({
            "run_id": doc.get("run_id"), "workflow": doc.get("workflow"), "account": doc.get("account"),
            "user": doc.get("user"), "status": doc.get("status"), "executor": doc.get("executor", "local"),
            "started": doc.get("started"), "ended": doc.get("ended"),
            "steps": len(doc.get("steps", {})), "steps_ok": sum(s.get("status") == "ok" for s in steps),
            # the run's charge (steps + waste), as its own report and `slurmgov runs` show it
            "cost_h": doc["charged_h"] if isinstance(doc.get("charged_h"), (int, float))
            else sum(a.get("cost_h", 0) for a in allocs),
            "held_gpu_s": sum(a.get("held_gpu_s", 0) for a in allocs),
            "idle_gpu_s": sum(a.get("idle_gpu_s", 0) for a in allocs),
            "nodes": sorted({n for a in allocs for n in a.get("nodes", [])}),
            **_run_tokens(steps),
        })
    return out


def site_state(site, ledger, home: Path, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    balances = ledger.balances(now)
    fc = {f.account: f for f in forecasts(ledger, now, balances=balances)}
    kinds = {b.account: "none" if b.period == "all" else ("quarterly" if "-Q" in b.period else "monthly")
             for b in balances}
    starts = {a: _plot_start(k, now) for a, k in kinds.items()}
    # days align with the earliest period start, so every account's period starts on one of them
    daily = daily_usage(ledger, min(starts.values(), default=now), now)
    accounts = []
    for b in balances:
        f = fc.get(b.account)
        accounts.append({
            "account": b.account, "period": b.period, "budget_h": b.budget_h, "charged_h": b.charged_h,
            "held_h": b.held_h, "available_h": b.available_h,
            "used_pct": 100 * (b.charged_h + b.held_h) / b.budget_h if b.budget_h else 0.0,
            "burn_h_per_day": f.burn_h_per_day if f else 0.0, "runs_out": f.runs_out if f else None,
            "alert": f.alert if f else None, "burn_down": burn_down(daily, b.account, starts[b.account]),
        })
    samples = placement.PlacementLog(Path(home) / "placement.jsonl").read(since=now - 7 * 86400)
    return {
        "site": site.site, "executor": site.executor, "now": now,
        "now_text": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "accounts": accounts, "runs": recent_runs(Path(home) / "runs"), "waste": ledger.waste(by="account"),
        "placement": placement.placement(site, samples),
        "fragmentation": placement.fragmentation_over_time(site, samples),
        "leaves": {leaf: len(m) for leaf, m in site.topology.leaves.items()},
    }


class _Page(web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(resources.files("slurmgov.interface").joinpath("site_dashboard.html").read_text())


class _State(web.RequestHandler):
    CACHE_S = 2.0  # many open pages cost the ledger one read every CACHE_S, not one each
    _cache: dict = {}

    def initialize(self, site, ledger, home):
        self.args = (site, ledger, home)

    def get(self):
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        at, text = self._cache.get("state", (0.0, ""))
        if time.time() - at > self.CACHE_S:
            try:
                doc = site_state(*self.args)
            except Exception as exc:  # the page says what is wrong instead of going blank
                doc = {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
            text = json.dumps(doc, default=str)
            self._cache["state"] = (time.time(), text)
        self.write(text)


def serve(site, ledger, home: Path, host: str, port: int, ready=None) -> None:
    """Serve until interrupted; ``ready(url)`` is called once the socket listens."""
    app = web.Application([(r"/", _Page), (r"/state\.json", _State, {"site": site, "ledger": ledger, "home": home})])
    sockets = bind_sockets(port, host)
    server = HTTPServer(app)
    server.add_sockets(sockets)
    bound = sockets[0].getsockname()
    if ready:
        ready(f"http://{host if ':' not in host else '[' + host + ']'}:{bound[1]}/")
    IOLoop.current().start()
