"""What every `slurmgov` command uses: the consoles, the site and ledger, JSON output, shared options."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from datetime import timezone
from pathlib import Path

import click
from rich.console import Console

from slurmgov.interface import tables
from slurmgov.ledger.store import DEFAULT_WAIT_S, Ledger
from slurmgov.policy import authz
from slurmgov.site import model as site_mod
from slurmgov.site.names import is_name
from slurmgov.slurm.commands import coordinator_accounts, user_accounts

out = Console()
err = Console(stderr=True)


def _busy(what: str):
    """A spinner on stderr while something may take seconds (silent when stderr is not a terminal)."""
    return err.status(what, spinner="dots")


def _site(path) -> site_mod.Site:
    return site_mod.load(path or site_mod.default_site_path())


_WAIT_KEY = "slurmgov.wait_s"  # where --wait leaves its value, in the click context's meta


def _ledger(site: site_mod.Site) -> Ledger:
    """The site's ledger (or $SLURMGOV_LEDGER's), lapsed leases released. A transaction that waits for another writer says
    so on stderr after a second, and gives up after --wait seconds (LedgerUnavailable: exit 5)."""
    ctx = click.get_current_context(silent=True)
    wait_s = ctx.meta.get(_WAIT_KEY, DEFAULT_WAIT_S) if ctx else DEFAULT_WAIT_S

    def notice(text: str) -> None:
        click.echo(f"slurmgov: {text}; waiting up to {wait_s:g} s (--wait SECONDS or $SLURMGOV_WAIT to change)",
                   err=True)

    ledger = Ledger.open(os.environ.get("SLURMGOV_LEDGER") or site.ledger_url(), wait_s=wait_s, on_wait=notice)
    # Holds whose run stopped renewing their lease (killed, host gone) are released first: every
    # command that opens the ledger settles them.
    ledger.release_lapsed()
    return ledger


def _who(site: site_mod.Site) -> authz.Caller:
    """The caller (its real uid, never $USER) with what Slurm says of it: the accounts it
    coordinates and those it is associated with (a site without Slurm: every account of the
    site file, as the MCP server's). Slurm is not asked about an admin, who may do everything."""
    me = authz.caller()
    if authz.role(site, me) == authz.ADMIN:
        return me
    if site.executor != "slurm":
        return dataclasses.replace(me, associations=frozenset(site.accounts))
    coords = coordinator_accounts(me.name) if site.managers.slurm_coordinators else set()
    return dataclasses.replace(me, coordinates=frozenset(coords), associations=frozenset(user_accounts(me.name)))


def _readable(site: site_mod.Site, account: str | None = None) -> frozenset[str] | None:
    """The accounts the caller may read (None: all); with ``account``, refuse it (exit 6) unless
    it is one of them."""
    if account is not None and not is_name(account):
        raise click.BadParameter(f"{account[:80]!r} is not an account name", param_hint="ACCOUNT")
    who = _who(site)
    if account is not None:
        authz.require(site, "usage.read", account, who=who)
    return authz.visible(site, who)


def _remember_wait(ctx, param, value: float) -> None:
    if math.isnan(value):
        raise click.BadParameter("give a number of seconds (inf: wait as long as it takes)")
    ctx.meta[_WAIT_KEY] = value


def _json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _utc(d):
    """A naive click.DateTime taken as UTC, as a POSIX timestamp (None stays None)."""
    return None if d is None else d.replace(tzinfo=timezone.utc).timestamp()


def pin_home() -> None:
    """Make a set $SLURMGOV_HOME absolute once, from the directory the command started in, so the
    ledger, the run records and every process the command starts (Dask workers, steps, pilots)
    agree on one place."""
    if os.environ.get("SLURMGOV_HOME"):
        os.environ["SLURMGOV_HOME"] = str(site_mod.slurmgov_home())


def _state_dir(site) -> str:
    return str(site_mod.slurmgov_home())


def _placement_log(site) -> Path:
    return Path(_state_dir(site)) / "placement.jsonl"


def _complete_accounts(ctx, param, incomplete):
    """Shell completion: the accounts of the site file (never fails: completion must stay quiet)."""
    try:
        site = site_mod.load(ctx.params.get("site_path") or site_mod.default_site_path())
    except Exception:
        return []
    return [a for a in sorted(site.accounts) if a.startswith(incomplete)]


site_option = click.option("--site", "site_path", type=click.Path(dir_okay=False), default=None,
                           help="Site description (default: $SLURMGOV_SITE or site_configs/local.yaml).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
format_option = click.option("--format", "fmt", type=click.Choice(tables.FORMATS), default="table", show_default=True,
                             help="tsv: a header line, then one tab-separated line per row, whole values.")
wait_option = click.option(
    "--wait", type=click.FloatRange(min=0), default=DEFAULT_WAIT_S, show_default=True, envvar="SLURMGOV_WAIT",
    metavar="SECONDS", expose_value=False, callback=_remember_wait,
    help="How long to wait while another command holds the ledger's lock (said on stderr after a second), "
         "then give up with exit 5 (or $SLURMGOV_WAIT).")
conf_dir_option = click.option("--slurm-conf-dir", "conf_dir", required=True,
                               type=click.Path(file_okay=False, exists=True),
                               help="Directory of slurm.conf, where the hooks and their files live.")
