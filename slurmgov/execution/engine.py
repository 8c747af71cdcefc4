"""The engine: runs a planned workflow's steps on Dask in dependency order.

It starts each allocation when its first step is ready and stops it when its last step is
done, retries failed attempts as the jobspec says, skips the dependants of a failed step,
and (``on_failure: cancel``) starts nothing new after a failure. Every attempt is reported to
``on_attempt`` as it ends, so the caller can charge the GPU time it really used.

A backend that queues (Slurm) may refuse an allocation (the budget hook) or end it under
running steps (scancel, a node down): the refused allocation's steps fail with the reason; a
lost one is resubmitted up to ``MAX_RESTARTS`` times and its unfinished steps run again there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from distributed import wait

from slurmgov.errors import SlurmgovError
from slurmgov.execution.backend import AllocSpec, alloc_resource
from slurmgov.execution.step_task import StepOutcome, StepSpec, kill_running, run_step

TERMINAL = {"ok", "failed", "skipped", "cancelled"}
MAX_RESTARTS = 2  # new jobs for an allocation Slurm ended under its steps
RESULT_WAIT_S = 10


@dataclass
class StepRecord:
    spec: StepSpec
    status: str = "waiting"  # waiting | queued | running | ok | failed | skipped | cancelled
    attempts: list[StepOutcome] = field(default_factory=list)
    reason: str | None = None
    interrupted: int = 0  # runs cut short by the loss of their allocation (not attempts)

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
    restarts: int = 0
    events: list[str] = field(default_factory=list)
    queued: bool = False  # its backend queues it (Slurm): it holds nothing until its job runs
    ran_from: float | None = None  # ... from then on

    @property
    def held_gpu_s(self) -> float:
        start = self.ran_from if self.queued else self.started
        if start is None:
            return 0.0
        return self.spec.gpus * max(0.0, (self.ended or time.time()) - start)

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
                 on_change: Callable[[Engine], None] | None = None):
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
        self._context_worker: dict[str, str] = {}  # context key -> the worker its steps ran on
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
            for alloc_id in getattr(self.backend, "poll", lambda: [])():
                self._alloc_lost(alloc_id)
            self._note_running()
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
                sid, attempt, _, generation = self._futures.pop(fut)
                rec = self.steps[sid]
                try:
                    # bounded: a result whose worker died before we fetched it is recomputed in Dask
                    outcome = fut.result(timeout=RESULT_WAIT_S)
                except Exception as exc:  # the worker died under the step: count it as a failed attempt
                    now = time.time()
                    outcome = StepOutcome(sid, attempt, "failed", now, now, rec.spec.gpus, error=f"worker lost: {exc}")
                fut.release()
                if outcome.status != "ok" and self._interrupted(rec, generation):
                    continue
                self._finish_attempt(rec, outcome)
            self.on_change(self)

    def _note_running(self) -> None:
        """A queued allocation holds GPUs from when its job runs, not from its submission."""
        started_at = getattr(self.backend, "started_at", None)
        if started_at is None:
            return
        for a in self.allocs.values():
            if a.started is not None and a.ran_from is None:
                a.ran_from = started_at(a.spec.id)

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
                try:
                    self.backend.start(alloc.spec)
                except SlurmgovError as exc:  # refused (the budget hook): its steps cannot run
                    alloc.started = alloc.ended = time.time()
                    alloc.events.append(str(exc))
                    self._fail_alloc(alloc.spec.id, str(exc))
                    continue
                alloc.started = time.time()
                alloc.queued = hasattr(self.backend, "started_at")
            if rec.status == "queued":
                self._submit(rec)
        self.on_change(self)

    def _submit(self, rec: StepRecord) -> None:
        attempt = len(rec.attempts) + 1
        inputs = {d: self.steps[d].output for d in rec.spec.after}
        resources = {alloc_resource(rec.spec.alloc): 1}
        if rec.spec.gpus:
            resources["GPU"] = rec.spec.gpus
        near = self._context_worker.get(rec.spec.context) if rec.spec.context else None
        fut = self.backend.client.submit(
            run_step, rec.spec, inputs, attempt, self.workflow, self.run_id,
            key=f"{rec.spec.id}-{attempt}-{rec.interrupted}-{self.run_id}", resources=resources, pure=False,
            # the worker that already holds this context (its KV prefix), if it is free enough
            workers=[near] if near else None, allow_other_workers=bool(near),
        )
        self._futures[fut] = (rec.spec.id, attempt, time.time(), self.allocs[rec.spec.alloc].restarts)
        rec.status = "running"

    def _finish_attempt(self, rec: StepRecord, outcome: StepOutcome) -> None:
        rec.attempts.append(outcome)
        if rec.spec.context and outcome.worker and outcome.status == "ok":
            self._context_worker.setdefault(rec.spec.context, outcome.worker)
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

    def _interrupted(self, rec: StepRecord, generation: int) -> bool:
        """Did the step fail because Slurm ended its allocation under it? Then it is not the
        step's failure: it runs again in the allocation's new job, and no attempt is counted."""
        poll = getattr(self.backend, "poll", None)
        if poll is None:
            return False
        for alloc_id in poll(force=True):
            self._alloc_lost(alloc_id)
        alloc = self.allocs[rec.spec.alloc]
        if alloc.restarts == generation or rec.status in TERMINAL or self.cancelled:
            return False
        rec.interrupted += 1
        rec.status = "queued"
        alloc.events.append(f"step {rec.spec.id} interrupted by the loss of its job; run again")
        return True

    def _alloc_lost(self, alloc_id: str) -> None:
        """Slurm ended the allocation's job while steps were left: a new job, or fail them."""
        alloc = self.allocs[alloc_id]
        if alloc.ended is not None or self.cancelled:
            return
        if alloc.restarts < MAX_RESTARTS:
            alloc.restarts += 1
            try:
                job = self.backend.restart(alloc_id)
            except SlurmgovError as exc:
                alloc.events.append(f"lost; resubmission refused: {exc}")
                self._fail_alloc(alloc_id, f"allocation {alloc_id} lost and not resubmitted: {exc}")
                return
            # Its running steps stay queued in Dask and run again on the new job's workers.
            alloc.events.append(f"lost under its steps; resubmitted as job {job}")
            return
        alloc.events.append(f"lost {alloc.restarts + 1} times; giving up")
        self._fail_alloc(alloc_id, f"allocation {alloc_id} lost {alloc.restarts + 1} times")

    def _fail_alloc(self, alloc_id: str, reason: str) -> None:
        """Every unfinished step of the allocation fails with ``reason``; dependants are skipped."""
        for fut, (sid, *_) in list(self._futures.items()):
            if self.steps[sid].spec.alloc == alloc_id:
                fut.cancel()
                del self._futures[fut]
        for rec in self.steps.values():
            if rec.spec.alloc == alloc_id and rec.status not in TERMINAL:
                rec.status, rec.reason = "failed", reason
                self._step_done(rec)
        if self.on_failure == "cancel":
            self.cancel(reason)
        self._promote()

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
            for sid, attempt, submitted, _ in self._futures.values():
                rec = self.steps[sid]
                # Charge the interrupted attempt from its submission: an over- rather than an under-count.
                outcome = StepOutcome(sid, attempt, "cancelled", submitted, now, rec.spec.gpus, error="interrupted")
                rec.attempts.append(outcome)
                rec.status, rec.reason = "cancelled", "interrupted while running"
                self.on_attempt(outcome, rec)
            self._futures.clear()
        for alloc_id in self.allocs:
            self._stop_alloc(alloc_id)
