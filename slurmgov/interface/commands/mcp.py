"""`slurmgov mcp`: serve the intent plane to agents over MCP (stdio, or streamable HTTP)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from slurmgov.errors import SlurmgovError
from slurmgov.interface.commands.common import _ledger, _site, site_option, wait_option
from slurmgov.site import model as site_mod

log = logging.getLogger("slurmgov.mcp")


@click.command("mcp")
@site_option
@click.option("--http", "http", is_flag=True, help="Serve streamable HTTP at http://HOST:PORT/mcp instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="With --http: the address to listen on (another than 127.0.0.1 lets other hosts in).")
@click.option("--port", type=click.IntRange(0, 65535), default=8790, show_default=True,
              help="With --http: the port (0: any free port; the log says which).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --http: where to write the bearer token clients must send, readable by you only "
                   "(default: $SLURMGOV_HOME/mcp-http-token; a new token each start).")
@wait_option
def mcp_cmd(site_path, http, host, port, token_file):
    """Serve slurmgov to AI agents over the Model Context Protocol: budget_status, plan_workflow,
    suggest_cheaper, submit_workflow, run_status, explain_cost and cancel_run, with the site
    file and ledger the CLI uses. It acts as the user who runs it, only for the accounts Slurm
    associates that user with (on a local site, the site file's accounts). Its log is on stderr
    (stdout is the protocol, over stdio).

    \b
    Examples:
      slurmgov mcp                                   # stdio: what an agent host launches
      slurmgov mcp --http --port 8790                # http://127.0.0.1:8790/mcp, with a bearer token
    """
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from slurmgov.interface import mcp_server
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "mcp":
            raise
        raise SlurmgovError("mcp: needs the MCP SDK: pip install 'slurmgov[mcp]'") from None
    from slurmgov.interface.mcp_tools import Desk

    site = _site(site_path)
    ledger = _ledger(site)
    desk = Desk(site, str(site_path or site_mod.default_site_path()), ledger)
    app = mcp_server.build(desk)
    if not http:
        log.info("serving MCP over stdio as user %s, site %s", desk.user, site.site)
        app.run("stdio")
        return
    mcp_server.serve_http(app, host, port, token_file or site_mod.slurmgov_home() / "mcp-http-token")
