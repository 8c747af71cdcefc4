"""slurmgov: govern what AI agent workflows cost on Slurm GPU clusters."""

__version__ = "0.2.0"  # the one version source (setup.cfg reads it); see CHANGELOG.md
