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
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("prep", "time"))
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


if __name__ == "__main__":
    sys.exit(main())
