"""`slurmgov usage --format parquet` on 1,000,000 recorded jobs; target: under 10 s.

    .venv/bin/python bench/report_scale.py                      # SQLite and PostgreSQL (if it can start)
    .venv/bin/python bench/report_scale.py --backend sqlite --jobs 200000

Records ``--jobs`` charges (workflow runs of 4 steps each, one hold per run, over a year, many
accounts, users and workflows) with the ledger's bulk imports, then times the real command,
``slurmgov usage --by {account,user,workflow} --format parquet -o FILE``, as a subprocess whose
site file (SLURMGOV_SITE) names the bench's ledger, and checks the file against the ledger.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from slurmgov.ledger.store import Ledger  # noqa: E402

TARGET_S = 10.0
START = 1_748_736_000  # 2025-06-01: a year of charges
YEAR_S = 365 * 86400
STEPS = ("prep", "train", "eval", "export")
ACCOUNTS = [f"acct{i:02d}" for i in range(40)]
BY = ("account", "user", "workflow")


def rows(n: int, seed: int = 11):
    """(holds, charges) for ``n`` charges, 4 steps to a hold, deterministic for ``seed``."""
    rnd = random.Random(seed)
    holds, charges = [], []
    for run in range((n + len(STEPS) - 1) // len(STEPS)):
        key, account = f"wf:run{run}", rnd.choice(ACCOUNTS)
        user, workflow = f"user{rnd.randrange(2000)}", f"wf{rnd.randrange(500)}"
        t0 = START + rnd.randrange(YEAR_S)
        holds.append((key, account, workflow, {s: 8.0 for s in STEPS}, user, f"run{run}", t0))
        for k, step in enumerate(STEPS[:n - len(charges)]):
            gpu_s = rnd.randint(60, 8 * 3600)
            charges.append(dict(charge_key=f"{key}:{step}:1", hold_key=key, step=step, attempt=1,
                                gpu_seconds=gpu_s, weight=rnd.choice((1.0, 0.5, 2.0)),
                                gpu_type=rnd.choice(("h100", "a100", "l4")), started=t0 + k * 9000,
                                ended=t0 + k * 9000 + 3600, status="completed"))
    return holds, charges


def site_file(where: Path, url: str) -> Path:
    """The local site description with its ``ledger:`` line pointing at ``url``."""
    text = (ROOT / "site_configs" / "local.yaml").read_text()
    lines = [f"ledger: {url}" if ln.startswith("ledger:") else ln for ln in text.splitlines()]
    path = where / "site.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def time_cli(home: Path, site: Path, by: str) -> tuple[float, Path]:
    out = home / f"usage-{by}.parquet"
    env = {**os.environ, "SLURMGOV_HOME": str(home), "SLURMGOV_SITE": str(site)}
    env.pop("SLURMGOV_LEDGER", None)
    exe = Path(sys.executable).parent / "slurmgov"
    t = time.perf_counter()
    p = subprocess.run([str(exe), "usage", "--by", by, "--format", "parquet", "-o", str(out)],
                       capture_output=True, text=True, env=env)
    took = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"slurmgov usage --by {by} failed (rc {p.returncode}): {p.stderr.strip()[-500:]}")
    return took, out


def check(path: Path, by: str, charges: list[dict]) -> bool:
    """The file's charge counts and GPU-seconds match the rows recorded."""
    import pandas as pd

    frame = pd.read_parquet(path)
    return int(frame["charges"].sum()) == len(charges) and \
        abs(float(frame["gpu_seconds"].sum()) - sum(c["gpu_seconds"] for c in charges)) < 1e-6 * len(charges)


def run(url: str, label: str, n: int, home: Path, site_url: str | None = None) -> None:
    holds, charges = rows(n)
    with Ledger.open(url) as ledger:
        for a in ACCOUNTS:
            ledger.ensure_account(a, 10_000_000.0, "none")
        t = time.perf_counter()
        ledger.import_holds(holds)
        new = ledger.import_charges(charges)
        print(f"[{label}] recorded {new:,} charges ({len(holds):,} holds) in {time.perf_counter() - t:.1f} s "
              f"with the bulk imports")
        t = time.perf_counter()
        again = ledger.import_charges(charges)
        print(f"[{label}] import replayed: {again} new in {time.perf_counter() - t:.1f} s")
    site = site_file(home, site_url or url)
    for by in BY:
        took, out = time_cli(home, site, by)
        verdict = "MEETS" if took < TARGET_S else "MISSES"
        ok = "matches the ledger" if check(out, by, charges) else "DOES NOT MATCH the ledger"
        print(f"[{label}] slurmgov usage --by {by} --format parquet: {took:.2f} s ({verdict} the "
              f"{TARGET_S:g} s target); file {ok}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    args = ap.parse_args()
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as d:
            # the site file's own default form: sqlite:///${SLURMGOV_HOME}/ledger.sqlite
            run(f"sqlite:///{d}/ledger.sqlite", "sqlite", args.jobs, Path(d),
                "sqlite:///${SLURMGOV_HOME}/ledger.sqlite")
    if args.backend in ("postgres", "both"):
        run_postgres(args.jobs)
    return 0


def run_postgres(n: int) -> None:
    import pg_harness

    with pg_harness.for_bench() as up:
        if up:
            with tempfile.TemporaryDirectory() as d:
                run(pg_harness.fresh_url(), "postgres", n, Path(d))


if __name__ == "__main__":
    sys.exit(main())
