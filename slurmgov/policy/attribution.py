"""Splitting a pilot allocation's settled GPU-seconds across the steps that ran in it.

Pure. The allocation's jobs are charged what Slurm accounted (sacct: GPUs x elapsed); the
steps' own GPU-seconds are metered on the Dask workers. Each step is attributed what it
metered; what is left is the allocation's idle time, reported as waste. Clocks and sacct's
whole seconds can make the steps' sum exceed the charge by a little: then the steps are
scaled down to it and nothing is idle. Either way the parts add up to the charge exactly.
"""

from __future__ import annotations


def split(held_gpu_s: float, metered: dict[str, float]) -> tuple[dict[str, float], float]:
    """(GPU-seconds per step, idle GPU-seconds); their sum is ``held_gpu_s``."""
    busy = sum(metered.values())
    if held_gpu_s <= 0:
        return {k: 0.0 for k in metered}, 0.0
    if busy <= held_gpu_s:
        return dict(metered), held_gpu_s - busy
    scale = held_gpu_s / busy
    parts = {k: v * scale for k, v in metered.items()}
    return parts, 0.0
