"""Plan, price, admit, run and settle one workflow: the researcher's `slurmgov run`.

One hold for the plan's worst case is placed before anything runs; every attempt is charged
for the GPU-seconds it really used as it ends; each finished step releases the rest of its
share; the hold is closed (the remainder released) however the run ends, Ctrl-C included.
"""

from __future__ import annotations

import getpass
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from slurmgov.errors import InputError
from slurmgov.execution.backend import AllocSpec, LocalBackend
from slurmgov.execution.engine import TERMINAL, Engine, RunResult
from slurmgov.execution.step_task import StepSpec
from slurmgov.governance.ledger import Ledger
from slurmgov.governance.site import Site, slurmgov_home
from slurmgov.intent.jobspec import Workflow
from slurmgov.intent.planner import HOST, Plan, plan


@dataclass
class LaunchReport:
    plan: Plan
    result: RunResult
    hold_key: str
    charged_h: float
    dashboard_link: str
    record_path: Path | None


def ensure_budget(ledger: Ledger, site: Site, account: str) -> None:
    """Seed the account's budget from the site file the first time the ledger sees it."""
    acct = site.accounts.get(account)
    if acct is not None:
        ledger.ensure_account(account, acct.budget_gpu_hours, acct.period)


def step_specs(wf: Workflow, p: Plan) -> tuple[list[StepSpec], list[AllocSpec]]:
    specs = []
    for st in wf.steps:
        ps = p.steps[st.id]
        specs.append(StepSpec(
            id=st.id, alloc=ps.alloc, after=st.after, gpus=ps.gpus, cpus=ps.cpus, time_s=ps.time_s,
            retries=st.retries, run=st.run, call=st.call, params=dict(st.params), env=dict(st.env),
        ))
    allocs = [
        AllocSpec(a.id, a.gpus, slots=max(1, min(64, len(a.steps))), kind="host" if a.kind == HOST else "gpu")
        for a in p.allocations
    ]
    return specs, allocs


def launch(wf: Workflow, site: Site, ledger: Ledger, user: str | None = None, run_id: str | None = None,
           backend=None, on_change=None, on_admitted=None, on_backend=None, on_finish=None) -> LaunchReport:
    """``on_admitted(plan, hold_key)``, ``on_backend(backend)``, ``on_change(engine)`` and
    ``on_finish(result)`` let the interface show progress and the dashboard page."""
    if site.executor != "local" and backend is None:
        raise InputError(
            f"site {site.site} runs workflows on Slurm allocations, which this version cannot do yet; "
            f"`slurmgov plan` prices it, `slurmgov run --site site_configs/local.yaml` runs it here"
        )
    user = user or getpass.getuser()
    run_id = run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    p = plan(wf, site)
    ensure_budget(ledger, site, wf.account)
    hold_key = f"run:{run_id}"
    ledger.admit(hold_key, wf.account, wf.workflow, p.shares(), user=user, run_id=run_id)
    if on_admitted:
        on_admitted(p, hold_key)
    specs, allocs = step_specs(wf, p)
    gpu_type = {sid: ps.gpu_type for sid, ps in p.steps.items()}
    charged = [0.0]

    def charge(outcome, rec):
        weight = site.weight(gpu_type[outcome.step]) if outcome.gpus else 0.0
        ledger.charge(
            f"{run_id}:{outcome.step}:{outcome.attempt}", hold_key, outcome.step, outcome.attempt,
            gpu_seconds=outcome.gpu_seconds, weight=weight, gpu_type=gpu_type[outcome.step],
            started=outcome.started, ended=outcome.ended, status=outcome.status, user=user, workflow=wf.workflow,
        )
        charged[0] += outcome.gpu_seconds * weight / 3600
        if rec.status in TERMINAL:
            ledger.settle_step(hold_key, outcome.step)

    owned = backend is None
    if owned:
        part = site.partition(wf.partition).name
        total = sum(site.topology.nodes[n].gpus for n in site.topology.partitions[part])
        try:
            backend = LocalBackend(total)
        except Exception:
            ledger.close(hold_key, "failed")
            raise
    engine = Engine(backend, wf.workflow, run_id, specs, allocs, wf.on_failure, on_attempt=charge, on_change=on_change)
    state = "failed"
    try:
        if on_backend:
            on_backend(backend)
        result = engine.run()
        state = {"ok": "done", "failed": "failed", "cancelled": "cancelled"}[result.status]
        ledger.close(hold_key, state)
        if on_finish:
            on_finish(result)
    except KeyboardInterrupt:
        state = "cancelled"
        raise
    finally:
        ledger.close(hold_key, state)
        link = backend.dashboard_link
        if owned:
            backend.close()
    record = _write_record(wf, p, result, run_id, hold_key, user, site)
    return LaunchReport(p, result, hold_key, charged[0], link, record)


def _write_record(wf, p: Plan, result: RunResult, run_id, hold_key, user, site) -> Path | None:
    """Keep what happened (outputs, attempts, allocations) beside the ledger, for reports."""
    runs = slurmgov_home() / "runs"
    try:
        runs.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    doc = {
        "run_id": run_id, "workflow": wf.workflow, "account": wf.account, "user": user, "site": site.site,
        "hold_key": hold_key, "status": result.status, "started": result.started, "ended": result.ended,
        "plan": p.to_dict(),
        "steps": {
            sid: {"status": r.status, "reason": r.reason, "alloc": r.spec.alloc, "gpu_seconds": r.gpu_seconds,
                  "attempts": [{k: v for k, v in vars(a).items()} for a in r.attempts]}
            for sid, r in result.steps.items()
        },
        "allocations": {
            aid: {"gpus": a.spec.gpus, "started": a.started, "ended": a.ended, "busy_gpu_s": a.busy_gpu_s,
                  "idle_gpu_s": a.idle_gpu_s}
            for aid, a in result.allocations.items()
        },
    }
    path = runs / f"{run_id}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)
    return path
