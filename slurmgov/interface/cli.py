"""`slurmgov`: plan, run and account for agent workflows on Slurm GPU clusters.

The site file defaults to $SLURMGOV_SITE or site_configs/local.yaml (the embedded default:
local Dask, SQLite ledger under $SLURMGOV_HOME).
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import sys
import time
from datetime import timezone
from pathlib import Path

import click
import hostlist
from rich.console import Console
from rich.table import Table
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from slurmgov.governance import placement
from slurmgov.governance import authz, governor, slurm_cli
from slurmgov.governance import limits as limits_mod
from slurmgov.governance import site as site_mod
from slurmgov.errors import SlurmgovError
from slurmgov.governance.forecast import forecasts
from slurmgov.governance.ledger import Ledger
from slurmgov.governance.metrics import GovernorMetrics
from slurmgov.intent import jobspec, planner
from slurmgov.intent.launch import ensure_budget, launch
from slurmgov.interface import dashboard, report
from slurmgov.interface.errors import EXIT_CODES, guarded

out = Console()
err = Console(stderr=True)


def _busy(what: str):
    """A spinner on stderr while something may take seconds (silent when stderr is not a terminal)."""
    return err.status(what, spinner="dots")


def _site(path) -> site_mod.Site:
    return site_mod.load(path or site_mod.default_site_path())


def _ledger(site: site_mod.Site) -> Ledger:
    return Ledger.open(os.environ.get("SLURMGOV_LEDGER") or site.ledger_url())


def _json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


site_option = click.option("--site", "site_path", type=click.Path(dir_okay=False), default=None,
                           help="Site description (default: $SLURMGOV_SITE or site_configs/local.yaml).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slurmgov")
def cli():
    """Govern what agent workflows cost on Slurm GPU clusters.

    \b
    Examples:
      slurmgov plan jobspecs/research-fanout.yaml --site site_configs/demo-cluster.yaml
      slurmgov run jobspecs/research-fanout.yaml
      slurmgov budget show --json
      slurmgov usage --by step
    """


@cli.command()
@click.argument("jobspec_path", metavar="JOBSPEC", type=click.Path(dir_okay=False))
@site_option
@json_option
def plan(jobspec_path, site_path, as_json):
    """Show how JOBSPEC maps onto allocations, their Slurm options and worst-case cost.

    \b
    Example:
      slurmgov plan jobspecs/multinode-finetune.yaml --site site_configs/demo-cluster.yaml --json
    """
    site = _site(site_path)
    p = planner.plan(jobspec.load(jobspec_path), site)
    if as_json:
        _json(p.to_dict())
    else:
        report.plan_tables(p, out)


@cli.command()
@click.argument("jobspec_path", metavar="JOBSPEC", type=click.Path(dir_okay=False))
@site_option
@json_option
@click.option("--linger", type=click.FloatRange(min=0), default=0, metavar="SECONDS",
              help="Keep the dashboard up this long after the workflow ends.")
def run(jobspec_path, site_path, as_json, linger):
    """Plan, price, admit against the budget, run on Dask, settle, and report the cost.

    While it runs, the workflow's page is served inside its Dask dashboard (the link is
    printed): the DAG with each step's state and cost, the budget, allocation efficiency.

    \b
    Example:
      slurmgov run jobspecs/research-fanout.yaml
      slurmgov run jobspecs/research-fanout.yaml --linger 60   # keep the page up a minute
    """
    site = _site(site_path)
    wf = jobspec.load(jobspec_path)
    ledger = _ledger(site)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, transient=True, disable=as_json)
    task = progress.add_task(f"{wf.workflow}", total=len(wf.steps))

    page = {}

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

    def finished(result):
        page["state"].finish(result.status)
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
        rep = launch(wf, site, ledger, on_change=changed, on_admitted=admitted, on_backend=backend_up,
                     on_finish=finished)
    finally:
        progress.stop()
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


def _complete_accounts(ctx, param, incomplete):
    """Shell completion: the accounts of the site file (never fails: completion must stay quiet)."""
    try:
        site = site_mod.load(ctx.params.get("site_path") or site_mod.default_site_path())
    except Exception:
        return []
    return [a for a in sorted(site.accounts) if a.startswith(incomplete)]


@cli.group()
def budget():
    """Read and set accounts' GPU-hour budgets."""


def _admin_ledger(site_path, accounts, what, seed=True):
    """The ledger (``accounts`` seeded from the site file), once names and the caller's rights are checked."""
    site = _site(site_path)
    for account in accounts:
        if not re.match(jobspec.NAME, account):
            raise click.BadParameter(f"{account!r} is not an account name", param_hint="ACCOUNT")
    authz.require_admin(site, what)
    ledger = _ledger(site)
    for account in accounts if seed else ():
        ensure_budget(ledger, site, account)
    return ledger


def _print_budget(ledger, account):
    b = ledger.balance(account)
    extra = (f", {b.carried_h:.2f} of it rolled over" if b.carried_h else "") + (f", expires {b.expires}" if b.expires else "")
    out.print(f"account {account}: budget {b.budget_h:.2f} GPU-h ({b.period}{extra}), {b.available_h:.2f} available")


@budget.command("set")
@click.argument("account", shell_complete=_complete_accounts)
@click.argument("gpu_hours", type=click.FloatRange(min=0))
@click.option("--period", type=click.Choice(["monthly", "quarterly", "none"]), default="monthly", show_default=True)
@click.option("--reason", default="", help="Why: kept in the audit log.")
@click.option("--rollover", "rollover_pct", type=click.IntRange(0, 100), default=None, metavar="PCT",
              help="Carry last period's unused budget over, up to PCT% of the budget (0: none; default: keep).")
@click.option("--expires", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="No budget from this day on, UTC (the project ends).")
@click.option("--no-expiry", is_flag=True, help="Remove an expiry date.")
@site_option
def budget_set(account, gpu_hours, period, reason, rollover_pct, expires, no_expiry, site_path):
    """Set ACCOUNT's budget to GPU_HOURS (weighted GPU-hours per period).

    \b
    Examples:
      slurmgov budget set chem-ai 750 --reason "Q4 grant"
      slurmgov budget set physics 120 --period quarterly --rollover 25 --expires 2027-06-30
    """
    if expires is not None and no_expiry:
        raise click.BadParameter("give --expires or --no-expiry, not both", param_hint="--expires")
    ledger = _admin_ledger(site_path, [account], "changing a budget", seed=False)
    when = None if expires is None else expires.replace(tzinfo=timezone.utc).timestamp()
    ledger.set_budget(account, gpu_hours, period, actor=getpass.getuser(), reason=reason,
                      rollover_pct=rollover_pct, expires=when, clear_expiry=no_expiry)
    _print_budget(ledger, account)


@budget.command("grant")
@click.argument("account", shell_complete=_complete_accounts)
@click.argument("gpu_hours", type=click.FloatRange(min=0))
@click.option("--reason", default="", help="Why: kept in the audit log.")
@site_option
def budget_grant(account, gpu_hours, reason, site_path):
    """Add GPU_HOURS to ACCOUNT's standing budget, from this period on (admins only).

    \b
    Example:
      slurmgov budget grant chem-ai 100 --reason "deadline extension"
    """
    ledger = _admin_ledger(site_path, [account], "granting GPU-hours")
    ledger.grant(account, gpu_hours, actor=getpass.getuser(), reason=reason)
    _print_budget(ledger, account)


@budget.command("transfer")
@click.argument("source", shell_complete=_complete_accounts)
@click.argument("dest", shell_complete=_complete_accounts)
@click.argument("gpu_hours", type=click.FloatRange(min=0))
@click.option("--reason", default="", help="Why: kept in the audit log.")
@site_option
def budget_transfer(source, dest, gpu_hours, reason, site_path):
    """Move GPU_HOURS of budget from SOURCE to DEST, atomically (admins only).

    \b
    Example:
      slurmgov budget transfer chem-ai bio-ml 50 --reason "shared project"
    """
    ledger = _admin_ledger(site_path, [source, dest], "moving budget between accounts")
    ledger.transfer(source, dest, gpu_hours, actor=getpass.getuser(), reason=reason)
    for account in (source, dest):
        _print_budget(ledger, account)


@cli.command()
@site_option
@json_option
def audit(site_path, as_json):
    """Every budget change: who, when, what and why (append-only; the tool cannot rewrite it).

    \b
    Example:
      slurmgov audit --json
    """
    rows = _ledger(_site(site_path)).audit()
    if as_json:
        _json(rows)
        return
    t = Table(title="audit log")
    for col in ("#", "when (UTC)", "who", "account", "action", "old GPU-h", "new GPU-h", "period", "why"):
        t.add_column(col, overflow="fold")
    for r in rows:
        old = "-" if r["old_budget_h"] is None else f"{r['old_budget_h']:g}"
        t.add_row(str(r["seq"]), str(r["at"])[:19], r["actor"], r["account"], r["action"], old,
                  f"{r['new_budget_h']:g}", r["new_period"], r["reason"] or "")
    out.print(t)


@budget.command("show")
@click.argument("account", required=False, shell_complete=_complete_accounts)
@site_option
@json_option
def budget_show(account, site_path, as_json):
    """Show budgets: budget, charged, held and available GPU-hours.

    \b
    Example:
      slurmgov budget show chem-ai --json
    """
    site = _site(site_path)
    ledger = _ledger(site)
    for name in site.accounts:
        ensure_budget(ledger, site, name)
    balances = [ledger.balance(account)] if account else ledger.balances()
    now = time.time()
    fc = {f.account: f for f in forecasts(ledger, now)}
    if as_json:
        _json([{**dataclasses.asdict(b), **{k: v for k, v in dataclasses.asdict(fc[b.account]).items() if k != "account"}}
               for b in balances])
    else:
        report.balance_table(balances, out, fc)


@cli.command()
@click.option("--by", type=click.Choice(["account", "workflow", "user"]), default="account", show_default=True)
@click.option("--since", type=click.DateTime(), default=None, help="Allocations that ended at or after (UTC).")
@click.option("--until", type=click.DateTime(), default=None, help="Allocations that ended before (UTC).")
@site_option
@json_option
def waste(by, since, until, site_path, as_json):
    """Allocated GPU time that sat idle: pilot allocations' settled time not used by any step.

    \b
    Examples:
      slurmgov waste --by workflow
      slurmgov waste --by account --since 2026-11-01 --json
    """
    def utc(d):
        return None if d is None else d.replace(tzinfo=timezone.utc).timestamp()

    rows = _ledger(_site(site_path)).waste(by=by, since=utc(since), until=utc(until))
    if as_json:
        _json(rows)
    else:
        report.waste_table(rows, by, out)


@cli.command()
@click.option("--by", type=click.Choice(["account", "workflow", "step", "user", "gpu_type"]), default="account",
              show_default=True)
@click.option("--since", type=click.DateTime(), default=None, help="Charges that ended at or after (UTC).")
@click.option("--until", type=click.DateTime(), default=None, help="Charges that ended before (UTC).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file (parquet needs one).")
@site_option
@json_option
def usage(by, since, until, fmt, output, site_path, as_json):
    """Charged GPU time, grouped by account, workflow, step, user or GPU type.

    \b
    Examples:
      slurmgov usage --by workflow --json
      slurmgov usage --by user --since 2026-11-01 --format csv -o november.csv
      slurmgov usage --by gpu_type --format parquet -o usage.parquet
    """
    import pandas as pd

    def utc(d):
        return None if d is None else d.replace(tzinfo=timezone.utc).timestamp()

    with _busy("reading usage from the ledger"):
        rows = _ledger(_site(site_path)).usage(by=by, since=utc(since), until=utc(until))
    fmt = "json" if as_json else fmt
    if fmt == "table" and output is None:
        report.usage_table(rows, by, out)
        return
    frame = pd.DataFrame(rows, columns=["key", "charges", "gpu_seconds", "charged_h"]).rename(columns={"key": by})
    if fmt == "parquet":
        if output is None:
            raise click.BadParameter("parquet is binary: give --output FILE", param_hint="--format")
        try:
            frame.to_parquet(output, index=False)
        except ImportError:
            raise click.UsageError("parquet output needs pyarrow: pip install 'slurmgov[parquet]'") from None
    elif fmt == "csv":
        text = frame.to_csv(index=False)
    else:
        text = json.dumps(rows, indent=2, default=str) if fmt == "json" else frame.to_string(index=False)
    if fmt != "parquet":
        if output:
            Path(output).write_text(text)
        else:
            click.echo(text, nl=False)
    if output:
        err.print(f"wrote {len(frame)} rows to {output}")


conf_dir_option = click.option("--slurm-conf-dir", "conf_dir", required=True,
                               type=click.Path(file_okay=False, exists=True),
                               help="Directory of slurm.conf, where the hooks and their files live.")


def _state_dir(site) -> str:
    return str(site_mod.slurmgov_home())


def _placement_log(site) -> Path:
    return Path(_state_dir(site)) / "placement.jsonl"


@cli.command()
@conf_dir_option
@site_option
@json_option
@click.option("--reconcile/--no-reconcile", default=True, show_default=True,
              help="Check the ledger against sacct and squeue (needs slurmdbd).")
@click.option("--grace", type=click.FloatRange(min=0), default=600, show_default=True, metavar="SECONDS",
              help="Release holds whose job Slurm has not known for this long.")
@click.option("--placement", "placement_sample", is_flag=True,
              help="Also record where jobs landed and the free GPU slots.")
def sync(conf_dir, site_path, as_json, reconcile, grace, placement_sample):
    """One governor pass: ingest the hooks' journals, settle finished jobs, reconcile with
    sacct, rewrite the snapshot.

    \b
    Example:
      slurmgov sync --slurm-conf-dir /etc/slurm --site site_configs/demo-cluster.yaml
    """
    site = _site(site_path)
    with _busy("ingesting journals" + (", reconciling with sacct" if reconcile else "")):
        rep = governor.sync_once(_ledger(site), site, conf_dir, _state_dir(site),
                                 slurm=slurm_cli if reconcile else None, grace_s=grace)
    if placement_sample:
        problem = placement.sample_into(site, placement.PlacementLog(_placement_log(site)))
        if problem:
            rep.problems.append(problem)
    if as_json:
        _json(dataclasses.asdict(rep))
    else:
        out.print(f"admitted {rep.admitted}, settled {rep.settled}, snapshot serial {rep.snapshot_serial}")
        for d in rep.drift:
            out.print(f"drift: {d}")
    for problem in rep.problems:
        err.print(f"problem: {problem}")


@cli.command("governor")
@conf_dir_option
@site_option
@click.option("--interval", type=click.FloatRange(min=0.1), default=10, show_default=True, metavar="SECONDS")
@click.option("--reconcile/--no-reconcile", default=True, show_default=True,
              help="Check the ledger against sacct and squeue on each pass (needs slurmdbd).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on 127.0.0.1:PORT (0: any free port, printed).")
@click.option("--placement-every", type=click.FloatRange(min=0), default=60, show_default=True, metavar="SECONDS",
              help="Record where jobs landed and free GPU slots this often (0: never); "
                   "read with `slurmgov topology placement|fragmentation`.")
def governor_loop(conf_dir, site_path, interval, reconcile, metrics_port, placement_every):
    """Run the governor: a sync pass every --interval seconds until stopped (Ctrl-C / SIGINT).

    A pass that fails (ledger or slurmdbd briefly away) is reported and retried next time;
    nothing is lost, since every journal line is applied under its own key.

    \b
    Example:
      slurmgov governor --slurm-conf-dir /etc/slurm --interval 5
    """
    site = _site(site_path)
    ledger = _ledger(site)
    metrics = GovernorMetrics(metrics_port)
    if metrics.port is not None:
        err.print(f"metrics: http://127.0.0.1:{metrics.port}/metrics")
    alerted: dict[str, str] = {}
    log = placement.PlacementLog(_placement_log(site))
    next_sample, said = 0.0, set()
    while True:
        try:
            rep = governor.sync_once(ledger, site, conf_dir, _state_dir(site), slurm=slurm_cli if reconcile else None)
            lines = [f"problem: {p}" for p in rep.problems] + [f"drift: {d}" for d in rep.drift]
            if placement_every and time.time() >= next_sample:
                next_sample = time.time() + placement_every
                problem = placement.sample_into(site, log)
                if problem and problem not in said:  # once, not every pass
                    said.add(problem)
                    lines.append(problem)
            for alert in metrics.update(ledger, rep, time.time()):
                account = alert.split()[2]
                if alerted.get(account) != alert.split("(")[1]:  # say each threshold once, not every pass
                    alerted[account] = alert.split("(")[1]
                    lines.append(alert)
        except SlurmgovError as exc:
            lines = [f"pass failed, retrying in {interval:g} s: {exc}"]
        for line in lines:
            err.print(line)
        time.sleep(interval)


@cli.command("dashboard")
@site_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8788, show_default=True, help="0: any free port.")
def dashboard_cmd(site_path, host, port):
    """Serve the site-wide page: every account's budget, burn-down and forecast, recent
    workflows with their cost and idle time, waste by account, placement and free GPU slots.

    \b
    Example:
      slurmgov dashboard --site site_configs/demo-cluster.yaml --port 8788
    """
    from slurmgov.interface import site_dashboard

    site = _site(site_path)
    ledger = _ledger(site)
    for name in site.accounts:
        ensure_budget(ledger, site, name)

    def ready(url):
        out.print(f"site dashboard: {url}  (Ctrl-C stops it)")
        sys.stdout.flush()

    try:
        site_dashboard.serve(site, ledger, Path(_state_dir(site)), host, port, ready)
    except OSError as exc:
        raise SlurmgovError(f"dashboard: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@cli.group()
def limits():
    """Slurm's own limits, kept in step with the ledger."""


@limits.command("sync")
@site_option
@json_option
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
def limits_sync(site_path, as_json, dry_run):
    """Push each account's remaining budget into slurmdbd as GrpTRESMins=gres/gpu=N.

    Then Slurm's scheduler enforces the budget even without the submit hook: a GPU job
    that would cross it pends with reason AssocGrpGRESMinutes. N = Slurm's recorded usage
    + what the ledger has left, in GPU-minutes at the site's dearest GPU weight. Needs
    PriorityDecayHalfLife=0 and PriorityUsageResetPeriod=NONE for exact caps.

    \b
    Example:
      slurmgov limits sync --site /etc/slurmgov/site.yaml --dry-run
    """
    site = _site(site_path)
    ledger = _ledger(site)
    for name in site.accounts:
        ensure_budget(ledger, site, name)
    changes = limits_mod.sync_limits(ledger, dry_run=dry_run, weight=site.weight(None))
    if as_json:
        _json([c.as_dict() for c in changes])
        return
    t = Table(title="GrpTRESMins=gres/gpu" + (" (dry run)" if dry_run else ""))
    for col in ("account", "Slurm usage min", "left min", "old cap", "new cap", "status"):
        t.add_column(col)
    for c in changes:
        t.add_row(c.account, str(c.usage_min), str(c.remaining_min), str(c.old), str(c.new), c.status)
    out.print(t)


@cli.group()
def topology():
    """The site's shape: nodes, NVLink domains, the switch tree."""


@topology.command("show")
@site_option
@json_option
@click.option("--live", is_flag=True, help="Free slots as Slurm has them now (sinfo), not an empty cluster.")
def topology_show(site_path, as_json, live):
    """Show leaf switches, their nodes and GPUs, and the free N-GPU slots per leaf and domain.

    \b
    Examples:
      slurmgov topology show --site site_configs/demo-cluster.yaml
      slurmgov topology show --live --json
    """
    from slurmgov.governance.topology_import import fragmentation

    site = _site(site_path)
    topo = site.topology
    frag = fragmentation(site, placement.sample(site).busy if live else {})
    doc = {
        "site": site.site,
        "nodes": len(topo.nodes), "gpus": sum(n.gpus for n in topo.nodes.values()),
        "leaf_switches": {name: {"nodes": hostlist.collect_hostlist(members),
                                 "gpus": sum(topo.nodes[n].gpus for n in members)}
                          for name, members in topo.leaves.items()},
        "upper_switches": {name: children for name, children in topo.uppers.items()},
        "nvlink_domains": {d: len(m) for d, m in topo.domains.items() if len(m) > 1},
        "free_slots": frag,
    }
    if as_json:
        _json(doc)
        return
    t = Table(title=f"site {site.site}: {doc['nodes']} nodes, {doc['gpus']} GPUs")
    for col in ("switch", "nodes", "GPUs", "free 1/2/4/8-GPU slots"):
        t.add_column(col)
    leaves = frag.get("leaf_switches", {})
    for name, info in doc["leaf_switches"].items():
        slots = leaves.get(name, {}).get("slots", {})
        t.add_row(name, info["nodes"], str(info["gpus"]), "/".join(str(slots.get(k, 0)) for k in (1, 2, 4, 8)))
    for name, children in doc["upper_switches"].items():
        t.add_row(name, "switches: " + ", ".join(children), "", "")
    out.print(t)
    if doc["nvlink_domains"]:
        out.print("multi-node NVLink domains: " + ", ".join(f"{d} ({n} nodes)" for d, n in doc["nvlink_domains"].items()))


def _samples_window(fn):
    """--since/--until for the commands that read the governor's placement samples."""
    fn = click.option("--until", type=click.DateTime(), default=None, help="Samples taken before (UTC).")(fn)
    return click.option("--since", type=click.DateTime(), default=None, help="Samples taken at or after (UTC).")(fn)


def _samples(site, since, until) -> list:
    def utc(d):
        return None if d is None else d.replace(tzinfo=timezone.utc).timestamp()
    return placement.PlacementLog(_placement_log(site)).read(utc(since), utc(until))


@topology.command("placement")
@site_option
@json_option
@_samples_window
def topology_placement(site_path, as_json, since, until):
    """The share of GPU jobs that got the locality they asked for (node, NVLink domain, leaf
    switch), from what the governor recorded of running jobs.

    \b
    Examples:
      slurmgov topology placement
      slurmgov topology placement --since 2026-11-01 --json
    """
    site = _site(site_path)
    rep = placement.placement(site, _samples(site, since, until))
    if as_json:
        _json(rep)
        return
    report.placement_table(rep, out)


@topology.command("fragmentation")
@site_option
@json_option
@_samples_window
def topology_fragmentation(site_path, as_json, since, until):
    """Free N-GPU slots per leaf switch: now, and the minimum and mean over the recorded samples.

    \b
    Examples:
      slurmgov topology fragmentation
      slurmgov topology fragmentation --since 2026-11-24 --json
    """
    site = _site(site_path)
    rep = placement.fragmentation_over_time(site, _samples(site, since, until))
    if as_json:
        _json(rep)
        return
    report.fragmentation_table(rep, out)


@topology.command("import")
@conf_dir_option
@click.option("--name", default=None, help="Site name (default: ClusterName).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write the site file here.")
def topology_import(conf_dir, name, output):
    """Write a site file from slurm.conf, gres.conf and topology.conf (accounts to be filled in).

    \b
    Example:
      slurmgov topology import --slurm-conf-dir /etc/slurm -o site_configs/my-site.yaml
    """
    from slurmgov.governance.topology_import import import_site, to_yaml

    doc, warnings = import_site(conf_dir, site_name=name)
    text = to_yaml(doc, warnings)
    for w in warnings:
        err.print(f"warning: {w}")
    if output:
        Path(output).write_text(text)
        err.print(f"wrote {output}")
    else:
        click.echo(text, nl=False)


@cli.group()
def hooks():
    """Install the Slurm hooks (job_submit.lua, jobcomp.lua) and their first snapshot."""


@hooks.command("install")
@conf_dir_option
@site_option
def hooks_install(conf_dir, site_path):
    """Copy the hooks next to slurm.conf and write the first budget snapshot.

    \b
    Then set in slurm.conf:  JobSubmitPlugins=lua  and  JobCompType=jobcomp/lua
    Example:
      slurmgov hooks install --slurm-conf-dir /etc/slurm --site site_configs/demo-cluster.yaml
    """
    site = _site(site_path)
    installed = governor.install_hooks(conf_dir)
    rep = governor.sync_once(_ledger(site), site, conf_dir, _state_dir(site))
    out.print(f"installed {', '.join(installed)} in {conf_dir}; snapshot serial {rep.snapshot_serial}")
    out.print("slurm.conf needs: JobSubmitPlugins=lua and JobCompType=jobcomp/lua")


@guarded("slurmgov")
def main(*args, **kwargs):
    return cli.main(*args, prog_name="slurmgov", **kwargs)


if __name__ == "__main__":
    main()
