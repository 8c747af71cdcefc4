"""The researchers' page inside the Dask dashboard of a running workflow.

Two routes are added to the Dask scheduler's own web server (the one behind the ``/status``
link): ``/slurmgov`` (the page) and ``/slurmgov/state.json`` (what it polls each second): the
workflow's DAG with each step's state and cost, the account's budget, and how busy each
allocation's GPUs are.
"""

from __future__ import annotations

import json
import threading
import time
from importlib import resources
from urllib.parse import urlsplit

from tornado import web

from slurmgov.execution.engine import TERMINAL
from slurmgov.interface.report import step_tokens
from slurmgov.ledger.store import per_1k_tokens


class DashboardState:
    """What the page shows; updated by the engine's callbacks, read by the web handlers."""

    def __init__(self, plan, ledger, run_id: str | None = None):
        self.plan = plan
        self.ledger = ledger
        self.run_id = run_id
        self.engine = None
        self.status = "admitted"
        self.started = time.time()
        self.burn: list[tuple[float, float]] = [(self.started, 0.0)]
        self._lock = threading.Lock()

    def update(self, engine) -> None:
        with self._lock:
            self.engine = engine
            self.run_id = engine.run_id
            self.status = "cancelled" if engine.cancelled else "running"
            charged = self._charged_h(engine)
            if charged != self.burn[-1][1]:
                self.burn.append((time.time(), charged))

    def finish(self, status: str, charged_h: float | None = None) -> None:
        """The run ended; ``charged_h``: its settled charge (steps + waste), shown from now on."""
        with self._lock:
            self.status = status
            if charged_h is not None and charged_h != self.burn[-1][1]:
                self.burn.append((time.time(), charged_h))

    def _charged_h(self, engine) -> float:
        weights = {a.id: a.weight for a in self.plan.allocations}
        return sum(r.gpu_seconds * weights.get(r.spec.alloc, 0) / 3600 for r in engine.steps.values())

    def snapshot(self) -> dict:
        with self._lock:
            p, eng = self.plan, self.engine
            levels: dict[str, int] = {}
            for sid, ps in p.steps.items():  # plan.steps is in dependency order
                levels[sid] = 1 + max((levels[d] for d in ps.after), default=-1)
            weights = {a.id: a.weight for a in p.allocations}
            steps = []
            for sid, ps in p.steps.items():
                rec = eng.steps.get(sid) if eng else None
                gpu_s = rec.gpu_seconds if rec else 0.0
                running = rec is not None and rec.status == "running"
                n_tokens = step_tokens(rec.attempts) if rec else None
                steps.append({
                    "id": sid, "after": list(ps.after), "alloc": ps.alloc, "gpus": ps.gpus, "level": levels[sid],
                    "status": rec.status if rec else "waiting", "attempts": len(rec.attempts) if rec else 0,
                    "wall_s": rec.wall_s if rec else 0.0, "gpu_s": gpu_s,
                    "cost_h": gpu_s * weights.get(ps.alloc, 0) / 3600, "share_h": ps.share_h,
                    "kv_gib": ps.kv_bytes / 2**30, "reason": rec.reason if rec else None, "running": running,
                    "tokens": n_tokens, "gpu_s_per_1k_tokens": per_1k_tokens(gpu_s, n_tokens),
                })
            allocs = []
            slurm_jobs: dict = getattr(eng.backend, "jobs", {}) if eng else {}  # Slurm: where each pilot landed
            for a in p.allocations:
                rec = eng.allocs.get(a.id) if eng else None
                jobs = slurm_jobs.get(a.id, [])
                allocs.append({
                    "jobs": [{"job_id": j.job_id, "state": j.state, "nodes": list(j.nodes)} for j in jobs],
                    "id": a.id, "kind": a.kind, "gpus": a.gpus, "nodes": a.nodes, "within": a.within,
                    "started": rec.started if rec else None, "ended": rec.ended if rec else None,
                    "busy_gpu_s": rec.busy_gpu_s if rec else 0.0, "held_gpu_s": rec.held_gpu_s if rec else 0.0,
                    "worst_case_h": a.cost_h, "steps": a.steps,
                })
            done = sum(s["status"] in TERMINAL for s in steps)
            burn = list(self.burn)
        try:
            b = self.ledger.balance(p.account)
            budget = {"budget_h": b.budget_h, "charged_h": b.charged_h, "held_h": b.held_h,
                      "available_h": b.available_h, "period": b.period}
        except Exception as exc:  # the page must keep working if the ledger is briefly away
            budget = {"error": str(exc).splitlines()[0]}
        return {
            "workflow": p.workflow, "account": p.account, "site": p.site, "run_id": self.run_id,
            "status": self.status, "started": self.started, "now": time.time(), "steps_done": done,
            "steps_total": len(steps), "worst_case_h": p.cost_h,
            "charged_h": burn[-1][1], "burn": burn, "budget": budget, "steps": steps, "allocations": allocs,
        }


class _Page(web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(resources.files("slurmgov.interface").joinpath("dashboard.html").read_text())


class _State(web.RequestHandler):
    def initialize(self, state: DashboardState):
        self.state = state

    def get(self):
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(self.state.snapshot(), default=str))


def install(backend, state: DashboardState) -> str:
    """Add the page to the scheduler's web server; return its address."""
    app = backend.cluster.scheduler.http_application
    app.add_handlers(r".*", [(r"/slurmgov/?", _Page), (r"/slurmgov/state\.json", _State, {"state": state})])
    parts = urlsplit(backend.dashboard_link)
    return f"{parts.scheme}://{parts.netloc}/slurmgov"
