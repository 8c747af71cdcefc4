"""Reconcile 1,000,000 sacct job records into the ledger; target: under 5 s on SQLite (issue 13).

    .venv/bin/python bench/reconcile_scale.py                      # SQLite and PostgreSQL (if it can start)
    .venv/bin/python bench/reconcile_scale.py --backend sqlite --jobs 200000

The jobs are a mix: most were admitted and settled from the hooks' journals (reconcile only has
to verify them), some lost their settle line, a few their admit line, a few were charged
differently, some still run, some carry no slurmgov token, and some holds have no job at all
(rejected after admission: released after the grace period). The journal-side state (holds,
charges, closes, as the governor's journal pass would have left them) is written first with the
ledger's bulk imports and timed on its own. Then reconcile is timed, and run a second time to
check that it changes nothing.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from slurmgov.ledger.store import Ledger  # noqa: E402
from slurmgov.site import model as site_mod
from slurmgov.slurm import governor  # noqa: E402
from slurmgov.slurm.commands import Job  # noqa: E402

TARGET_S = 5.0
NOW = 1_780_000_000  # a fixed "now" (2026-05-28), so every run builds the same jobs
GRACE_S = 600
ACCOUNTS = [f"acct{i:02d}" for i in range(40)]
# share of jobs in each case (the rest: settled by the journals, verified only)
MIX = {"no_settle": 0.05, "no_admit": 0.01, "drift": 0.002, "running": 0.01, "no_token": 0.01}
ARRAY_SHARE, ARRAY_TASKS = 0.05, 4  # 5% of tokens are 4-task arrays
ORPHANS = 1000  # holds whose job Slurm never had


def build(n: int, seed: int = 7):
    """(jobs, journal-side holds, charges, closes, live tokens), deterministic for ``seed``."""
    rnd = random.Random(seed)
    jobs, holds, charges, closes, live = [], [], [], [], set()
    cases, weights = zip(*MIX.items())
    rest = 1 - sum(weights)
    i = 0
    while len(jobs) < n:
        tasks = ARRAY_TASKS if rnd.random() < ARRAY_SHARE else 1
        token, account, gpus = f"tok{i}", rnd.choice(ACCOUNTS), rnd.choice((1, 2, 4, 8))
        case = rnd.choices((*cases, "settled"), (*weights, rest))[0]
        _token_jobs(rnd, i, token, account, gpus, tasks, case, jobs, holds, charges, closes, live)
        i += 1
    for k in range(ORPHANS):
        holds.append((f"slurm:orphan{k}", ACCOUNTS[k % len(ACCOUNTS)], "sbatch", {"job": 1.0}, "u",
                      f"orphan{k};h100;1", NOW - 3 * GRACE_S))
    return jobs[:n], holds, charges, closes, live


def _token_jobs(rnd, i, token, account, gpus, tasks, case, jobs, holds, charges, closes, live):
    if case == "no_token":
        start = NOW - rnd.randint(3600, 20 * 86400)
        jobs.append(Job(f"{i}", account, "COMPLETED", None, gpus, start, start + 600, 600))
        return
    key = governor.hold_key(token)
    if case != "no_admit":
        holds.append((key, account, "sbatch", {"job": gpus * tasks * 2.0}, f"user{i % 500}",
                      f"{token};h100;{tasks}", NOW - 30 * 86400))
    for t in range(tasks):
        job_id = f"{i}_{t}" if tasks > 1 else f"{i}"
        start = NOW - rnd.randint(3600, 20 * 86400)
        elapsed = rnd.randint(60, 7200)
        if case == "running":
            live.add(token)
            jobs.append(Job(job_id, account, "RUNNING", token, gpus, start, 0, elapsed))
            continue
        state = rnd.choices(("COMPLETED", "FAILED", "CANCELLED by 0", "TIMEOUT"), (90, 5, 3, 2))[0]
        jobs.append(Job(job_id, account, state, token, gpus, start, start + elapsed, elapsed))
        if case in ("settled", "drift"):
            charged = gpus * elapsed * (2 if case == "drift" else 1)
            charges.append(dict(charge_key=governor.charge_key(job_id, start), hold_key=key, step="job", attempt=1,
                                gpu_seconds=charged, weight=1.0, gpu_type="h100", started=start,
                                ended=start + elapsed, status=state.lower(), workflow="sbatch"))
    if case in ("settled", "drift"):
        closes.append((key, governor.close_state(jobs[-1].state)))


def fingerprint(ledger: Ledger) -> tuple:
    """Everything reconcile may change, summed exactly: holds by state, remaining shares, charges."""
    q = ("SELECT (SELECT COUNT(*) FROM holds), (SELECT COUNT(*) FROM holds WHERE state = 'open'), "
         "(SELECT CAST(SUM(amount_ms) AS BIGINT) FROM holds), "
         "(SELECT CAST(SUM(remaining_ms) AS BIGINT) FROM hold_shares), (SELECT COUNT(*) FROM charges), "
         "(SELECT CAST(SUM(amount_ms) AS BIGINT) FROM charges)")
    return tuple(ledger._read(lambda: ledger._x(q).fetchone()))


def run(url: str, label: str, n: int, site) -> None:
    t = time.perf_counter()
    jobs, holds, charges, closes, live = build(n)
    print(f"[{label}] built {len(jobs):,} sacct jobs in memory in {time.perf_counter() - t:.1f} s")
    with Ledger.open(url) as ledger:
        for a in ACCOUNTS:
            ledger.ensure_account(a, 10_000_000.0, "none")
        t = time.perf_counter()
        nh = ledger.import_holds(holds)
        nc = ledger.import_charges(charges)
        nx = ledger.close_holds(closes)
        journal_s = time.perf_counter() - t
        print(f"[{label}] journal-side state: {nh:,} holds, {nc:,} charges, {nx:,} closes "
              f"applied in {journal_s:.1f} s (bulk imports)")
        t = time.perf_counter()
        drift = governor.reconcile(ledger, site, jobs, live, now=NOW, grace_s=GRACE_S)
        rec_s = time.perf_counter() - t
        kinds = _kinds(drift)
        verdict = "MEETS" if rec_s < TARGET_S else "MISSES"
        print(f"[{label}] reconcile of {len(jobs):,} jobs: {rec_s:.1f} s  ({verdict} the {TARGET_S:g} s target); "
              f"drift: {kinds}")
        before = fingerprint(ledger)
        t = time.perf_counter()
        again = governor.reconcile(ledger, site, jobs, live, now=NOW, grace_s=GRACE_S)
        rep_s = time.perf_counter() - t
        same = fingerprint(ledger) == before
        changed = {k: v for k, v in _kinds(again).items() if k != "charged differently"}
        ok = same and not changed and _kinds(again).get("charged differently") == kinds.get("charged differently")
        print(f"[{label}] second reconcile: {rep_s:.1f} s; ledger unchanged: {same}; "
              f"new actions: {changed or 'none'} -> {'OK' if ok else 'FAILED'}")


def _kinds(drift: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in drift:
        kind = ("no admit line" if "no admit line" in line else "no settle line" if "no settle line" in line
                else "charged differently" if "ledger charged" in line else "released" if "released" in line
                else "other")
        out[kind] = out.get(kind, 0) + 1
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    args = ap.parse_args()
    site = site_mod.load(ROOT / "site_configs" / "local.yaml")
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as d:
            run(f"sqlite:///{d}/ledger.sqlite", "sqlite", args.jobs, site)
    if args.backend in ("postgres", "both"):
        run_postgres(args.jobs, site)
    return 0


def run_postgres(n: int, site) -> None:
    import pg_harness

    with pg_harness.for_bench() as up:
        if up:
            run(pg_harness.fresh_url(), "postgres", n, site)


if __name__ == "__main__":
    sys.exit(main())
