"""`slurmgov`: plan, run and account for agent workflows on Slurm GPU clusters.

The site file defaults to $SLURMGOV_SITE or site_configs/local.yaml (the embedded default:
local Dask, SQLite ledger under $SLURMGOV_HOME).

The root group and the entry point live here; the commands live in `slurmgov.interface.commands`,
one module per group: `run` (plan, run), `runs` (runs, holds), `budget` (budget, audit, waste, usage), `slurm` (sync,
governor, limits, hooks), `topology`, `dashboard`, `mcp` (the MCP server for agents), `api` (JSON over HTTP for portals),
and `common` for what they share.
"""

from __future__ import annotations

import click

from slurmgov import __version__
from slurmgov.interface.commands.api import api_cmd
from slurmgov.interface.commands.budget import audit, budget, usage, waste
from slurmgov.interface.commands.common import pin_home
from slurmgov.interface.commands.dashboard import dashboard_cmd
from slurmgov.interface.commands.mcp import mcp_cmd
from slurmgov.interface.commands.run import plan, run
from slurmgov.interface.commands.runs import holds, runs
from slurmgov.interface.commands.slurm import governor_loop, hooks, limits, sync
from slurmgov.interface.commands.topology import topology
from slurmgov.interface.errors import EXIT_CODES, guarded


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, package_name="slurmgov")
def cli():
    """Govern what agent workflows cost on Slurm GPU clusters.

    \b
    Examples:
      slurmgov plan jobspecs/research-fanout.yaml --site site_configs/demo-cluster.yaml
      slurmgov run jobspecs/research-fanout.yaml
      slurmgov budget show --json
      slurmgov usage --by step
    """
    pin_home()


for _command in (plan, run, runs, holds, budget, audit, waste, usage, sync, governor_loop, dashboard_cmd, limits,
                 topology, hooks, mcp_cmd, api_cmd):
    cli.add_command(_command)


@guarded("slurmgov")
def main(args: list[str] | None = None, **kwargs):
    return cli.main(args, prog_name="slurmgov", **kwargs)


if __name__ == "__main__":
    main()
