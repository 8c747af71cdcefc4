"""`slurmgov plan` and `slurmgov run`: a jobspec's allocations and cost, then the governed run."""

from __future__ import annotations

import dataclasses
import sys
import time

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from slurmgov.intent import jobspec, planner, run_records
from slurmgov.interface import report
from slurmgov.interface.commands.common import _json, _ledger, _site, err, json_option, out, site_option, wait_option
from slurmgov.interface.signals import stop_on_signals


@click.command()
@click.argument("jobspec_path", metavar="JOBSPEC", type=click.Path(dir_okay=False))
@site_option
@json_option
@click.option("--all", "every_row", is_flag=True,
              help=f"List every allocation and step (a plan of more than {report.PLAN_ROWS} steps is summarised).")
def plan(jobspec_path, site_path, as_json, every_row):
    """Show how JOBSPEC maps onto allocations, their Slurm options and worst-case cost.

    \b
    Example:
      slurmgov plan jobspecs/multinode-finetune.yaml --site site_configs/demo-cluster.yaml --json
      slurmgov plan big-sweep.yaml --all      # every allocation and step, however many
    """
    site = _site(site_path)
    p = planner.plan(jobspec.load(jobspec_path), site)
    if as_json:
        _json(p.to_dict())
    else:
        report.plan_tables(p, out, every_row)


@click.command()
@click.argument("jobspec_path", metavar="JOBSPEC", type=click.Path(dir_okay=False))
@site_option
@json_option
@click.option("--linger", type=click.FloatRange(min=0), default=0, metavar="SECONDS",
              help="Keep the dashboard up this long after the workflow ends.")
@click.option("--run-id", "run_id", hidden=True, default=None, metavar="ID",
              help="The run's id, chosen by the caller (the MCP server); a new one otherwise.")
@wait_option
def run(jobspec_path, site_path, as_json, linger, run_id):
    """Plan, price, admit against the budget, run on Dask, settle, and report the cost.

    While it runs, the workflow's page is served inside its Dask dashboard (the link is
    printed): the DAG with each step's state and cost, the budget, allocation efficiency.

    \b
    Example:
      slurmgov run jobspecs/research-fanout.yaml
      slurmgov run jobspecs/research-fanout.yaml --linger 60   # keep the page up a minute
    """
    # Dask comes in only for a run: `slurmgov --help`, `plan` and the rest stay quick.
    from slurmgov.intent.launch import launch
    from slurmgov.interface import dashboard

    site = _site(site_path)
    wf = jobspec.load(jobspec_path)
    if run_id is not None:
        run_records.new_run_id(run_id)
    ledger = _ledger(site)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, transient=True, disable=as_json)
    task = progress.add_task(f"{wf.workflow}", total=len(wf.steps))

    page: dict = {}  # what the callbacks below hand each other: the dashboard's state and link

    def admitted(p, hold_key):
        page["state"] = dashboard.DashboardState(p, ledger)
        if not as_json:
            report.plan_tables(p, out)
            if hold_key:
                out.print(f"admitted: hold {hold_key} of {p.cost_h:.2f} GPU-h on account {wf.account}")
            else:
                out.print(f"admitted: {p.cost_h:.2f} GPU-h fits account {wf.account}; the site's submit hook "
                          f"admits each allocation as it is submitted")

    def backend_up(backend):
        page["link"] = dashboard.install(backend, page["state"])
        if not as_json:
            out.print(f"dashboard: {page['link']}  (Dask: {backend.dashboard_link})")
        progress.start()

    def finished(result, charged_h):
        page["state"].finish(result.status, charged_h)
        progress.stop()
        if linger:
            if not as_json:
                out.print(f"workflow {result.status}; the dashboard stays up {linger:g} s")
            time.sleep(linger)

    def changed(engine):
        page["state"].update(engine)
        done = sum(r.status in ("ok", "failed", "skipped", "cancelled") for r in engine.steps.values())
        running = [s for s, r in engine.steps.items() if r.status == "running"]
        progress.update(task, completed=done, description=f"{wf.workflow}: {', '.join(running[:3]) or '...'}")

    try:
        # SIGTERM, SIGHUP: stopped and settled as on Ctrl-C
        with stop_on_signals("running steps were stopped, the workflow's Slurm jobs cancelled and its hold "
                             "released"):
            rep = launch(wf, site, ledger, run_id=run_id, on_change=changed, on_admitted=admitted,
                         on_backend=backend_up, on_finish=finished)
    finally:
        try:
            if progress.live.is_started:  # stop() prints a blank line off a terminal, before a refusal too
                progress.stop()
        except OSError:  # SIGHUP: the terminal is gone
            pass
    bal = ledger.balance(wf.account)
    if as_json:
        _json({
            "run_id": rep.result.run_id, "status": rep.result.status, "worst_case_gpu_hours": rep.plan.cost_h,
            "charged_gpu_hours": rep.charged_h, "balance": dataclasses.asdict(bal), "record": str(rep.record_path),
            "dashboard": page.get("link"), "executor": rep.executor, "waste_gpu_seconds": rep.waste_gpu_s,
            "steps": {s: {"status": r.status, "attempts": len(r.attempts), "gpu_seconds": r.gpu_seconds,
                          "reason": r.reason, "output": r.output,
                          **({"cost": dataclasses.asdict(rep.steps[s])} if s in rep.steps else {})}
                      for s, r in rep.result.steps.items()},
            "allocations": {a: {**dataclasses.asdict(c), "locality_ok": c.locality_ok}
                            for a, c in rep.allocations.items()},
        })
    else:
        report.run_tables(rep, bal, out)
        for sid, rec in rep.result.steps.items():
            if rec.status == "failed":
                err.print(f"step {sid} failed: {rec.reason}")
    sys.exit(0 if rep.result.status == "ok" else 1)
