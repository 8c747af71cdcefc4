"""Accounting: `slurmgov budget set|grant|transfer|show`, `audit`, `usage` and `waste`."""

from __future__ import annotations

import dataclasses
import io
import json
import time

import click

from slurmgov.interface import report
from slurmgov.interface.commands.common import (
    _busy,
    _complete_accounts,
    _json,
    _ledger,
    _readable,
    _site,
    _utc,
    _who,
    err,
    format_option,
    json_option,
    out,
    site_option,
    wait_option,
)
from slurmgov.interface.tables import Table, show, tsv
from slurmgov.ledger.cpu import cpu_account, is_cpu_account, of_cpu_account
from slurmgov.ledger.seed import ensure_budget
from slurmgov.policy import authz
from slurmgov.policy.forecast import forecasts
from slurmgov.site.names import is_name, is_user_name
from slurmgov.slurm.governor import cap_uid


@click.group()
def budget():
    """Read and set accounts' GPU-hour budgets."""


def _change_ledger(site_path, action, accounts, gpu_hours=None, seed=True):
    """(ledger, role): the ledger (``accounts`` seeded from the site file), once names and the
    caller's right to ``action`` are checked; the role it acts under, for the audit trail."""
    site = _site(site_path)
    for account in accounts:
        if not is_name(account):
            raise click.BadParameter(f"{account!r} is not an account name", param_hint="ACCOUNT")
    # budget set is an admin's alone: Slurm need not be asked who else the caller is
    who = authz.caller() if action == "budget.set" else _who(site)
    role = authz.require(site, action, accounts[0], dest=accounts[1] if len(accounts) > 1 else None,
                         gpu_hours=gpu_hours, who=who)
    ledger = _ledger(site)
    for account in accounts if seed else ():
        ensure_budget(ledger, site, account)
    return ledger, role


def _print_budget(ledger, account):
    b = ledger.balance(account)
    extra = (f", {b.carried_h:.2f} of it rolled over" if b.carried_h else "") + (f", expires {b.expires}" if b.expires else "")
    out.print(f"account {account}: budget {b.budget_h:.2f} GPU-h ({b.period}{extra}), {b.available_h:.2f} available")


@budget.command("set")
@click.argument("account", shell_complete=_complete_accounts)
@click.argument("gpu_hours", type=click.FloatRange(min=0))
@click.option("--period", type=click.Choice(["monthly", "quarterly", "none"]), default=None,
              help="How often the budget renews (default: keep the account's; monthly for a new account).")
@click.option("--reason", default="", help="Why: kept in the audit log.")
@click.option("--rollover", "rollover_pct", type=click.IntRange(0, 100), default=None, metavar="PCT",
              help="Carry last period's unused budget over, up to PCT% of the budget (0: none; default: keep).")
@click.option("--expires", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="No budget from this day on, UTC (the project ends; default: keep).")
@click.option("--no-expiry", is_flag=True, help="Remove an expiry date.")
@site_option
@wait_option
def budget_set(account, gpu_hours, period, reason, rollover_pct, expires, no_expiry, site_path):
    """Set ACCOUNT's budget to GPU_HOURS (weighted GPU-hours per period). Its period, rollover
    and expiry stay as they are unless given.

    \b
    Examples:
      slurmgov budget set chem-ai 750 --reason "Q4 grant"
      slurmgov budget set physics 120 --period quarterly --rollover 25 --expires 2027-06-30
    """
    if expires is not None and no_expiry:
        raise click.BadParameter("give --expires or --no-expiry, not both", param_hint="--expires")
    ledger, role = _change_ledger(site_path, "budget.set", [account], seed=False)
    when = _utc(expires)
    ledger.set_budget(account, gpu_hours, period, actor=authz.whoami(), reason=reason,
                      rollover_pct=rollover_pct, expires=when, clear_expiry=no_expiry, role=role)
    _print_budget(ledger, account)


@budget.command("set-cpu")
@click.argument("account", shell_complete=_complete_accounts)
@click.argument("cpu_hours", type=click.FloatRange(min=0))
@click.option("--period", type=click.Choice(["monthly", "quarterly", "none"]), default=None,
              help="How often the CPU budget renews (default: keep it; a new one: the site file's account's, else monthly).")
@click.option("--reason", default="", help="Why: kept in the audit log.")
@site_option
@wait_option
def budget_set_cpu(account, cpu_hours, period, reason, site_path):
    """Set ACCOUNT's CPU budget to CPU_HOURS (weighted CPU-hours per period: CPUs x hours x the
    partition's cpu_weight). Once an account has one, the submit hook prices its jobs' CPUs (GPU
    jobs and CPU-only jobs) and refuses what the CPU budget cannot pay for; accounts without one
    are not priced for CPUs. Admins only, as `budget set`; audited (account cpu:ACCOUNT).

    
    Example:
      slurmgov budget set-cpu chem-ai 5000 --reason "CPU allocation 2027"
    """
    ledger, role = _change_ledger(site_path, "budget.set", [account], seed=False)
    terms = _site(site_path).accounts.get(account)
    if period is None and terms is not None and cpu_account(account) not in ledger.account_names():
        period = terms.period  # a new CPU budget renews as the site file's account does
    ledger.set_budget(cpu_account(account), cpu_hours, period, actor=authz.whoami(), reason=reason, role=role)
    b = ledger.balance(cpu_account(account))
    out.print(f"account {account}: CPU budget {b.budget_h:.2f} CPU-h ({b.period}), {b.available_h:.2f} available")


@budget.command("grant")
@click.argument("account", shell_complete=_complete_accounts)
@click.argument("gpu_hours", type=click.FloatRange(min=0))
@click.option("--reason", default="", help="Why: kept in the audit log.")
@site_option
@wait_option
def budget_grant(account, gpu_hours, reason, site_path):
    """Add GPU_HOURS to ACCOUNT's standing budget, from this period on (admins; operators up to
    their limit; account managers only where the site allows).

    \b
    Example:
      slurmgov budget grant chem-ai 100 --reason "deadline extension"
    """
    ledger, role = _change_ledger(site_path, "budget.grant", [account], gpu_hours)
    ledger.grant(account, gpu_hours, actor=authz.whoami(), reason=reason, role=role,
                 daily_limit_h=authz.daily_limit(_site(site_path), role))
    _print_budget(ledger, account)


@budget.command("transfer")
@click.argument("source", shell_complete=_complete_accounts)
@click.argument("dest", shell_complete=_complete_accounts)
@click.argument("gpu_hours", type=click.FloatRange(min=0))
@click.option("--reason", default="", help="Why: kept in the audit log.")
@site_option
@wait_option
def budget_transfer(source, dest, gpu_hours, reason, site_path):
    """Move GPU_HOURS of budget from SOURCE to DEST, atomically (admins; operators up to their
    limit; a manager of both accounts only where the site allows).

    \b
    Example:
      slurmgov budget transfer chem-ai bio-ml 50 --reason "shared project"
    """
    ledger, role = _change_ledger(site_path, "budget.transfer", [source, dest], gpu_hours)
    ledger.transfer(source, dest, gpu_hours, actor=authz.whoami(), reason=reason, role=role,
                    daily_limit_h=authz.daily_limit(_site(site_path), role))
    for account in (source, dest):
        _print_budget(ledger, account)


@budget.group("user-cap")
def user_cap():
    """Cap what one user may spend of an account's budget per period."""


def may_cap_users(site, account: str) -> str:
    """Who may set or remove a user's cap in ``account``: the one permission check of these
    commands (authz ``usercap.set``: admins and the account's managers). The role it is allowed
    under, for the audit trail; else exit 6, one line."""
    return authz.require(site, "usercap.set", account, who=_who(site))


def _cap_ledger(site_path, account, user):
    """(ledger, role): the ledger (``account`` seeded from the site file), once the names and the
    caller's right to cap ``account``'s users are checked."""
    site = _site(site_path)
    if not is_name(account):
        raise click.BadParameter(f"{account!r} is not an account name", param_hint="ACCOUNT")
    if not is_user_name(user):
        raise click.BadParameter(f"{user!r} is not a user name", param_hint="USER")
    role = may_cap_users(site, account)
    ledger = _ledger(site)
    ensure_budget(ledger, site, account)
    return ledger, role


def _print_cap(ledger, account, user):
    u = ledger.user_balance(account, user)
    if u is None:
        out.print(f"account {account}: user {user} has no cap (the account's budget only)")
    else:
        out.print(f"account {account}: user {user} may spend {u.cap_h:.2f} GPU-h per period, "
                  f"{u.available_h:.2f} left in {u.period}")


@user_cap.command("set")
@click.argument("account", shell_complete=_complete_accounts)
@click.argument("user")
@click.argument("gpu_hours", type=click.FloatRange(min=0))
@click.option("--reason", default="", help="Why: kept in the audit log.")
@site_option
@wait_option
def user_cap_set(account, user, gpu_hours, reason, site_path):
    """Let USER spend at most GPU_HOURS of ACCOUNT's budget per period (what they were charged in
    the account this period plus what their work still holds). Enforced by `slurmgov run`, the
    ledger and, from the governor's next snapshot, the Slurm submit hook (admins and ACCOUNT's
    managers).

    \b
    Example:
      slurmgov budget user-cap set chem-ai alice 40 --reason "intern, autumn term"
    """
    ledger, role = _cap_ledger(site_path, account, user)
    cap_uid(user)
    ledger.set_user_cap(account, user, gpu_hours, actor=authz.whoami(), reason=reason, role=role)
    _print_cap(ledger, account, user)


@user_cap.command("remove")
@click.argument("account", shell_complete=_complete_accounts)
@click.argument("user")
@click.option("--reason", default="", help="Why: kept in the audit log.")
@site_option
@wait_option
def user_cap_remove(account, user, reason, site_path):
    """Remove USER's cap in ACCOUNT: the account's budget alone binds them again (admins and
    ACCOUNT's managers).

    \b
    Example:
      slurmgov budget user-cap remove chem-ai alice --reason "project lead now"
    """
    ledger, role = _cap_ledger(site_path, account, user)
    ledger.set_user_cap(account, user, None, actor=authz.whoami(), reason=reason, role=role)
    _print_cap(ledger, account, user)


@user_cap.command("show")
@click.argument("account", required=False, shell_complete=_complete_accounts)
@site_option
@json_option
@wait_option
def user_cap_show(account, site_path, as_json):
    """Capped users: cap, charged and held this period, and what is left (of the accounts the
    caller may read: all for admins and operators, else those it manages or Slurm associates it with).

    \b
    Example:
      slurmgov budget user-cap show chem-ai --json
    """
    site = _site(site_path)
    mine = _readable(site, account)
    rows = [u for u in _ledger(site).user_balances()
            if u.account == account or (account is None and (mine is None or u.account in mine))]
    if as_json:
        _json([dataclasses.asdict(u) for u in rows])
        return
    t = Table(title="per-user caps")
    for col in ("account", "user", "period", "cap GPU-h", "charged", "held", "available"):
        t.add_column(col)
    for u in rows:
        t.add_row(u.account, u.user, u.period, f"{u.cap_h:.2f}", f"{u.charged_h:.2f}", f"{u.held_h:.2f}",
                  f"{u.available_h:.2f}")
    show(t, out, "table")


@budget.command("show")
@click.argument("account", required=False, shell_complete=_complete_accounts)
@site_option
@json_option
@format_option
@wait_option
def budget_show(account, site_path, as_json, fmt):
    """Show budgets: budget, charged, held and available GPU-hours (of the accounts the caller
    may read: all for admins and operators, else those it manages or Slurm associates it with).

    \b
    Example:
      slurmgov budget show chem-ai --json
      slurmgov budget show --format tsv | cut -f1,6
    """
    site = _site(site_path)
    mine = _readable(site, account)
    ledger = _ledger(site)
    for name in site.accounts:
        ensure_budget(ledger, site, name)
    everything = ledger.balances()
    # CPU budgets are ledger accounts cpu:<account> (ledger/cpu.py): shown beside their account
    cpu = {of_cpu_account(b.account): b for b in everything if is_cpu_account(b.account)}
    balances = [ledger.balance(account)] if account else [b for b in everything if not is_cpu_account(b.account)
                                                          and (mine is None or b.account in mine)]
    now = time.time()
    fc = {f.account: f for f in forecasts(ledger, now)}
    if as_json:
        _json([{**dataclasses.asdict(b), **{k: v for k, v in dataclasses.asdict(fc[b.account]).items() if k != "account"},
                **({"cpu": _cpu_json(cpu[b.account])} if b.account in cpu else {})}
               for b in balances])
    else:
        report.balance_table(balances, out, fc, fmt, cpu={b.account: cpu[b.account] for b in balances if b.account in cpu})


def _cpu_json(b) -> dict:
    """An account's CPU budget in `budget show --json` (weighted CPU-hours)."""
    return {"period": b.period, "budget_h": b.budget_h, "charged_h": b.charged_h, "held_h": b.held_h,
            "available_h": b.available_h, "carried_h": b.carried_h}


@click.command()
@site_option
@json_option
@format_option
@wait_option
def audit(site_path, as_json, fmt):
    """Every budget change: who (as which role), when, what and why (append-only; the tool cannot
    rewrite it). Of the accounts the caller may read.

    \b
    Example:
      slurmgov audit --json
    """
    site = _site(site_path)
    rows = _ledger(site).audit(accounts=_readable(site))
    if as_json:
        _json(rows)
        return
    t = Table(title="audit log")
    for col in ("#", "when (UTC)", "who", "as", "account", "action", "old GPU-h", "new GPU-h", "period", "why"):
        t.add_column(col)
    for r in rows:
        # .12g: every digit the ledger keeps (plain :g would show 123456.789 as 123457)
        old = "-" if r["old_budget_h"] is None else f"{r['old_budget_h']:.12g}"
        why = r["reason"] or ""
        if r["action"] == "user-cap" and r["terms"]:  # which user, and the cap: in the terms
            why = f"{r['terms']}: {why}" if why else r["terms"]
        t.add_row(str(r["seq"]), str(r["at"])[:19], r["actor"], r["role"] or "-", r["account"], r["action"], old,
                  f"{r['new_budget_h']:.12g}", r["new_period"], why)
    show(t, out, fmt)


@click.command()
@click.option("--by", type=click.Choice(["account", "workflow", "user"]), default="account", show_default=True)
@click.option("--since", type=click.DateTime(), default=None, help="Allocations that ended at or after (UTC).")
@click.option("--until", type=click.DateTime(), default=None, help="Allocations that ended before (UTC).")
@site_option
@json_option
@format_option
@wait_option
def waste(by, since, until, site_path, as_json, fmt):
    """Allocated GPU time that sat idle: pilot allocations' settled time not used by any step
    (of the accounts the caller may read).

    \b
    Examples:
      slurmgov waste --by workflow
      slurmgov waste --by account --since 2026-11-01 --json
    """
    site = _site(site_path)
    rows = _ledger(site).waste(by=by, since=_utc(since), until=_utc(until), accounts=_readable(site))
    if as_json:
        _json(rows)
    else:
        report.waste_table(rows, by, out, fmt)


@click.command()
@click.option("--by", type=click.Choice(["account", "workflow", "step", "user", "gpu_type"]), default="account",
              show_default=True)
@click.option("--since", type=click.DateTime(), default=None, help="Charges that ended at or after (UTC).")
@click.option("--until", type=click.DateTime(), default=None, help="Charges that ended before (UTC).")
@click.option("--format", "fmt", type=click.Choice(["table", "tsv", "csv", "json", "parquet"]), default="table",
              show_default=True, help="tsv: a header line, then one tab-separated line per row, whole values.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file (parquet needs one).")
@site_option
@json_option
@wait_option
def usage(by, since, until, fmt, output, site_path, as_json):
    """Charged GPU time, grouped by account, workflow, step, user or GPU type (of the accounts the
    caller may read: all for admins and operators, else those it manages or Slurm associates it with).

    \b
    Examples:
      slurmgov usage --by workflow --json
      slurmgov usage --by user --since 2026-11-01 --format csv -o november.csv
      slurmgov usage --by gpu_type --format parquet -o usage.parquet
      slurmgov usage --by step --format tsv | cut -f1,4
    """
    import pandas as pd

    site = _site(site_path)
    mine = _readable(site)
    with _busy("reading usage from the ledger"):
        rows = _ledger(site).usage(by=by, since=_utc(since), until=_utc(until), accounts=mine)
    fmt = "json" if as_json else fmt
    if fmt in ("table", "tsv") and output is None:
        report.usage_table(rows, by, out, fmt)
        return
    frame = pd.DataFrame(rows, columns=["key", "charges", "gpu_seconds", "charged_h", "prompt_tokens",
                                        "completion_tokens", "tokens", "gpu_s_per_1k_tokens"]).rename(columns={"key": by})
    if fmt == "parquet":
        if output is None:
            raise click.BadParameter("parquet is binary: give --output FILE", param_hint="--format")
        buf = io.BytesIO()  # built in memory first, so that a missing pyarrow leaves no empty file
        try:
            frame.to_parquet(buf, index=False)
        except ImportError:
            raise click.UsageError("parquet output needs pyarrow: pip install 'slurmgov[parquet]'") from None
        data: str | bytes = buf.getvalue()
    elif fmt == "csv":
        data = frame.to_csv(index=False)
    elif fmt == "tsv":  # the same lines as on stdout
        data = tsv(report.usage_as_table(rows, by))
    else:
        data = json.dumps(rows, indent=2, default=str) if fmt == "json" else frame.to_string(index=False)
    if output:
        report.write_output(output, data)
    else:
        click.echo(data, nl=False)
    if output:
        err.print(f"wrote {len(frame)} rows to {output}")
