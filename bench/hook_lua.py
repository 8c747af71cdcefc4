"""The submit hook's own Lua cost per submission, two versions side by side, outside slurmctld.

    python bench/hook_lua.py                       # this checkout's hook vs the one at --base
    python bench/hook_lua.py --base 96a5489 --accounts 10000 --submissions 5000
    python bench/hook_lua.py --base 9b95ba7 --users 10000   # what enforcing per-user caps costs

Each version runs under plain lua5.1 (a stub ``slurm`` table, as tests/lua/hook_driver.lua
does) in its own scratch directory with the same snapshot (N accounts) and an empty journal,
and admits --submissions held GPU jobs one after another (each appends its admit line, which
the next one reads back, as in slurmctld). Rounds alternate A B B A; the printed ratio is of the
median microseconds per submission. This is the hook's share only: slurmctld's job_submit/lua
adds its own cost around every call (bench/hook_overhead.py measures the whole).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LOOP = r"""
slurm = { SUCCESS = 0, ERROR = -1, log_user = function() end, log_info = function() end,
          log_error = function() end, log_debug = function() end, log_verbose = function() end }
dofile(arg[1])
local n, accounts = tonumber(arg[2]), tonumber(arg[3])
local parts = { gpu = { name = "gpu", default_time = 30, max_time = 1440, flag_default = 1, max_share = 1 } }
local t0 = os.clock()
for i = 1, n do
  local d = { account = "acct" .. (i % accounts), user_id = 1000, partition = "gpu",
              tres_per_node = "gres:gpu:h100:1", time_limit = 10, min_nodes = 1, max_nodes = 1 }
  local rc = slurm_job_submit(d, parts, 1000)
  if rc ~= 0 then error("submission " .. i .. " refused") end
end
io.write(string.format("%.3f\n", (os.clock() - t0) / n * 1e6))
"""


def snapshot(accounts: int, users: int = 0) -> str:
    lines = ["slurmgov-snapshot\t1", f"serial\t{int(time.time() * 1000)}", f"written\t{int(time.time())}",
             "max_age_s\t86400", "fail_policy\tclosed", "default_time_min\t60", "max_gpus_per_node\t4",
             "default_weight\t1", "weight\th100\t1"]
    lines += [f"account\tacct{i}\t1e12" for i in range(accounts)]
    # capped users: the submitter (uid 1000) in the first ``users`` accounts (a hook from before
    # user lines ignores them: the ratio is then what enforcing the caps costs)
    lines += [f"user\tacct{i}\t1000\t1e12\t1e12" for i in range(min(users, accounts))]
    return "\n".join(lines + ["end"]) + "\n"


def run_once(hook_text: str, snap: str, n: int, accounts: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "job_submit.lua").write_text(hook_text)
        (Path(d) / "slurmgov_snapshot.txt").write_text(snap)
        (Path(d) / "loop.lua").write_text(LOOP)
        p = subprocess.run(["lua5.1", str(Path(d) / "loop.lua"), str(Path(d) / "job_submit.lua"), str(n),
                            str(accounts)], capture_output=True, text=True, timeout=600, check=False)
        if p.returncode != 0:
            sys.exit(f"lua5.1 failed: {p.stderr.strip()[-500:]}")
        return float(p.stdout.strip())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="96a5489", help="git revision whose plugins/job_submit.lua is version A")
    ap.add_argument("--accounts", type=int, default=10000)
    ap.add_argument("--submissions", type=int, default=3000)
    ap.add_argument("--users", type=int, default=0, help="capped users (snapshot user lines)")
    ap.add_argument("--rounds", type=int, default=3, help="ABBA rounds")
    args = ap.parse_args()
    base = subprocess.run(["git", "show", f"{args.base}:plugins/job_submit.lua"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    head = (ROOT / "plugins" / "job_submit.lua").read_text()
    snap = snapshot(args.accounts, args.users)
    a: list[float] = []
    b: list[float] = []
    for _ in range(args.rounds):
        a.append(run_once(base, snap, args.submissions, args.accounts))
        b.append(run_once(head, snap, args.submissions, args.accounts))
        b.append(run_once(head, snap, args.submissions, args.accounts))
        a.append(run_once(base, snap, args.submissions, args.accounts))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{args.accounts:,} accounts, {args.users:,} capped users, {args.submissions:,} submissions per run, "
          f"{args.rounds} ABBA rounds")
    print(f"  {args.base}: {ma:.1f} us/submission (runs {', '.join(f'{x:.1f}' for x in a)})")
    print(f"  this checkout: {mb:.1f} us/submission (runs {', '.join(f'{x:.1f}' for x in b)})")
    print(f"  this checkout / {args.base}: x{mb / ma:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
