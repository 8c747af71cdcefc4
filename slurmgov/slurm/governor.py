"""The governor: owns the ledger for jobs that the submit hook admitted inside slurmctld.

One pass (``slurmgov sync``; ``slurmgov governor`` repeats it) reads the hooks' journals,
records each admitted job's hold, re-prices it when the job is changed, settles each finished
job's real GPU-seconds (a job the hook never held is billed all the same, on ``job-<id>``),
and rewrites the snapshot the hook reads. Every event is applied under its own key, so a pass
killed half-way and run again applies each line exactly once.

Journal lines are applied in batches (``JOURNAL_BATCH`` lines per write transaction), each
with the same result as ``apply`` on its events one by one; a file's cursor moves past a
batch only once that batch is committed. ``modify`` lines are rare: each is applied on its
own, between the batches before and after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import gc
import grp
import itertools
import logging
import operator
import os
import pwd
import shutil
import stat
import time
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

from slurmgov.errors import InputError, LedgerError, LedgerUnavailable, SlurmgovError
from slurmgov.ledger import rules
from slurmgov.ledger.cpu import PREFIX as CPU_PREFIX
from slurmgov.ledger.cpu import cpu_account, cpu_token, is_cpu_account, of_cpu_account
from slurmgov.ledger.store import SIGNATURE_SEP, HoldRow, Ledger
from slurmgov.site.model import Site
from slurmgov.site.names import is_name
from slurmgov.site.shared import shared_path
from slurmgov.slurm import journal, snapshot
from slurmgov.slurm.commands import FINAL, Job, Queued, final_state, job_key
from slurmgov.slurm.gpu_request import HookPartition, HookPrice, PriceParams, hook_price

log = logging.getLogger(__name__)

SNAPSHOT = "slurmgov_snapshot.txt"
ADMITS = "slurmgov_journal.log"
SETTLES = "slurmgov_settle.log"
REFUSALS = "slurmgov_refusals.log"
JOURNALS = (ADMITS, SETTLES, REFUSALS)
JOURNAL_MODE = 0o640  # hold tokens are in them: SlurmUser writes, its group reads, users nothing
RERUN_LOOKBACK = 64  # rerun holds a final settle looks for, back from the run's restart count
# Slurm's final job states -> how the job's hold closes.
CLOSE_STATE = {"COMPLETED": "done", "CANCELLED": "cancelled"}


@dataclass
class SyncReport:
    admitted: int = 0
    settled: int = 0
    modified: int = 0  # priced job changes (modify lines) applied
    problems: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    snapshot_serial: int | None = None
    refused: dict[str, int] = field(default_factory=dict)  # hook refusals since the last pass, by reason
    batch_fallbacks: int = 0  # journal batches that failed whole and were applied event by event
    seeded: list[str] = field(default_factory=list)  # accounts given the site's default_budget this pass


def hold_key(token: str) -> str:
    return f"slurm:{token}"


def settle_token(event: journal.Settle) -> str:
    """The token a settle line settles: the job's, or job-<id> for a job without one."""
    return event.token or job_key(event.job_id)


def base_token(key: str) -> str:
    """The job's token of a hold key: a rerun hold (``<token>@rerun<n>``) and a CPU hold
    (``cpu:<token>``, ledger/cpu.py) belong to its job."""
    return key[len("slurm:"):].split("@")[0].removeprefix(CPU_PREFIX)


def rerun_key(token: str, job_id: str, n: int, array: bool) -> str:
    """The hold of a requeued job's n-th rerun; an array's tasks share a token, so theirs name the task."""
    return hold_key(f"{token}@{job_id}@rerun{n}" if array else f"{token}@rerun{n}")


def _rerun_keys(token: str, event: journal.Settle, array: bool) -> list[str]:
    """The rerun holds a final settle line closes (the restart count says how many there can be)."""
    n = event.restart_cnt
    return [rerun_key(token, event.job_id, m, array) for m in range(max(1, n - RERUN_LOOKBACK + 1), n + 1)]


def run_tasks(run_id: str | None) -> int:
    """Array tasks of a job's hold, from its run_id (``token;type;tasks``)."""
    try:
        return max(1, int((run_id or "").split(";")[2]))
    except (IndexError, ValueError):
        return 1


def hold_memo(key: str, gpu_type: str | None, tasks: int, weight: float | None = None) -> str:
    """A Slurm job's hold remembers what its settle lines lack in ``run_id``:
    ``token;type;tasks`` and, for a job asking for GPU types of different weights, ``;weight``:
    its price per GPU-second as the hook priced it (weighted GPUs / GPUs). Charging such a job
    at one of its types' weights would under-charge it whenever that type is the cheaper one."""
    memo = f"{key};{gpu_type or '-'};{tasks}"
    return memo if weight is None else f"{memo};{weight!r}"


def mixed_weight(gpu_type: str | None, cost_gpu_s: float, gpus: float, minutes: float, tasks: int) -> float | None:
    """The priced weight per GPU of a job asking for several GPU types (``a100+h100``): its
    weighted cost over its GPU-seconds; None for one type (the site's weight of that type is
    exact) or where the line gives nothing to divide by."""
    unit = gpus * minutes * 60 * tasks
    if not gpu_type or "+" not in gpu_type or unit <= 0:
        return None
    return cost_gpu_s / unit


def _usage_hold(site: Site, token: str, account: str, gpu_seconds: float, ts: float, user: str | None = None) -> tuple:
    """A hold (Bulk.admit_many's row) of what a job without one used: priced at the dearest
    weight, as the charge of an untyped job is. ``user``: whose job it was, where known (sacct).
    In a CPU account (``cpu:<account>``): CPU-seconds at the dearest partition's CPU weight."""
    if is_cpu_account(account):
        w = max_cpu_weight(site)
        return (hold_key(token), account, "sbatch", {"job": gpu_seconds * w / 3600}, user, f"{token};-;1;{w!r}", ts)
    return (hold_key(token), account, "sbatch", {"job": gpu_seconds * site.weight(None) / 3600}, user,
            f"{token};-;1", ts)


def max_cpu_weight(site: Site) -> float:
    """The dearest weight per CPU-hour (a job whose partition is not known is charged at it)."""
    return max((p.cpu_weight for p in site.partitions), default=1.0)


def priced_weight(account: str, gpu_type: str | None, cost_s: float, units: float, minutes: float,
                  tasks: int) -> float | None:
    """The weight a hold keeps in its memo: a CPU hold's always (its partition's, which its settle
    line does not name: cost over CPU-seconds), a GPU hold's where it mixes types (mixed_weight)."""
    if is_cpu_account(account):
        unit = units * minutes * 60 * tasks
        return cost_s / unit if unit > 0 else None
    return mixed_weight(gpu_type, cost_s, units, minutes, tasks)


def _tasks(event: journal.Admit, site: Site) -> int:
    """Array tasks of an admitted job: its admit line's own count. A line written before the
    hook wrote it (10 fields) has only its cost, divided here by GPUs x minutes x the dearest
    weight of its types: right for one type, wrong where a job asks for types of different
    weights (the hook adds their weights) or the site's weights changed since."""
    if event.tasks is not None:
        return event.tasks
    types = event.gpu_type.split("+") if event.gpu_type else [None]
    weight = max(site.weight(t) if t else site.weight(None) for t in types)
    unit = event.gpus * event.time_limit_min * 60 * weight
    return max(1, round(event.cost_gpu_s / unit)) if unit > 0 else 1


def _admit_memo(event: journal.Admit, site: Site) -> str:
    tasks = _tasks(event, site)
    return hold_memo(event.token, event.gpu_type, tasks,
                     priced_weight(event.account, event.gpu_type, event.cost_gpu_s, event.gpus, event.time_limit_min,
                                   tasks))


@functools.lru_cache(maxsize=4096)
def user_name(uid: str | None) -> str | None:
    """The user a journal line's uid is: its passwd name (what ``slurmgov run`` records as the
    user, and what a per-user cap names), else the uid as written."""
    if uid is None or not (uid.isascii() and uid.isdigit()):
        return uid
    try:
        return pwd.getpwuid(int(uid)).pw_name
    except (KeyError, OverflowError):
        return uid


def user_uid(name: str) -> int | None:
    """The uid the hook sees for the ledger's user ``name`` (a name, or a uid the host does not know)."""
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return int(name) if name.isascii() and name.isdigit() else None


def cap_uid(user: str) -> int:
    """The uid a cap on ``user`` is enforced under by the submit hook, which knows a job's owner
    by uid; InputError where this host has none (a typo, a user missing from passwd): that cap
    would be one nobody enforces."""
    uid = user_uid(user)
    if uid is None:
        raise InputError(f"user-cap: user {user!r} has no uid on this host (no passwd entry): the submit hook "
                         f"could not enforce a cap on it; give a user name or uid this host knows")
    return uid


DEFAULT_REASON = "default budget (site file default_budget): account {where} without a budget in the ledger"


def seed_defaults(ledger: Ledger, site: Site, accounts, where: str) -> list[str]:
    """Give each of ``accounts`` that has no budget in the ledger the site's ``default_budget``
    (nothing without one), audited as a seed by slurmgov; the accounts seeded."""
    d = site.default_budget
    if d is None:
        return []
    seeded = []
    for account in sorted(set(accounts)):
        # (a name the site file could not hold, or the hook's snapshot could not carry, gets nothing)
        if is_name(account) and account not in site.accounts and ledger.ensure_account(
                account, d.budget_gpu_hours, d.period, actor="slurmgov",
                reason=DEFAULT_REASON.format(where=where), **d.terms()):
            log.info("account %s: seeded the default budget of %g GPU-h (%s)", account, d.budget_gpu_hours, where)
            seeded.append(account)
    return seeded


def apply(ledger: Ledger, site: Site, event) -> None:
    """Apply one journal event to the ledger (idempotent).

    A job's hold remembers its GPU type and array size in ``run_id`` (``token;type;tasks``):
    the settle line from jobcomp has neither, and an array's hold closes with its last task."""
    if isinstance(event, journal.Admit):
        run_id = _admit_memo(event, site)
        ledger.admit(hold_key(event.token), event.account, "sbatch", {"job": event.cost_gpu_s / 3600},
                     user=user_name(event.user), run_id=run_id, now=event.ts, enforce=False)
    elif isinstance(event, journal.Modify):
        apply_modify(ledger, site, event)
    elif isinstance(event, journal.Settle):
        _apply_settle(ledger, site, event)


def _apply_settle(ledger: Ledger, site: Site, event: journal.Settle) -> None:
    token = settle_token(event)
    key = hold_key(token)
    h = ledger.find_hold(key)
    if h is None:
        if event.token:
            raise rules.missing_hold(key)
        if not event.gpus:
            return  # never held, never ran on a GPU: nothing to bill
        key, account, workflow, shares, user, run_id, ts = _usage_hold(site, token, event.account, event.gpu_seconds,
                                                                       event.start or event.end or time.time())
        h = ledger.admit(key, account, workflow, shares, user=user, run_id=run_id, now=ts, enforce=False)
    row, tasks = _settle_charge(site, key, h.run_id, event)
    had = ledger.charges(key)
    if not is_final(event.state) and any(c["charge_key"] == row["charge_key"] for c in had):
        return  # requeue_echo: Slurm reports the requeue of a run it already settled
    ledger.charge(**row)
    finished = {c["charge_key"].split("@")[0] for c in [*had, row] if is_final(c["status"])}
    if len(finished) >= tasks or event.array_rest:  # an array's hold closes with its last task
        ledger.close(key, close_state(event.state))
    if is_final(event.state):  # this run is the job's last: its rerun holds go
        for rkey in _rerun_keys(token, event, tasks > 1):
            r = ledger.find_hold(rkey)
            if r is not None and r.state == "open":
                ledger.close(rkey, close_state(event.state))


def apply_modify(ledger: Ledger, site: Site, event: journal.Modify) -> None:
    """A priced change to a job: its hold grows or shrinks by new - old cost and moves to the
    job's account, in one transaction (created with the new cost if the job had none). An
    operator's change past the budget is audited. Idempotent by the change's mod_id."""
    key = hold_key(event.key)
    h = ledger.find_hold(key)
    # the settle line has neither type nor array size: the hold keeps the latest type and the most tasks
    tasks = max(event.tasks, run_tasks(h.run_id) if h else 1)
    run_id = hold_memo(event.key, event.gpu_type, tasks,
                       priced_weight(event.account, event.gpu_type, event.new_cost_gpu_s, event.gpus,
                                     event.time_limit_min, event.tasks))
    create = {"workflow": "sbatch", "shares": {"job": event.new_cost_gpu_s / 3600}, "user": user_name(event.user),
              "run_id": run_id, "now": event.ts}
    ledger.reprice(key, event.mod_id, event.account, (event.new_cost_gpu_s - event.old_cost_gpu_s) / 3600,
                   actor=f"uid {event.modify_uid}", override=event.override, reason=_override_reason(event),
                   run_id=run_id, create=create)


def _override_reason(event: journal.Modify) -> str:
    unit = "CPU-h" if is_cpu_account(event.account) else "GPU-h"
    return (f"job {event.job_id} (owner uid {event.user}) changed by uid {event.modify_uid} past the budget: "
            f"{event.old_cost_gpu_s / 3600:.2f} {unit} on {event.old_account} -> "
            f"{event.new_cost_gpu_s / 3600:.2f} {unit} on {event.account} (hold {event.key}, change {event.mod_id})")


# requeue_echo: `scontrol requeue` of a job that already ended makes jobcomp write that run again,
# as PENDING and ending at the requeue: its charge key (job id @ start) is the run's own, already
# charged. Only a run that had no final line yet (requeued while running) is charged by it.


def _settle_charge(site: Site, key: str, run_id: str | None, event: journal.Settle) -> tuple[dict, int]:
    """The charge (ledger.charge's arguments) for one settle event of the hold ``key`` whose
    run_id is ``run_id``, and how many tasks must finish before that hold closes."""
    parts = (run_id or "").split(";")
    if len(parts) not in (3, 4):  # the governor's holds all have one; a hold another tool made may not
        raise LedgerError(f"hold {key} has run_id {run_id!r}, not a Slurm job's token;type;tasks")
    type_field, tasks = parts[1], parts[2]
    gpu_type = None if type_field == "-" else type_field
    if len(parts) == 4:  # several types: the weight per GPU the hook priced
        weight = float(parts[3])
    elif gpu_type and "+" in gpu_type:  # several, held before their weight was kept: the dearest, never less than used
        weight = max(site.weight(t) for t in gpu_type.split("+"))
    else:
        weight = site.weight(gpu_type)
    # One charge per run: a requeued job's first run is settled (state PENDING) when it is
    # requeued, and its next run when that ends; the run's start time tells them apart.
    row = dict(charge_key=charge_key(event.job_id, event.start), hold_key=key, step="job", attempt=1,
               gpu_seconds=event.gpu_seconds, weight=weight, gpu_type=gpu_type,
               started=event.start or event.end, ended=event.end or time.time(), status=event.state.lower(),
               workflow="sbatch")
    return row, int(tasks)


@functools.lru_cache(maxsize=1024)  # a few states (and uids cancelling), checked for every charge of a pass
def is_final(status: str) -> bool:
    """A charge's status is a Slurm state, perhaps with detail: 'CANCELLED by 1234' is final."""
    return (status.split() or [""])[0].upper() in FINAL


def close_state(slurm_state: str) -> str:
    return CLOSE_STATE.get(slurm_state.split()[0], "failed")


def charge_key(job_id: str, start: int) -> str:
    return f"slurm:job:{job_id}@{start}"


# rows the sieve kept (most of them write) per write transaction: other writers wait at most one
# chunk (~1-2 s here; before the sieve a chunk was 200,000 final rows, ~15,000 of them writing)
RECONCILE_CHUNK = 20_000


def reconcile(ledger: Ledger, site: Site, jobs, live_tokens, now: float | None = None,
              grace_s: float = 600, partitions=None) -> list[str]:
    """Make the ledger agree with Slurm's accounting (sacct is the authority); return the drift found.

    ``jobs``: sacct's rows; ``live_tokens``: what squeue lists, as slurm_cli.Queued (or bare
    tokens, taken as live jobs never requeued).

    - a finished job whose settle line never came (jobcomp down, line lost) is settled from sacct,
      a job without a token too (on ``job-<id>``) if it had GPUs: every GPU-second is billed;
    - a finished job the ledger charged differently is reported (charges are never rewritten);
    - a job whose admit line was lost gets its hold back, from what sacct says it used;
    - a requeued job that is back in the queue is held again for its new run (``@rerun<n>``);
    - every other queued job is held for its request as squeue shows it (``reprice_live``): a change
      Slurm rejected after the hook priced it is undone, a job the hook never held is held;
    - the holds of a job whose every sacct row has ended, with nothing of it left in squeue, are
      released (a cancelled pending array whose jobcomp line was lost, the rerun holds);
    - a hold whose job Slurm no longer knows (rejected after the hook admitted it) is released
      once it is older than ``grace_s``.

    Jobs are taken in order, as if one by one, but in chunks: each chunk reads the holds and
    charges it needs with a few queries and writes what is missing in one transaction. Rows whose
    charge the ledger holds as sacct says (most of them) are sieved out before, by set lookups
    against the signatures of the charges in their keys' range (``_to_check``).
    """
    with _no_cycle_collection():
        return _reconcile(ledger, site, jobs, live_tokens, now, grace_s, partitions)


@contextlib.contextmanager
def _no_cycle_collection():
    """Pause Python's cycle collector: a pass allocates millions of acyclic rows and keys beside
    a million sacct rows, and the collector walked them again and again (about 1.1 s of a
    1,000,000-job pass). Reference counting still frees everything; the collector runs again after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _reconcile(ledger: Ledger, site: Site, jobs, live_tokens, now: float | None, grace_s: float,
               partitions) -> list[str]:
    now = time.time() if now is None else now
    jobs = list(jobs)
    queued = [Queued("", q, "RUNNING") if isinstance(q, str) else q for q in live_tokens]
    drift: list[str] = []
    unbilled: dict[str, set[str]] = {}  # account without a budget -> its jobs without a hold, unbilled
    seen = _seen(jobs)
    cpu_budgeted = {of_cpu_account(a) for a in ledger.account_names() if is_cpu_account(a)}
    todo = _to_check(ledger, _rows(jobs, cpu_budgeted))
    for i in range(0, len(todo), RECONCILE_CHUNK):
        chunk = todo[i:i + RECONCILE_CHUNK]
        rows = [(charge_key(j.job_id, j.start), hold_key(j.token or job_key(j.job_id)), j.gpus * j.elapsed)
                for j in chunk]
        _reconcile_chunk(ledger, site, chunk, rows, now, drift, unbilled)
    drift.extend(f"account {a} has no budget in the ledger: {len(ids)} GPU job(s) without a hold left unbilled"
                 for a, ids in sorted(unbilled.items()))
    rehold(ledger, queued, now)
    drift.extend(reprice_live(ledger, price_params(site), site_partitions(site) if partitions is None else partitions,
                              queued, now))
    drift.extend(release_ended(ledger, jobs, seen, queued, now, grace_s))
    return drift


def _seen(jobs: list[Job]) -> set[str]:
    """Every hold key sacct's rows name: a row's token, or without one its job-<id> keys."""
    tokens = list(map(attrgetter("token"), jobs))
    seen = set(tokens)
    seen.difference_update((None, ""))
    for job in itertools.compress(jobs, map(operator.not_, tokens)):
        seen.update(job.keys)
    return seen


def _rows(jobs: list[Job], cpu_budgeted: set[str]) -> list[Job]:
    """The rows reconcile settles: each sacct row, and after a row of an account with a CPU
    budget its CPUs as a row of that budget (cpu_job)."""
    if not cpu_budgeted:
        return jobs
    out: list[Job] = []
    for job in jobs:
        out.append(job)
        if job.cpus and job.account in cpu_budgeted and job.final:
            out.append(cpu_job(job))
    return out


SIEVE_READ_RATIO = 2  # read the charges of a key range for the sieve if there are at most this many per row


def signatures(rows: list[Job]) -> list[str]:
    """Each row's store.signature(its charge key, its hold key, sacct's GPU-seconds): one f-string
    per row, not three calls (a million rows)."""
    sep = SIGNATURE_SEP
    return [f"slurm:job:{j.job_id}@{j.start}{sep}slurm:{j.token or job_key(j.job_id)}{sep}{j.gpus * j.elapsed}"
            for j in rows]


def _to_check(ledger: Ledger, rows: list[Job]) -> list[Job]:
    """The final rows, in order, that a chunk must check against the ledger (a GPU row, or any
    row with a token): all but those whose charge is recorded on their hold as sacct says.

    Most rows were settled from the journals, exactly as sacct has them: their signatures
    (``signatures``) are sieved out by set lookups against
    what the ledger holds in their charge keys' range. What the sieve keeps is checked exactly,
    by the database, with the ±1 GPU-second tolerance; a range holding far more charges than
    there are rows is not read, and every row is checked that way."""
    if not rows:
        return rows
    sigs = signatures(rows)
    low, high = min(sigs).split(SIGNATURE_SEP, 1)[0], max(sigs).split(SIGNATURE_SEP, 1)[0]
    recorded = ledger.charge_signatures(low, high, SIEVE_READ_RATIO * len(rows))
    if recorded is not None:
        rows = list(itertools.compress(rows, map(operator.not_, map(recorded.__contains__, sigs))))
    del sigs, recorded
    final = {state: final_state(state) for state in set(map(attrgetter("state"), rows))}
    return [j for j in rows if final[j.state] and (j.token or j.gpus)]


def reprice_live(ledger: Ledger, params: PriceParams, partitions, queued: list[Queued], now: float) -> list[str]:
    """Hold each queued job for what its request, as squeue shows it now, prices at; return the drift.

    The hook prices a change before Slurm has checked it, and Slurm may still reject it (a node
    count it finds invalid, an account the user is not associated with): the modify line then
    says more, or less, than the job asks for. Slurm's queue is the authority, as sacct is for
    usage: a job's hold moves to the job's account and to the hook's price of its request, and a
    GPU job the hook never held (submitted before the hooks) is held from here on. Arrays and
    requeued jobs are held per task and per run by their own rules and are left alone."""
    drift = []
    for q in queued:
        if not q.live or q.view is None or q.restart_cnt or q.array_job_id:
            continue
        p = hook_price(q.view, params, partitions)
        if not isinstance(p, HookPrice):
            continue  # the hook would refuse it now (no time limit anywhere): keep what it was admitted at
        want_h = p.cost / 3600 if p.any_gpu else 0.0
        key = hold_key(q.key)
        h = ledger.find_hold(key)
        try:
            if h is None:
                if q.token or want_h <= 0:
                    continue  # its admit line comes with the next pass; or nothing to hold
                weight = p.weighted / p.gpus if "+" in p.types and p.gpus else None
                ledger.admit(key, q.account, "sbatch", {"job": want_h}, run_id=hold_memo(q.key, p.types, 1, weight),
                             now=now, enforce=False)
                drift.append(f"job {q.job_id}: a GPU job without a hold; held {want_h:.2f} GPU-h on {q.account}")
            elif h.state == "open" and (abs(h.remaining_h - want_h) > 1e-6 or h.account != q.account):
                ledger.reprice(key, f"live-{q.job_id}-{int(now * 1000)}", q.account, want_h - h.remaining_h,
                               actor="slurmgov", reason=f"job {q.job_id} as Slurm shows it")
                drift.append(f"job {q.job_id}: held {h.remaining_h:.2f} GPU-h on {h.account}, its request in Slurm "
                             f"prices {want_h:.2f} GPU-h on {q.account}; re-priced")
        except InputError as exc:  # an account the ledger has no budget for
            drift.append(f"job {q.job_id}: {exc}")
    return drift


def price_params(site: Site) -> PriceParams:
    """What the snapshot tells the hook to price with (write_snapshot), and what the governor prices with."""
    nodes = site.topology.nodes
    per_part = {}
    per_part_cpus = {}
    cpu_weight = {p.name: p.cpu_weight for p in site.partitions}
    for name, members in site.topology.partitions.items():
        mine = [nodes[n] for n in members if n in nodes]
        types = {n.gpu_type for n in mine if n.gpus}
        per_part[name] = (max((n.gpus for n in mine), default=0), types.pop() if len(types) == 1 else None)
        per_part_cpus[name] = (max((n.cpus for n in mine), default=0), cpu_weight.get(name, 1.0))
    return PriceParams(
        weights={t: g.weight for t, g in site.gpu_types.items()}, default_weight=site.weight(None),
        default_time_min=site.partition(None).default_time_s // 60,
        max_gpus_per_node=max((n.gpus for n in nodes.values()), default=0),
        total_gpus=sum(n.gpus for n in nodes.values()), partition_gpus=per_part,
        partition_cpus=per_part_cpus, max_cpus_per_node=max((n.cpus for n in nodes.values()), default=0))


def site_partitions(site: Site) -> list[HookPartition]:
    """The site file's partitions as the hook's part_list shows them (when Slurm is not asked): a
    DefaultTime only where the file gives one; the first is the default when none is marked, as
    the planner takes it."""
    marked = any(p.default for p in site.partitions)
    return [HookPartition(p.name,
                          default_time=-(-p.default_time_s // 60) if "default_time_s" in p.model_fields_set else None,
                          max_time=-(-p.max_time_s // 60) if p.max_time_s else None,
                          default=p.default or (not marked and i == 0))
            for i, p in enumerate(site.partitions)]


def rehold(ledger: Ledger, queued: list[Queued], now: float) -> list[str]:
    """Hold a requeued job again for its next run: ``<token>@rerun<n>`` for the price of one
    run (its hold's amount, per task for an array), once; an earlier rerun hold of it is over.
    Returns the rerun holds created. Requeues are rare: one ledger call at a time."""
    made = []
    for q in queued:
        if not q.live or q.restart_cnt < 1:
            continue
        base = ledger.find_hold(hold_key(q.key))
        if base is None:
            continue  # never held: its runs are billed when they settle
        tasks = run_tasks(base.run_id)
        key = rerun_key(q.key, q.job_id, q.restart_cnt, tasks > 1)
        if ledger.find_hold(key) is None:
            memo = (base.run_id or "").split(";")  # the rerun's type (and weight) are the job's
            gpu_type = memo[1] if len(memo) > 1 else "-"
            ledger.admit(key, base.account, "sbatch", {"job": base.amount_h / tasks}, user=base.user,
                         run_id=hold_memo(q.key, gpu_type, 1, float(memo[3]) if len(memo) == 4 else None),
                         now=now, enforce=False)
            made.append(key)
        for m in range(max(1, q.restart_cnt - RERUN_LOOKBACK + 1), q.restart_cnt):
            older = ledger.find_hold(rerun_key(q.key, q.job_id, m, tasks > 1))
            if older is not None and older.state == "open":
                ledger.close(older.hold_key, "done")
    return made


def _ended(jobs: list[Job], wanted: set[str]) -> dict[str, str]:
    """Token -> how its holds close, for the tokens in ``wanted`` whose every job has ended by
    sacct (a requeued job by its latest run)."""
    runs: dict[str, dict[str, Job]] = {}
    for job in jobs:
        if (token := job.token) and token not in wanted:
            continue  # most rows: a token not asked about (no key tuple built for it)
        for key in (token,) if token else job.keys:
            if key in wanted:
                mine = runs.setdefault(key, {})
                prev = mine.get(job.job_id)
                if prev is None or (job.start, job.end) >= (prev.start, prev.end):
                    mine[job.job_id] = job
    out = {}
    for key, mine in runs.items():
        if all(j.final for j in mine.values()):
            out[key] = close_state(max(mine.values(), key=lambda j: (j.end, j.start)).state)
    return out


def release_ended(ledger: Ledger, jobs: list, seen: set[str], queued: list[Queued], now: float,
                  grace_s: float) -> list[str]:
    """Close the open holds of jobs that have ended (sacct: every row final; squeue: nothing
    live) and of jobs Slurm does not know after ``grace_s``; say what was released."""
    live = {k for q in queued if q.live for k in q.keys}
    known = {k: q.state for q in queued for k in q.keys}
    held = [(key, created, base_token(key)) for key, created in ledger.open_holds("slurm:")]
    ended = _ended(jobs, {tok for _, _, tok in held if tok in seen and tok not in live})
    closing, drift = [], []
    for key, created, tok in held:
        if tok in live:
            continue
        if tok in ended:
            closing.append((key, ended[tok]))
            drift.append(f"hold {key[len('slurm:'):]}: its jobs have all ended in Slurm; released")
        elif tok in known and tok not in seen:
            # squeue still shows it, ended; sacct has no row of it (an array cancelled while
            # pending never started, so sacct's time window misses it)
            closing.append((key, close_state(known[tok])))
            drift.append(f"hold {key[len('slurm:'):]}: its jobs have all ended in Slurm; released")
        elif tok not in seen and tok not in known and now - created > grace_s:
            closing.append((key, "cancelled"))
            drift.append(f"hold {key[len('slurm:'):]}: no such job in Slurm after {grace_s:g} s; released")
    ledger.close_holds(closing)
    return drift


def cpu_job(job: Job) -> Job:
    """A sacct row's CPUs as a row of the CPU budget's ledger account (ledger/cpu.py): the same
    charge key and hold the settle line's CPU event has (job id ``cpu:<id>``, token ``cpu:<token>``)."""
    return dataclasses.replace(job, job_id=cpu_token(job.job_id), account=cpu_account(job.account),
                               token=cpu_token(job.token) if job.token else None, gpus=job.cpus, cpus=0,
                               array_job_id=cpu_token(job.array_job_id) if job.array_job_id else None)


def sacct_settle(job) -> journal.Settle:
    """The settle line a finished sacct row stands for (its run's end: start + elapsed)."""
    return journal.Settle(job.job_id, job.token, job.account, job.gpus, None, job.start,
                          job.start + job.elapsed if job.start else job.end, job.state)


def _reconcile_chunk(ledger: Ledger, site: Site, jobs: list, rows: list[tuple[str, str, int]], now: float,
                     drift: list[str], unbilled: dict[str, set[str]]) -> None:
    """One transaction. An error at a job (an account with no budget, a charge key taken by another
    hold) keeps what the jobs before it wrote, as the one-job-at-a-time pass did, then is raised."""
    found, missed, error = ledger.bulk(lambda b: _Chunk(b, site, jobs, rows, now).run())
    drift.extend(found)
    for account, ids in missed.items():
        unbilled.setdefault(account, set()).update(ids)
    if error is not None:
        raise error


class _Chunk:
    """Plans one chunk of finished jobs against what the ledger holds, then writes the plan."""

    def __init__(self, bulk, site: Site, jobs: list, rows: list[tuple[str, str, int]], now: float):
        """``rows``: each job's (charge key, hold key, sacct's GPU-seconds), as reconcile made them."""
        self.b, self.site, self.jobs, self.rows, self.now = bulk, site, jobs, rows, now
        self.drift: list[str] = []
        self.new_holds: list[tuple] = []
        self.new_charges: list[dict] = []
        self.settled: dict[str, list[tuple[str, str, str, int]]] = {}  # hold -> (charge key, status, close, tasks)
        self.unbilled: dict[str, set[str]] = {}

    def run(self):
        rows = self.rows
        # Most jobs were charged on their own hold by the journals, as sacct says: the database
        # compares those and returns only the others. Only jobs whose charge is missing or on
        # another hold can write, so only their holds are read and their accounts locked.
        off = self.b.unmatched_charges(rows)
        todo = sorted(i for i, (hk, _) in off.items() if hk != rows[i][1])
        self.charges = {rows[i][0]: (hk, s) for i, (hk, s) in off.items() if hk is not None}
        self.holds = self.b.holds(rows[i][1] for i in todo)
        if self.b.lock({self.jobs[i].account for i in todo} | {h.account for h in self.holds.values()}):
            # PostgreSQL, READ COMMITTED: re-read under the locks what a writer before us may have added
            self.holds = self.b.holds(rows[i][1] for i in todo)
            self.charges.update(self.b.charged(rows[i][0] for i in todo))
        error, writes = None, set(todo)
        for i in sorted(off):
            job, (ck, key, gpu_s) = self.jobs[i], rows[i]
            try:
                if i in writes:
                    self._job(job, key, ck)
                else:  # charged on its own hold, differently
                    self.drift.append(f"job {job.job_id}: ledger charged {off[i][1]:g} GPU-s, sacct says {gpu_s}")
            except SlurmgovError as exc:
                error = exc
                break
        closes = self._closes()  # from the charges recorded before this chunk's
        self.b.admit_many(self.new_holds)
        # Closing before charging ends where charging first does (a hold's close releases what
        # its shares still hold; a charge draws only from an open hold's share: either way the
        # shares end at zero and the held total drops by what they held), without updating the
        # shares of holds that close anyway.
        self.b.close_many(closes)
        self.b.charge_many(self.new_charges)
        return self.drift, self.unbilled, error

    def _job(self, job, key: str, ck: str) -> None:
        if key not in self.holds:
            if not job.token and not self._has_budget(job.account):
                self.unbilled.setdefault(job.account, set()).add(job.job_id)
                return  # a job the hook never governed, in an account the ledger does not know
            self._recreate_hold(job, key)
        gpu_s = job.gpus * job.elapsed
        had = self.charges.get(ck)
        if had is not None and had[0] != key:
            raise rules.charge_conflict(ck)  # what ledger.charge says when the key is another hold's
        if had is None:
            event = sacct_settle(job)
            row, tasks = _settle_charge(self.site, key, self.holds[key].run_id, event)
            self.new_charges.append(row)
            self.charges[ck] = (key, float(row["gpu_seconds"]))
            self.settled.setdefault(key, []).append((ck, row["status"], close_state(event.state), tasks))
            self.drift.append(f"job {job.job_id}: no settle line; settled from sacct ({gpu_s} GPU-s)")
        elif abs(had[1] - gpu_s) > 1:
            self.drift.append(f"job {job.job_id}: ledger charged {had[1]:g} GPU-s, sacct says {gpu_s}")

    def _has_budget(self, account: str) -> bool:
        try:
            self.b.require_account(account)
        except InputError:
            return False
        return True

    def _recreate_hold(self, job, key: str) -> None:
        self.b.require_account(job.account)
        row = _usage_hold(self.site, key[len("slurm:"):], job.account, job.gpus * job.elapsed,
                          job.start or job.end or self.now, getattr(job, "user", None))
        self.new_holds.append(row)
        self.holds[key] = HoldRow(key, job.account, "sbatch", row[4], row[5], "open", row[6])
        if job.token:  # a job without one never had an admit line
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
                if rules.closes(state) and len(finished) >= tasks:
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


PASS_LOCK = "governor.lock"  # in the state directory: one pass at a time (the governor, a timer's sync)
_PASS_LOCK_STEP_S = 0.05


@contextlib.contextmanager
def one_pass_at_a_time(state_dir: str | Path, wait_s: float):
    """An exclusive flock of <state_dir>/governor.lock for one pass. Two passes at once (the
    governor's and `slurmgov sync` from a timer) would each save the cursors they read, and one
    could write a snapshot whose journal offset is behind what its budgets already hold, so that
    the hook counted those admissions twice. Waits ``wait_s`` for a pass in progress, then
    LedgerError (exit 5)."""
    path = Path(state_dir) / PASS_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LedgerError(f"{path}: another governor pass is still running after {wait_s:g} s") from None
                time.sleep(_PASS_LOCK_STEP_S)
        yield
    finally:
        os.close(fd)


def sync_once(ledger: Ledger, site: Site, conf_dir: str | Path, state_dir: str | Path,
              slurm=None, grace_s: float = 600, batch: int | None = None) -> SyncReport:
    """One pass. ``slurm`` (the ``slurm_cli`` module, or a stand-in) adds reconciliation with sacct.
    Passes sharing a state directory run one at a time (``one_pass_at_a_time``).

    ``batch``: journal lines per write transaction (default: ``journal_batch()``); 0 applies each
    event in its own transactions with ``apply``, the reference path."""
    with one_pass_at_a_time(state_dir, ledger.wait_s):
        return _sync_once(ledger, site, conf_dir, state_dir, slurm, grace_s, batch)


def _sync_once(ledger: Ledger, site: Site, conf_dir: str | Path, state_dir: str | Path,
               slurm, grace_s: float, batch: int | None) -> SyncReport:
    conf_dir = Path(conf_dir)
    batch = journal_batch() if batch is None else batch
    rep = SyncReport()
    tighten_journals(conf_dir)
    for acct, a in site.accounts.items():
        ledger.ensure_account(acct, a.budget_gpu_hours, a.period, **a.terms())
        if a.budget_cpu_hours is not None:  # its CPU budget: an account of its own (ledger/cpu.py)
            ledger.ensure_account(cpu_account(acct), a.budget_cpu_hours, a.period, **a.terms())
    if site.default_budget is not None and slurm is not None and hasattr(slurm, "associated_accounts"):
        rep.seeded += seed_defaults(ledger, site, slurm.associated_accounts(), "in Slurm's associations")
    cursors = journal.Cursors(Path(state_dir) / "governor-cursors.json")
    admit_offset = None
    for name in (ADMITS, SETTLES, REFUSALS):
        path = conf_dir / name
        rotated = cursors.read_rotated(path)
        if rotated is not None:  # renamed by logrotate: finish the old file first, then the new from its start
            old_path, old_lines = rotated
            step = batch if batch > 0 else max(1, len(old_lines))
            for i in range(0, len(old_lines), step):
                _ingest(ledger, site, old_path, old_lines[i:i + step], rep, one_by_one=batch <= 0)
            cursors.commit(path, {"offset": 0})
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
        jobs = slurm.sacct_jobs()
        # squeue_jobs says which jobs were requeued; a stand-in with squeue_tokens only still works
        queued = slurm.squeue_jobs() if hasattr(slurm, "squeue_jobs") else slurm.squeue_tokens()
        # the partitions as slurmctld hands them to the hook (the site file's if Slurm is not asked)
        parts = (slurm.scontrol_partitions() if hasattr(slurm, "scontrol_partitions") else None) or None
        rep.drift = reconcile(ledger, site, jobs, queued, grace_s=grace_s, partitions=parts)
    # The hook subtracts every admit line from this offset on: those are not in the ledger yet.
    rep.snapshot_serial = write_snapshot(ledger, site, conf_dir / SNAPSHOT, admit_offset)
    return rep


def _ingest(ledger: Ledger, site: Site, path: Path, lines: list[tuple[int, str]], rep: SyncReport,
            one_by_one: bool = False) -> None:
    """Apply journal lines ((offset, text), in file order) and report them as the one-by-one pass
    did: a bad line or a failed event is a problem ``path@offset`` and is skipped."""
    problems: list[tuple[int, str]] = []
    events: list[tuple[int, journal.Admit | journal.Modify | journal.Settle]] = []
    for offset, text in lines:
        try:
            event = journal.parse(text)
        except ValueError as exc:
            problems.append((offset, f"{path}@{offset}: {exc}"))  # reported, never guessed at
            continue
        if isinstance(event, journal.Refuse):
            rep.refused[event.reason] = rep.refused.get(event.reason, 0) + 1
            continue
        if isinstance(event, journal.Probe):
            continue  # for `slurmgov hooks check`: nothing to apply
        events.append((offset, event))
    # an account the hook admitted under fail-open, or whose job it never held, may have no budget yet
    rep.seeded += seed_defaults(ledger, site, {e.account for _, e in events}, "in the hook journal")
    # each event, then what it means for its account's CPU budget (where it has one), in file order
    flat: list[tuple[int, object]] = []
    cpu = _CpuEvents(ledger, site)
    for i, (_, event) in enumerate(events):
        flat.append((i, event))
        flat += [(i, e) for e in cpu.of(event)]
    errors: dict[int, SlurmgovError] = {}
    for j, failure in _apply_events(ledger, site, [e for _, e in flat], one_by_one, rep).items():
        errors.setdefault(flat[j][0], failure)
    for i, (offset, event) in enumerate(events):
        if i in errors:
            problems.append((offset, f"{path}@{offset}: {errors[i]}"))
        elif isinstance(event, journal.Admit):
            rep.admitted += 1
        elif isinstance(event, journal.Modify):
            rep.modified += 1
        elif event.token or event.gpus:
            rep.settled += 1
    rep.problems.extend(msg for _, msg in sorted(problems, key=lambda p: p[0]))


class _CpuEvents:
    """A journal event's meaning for the CPU budget of its account, as events on that budget's
    ledger account (``cpu:<account>``, slurmgov/ledger/cpu.py) and the job's CPU hold (token
    ``cpu:<token>``), applied by the same code as GPU events: none where the account has no CPU
    budget in the ledger, or the line carries no CPUs (a hook or jobcomp older than CPU budgets)."""

    def __init__(self, ledger: Ledger, site: Site):
        self.ledger, self.site = ledger, site
        self.budgeted = {of_cpu_account(a) for a in ledger.account_names() if is_cpu_account(a)}
        self.held: set[str] = set()  # CPU tokens admitted in this batch

    def _has_hold(self, token: str) -> bool:
        return token in self.held or self.ledger.find_hold(hold_key(token)) is not None

    def of(self, e) -> list:
        if not self.budgeted or e.account not in self.budgeted:
            return []
        if isinstance(e, journal.Admit):
            if e.cpus <= 0:
                return []
            self.held.add(cpu_token(e.token))
            return [journal.Admit(e.ts, e.serial, cpu_token(e.token), cpu_account(e.account), e.user, e.cpu_cost_s,
                                  e.cpus, e.time_limit_min, None, e.tasks or 1, 0.0, 0)]
        if isinstance(e, journal.Modify):
            if e.cpus <= 0 and e.old_cpu_cost_s <= 0:
                return []
            self.held.add(cpu_token(e.key))
            old = cpu_account(e.old_account) if e.old_account in self.budgeted else cpu_account(e.account)
            return [journal.Modify(e.ts, e.serial, cpu_token(e.key), cpu_account(e.account), e.user, e.new_cpu_cost_s,
                                   e.cpus, e.time_limit_min, None, e.job_id, old, e.old_cpu_cost_s, e.modify_uid,
                                   e.override, cpu_token(e.mod_id), e.tasks)]
        if isinstance(e, journal.Settle):
            token = cpu_token(e.token) if e.token else None
            if token is not None and not self._has_hold(token):
                if not e.cpus:
                    return []  # nothing held for its CPUs (held before its account had a CPU budget), none used
                # its CPU hold, from what it used, under the key reconcile gives it too (cpu_job)
                row = _usage_hold(self.site, token, cpu_account(e.account), e.cpu_seconds, e.start or e.end or time.time())
                key, account, workflow, shares, user, run_id, ts = row
                self.ledger.admit(key, account, workflow, shares, user=user, run_id=run_id, now=ts, enforce=False)
                self.held.add(token)
            if token is None and not e.cpus:
                return []  # nothing held for its CPUs, and it used none
            # job id cpu:<id>: its charge and, without a CPU hold, its usage hold are keyed apart from the GPU ones
            return [journal.Settle(cpu_token(e.job_id), token, cpu_account(e.account), e.cpus or 0, None, e.start,
                                   e.end, e.state, e.array, e.restart_cnt)]
        return []


def _apply_events(ledger: Ledger, site: Site, events: list, one_by_one: bool,
                  rep: SyncReport | None = None) -> dict[int, SlurmgovError]:
    """Apply events in file order: in batches, each modify on its own between them (rare: a job
    changed after submission); or, ``one_by_one``, each with ``apply``. Returns {index: error};
    batches that fell back to one by one are counted in ``rep.batch_fallbacks``."""
    if one_by_one:
        return _apply_one_by_one(ledger, site, events)
    errors: dict[int, SlurmgovError] = {}
    run: list[int] = []

    def flush() -> None:
        if run:
            errors.update((run[j], exc) for j, exc in apply_batch(ledger, site, [events[i] for i in run], rep).items())
            run.clear()

    for i, event in enumerate(events):
        if isinstance(event, journal.Modify):
            flush()
            exc = _try(apply_modify, ledger, site, event)
            if exc is not None:
                errors[i] = exc
        else:
            run.append(i)
    flush()
    return errors


def _try(fn, *args) -> SlurmgovError | None:
    """Run ``fn``; the error of a bad event is returned, a database going away is raised."""
    try:
        fn(*args)
    except LedgerUnavailable:
        raise  # the database, not this line: stop the pass; the cursor stays, the line is read again
    except SlurmgovError as exc:
        return exc
    return None


def _apply_one_by_one(ledger: Ledger, site: Site, events: list) -> dict[int, SlurmgovError]:
    errors = {}
    for i, event in enumerate(events):
        exc = _try(apply, ledger, site, event)
        if exc is not None:
            errors[i] = exc
    return errors


def apply_batch(ledger: Ledger, site: Site, events: list, rep: SyncReport | None = None) -> dict[int, SlurmgovError]:
    """Apply journal events in one write transaction, as ``apply`` on each in turn would: returns
    {index: error} of the events that failed (and wrote nothing), the others are applied.

    If the batch as a whole fails (the database, or anything the plan did not foresee), it is
    rolled back and its events are applied one by one with ``apply``, which then says which
    event failed, and how, exactly as the one-event pass did."""
    if not events:
        return {}
    try:
        return ledger.bulk(lambda b: _Batch(b, site, events).run())
    except Exception as exc:  # noqa: BLE001 - rolled back; the reference path decides, event by event
        # Never silent: the batch path failing is a bug or an outage a site must see (the log,
        # and the slurmgov_journal_batch_fallbacks metric), even though nothing is lost.
        log.warning("a journal batch of %d events (first: %s) failed as a whole (%s: %s); "
                    "applying them one by one", len(events), _event_text(events[0]), type(exc).__name__, exc,
                    exc_info=log.isEnabledFor(logging.DEBUG))
        if rep is not None:
            rep.batch_fallbacks += 1
        return _apply_one_by_one(ledger, site, events)


def _event_text(event) -> str:
    """One journal event in a log line: its kind and its key fields (never a whole dataclass dump)."""
    key = getattr(event, "token", None) or getattr(event, "job_id", None) or "?"
    return f"{type(event).__name__.lower()} {key}"


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
        settles = [e for e in self.events if isinstance(e, journal.Settle)]
        keys = {hold_key(e.token) for e in self.events if isinstance(e, journal.Admit)}
        keys |= {hold_key(settle_token(e)) for e in settles}
        # rerun holds a final settle may close (array or not: the hold's run_id says, once read)
        keys |= {k for e in settles if is_final(e.state) and e.restart_cnt
                 for array in (False, True) for k in _rerun_keys(settle_token(e), e, array)}
        cks = {charge_key(e.job_id, e.start) for e in settles}
        # a job without a token may get its hold here, in the account of its settle line
        accounts = {e.account for e in self.events if isinstance(e, journal.Admit) or
                    (isinstance(e, journal.Settle) and not e.token)}
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
                elif isinstance(event, journal.Settle):
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
        """ledger.admit(..., enforce=False) as apply calls it: the ledger's rules (rules.py) on
        what this batch knows, so that a bad event fails alone instead of the whole batch."""
        run_id = _admit_memo(event, self.site)
        shares = {"job": event.cost_gpu_s / 3600}
        want, key = rules.shares_ms(shares), hold_key(event.token)
        rules.epoch(event.ts, "now")
        old = self.holds.get(key)
        had = None if old is None else (old.account, old.workflow, old.shares)
        if rules.admit_replay(key, had, event.account, "sbatch", want):
            return
        self.b.require_account(event.account)
        self.new_holds.append((key, event.account, "sbatch", shares, user_name(event.user), run_id, event.ts))
        self.holds[key] = _Held(event.account, "sbatch", want, run_id, "open")

    def _settle(self, event: journal.Settle) -> None:
        """ledger.hold (or admit, for a job without a token), ledger.charge, then ledger.close of an
        array's last task and of the job's rerun holds, as apply calls them."""
        token = settle_token(event)
        key = hold_key(token)
        h = self.holds.get(key)
        if h is None:
            if event.token:
                raise rules.missing_hold(key)
            if not event.gpus:
                return
            h = self._usage_hold(token, event)
        row, tasks = _settle_charge(self.site, key, h.run_id, event)
        ck = row["charge_key"]
        sig = rules.charge_sig(key, row["step"], row["attempt"], rules.charge_ms(ck, row["gpu_seconds"], row["weight"]))
        rules.epoch(row["started"], "started")
        rules.epoch(row["ended"], "ended")
        old = self.charged.get(ck)
        if old is not None and not is_final(event.state):
            return  # requeue_echo: Slurm reports the requeue of a run it already settled
        if not rules.charge_replay(ck, old, sig):
            self.new_charges.append(row)
            self.charged[ck] = sig
            self.statuses.setdefault(key, []).append((ck, row["status"]))
        finished = {c.split("@")[0] for c, status in self.statuses.get(key, ()) if is_final(status)}
        if len(finished) >= tasks or event.array_rest:  # an array's hold closes with its last task
            self._close(key, h, close_state(event.state))
        if is_final(event.state):
            for rkey in _rerun_keys(token, event, tasks > 1):
                r = self.holds.get(rkey)
                if r is not None:
                    self._close(rkey, r, close_state(event.state))

    def _close(self, key: str, h: _Held, state: str) -> None:
        if rules.closes(h.state):
            self.closes.append((key, state))
            h.state = state

    def _usage_hold(self, token: str, event: journal.Settle) -> _Held:
        """ledger.admit of a job's usage, as apply calls it for a job the hook never held."""
        row = _usage_hold(self.site, token, event.account, event.gpu_seconds, event.start or event.end or time.time())
        want = rules.shares_ms(row[3])
        rules.epoch(row[6], "now")
        self.b.require_account(row[1])
        self.new_holds.append(row)
        self.holds[row[0]] = h = _Held(row[1], "sbatch", want, row[5], "open")
        return h


def write_snapshot(ledger: Ledger, site: Site, path: str | Path, journal_offset: int | None = None) -> int:
    path = Path(path)
    try:
        previous = snapshot.read(path).serial
    except (OSError, ValueError, KeyError):
        previous = None
    params = price_params(site)
    balances = ledger.balances()
    snap = snapshot.Snapshot(
        serial=snapshot.next_serial(previous), written=int(time.time()), max_age_s=site.snapshot_max_age_s,
        fail_policy=site.fail_policy, default_time_min=params.default_time_min,
        max_gpus_per_node=params.max_gpus_per_node or 0,  # price_params always sets it
        total_gpus=params.total_gpus, journal_offset=journal_offset,
        default_weight=params.default_weight, weights=dict(params.weights),
        available_gpu_s={b.account: b.available_h * 3600 for b in balances if not is_cpu_account(b.account)},
        operator_uids=operator_uids(site), partition_gpus=dict(params.partition_gpus),
        user_caps=snapshot_user_caps(ledger),
        available_cpu_s={of_cpu_account(b.account): b.available_h * 3600 for b in balances if is_cpu_account(b.account)},
        partition_cpus=dict(params.partition_cpus), default_cpu_weight=params.default_cpu_weight,
        max_cpus_per_node=params.max_cpus_per_node,
    )
    snapshot.write(path, snap)
    return snap.serial


def snapshot_user_caps(ledger: Ledger) -> dict[tuple[str, int], tuple[float, float]]:
    """The snapshot's ``user`` lines: (account, uid) -> (available, cap) in weighted GPU-seconds, for
    every capped user. A user this host cannot give a uid for is left out, and said in the log:
    the hook could not tell their jobs apart."""
    out = {}
    for u in ledger.user_balances():
        uid = user_uid(u.user)
        if uid is None:
            log.warning("account %s: user %s has a cap but no uid on this host; the submit hook cannot enforce it",
                        u.account, u.user)
            continue
        out[(u.account, uid)] = (u.available_h * 3600, u.cap_h * 3600)
    return out


def operator_uids(site: Site) -> list[int]:
    """Uids whose job changes may pass the budget (the hook lets root too): the site's admin users,
    and the listed members of its admin groups. A name this host does not know is left out."""
    names = list(site.admins.users)
    for group in site.admins.groups:
        try:
            names += grp.getgrnam(group).gr_mem
        except KeyError:
            continue
    uids = set()
    for name in names:
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            continue
    return sorted(uids)


PLUGINS = shared_path("plugins", "job_submit.lua").parent  # the Lua hooks: the source tree's, or where a wheel put them


def slurm_user(conf_dir: str | Path) -> str:
    """SlurmUser of ``conf_dir``/slurm.conf (the user slurmctld runs as, so the hooks write as); root if unset."""
    try:
        text = (Path(conf_dir) / "slurm.conf").read_text()
    except FileNotFoundError:
        return "root"
    user = "root"
    for line in text.splitlines():
        for word in line.split("#", 1)[0].split():
            key, sep, value = word.partition("=")
            if sep and key.lower() == "slurmuser" and value:
                user = value
    return user


def journal_owner(conf_dir: str | Path) -> tuple[int, int]:
    """(uid, gid) of the journals: SlurmUser, which appends to them from inside slurmctld, and its
    primary group."""
    user = slurm_user(conf_dir)
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise SlurmgovError(f"{Path(conf_dir) / 'slurm.conf'}: SlurmUser={user} is not a user on this host") from None
    return pw.pw_uid, pw.pw_gid


def tighten_journals(conf_dir: str | Path) -> None:
    """Take back what a careless chmod gave away: the journals carry hold tokens, so no bit beyond
    0640. Best effort (warned, never fatal): the pass goes on."""
    for name in JOURNALS:
        path = Path(conf_dir) / name
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & ~JOURNAL_MODE:
                os.chmod(path, mode & JOURNAL_MODE)
                log.warning("%s: mode %o was more open than %o; tightened", path, mode, JOURNAL_MODE)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("%s: cannot restrict its mode to %o: %s", path, JOURNAL_MODE, exc)


def install_hooks(conf_dir: str | Path) -> list[str]:
    """Copy the Lua hooks next to slurm.conf and create their journals: mode 0640, owned by
    SlurmUser (slurmctld appends to them) and its group; users cannot read the hold tokens."""
    conf_dir = Path(conf_dir)
    uid, gid = journal_owner(conf_dir)  # before anything is written: an unknown SlurmUser changes nothing
    names = []
    for name in ("job_submit.lua", "jobcomp.lua"):
        src = PLUGINS / name
        if not src.exists():
            raise SlurmgovError(f"{src}: missing; reinstall slurmgov (its wheel ships the hooks in <prefix>/share/slurmgov/plugins)")
        tmp = conf_dir / f".{name}.tmp"
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, conf_dir / name)  # slurmctld reloads on mtime: never let it see half a file
        names.append(name)
    for name in JOURNALS:
        path = conf_dir / name
        fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY | os.O_NOFOLLOW, JOURNAL_MODE)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, JOURNAL_MODE)
        finally:
            os.close(fd)
    return names
