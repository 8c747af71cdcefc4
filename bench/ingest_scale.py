"""The governor's journal pass after a burst: N admit lines and N settle lines, in batches vs one event at a time.

    .venv/bin/python bench/ingest_scale.py                              # SQLite and PostgreSQL (if it can start)
    .venv/bin/python bench/ingest_scale.py --backend sqlite --lines 200000 --one-by-one 2000

The hook dir holds what the hooks write (plugins/SNAPSHOT_FORMAT.md): ``slurmgov_journal.log``
with N ``admit`` lines (tokens ``<unix s>-<counter>-<hex>``, three accounts, some typed, some
untyped, 5% 4-task arrays) and ``slurmgov_settle.log`` with N ``settle`` lines (array tasks one
by one, requeued jobs settled once per run, jobs cancelled while pending, failures, a few jobs
without a token). ``governor.sync_once`` (no reconcile) ingests them into a fresh ledger:

1. the batched pass (``JOURNAL_BATCH`` lines per transaction) on N lines of each;
2. the same pass again with its cursors deleted (every line replayed): must change nothing;
3. the one-event path (``sync_once(..., batch=0)``, ``governor.apply`` per event) and the
   batched pass, each into its own fresh ledger, on a smaller journal (``--one-by-one`` lines
   of each), in the same run: must end with the same ledger and the same report.

lines/s counts admit + settle lines. SQLite: a file in a fresh temp dir (the ledger's own settings:
WAL, synchronous=FULL). PostgreSQL: a throw-away server from tests/pg_harness.py (fsync off).
Exit status 0 when every check passed, 1 otherwise.
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

NOW = 1_780_000_000  # a fixed "now" (2026-05-28), so every run writes the same journals
ACCOUNTS = ("chem-ai", "bio-ml", "physics")  # the site's (site_configs/local.yaml)
TYPES = ("h100", "-")  # typed and untyped requests
ARRAY_SHARE, ARRAY_TASKS = 0.05, 4
# how each job (or array task) ends; requeued: settled as PENDING, then again when its next run ends
ENDINGS = {"COMPLETED": 85, "FAILED": 5, "TIMEOUT": 2, "CANCELLED": 2, "pending_cancel": 2, "requeued": 2,
           "no_token": 2}


def journals(n: int, seed: int = 11) -> tuple[str, str]:
    """(admit lines, settle lines): n of each, deterministic for ``seed``."""
    rnd = random.Random(seed)
    admits, settles = [], []
    endings, weights = zip(*ENDINGS.items())
    i = 0
    while len(admits) < n or len(settles) < n:
        ts = NOW - 86400 + i // 10
        token = f"{ts}-{i}-{rnd.getrandbits(32):08x}"
        account, gpu_type = rnd.choice(ACCOUNTS), rnd.choice(TYPES)
        gpus, minutes = rnd.choice((1, 2, 4, 8)), rnd.choice((30, 60, 240))
        tasks = ARRAY_TASKS if rnd.random() < ARRAY_SHARE else 1
        if len(admits) < n:
            cost = gpus * tasks * minutes * 60 * 1.0  # every weight is 1.0 at this site
            admits.append(f"admit\t{ts}\t{NOW - 86400}\t{token}\t{account}\t{1000 + i % 500}\t{cost:.3f}"
                          f"\t{gpus}\t{minutes}\t{gpu_type}\n")
        for t in range(tasks):
            job = f"{100000 + i}_{t}" if tasks > 1 else f"{100000 + i}"
            ending = rnd.choices(endings, weights)[0]
            start = ts + rnd.randint(1, 3600)
            end = start + rnd.randint(60, minutes * 60)
            if ending == "no_token":
                settles.append(f"settle\t{job}\t-\t{account}\t{gpus}\t{start}\t{end}\tCOMPLETED\n")
            elif ending == "pending_cancel":
                settles.append(f"settle\t{job}\t{token}\t{account}\t0\t0\t{start}\tCANCELLED\n")
            elif ending == "requeued":
                settles.append(f"settle\t{job}\t{token}\t{account}\t{gpus}\t{start}\t{start + 60}\tPENDING\n")
                settles.append(f"settle\t{job}\t{token}\t{account}\t{gpus}\t{end + 60}\t{end + 600}\tCOMPLETED\n")
            else:
                settles.append(f"settle\t{job}\t{token}\t{account}\t{gpus}\t{start}\t{end}\t{ending}\n")
        i += 1
    # jobs finish in about, not exactly, the order they were submitted
    settles = settles[:n]
    for k in range(0, len(settles), 64):
        window = settles[k:k + 64]
        rnd.shuffle(window)
        settles[k:k + 64] = window
    # ... but a requeued job's runs in order (the shuffle may have swapped them: put them back)
    seen: dict[str, int] = {}
    for k, line in enumerate(settles):
        f = line.split("\t")
        key = f"{f[1]}\t{f[2]}"
        if key in seen and f[7].startswith("PENDING"):
            settles[seen[key]], settles[k] = settles[k], settles[seen[key]]
        seen[key] = k
    return "".join(admits), "".join(settles)


def fingerprint(ledger: Ledger) -> tuple:
    """Holds by state, held and remaining amounts, charges and their total, all summed exactly."""
    q = ("SELECT (SELECT COUNT(*) FROM holds), (SELECT COUNT(*) FROM holds WHERE state = 'open'), "
         "(SELECT COUNT(*) FROM holds WHERE state = 'done'), (SELECT COUNT(*) FROM holds WHERE state = 'failed'), "
         "(SELECT COUNT(*) FROM holds WHERE state = 'cancelled'), "
         "(SELECT CAST(SUM(amount_ms) AS BIGINT) FROM holds), "
         "(SELECT CAST(SUM(remaining_ms) AS BIGINT) FROM hold_shares), (SELECT COUNT(*) FROM charges), "
         "(SELECT CAST(SUM(amount_ms) AS BIGINT) FROM charges)")
    return tuple(ledger._read(lambda: ledger._x(q).fetchone()))


def report(rep) -> tuple:
    return rep.admitted, rep.settled, len(rep.problems), rep.problems[:3]


def timed_pass(url: str, site, admits: str, settles: str, batch: int | None, hook: Path):
    hook.mkdir(parents=True)
    (hook / governor.ADMITS).write_text(admits)
    (hook / governor.SETTLES).write_text(settles)
    with Ledger.open(url) as ledger:
        t = time.perf_counter()
        rep = governor.sync_once(ledger, site, hook, hook / "state", batch=batch)
        secs = time.perf_counter() - t
        return rep, secs, fingerprint(ledger), ledger


def run(urls, label: str, n: int, small: int, site) -> bool:
    """``urls``: a callable giving a fresh, empty ledger URL each call."""
    ok = True
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        admits, settles = journals(n)
        lines = admits.count("\n") + settles.count("\n")
        print(f"[{label}] wrote {lines:,} journal lines ({len(admits) + len(settles):,} bytes) "
              f"in {time.perf_counter() - t:.1f} s")
        url = urls()
        rep, secs, fp, _ = timed_pass(url, site, admits, settles, None, Path(d) / "big")
        print(f"[{label}] batched pass (JOURNAL_BATCH={governor.JOURNAL_BATCH:,}): {lines:,} lines in {secs:.2f} s "
              f"= {lines / secs:,.0f} lines/s; admitted {rep.admitted:,}, settled {rep.settled:,}, "
              f"problems {len(rep.problems)}")
        ok &= not rep.problems
        big_rate = lines / secs
        # every line again (the cursors lost): nothing may change
        (Path(d) / "big" / "state" / "governor-cursors.json").unlink()
        with Ledger.open(url) as ledger:
            t = time.perf_counter()
            again = governor.sync_once(ledger, site, Path(d) / "big", Path(d) / "big" / "state")
            rsecs = time.perf_counter() - t
            same = fingerprint(ledger) == fp and report(again) == report(rep)
        print(f"[{label}] replay of every line: {rsecs:.2f} s = {lines / rsecs:,.0f} lines/s; "
              f"ledger and report unchanged: {same}")
        ok &= same

        s_admits, s_settles = journals(small)
        s_lines = s_admits.count("\n") + s_settles.count("\n")
        rep1, secs1, fp1, _ = timed_pass(urls(), site, s_admits, s_settles, 0, Path(d) / "one")
        repb, secsb, fpb, _ = timed_pass(urls(), site, s_admits, s_settles, None, Path(d) / "batched")
        one_rate, small_rate = s_lines / secs1, s_lines / secsb
        agree = fp1 == fpb and report(rep1) == report(repb)
        print(f"[{label}] one event at a time (apply): {s_lines:,} lines in {secs1:.2f} s = {one_rate:,.0f} lines/s")
        print(f"[{label}] batched, same {s_lines:,} lines: {secsb:.2f} s = {small_rate:,.0f} lines/s "
              f"(x{small_rate / one_rate:,.1f}); same ledger and report as one at a time: {agree}")
        print(f"[{label}] ratio batched ({lines:,} lines) / one at a time ({s_lines:,} lines): "
              f"x{big_rate / one_rate:,.1f}")
        ok &= agree
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=100_000, help="admit lines, and as many settle lines")
    ap.add_argument("--one-by-one", type=int, default=5_000, help="the same for the one-event comparison")
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    args = ap.parse_args()
    site = site_mod.load(ROOT / "site_configs" / "local.yaml")
    ok = True
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as d:
            count = iter(range(1_000_000))
            ok &= run(lambda: f"sqlite:///{d}/ledger{next(count)}.sqlite", "sqlite", args.lines, args.one_by_one,
                      site)
    if args.backend in ("postgres", "both"):
        import pg_harness

        with pg_harness.for_bench() as up:
            if up:
                ok &= run(pg_harness.fresh_url, "postgres", args.lines, args.one_by_one, site)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
