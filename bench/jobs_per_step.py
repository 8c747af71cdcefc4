"""Pilot allocations vs one Slurm job per step, on the real test cluster; per-step overhead.

    sudo python bench/jobs_per_step.py [--steps 200] [--seconds 0.5] [--chain 40]

Starts the test harness's Slurm 22.05 (4 nodes x 4 fake h100, root on Debian), installs the
hooks and runs the governor, then measures side by side in one run:

  wide DAG   --steps independent 1-GPU steps, each `sleep --seconds`:
             pilot  - `slurmgov run` (the planner packs them into pilot jobs running Dask workers)
             1:1    - one `sbatch --wrap 'sleep S'` per step (through the same hook)
             Slurm jobs used and makespan (first submission to last job end) for each.
  chain      --chain 1-GPU no-op steps, each after the previous, in one pilot: the gap between
             one step's end and the next one's start on the worker is the per-step scheduling
             overhead inside an allocation (engine + Dask round trip). Target < 20 ms.

Targets (issue 4): >= 10x fewer Slurm jobs with no worse makespan; overhead < 20 ms per step.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from slurm_harness import can_run, start_cluster  # noqa: E402

BIN = Path(sys.executable).parent
SITE = ROOT / "site_configs" / "demo-cluster.yaml"


def wide_spec(steps: int, seconds: float) -> str:
    lines = ["workflow: wide-agents", "account: chem-ai", "steps:"]
    for i in range(steps):
        lines.append(f"  - {{id: s{i:04d}, run: 'sleep {seconds}', resources: {{gpus: 1, gpu_type: h100, time: '00:05:00'}}}}")
    return "\n".join(lines) + "\n"


def chain_spec(n: int) -> str:
    lines = ["workflow: chain", "account: chem-ai", "steps:"]
    for i in range(n):
        after = f", after: [c{i - 1:03d}]" if i else ""
        lines.append(f"  - {{id: c{i:03d}, call: 'slurmgov.execution.demo_steps:noop'{after}, "
                     f"resources: {{gpus: 1, gpu_type: h100, time: '00:05:00'}}}}")
    return "\n".join(lines) + "\n"


def run_workflow(env, path: Path) -> tuple[dict, float]:
    t = time.time()
    p = subprocess.run([str(BIN / "slurmgov"), "run", str(path), "--json"], env=env, capture_output=True, text=True,
                       timeout=900)
    wall = time.time() - t
    if p.returncode != 0:
        sys.exit(f"jobs_per_step: slurmgov run {path.name} failed: {p.stderr.strip()[-500:]}")
    return json.loads(p.stdout), wall


def record(env, run_id: str) -> dict:
    return json.loads((Path(env["SLURMGOV_HOME"]) / "runs" / f"{run_id}.json").read_text())



def one_job_per_step(c, steps: int, seconds: float) -> tuple[list[str], float, float]:
    """Submit every step as its own job; return job ids, submit-to-last-end makespan (wall) and submit time."""
    t0 = time.time()
    ids = []
    for _ in range(steps):
        p = c.sbatch(["-A", "chem-ai", "--gpus-per-node=h100:1", "-t", "5", "-J", "one-step", "--wrap", f"sleep {seconds}"])
        ids.append(c.job_id(p))
    submit_s = time.time() - t0
    deadline = time.time() + 900
    while c.run("squeue", "-h", "-n", "one-step", "-o", "%i", timeout=30).stdout.strip():
        if time.time() > deadline:
            sys.exit("jobs_per_step: one-job-per-step jobs still queued after 900 s")
        time.sleep(0.2)
    return ids, time.time() - t0, submit_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--chain", type=int, default=40)
    args = ap.parse_args()
    if args.steps < 1 or args.chain < 2 or args.seconds < 0:
        sys.exit("jobs_per_step: --steps >= 1, --chain >= 2, --seconds >= 0")
    ok, why = can_run()
    if not ok:
        sys.exit(f"jobs_per_step: cannot start Slurm here: {why}")
    with tempfile.TemporaryDirectory() as d:
        c = start_cluster(Path(d) / "slurm")
        env = {**c.env, "SLURMGOV_HOME": str(Path(d) / "home"), "SLURMGOV_SITE": str(SITE)}
        gov = None
        try:
            subprocess.run([str(BIN / "slurmgov"), "hooks", "install", "--slurm-conf-dir", str(c.conf_dir)], env=env,
                           check=True, capture_output=True)
            gov = subprocess.Popen([str(BIN / "slurmgov"), "governor", "--slurm-conf-dir", str(c.conf_dir),
                                    "--interval", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.5)
            wide = Path(d) / "wide.yaml"
            wide.write_text(wide_spec(args.steps, args.seconds))
            chain = Path(d) / "chain.yaml"
            chain.write_text(chain_spec(args.chain))

            # 1. the pilot run of the wide DAG
            rep, pilot_wall = run_workflow(env, wide)
            pilot_jobs = [j for a in rep["allocations"].values() for j in a["job_ids"]]
            rec = record(env, rep["run_id"])
            pilot_makespan = rec["ended"] - rec["started"]
            # 2. the same steps, one job each
            one_ids, one_makespan, submit_s = one_job_per_step(c, args.steps, args.seconds)
            failed = [s for s in sacct_states(c, one_ids) if s != "COMPLETED"]
            # 3. the chain: per-step overhead inside one allocation
            crep, _ = run_workflow(env, chain)
            crec = record(env, crep["run_id"])
            att = [crec["steps"][f"c{i:03d}"]["attempts"][-1] for i in range(args.chain)]
            gaps = [(b["started"] - a["ended"]) * 1000 for a, b in zip(att, att[1:])]
        finally:
            if gov is not None:
                gov.send_signal(signal.SIGINT)
                try:
                    gov.wait(15)
                except subprocess.TimeoutExpired:
                    gov.kill()
            c.stop()
    ideal = args.steps * args.seconds / 16
    print(f"wide DAG: {args.steps} independent 1-GPU steps of {args.seconds} s on 4 nodes x 4 GPUs "
          f"(ideal makespan {ideal:.1f} s)")
    print(f"  pilot (slurmgov run): {len(pilot_jobs)} Slurm job(s), makespan {pilot_makespan:.1f} s "
          f"(the whole command {pilot_wall:.1f} s, including planning and sacct settlement)")
    print(f"  one job per step:     {len(one_ids)} Slurm jobs, makespan {one_makespan:.1f} s "
          f"(sbatch x{args.steps} took {submit_s:.1f} s){'; NOT COMPLETED: ' + str(len(failed)) if failed else ''}")
    print(f"  jobs: {len(one_ids) / max(1, len(pilot_jobs)):.0f}x fewer (target >= 10x); "
          f"makespan pilot / one-per-step = {pilot_makespan / one_makespan:.2f} (target <= 1)")
    print(f"chain of {args.chain} no-op steps in one allocation: per-step overhead median {statistics.median(gaps):.1f} ms, "
          f"mean {statistics.mean(gaps):.1f} ms, p90 {sorted(gaps)[int(0.9 * (len(gaps) - 1))]:.1f} ms, "
          f"max {max(gaps):.1f} ms (target < 20 ms)")


def sacct_states(c, job_ids: list[str]) -> list[str]:
    data = json.loads(c.run("sacct", "--json", "-a", "-j", ",".join(job_ids), check=True, timeout=120).stdout)
    return [j["state"]["current"] for j in data["jobs"]]


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "200")
    main()
