"""Every path to GPU time goes through a price: the submit hook against a hostile user, on a real Slurm 22.05.

Each test is one way around the budget that was open before (issue 11): growing a job with
``scontrol update`` (CPU to GPU, more GPUs/nodes/time, another account or partition), shapes the
hook used to under-price (``--exclusive``, ``-n`` without ``-N``, partitions without time limits,
``-p a,b``) and account names in other spellings. What the governor then does with the journal
(re-holds, per-run charges, arrays, token-less jobs) is tested end to end in
tests/test_budget_paths.py.
"""

from __future__ import annotations

import time

import pytest
from helpers import admin_comment, as_nobody, journal, nobody_sbatch, show_job, write_snapshot
from slurm_harness import PARTITION, PARTITION_DEFAULT_TIME_MIN, PARTITION_MAX_TIME_MIN, UNLIMITED_PARTITION

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("clean_hook_conf")]


def modify_lines(c, jobid: str) -> list[list[str]]:
    return [ln for ln in journal(c) if ln[0] == "modify" and ln[10] == jobid]


def ctld_log(c) -> str:
    return (c.log_dir / "slurmctld.log").read_text(errors="replace")


# ---------------------------------------------------------------- modify: CPU job grows GPUs

def test_user_turning_a_cpu_job_into_a_gpu_job_is_priced_and_held(slurm_cluster):
    c = slurm_cluster
    write_snapshot(c, {"chem-ai": 1e9, "bio-ml": 0.0})
    job = nobody_sbatch(c, "-t", "10", held=True)
    assert admin_comment(c, job) == ""  # CPU-only: the hook left it alone
    r = as_nobody(c, "scontrol", "update", f"jobid={job}", "TresPerNode=gres:gpu:h100:4", "NumNodes=2")
    assert r.returncode == 0, r.stderr
    [m] = modify_lines(c, job)
    # key job-<id> (no token: a user's change cannot set an AdminComment), 8 GPUs x 10 min, nothing held before
    assert m[3] == f"job-{job}" and m[4] == "chem-ai" and m[5] == str(c.uid)
    assert (float(m[6]), m[7], m[8], m[9]) == (8 * 600.0, "8", "10", "h100")
    assert (m[11], float(m[12]), m[13], m[14]) == ("chem-ai", 0.0, str(c.uid), "0")
    assert show_job(c, job)["TresPerNode"] == f"{c.gres}gpu:h100:4"


def test_user_cannot_grow_a_cpu_job_onto_an_account_without_budget(slurm_cluster):
    c = slurm_cluster
    write_snapshot(c, {"chem-ai": 1e9, "bio-ml": 0.0})
    job = nobody_sbatch(c, "-A", "bio-ml", "-t", "10", held=True)
    r = as_nobody(c, "scontrol", "update", f"jobid={job}", "TresPerNode=gres:gpu:h100:4", "NumNodes=2")
    assert r.returncode != 0
    assert "TresPerNode" not in show_job(c, job) or "gpu" not in show_job(c, job)["TresPerNode"]
    assert modify_lines(c, job) == []
    assert f"change to job {job} by uid {c.uid} refused: account bio-ml: 0.0 GPU-h left" in ctld_log(c)


# ---------------------------------------------------------------- modify: an admitted job

def test_admitted_job_grows_within_budget_and_shrinks_back(slurm_cluster):
    c = slurm_cluster
    write_snapshot(c, {"chem-ai": 3 * 3600.0})  # 3 GPU-h
    job = nobody_sbatch(c, "--gres=gpu:h100:1", "-t", "60", held=True)  # 1 GPU-h held
    [adm] = [ln for ln in journal(c) if ln[0] == "admit"][-1:]
    token = adm[3]
    r = as_nobody(c, "scontrol", "update", f"jobid={job}", "TresPerNode=gres:gpu:h100:2")  # +1 GPU-h: fits
    assert r.returncode == 0, r.stderr
    r = as_nobody(c, "scontrol", "update", f"jobid={job}", "TresPerNode=gres:gpu:h100:4")  # +2 more: 0 left... no
    assert r.returncode != 0
    assert show_job(c, job)["TresPerNode"] == f"{c.gres}gpu:h100:2"
    r = as_nobody(c, "scontrol", "update", f"jobid={job}", "TresPerNode=gres:gpu:h100:1")  # shrinking: allowed
    assert r.returncode == 0, r.stderr
    grow, shrink = modify_lines(c, job)
    assert grow[3] == token and (float(grow[12]), float(grow[6])) == (3600.0, 7200.0)
    assert shrink[3] == token and (float(shrink[12]), float(shrink[6])) == (7200.0, 3600.0)
    # The hook counts the growth at once but not the shrink: Slurm could still reject a change
    # after the hook priced it (see test_a_change_slurm_rejects_...), so the governor releases
    # it once Slurm shows the job smaller. Until then chem-ai has 3 - 2 = 1 GPU-h.
    assert c.sbatch(["-H", "--gres=gpu:h100:2", "-t", "60"]).returncode == 1
    assert c.sbatch(["-H", "--gres=gpu:h100:1", "-t", "60"]).returncode == 0


def test_time_and_node_growth_are_priced(slurm_cluster):
    c = slurm_cluster
    write_snapshot(c, {"chem-ai": 1e9})
    job = nobody_sbatch(c, "--gres=gpu:h100:1", "-N", "1", "-n", "2", "-t", "10", held=True)
    r = as_nobody(c, "scontrol", "update", f"jobid={job}", "NumNodes=2-2")
    assert r.returncode == 0, r.stderr
    # root (an operator) raises the time: users may not, Slurm says so itself
    assert c.run("scontrol", "update", f"jobid={job}", "TimeLimit=30").returncode == 0
    nodes, tl = modify_lines(c, job)
    assert (float(nodes[12]), float(nodes[6]), nodes[7]) == (600.0, 1200.0, "2")
    assert (float(tl[12]), float(tl[6]), tl[8], tl[13]) == (1200.0, 3600.0, "30", "0")


def test_moving_a_job_to_another_account_moves_its_price(slurm_cluster):
    c = slurm_cluster
    write_snapshot(c, {"chem-ai": 1e9, "bio-ml": 600.0, "physics": 0.0})
    job = nobody_sbatch(c, "--gres=gpu:h100:1", "-t", "10", held=True)  # 600 GPU-s on chem-ai
    r = as_nobody(c, "scontrol", "update", f"jobid={job}", "Account=physics")
    assert r.returncode != 0 and show_job(c, job)["Account"] == "chem-ai"
    r = as_nobody(c, "scontrol", "update", f"jobid={job}", "Account=bio-ml")
    assert r.returncode == 0, r.stderr
    [m] = modify_lines(c, job)
    assert (m[4], float(m[6]), m[11], float(m[12])) == ("bio-ml", 600.0, "chem-ai", 600.0)
    # bio-ml's 600 GPU-s are spoken for now
    assert c.sbatch(["-H", "-A", "bio-ml", "--gres=gpu:1", "-t", "1"]).returncode == 1


def test_partition_change_to_one_without_limits_pins_the_time(slurm_cluster):
    c = slurm_cluster
    write_snapshot(c, {"chem-ai": 1e9}, default_time_min=45)
    job = nobody_sbatch(c, "--gres=gpu:h100:1", held=True)  # partition gpu: DefaultTime 30
    assert show_job(c, job)["TimeLimit"] == "00:30:00"
    r = as_nobody(c, "scontrol", "update", f"jobid={job}", f"Partition={UNLIMITED_PARTITION}")
    assert r.returncode == 0, r.stderr
    assert show_job(c, job)["Partition"] == UNLIMITED_PARTITION
    [m] = modify_lines(c, job)
    assert m[8] == "30"  # the job keeps the 30 min Slurm gave it; the new partition cannot lift it
    assert show_job(c, job)["TimeLimit"] == "00:30:00"


def test_root_may_grow_past_the_budget_but_the_override_is_journaled(slurm_cluster):
    c = slurm_cluster
    write_snapshot(c, {"chem-ai": 700.0})
    job = nobody_sbatch(c, "--gres=gpu:h100:1", "-t", "10", held=True)
    r = c.run("scontrol", "update", f"jobid={job}", "TresPerNode=gres:gpu:h100:4", "TimeLimit=120")
    assert r.returncode == 0, r.stderr
    [m] = modify_lines(c, job)
    assert (float(m[6]), m[13], m[14]) == (4 * 120 * 60.0, "0", "1")
    assert f"uid 0 grows job {job} past the budget" in ctld_log(c)


def test_task_counts_of_an_admitted_gpu_job_are_fixed_for_users(slurm_cluster):
    c = slurm_cluster
    write_snapshot(c, {"chem-ai": 1e9})
    job = nobody_sbatch(c, "--gpus-per-task=1", "-n", "1", "-t", "10", held=True)
    r = as_nobody(c, "scontrol", "update", f"jobid={job}", "NumTasks=4")
    assert r.returncode != 0
    assert "fixed at submission; cancel and resubmit" in ctld_log(c)


def test_a_change_that_prices_nothing_writes_nothing(slurm_cluster):
    c = slurm_cluster
    write_snapshot(c, {"chem-ai": 1e9})
    job = nobody_sbatch(c, "--gres=gpu:1", "-t", "10", held=True)
    assert as_nobody(c, "scontrol", "update", f"jobid={job}", "Comment=hello").returncode == 0
    assert as_nobody(c, "scontrol", "update", f"jobid={job}", "Name=renamed").returncode == 0
    assert modify_lines(c, job) == []


# ---------------------------------------------------------------- shapes the hook pins

def test_exclusive_is_priced_as_whole_nodes_even_without_gpus(slurm_cluster):
    c = slurm_cluster
    serial = write_snapshot(c, {"chem-ai": 1e9})
    r = c.sbatch(["--exclusive", "--gpus-per-node=h100:1", "-t", "1"])
    jobid = c.job_id(r)
    cpu = c.job_id(c.sbatch(["--exclusive", "-t", "1"]))  # no GPU asked for: Slurm hands it 4 all the same
    a, b = journal(c, serial)
    assert (a[7], float(a[6])) == ("4", 4 * 60.0)
    assert (b[7], float(b[6])) == ("4", 4 * 60.0)
    for j in (jobid, cpu):
        assert c.wait_job(j, ("COMPLETED",), timeout=60) == "COMPLETED"
        shown = show_job(c, j)
        # What Slurm allocated is what was priced (22.05 shows TRES=, 24.11 ReqTRES= and AllocTRES=).
        assert "gres/gpu=4" in shown.get("AllocTRES", shown.get("TRES", "")), shown


def test_tasks_without_nodes_are_bound_to_the_nodes_priced(slurm_cluster):
    c = slurm_cluster
    serial = write_snapshot(c, {"chem-ai": 1e9})
    job = c.job_id(c.sbatch(["-H", "-n", "8", "--gres=gpu:1", "-t", "5"]))
    [line] = journal(c, serial)
    assert (line[7], float(line[6])) == ("1", 300.0)
    assert show_job(c, job)["NumNodes"] in ("1", "1-1")  # max nodes pinned: 8 tasks cannot spread to 8 nodes
    spread = c.job_id(c.sbatch(["-H", "-N", "2", "-n", "8", "--gres=gpu:1", "-t", "5"]))
    assert float(journal(c, serial)[-1][6]) == 600.0 and show_job(c, spread)["NumNodes"].startswith("2")


@pytest.mark.parametrize("args,minutes,pinned", [
    ([f"-p{UNLIMITED_PARTITION}"], 45, "00:45:00"),  # no time anywhere: priced at the snapshot default, pinned
    ([f"-p{UNLIMITED_PARTITION}", "-a", "0-1"], 45, "00:45:00"),
    ([f"-p{PARTITION},{UNLIMITED_PARTITION}"], 45, "00:45:00"),
    ([f"-p{PARTITION},{UNLIMITED_PARTITION}", "-t", "UNLIMITED"], PARTITION_MAX_TIME_MIN, "1-00:00:00"),
    ([f"-p{PARTITION}", "-t", "UNLIMITED"], PARTITION_MAX_TIME_MIN, "1-00:00:00"),
    ([f"-p{PARTITION}"], PARTITION_DEFAULT_TIME_MIN, None),
])
def test_a_job_cannot_outlast_its_price(slurm_cluster, args, minutes, pinned):
    c = slurm_cluster
    serial = write_snapshot(c, {"chem-ai": 1e9}, default_time_min=45)
    job = c.job_id(c.sbatch(["-H", "--gres=gpu:1", *args]))
    [line] = journal(c, serial)
    assert line[8] == str(minutes)
    tl = show_job(c, job.split("_")[0])["TimeLimit"]
    assert tl == (pinned or tl) and tl != "UNLIMITED"


def test_no_time_limit_anywhere_is_refused(slurm_cluster):
    c = slurm_cluster
    write_snapshot(c, {"chem-ai": 1e9})
    r = c.sbatch(["-H", f"-p{UNLIMITED_PARTITION}", "--gres=gpu:1", "-t", "UNLIMITED"])
    assert r.returncode == 1 and "has no MaxTime; give --time" in r.stderr


# ---------------------------------------------------------------- names as Slurm spells them

@pytest.mark.parametrize("policy", ["closed", "open"])
def test_account_names_are_compared_as_slurm_compares_them(slurm_cluster, policy):
    c = slurm_cluster
    stale = time.time() - 10_000 if policy == "open" else None
    serial = write_snapshot(c, {"physics": 1e9}, fail_policy=policy, written=stale)
    job = c.job_id(c.sbatch(["-H", "-A", "PHYSICS", "--gres=gpu:1", "-t", "10"]))
    assert show_job(c, job)["Account"] == "physics"
    [line] = [ln for ln in journal(c) if ln[0] == "admit"][-1:]
    assert line[4] == "physics" and line[2] == ("0" if policy == "open" else serial)


def test_a_change_slurm_rejects_after_the_hook_never_lowers_the_price(slurm_cluster):
    """Slurm checks some changes only after the hook (here: 2 nodes for a 1-task job). A shrink
    it then rejects must not give budget back, however often it is tried."""
    c = slurm_cluster
    write_snapshot(c, {"chem-ai": 4 * 600.0 + 300})
    job = nobody_sbatch(c, "--gres=gpu:h100:4", "-N", "1", "-n", "1", "-t", "10", held=True)  # 4 x 600 GPU-s held
    if c.release != "22.05":
        # 24.11 accepts 2 nodes for a 1-task job: then the new price is exactly what Slurm holds.
        r = as_nobody(c, "scontrol", "update", f"jobid={job}", "TresPerNode=gres:gpu:h100:1", "NumNodes=2")
        assert r.returncode == 0, r.stderr
        shown = show_job(c, job)
        assert (shown["TresPerNode"], shown["NumNodes"]) == (f"{c.gres}gpu:h100:1", "2-2")
        assert "gres/gpu=2," in shown["ReqTRES"] + ","
        [m] = modify_lines(c, job)
        assert (float(m[6]), m[7]) == (2 * 600.0, "2")
    else:
        for _ in range(5):
            r = as_nobody(c, "scontrol", "update", f"jobid={job}", "TresPerNode=gres:gpu:h100:1", "NumNodes=2")
            assert r.returncode != 0 and "Node count specification invalid" in r.stderr
        assert show_job(c, job)["TresPerNode"] == f"{c.gres}gpu:h100:4"
        assert len(modify_lines(c, job)) == 5  # priced each time; the governor checks each against Slurm
    # 300 GPU-s left, as before the attempts: a 10-minute GPU job still does not fit
    assert c.sbatch(["-H", "--gres=gpu:1", "-t", "10"]).returncode == 1
    assert c.sbatch(["-H", "--gres=gpu:1", "-t", "5"]).returncode == 0
