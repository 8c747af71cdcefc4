"""The `slurmgov` subcommands, one module per command group; `slurmgov.interface.cli` imports each when its command is used."""
