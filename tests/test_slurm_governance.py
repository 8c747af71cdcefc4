"""Budgets governed end to end inside a real Slurm: hooks installed by `slurmgov hooks install`,
jobs submitted with sbatch and gsbatch, settled from jobcomp by `slurmgov sync`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from helpers import governor_sees_final, settled, wait_for

from slurmgov.site import model as site_mod
from slurmgov.slurm import snapshot

pytestmark = pytest.mark.slurm
BIN = Path(sys.executable).parent


def test_admit_run_settle_and_refuse(gov):
    c, sg, gsbatch, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    snap = snapshot.read(c.snapshot_path)
    assert snap.available_gpu_s["physics"] == pytest.approx(3600)
    # gsbatch: the cost first, then sbatch's own output and exit status
    p = gsbatch("-A", "physics", "--gres=gpu:h100:2", "-t", "10", "--parsable", "--wrap", "sleep 2")
    assert p.returncode == 0, p.stderr
    assert ("this job may use up to 0.33 GPU-h (1200.000 weighted GPU-s: 2 GPU(s) x 10 min); "
            "account physics has 1.00 GPU-h left") in p.stderr
    job = p.stdout.strip().split(";")[0]
    assert c.wait_job(job, ("COMPLETED",), timeout=30) == "COMPLETED"
    # an over-budget sbatch is refused by slurmctld itself with one line
    over = c.sbatch(["-A", "physics", "--gres=gpu:h100:4", "-t", "60", "--wrap", "true"])
    assert over.returncode == 1 and "account physics" in over.stderr and "GPU-h" in over.stderr
    # settlement: the job's real GPU-seconds, from jobcomp, once
    wait_for(lambda: len(settled(c)) >= 1)
    # journals only here: reconciliation with sacct has its own test below
    rep = json.loads(sg("sync", "--slurm-conf-dir", c.conf_dir, "--no-reconcile", "--json").stdout)
    assert rep["admitted"] == 1 and rep["settled"] == 1 and not rep["problems"]
    b = ledger.balance("physics")
    (charge,) = [c for c in ledger.charges() if c["account"] == "physics"]
    assert b.held_h == 0 and 2 * 2 <= charge["gpu_seconds"] <= 2 * 10
    assert b.charged_h == pytest.approx(charge["gpu_seconds"] / 3600, abs=1e-6)
    sg("sync", "--slurm-conf-dir", c.conf_dir, "--no-reconcile")  # a second pass changes nothing
    assert ledger.balance("physics") == b
    assert snapshot.read(c.snapshot_path).available_gpu_s["physics"] == pytest.approx(b.available_h * 3600, abs=0.01)


def test_burst_cannot_overspend_across_a_sync(gov):
    c, sg, gsbatch, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    cost = 2 * 10 * 60  # 2 GPUs x 10 min, weighted GPU-seconds
    fits = int(3600 // cost)  # 3 jobs of 0.33 GPU-h in 1 GPU-h
    ok = [c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:2", "-t", "10", "--wrap", "true"]).returncode == 0
          for _ in range(fits + 2)]
    assert ok == [True] * fits + [False, False]
    # the governor takes the admissions into the ledger; the hook keeps refusing after the new snapshot
    rep = json.loads(sg("sync", "--slurm-conf-dir", c.conf_dir, "--no-reconcile", "--json").stdout)
    assert rep["admitted"] == fits
    assert rep["refused"] == {"over_budget": 2}  # the hook's refusals, counted by reason for the metrics
    assert ledger.balance("physics").held_h == pytest.approx(fits * cost / 3600)
    assert snapshot.read(c.snapshot_path).journal_offset == c.journal_path.stat().st_size
    assert c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:2", "-t", "10", "--wrap", "true"]).returncode == 1
    # jobs cancelled while pending release their holds and cost nothing
    c.cancel_all()
    wait_for(lambda: len(settled(c)) >= fits)
    sg("sync", "--slurm-conf-dir", c.conf_dir, "--no-reconcile")
    b = ledger.balance("physics")
    assert (b.held_h, b.charged_h, b.available_h) == (0, 0, pytest.approx(1.0))
    assert c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:2", "-t", "10", "--wrap", "true"]).returncode == 0


def test_reconcile_settles_lost_lines_and_releases_orphans(gov):
    c, sg, gsbatch, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    run = c.sbatch(["-A", "physics", "--gres=gpu:h100:1", "-t", "5", "--parsable", "--wrap", "sleep 1"])
    job = run.stdout.strip().split(";")[0]
    assert c.wait_job(job, ("COMPLETED",), timeout=30) == "COMPLETED"
    wait_for(lambda: any(f"\t{job}\t" in ln for ln in settled(c)))
    c.settle_path.write_text("")  # the settle line is lost (jobcomp's file gone with a disk, say)
    # (slurmdbd takes a moment to show the end: a pass before that bills it the next time)
    wait_for(lambda: governor_sees_final(c, job))
    # admitted by the hook, then rejected by slurmctld (no such partition): no job, no settle line
    bad = c.sbatch(["-A", "physics", "-p", "nosuch", "--gres=gpu:h100:1", "-t", "5", "--wrap", "true"])
    assert bad.returncode != 0
    # a pending job's hold must survive the orphan sweep
    pending = c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "5", "--parsable", "--wrap", "true"])
    assert pending.returncode == 0
    rep = json.loads(sg("sync", "--slurm-conf-dir", c.conf_dir, "--grace", "0", "--json").stdout)
    mine = [d for d in rep["drift"] if d.startswith(f"job {job}:") or "released" in d]
    assert any(d.startswith(f"job {job}: no settle line; settled from sacct") for d in mine), \
        (job, [d for d in rep["drift"] if job in d or "released" in d], rep["problems"])
    assert sum("released" in d for d in mine) == 1  # the rejected job's hold, not the pending one
    (charge,) = [ch for ch in ledger.charges() if ch["charge_key"].startswith(f"slurm:job:{job}@")]
    assert 1 <= charge["gpu_seconds"] <= 10  # 1 GPU x its elapsed seconds, from sacct
    assert ledger.balance("physics").held_h == pytest.approx(5 / 60)  # only the pending job's 1 GPU x 5 min
    again = json.loads(sg("sync", "--slurm-conf-dir", c.conf_dir, "--grace", "0", "--json").stdout)
    assert not [d for d in again["drift"] if d.startswith(f"job {job}:") or "released" in d]  # reconciled once


def test_gsbatch_tags_the_job_for_attribution(gov):
    c, sg, gsbatch, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    p = gsbatch("-A", "physics", "-H", "--gres=gpu:h100:1", "-t", "5", "--parsable",
                "--gsbatch-tag", "deep-research/critic", "--wrap", "true")
    assert p.returncode == 0, p.stderr
    job = p.stdout.strip().split(";")[0]
    shown = c.run("scontrol", "show", "job", "-o", job).stdout
    assert "Comment=slurmgov:wf=deep-research,step=critic" in shown
    assert "AdminComment=slurmgov:hold=" in shown  # the hook's token sits beside the tag
    bad = gsbatch("-A", "physics", "--gsbatch-tag", "x;rm -rf/", "--wrap", "true")
    assert bad.returncode == 2 and "not a workflow or step name" in bad.stderr


def test_charge_equals_sacct_and_gsbatch_refuses_over_budget(gov):
    c, sg, gsbatch, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    over = gsbatch("-A", "physics", "--gres=gpu:h100:4", "-t", "60", "--wrap", "true")
    assert over.returncode == 4
    assert over.stderr.strip() == "gsbatch: account physics: 1.0 GPU-h left, job needs up to 4.0 GPU-h"
    p = gsbatch("-A", "physics", "--gpus-per-node=h100:3", "-t", "5", "--parsable", "--wrap", "sleep 2")
    job = p.stdout.strip().split(";")[0]
    assert c.wait_job(job, ("COMPLETED",), timeout=30) == "COMPLETED"
    wait_for(lambda: any(f"\t{job}\t" in ln for ln in settled(c)))
    sg("sync", "--slurm-conf-dir", c.conf_dir, "--no-reconcile")
    sacct = json.loads(c.run("sacct", "--json", "-j", job).stdout)["jobs"][0]
    gpus = sum(t["count"] for t in sacct["tres"]["allocated"] if t["type"] == "gres" and t["name"] == "gpu")
    expected = gpus * sacct["time"]["elapsed"] * 1.0 / 3600  # h100 weight 1.0
    # to the second of run time: jobcomp and sacct may round the same run's end apart by one second
    assert gpus == 3 and ledger.balance("physics").charged_h == pytest.approx(expected, abs=gpus / 3600)
    rep = json.loads(sg("sync", "--slurm-conf-dir", c.conf_dir, "--json").stdout)
    assert not [d for d in rep["drift"] if d.startswith(f"job {job}:")]  # sacct and the ledger agree


def test_two_hundred_submissions_never_exceed_the_budget(gov):
    c, sg, gsbatch, ledger = gov
    ledger.set_budget("physics", 5.0, "quarterly", actor="test", reason="burst")
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    cost_h = 1 * 7 / 60  # 1 GPU x 7 min

    def submit(_):
        return c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "7", "--wrap", "true"]).returncode == 0

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        admitted = sum(pool.map(submit, range(200)))
    assert admitted == int(5.0 // cost_h)  # 42 fit; the other 158 were refused
    sg("sync", "--slurm-conf-dir", c.conf_dir, "--no-reconcile")
    b = ledger.balance("physics")
    assert b.held_h == pytest.approx(admitted * cost_h) and b.held_h <= 5.0


def test_planned_leaf_switch_allocation_lands_under_one_leaf(gov, root):
    from slurmgov.intent import jobspec, planner

    c, sg, gsbatch, ledger = gov
    ledger.set_budget("physics", 100.0, "quarterly", actor="test")
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    site = site_mod.load(root / "site_configs" / "demo-cluster.yaml")
    p = planner.plan(jobspec.load(root / "jobspecs" / "multinode-finetune.yaml"), site)
    alloc = p.allocation(p.steps["finetune"].alloc)
    opts = [o for o in alloc.slurm_options(p.workflow, p.account) if not o.startswith(("--mem", "--cpus-per-task"))]
    # occupy gpu02 so that a careless placement would straddle the two leaves (gpu01 + gpu03)
    blocker = c.sbatch(["-A", "physics", "-w", "gpu02", "--gres=gpu:h100:4", "-t", "5", "--parsable", "--wrap", "sleep 30"])
    c.wait_job(blocker.stdout.strip().split(";")[0], ("RUNNING",), timeout=30)
    job = c.sbatch([*opts, "--parsable", "--wrap", "sleep 1"])
    assert job.returncode == 0, job.stderr
    jid = job.stdout.strip().split(";")[0]
    c.wait_job(jid, ("RUNNING", "COMPLETED"), timeout=30)
    shown = c.run("scontrol", "show", "job", "-o", jid).stdout
    nodes = next(f.split("=", 1)[1] for f in shown.split() if f.startswith("NodeList="))
    import hostlist

    placed = hostlist.expand_hostlist(nodes)
    assert len(placed) == 2 and site.topology.locality(placed) == "leaf-switch", placed
    assert sorted(placed) == ["gpu03", "gpu04"]


def test_requeued_job_is_charged_once_per_run(gov):
    c, sg, gsbatch, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    # the first run marks that its script runs, then waits to be requeued; the second finishes.
    # Requeued only once the script runs: RUNNING in slurmctld comes before slurmd has launched it,
    # and a requeue during the launch has slurmd kill the job's steps a second later, by then the
    # second run's (it ended FAILED on a busy machine).
    ran = c.work_dir / f"requeue-{time.time_ns()}"
    p = c.sbatch(["-A", "physics", "--requeue", "--gres=gpu:h100:1", "-t", "5", "--parsable", "--wrap",
                  f"if [ -e {ran} ]; then sleep 1; else touch {ran}; sleep 300; fi"])
    job = p.stdout.strip().split(";")[0]
    wait_for(ran.exists, timeout=60, what="the first run's script to start")
    c.start_requeued(job, c.requeue(job))  # without Slurm's two-minute requeue delay
    assert c.wait_job(job, ("COMPLETED",), timeout=60) == "COMPLETED", c.job_story(job)
    wait_for(lambda: sum(f"\t{job}\t" in ln for ln in settled(c)) >= 2)
    rep = json.loads(sg("sync", "--slurm-conf-dir", c.conf_dir, "--json").stdout)
    assert not [d for d in rep["drift"] if d.startswith(f"job {job}:")]
    runs = json.loads(c.run("sacct", "--json", "-D", "-j", job).stdout)["jobs"]
    charges = [ch for ch in ledger.charges() if ch["charge_key"].startswith(f"slurm:job:{job}@")]
    assert len(charges) == len(runs) == 2  # each run once: jobcomp and sacct agree on which
    assert sum(ch["gpu_seconds"] for ch in charges) == sum(r["time"]["elapsed"] for r in runs)
    token = charges[0]["hold_key"]
    assert ledger.hold(token).state == "done" and ledger.balance("physics").held_h == 0


def test_limits_sync_cli_dry_run(gov):
    c, sg, gsbatch, ledger = gov
    rows = {r["account"]: r for r in json.loads(sg("limits", "sync", "--dry-run", "--json").stdout)}
    phys = rows["physics"]
    assert phys["remaining_min"] == 60 and phys["new"] == phys["usage_min"] + 60  # 1 GPU-h left, weight 1.0
    assert phys["status"] in ("would set", "unchanged")
    shown = c.run("sacctmgr", "-n", "-P", "show", "assoc", "where", "account=physics", "format=account,user,grptresmins").stdout
    assert "gres/gpu=" not in shown  # a dry run changes nothing


def test_a_user_cannot_charge_an_account_slurm_does_not_associate_them_with(gov):
    from slurm_harness import LIMITED_ACCOUNT, LIMITED_USER

    c, sg, gsbatch, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    env = c.unprivileged_env()

    def as_limited(*args):
        return c.run("runuser", "-u", LIMITED_USER, "--", "sbatch", "--parsable", "-o", "/dev/null", *args,
                     env=env, cwd="/")

    start = c.journal_path.stat().st_size if c.journal_path.exists() else 0
    refused = as_limited("-A", "chem-ai", "--gres=gpu:h100:1", "-t", "5", "-H", "--wrap", "true")
    assert refused.returncode == 1 and "Invalid account" in refused.stderr
    allowed = as_limited("-A", LIMITED_ACCOUNT, "--gres=gpu:h100:1", "-t", "5", "-H", "--wrap", "true")
    assert allowed.returncode == 0, allowed.stderr
    # The hook may have admitted the first request before Slurm checked the association; that hold
    # has no job, so reconciling releases it: chem-ai is neither charged nor held for it.
    sg("sync", "--slurm-conf-dir", c.conf_dir, "--grace", "0")
    # (this ledger is new, the cluster is not: the pass also bills the session's earlier jobs from
    # sacct, so the rejected request is looked at by its own hold)
    with open(c.journal_path, "rb") as f:
        f.seek(start)
        mine = [ln.split(b"\t") for ln in f.read().splitlines() if ln.startswith(b"admit\t")]
    chem = [f"slurm:{f[3].decode()}" for f in mine if f[4] == b"chem-ai"]
    for key in chem:
        assert ledger.hold(key).state != "open" and not ledger.charges(key)  # released, never charged
    assert not [h for h, _ in ledger.open_holds("slurm:") if ledger.hold(h).account == "chem-ai"]
    held = [h for h, _ in ledger.open_holds("slurm:") if ledger.hold(h).account == LIMITED_ACCOUNT]
    assert len(held) == 1  # the job Slurm accepted keeps its hold
