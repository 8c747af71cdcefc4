"""What every `slurmgov` command uses: the consoles, the site and ledger, JSON output, shared options."""

from __future__ import annotations

import json
import os
from datetime import timezone
from pathlib import Path

import click
from rich.console import Console

from slurmgov.governance import site as site_mod
from slurmgov.governance.ledger import Ledger
from slurmgov.interface import tables

out = Console()
err = Console(stderr=True)


def _busy(what: str):
    """A spinner on stderr while something may take seconds (silent when stderr is not a terminal)."""
    return err.status(what, spinner="dots")


def _site(path) -> site_mod.Site:
    return site_mod.load(path or site_mod.default_site_path())


def _ledger(site: site_mod.Site) -> Ledger:
    """The site's ledger. Holds whose run stopped renewing their lease (killed, host gone) are
    released first: every command that opens the ledger settles them."""
    ledger = Ledger.open(os.environ.get("SLURMGOV_LEDGER") or site.ledger_url())
    ledger.release_lapsed()
    return ledger


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
conf_dir_option = click.option("--slurm-conf-dir", "conf_dir", required=True,
                               type=click.Path(file_okay=False, exists=True),
                               help="Directory of slurm.conf, where the hooks and their files live.")
