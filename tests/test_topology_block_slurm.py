"""NVLink domains as Slurm 23.11+ sees them (topology/block), on real 24.11 and 26.05 clusters.

Each release's cluster (tests/slurm_harness.py, topology "block") has two blocks of two nodes,
nvl1 = gpu[01-02] and nvl2 = gpu[03-04], BlockSizes=2. What a site does with it, end to end:
`slurmgov topology import` writes the blocks into the site file as its NVLink domains; the
planner asks `--segment=2` for a two-node step that must stay inside one, which that release's
sbatch takes and slurmctld places inside one block; the run's report reads the block it landed
in; and a step wider than any block is refused before anything queues. Whatever SLURMGOV_SLURM
says, these run on 24.11 and 26.05 (22.05 has no topology/block); under CI=true they never skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import slurm_release
from helpers import governing
from slurm_harness import HarnessError, can_run, start_cluster

from slurmgov.site.model import Site

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BIN = Path(sys.executable).parent
BLOCKS = {"nvl1": ["gpu01", "gpu02"], "nvl2": ["gpu03", "gpu04"]}

STEP = """workflow: nvl-train
account: physics
description: a tensor-parallel step over two nodes that must share one NVLink domain
steps:
  - id: tp
    call: slurmgov.execution.demo_steps:finetune
    params: {{steps: 5}}
    within: nvlink-domain
    resources: {{gpus: {gpus}, nodes: {nodes}, gpu_type: h100, cpus: 2, memory: 1G, time: "00:10:00"}}
"""


@pytest.fixture(scope="module", params=["24.11", "26.05"])
def block_cluster(request, tmp_path_factory):
    ok, why = can_run()
    if not ok:
        (pytest.fail if os.environ.get("CI", "").lower() in ("1", "true", "yes") else pytest.skip)(why)
    try:
        c = start_cluster(tmp_path_factory.mktemp(f"slurm-block-{request.param}"), timeout=120,
                          release=request.param, topology="block")
    except (HarnessError, slurm_release.ReleaseError) as e:
        pytest.fail(f"Slurm {request.param} cluster with topology/block did not start: {e}", pytrace=False)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def governed(block_cluster, tmp_path_factory):
    """The site file imported from the running cluster's own configuration (plus budgets), the
    hooks installed, and a governor keeping the snapshot fresh and settling jobs."""
    c = block_cluster
    home = tmp_path_factory.mktemp("sg-home-block")
    site_path = home / "site.yaml"
    env = {**c.env, "SLURMGOV_HOME": str(home), "SLURMGOV_SITE": str(site_path), "COLUMNS": "200"}
    imp = subprocess.run([str(BIN / "slurmgov"), "topology", "import", "--slurm-conf-dir", str(c.conf_dir),
                          "-o", str(site_path)], env=env, capture_output=True, text=True, timeout=60)
    assert imp.returncode == 0, imp.stderr
    text = site_path.read_text().replace("accounts: {}", "accounts:\n  physics: {budget_gpu_hours: 50}")
    assert "accounts:\n  physics:" in text, text
    site_path.write_text(text)
    with governing(c, env):
        yield c, env, site_path


def sg(env, c, *args, check=0, timeout=300):
    p = subprocess.run([str(BIN / "slurmgov"), *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=timeout, cwd=c.work_dir)
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    assert check is None or p.returncode == check, p.stderr + p.stdout[-3000:]
    return p


def test_topology_import_reads_slurms_blocks(governed):
    c, _, site_path = governed
    site = Site.model_validate(__import__("yaml").safe_load(site_path.read_text()))
    assert site.nvlink_blocks and site.block_sizes == (2,)
    assert {d.name: d.nodes for d in site.nvlink_domains} == {"nvl1": "gpu[01-02]", "nvl2": "gpu[03-04]"}
    assert site.topology.domains == {**BLOCKS}  # GPU nodes are all in a block: no one-node domains
    shown = c.run("scontrol", "show", "topology", check=True).stdout  # the running controller agrees
    assert "BlockName=nvl1" in shown and "BlockName=nvl2" in shown


def test_a_two_node_nvlink_step_runs_inside_one_block(governed, tmp_path):
    c, env, _ = governed
    spec = tmp_path / "nvl.yaml"
    spec.write_text(STEP.format(gpus=8, nodes=2))
    plan = json.loads(sg(env, c, "plan", spec, "--json").stdout)
    [alloc] = [a for a in plan["allocations"] if a["kind"] == "gpu"]
    assert "--segment=2" in alloc["slurm_options"] and not any(o.startswith("--constraint") for o in alloc["slurm_options"])
    rep = json.loads(sg(env, c, "run", spec, "--json").stdout)
    assert rep["status"] == "ok", rep["steps"]
    [a] = [a for a in rep["allocations"].values() if a["job_ids"]]
    assert sorted(a["nodes"]) in BLOCKS.values(), a  # Slurm kept the segment inside one block
    assert a["requested"] == "nvlink-domain" and a["achieved"] == "nvlink-domain" and a["locality_ok"], a
    # what sacct says the job ran on, read apart from slurmgov
    data = json.loads(c.run("sacct", "--json", "-a", "-j", a["job_ids"][0], check=True).stdout)
    [job] = [j for j in data["jobs"] if str(j["job_id"]) == a["job_ids"][0]]
    assert job["nodes"] in ("gpu[01-02]", "gpu[03-04]"), job["nodes"]


def test_a_step_wider_than_any_block_is_refused_before_anything_queues(governed, tmp_path):
    c, env, _ = governed
    spec = tmp_path / "wide.yaml"
    spec.write_text(STEP.format(gpus=12, nodes=3))
    before = c.run("sacct", "-a", "-n", "-X", "-P", "-o", "JobID", check=True).stdout.split()
    p = sg(env, c, "run", spec, check=3)
    assert p.stderr.strip().endswith("step 'tp': needs 12 GPUs in one NVLink domain; the largest NVLink domain "
                                     "in partition gpu has 8 h100"), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert c.run("sacct", "-a", "-n", "-X", "-P", "-o", "JobID", check=True).stdout.split() == before
