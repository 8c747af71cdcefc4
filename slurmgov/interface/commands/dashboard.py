"""`slurmgov dashboard`: the site-wide page (budgets, workflows, waste, placement)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from slurmgov.errors import SlurmgovError
from slurmgov.interface.commands.common import _ledger, _site, _state_dir, out, site_option, wait_option
from slurmgov.ledger.seed import ensure_budget
from slurmgov.policy import authz


@click.command("dashboard")
@site_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8788, show_default=True, help="0: any free port.")
@wait_option
def dashboard_cmd(site_path, host, port):
    """Serve the site-wide page: every account's budget, burn-down and forecast, recent
    workflows with their cost and idle time, waste by account, placement and free GPU slots.
    For admins and operators (as the API's /site): it shows every account. The address it
    prints carries a token made for this start; the page's data is served to no one without it.

    \b
    Example:
      slurmgov dashboard --site site_configs/demo-cluster.yaml --port 8788
    """
    from slurmgov.interface import site_dashboard

    site = _site(site_path)
    authz.require(site, "usage.read", None)  # the whole site: admins and operators, exit 6 otherwise
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
