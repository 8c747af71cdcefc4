"""Ledger admissions per second from 1 and 16 processes, on SQLite and PostgreSQL; zero overspend.

    python bench/ledger_load.py [--attempts 200] [--backends sqlite,postgres] [--procs 1,16]
                                [--no-control] [--open-holds 100,100000] [--held-attempts 4000]
                                [--json]

For each backend and each process count P, a fresh ledger gets one account whose budget allows
exactly K holds of HOLD_H GPU-h each, K = P * attempts // 2, so half of all attempts must be
refused. P worker processes (each with its own Ledger, opened before the clock starts) then
each try ``--attempts`` admissions of one hold through ``Ledger.admit`` as fast as they can.
Timed from the first worker's first attempt to the last worker's last one. Afterwards the
ledger itself is read back: exactly K open holds, held == K * HOLD_H <= budget, no charges.

Control run (``--no-control`` skips it): one process making as many attempts as all processes
of the largest run, so with as many open holds at the end; it separates what contention costs
from what a bigger ledger costs.

Open holds (``--open-holds 100,100000``; an empty list skips it): for each count N, a fresh
ledger whose account (the SAME account the admissions go to, the harder case: an admission
that summed the account's holds would read all N) already has N open holds, imported in bulk
before the clock starts, and a budget of N + K holds; then 1 process makes ``--held-attempts``
admissions (half fit). The rate at the largest N over the rate at the smallest is printed: an
admission reads the account's running held total (schema 5), so it should be about 1.

SQLite: a file in a fresh temp dir (the ledger's own settings: WAL, synchronous=FULL).
PostgreSQL: a throw-away server from tests/pg_harness.py (fsync off), one fresh schema per run.

Exit status: 0 all checks passed; 1 overspend (more than K admitted or held > budget);
2 bad arguments, or PostgreSQL was the only backend asked for and could not be started;
3 another check failed (fewer than K admitted, worker errors, ledger disagreeing with workers).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # slurmgov from this checkout, even without the venv's install

from slurmgov.errors import BudgetRefused, SlurmgovError  # noqa: E402
from slurmgov.ledger.store import Ledger  # noqa: E402

ACCOUNT = "bench-acct"
WORKFLOW = "bench-wf"
SHARES = {"train": 0.75, "eval": 0.25}  # two shares, as a real workflow has; 1.0 GPU-h in all
HOLD_H = sum(SHARES.values())
BARRIER_S = 120  # bound on all workers opening their ledgers (16 spawns on 2 cores are slow)
RESULT_S = 600  # bound on one run's workers finishing
BACKENDS = ("sqlite", "postgres")
SLOW_S = 1.0  # an admission slower than this waited on the lock far longer than the others


# ---- worker (runs in its own process) -----------------------------------------------------

def _worker(url: str, wid: int, attempts: int, tag: str, barrier, out) -> None:
    res = {"wid": wid, "admitted": 0, "refused": 0, "errors": 0, "first_error": None, "lat": [],
           "t0": None, "t1": None}
    try:
        ledger = Ledger.open(url)
    except SlurmgovError as e:  # cannot open: say so and let the others go (barrier broken)
        res["first_error"] = f"open: {e}"
        res["errors"] = attempts
        barrier.abort()
        out.put(res)
        return
    try:
        barrier.wait()
    except threading.BrokenBarrierError:  # another worker could not open; nothing was timed
        res["first_error"] = "start barrier broken"
        res["errors"] = attempts
        ledger.disconnect()
        out.put(res)
        return
    lat = res["lat"]
    clock = time.monotonic  # CLOCK_MONOTONIC: one clock for all processes on Linux
    res["t0"] = clock()
    for i in range(attempts):
        t = clock()
        try:
            ledger.admit(f"{tag}-w{wid:02d}-{i:06d}", ACCOUNT, WORKFLOW, SHARES, user="bench",
                         run_id=f"{tag}-w{wid:02d}")
            res["admitted"] += 1
        except BudgetRefused:  # expected once the budget is used up
            res["refused"] += 1
        except SlurmgovError as e:  # e.g. the lock wait (10 s) and all retries ran out
            res["errors"] += 1
            res["first_error"] = res["first_error"] or str(e)
        lat.append(clock() - t)
    res["t1"] = clock()
    ledger.disconnect()
    out.put(res)


# ---- one run: one backend, P processes ----------------------------------------------------

def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]


def run_one(backend: str, url: str, procs: int, attempts: int, ctx, control: bool = False,
            preheld: int = 0, round_: int = 0) -> dict:
    """One timed run. ``preheld``: open holds put on the account first (in round 0; a later round
    goes on with the same ledger, its budget raised by K for each round)."""
    total = procs * attempts
    k = total // 2
    tag = f"{backend}-p{procs}-n{attempts}-h{preheld}-r{round_}"
    with Ledger.open(url) as setup:  # creates the schema, so workers only open it
        setup.set_budget(ACCOUNT, (k * (round_ + 1) + preheld) * HOLD_H, period_kind="none", actor="bench",
                         reason="ledger_load benchmark")
        if preheld and not round_:  # open holds already there, on the same account, whole holds of HOLD_H
            setup.import_holds((f"pre-{i:07d}", ACCOUNT, WORKFLOW, SHARES, "bench", None, None)
                               for i in range(preheld))
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(url, w, attempts, tag, barrier, out), daemon=True)
               for w in range(procs)]
    for p in workers:
        p.start()
    results, deadline = [], time.monotonic() + BARRIER_S + RESULT_S
    while len(results) < procs and time.monotonic() < deadline:  # drain before join: a full pipe
        try:                                                        # would block a worker's exit
            results.append(out.get(timeout=1.0))
        except queue.Empty:
            if not any(p.is_alive() for p in workers) and out.empty():
                break  # a worker died without reporting (killed, crashed): do not wait for it
    for p in workers:
        p.join(timeout=10)
        if p.is_alive():  # only our own worker, by its handle
            p.terminate()
            p.join()
    missing = procs - len(results)

    admitted = sum(r["admitted"] for r in results)
    refused = sum(r["refused"] for r in results)
    errors = sum(r["errors"] for r in results) + missing * attempts
    errs = [r["first_error"] for r in results if r["first_error"]]
    if missing:
        errs.append(f"{missing} worker(s) returned no result")
    lat = [x for r in results for x in r["lat"]]
    t0s = [r["t0"] for r in results if r["t0"] is not None]
    t1s = [r["t1"] for r in results if r["t1"] is not None]
    wall = (max(t1s) - min(t0s)) if t0s and t1s else float("nan")

    # What the ledger itself says, read back in one snapshot by a fresh connection.
    with Ledger.open(url) as check:
        bal = check.balance(ACCOUNT)
        holds = check.open_holds(prefix=f"{tag}-")
        charges = check.charges()
        drift = check.check_held()  # the running total against the sum over the open holds
    budget_ms, held_ms = round(bal.budget_h * 3_600_000), round(bal.held_h * 3_600_000)
    overspend = len(holds) > k or held_ms > budget_ms or bal.available_h < 0
    problems = []
    if overspend:
        problems.append(f"OVERSPEND: {len(holds)} holds ({bal.held_h:.3f} GPU-h held) > budget "
                        f"{k} ({bal.budget_h:.3f} GPU-h)")
    if len(holds) != admitted:
        problems.append(f"ledger has {len(holds)} open holds, workers counted {admitted} admitted")
    if not overspend and len(holds) < k:
        problems.append(f"only {len(holds)} of {k} affordable holds admitted")
    if charges:
        problems.append(f"{len(charges)} unexpected charges")
    if drift:
        problems.append(f"running held total disagrees with the open holds: {drift}")
    if errors:
        problems.append(f"{errors} attempts failed: {errs[0] if errs else '?'}")
    return {
        "backend": backend, "procs": procs, "control": control, "preheld": preheld, "round": round_,
        "attempts_per_proc": attempts, "attempts": total,
        "budget_holds": k, "admitted": admitted, "refused": refused, "errors": errors,
        "wall_s": wall, "attempts_per_s": (admitted + refused) / wall if wall > 0 else float("nan"),
        "admitted_per_s": admitted / wall if wall > 0 else float("nan"),
        "lat_ms": {"p50": _pct(lat, 50) * 1e3, "p99": _pct(lat, 99) * 1e3,
                   "max": max(lat) * 1e3 if lat else float("nan"),
                   "mean": statistics.fmean(lat) * 1e3 if lat else float("nan")},
        "slow_attempts": sum(x > SLOW_S for x in lat),
        "ledger_open_holds": len(holds), "ledger_held_h": bal.held_h, "ledger_budget_h": bal.budget_h,
        "overspend": overspend, "ok": not problems, "problems": problems,
    }


# ---- backends -----------------------------------------------------------------------------

def _fs_type(path: str) -> str:
    """The filesystem the SQLite file lives on (tmpfs vs a disk changes fsync costs a lot)."""
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and (path == parts[1] or path.startswith(parts[1].rstrip("/") + "/")) \
                        and len(parts[1]) > len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


class _Postgres:
    """The test harness's throw-away server; ``start`` returns None or why it cannot run."""

    def __init__(self):
        self.h = None
        self.version = None

    def start(self) -> str | None:
        sys.path.insert(0, str(ROOT / "tests"))
        try:
            import pg_harness  # needs pytest (a dev dependency), as the test suite does
        except ImportError as e:
            return f"cannot load tests/pg_harness.py: {e}"
        # A benchmark does not install packages: pg_harness.can_run() would apt-get install.
        if pg_harness.find_bindir() is None:
            return "PostgreSQL is not installed (no initdb); apt-get install postgresql"
        ok, why = pg_harness.can_run()
        if not ok:
            return why
        try:
            server = pg_harness.start()
        except Exception as e:  # initdb or startup failed; the harness's message is one line
            return f"throw-away server did not start: {str(e).strip().splitlines()[0] if str(e) else e!r}"
        self.h = pg_harness
        try:
            self.version = server.admin().execute("SHOW server_version").fetchone()[0]
        except Exception:
            self.version = "?"
        return None

    def fresh_url(self) -> str:
        return self.h.fresh_url()

    def stop(self) -> None:
        if self.h is not None:
            self.h.stop()


# ---- output -------------------------------------------------------------------------------

def _table(rows: list[dict]) -> str:
    head = ("backend", "procs", "open before", "attempts", "budget", "admitted", "refused", "errors", "wall s",
            "attempts/s", "admitted/s", "p50 ms", "p99 ms", "max ms", f">{SLOW_S:g}s", "held/budget GPU-h", "check")
    lines = [head]
    for r in rows:
        lat = r["lat_ms"]
        procs = f"{r['procs']}{'*' if r['control'] else ''}"
        lines.append((r["backend"], procs, f"{r['preheld']:,}", str(r["attempts"]), str(r["budget_holds"]), str(r["admitted"]),
                      str(r["refused"]), str(r["errors"]), f"{r['wall_s']:.2f}",
                      f"{r['attempts_per_s']:.0f}", f"{r['admitted_per_s']:.0f}", f"{lat['p50']:.2f}",
                      f"{lat['p99']:.2f}", f"{lat['max']:.1f}", str(r["slow_attempts"]),
                      f"{r['ledger_held_h']:.0f}/{r['ledger_budget_h']:.0f}",
                      "ok" if r["ok"] else ("OVERSPEND" if r["overspend"] else "FAIL")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]

    def fmt(line):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))

    return "\n".join([fmt(lines[0]), "  ".join("-" * w for w in widths)] + [fmt(x) for x in lines[1:]])


def _ratios(rows: list[dict]) -> list[dict]:
    """P-proc throughput over 1-proc with the same attempts per process (as the issue asks), and
    over the 1-proc control that makes as many attempts as all P processes together: admission
    cost grows with the open holds of the account, so only the control has the same ledger size."""
    out = []
    for r in rows:
        if r["procs"] == 1 or r["control"] or r["preheld"]:
            continue
        same = lambda q: q["backend"] == r["backend"] and q["procs"] == 1
        base = next((q for q in rows if same(q) and not q["control"] and not q["preheld"]
                     and q["attempts_per_proc"] == r["attempts_per_proc"]), None)
        ctrl = next((q for q in rows if same(q) and q["control"] and q["attempts"] == r["attempts"]
                     and not q["preheld"]), None)
        div = lambda a, b: a / b if b and b > 0 else float("nan")
        out.append({"backend": r["backend"], "procs": r["procs"],
                    "vs_1proc_attempts_per_s": div(r["attempts_per_s"], base["attempts_per_s"]) if base else None,
                    "vs_1proc_admitted_per_s": div(r["admitted_per_s"], base["admitted_per_s"]) if base else None,
                    "vs_control_attempts_per_s": div(r["attempts_per_s"], ctrl["attempts_per_s"]) if ctrl else None})
    return out


# ---- main ---------------------------------------------------------------------------------

def _held_ratios(rows: list[dict]) -> list[dict]:
    """Per backend: the median admission rate (over the rounds) with the most open holds over
    the median with the fewest."""
    out = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        counts = sorted({r["preheld"] for r in rows if r["backend"] == backend and r["preheld"]})
        if len(counts) < 2:
            continue
        med = {n: statistics.median(r["attempts_per_s"] for r in rows
                                    if r["backend"] == backend and r["preheld"] == n) for n in counts}
        lo, hi = counts[0], counts[-1]
        if med[lo] > 0:
            out.append({"backend": backend, "few": lo, "many": hi, "median_few": med[lo], "median_many": med[hi],
                        "ratio_attempts_per_s": med[hi] / med[lo]})
    return out


def _no_nan(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_no_nan(v) for v in x]
    return x


def _parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attempts", type=int, default=200,
                    help="admission attempts per process (default 200, about 30 s in all on 2 cores; "
                         "half of all attempts fit the budget)")
    ap.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    ap.add_argument("--procs", default="1,16", help="comma-separated process counts (default 1,16)")
    ap.add_argument("--no-control", action="store_true",
                    help="skip the 1-process control run that makes as many attempts as the largest --procs")
    ap.add_argument("--open-holds", default="100,100000",
                    help="comma-separated counts of open holds already on the account, each a 1-process run "
                         "(default 100,100000; empty: none)")
    ap.add_argument("--held-attempts", type=int, default=4000,
                    help="admission attempts of each --open-holds run (default 4000)")
    ap.add_argument("--held-rounds", type=int, default=3,
                    help="rounds of the --open-holds runs, taken in turn on the same ledgers; the ratio is of "
                         "the medians (default 3)")
    ap.add_argument("--json", action="store_true", help="print machine-readable results only")
    a = ap.parse_args(argv)
    a.backends = [b.strip().lower() for b in a.backends.split(",") if b.strip()]
    bad = [b for b in a.backends if b not in BACKENDS]
    if bad or not a.backends:
        ap.error(f"--backends: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(BACKENDS)}")
    try:
        a.procs = sorted({int(p) for p in a.procs.split(",") if p.strip()})
    except ValueError:
        ap.error(f"--procs: {a.procs!r} is not a comma-separated list of integers")
    if not a.procs or a.procs[0] < 1:
        ap.error("--procs: process counts must be >= 1")
    if a.attempts < 2:
        ap.error("--attempts must be >= 2, so that some admissions are refused")
    try:
        a.open_holds = [int(n) for n in a.open_holds.split(",") if n.strip()]
    except ValueError:
        ap.error(f"--open-holds: {a.open_holds!r} is not a comma-separated list of integers")
    if any(n < 1 for n in a.open_holds) or a.held_attempts < 2 or a.held_rounds < 1:
        ap.error("--open-holds counts must be >= 1, --held-attempts >= 2 and --held-rounds >= 1")
    return a


def main(argv=None) -> int:
    a = _parse(argv)
    say = (lambda *x: print(*x, file=sys.stderr)) if a.json else print
    # spawn: each worker starts clean, with no inherited connection or lock from this process
    ctx = mp.get_context("spawn")
    specs = [(n, a.attempts, False, 0, 0) for n in a.procs]
    if a.procs[-1] > 1 and not a.no_control:
        specs.append((1, a.procs[-1] * a.attempts, True, 0, 0))
    specs += [(1, a.held_attempts, False, n, r) for r in range(a.held_rounds) for n in a.open_holds]
    rows, skipped, env = [], {}, {"cpus": os.cpu_count(), "python": platform.python_version(),
                                  "sqlite": sqlite3.sqlite_version}
    for backend in a.backends:
        if backend == "sqlite":
            tmp = tempfile.mkdtemp(prefix="slurmgov-ledger-bench-")
            env["sqlite_fs"] = _fs_type(tmp)
            try:
                for i, (n, att, ctl, pre, rnd) in enumerate(specs):
                    url = f"sqlite:///{tmp}/ledger-{f'held{pre}' if pre else i}.db"  # rounds share a ledger
                    say(f"sqlite: {n} process(es) x {att} attempts{' (control)' if ctl else ''}"
                        f"{f', {pre:,} open holds before (round {rnd + 1})' if pre else ''} ...")
                    rows.append(run_one("sqlite", url, n, att, ctx, ctl, pre, rnd))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            pg = _Postgres()
            why = pg.start()
            if why:
                say(f"postgres: skipped: {why}")
                skipped["postgres"] = why
                continue
            env["postgres"] = pg.version
            try:
                held_urls: dict[int, str] = {}
                for n, att, ctl, pre, rnd in specs:
                    say(f"postgres: {n} process(es) x {att} attempts{' (control)' if ctl else ''}"
                        f"{f', {pre:,} open holds before (round {rnd + 1})' if pre else ''} ...")
                    url = held_urls.setdefault(pre, pg.fresh_url()) if pre else pg.fresh_url()
                    rows.append(run_one("postgres", url, n, att, ctx, ctl, pre, rnd))
            finally:
                pg.stop()

    ratios, held = _ratios(rows), _held_ratios(rows)
    if a.json:
        doc = {"env": env, "runs": rows, "ratios": ratios, "open_hold_ratios": held, "skipped": skipped}
        print(json.dumps(_no_nan(doc), indent=2))  # strict JSON: no NaN
    elif rows:
        print()
        print(f"{env['cpus']} CPUs, Python {env['python']}, SQLite {env['sqlite']} "
              f"(file on {env.get('sqlite_fs', '-')}), PostgreSQL {env.get('postgres', '-')}; "
              f"hold = {HOLD_H:g} GPU-h, budget = half of all attempts")
        print(_table(rows))
        if any(r["control"] for r in rows):
            print("* control: 1 process making as many attempts as all the processes of the largest run, so the")
            print("  same number of open holds at the end")
        fx = lambda v: "n/a" if v is None else f"x{v:.2f}"
        for q in ratios:
            print(f"{q['backend']}: {q['procs']}-proc vs 1-proc throughput: attempts/s "
                  f"{fx(q['vs_1proc_attempts_per_s'])}, admitted/s {fx(q['vs_1proc_admitted_per_s'])}; "
                  f"vs the 1-proc control with as many attempts: {fx(q['vs_control_attempts_per_s'])}")
        for q in held:
            print(f"{q['backend']}: admission rate with {q['many']:,} open holds on the account vs {q['few']:,} "
                  f"(medians of the rounds, {q['median_many']:,.0f} vs {q['median_few']:,.0f} attempts/s): "
                  f"x{q['ratio_attempts_per_s']:.2f}")
        for r in rows:
            for p in r["problems"]:
                print(f"{r['backend']} {r['procs']}-proc: {p}")
    if any(r["overspend"] for r in rows):
        return 1
    if not rows:  # only postgres was asked for and it could not run
        return 2
    if any(not r["ok"] for r in rows):
        return 3
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: the finally blocks above stopped the server, removed temp files
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SlurmgovError as e:  # the setup/check ledger itself failed: one line, no traceback
        print(f"ledger_load: {e}", file=sys.stderr)
        sys.exit(3)
