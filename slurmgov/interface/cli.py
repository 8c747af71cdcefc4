"""`slurmgov`: plan, run and account for agent workflows on Slurm GPU clusters.

The site file defaults to $SLURMGOV_SITE or site_configs/local.yaml (the embedded default:
local Dask, SQLite ledger under $SLURMGOV_HOME).

The root group and the entry point live here; the commands live in `slurmgov.interface.commands`,
one module per group: `run` (plan, run), `runs` (runs, holds), `budget` (budget, audit, waste, usage), `slurm` (sync,
governor, limits, hooks), `topology`, `dashboard`, `mcp` (the MCP server for agents), `api` (JSON over HTTP for portals),
and `common` for what they share.
"""

from __future__ import annotations

import importlib

import click
from click.shell_completion import CompletionItem

from slurmgov import __version__
from slurmgov.interface.errors import EXIT_CODES, guarded

# Each command: its module in slurmgov.interface.commands, the click object there, and the
# one-line help completion shows beside its name (zsh, fish: a test keeps it equal to the
# command's own). A command's module is imported when the command is looked up, so
# `slurmgov --version` and shell completion of command names (run at every TAB) start without the
# site model, the ledger and their libraries (pydantic, rich, the Slurm parsers): 0.1 s, not
# 0.55-0.95 s (bench/cli_startup.py).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "api": ("api", "api_cmd", "Serve budgets, usage, runs, holds and..."),
    "audit": ("budget", "audit", "Every budget change: who (as which role),..."),
    "budget": ("budget", "budget", "Read and set accounts' GPU-hour budgets."),
    "dashboard": ("dashboard", "dashboard_cmd", "Serve the site-wide page: every account's..."),
    "governor": ("slurm", "governor_loop", "Run the governor: a sync pass every..."),
    "holds": ("runs", "holds", "List open holds: what each still reserves,..."),
    "hooks": ("slurm", "hooks", "Install the Slurm hooks (job_submit.lua,..."),
    "limits": ("slurm", "limits", "Slurm's own limits, kept in step with the..."),
    "mcp": ("mcp", "mcp_cmd", "Serve slurmgov to AI agents over the Model..."),
    "plan": ("run", "plan", "Show how JOBSPEC maps onto allocations,..."),
    "run": ("run", "run", "Plan, price, admit against the budget, run..."),
    "runs": ("runs", "runs", "List workflow runs, most recently written..."),
    "sync": ("slurm", "sync", "One governor pass: ingest the hooks'..."),
    "topology": ("topology", "topology", "The site's shape: nodes, NVLink domains,..."),
    "usage": ("budget", "usage", "Charged GPU time, grouped by account,..."),
    "waste": ("budget", "waste", "Allocated GPU time that sat idle: pilot..."),
}


class LazyGroup(click.Group):
    """The root group: its commands (COMMANDS) are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, attr, _ = where
        command: click.Command = getattr(importlib.import_module(f"slurmgov.interface.commands.{module}"), attr)
        return command

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        """The command names and their one-line help, without importing the commands: completion
        runs at every TAB. Then the root's own options."""
        names = [CompletionItem(name, help=COMMANDS[name][2]) for name in self.list_commands(ctx)
                 if name.startswith(incomplete)]
        return names + click.Command.shell_complete(self, ctx, incomplete)


@click.group(cls=LazyGroup, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
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
    from slurmgov.interface.commands.common import pin_home  # what every command imports anyway

    pin_home()


@guarded("slurmgov")
def main(args: list[str] | None = None, **kwargs):
    return cli.main(args, prog_name="slurmgov", **kwargs)


if __name__ == "__main__":
    main()
