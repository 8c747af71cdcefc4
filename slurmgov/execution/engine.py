"""The engine: runs a planned workflow's steps on Dask in dependency order.

It starts each allocation when its first step is ready and stops it when its last step is
done, retries failed attempts as the jobspec says, skips the dependants of a failed step,
and (``on_failure: cancel``) starts nothing new after a failure. Every attempt is reported to
``on_attempt`` as it ends, so the caller can charge the GPU time it really used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from distributed import wait

from slurmgov.execution.backend import AllocSpec, alloc_resource
from slurmgov.execution.step_task import StepOutcome, StepSpec, kill_running, run_step

TERMINAL = {"ok", "failed", "skipped", "cancelled"}


@dataclass
class StepRecord:
    spec: StepSpec
    status: str = "waiting"  # waiting | queued | running | ok | failed | skipped | cancelled
    attempts: list[StepOutcome] = field(default_factory=list)
    reason: str | None = None

    @property
    def output(self):
        return self.attempts[-1].output if self.attempts and self.status == "ok" else None

    @property
    def gpu_seconds(self) -> float:
        return sum(a.gpu_seconds for a in self.attempts)

    @property
    def wall_s(self) -> float:
        return sum(a.wall_s for a in self.attempts)


@dataclass
class AllocRecord:
    spec: AllocSpec
    started: float | None = None
    ended: float | None = None
    busy_gpu_s: float = 0.0

    @property
    def held_gpu_s(self) -> float:
        if self.started is None:
            return 0.0
        return self.spec.gpus * ((self.ended or time.time()) - self.started)

    @property
    def idle_gpu_s(self) -> float:
        return max(0.0, self.held_gpu_s - self.busy_gpu_s)


@dataclass
class RunResult:
    run_id: str
    status: str  # ok | failed | cancelled
    steps: dict[str, StepRecord]
    allocations: dict[str, AllocRecord]
    started: float
    ended: float


class Engine:
    def __init__(self, backend, workflow: str, run_id: str, steps: list[StepSpec], allocs: list[AllocSpec],
                 on_failure: str = "continue", on_attempt: Callable[[StepOutcome, StepRecord], None] | None = None,
                 on_change: Callable[["Engine"], None] | None = None):
        self.backend = backend
        self.workflow = workflow
        self.run_id = run_id
        self.steps = {s.id: StepRecord(s) for s in steps}
        self.allocs = {a.id: AllocRecord(a) for a in allocs}
        self.on_failure = on_failure
        self.on_attempt = on_attempt or (lambda o, r: None)
        self.on_change = on_change or (lambda e: None)
        self._children: dict[str, list[str]] = {s.id: [] for s in steps}
        for s in steps:
            for d in s.after:
                self._children[d].append(s.id)
        self._left = {a.id: sum(1 for s in steps if s.alloc == a.id) for a in allocs}
        self._futures: dict = {}
        self.cancelled = False

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> RunResult:
        started = time.time()
        try:
            self._loop()
        except BaseException:  # Ctrl-C or a crash: stop what runs, then let the caller settle
            self.cancel("interrupted")
            raise
        finally:
            self._release_all()
        failed = any(r.status == "failed" for r in self.steps.values())
        status = "cancelled" if self.cancelled else ("failed" if failed else "ok")
        return RunResult(self.run_id, status, self.steps, self.allocs, started, time.time())

    def _loop(self) -> None:
        self._promote()
        while True:
            self._launch()
            if not self._futures:
                if all(r.status in TERMINAL for r in self.steps.values()):
                    return
                if not self._startable():
                    raise RuntimeError("no allocation can start: the site is too small for a planned allocation")
                time.sleep(0.05)
                continue
            try:
                done = wait(list(self._futures), timeout=0.5, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                continue
            for fut in done:
                sid, attempt, _ = self._futures.pop(fut)
                try:
                    outcome = fut.result()
                except Exception as exc:  # the worker died under the step: count it as a failed attempt
                    now = time.time()
                    outcome = StepOutcome(sid, attempt, "failed", now, now, self.steps[sid].spec.gpus, error=f"worker lost: {exc}")
                fut.release()
                self._finish_attempt(self.steps[sid], outcome)
            self.on_change(self)

    def _startable(self) -> bool:
        queued = {r.spec.alloc for r in self.steps.values() if r.status == "queued"}
        return any(self.backend.can_start(self.allocs[a].spec) for a in queued) or not queued

    def _promote(self) -> None:
        """waiting -> queued when every dependency succeeded; -> skipped when one did not."""
        changed = True
        while changed:
            changed = False
            for rec in self.steps.values():
                if rec.status != "waiting":
                    continue
                deps = [self.steps[d] for d in rec.spec.after]
                bad = [d for d in deps if d.status in ("failed", "skipped", "cancelled")]
                if bad:
                    rec.status, rec.reason = "skipped", f"dependency {bad[0].spec.id} {bad[0].status}"
                    self._step_done(rec)
                    changed = True
                elif all(d.status == "ok" for d in deps):
                    rec.status = "queued"

    def _launch(self) -> None:
        if self.cancelled:
            return
        for rec in self.steps.values():
            if rec.status != "queued":
                continue
            alloc = self.allocs[rec.spec.alloc]
            if alloc.started is None:
                if not self.backend.can_start(alloc.spec):
                    continue  # like a pending Slurm job: wait for GPUs to free up
                self.backend.start(alloc.spec)
                alloc.started = time.time()
            self._submit(rec)
        self.on_change(self)

    def _submit(self, rec: StepRecord) -> None:
        attempt = len(rec.attempts) + 1
        inputs = {d: self.steps[d].output for d in rec.spec.after}
        resources = {alloc_resource(rec.spec.alloc): 1}
        if rec.spec.gpus:
            resources["GPU"] = rec.spec.gpus
        fut = self.backend.client.submit(
            run_step, rec.spec, inputs, attempt, self.workflow, self.run_id,
            key=f"{rec.spec.id}-{attempt}-{self.run_id}", resources=resources, pure=False,
        )
        self._futures[fut] = (rec.spec.id, attempt, time.time())
        rec.status = "running"

    def _finish_attempt(self, rec: StepRecord, outcome: StepOutcome) -> None:
        rec.attempts.append(outcome)
        self.allocs[rec.spec.alloc].busy_gpu_s += outcome.gpu_seconds
        if outcome.status == "ok":
            rec.status = "ok"
        elif len(rec.attempts) <= rec.spec.retries and not self.cancelled:
            rec.status = "queued"  # retry in the same allocation
        else:
            rec.status, rec.reason = "failed", outcome.error
            if self.on_failure == "cancel":
                self.cancel(f"step {rec.spec.id} failed")
        self.on_attempt(outcome, rec)
        if rec.status in TERMINAL:
            self._step_done(rec)
        self._promote()

    def _step_done(self, rec: StepRecord) -> None:
        a = rec.spec.alloc
        self._left[a] -= 1
        if self._left[a] == 0:
            self._stop_alloc(a)

    def _stop_alloc(self, alloc_id: str) -> None:
        alloc = self.allocs[alloc_id]
        if alloc.started is not None and alloc.ended is None:
            self.backend.stop(alloc_id)
            alloc.ended = time.time()

    def cancel(self, reason: str) -> None:
        """Start nothing more; steps not yet running are cancelled. Running ones finish and are charged."""
        self.cancelled = True
        for rec in self.steps.values():
            if rec.status in ("waiting", "queued"):
                rec.status, rec.reason = "cancelled", reason
                self._step_done(rec)

    def _release_all(self) -> None:
        if self._futures:
            kill_running()
            for fut in list(self._futures):
                fut.cancel()
            now = time.time()
            for sid, attempt, submitted in self._futures.values():
                rec = self.steps[sid]
                # Charge the interrupted attempt from its submission: an over- rather than an under-count.
                outcome = StepOutcome(sid, attempt, "cancelled", submitted, now, rec.spec.gpus, error="interrupted")
                rec.attempts.append(outcome)
                rec.status, rec.reason = "cancelled", "interrupted while running"
                self.on_attempt(outcome, rec)
            self._futures.clear()
        for alloc_id in self.allocs:
            self._stop_alloc(alloc_id)
