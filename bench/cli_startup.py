"""How long `slurmgov` takes to answer: this checkout against another one, side by side in one run.

    .venv/bin/python bench/cli_startup.py --base /tmp/base            # a worktree of the commit to compare
    .venv/bin/python bench/cli_startup.py --base /tmp/base --rounds 15

Each command line below runs --rounds times for each checkout, the two checkouts in turn (ABBA), as
`python -m slurmgov.interface.cli ...` with PYTHONPATH set to the checkout, in a fresh interpreter,
the way a user's shell starts it. Bytecode caching is on (as in an installed package: the
environment's PYTHONDONTWRITEBYTECODE is dropped for the children) and each line runs once per
checkout before timing, so neither pays for compiling. Prints each line's median wall time per
checkout and this/base; below 1 is faster.

What is timed: `--version`; shell completion of the command names (what bash runs at each TAB
after `slurmgov `) and of a subcommand (`slurmgov budget s<TAB>`); `budget show --json` on a ledger
in a scratch $SLURMGOV_HOME (seeded by the warm-up run); `plan` of a shipped jobspec.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "site_configs" / "local.yaml"


def lines() -> dict[str, tuple[list[str], dict[str, str]]]:
    complete = {"_SLURMGOV_COMPLETE": "bash_complete"}
    return {
        "--version": (["--version"], {}),
        "complete `slurmgov <TAB>`": ([], {**complete, "COMP_WORDS": "slurmgov ", "COMP_CWORD": "1"}),
        "complete `budget s<TAB>`": ([], {**complete, "COMP_WORDS": "slurmgov budget s", "COMP_CWORD": "2"}),
        "budget show --json": (["budget", "show", "--json", "--site", str(SITE)], {}),
        "plan research-fanout": (["plan", str(ROOT / "jobspecs" / "research-fanout.yaml"), "--site", str(SITE), "--json"],
                                 {}),
    }


def once(code: Path, args: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "slurmgov.interface.cli", *args], env=env, cwd=code,
                       capture_output=True, text=True, timeout=120, check=False)
    took = time.perf_counter() - t
    if p.returncode != 0 or "Traceback" in p.stderr:
        raise SystemExit(f"{code}: slurmgov {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()[-300:]}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="the checkout to compare with (a git worktree)")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    if not (args.base / "slurmgov" / "interface" / "cli.py").is_file():
        print(f"--base {args.base}: not a slurmgov checkout (no slurmgov/interface/cli.py)", file=sys.stderr)
        return 2
    codes = {"this": ROOT, "base": args.base.resolve()}
    with tempfile.TemporaryDirectory() as home:
        base_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        envs = {name: {**base_env, "PYTHONPATH": str(code), "SLURMGOV_HOME": f"{home}/{name}"}
                for name, code in codes.items()}
        times: dict[tuple[str, str], list[float]] = {}
        for label, (argv, extra) in lines().items():
            for name, code in codes.items():
                once(code, argv, {**envs[name], **extra})  # warm: bytecode written, ledger seeded
            for r in range(args.rounds):
                order = ("this", "base") if r % 2 == 0 else ("base", "this")
                for name in order:
                    times.setdefault((label, name), []).append(once(codes[name], argv, {**envs[name], **extra}))
    print(f"{'command':32s} {'this (s)':>9s} {'base (s)':>9s} {'this/base':>9s}   ({args.rounds} rounds, medians)")
    for label in lines():
        a, b = statistics.median(times[label, "this"]), statistics.median(times[label, "base"])
        print(f"{label:32s} {a:9.3f} {b:9.3f} {a / b:9.2f}")
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
