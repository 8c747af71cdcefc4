"""The `slurmgov` subcommands, one module per command group; `slurmgov.interface.cli` registers them."""
