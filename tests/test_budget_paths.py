"""No way around the budget, end to end: hook, jobcomp, `slurmgov sync` and the ledger on a real Slurm 22.05.

Each test takes one path to GPU time that used to escape the ledger (issue 11) and checks what
the account is held and charged afterwards: jobs grown with ``scontrol update``, jobs the hook
never held, requeued jobs, cancelled arrays, hold tokens in user-settable comments, account names
in other spellings under fail-open, and who may read the journals.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import pytest
from helpers import as_nobody, governor_sees_final, nobody_sbatch, settle_of, settled, sync, wait_for

pytestmark = pytest.mark.slurm

NOOP_HOOK = ("function slurm_job_submit(j, p, u) return slurm.SUCCESS end\n"
             "function slurm_job_modify(j, r, p, u) return slurm.SUCCESS end\n")


def hold_of(ledger, job: str):
    """The hold a job's charges went to, or its job-<id> hold."""
    keys = {ch["hold_key"] for ch in ledger.charges() if ch["charge_key"].startswith(f"slurm:job:{job}@")}
    return ledger.hold(keys.pop() if keys else f"slurm:job-{job}")


def swap_hook(c, text: str) -> None:
    """Replace job_submit.lua. slurmctld reloads it on its next call if its mtime (whole seconds)
    is later than when it loaded the current one, which was at the latest now: so the new file is
    written in a later second than this one."""
    path = c.conf_dir / "job_submit.lua"
    start = int(time.time())
    while int(time.time()) <= start:
        time.sleep(0.05)
    path.write_text(text)


# ------------------------------------------------------------------------ jobs grown after admission

def test_a_cpu_job_turned_into_a_gpu_job_is_held_then_charged(gov):
    c, sg, gsbatch, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    # (root submits: the test cluster's spool is not readable by other users, so their jobs cannot
    # run here; tests/test_hook_holes.py makes the same change as an unprivileged user)
    job = c.job_id(c.sbatch(["-H", "-A", "physics", "-t", "5", "--wrap", "sleep 2"]))
    r = c.run("scontrol", "update", f"jobid={job}", "TresPerNode=gres:gpu:h100:2")
    assert r.returncode == 0, r.stderr
    rep = sync(sg, c, "--no-reconcile")
    assert rep["modified"] == 1 and not rep["problems"]
    assert ledger.hold(f"slurm:job-{job}").amount_h == pytest.approx(2 * 5 / 60)
    assert ledger.balance("physics").held_h == pytest.approx(2 * 5 / 60)
    assert c.run("scontrol", "release", job).returncode == 0
    assert c.wait_job(job, ("COMPLETED",), timeout=60) == "COMPLETED"
    wait_for(lambda: settle_of(c, job))
    sync(sg, c)
    sacct = json.loads(c.run("sacct", "--json", "-j", job).stdout)["jobs"][0]
    # (this job's own hold and charges: the pass may also hold or bill jobs that earlier tests
    # left in this session's cluster, so physics' whole balance is not this job's alone)
    assert ledger.hold(f"slurm:job-{job}").state == "done"
    charged = [ch["charged_h"] for ch in ledger.charges(f"slurm:job-{job}")]
    assert sum(charged) == pytest.approx(2 * sacct["time"]["elapsed"] / 3600, abs=2 / 3600), charged


def test_growth_shrink_and_move_reach_the_ledger_as_slurm_applied_them(gov):
    c, sg, gsbatch, ledger = gov
    ledger.set_budget("chem-ai", 10.0, "quarterly", actor="test", reason="paths")
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    job = nobody_sbatch(c, "-H", "-A", "chem-ai", "--gres=gpu:h100:1", "-N", "1", "-n", "1", "-t", "30")
    sync(sg, c)
    assert ledger.balance("chem-ai").held_h == pytest.approx(0.5)
    assert as_nobody(c, "scontrol", "update", f"jobid={job}", "TresPerNode=gres:gpu:h100:2").returncode == 0
    sync(sg, c)
    assert ledger.balance("chem-ai").held_h == pytest.approx(1.0)
    r = as_nobody(c, "scontrol", "update", f"jobid={job}", "TimeLimit=10", "NumNodes=2")
    if c.release == "22.05":
        # a shrink Slurm rejects after the hook priced it (2 nodes for 1 task) gives nothing back
        assert r.returncode != 0 and "Node count specification invalid" in r.stderr
        nodes = 1
        sync(sg, c)
        assert ledger.balance("chem-ai").held_h == pytest.approx(1.0)
    else:
        # 24.11 applies 2 nodes for 1 task: 2 nodes x 2 GPUs x 10 min reach the ledger
        assert r.returncode == 0, r.stderr
        nodes = 2
        sync(sg, c)
        assert ledger.balance("chem-ai").held_h == pytest.approx(2 * 2 * 10 / 60)
    # a change Slurm applies does (back to 1 node where 24.11 took 2)
    back = ["NumNodes=1"] if nodes == 2 else []
    assert as_nobody(c, "scontrol", "update", f"jobid={job}", "TimeLimit=15", *back).returncode == 0
    sync(sg, c)
    assert ledger.balance("chem-ai").held_h == pytest.approx(0.5)
    # moving the job moves its hold
    assert as_nobody(c, "scontrol", "update", f"jobid={job}", "Account=physics").returncode == 0
    sync(sg, c)
    assert ledger.balance("chem-ai").held_h == 0
    assert ledger.balance("physics").held_h == pytest.approx(0.5)


def test_root_growing_a_job_past_the_budget_is_held_and_audited(gov):
    c, sg, gsbatch, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    job = nobody_sbatch(c, "-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "30")
    assert c.run("scontrol", "update", f"jobid={job}", "TresPerNode=gres:gpu:h100:4", "TimeLimit=60").returncode == 0
    sync(sg, c)
    b = ledger.balance("physics")
    assert b.held_h == pytest.approx(4.0) and b.available_h == pytest.approx(1.0 - b.charged_h - 4.0)
    audit = json.loads(sg("audit", "--json").stdout)
    [entry] = [a for a in audit if a["action"] == "override"]
    assert entry["account"] == "physics" and entry["actor"] == "uid 0" and f"job {job}" in entry["reason"]


# ------------------------------------------------------------------------ jobs the hook never held

def test_gpu_time_of_a_job_without_a_hold_is_billed_to_its_account(gov):
    c, sg, gsbatch, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    real = (c.conf_dir / "job_submit.lua").read_text()
    swap_hook(c, NOOP_HOOK)  # as if submitted before the hooks were installed
    try:
        p = c.sbatch(["-A", "physics", "--gres=gpu:h100:2", "-t", "5", "--wrap", "sleep 2"])
        job = c.job_id(p)
    finally:
        swap_hook(c, real)
    assert "slurmgov:hold" not in c.run("scontrol", "show", "job", "-o", job).stdout
    assert c.wait_job(job, ("COMPLETED",), timeout=60) == "COMPLETED"
    wait_for(lambda: settle_of(c, job))
    c.settle_path.write_text("")  # and its settle line lost too: sacct alone must bill it
    # (a pass before sacct's window shows it ended bills it on the next one: wait for that one)
    wait_for(lambda: governor_sees_final(c, job))
    rep = sync(sg, c)
    sacct = json.loads(c.run("sacct", "--json", "-j", job).stdout)["jobs"][0]
    charges = [ch for ch in ledger.charges() if ch["charge_key"].startswith(f"slurm:job:{job}@")]
    # (on failure: what this pass said of the job, and the sacct record it billed from)
    assert len(charges) == 1, ([d for d in rep["drift"] if job in d], rep["problems"], sacct["state"],
                               sacct["time"], sacct["tres"]["allocated"])
    (charge,) = charges
    assert charge["account"] == "physics" and charge["gpu_seconds"] == 2 * sacct["time"]["elapsed"]
    assert ledger.hold(f"slurm:job-{job}").state == "done"
    assert not [d for d in sync(sg, c)["drift"] if f"job {job}" in d or f"job-{job}" in d]  # billed once


# ------------------------------------------------------------------------ requeue

def test_a_finished_job_requeued_is_held_again_and_charged_per_run(gov):
    c, sg, gsbatch, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    job = c.job_id(c.sbatch(["-A", "physics", "--gres=gpu:h100:1", "-t", "6", "--wrap", "sleep 1"]))
    assert c.wait_job(job, ("COMPLETED",), timeout=60) == "COMPLETED"
    wait_for(lambda: settle_of(c, job))
    sync(sg, c)
    assert ledger.balance("physics").held_h == 0
    requeued_at = c.requeue(job)  # Slurm asks no hook about this
    rep = sync(sg, c)
    assert not rep["problems"], rep
    assert ledger.balance("physics").held_h == pytest.approx(0.1)  # the next run's price, held again
    c.start_requeued(job, requeued_at)
    assert c.wait_job(job, ("COMPLETED",), timeout=60) == "COMPLETED", c.job_story(job)
    wait_for(lambda: sum(ln.split("\t")[1:2] == [job] and ln.split("\t")[7] == "COMPLETED" for ln in settled(c)) >= 2)
    rep = sync(sg, c)
    assert not rep["problems"], rep
    runs = json.loads(c.run("sacct", "--json", "-D", "-j", job).stdout)["jobs"]
    charges = [ch for ch in ledger.charges() if ch["charge_key"].startswith(f"slurm:job:{job}@")]
    assert len(charges) == len(runs) == 2  # one charge per run, none for Slurm's echo of the requeue
    # each run as it ended (jobcomp's COMPLETED lines): sacct stretches the first run's record to
    # the requeue, minutes later on a real site, while its GPUs were free
    done = [ln.split("\t") for ln in settled(c) if ln.split("\t")[1:2] == [job] and ln.split("\t")[7] == "COMPLETED"]
    assert sorted(ch["gpu_seconds"] for ch in charges) == sorted(int(f[6]) - int(f[5]) for f in done)
    assert ledger.balance("physics").held_h == 0  # both runs' holds closed


# ------------------------------------------------------------------------ arrays

@pytest.mark.parametrize("lose_settle", [False, True])
def test_a_cancelled_pending_array_releases_its_hold(gov, lose_settle):
    c, sg, gsbatch, ledger = gov
    ledger.set_budget("physics", 10.0, "quarterly", actor="test", reason="array")
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    p = c.sbatch(["-H", "-A", "physics", "-a", "0-299", "--gres=gpu:h100:1", "-t", "1", "--wrap", "true"])
    job = c.job_id(p)
    sync(sg, c)
    assert ledger.balance("physics").held_h == pytest.approx(5.0)
    c.run("scancel", job, check=True)
    wait_for(lambda: settle_of(c, job))
    if lose_settle:
        c.settle_path.write_text("")
        sync(sg, c, "--grace", "0")  # sacct: every row of the array has ended, nothing queued
    else:
        sync(sg, c, "--no-reconcile")  # the array's own settle line says its tasks will never run
    assert ledger.balance("physics").held_h == 0
    assert not [ch for ch in ledger.charges() if ch["charge_key"].startswith(f"slurm:job:{job}@") and ch["gpu_seconds"]]


# ------------------------------------------------------------------------ tokens

def test_a_token_in_a_user_comment_pins_nothing(gov):
    c, sg, gsbatch, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    # someone's hold whose job Slurm rejected after the hook admitted it: no job carries its token
    bad = c.sbatch(["-A", "physics", "-p", "nosuch", "--gres=gpu:h100:1", "-t", "30", "--wrap", "true"])
    assert bad.returncode != 0
    token = [ln.split("\t")[3] for ln in c.journal_path.read_text().splitlines() if ln.startswith("admit")][-1]
    # a user copies it into the comment of a job of their own
    mine = nobody_sbatch(c, "-H", "-A", "chem-ai", "-t", "5", f"--comment=slurmgov:hold={token}")
    assert f"slurmgov:hold={token}" in c.run("scontrol", "show", "job", "-o", mine).stdout
    rep = sync(sg, c, "--grace", "0")
    assert any(d.startswith(f"hold {token}: no such job in Slurm") for d in rep["drift"]), rep["drift"]
    assert ledger.hold(f"slurm:{token}").state == "cancelled" and ledger.balance("physics").held_h == 0


def test_users_cannot_read_the_journals(gov, tmp_path):
    c, sg, gsbatch, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    assert c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "5", "--wrap", "true"]).returncode == 0
    for name in ("slurmgov_journal.log", "slurmgov_settle.log", "slurmgov_refusals.log"):
        st = (c.conf_dir / name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == 0, name
    # the same install in a directory every user can walk into: nobody still reads nothing
    public = tmp_path / "pub"
    public.mkdir()
    for d in (tmp_path, public):
        d.chmod(0o755)
    (public / "slurm.conf").write_text((c.conf_dir / "slurm.conf").read_text())
    sg("hooks", "install", "--slurm-conf-dir", public)
    (public / "slurmgov_journal.log").write_text("admit\t1\t1\tsecret-token\tphysics\t0\t60.000\t1\t1\t-\n")
    for name in ("slurmgov_journal.log", "slurmgov_settle.log", "slurmgov_refusals.log"):
        r = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(public / name)], capture_output=True, text=True)
        assert r.returncode != 0 and "Permission denied" in r.stderr, name
    # a careless admin opens one up: the next sync closes it again
    os.chmod(public / "slurmgov_journal.log", 0o644)
    sg("sync", "--slurm-conf-dir", public, "--no-reconcile")
    assert stat.S_IMODE((public / "slurmgov_journal.log").stat().st_mode) == 0o640


# ------------------------------------------------------------------------ names and fail-open

def test_fail_open_admission_in_another_spelling_is_held_on_the_account(gov):
    c, sg, gsbatch, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    text = c.snapshot_path.read_text().replace("fail_policy\tclosed", "fail_policy\topen")
    written = int(time.time()) - 100_000
    lines = [f"written\t{written}" if ln.startswith("written\t") else ln for ln in text.splitlines()]
    c.snapshot_path.write_text("\n".join(lines) + "\n")  # stale, and open: admitted without a budget check
    job = c.job_id(c.sbatch(["-H", "-A", "PHYSICS", "--gres=gpu:h100:1", "-t", "30", "--wrap", "true"]))
    assert "Account=physics" in c.run("scontrol", "show", "job", "-o", job).stdout
    rep = sync(sg, c)
    assert not rep["problems"], rep
    assert ledger.balance("physics").held_h == pytest.approx(0.5)
