"""slurmgov: govern what AI agent workflows cost on Slurm GPU clusters."""

__version__ = "0.1.0"
