"""The governor: owns the ledger for jobs that the submit hook admitted inside slurmctld.

One pass (``slurmgov sync``; ``slurmgov governor`` repeats it) reads the hooks' journals,
records each admitted job's hold, settles each finished job's real GPU-seconds, and rewrites
the snapshot the hook reads. Every event is applied under its own key, so a pass killed
half-way and run again applies each line exactly once.

Journal lines are applied in batches (``JOURNAL_BATCH`` lines per write transaction), each
with the same result as ``apply`` on its events one by one; a file's cursor moves past a
batch only once that batch is committed.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from slurmgov.errors import InputError, LedgerUnavailable, SlurmgovError
from slurmgov.governance import journal, snapshot
from slurmgov.governance.ledger import (HoldRow, Ledger, charge_conflict, charge_ms, epoch, hold_conflict,
                                        missing_hold, shares_ms)
from slurmgov.governance.site import Site
from slurmgov.governance.slurm_cli import FINAL

SNAPSHOT = "slurmgov_snapshot.txt"
ADMITS = "slurmgov_journal.log"
SETTLES = "slurmgov_settle.log"
REFUSALS = "slurmgov_refusals.log"
# Slurm's final job states -> how the job's hold closes.
CLOSE_STATE = {"COMPLETED": "done", "CANCELLED": "cancelled"}


@dataclass
class SyncReport:
    admitted: int = 0
    settled: int = 0
    problems: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    snapshot_serial: int | None = None
    refused: dict[str, int] = field(default_factory=dict)  # hook refusals since the last pass, by reason


def hold_key(token: str) -> str:
    return f"slurm:{token}"


def _tasks(event: journal.Admit, site: Site) -> int:
    """Array tasks of an admitted job, from its cost (the hook's journal line says how)."""
    types = event.gpu_type.split("+") if event.gpu_type else [None]
    weight = max(site.weight(t) if t else site.weight(None) for t in types)
    unit = event.gpus * event.time_limit_min * 60 * weight
    return max(1, round(event.cost_gpu_s / unit)) if unit > 0 else 1


def apply(ledger: Ledger, site: Site, event) -> None:
    """Apply one journal event to the ledger (idempotent).

    A job's hold remembers its GPU type and array size in ``run_id`` (``token;type;tasks``):
    the settle line from jobcomp has neither, and an array's hold closes with its last task."""
    if isinstance(event, journal.Admit):
        run_id = f"{event.token};{event.gpu_type or '-'};{_tasks(event, site)}"
        ledger.admit(hold_key(event.token), event.account, "sbatch", {"job": event.cost_gpu_s / 3600},
                     user=event.user, run_id=run_id, now=event.ts, enforce=False)
    elif isinstance(event, journal.Settle) and event.token:
        key = hold_key(event.token)
        row, tasks = _settle_charge(site, key, ledger.hold(key).run_id, event)
        ledger.charge(**row)
        finished = {c["charge_key"].split("@")[0] for c in ledger.charges(key) if is_final(c["status"])}
        if len(finished) >= tasks:  # an array's hold closes with its last task
            ledger.close(key, close_state(event.state))


def _settle_charge(site: Site, key: str, run_id: str, event: journal.Settle) -> tuple[dict, int]:
    """The charge (ledger.charge's arguments) for one settle event of the hold ``key`` whose
    run_id is ``run_id``, and how many tasks must finish before that hold closes."""
    _, gpu_type, tasks = run_id.split(";")
    gpu_type = None if gpu_type == "-" else gpu_type.split("+")[0]
    # One charge per run: a requeued job's first run is settled (state PENDING) when it is
    # requeued, and its next run when that ends; the run's start time tells them apart.
    row = dict(charge_key=charge_key(event.job_id, event.start), hold_key=key, step="job", attempt=1,
               gpu_seconds=event.gpu_seconds, weight=site.weight(gpu_type), gpu_type=gpu_type,
               started=event.start or event.end, ended=event.end or time.time(), status=event.state.lower(),
               workflow="sbatch")
    return row, int(tasks)


def is_final(status: str) -> bool:
    """A charge's status is a Slurm state, perhaps with detail: 'CANCELLED by 1234' is final."""
    return (status.split() or [""])[0].upper() in FINAL


def close_state(slurm_state: str) -> str:
    return CLOSE_STATE.get(slurm_state.split()[0], "failed")


def charge_key(job_id: str, start: int) -> str:
    return f"slurm:job:{job_id}@{start}"


RECONCILE_CHUNK = 50_000  # final jobs per write transaction: other writers wait at most one chunk


def reconcile(ledger: Ledger, site: Site, jobs, live_tokens: set[str], now: float | None = None,
              grace_s: float = 600) -> list[str]:
    """Make the ledger agree with Slurm's accounting (sacct is the authority); return the drift found.

    - a finished job whose settle line never came (jobcomp down, line lost) is settled from sacct;
    - a finished job the ledger charged differently is reported (charges are never rewritten);
    - a job whose admit line was lost gets its hold back, from what sacct says it used;
    - a hold whose job Slurm no longer knows (rejected after the hook admitted it) is released
      once it is older than ``grace_s``.

    Jobs are taken in order, as if one by one, but in chunks: each chunk reads the holds and
    charges it needs with a few queries and writes what is missing in one transaction.
    """
    now = time.time() if now is None else now
    drift: list[str] = []
    seen: set[str] = set()
    chunk: list = []
    for job in jobs:
        if not job.token:
            continue
        seen.add(job.token)
        if job.final:
            chunk.append(job)
            if len(chunk) >= RECONCILE_CHUNK:
                _reconcile_chunk(ledger, site, chunk, now, drift)
                chunk = []
    if chunk:
        _reconcile_chunk(ledger, site, chunk, now, drift)
    stale = [key for key, created in ledger.open_holds("slurm:")
             if key[len("slurm:"):] not in seen and key[len("slurm:"):] not in live_tokens and now - created > grace_s]
    ledger.close_holds((key, "cancelled") for key in stale)
    drift.extend(f"hold {key[len('slurm:'):]}: no such job in Slurm after {grace_s:g} s; released" for key in stale)
    return drift


def _reconcile_chunk(ledger: Ledger, site: Site, jobs: list, now: float, drift: list[str]) -> None:
    """One transaction. An error at a job (an account with no budget, a charge key taken by another
    hold) keeps what the jobs before it wrote, as the one-job-at-a-time pass did, then is raised."""
    found, error = ledger.bulk(lambda b: _Chunk(b, site, jobs, now).run())
    drift.extend(found)
    if error is not None:
        raise error


class _Chunk:
    """Plans one chunk of finished jobs against what the ledger holds, then writes the plan."""

    def __init__(self, bulk, site: Site, jobs: list, now: float):
        self.b, self.site, self.jobs, self.now = bulk, site, jobs, now
        self.drift: list[str] = []
        self.new_holds: list[tuple] = []
        self.new_charges: list[dict] = []
        self.settled: dict[str, list[tuple[str, str, str, int]]] = {}  # hold -> (charge key, status, close, tasks)

    def run(self):
        keys = [(hold_key(j.token), charge_key(j.job_id, j.start)) for j in self.jobs]
        self.charges = self.b.charged(ck for _, ck in keys)
        # A job whose charge is recorded on its own hold only needs checking: its hold exists.
        # Only the others can write, so only their holds are read and their accounts locked.
        todo = {i for i, (k, ck) in enumerate(keys) if self.charges.get(ck, ("",))[0] != k}
        self.holds = self.b.holds(keys[i][0] for i in todo)
        if self.b.lock({self.jobs[i].account for i in todo} | {h.account for h in self.holds.values()}):
            # PostgreSQL, READ COMMITTED: re-read under the locks what a writer before us may have added
            self.holds = self.b.holds(keys[i][0] for i in todo)
            self.charges.update(self.b.charged(keys[i][1] for i in todo))
        error = None
        for i, (job, (key, ck)) in enumerate(zip(self.jobs, keys)):
            try:
                if i in todo:
                    self._job(job, key, ck)
                else:
                    self._check(job, ck)
            except SlurmgovError as exc:
                error = exc
                break
        closes = self._closes()  # from the charges recorded before this chunk's
        self.b.admit_many(self.new_holds)
        self.b.charge_many(self.new_charges)
        self.b.close_many(closes)
        return self.drift, error

    def _check(self, job, ck: str) -> None:
        """A job already charged on its hold: report it if sacct disagrees."""
        gpu_s = job.gpus * job.elapsed
        had = self.charges[ck][1]
        if abs(had - gpu_s) > 1:
            self.drift.append(f"job {job.job_id}: ledger charged {had:g} GPU-s, sacct says {gpu_s}")

    def _job(self, job, key: str, ck: str) -> None:
        if key not in self.holds:
            self._recreate_hold(job, key)
        gpu_s = job.gpus * job.elapsed
        had = self.charges.get(ck)
        if had is not None and had[0] != key:
            raise charge_conflict(ck)  # what ledger.charge says when the key is another hold's
        if had is None:
            event = journal.Settle(job.job_id, job.token, job.account, job.gpus, None,
                                   job.start, job.start + job.elapsed if job.start else job.end, job.state)
            row, tasks = _settle_charge(self.site, key, self.holds[key].run_id, event)
            self.new_charges.append(row)
            self.charges[ck] = (key, float(row["gpu_seconds"]))
            self.settled.setdefault(key, []).append((ck, row["status"], close_state(event.state), tasks))
            self.drift.append(f"job {job.job_id}: no settle line; settled from sacct ({gpu_s} GPU-s)")
        elif abs(had[1] - gpu_s) > 1:
            self.drift.append(f"job {job.job_id}: ledger charged {had[1]:g} GPU-s, sacct says {gpu_s}")

    def _recreate_hold(self, job, key: str) -> None:
        self.b.require_account(job.account)
        used_h = job.gpus * job.elapsed * self.site.weight(None) / 3600
        run_id, ts = f"{job.token};-;1", job.start or job.end or self.now
        self.new_holds.append((key, job.account, "sbatch", {"job": used_h}, None, run_id, ts))
        self.holds[key] = HoldRow(key, job.account, "sbatch", None, run_id, "open", ts)
        self.drift.append(f"job {job.job_id}: no admit line for hold {job.token}; hold recreated from sacct")

    def _closes(self) -> list[tuple[str, str]]:
        """Holds whose last task this chunk settled, closed in the state of the job that finished
        them, as the one-job-at-a-time pass closed them."""
        out = []
        recorded = self.b.charge_statuses(self.settled)
        for key, new in self.settled.items():
            finished = {ck.split("@")[0] for ck, status in recorded.get(key, ()) if is_final(status)}
            state = self.holds[key].state
            for ck, status, closing, tasks in new:
                if is_final(status):
                    finished.add(ck.split("@")[0])
                if state == "open" and len(finished) >= tasks:
                    out.append((key, closing))
                    state = closing
        return out


JOURNAL_BATCH = 20_000  # journal lines per write transaction: other writers wait at most one batch
BATCH_ENV = "SLURMGOV_JOURNAL_BATCH"  # overrides JOURNAL_BATCH (0: one event at a time, with apply)


def journal_batch() -> int:
    """Lines per write transaction: $SLURMGOV_JOURNAL_BATCH if set, else JOURNAL_BATCH."""
    raw = os.environ.get(BATCH_ENV)
    if raw is None or not raw.strip():
        return JOURNAL_BATCH
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise InputError(f"{BATCH_ENV}={raw!r}: expected a whole number of lines >= 0 (0: one event at a time)")
    return n


def sync_once(ledger: Ledger, site: Site, conf_dir: str | Path, state_dir: str | Path,
              slurm=None, grace_s: float = 600, batch: int | None = None) -> SyncReport:
    """One pass. ``slurm`` (the ``slurm_cli`` module, or a stand-in) adds reconciliation with sacct.

    ``batch``: journal lines per write transaction (default: ``journal_batch()``); 0 applies each
    event in its own transactions with ``apply``, the reference path."""
    conf_dir = Path(conf_dir)
    batch = journal_batch() if batch is None else batch
    rep = SyncReport()
    for acct, a in site.accounts.items():
        ledger.ensure_account(acct, a.budget_gpu_hours, a.period, **a.terms())
    cursors = journal.Cursors(Path(state_dir) / "governor-cursors.json")
    admit_offset = None
    for name in (ADMITS, SETTLES, REFUSALS):
        path = conf_dir / name
        lines, cursor = cursors.read_new(path)
        step = batch if batch > 0 else max(1, len(lines))
        for i in range(0, len(lines), step):
            part = lines[i:i + step]
            _ingest(ledger, site, path, part, rep, one_by_one=batch <= 0)
            if i + step < len(lines):  # this batch is committed: the next pass starts after it
                cursors.commit(path, {**cursor, "offset": lines[i + step][0]})
        cursors.commit(path, cursor)
        if name == ADMITS:
            admit_offset = cursor.get("offset", 0)
    if slurm is not None:
        rep.drift = reconcile(ledger, site, slurm.sacct_jobs(), slurm.squeue_tokens(), grace_s=grace_s)
    # The hook subtracts every admit line from this offset on: those are not in the ledger yet.
    rep.snapshot_serial = write_snapshot(ledger, site, conf_dir / SNAPSHOT, admit_offset)
    return rep


def _ingest(ledger: Ledger, site: Site, path: Path, lines: list[tuple[int, str]], rep: SyncReport,
            one_by_one: bool = False) -> None:
    """Apply journal lines ((offset, text), in file order) and report them as the one-by-one pass
    did: a bad line or a failed event is a problem ``path@offset`` and is skipped."""
    problems: list[tuple[int, str]] = []
    events: list[tuple[int, object]] = []
    for offset, text in lines:
        try:
            event = journal.parse(text)
        except ValueError as exc:
            problems.append((offset, f"{path}@{offset}: {exc}"))  # reported, never guessed at
            continue
        if isinstance(event, journal.Refuse):
            rep.refused[event.reason] = rep.refused.get(event.reason, 0) + 1
            continue
        events.append((offset, event))
    if one_by_one:
        errors = _apply_one_by_one(ledger, site, [e for _, e in events])
    else:
        errors = apply_batch(ledger, site, [e for _, e in events])
    for i, (offset, event) in enumerate(events):
        if i in errors:
            problems.append((offset, f"{path}@{offset}: {errors[i]}"))
        elif isinstance(event, journal.Admit):
            rep.admitted += 1
        elif event.token:
            rep.settled += 1
    rep.problems.extend(msg for _, msg in sorted(problems, key=lambda p: p[0]))


def _apply_one_by_one(ledger: Ledger, site: Site, events: list) -> dict[int, SlurmgovError]:
    errors = {}
    for i, event in enumerate(events):
        try:
            apply(ledger, site, event)
        except LedgerUnavailable:
            raise  # the database, not this line: stop the pass; the cursor stays, the line is read again
        except SlurmgovError as exc:
            errors[i] = exc
    return errors


def apply_batch(ledger: Ledger, site: Site, events: list) -> dict[int, SlurmgovError]:
    """Apply journal events in one write transaction, as ``apply`` on each in turn would: returns
    {index: error} of the events that failed (and wrote nothing), the others are applied.

    If the batch as a whole fails (the database, or anything the plan did not foresee), it is
    rolled back and its events are applied one by one with ``apply``, which then says which
    event failed, and how, exactly as the one-event pass did."""
    if not events:
        return {}
    try:
        return ledger.bulk(lambda b: _Batch(b, site, events).run())
    except Exception:  # noqa: BLE001 - rolled back; the reference path decides, event by event
        return _apply_one_by_one(ledger, site, events)


class _Held:
    """What a batch knows of one hold while it plans: enough to replay admit, charge and close."""

    __slots__ = ("account", "workflow", "shares", "run_id", "state")

    def __init__(self, account: str, workflow: str, shares: dict[str, int], run_id: str | None, state: str):
        self.account, self.workflow, self.shares, self.run_id, self.state = account, workflow, shares, run_id, state


class _Batch:
    """Plans a batch of journal events against what the ledger holds, in file order, as ``apply``
    would apply them one by one, then writes the plan (holds, then charges, then closes)."""

    def __init__(self, bulk, site: Site, events: list):
        self.b, self.site, self.events = bulk, site, events
        self.new_holds: list[tuple] = []
        self.new_charges: list[dict] = []
        self.closes: list[tuple[str, str]] = []

    def run(self) -> dict[int, SlurmgovError]:
        keys = {hold_key(e.token) for e in self.events if isinstance(e, (journal.Admit, journal.Settle)) and e.token}
        cks = {charge_key(e.job_id, e.start) for e in self.events if isinstance(e, journal.Settle) and e.token}
        accounts = {e.account for e in self.events if isinstance(e, journal.Admit)}
        self._read(keys, cks)
        locked: set[str] = set()
        # PostgreSQL, READ COMMITTED: lock every account involved, then re-read what a writer
        # before us may have added, until no hold read brings a new account (SQLite: locked already).
        while self.b.lock(want := accounts | {h.account for h in self.holds.values()}) and not want <= locked:
            locked |= want
            self._read(keys, cks)
        errors: dict[int, SlurmgovError] = {}
        for i, event in enumerate(self.events):
            try:
                if isinstance(event, journal.Admit):
                    self._admit(event)
                elif isinstance(event, journal.Settle) and event.token:
                    self._settle(event)
            except SlurmgovError as exc:
                errors[i] = exc  # planned nothing for this event
        self.b.admit_many(self.new_holds)
        self.b.charge_many(self.new_charges)
        self.b.close_many(self.closes)
        return errors

    def _read(self, keys: set[str], cks: set[str]) -> None:
        rows = self.b.holds(keys)
        shares = self.b.share_amounts(rows)
        self.holds = {k: _Held(h.account, h.workflow, shares.get(k, {}), h.run_id, h.state) for k, h in rows.items()}
        self.charged = {k: (c.hold_key, c.step, c.attempt, c.amount_ms) for k, c in self.b.charges(cks).items()}
        self.statuses = self.b.charge_statuses(rows)  # hold -> [(charge key, status)], what apply re-reads

    def _admit(self, event: journal.Admit) -> None:
        """ledger.admit(..., enforce=False) as apply calls it."""
        run_id = f"{event.token};{event.gpu_type or '-'};{_tasks(event, self.site)}"
        shares = {"job": event.cost_gpu_s / 3600}
        want, key = shares_ms(shares), hold_key(event.token)
        epoch(event.ts, "now")
        old = self.holds.get(key)
        if old is not None:
            if (old.account, old.workflow, old.shares) != (event.account, "sbatch", want):
                raise hold_conflict(key)
            return  # a replay
        self.b.require_account(event.account)
        self.new_holds.append((key, event.account, "sbatch", shares, event.user, run_id, event.ts))
        self.holds[key] = _Held(event.account, "sbatch", want, run_id, "open")

    def _settle(self, event: journal.Settle) -> None:
        """ledger.hold, ledger.charge, then ledger.close of an array's last task, as apply calls them."""
        key = hold_key(event.token)
        h = self.holds.get(key)
        if h is None:
            raise missing_hold(key)
        row, tasks = _settle_charge(self.site, key, h.run_id, event)
        ck = row["charge_key"]
        sig = (key, row["step"], row["attempt"], charge_ms(ck, row["gpu_seconds"], row["weight"]))
        epoch(row["started"], "started")
        epoch(row["ended"], "ended")
        old = self.charged.get(ck)
        if old is None:
            self.new_charges.append(row)
            self.charged[ck] = sig
            self.statuses.setdefault(key, []).append((ck, row["status"]))
        elif old != sig:
            raise charge_conflict(ck)
        finished = {c.split("@")[0] for c, status in self.statuses.get(key, ()) if is_final(status)}
        if len(finished) >= tasks:  # an array's hold closes with its last task
            state = close_state(event.state)
            if h.state == "open":  # closing again keeps the first state
                self.closes.append((key, state))
                h.state = state


def write_snapshot(ledger: Ledger, site: Site, path: str | Path, journal_offset: int | None = None) -> int:
    path = Path(path)
    try:
        previous = snapshot.read(path).serial
    except (OSError, ValueError, KeyError):
        previous = None
    part = site.partition(None)
    snap = snapshot.Snapshot(
        serial=snapshot.next_serial(previous), written=int(time.time()), max_age_s=site.snapshot_max_age_s,
        fail_policy=site.fail_policy, default_time_min=part.default_time_s // 60,
        max_gpus_per_node=max((n.gpus for n in site.topology.nodes.values()), default=0),
        total_gpus=sum(n.gpus for n in site.topology.nodes.values()), journal_offset=journal_offset,
        default_weight=site.weight(None), weights={t: g.weight for t, g in site.gpu_types.items()},
        available_gpu_s={b.account: b.available_h * 3600 for b in ledger.balances()},
    )
    snapshot.write(path, snap)
    return snap.serial


PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def install_hooks(conf_dir: str | Path) -> list[str]:
    """Copy the Lua hooks next to slurm.conf and create their journals, writable by root only."""
    conf_dir = Path(conf_dir)
    names = []
    for name in ("job_submit.lua", "jobcomp.lua"):
        src = PLUGINS / name
        if not src.exists():
            raise SlurmgovError(f"{src}: missing; install slurmgov from its source tree (pip install -e .)")
        tmp = conf_dir / f".{name}.tmp"
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, conf_dir / name)  # slurmctld reloads on mtime: never let it see half a file
        names.append(name)
    for name in (ADMITS, SETTLES, REFUSALS):
        path = conf_dir / name
        fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o644)
        os.close(fd)
        os.chmod(path, 0o644)
    return names
