"""`slurmgov runs` (list, show, cancel) and `slurmgov holds` (list, release): what is running,
what it holds, and how to stop it or free its money."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timezone

import click

from slurmgov.errors import InputError, PermissionDenied
from slurmgov.intent import run_records
from slurmgov.interface.commands.common import (
    _json,
    _ledger,
    _readable,
    _site,
    format_option,
    json_option,
    out,
    site_option,
)
from slurmgov.interface.tables import Table, show
from slurmgov.policy import authz


def _when(ts) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d"


def _worst_case(doc: dict) -> float | None:
    """The plan's worst case: a running run's record has ``cost_h``, an ended one the whole plan."""
    plan = doc.get("plan") or {}
    return plan.get("cost_h", plan.get("worst_case_gpu_hours"))


def run_summary(doc: dict, ledger) -> dict:
    """A run as `runs` shows it: its record, with its hold and charge from the ledger."""
    hold_key = doc.get("hold_key")
    hold = ledger.find_hold(hold_key) if hold_key else None
    # a local run's charges are on its hold; a Slurm run's, on its jobs' holds: its record has them
    charged = sum(c["charged_h"] for c in ledger.charges(hold_key)) if hold else doc.get("charged_h")
    return {
        "run_id": doc["run_id"], "state": run_records.state(doc), "workflow": doc.get("workflow"),
        "account": doc.get("account"), "user": doc.get("user"), "executor": doc.get("executor", "local"),
        "started": doc.get("started"), "ended": doc.get("ended"), "host": doc.get("host"), "pid": doc.get("pid"),
        "hold_key": hold_key, "hold_state": hold.state if hold else None,
        "held_h": hold.remaining_h if hold and hold.state == "open" else 0.0,
        "charged_h": charged, "worst_case_h": _worst_case(doc),
    }


@click.group(invoke_without_command=True)
@site_option
@json_option
@format_option
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Newest runs to list.")
@click.pass_context
def runs(ctx, site_path, as_json, fmt, limit):
    """List workflow runs, most recently written first: state, account, user, hold and charge.

    A run whose process is gone without ending it (SIGKILL, a host that died) shows as `lost`;
    its hold lapses and is released by the next command that opens the ledger. Lists the caller's
    own runs and those of the accounts it may read (all, for admins and operators).

    \b
    Examples:
      slurmgov runs
      slurmgov runs show 20261201T101500-1a2b3c
      slurmgov runs cancel 20261201T101500-1a2b3c
    """
    if ctx.invoked_subcommand is not None:
        return
    site = _site(site_path)
    mine, me = _readable(site), authz.whoami()
    ledger = _ledger(site)
    rows = [run_summary(d, ledger) for d in run_records.read_all(limit=limit)
            if mine is None or d.get("account") in mine or d.get("user") == me]
    if as_json:
        _json(rows)
        return
    t = Table(title="runs")
    for col in ("run", "state", "workflow", "account", "user", "started (UTC)", "hold", "held GPU-h", "charged GPU-h"):
        t.add_column(col)
    for r in rows:
        hold = "-" if not r["hold_key"] else f"{r['hold_key']} ({r['hold_state'] or 'gone'})"
        charged = "-" if r["charged_h"] is None else f"{r['charged_h']:.3f}"
        t.add_row(r["run_id"], r["state"], r["workflow"] or "-", r["account"] or "-", r["user"] or "-",
                  _when(r["started"]), hold, f"{r['held_h']:.3f}", charged)
    show(t, out, fmt)


@runs.command("show")
@click.argument("run_id")
@site_option
@json_option
def runs_show(run_id, site_path, as_json):
    """One run: its record (steps, attempts, costs) with its hold and charges now.

    \b
    Example:
      slurmgov runs show 20261201T101500-1a2b3c --json
    """
    doc = run_records.read(run_id)
    site = _site(site_path)
    if doc.get("user") != authz.whoami():
        _readable(site, str(doc.get("account")))
    ledger = _ledger(site)
    summary = run_summary(doc, ledger)
    if as_json:
        _json({**doc, "summary": summary})
        return
    for key in ("run_id", "state", "workflow", "account", "user", "executor", "host", "pid", "hold_key",
                "hold_state", "worst_case_h", "held_h", "charged_h"):
        val = summary[key]
        out.print(f"{key}: {'-' if val is None else val}", highlight=False, soft_wrap=True)
    out.print(f"started: {_when(summary['started'])}  ended: {_when(summary['ended'])}", highlight=False)
    steps = doc.get("steps") or {}
    if steps:
        t = Table(title="steps")
        for col in ("step", "status", "attempts", "GPU-s", "reason"):
            t.add_column(col)
        for sid, s in steps.items():
            t.add_row(sid, str(s.get("status")), str(len(s.get("attempts") or [])),
                      f"{s.get('gpu_seconds') or 0:.1f}", s.get("reason") or "")
        show(t, out)


def _may_stop(site, doc: dict, what: str) -> None:
    """Its user (the real uid's name, never $USER) or an admin."""
    me = authz.whoami()
    if doc.get("user") == me or authz.is_admin(site):
        return
    raise PermissionDenied(f"{me} ({authz.role(site, authz.caller())}) may not cancel run {doc['run_id']} of user "
                           f"{doc.get('user')}, account {doc.get('account')}: that needs its user or an admin "
                           f"(root, or `admins` in site {site.site})")


@runs.command("cancel")
@click.argument("run_id")
@site_option
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=60, show_default=True, metavar="SECONDS",
              help="How long to wait for the run to settle after it is told to stop.")
def runs_cancel(run_id, site_path, wait_s):
    """Stop a run as Ctrl-C would: its steps are killed and charged for what they used, its
    Slurm jobs cancelled, its hold closed. A lost run (its process gone) has its hold released.

    \b
    Example:
      slurmgov runs cancel 20261201T101500-1a2b3c
    """
    site = _site(site_path)
    out.print(stop_run(site, None, run_id, wait_s), highlight=False)


def stop_run(site, ledger, run_id: str, wait_s: float) -> str:
    """Stop run ``run_id`` as Ctrl-C would (``slurmgov runs cancel``, the MCP server's cancel_run):
    its user or an admin only; a lost run has its hold released. What happened, in one line.
    ``ledger``: an open one, or None to open the site's."""
    doc = run_records.read(run_id)
    state = run_records.state(doc)
    if state != "running" and state != "lost":
        return f"run {run_id} already ended: {state}"
    _may_stop(site, doc, "cancelling")
    ledger = ledger or _ledger(site)
    if state == "lost":
        hold = ledger.find_hold(doc["hold_key"]) if doc.get("hold_key") else None
        if hold and hold.state == "open":
            ledger.release(hold.hold_key, actor=authz.whoami(), reason=f"run {run_id} lost: its process "
                           f"{doc.get('pid')} on {doc.get('host')} is gone",
                           role="user" if doc.get("user") == authz.whoami() else authz.ADMIN)
        run_records.write(run_id, {**doc, "status": "cancelled", "ended": time.time()})
        return f"run {run_id} was lost (its process is gone); its hold is released"
    if run_records.alive(doc) is None:
        raise InputError(f"run {run_id} runs on host {doc.get('host')} (pid {doc.get('pid')}): cancel it there, "
                         f"or release its hold with `slurmgov holds release {doc.get('hold_key')} --reason ...`")
    try:
        os.kill(int(doc["pid"]), signal.SIGTERM)
    except ProcessLookupError:
        pass  # it ended meanwhile
    except PermissionError:
        raise PermissionDenied(f"run {run_id} belongs to another user's process (pid {doc['pid']}); "
                               f"ask root, or release its hold with `slurmgov holds release`") from None
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        now = run_records.read(run_id)
        if run_records.state(now) != "running":
            return f"run {run_id}: {run_records.state(now)}"
        time.sleep(0.2)
    raise InputError(f"run {run_id} was told to stop (SIGTERM to pid {doc['pid']}) but had not settled "
                     f"after {wait_s:g} s; `slurmgov runs` shows when it has")


@click.group(invoke_without_command=True)
@site_option
@json_option
@format_option
@click.pass_context
def holds(ctx, site_path, as_json, fmt):
    """List open holds: what each still reserves, whose it is, how old, and its lease.

    A run's hold is a lease its run renews; a lease that lapsed is released when any command
    opens the ledger (this one too), charging only what the run recorded.

    \b
    Examples:
      slurmgov holds --json
      slurmgov holds release run:20261201T101500-1a2b3c --reason "node crashed, run gone"
    """
    if ctx.invoked_subcommand is not None:
        return
    site = _site(site_path)
    mine = _readable(site)
    rows = [r for r in _ledger(site).holds_open() if mine is None or r["account"] in mine]
    now = time.time()
    if as_json:
        _json([{**r, "age_s": now - r["created_at"]} for r in rows])
        return
    t = Table(title="open holds")
    for col in ("hold", "account", "user", "workflow", "held GPU-h", "of GPU-h", "age", "lease"):
        t.add_column(col)
    for r in rows:
        lease = "-" if r["lease_until"] is None else (
            f"lapses in {_age(r['lease_until'] - now)}" if r["lease_until"] > now else "lapsed")
        t.add_row(r["hold_key"], r["account"], r["user"] or "-", r["workflow"], f"{r['held_h']:.3f}",
                  f"{r['amount_h']:.3f}", _age(now - r["created_at"]), lease)
    show(t, out, fmt)


@holds.command("release")
@click.argument("hold_key")
@click.option("--reason", required=True, help="Why: kept in the audit log.")
@site_option
def holds_release(hold_key, reason, site_path):
    """Release an open hold (admins and operators): its remaining GPU-hours return to the account;
    what was charged stays. Audited with who, as which role, and why.

    \b
    Example:
      slurmgov holds release run:20261201T101500-1a2b3c --reason "host died, run gone"
    """
    site = _site(site_path)
    who = authz.caller()  # admins and operators only: no need to ask Slurm
    if authz.role(site, who) not in (authz.ADMIN, authz.OPERATOR):
        authz.require(site, "holds.release", None, who=who)  # refused before the ledger says what it holds
    ledger = _ledger(site)
    before = ledger.find_hold(hold_key)
    role = authz.require(site, "holds.release", before.account if before else None, who=who)
    if before is None:
        raise InputError(f"no hold {hold_key!r} in the ledger (`slurmgov holds` lists the open ones)")
    if before.state != "open":
        out.print(f"hold {hold_key} is already closed ({before.state})", highlight=False)
        return
    ledger.release(hold_key, actor=authz.whoami(), reason=reason, role=role)
    out.print(f"hold {hold_key} released: {before.remaining_h:.3f} GPU-h back to account {before.account}",
              highlight=False)
