"""Where allocations come from. The engine asks a backend to start and stop allocations;
each started allocation shows up as Dask workers carrying the resource ``alloc-<id>``, so a
step runs only inside the allocation the planner chose.

``LocalBackend`` (the embedded default) simulates allocations as in-process Dask workers
and, like Slurm, starts one only when the site's simulated GPUs are free.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from distributed import Client, LocalCluster, Worker

from slurmgov.execution import gpu_slots


@dataclass(frozen=True)
class AllocSpec:
    id: str
    gpus: int
    slots: int  # how many steps may run in it at once (worker threads)
    kind: str = "gpu"  # "gpu" or "host"


def alloc_resource(alloc_id: str) -> str:
    return f"alloc-{alloc_id}"


def add_local_worker(cluster, alloc: AllocSpec) -> None:
    """An in-process worker for the allocation (a simulated one, or steps without GPUs that run
    on the submitting host), carrying ``alloc-<id>`` and its GPUs as resources."""
    resources = {alloc_resource(alloc.id): alloc.slots}
    if alloc.gpus:
        resources["GPU"] = alloc.gpus
    cluster.worker_spec[alloc.id] = {
        "cls": Worker, "options": {"nthreads": alloc.slots, "resources": resources, "name": alloc.id},
    }
    cluster.sync(cluster._correct_state)


def remove_local_worker(cluster, alloc_id: str) -> None:
    cluster.worker_spec.pop(alloc_id, None)
    cluster.sync(cluster._correct_state)


class LocalBackend:
    """Allocations as Dask workers in this process; GPU slots simulated by the site file."""

    def __init__(self, total_gpus: int, dashboard_address: str = ":0"):
        self.total_gpus = total_gpus
        self.in_use = 0
        self._specs: dict[str, AllocSpec] = {}
        # Quiet Dask's own chatter: the CLI has its own progress display. The scheduler warns
        # when a stopped allocation held results, but the engine has already collected them.
        for name in ("distributed", "distributed.worker", "distributed.nanny"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("distributed.scheduler").setLevel(logging.ERROR)
        self.cluster = LocalCluster(
            n_workers=0, processes=False, dashboard_address=dashboard_address, silence_logs=logging.WARNING
        )
        self.client = Client(self.cluster)

    @property
    def dashboard_link(self) -> str:
        return self.cluster.dashboard_link

    def can_start(self, alloc: AllocSpec) -> bool:
        return alloc.kind == "host" or self.in_use + alloc.gpus <= self.total_gpus

    def start(self, alloc: AllocSpec) -> None:
        gpu_slots.configure(alloc.id, [str(i) for i in range(alloc.gpus)])
        add_local_worker(self.cluster, alloc)
        self.client.wait_for_workers(len(self.cluster.worker_spec), timeout=30)
        if alloc.kind != "host":
            self.in_use += alloc.gpus
        self._specs[alloc.id] = alloc

    def stop(self, alloc_id: str) -> None:
        alloc = self._specs.pop(alloc_id, None)
        if alloc is None:
            return
        remove_local_worker(self.cluster, alloc_id)
        gpu_slots.drop(alloc_id)
        if alloc.kind != "host":
            self.in_use -= alloc.gpus

    def close(self) -> None:
        for alloc_id in list(self._specs):
            self.stop(alloc_id)
        self.client.close()
        self.cluster.close()
