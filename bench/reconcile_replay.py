"""Time reconcile alone on one built ledger, for side-by-side runs of two commits (issue 13).

    .venv/bin/python bench/reconcile_replay.py prep /tmp/rr              # once: bench/reconcile_scale.py's
                                                                        # 1,000,000 jobs and journal-side ledger
    .venv/bin/python bench/reconcile_replay.py time /tmp/rr --code /tmp/base   # a copy of it, reconciled by
    .venv/bin/python bench/reconcile_replay.py time /tmp/rr                    # that checkout's code, or this one

reconcile_scale.py builds the same state each run (5 minutes of bulk imports on a loaded 2-core
machine) before its few seconds of reconcile; this builds it once, then each run reconciles a
fresh copy twice and prints both passes' wall and CPU seconds, the fingerprint of holds, shares
and charges (equal between commits: the same end state) and whether the second pass changed
nothing. Alternate the commits (ABAB) and compare medians: the machine's speed drifts.

    .venv/bin/python bench/reconcile_replay.py floor /tmp/rr

what the first pass costs the database alone, and whether the rest could hide beside it: the pass
is run once with every statement it sends recorded (text and parameters, as given), then those
statements alone are sent again, in order, to a fresh copy, with no Python planning between them;
then once more in a second thread while this one does pure Python work (the rows' signatures,
built over and over) of about the pass's Python time. Python runs one thread at a time; only
SQLite's own steps let go of that lock, so the last line says how much of the shorter of the two
the second core actually hid.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("prep", "time", "floor"))
    ap.add_argument("dir", type=Path, help="where the built jobs and ledger are kept")
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout whose slurmgov reconciles (default: this)")
    ap.add_argument("--jobs", type=int, default=1_000_000)
    args = ap.parse_args()
    sys.path[:0] = [str(args.code), str(ROOT / "bench"), str(ROOT / "tests")]
    # --code's slurmgov first: reconcile_scale (its build and fingerprint) then finds it imported
    from slurmgov.ledger.store import Ledger
    from slurmgov.site import model as site_mod
    from slurmgov.slurm import governor

    rs = importlib.import_module("reconcile_scale")

    site = site_mod.load(ROOT / "site_configs" / "local.yaml")
    if args.what == "prep":
        args.dir.mkdir(parents=True, exist_ok=True)
        jobs, holds, charges, closes, live = rs.build(args.jobs)
        with open(args.dir / "jobs.pkl", "wb") as f:
            pickle.dump((jobs, live), f, protocol=5)
        with Ledger.open(f"sqlite:///{args.dir}/ledger.sqlite") as ledger:
            for a in rs.ACCOUNTS:
                ledger.ensure_account(a, 10_000_000.0, "none")
            ledger.import_holds(holds)
            ledger.import_charges(charges)
            ledger.close_holds(closes)
        print(f"built {len(jobs):,} jobs and their ledger in {args.dir}")
        return 0
    with open(args.dir / "jobs.pkl", "rb") as f:
        jobs, live = pickle.load(f)
    if args.what == "floor":
        return floor(args.dir, site, jobs, live, rs)
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(args.dir / "ledger.sqlite", f"{d}/ledger.sqlite")
        with Ledger.open(f"sqlite:///{d}/ledger.sqlite") as ledger:
            times, drifts = [], []
            for _ in range(2):
                t, c = time.perf_counter(), time.process_time()
                drifts.append(rs._kinds(governor.reconcile(ledger, site, jobs, live, now=rs.NOW, grace_s=rs.GRACE_S)))
                times.append((time.perf_counter() - t, time.process_time() - c))
                if len(times) == 1:
                    fp = rs.fingerprint(ledger)
            same = rs.fingerprint(ledger) == fp
            ok = same and set(drifts[1]) <= {"charged differently"} and \
                drifts[1].get("charged differently") == drifts[0].get("charged differently")
    (w1, c1), (w2, c2) = times
    print(f"{Path(governor.__file__).parents[2].name}: first {w1:.2f} s ({c1:.2f} s CPU), second {w2:.2f} s ({c2:.2f} s CPU); "
          f"fingerprint {fp}; drift {drifts[0]}; second pass {'changed nothing: OK' if ok else 'CHANGED: FAILED'}; "
          f"load {os.getloadavg()[0]:.1f}")
    return 0 if ok else 1


def floor(src: Path, site, jobs, live, rs) -> int:
    """Print the first pass's time, its statements' time alone, and their overlap with Python."""
    import sqlite3

    from slurmgov.ledger import schema
    from slurmgov.ledger.store import Bulk, Ledger
    from slurmgov.slurm import governor

    sent: list[tuple[str, str, object]] = []
    run_one, run_many = Ledger._x, Bulk._many

    def one(self, q, params=()):
        sent.append(("one", self._d.sql(q), params))
        return run_one(self, q, params)

    def many(self, q, rows):
        if rows:
            sent.append(("many", self._l._d.sql(q), list(rows)))
        return run_many(self, q, rows)

    with tempfile.TemporaryDirectory() as d:
        shutil.copy(src / "ledger.sqlite", f"{d}/ledger.sqlite")
        with Ledger.open(f"sqlite:///{d}/ledger.sqlite") as ledger:
            Ledger._x, Bulk._many = one, many
            try:
                t = time.perf_counter()
                governor.reconcile(ledger, site, jobs, live, now=rs.NOW, grace_s=rs.GRACE_S)
                whole = time.perf_counter() - t
            finally:
                Ledger._x, Bulk._many = run_one, run_many

    def fresh(d: str) -> sqlite3.Connection:
        shutil.copy(src / "ledger.sqlite", f"{d}/ledger.sqlite")
        conn = sqlite3.connect(f"{d}/ledger.sqlite", isolation_level=None, check_same_thread=False)
        for stmt in schema.SQLITE.session:  # as a ledger's connection is set up
            conn.execute(stmt)
        return conn

    lock_wait = schema.SQLITE.lock_wait.split("{")[0]

    def send(conn: sqlite3.Connection) -> None:
        for kind, q, params in sent:
            if kind == "many":
                conn.executemany(q, params)
            elif not q.startswith(lock_wait):  # the lock wait: nobody else is writing
                conn.execute(q, params).fetchall()

    def python(rounds: int) -> None:
        for _ in range(rounds):
            governor.signatures(jobs)

    with governor._no_cycle_collection():  # as reconcile runs
        with tempfile.TemporaryDirectory() as d:
            conn = fresh(d)
            t, c = time.perf_counter(), time.process_time()
            send(conn)
            alone, alone_cpu = time.perf_counter() - t, time.process_time() - c
            conn.close()
        t = time.perf_counter()
        python(1)
        rounds = max(1, round((whole - alone) / (time.perf_counter() - t)))
        t = time.perf_counter()
        python(rounds)
        py = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as d:
            conn = fresh(d)
            t = time.perf_counter()
            beside = threading.Thread(target=send, args=(conn,))
            beside.start()
            python(rounds)
            beside.join()
            both = time.perf_counter() - t
            conn.close()
    print(f"first pass {whole:.2f} s; its {len(sent)} statements alone {alone:.2f} s ({alone_cpu:.2f} s CPU), "
          f"{alone / whole:.0%} of it; so its Python ~{whole - alone:.2f} s")
    print(f"those statements in a second thread beside {py:.2f} s of Python: {both:.2f} s, against {alone + py:.2f} s "
          f"one after the other: {(alone + py - both) / min(alone, py):.0%} of the shorter hidden; "
          f"load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
