"""sbatch throughput with the slurmgov submit hook vs the same slurmctld without it.

    sudo python bench/hook_overhead.py [--jobs 300] [--rounds 3] [--accounts 1000]

Starts the test harness's real Slurm 22.05 (root on Debian), writes a snapshot with
--accounts accounts, and submits --jobs held GPU jobs per round from 4 threads under three
configurations, interleaved round by round so drift in the machine hits all of them alike:
  none  - JobSubmitPlugins unset (scontrol reconfigure)
  noop  - job_submit.lua that admits everything (the cost of Lua itself)
  hook  - plugins/job_submit.lua with the snapshot
Prints jobs/s (median of rounds) and hook/none, hook/noop ratios (target >= 0.9).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from slurm_harness import can_run, start_cluster  # noqa: E402

NOOP = "function slurm_job_submit(job_desc, part_list, submit_uid) return slurm.SUCCESS end\n" \
       "function slurm_job_modify(job_desc, job_rec, part_list, modify_uid) return slurm.SUCCESS end\n"


def snapshot(accounts: int) -> str:
    lines = ["slurmgov-snapshot\t1", f"serial\t{int(time.time() * 1000)}", f"written\t{int(time.time())}",
             "max_age_s\t86400", "fail_policy\tclosed", "default_time_min\t60", "max_gpus_per_node\t4",
             "default_weight\t1", "weight\th100\t1"]
    lines += [f"account\tacct{i:05d}\t{1e6:.3f}" for i in range(accounts)]
    lines += [f"account\t{a}\t1e12" for a in ("chem-ai", "bio-ml", "physics")]
    return "\n".join(lines) + "\nend\n"


def set_mode(c, mode: str, hook_src: str) -> None:
    conf = c.slurm_conf.read_text()
    want = "JobSubmitPlugins=lua" if mode != "none" else "#JobSubmitPlugins=lua"
    conf = conf.replace("#JobSubmitPlugins=lua", "JobSubmitPlugins=lua").replace("JobSubmitPlugins=lua", want)
    c.slurm_conf.write_text(conf)
    (c.conf_dir / "job_submit.lua").write_text(NOOP if mode == "noop" else hook_src)
    time.sleep(1.1)  # slurmctld reloads the script when its mtime (in seconds) changes
    c.run("scontrol", "reconfigure", check=True)
    time.sleep(1.0)


def round_jobs_per_s(c, jobs: int) -> float:
    def one(_):
        p = c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "10", "--wrap", "true"])
        if p.returncode != 0:
            raise RuntimeError(p.stderr.strip())

    t = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(jobs)))
    rate = jobs / (time.perf_counter() - t)
    c.cancel_all(timeout=60)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--accounts", type=int, default=1000)
    args = ap.parse_args()
    ok, why = can_run()
    if not ok:
        sys.exit(f"hook_overhead: cannot start Slurm here: {why}")
    hook_src = (ROOT / "plugins" / "job_submit.lua").read_text()
    with tempfile.TemporaryDirectory() as d:
        c = start_cluster(d)
        try:
            c.snapshot_path.write_text(snapshot(args.accounts))
            rates: dict[str, list[float]] = {"none": [], "noop": [], "hook": []}
            for r in range(args.rounds):
                for mode in rates:
                    set_mode(c, mode, hook_src)
                    rates[mode].append(round_jobs_per_s(c, args.jobs))
                print(f"round {r + 1}: " + "  ".join(f"{m} {v[-1]:.1f} jobs/s" for m, v in rates.items()), flush=True)
            med = {m: statistics.median(v) for m, v in rates.items()}
            admitted = sum(1 for ln in c.journal_path.read_text().splitlines() if ln.startswith("admit"))
        finally:
            c.stop()
    print(f"snapshot: {args.accounts} accounts; {args.jobs} held 1-GPU jobs per round from 4 threads, {args.rounds} rounds")
    print(f"median sbatch throughput: none {med['none']:.1f}/s, noop Lua {med['noop']:.1f}/s, slurmgov hook {med['hook']:.1f}/s")
    print(f"hook / none = {med['hook'] / med['none']:.3f}   hook / noop = {med['hook'] / med['noop']:.3f}   (target >= 0.9)")
    print(f"journal lines written by the hook: {admitted} (expected {args.jobs * args.rounds})")


if __name__ == "__main__":
    main()
