"""`slurmgov dashboard`: the site-wide page (every account, recent workflows, waste, topology).

A small tornado server (tornado comes with Dask) with two routes: ``/`` (the page) and
``/state.json`` (what the page polls every few seconds). The page shows every account, so
state.json answers only a request that carries the token this server was started with (a
bearer token, given to the browser once in the address: ``/#token=...``): any local user can
reach a port on 127.0.0.1, and the site's users may read only their own accounts. Everything is read from the ledger,
the run records under ``$SLURMGOV_HOME/runs`` and the governor's placement log; nothing here
writes anywhere. Budgets, runs and waste come from `views`, the functions `slurmgov api` serves
(/api/v1/budgets, /api/v1/runs), so the page and the API never disagree.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from slurmgov.interface import views
from slurmgov.ledger.store import period_of
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


def recent_runs(runs_dir: Path, limit: int = RECENT_RUNS) -> list[dict]:
    """The newest run records, summarised as the API's /runs gives them (views.runs)."""
    return views.runs(None, limit, runs_dir)


def site_state(site, ledger, home: Path, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    rows = views.budgets(ledger, None, now)  # what the API's /budgets serves, and more: the burn-down
    kinds = {b["account"]: "none" if b["period"] == "all" else ("quarterly" if "-Q" in b["period"] else "monthly")
             for b in rows}
    starts = {a: _plot_start(k, now) for a, k in kinds.items()}
    # days align with the earliest period start, so every account's period starts on one of them
    daily = daily_usage(ledger, min(starts.values(), default=now), now)
    accounts = [{**b, "burn_down": burn_down(daily, b["account"], starts[b["account"]])} for b in rows]
    samples = placement.PlacementLog(Path(home) / "placement.jsonl").read(since=now - 7 * 86400)
    return {
        "site": site.site, "executor": site.executor, "now": now,
        "now_text": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "accounts": accounts, "runs": recent_runs(Path(home) / "runs"), "waste": views.waste(ledger),
        "placement": placement.placement(site, samples),
        "fragmentation": placement.fragmentation_over_time(site, samples),
        "leaves": {leaf: len(m) for leaf, m in site.topology.leaves.items()},
    }


class _Page(web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "text/html; charset=utf-8")
        page = resources.files("slurmgov.interface").joinpath("site_dashboard.html").read_text()
        self.write(page.replace("<body>", '<body data-src="state.json" data-auth="bearer">', 1))  # no data in it


class _State(web.RequestHandler):
    CACHE_S = 2.0  # many open pages cost the ledger one read every CACHE_S, not one each
    _cache: dict = {}

    def initialize(self, site, ledger, home, token):
        self.args = (site, ledger, home)
        self.token = token

    def get(self):
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        given = self.request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            self.set_status(401)
            self.write(json.dumps({"error": "this page needs the token `slurmgov dashboard` printed (its address: /#token=...)"}))
            return
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
    """Serve until interrupted; ``ready(url)`` is called once the socket listens, with the
    address that carries this server's token (a new one each start)."""
    token = secrets.token_urlsafe(32)
    app = web.Application([(r"/", _Page), (r"/state\.json", _State,
                                          {"site": site, "ledger": ledger, "home": home, "token": token})])
    sockets = bind_sockets(port, host)
    server = HTTPServer(app)
    server.add_sockets(sockets)
    bound = sockets[0].getsockname()
    if ready:
        ready(f"http://{host if ':' not in host else '[' + host + ']'}:{bound[1]}/#token={token}")
    IOLoop.current().start()
