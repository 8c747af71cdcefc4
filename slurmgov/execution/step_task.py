"""What runs on a Dask worker for one attempt of one step: a shell command or a Python callable.

Never raises: every failure becomes a StepOutcome with a status and a one-line reason, so the
driver decides about retries and charges every attempt for the GPU time it really used.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from slurmgov.execution import gpu_slots, reaper

TAIL = 4000  # characters of stdout/stderr kept per attempt


@dataclass(frozen=True)
class StepSpec:
    """One step as the executor sees it (plain data, built by the planner's caller)."""

    id: str
    alloc: str
    after: tuple[str, ...]
    gpus: int
    cpus: int
    time_s: int
    retries: int
    run: str | None = None
    call: str | None = None
    params: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    context: str | None = None  # steps sharing a context (KV prefix) prefer one worker


@dataclass(frozen=True)
class StepContext:
    """Handed to a Python callable that asks for a ``step`` keyword."""

    workflow: str
    run_id: str
    step: str
    attempt: int
    alloc: str
    gpu_ids: tuple[str, ...]


@dataclass
class StepOutcome:
    step: str
    attempt: int
    status: str  # "ok" | "failed" | "timeout" | "cancelled"
    started: float
    ended: float
    gpus: int
    gpu_ids: tuple[str, ...] = ()
    output: Any = None
    exit_code: int | None = None
    error: str | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    worker: str = ""

    @property
    def wall_s(self) -> float:
        return self.ended - self.started

    @property
    def gpu_seconds(self) -> float:
        return self.gpus * self.wall_s


def run_step(spec: StepSpec, inputs: dict, attempt: int, workflow: str, run_id: str) -> StepOutcome:
    gpu_ids: list[str] = []
    started = time.time()
    try:
        gpu_ids = gpu_slots.take(spec.alloc, spec.gpus)
        ctx = StepContext(workflow, run_id, spec.id, attempt, spec.alloc, tuple(gpu_ids))
        if spec.run is not None:
            out = _run_shell(spec, spec.run, inputs, ctx)
        elif spec.call is not None:
            out = _run_call(spec, spec.call, inputs, ctx)
        else:  # the jobspec refuses such a step; only a StepSpec built by hand can be one
            out = dict(status="failed", error="the step has neither `run` nor `call`")
    except Exception as exc:  # the step's own failure, recorded, never raised into Dask
        out = dict(status="failed", error=_one_line(exc))
    finally:
        ended = time.time()
        gpu_slots.give(spec.alloc, gpu_ids)
    return StepOutcome(step=spec.id, attempt=attempt, started=started, ended=ended, gpus=spec.gpus,
                       gpu_ids=tuple(gpu_ids), worker=_worker_name(), **out)


def _env(spec: StepSpec, ctx: StepContext, inputs_path: str) -> dict:
    env = dict(os.environ)
    env.update(spec.env)
    env.update(
        SLURMGOV_WORKFLOW=ctx.workflow, SLURMGOV_RUN_ID=ctx.run_id, SLURMGOV_STEP=ctx.step,
        SLURMGOV_ATTEMPT=str(ctx.attempt), SLURMGOV_ALLOC=ctx.alloc, SLURMGOV_INPUTS=inputs_path,
        CUDA_VISIBLE_DEVICES=",".join(dict.fromkeys(ctx.gpu_ids)),  # a multi-node step's ids repeat per node
    )
    return env


def _run_shell(spec: StepSpec, command: str, inputs: dict, ctx: StepContext) -> dict:
    # Inputs travel as a JSON file named by $SLURMGOV_INPUTS: safe for any content, any size.
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix=f"sg-{spec.id}-", delete=False) as fh:
        json.dump(inputs, fh, default=str)
        path = fh.name
    proc = None
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_env(spec, ctx, path), start_new_session=True,
        )
        with _running_lock:
            _running.add(proc)
        reaper.watch(proc.pid, path)  # however this process ends, the step ends with it
        try:
            out, err = proc.communicate(timeout=spec.time_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, like Slurm at the limit
            out, err = proc.communicate()
            return dict(status="timeout", exit_code=proc.returncode, stdout_tail=out[-TAIL:], stderr_tail=err[-TAIL:],
                        error=f"time limit {spec.time_s}s reached")
        finally:
            with _running_lock:
                _running.discard(proc)
            try:  # what the step left behind in its group (a background job) ends with it, as in Slurm
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    finally:
        os.unlink(path)
        if proc is not None:
            reaper.forget(proc.pid, path)
    output: Any = out.strip()  # the step's JSON, parsed, or its text
    try:
        output = json.loads(output) if output else None
    except ValueError:
        pass
    status = "ok" if proc.returncode == 0 else "failed"
    error = None if status == "ok" else f"exit status {proc.returncode}: {_last_line(err) or _last_line(out)}"
    return dict(status=status, exit_code=proc.returncode, output=output, stdout_tail=out[-TAIL:], stderr_tail=err[-TAIL:], error=error)


def resolve_callable(target: str):
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise TypeError(f"{target} is not callable")
    return fn


def _run_call(spec: StepSpec, target: str, inputs: dict, ctx: StepContext) -> dict:
    fn = resolve_callable(target)
    kwargs = dict(spec.params)
    if "step" in inspect.signature(fn).parameters:
        kwargs["step"] = ctx
    try:
        output = fn(inputs, **kwargs)
    except Exception as exc:
        tb = traceback.format_exc()
        return dict(status="failed", exit_code=1, error=_one_line(exc), stderr_tail=tb[-TAIL:])
    return dict(status="ok", exit_code=0, output=output)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _last_line(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().name
    except (ImportError, ValueError):
        return ""


# Shell steps start in their own session; keep them so an interrupted run can kill them all.
_running: set = set()
_running_lock = threading.Lock()


def kill_running() -> int:
    """Kill every shell step still running in this process (Ctrl-C, workflow cancelled)."""
    with _running_lock:
        procs = list(_running)
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return len(procs)
