"""Plan a generated 10,000-step agent DAG on a large site and time it (target: under 2 s).

    python bench/plan_scale.py [--steps 10000] [--repeat 3] [--nodes 512,4096] [--no-cli]

Sites: 512 is site_configs/large-fat-tree.yaml; any other count is generated in its image
(8 GPUs per node, leaf switches of 16 nodes, spines of 8 leaves, one core). Times loading
the site (its topology), validation (jobspec model) and planning separately; then the whole
`slurmgov plan` command a user runs, end to end (a new process: start-up, reading the jobspec
file's YAML, planning, printing), with --json and with its human summary. Prints the best of
--repeat runs for each site, in one run.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from slurmgov.intent import jobspec, planner
from slurmgov.site import model as site_mod
from slurmgov.site import yamlfile

ROOT = Path(__file__).resolve().parents[1]


def generate(n: int, seed: int = 7) -> dict:
    """Waves of agent work: a CPU planner fans out to 1-GPU researchers, TP-8 generators and
    2-node leaf-switch trainers, then a CPU step fans in; each wave depends on the last."""
    rng = random.Random(seed)
    steps, prev, i = [], None, 0
    while i < n:
        head = f"s{i}"
        steps.append({"id": head, "run": "true", "after": [prev] if prev else [], "resources": {"time": 5}})
        i += 1
        width = min(rng.randint(20, 200), max(0, n - i - 1))
        wave = []
        for _ in range(width):
            r = rng.random()
            if r < 0.8:
                res, within = {"gpus": 1, "time": rng.choice([10, 20, 30])}, None
            elif r < 0.95:
                res, within = {"gpus": 8, "time": 60}, "nvlink-domain"
            else:
                res, within = {"gpus": 16, "nodes": 2, "time": 120}, "leaf-switch"
            step = {"id": f"s{i}", "run": "true", "after": [head], "resources": res, "retries": rng.choice([0, 0, 1])}
            if within:
                step["within"] = within
            steps.append(step)
            wave.append(f"s{i}")
            i += 1
        if i < n:
            steps.append({"id": f"s{i}", "run": "true", "after": wave or [head], "resources": {"time": 5}})
            prev = f"s{i}"
            i += 1
    return {"workflow": "scale", "account": "llm-pretrain", "steps": steps}


def site_doc(nodes: int) -> dict:
    """A fat tree like large-fat-tree.yaml with ``nodes`` nodes (h100 only)."""
    leaves = (nodes + 15) // 16
    spines = (leaves + 7) // 8
    sw = [{"name": f"leaf{i + 1:04d}", "nodes": f"gpu[{16 * i + 1:05d}-{min(nodes, 16 * i + 16):05d}]"}
          for i in range(leaves)]
    sw += [{"name": f"spine{j + 1:03d}", "switches": f"leaf[{8 * j + 1:04d}-{min(leaves, 8 * j + 8):04d}]"}
           for j in range(spines)]
    sw.append({"name": "core", "switches": f"spine[001-{spines:03d}]"})
    return {
        "site": f"fat-tree-{nodes}", "executor": "slurm", "gpu_types": {"h100": {"memory_gb": 80, "weight": 1.0}},
        "nodes": [{"names": f"gpu[00001-{nodes:05d}]", "gpus": 8, "gpu_type": "h100", "cpus": 112, "memory": "2T"}],
        "switches": sw,
        "partitions": [{"name": "h100", "nodes": f"gpu[00001-{nodes:05d}]", "default": True,
                        "default_time": "02:00:00", "max_time": "2-00:00:00"}],
        "accounts": {"llm-pretrain": {"budget_gpu_hours": 400000, "period": "quarterly"}},
        "ledger": "sqlite:///${SLURMGOV_HOME}/ledger.sqlite",
    }


def load_site(nodes: int):
    if nodes == 512:
        return site_mod.load(ROOT / "site_configs" / "large-fat-tree.yaml")
    return site_mod.Site.model_validate(site_doc(nodes))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--nodes", default="512,4096", help="comma-separated node counts")
    ap.add_argument("--no-cli", dest="cli", action="store_false", help="time the planner only, not `slurmgov plan`")
    args = ap.parse_args()
    try:
        counts = [int(n) for n in args.nodes.split(",")]
    except ValueError:
        ap.error(f"--nodes: {args.nodes!r} is not a list of numbers")
    if any(n < 16 for n in counts):
        ap.error("--nodes: at least 16 nodes (one leaf switch)")
    doc = generate(args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "scale.yaml"
        spec.write_text(yaml.safe_dump(doc, sort_keys=False))
        for n in counts:
            run(doc, n, args.repeat)
            if args.cli:
                cli(spec, n, args.repeat, Path(tmp))


def run(doc: dict, nodes: int, repeat: int) -> None:
    best_s = best_v = best_p = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        site = load_site(nodes)
        t0 = time.perf_counter()
        wf = jobspec.Workflow.model_validate(doc)
        t1 = time.perf_counter()
        p = planner.plan(wf, site)
        t2 = time.perf_counter()
        best_s, best_v, best_p = min(best_s, t0 - t), min(best_v, t1 - t0), min(best_p, t2 - t1)
    gpu_allocs = [a for a in p.allocations if a.kind == "gpu"]
    print(f"site {site.site}: {len(site.topology.nodes)} nodes (loaded in {best_s:.3f} s); "
          f"workflow: {len(wf.steps)} steps")
    print(f"allocations: {len(gpu_allocs)} Slurm jobs for {sum(1 for s in p.steps.values() if s.gpus)} GPU steps "
          f"({sum(1 for s in p.steps.values() if s.gpus) / max(1, len(gpu_allocs)):.1f} steps per job)")
    print(f"worst case: {p.cost_h:,.0f} GPU-h, makespan {p.makespan_s / 3600:.1f} h")
    print(f"validate: {best_v:.3f} s   plan: {best_p:.3f} s   total: {best_v + best_p:.3f} s   "
          f"(target < 2 s: {(best_v + best_p) / 2:.2f} of the target)\n")


def cli(spec: Path, nodes: int, repeat: int, tmp: Path) -> None:
    """`slurmgov plan` as a user runs it, in a new process each time, with and without --json."""
    if nodes == 512:
        site = ROOT / "site_configs" / "large-fat-tree.yaml"
    else:
        site = tmp / f"site-{nodes}.yaml"
        site.write_text(yaml.safe_dump(site_doc(nodes), sort_keys=False))
    exe = [sys.executable, "-m", "slurmgov.interface.cli", "plan", str(spec), "--site", str(site)]
    size_kb = spec.stat().st_size / 1024
    results = []
    for label, extra in (("--json", ["--json"]), ("human", [])):
        best, printed = float("inf"), 0
        for _ in range(repeat):
            t = time.perf_counter()
            proc = subprocess.run(exe + extra, capture_output=True, check=False)
            best = min(best, time.perf_counter() - t)
            if proc.returncode:
                sys.exit(f"slurmgov plan failed ({proc.returncode}): {proc.stderr.decode().strip()}")
            printed = len(proc.stdout)
        results.append(best)
        print(f"CLI slurmgov plan {label}: {best:.3f} s end to end, {printed / 1024:,.0f} KB printed")
    loader = "LibYAML" if yamlfile.LIBYAML else "pure-Python PyYAML (no LibYAML)"
    print(f"CLI: jobspec {size_kb:,.0f} KB read with {loader}; slowest {max(results):.3f} s "
          f"(target < 2 s: {max(results) / 2:.2f} of the target)\n")


if __name__ == "__main__":
    main()
