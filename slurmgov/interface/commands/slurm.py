"""Slurm's side: `slurmgov sync`, `governor`, `limits sync`, `hooks install` and `hooks check`."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import time

import click

from slurmgov.errors import SlurmgovError
from slurmgov.interface.commands.common import (
    _busy,
    _complete_accounts,
    _json,
    _ledger,
    _placement_log,
    _site,
    _state_dir,
    conf_dir_option,
    err,
    json_option,
    out,
    site_option,
    wait_option,
)
from slurmgov.interface.signals import Stopped, stop_on_signals, stopped_by
from slurmgov.interface.tables import Table, show
from slurmgov.ledger.seed import ensure_budget
from slurmgov.policy.metrics import GovernorMetrics
from slurmgov.site.names import is_name
from slurmgov.slurm import commands as slurm_cli
from slurmgov.slurm import governor as governor_mod
from slurmgov.slurm import hooks_check, placement
from slurmgov.slurm import limits as limits_mod

# The governor service logs as "slurmgov.governor" (its passes) beside slurmgov.slurm.governor.
service_log = logging.getLogger("slurmgov.governor")


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
@wait_option
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
        for account in rep.seeded:
            out.print(f"account {account}: given the site's default budget")
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
@wait_option
def governor_loop(conf_dir, site_path, interval, reconcile, metrics_port, placement_every):
    """Run the governor: a sync pass every --interval seconds until stopped (Ctrl-C / SIGINT).

    A pass that fails (ledger or slurmdbd briefly away) is reported and retried next time;
    nothing is lost, since every journal line is applied under its own key.

    \b
    Example:
      slurmgov governor --slurm-conf-dir /etc/slurm --interval 5
    """
    # A service's output is a log a site can ship: timestamps, levels and a logger name on stderr.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    site = _site(site_path)
    ledger = _ledger(site)
    metrics = GovernorMetrics(metrics_port)
    if metrics.port is not None:
        service_log.info("metrics: http://127.0.0.1:%d/metrics", metrics.port)
    alerted: dict[str, str] = {}
    log = placement.PlacementLog(_placement_log(site))
    next_sample, said = 0.0, set()
    service_log.info("started: hook dir %s, a pass every %g s%s", conf_dir, interval,
                     "" if reconcile else " (no reconcile)")
    try:
        with stop_on_signals():  # SIGTERM (a service's stop), SIGHUP: as Ctrl-C
            while True:
                try:
                    rep = governor_mod.sync_once(ledger, site, conf_dir, _state_dir(site),
                                                 slurm=slurm_cli if reconcile else None)
                    for p in rep.problems:
                        service_log.warning("problem: %s", p)
                    for d in rep.drift:
                        service_log.warning("drift: %s", d)
                    if placement_every and time.time() >= next_sample:
                        next_sample = time.time() + placement_every
                        problem = placement.sample_into(site, log)
                        if problem and problem not in said:  # once, not every pass
                            said.add(problem)
                            service_log.warning("%s", problem)
                    for alert in metrics.update(ledger, rep, time.time()):
                        account = alert.split()[2]
                        if alerted.get(account) != alert.split("(")[1]:  # say each threshold once, not every pass
                            alerted[account] = alert.split("(")[1]
                            service_log.warning("%s", alert)
                except SlurmgovError as exc:
                    service_log.error("pass failed, retrying in %g s: %s", interval, exc)
                time.sleep(interval)
    except KeyboardInterrupt as exc:  # between passes or in one: a pass's transaction is rolled back whole
        signum = exc.signum if isinstance(exc, Stopped) else (stopped_by() or signal.SIGINT)
        service_log.info("stopped by %s", signal.Signals(signum).name)
        # a service stopped by its manager (SIGTERM) has done nothing wrong: exit 0
        sys.exit(0 if signum == signal.SIGTERM else 128 + signum)


@click.group()
def limits():
    """Slurm's own limits, kept in step with the ledger."""


@limits.command("sync")
@site_option
@json_option
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@wait_option
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
    show(t, out)


@click.group()
def hooks():
    """Install the Slurm hooks (job_submit.lua, jobcomp.lua) and their first snapshot; check them."""


@hooks.command("install")
@conf_dir_option
@site_option
@wait_option
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


@hooks.command("check")
@conf_dir_option
@site_option
@click.option("--account", default=None, shell_complete=_complete_accounts,
              help="Account the probes are submitted under (default: the site's first account with a budget "
                   "in the snapshot, else the user's default account).")
@json_option
def hooks_check_cmd(conf_dir, site_path, account, as_json):
    """Submit held probe jobs through the submit hook, show what it priced, cancel them.

    One held job (sbatch -H, --wrap true, named slurmgov-probe-<form>-<hex>) per common GPU
    request form (--gres, typed --gres with the site's first GPU type, --gpus,
    --gpus-per-node, --gpus-per-task, no time, --exclusive, -n without -N, an array) and one
    CPU-only job. For each: what Slurm handed the hook (its probe journal line), the price
    it journaled (admit line, found by the token in the job's AdminComment), what it pinned,
    and TimeLimit/NumNodes as Slurm now shows them; or the line sbatch refused it with. Every
    probe is cancelled (on errors and Ctrl-C too) and the queue watched until they are gone.
    Also: the fail policy in force, the snapshot's serial and age, and whether slurm.conf
    loads both hooks. Run it as root before trusting the hook, and after each change to
    slurm.conf or the hook. The probes' holds count against the account until the governor's
    next pass settles their cancellation.

    \b
    Exit codes:
      0  every GPU probe was admitted with its probe and admit lines, or refused by the
         budget with a slurmgov line; the CPU-only probe was left untouched
      1  a probe shows the hook does not govern: a GPU job admitted with no admit line
         (the hook is not running) or no probe line, a refusal that is not the budget's
         (stale snapshot, no slurmgov line), the CPU-only job touched, a probe left queued
      2  bad input: no slurm.conf or job_submit.lua in --slurm-conf-dir, bad option
      6  the journal is not readable by this user (run as root)
      130 interrupted (Ctrl-C); the probes are cancelled all the same

    \b
    Example:
      slurmgov hooks check --slurm-conf-dir /etc/slurm --site /etc/slurmgov/site.yaml
    """
    site = _site(site_path)
    if account is not None and not is_name(account):
        raise click.BadParameter(f"{account!r} is not an account name", param_hint="--account")
    hooks_check.require_hook_dir(conf_dir)
    hook_conf = hooks_check.read_hook_conf(conf_dir)
    snap = hooks_check.read_snapshot(hook_conf.snapshot_path, time.time())
    if account is None:
        account = hooks_check.pick_account(site.accounts, snap)
    gpu_type = next(iter(site.gpu_types), None)
    runner = hooks_check.SlurmRunner(hooks_check.probe_env(conf_dir))
    with _busy("submitting held probe jobs through the hook"):
        rep = hooks_check.check(conf_dir, account, gpu_type, runner,
                                shipped_hook=governor_mod.PLUGINS / "job_submit.lua")
    if as_json:
        _json(rep.as_dict())
    else:
        _print_hooks_check(rep)
    for w in rep.warnings:
        err.print(f"warning: {w}", markup=False, highlight=False)
    if not rep.ok:
        raise hooks_check.HookCheckFailed(rep.headline())


def _print_hooks_check(rep) -> None:
    s, sc = rep.snapshot, rep.slurm_conf
    yes = lambda b: "yes" if b else "NO"  # noqa: E731
    lines = [
        f"hook dir {rep.conf_dir}: JobSubmitPlugins={sc.job_submit_plugins or '(unset)'} (lua: {yes(sc.submit_lua)}), "
        f"JobCompType={sc.job_comp_type or '(unset)'} (jobcomp/lua: {yes(sc.jobcomp_lua)})",
    ]
    if s.readable:
        lines.append(f"snapshot {s.path}: serial {s.serial}, age {s.age_s} s of max {s.max_age_s:g} s "
                     f"({'STALE' if s.stale else 'fresh'}), {len(s.accounts)} accounts")
    else:
        lines.append(f"snapshot {s.path}: UNREADABLE ({s.error})")
    src = "the snapshot's; hook.conf's " + rep.hook_conf.fail_policy + " applies if it is unreadable" \
        if s.readable else "slurmgov_hook.conf's (the snapshot is unreadable)"
    lines.append(f"fail policy in force: {rep.fail_policy} ({src})")
    lines.append(f"journal {rep.hook_conf.journal_path}; probes under account "
                 f"{rep.account or '(the user default)'}, GPU type {rep.gpu_type or '(none in the site file)'}")
    for ln in lines:
        out.print(ln, markup=False, highlight=False)
    t = Table(title="hook probes (held, then cancelled)",
              caption="Slurm handed the hook: the fields it set (unset ones, NO_VAL, left out; --json has all)")
    for col in ("#", "request", "Slurm handed the hook", "journaled price", "pinned", "Slurm now", "outcome"):
        t.add_column(col)
    for p in rep.probes:
        handed = ("(no probe line)" if p.handed is None else
                  " ".join(f"{k}={v}" for k, v in hooks_check.set_fields(p.handed).items()) or "(nothing set)")
        if p.admit:
            a = p.admit
            tasks = (p.hook_price or {}).get("tasks")
            per = f" x {tasks} tasks" if tasks and tasks not in ("1", "-") else ""
            gpu_s = "?" if a["weighted_gpu_s"] is None else f"{a['weighted_gpu_s']:g}"
            price = (f"{gpu_s} GPU-s = {a['gpu_h']} GPU-h: {a['gpus']} GPU x {a['minutes']} min{per}"
                     + (f" ({a['gpu_type']})" if a["gpu_type"] else ""))
        elif p.refusal:
            price = p.refusal
        else:
            price = "-"
        now = " ".join(f"{k}={v}" for k, v in (p.slurm_now or {}).items() if k in ("TimeLimit", "NumNodes")) or "-"
        outcome = p.outcome if p.ok else f"{p.outcome} (!)"
        pinned = (p.pinned or "-") if p.submitted else "-"  # a refused job has nothing pinned
        t.add_row(str(p.form), p.request, handed, price, pinned, now, outcome)
    show(t, out)
    out.print("ok: every GPU probe was priced by the hook and the CPU-only probe left alone; all probes cancelled"
              if rep.ok else f"{len(rep.problems)} problem(s):", markup=False, highlight=False)
    for prob in rep.problems:
        out.print(f"  - {prob}", markup=False, highlight=False)
