"""GPU slot pools: which device ids a step may use, handed out per allocation.

Dask's worker resources count GPUs but do not say *which* ones; a step that runs CUDA needs
``CUDA_VISIBLE_DEVICES``. Workers of the local backend run in this process, so one lock-guarded
pool per allocation is enough. Inside a Slurm allocation the pool starts from the devices
Slurm granted (``SLURM_JOB_GPUS``/``CUDA_VISIBLE_DEVICES``).
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_free: dict[str, list[str]] = {}


def configure(alloc: str, devices: list[str]) -> None:
    with _lock:
        _free[alloc] = list(devices)


def take(alloc: str, n: int) -> list[str]:
    if n == 0:
        return []
    with _lock:
        pool = _free.get(alloc)
        if pool is None:
            pool = _free[alloc] = _from_slurm(alloc)
        if len(pool) < n:
            # Dask's resource accounting should make this impossible; say so loudly if not.
            raise RuntimeError(f"allocation {alloc}: {n} GPU slots asked, {0 if pool is None else len(pool)} free")
        got, _free[alloc] = pool[:n], pool[n:]
        return got


def give(alloc: str, devices: list[str]) -> None:
    if not devices:
        return
    with _lock:
        _free.setdefault(alloc, []).extend(devices)
        _free[alloc].sort(key=lambda d: (len(d), d))


def drop(alloc: str) -> None:
    with _lock:
        _free.pop(alloc, None)


def _from_slurm(alloc: str) -> list[str]:
    """A pilot's worker: the devices Slurm gave this node's task. A step spanning nodes may ask
    for more GPUs than one node has; each node's ranks see that node's devices, so the ids repeat."""
    if os.environ.get("SLURMGOV_PILOT_ALLOC") != alloc:
        return []
    devices = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    nodes = int(os.environ.get("SLURMGOV_PILOT_NODES") or 1)
    return devices * max(1, nodes)
