"""Allocations as Slurm jobs running Dask workers (pilots), the scheduler on the submitting host.

Each planned allocation becomes one ``sbatch`` (so slurmctld's job_submit hook prices and
admits it) built by dask-jobqueue's ``SLURMJob``: the planner's options become the job's
``#SBATCH`` lines, and the job starts one Dask worker per node with ``srun``. Every worker
carries the resource ``alloc-<id>`` (and ``GPU``), so a step runs only in the allocation the
planner chose. Allocations whose steps span nodes (``nodes: 2`` fine-tunes) get one worker on
the job's first node instead; the step's command starts its ranks with ``srun`` itself, with
``SLURM_JOB_NODELIST`` in its environment.

``poll()`` watches the jobs with squeue: when each started, on which nodes, and which ones
Slurm ended under the workflow (scancel, node failure, time limit) so the engine can
resubmit. ``settle()`` asks sacct, the site's authority, what each job used.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# dask_jobqueue (its runner module) replaces the SIGINT handler with sys.exit() when imported:
# Ctrl-C would end `slurmgov run` with status 0 and no cancellation. Keep Python's own.
_sigint = signal.getsignal(signal.SIGINT)
from dask_jobqueue.slurm import SLURMJob  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, _sigint)

from slurmgov.errors import SlurmgovError  # noqa: E402
from slurmgov.execution import gpu_slots  # noqa: E402
from slurmgov.execution.backend import (  # noqa: E402
    AllocSpec,
    add_local_worker,
    alloc_resource,
    remove_local_worker,
)
from slurmgov.slurm import commands as slurm_cli  # noqa: E402

POLL_S = 1.0  # how often squeue is asked about the workflow's jobs
# dask-jobqueue writes its own -n/--cpus-per-task/--mem/-t/-J/-p/-A lines; the planner's win.
_SKIP = ["-n 1", "--cpus-per-task", "--mem", "-t ", "-J ", "-p ", "-A "]


class AllocationRefused(SlurmgovError):
    """sbatch refused the allocation (the budget hook, an invalid request)."""


@dataclass
class SlurmJobInfo:
    """One Slurm job of an allocation, as squeue and then sacct saw it."""

    job_id: str
    alloc: str
    submitted: float
    state: str = "PENDING"
    nodes: list[str] = field(default_factory=list)
    started: float | None = None
    ended: float | None = None
    gpus: int = 0  # allocated, from sacct
    elapsed_s: int = 0  # from sacct
    released: bool = False  # we let it go (its steps are done, or the run is over)

    @property
    def gpu_seconds(self) -> int:
        return self.gpus * self.elapsed_s


class PilotJob(SLURMJob):
    """dask-jobqueue's SLURM job with the planner's #SBATCH lines and one worker per node."""

    def __init__(self, scheduler=None, name=None, *, sbatch_options: list[str], per_node: bool,
                 resources: dict[str, int], nthreads: int, memory_mb: int, alloc: str, **kw):
        resources_arg = ",".join(f"{k}={v}" for k, v in resources.items())
        super().__init__(
            scheduler=scheduler, name=name, cores=nthreads, processes=1, memory=f"{max(memory_mb, 256)}MiB",
            nanny=False, job_directives_skip=_SKIP, job_extra_directives=sbatch_options,
            worker_extra_args=["--resources", resources_arg], python=sys.executable, death_timeout=60,
            job_script_prologue=[
                f"export SLURMGOV_PILOT_ALLOC={shlex.quote(alloc)}",
                # a worker per node owns that node's GPUs; a lone worker speaks for every node
                "export SLURMGOV_PILOT_NODES=" + ("1" if per_node else "$SLURM_JOB_NUM_NODES"),
            ],
            **kw,
        )
        cmd = self._command_template.replace(f"--name {name}", f"--name {name}@$SLURMD_NODENAME")
        if per_node:
            # One worker per node; each srun task sees its own node's GPUs in CUDA_VISIBLE_DEVICES.
            cmd = f"srun --ntasks-per-node=1 --kill-on-bad-exit=0 bash -c {shlex.quote(cmd)}"
        self._command_template = cmd


class SlurmBackend:
    """Pilot allocations on a Slurm cluster; the Dask scheduler runs in this process."""


    def __init__(self, workflow: str, account: str, options: dict[str, list[str]], nodes: dict[str, int],
                 per_node: dict[str, bool], memory_mb: dict[str, int], log_dir: Path,
                 scheduler_host: str | None = None, dashboard_address: str = ":0"):
        self.workflow = workflow
        self.account = account
        self._options = options
        self._nodes = nodes
        self._per_node = per_node
        self._memory = memory_mb
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, list[SlurmJobInfo]] = {}  # alloc id -> its jobs, oldest first
        self._pilots: dict[str, PilotJob] = {}  # job id -> the dask-jobqueue job object
        self._specs: dict[str, AllocSpec] = {}
        self._last_poll = 0.0
        for name in ("distributed", "distributed.worker", "dask_jobqueue"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # A pilot that Slurm kills takes its results with it; the engine handles that, quietly.
        logging.getLogger("distributed.scheduler").setLevel(logging.CRITICAL)
        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
        host = scheduler_host or _contact_host()
        self.cluster = LocalCluster(n_workers=0, processes=False, protocol="tcp", host=host,
                                    dashboard_address=dashboard_address, silence_logs=logging.ERROR)
        self.client = Client(self.cluster)

    @property
    def dashboard_link(self) -> str:
        return self.cluster.dashboard_link

    def can_start(self, alloc: AllocSpec) -> bool:
        return True

    # -- starting and stopping ----------------------------------------------------------------
    def start(self, alloc: AllocSpec) -> str:
        """Submit the allocation's job (through the hook); return its job id. Does not wait for it to run."""
        if alloc.kind == "host":
            return self._start_host(alloc)
        self._specs[alloc.id] = alloc
        attempt = len(self.jobs.get(alloc.id, [])) + 1
        nodes = self._nodes[alloc.id]
        per_node = self._per_node[alloc.id]
        gpus = alloc.gpus // nodes if per_node else alloc.gpus
        slots = max(1, alloc.slots // nodes) if per_node else alloc.slots
        resources = {alloc_resource(alloc.id): slots}
        if gpus:
            resources["GPU"] = gpus
        opts = list(self._options[alloc.id]) + [f"--output={self.log_dir}/{alloc.id}-%j.out"]
        scheduler = self.cluster.scheduler
        assert scheduler is not None  # LocalCluster starts it in __init__
        job = PilotJob(
            scheduler.address, name=f"{alloc.id}.{attempt}", sbatch_options=opts, per_node=per_node,
            resources=resources, nthreads=slots, memory_mb=self._memory[alloc.id], alloc=alloc.id,
        )
        try:
            self.cluster.sync(job.start)
        except RuntimeError as exc:  # sbatch's exit status: the hook's or Slurm's one-line reason
            raise AllocationRefused(f"allocation {alloc.id}: {slurm_cli.sbatch_error(str(exc))}") from None
        job_id = job.job_id
        assert job_id is not None  # start() sets it or raises
        info = SlurmJobInfo(job_id, alloc.id, time.time())
        self.jobs.setdefault(alloc.id, []).append(info)
        self._pilots[job_id] = job
        return job_id

    def _start_host(self, alloc: AllocSpec) -> str:
        """Steps without GPUs run on the submitting host: an in-process worker, no Slurm job."""
        self._specs[alloc.id] = alloc
        add_local_worker(self.cluster, alloc)
        return ""

    def stop(self, alloc_id: str) -> None:
        """The allocation's last step is done: let its workers go so its job ends now (COMPLETED)."""
        alloc = self._specs.pop(alloc_id, None)
        if alloc is None:
            return
        if alloc.kind == "host":
            remove_local_worker(self.cluster, alloc_id)
            return
        addrs = self._workers_of(alloc_id)
        scheduler = self.cluster.scheduler
        assert scheduler is not None  # LocalCluster starts it in __init__
        for addr in addrs:
            # Not retire_workers: it refuses when results held nowhere else would be lost; the
            # engine has collected every result of a finished allocation already.
            self.cluster.sync(scheduler.remove_worker, address=addr,
                              stimulus_id=f"slurmgov-stop-{alloc_id}", expected=True, close=True)
        for info in self.jobs.get(alloc_id, []):
            if not info.released:
                info.released = True
                if not addrs:
                    self._cancel(info.job_id)  # no worker came yet (pending): nothing to finish

    def restart(self, alloc_id: str) -> str:
        """Slurm ended the allocation under running steps: submit a new job for them."""
        alloc = self._specs[alloc_id]
        for info in self.jobs.get(alloc_id, []):
            info.released = True
        gpu_slots.drop(alloc_id)
        return self.start(alloc)

    def _workers_of(self, alloc_id: str) -> list[str]:
        res = alloc_resource(alloc_id)
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        return [a for a, w in info.items() if res in (w.get("resources") or {})]

    def _cancel(self, job_id: str) -> None:
        job = self._pilots.get(job_id)
        if job is not None:
            try:
                self.cluster.sync(job.close)
            except Exception:  # already gone; scancel said so
                pass

    # -- watching ------------------------------------------------------------------------------
    def poll(self, force: bool = False) -> list[str]:
        """Refresh job states (at most once per POLL_S); return the allocations Slurm ended under us."""
        now = time.time()
        if not force and now - self._last_poll < POLL_S:
            return []
        self._last_poll = now
        live = [i for infos in self.jobs.values() for i in infos if i.ended is None]
        if not live:
            return []
        seen = slurm_cli.job_states(j.job_id for j in live)
        lost = []
        for info in live:
            row = seen.get(info.job_id)
            if row is None:  # gone from squeue (purged): sacct will say how it ended
                info.state, info.ended = info.state if info.state in slurm_cli.FINAL else "GONE", now
            else:
                state, nodes, start = row
                info.state = state
                if nodes:
                    info.nodes = nodes
                if start and info.started is None:
                    info.started = start
                if state.split()[0] in slurm_cli.FINAL or state in ("COMPLETING",):
                    info.ended = now
            if info.ended is not None and not info.released and info.alloc in self._specs:
                lost.append(info.alloc)
        return sorted(set(lost))

    def started_at(self, alloc_id: str) -> float | None:
        """When the allocation's first job started running (None while it is pending)."""
        starts = [i.started for i in self.jobs.get(alloc_id, []) if i.started is not None]
        return min(starts) if starts else None

    def settle(self, timeout: float = 60) -> dict[str, list[SlurmJobInfo]]:
        """Wait until sacct has every job's final record (bounded), then fill in GPUs and elapsed."""
        ids = {i.job_id: i for infos in self.jobs.values() for i in infos}
        deadline = time.time() + timeout
        while ids:
            # only this run's jobs: the whole cluster's two days of jobs could be many thousands
            final = {j.job_id: j for j in slurm_cli.sacct_jobs(job_ids=sorted(ids)) if j.job_id in ids and j.final}
            for jid, j in final.items():
                info = ids[jid]
                info.state, info.gpus, info.elapsed_s = j.state, j.gpus, j.elapsed
                info.started, info.ended = (j.start or None), (j.end or info.ended)
            if len(final) == len(ids) or time.time() > deadline:
                break
            time.sleep(0.5)
        return self.jobs

    def close(self) -> None:
        for alloc_id in list(self._specs):
            self.stop(alloc_id)
        # Give retired workers a moment to end their jobs as COMPLETED; then cancel what is left.
        deadline = time.time() + 10
        while time.time() < deadline:
            self.poll(force=True)
            if all(i.ended is not None for infos in self.jobs.values() for i in infos):
                break
            time.sleep(0.3)
        for infos in self.jobs.values():
            for info in infos:
                if info.ended is None:
                    self._cancel(info.job_id)
        self.client.close()
        self.cluster.close()


def _contact_host() -> str:
    """An address of this host that compute nodes can reach (SLURMGOV_SCHEDULER_HOST overrides)."""
    env = os.environ.get("SLURMGOV_SCHEDULER_HOST")
    if env:
        return env
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


