"""Plan, price, admit, run and settle one workflow: the researcher's `slurmgov run`.

Embedded default (``executor: local``): one hold for the plan's worst case is placed before
anything runs; every attempt is charged for the GPU-seconds it really used as it ends; each
finished step releases the rest of its share; the hold is closed (the remainder released)
however the run ends, Ctrl-C included.

On Slurm (``executor: slurm``) each allocation is its own Slurm job, admitted by the site's
job_submit hook and charged by the governor from Slurm's accounting; holding the workflow's
worst case here as well would count it twice. So the run checks the plan's price against the
balance before anything is submitted, lets the hook admit each pilot when it is needed, and at
the end splits each pilot's sacct-settled cost across the steps that ran in it, recording the
idle rest as waste (``Ledger.attribute``).
"""

from __future__ import annotations

import _thread
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from slurmgov.errors import BudgetRefused, SlurmgovError, UnknownAccount
from slurmgov.execution.backend import AllocSpec, LocalBackend
from slurmgov.execution.engine import TERMINAL, Engine, RunResult
from slurmgov.execution.step_task import StepSpec
from slurmgov.intent import run_records
from slurmgov.intent.jobspec import Workflow
from slurmgov.intent.planner import HOST, Plan, plan
from slurmgov.ledger.lease import LeaseKeeper, lease_seconds
from slurmgov.ledger.seed import ensure_budget
from slurmgov.ledger.store import Ledger
from slurmgov.policy import attribution, authz, tokens
from slurmgov.site.model import Site, slurmgov_home
from slurmgov.slurm import commands as slurm_cli
from slurmgov.slurm.placement import LOCALITY_ORDER


@dataclass
class AllocCost:
    """What one allocation cost and where it landed (Slurm: from sacct and squeue)."""

    id: str
    gpus: int
    job_ids: list[str]
    nodes: list[str]
    leaves: list[str]
    requested: str  # the locality the planner asked for
    achieved: str  # the tightest group holding all its nodes
    held_gpu_s: float
    busy_gpu_s: float
    idle_gpu_s: float
    cost_h: float
    states: list[str]
    events: list[str]

    @property
    def locality_ok(self) -> bool:
        return self.achieved not in _RANK or _RANK[self.achieved] <= _RANK.get(self.requested, 3)


@dataclass
class StepCost:
    step: str
    alloc: str
    nodes: list[str]
    requested: str
    achieved: str
    gpu_s: float  # attributed: the step's metered GPU-seconds (scaled to the charge if over)
    cost_h: float


_RANK = {w: i for i, w in enumerate(LOCALITY_ORDER)}


@dataclass
class LaunchReport:
    plan: Plan
    result: RunResult
    hold_key: str | None
    charged_h: float
    dashboard_link: str
    record_path: Path | None
    allocations: dict[str, AllocCost]
    steps: dict[str, StepCost]
    executor: str = "local"

    @property
    def waste_gpu_s(self) -> float:
        return sum(a.idle_gpu_s for a in self.allocations.values())


def step_specs(wf: Workflow, p: Plan) -> tuple[list[StepSpec], list[AllocSpec]]:
    specs = []
    for st in wf.steps:
        ps = p.steps[st.id]
        specs.append(StepSpec(
            id=st.id, alloc=ps.alloc, after=st.after, gpus=ps.gpus, cpus=ps.cpus, time_s=ps.time_s,
            retries=st.retries, run=st.run, call=st.call, params=dict(st.params), env=dict(st.env),
            context=st.context.share if st.context else None,
        ))
    allocs = [
        AllocSpec(a.id, a.gpus, slots=max(1, min(64, len(a.steps))), kind="host" if a.kind == HOST else "gpu")
        for a in p.allocations
    ]
    return specs, allocs


def launch(wf: Workflow, site: Site, ledger: Ledger, user: str | None = None, run_id: str | None = None,
           backend=None, on_change=None, on_admitted=None, on_backend=None, on_finish=None) -> LaunchReport:
    """``on_admitted(plan, hold_key)``, ``on_backend(backend)``, ``on_change(engine)`` and
    ``on_finish(result, charged_h)`` let the interface show progress and the dashboard page
    (``charged_h``: the run's settled charge, None on Slurm where sacct settles it afterwards)."""
    user = user or authz.whoami()  # the uid's name, not $USER: a per-user cap must not be dodged by setting it
    run_id = run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    slurm = site.executor == "slurm"
    p = plan(wf, site)
    ensure_budget(ledger, site, wf.account)
    lease_s = lease_seconds()
    keeper = None
    if slurm:
        try:  # before anything is admitted: a Slurm that does not answer fails every step
            slurm_cli.ping()
        except SlurmgovError as exc:
            raise SlurmgovError(f"Slurm does not answer ({exc}); nothing was admitted or submitted") from None
    try:
        if slurm:
            hold_key = None
            left = ledger.balance(wf.account).available_h
            if p.cost_h > left + 1e-9:
                raise BudgetRefused(f"account {wf.account}: {left:.2f} GPU-h left, workflow {wf.workflow} needs up to "
                                    f"{p.cost_h:.2f} GPU-h; nothing was submitted")
            try:  # the user's cap in the account (the hook checks it again for each allocation)
                ledger.check_admission(wf.account, user, p.cost_h, what=f"workflow {wf.workflow}")
            except BudgetRefused as exc:
                raise BudgetRefused(f"{exc}; nothing was submitted") from None
        else:
            hold_key = f"run:{run_id}"
            ledger.admit(hold_key, wf.account, wf.workflow, p.shares(), user=user, run_id=run_id, lease_s=lease_s)
    except UnknownAccount as exc:
        where = wf.where("account")
        if exc.account != wf.account or where is None:
            raise
        raise UnknownAccount(exc.account, f"{where}: account: {wf.account} has no budget in the ledger and site {site.site} "
                                          f"does not list it; set one with `slurmgov budget set {wf.account} GPU_HOURS`") from None
    if hold_key:
        # SIGKILL or a dead host leave the hold to lapse; while this process lives it is renewed.
        # If it is released under the run (an admin), the run stops as on Ctrl-C.
        keeper = LeaseKeeper(ledger, hold_key, lease_s, on_lost=_thread.interrupt_main).start()
    started = time.time()
    live = {"run_id": run_id, "workflow": wf.workflow, "account": wf.account, "user": user, "site": site.site,
            "executor": site.executor, "hold_key": hold_key, "status": "running", "started": started,
            "plan": {"cost_h": p.cost_h}, **run_records.this_process()}
    run_records.write(run_id, live)
    if on_admitted:
        on_admitted(p, hold_key)
    specs, allocs = step_specs(wf, p)
    gpu_type = {sid: ps.gpu_type for sid, ps in p.steps.items()}
    charged = [0.0]

    def charge(outcome, rec):
        assert hold_key is not None  # charged per attempt only without Slurm, where the run holds run:<id>
        weight = site.weight(gpu_type[outcome.step]) if outcome.gpus else 0.0
        prompt, completion = tokens.reported(outcome.output)  # metered, not priced
        ledger.charge(
            f"{run_id}:{outcome.step}:{outcome.attempt}", hold_key, outcome.step, outcome.attempt,
            gpu_seconds=outcome.gpu_seconds, weight=weight, gpu_type=gpu_type[outcome.step],
            started=outcome.started, ended=outcome.ended, status=outcome.status, user=user, workflow=wf.workflow,
            prompt_tokens=prompt, completion_tokens=completion,
        )
        charged[0] += outcome.gpu_seconds * weight / 3600
        if rec.status in TERMINAL:
            ledger.settle_step(hold_key, outcome.step)

    def stopped(state: str) -> None:
        """The run ends without a result (an error, a signal): its record says so."""
        run_records.write(run_id, {**live, "status": state, "ended": time.time()})

    owned = backend is None
    if owned:
        try:
            backend = _slurm_backend(wf, p, run_id) if slurm else _local_backend(wf, site)
        except BaseException:
            if keeper:
                keeper.stop()
            if hold_key:
                ledger.close(hold_key, "failed")
            stopped("failed")
            raise
    engine = Engine(backend, wf.workflow, run_id, specs, allocs, wf.on_failure,
                    on_attempt=None if slurm else charge, on_change=on_change)
    state = "failed"
    try:
        if on_backend:
            on_backend(backend)
        result = engine.run()
        state = {"ok": "done", "failed": "failed", "cancelled": "cancelled"}[result.status]
        settled = None
        if not slurm:
            # One cost story: a simulated allocation's idle time is charged as Slurm bills a
            # pilot's, so the run's charge = its steps' costs + its waste, wherever it is shown.
            allocations, steps = _costs(p, result, site)
            assert hold_key is not None  # without Slurm the run holds run:<id>
            _charge_idle(ledger, hold_key, run_id, user, wf, p, allocations)
            settled = charged[0] = sum(c["charged_h"] for c in ledger.charges(hold_key))
        if hold_key:
            ledger.close(hold_key, state)
        if on_finish:
            on_finish(result, settled)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM / SIGHUP (interface/signals.py)
        state = "cancelled"
        stopped(state)
        raise
    except BaseException:
        stopped(state)
        raise
    finally:
        if keeper:
            keeper.stop()
        if hold_key:
            ledger.close(hold_key, state)
        link = backend.dashboard_link
        if owned:
            backend.close()  # Slurm: cancels every job of the run still queued or running
    if slurm:
        allocations, steps = _costs(p, result, site, backend.settle())
        charged[0] = sum(a.cost_h for a in allocations.values())
    ledger.attribute(_attribution_rows(wf, run_id, user, p, allocations, steps, result))
    rep = LaunchReport(p, result, hold_key, charged[0], link, None, allocations, steps, site.executor)
    rep.record_path = _write_record(wf, p, rep, run_id, user, site)
    return rep


def _local_backend(wf: Workflow, site: Site) -> LocalBackend:
    part = site.partition(wf.partition).name
    return LocalBackend(sum(site.topology.nodes[n].gpus for n in site.topology.partitions[part]))


def _slurm_backend(wf: Workflow, p: Plan, run_id: str):
    from slurmgov.execution.slurm_backend import SlurmBackend

    gpu = [a for a in p.allocations if a.kind != HOST]
    return SlurmBackend(
        wf.workflow, wf.account,
        options={a.id: a.slurm_options(wf.workflow, wf.account) for a in gpu},
        nodes={a.id: a.nodes for a in gpu},
        # one worker per node when every step fits one node; else one worker, steps srun their ranks
        per_node={a.id: all(p.steps[s].nodes == 1 for s in a.steps) for a in gpu},
        memory_mb={a.id: a.memory_mb for a in gpu},
        log_dir=slurmgov_home() / "runs" / run_id,
    )


def _step_nodes(rec) -> list[str]:
    """Where a step's successful (else last) attempt ran: pilot workers are named ``alloc.N@node``."""
    if not rec.attempts:
        return []
    att = next((a for a in reversed(rec.attempts) if a.status == "ok"), rec.attempts[-1])
    return [att.worker.split("@", 1)[1]] if "@" in att.worker else []


def _costs(p: Plan, result: RunResult, site: Site, jobs=None):
    """Each allocation's held GPU time split across its steps, the rest idle; where each landed.

    ``jobs`` (Slurm: alloc id -> its jobs, settled from sacct): held is what sacct accounted
    and placement comes from the jobs' nodes. None (the embedded default): allocations are
    simulated, held is the engine's own time and there is no placement."""
    topo = site.topology
    allocations, steps = {}, {}
    for a in p.allocations:
        if a.kind == HOST:
            continue
        infos = jobs.get(a.id, []) if jobs is not None else []
        if jobs is not None:
            held = float(sum(i.gpu_seconds for i in infos))
        else:  # simulated: held from start to stop, never less than what its steps metered
            held = max(result.allocations[a.id].held_gpu_s, result.allocations[a.id].busy_gpu_s)
        last_nodes = infos[-1].nodes if infos else []
        parts, idle = attribution.split(held, {sid: result.steps[sid].gpu_seconds for sid in a.steps})
        for sid in a.steps:
            ps = p.steps[sid]
            where = [] if jobs is None else (_step_nodes(result.steps[sid]) if ps.nodes == 1 else list(last_nodes))
            steps[sid] = StepCost(sid, a.id, where, ps.within, topo.locality(where) if where else "-",
                                  parts[sid], parts[sid] * a.weight / 3600)
        allocations[a.id] = AllocCost(
            a.id, a.gpus, [i.job_id for i in infos], sorted({n for i in infos for n in i.nodes}),
            sorted({topo.leaf_of(n) or "-" for n in last_nodes}), a.within if a.nodes > 1 else "node",
            topo.locality(last_nodes) if last_nodes else "-", held, held - idle, idle, held * a.weight / 3600,
            [i.state for i in infos], result.allocations[a.id].events,
        )
    return allocations, steps


def _charge_idle(ledger: Ledger, hold_key: str, run_id: str, user: str, wf: Workflow, p: Plan,
                 allocations: dict[str, AllocCost]) -> None:
    """Charge each simulated allocation's idle GPU-seconds (keyed: a replay charges nothing more)."""
    for a in p.allocations:
        ac = allocations.get(a.id)
        if ac is None or ac.idle_gpu_s <= 0:
            continue
        ledger.charge(f"{run_id}:{a.id}:(idle)", hold_key, "(idle)", 1, gpu_seconds=ac.idle_gpu_s, weight=a.weight,
                      gpu_type=a.gpu_type, started=None, ended=time.time(), status="idle", user=user,
                      workflow=wf.workflow)


def _attribution_rows(wf, run_id, user, p: Plan, allocations, steps, result) -> list[dict]:
    rows = []
    for a in p.allocations:
        ac = allocations.get(a.id)
        if ac is None:
            continue
        ended = result.allocations[a.id].ended or result.ended
        base = dict(run_id=run_id, account=wf.account, user=user, workflow=wf.workflow, alloc=a.id,
                    job_ids=",".join(ac.job_ids) or "-", gpu_type=a.gpu_type, weight=a.weight, ended=ended)
        for sid in a.steps:
            rows.append(dict(base, attr_key=f"{run_id}:{a.id}:{sid}", step=sid, gpu_seconds=steps[sid].gpu_s,
                             **_step_tokens(result.steps[sid].attempts)))
        rows.append(dict(base, attr_key=f"{run_id}:{a.id}:(idle)", step=None, gpu_seconds=ac.idle_gpu_s))
    return rows


def _step_tokens(attempts) -> dict:
    """What a step's attempts reported in tokens, summed (None: no attempt reported that field)."""
    got = [tokens.reported(a.output) for a in attempts]
    return {name: None if all(g[i] is None for g in got) else sum(g[i] or 0 for g in got)
            for i, name in enumerate(tokens.FIELDS)}


def _write_record(wf, p: Plan, rep: LaunchReport, run_id, user, site) -> Path | None:
    """Keep what happened (outputs, attempts, allocations, costs) beside the ledger, for reports."""
    result = rep.result
    doc = {**run_records.this_process(),
        "run_id": run_id, "workflow": wf.workflow, "account": wf.account, "user": user, "site": site.site,
        "executor": site.executor, "hold_key": rep.hold_key, "status": result.status, "started": result.started,
        "charged_h": rep.charged_h, "waste_gpu_s": rep.waste_gpu_s,
        "ended": result.ended, "plan": p.to_dict(),
        "steps": {
            sid: {"status": r.status, "reason": r.reason, "alloc": r.spec.alloc, "gpu_seconds": r.gpu_seconds,
                  **_step_tokens(r.attempts),
                  "attempts": [{k: v for k, v in vars(a).items()} for a in r.attempts],
                  "cost": asdict(rep.steps[sid]) if sid in rep.steps else None}
            for sid, r in result.steps.items()
        },
        "allocations": {
            aid: {"gpus": a.spec.gpus, "started": a.started, "ended": a.ended, "busy_gpu_s": a.busy_gpu_s,
                  "idle_gpu_s": a.idle_gpu_s, "cost": asdict(rep.allocations[aid]) if aid in rep.allocations else None}
            for aid, a in result.allocations.items()
        },
    }
    return run_records.write(run_id, doc)
