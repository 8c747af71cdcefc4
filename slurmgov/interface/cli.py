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

# Each command: (its module in slurmgov.interface.commands, the click object there). A command's
# module is imported when the command is looked up, so `slurmgov --version` and shell completion of
# command names (run at every TAB) start without the site model, the ledger and their libraries
# (pydantic, rich, the Slurm parsers): 0.1 s, not 0.5-0.9 s (bench/cli_startup.py).
COMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("run", "plan"), "run": ("run", "run"), "runs": ("runs", "runs"), "holds": ("runs", "holds"),
    "budget": ("budget", "budget"), "audit": ("budget", "audit"), "waste": ("budget", "waste"),
    "usage": ("budget", "usage"), "sync": ("slurm", "sync"), "governor": ("slurm", "governor_loop"),
    "dashboard": ("dashboard", "dashboard_cmd"), "limits": ("slurm", "limits"), "topology": ("topology", "topology"),
    "hooks": ("slurm", "hooks"), "mcp": ("mcp", "mcp_cmd"), "api": ("api", "api_cmd"),
}


class LazyGroup(click.Group):
    """The root group: its commands (COMMANDS) are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, attr = where
        command: click.Command = getattr(importlib.import_module(f"slurmgov.interface.commands.{module}"), attr)
        return command

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        """The command names, without importing their commands for the help text beside each (zsh and
        fish show it; bash does not): completion runs at every TAB. Then the root's own options."""
        names = [CompletionItem(name) for name in self.list_commands(ctx) if name.startswith(incomplete)]
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
