"""Slurm's side: `slurmgov sync`, `governor`, `limits sync` and `hooks install`."""

from __future__ import annotations

import dataclasses
import time

import click
from rich.table import Table

from slurmgov.errors import SlurmgovError
from slurmgov.governance import governor as governor_mod
from slurmgov.governance import limits as limits_mod
from slurmgov.governance import placement, slurm_cli
from slurmgov.governance.metrics import GovernorMetrics
from slurmgov.governance.seed import ensure_budget
from slurmgov.interface.commands.common import (
    _busy, _json, _ledger, _placement_log, _site, _state_dir, conf_dir_option, err, json_option, out, site_option,
)


@click.command()
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
        rep = governor_mod.sync_once(_ledger(site), site, conf_dir, _state_dir(site),
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


@click.command("governor")
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
            rep = governor_mod.sync_once(ledger, site, conf_dir, _state_dir(site),
                                         slurm=slurm_cli if reconcile else None)
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


@click.group()
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


@click.group()
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
    installed = governor_mod.install_hooks(conf_dir)
    rep = governor_mod.sync_once(_ledger(site), site, conf_dir, _state_dir(site))
    out.print(f"installed {', '.join(installed)} in {conf_dir}; snapshot serial {rep.snapshot_serial}")
    out.print("slurm.conf needs: JobSubmitPlugins=lua and JobCompType=jobcomp/lua")
