"""Per-user caps on a real Slurm 22.05 (tests/slurm_harness.py): the submit hook refuses a user's
sbatch past their cap in an account while another user of the same account is admitted, and the
governor holds each job on its user."""

from __future__ import annotations

import re

import pytest
from helpers import as_nobody, nobody_sbatch, sync

pytestmark = pytest.mark.slurm


def test_sbatch_past_a_users_cap_is_refused_while_another_user_is_admitted(gov):
    c, sg, gsbatch, ledger = gov
    ledger.set_budget("physics", 10.0, "quarterly", actor="test", reason="caps")
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    p = sg("budget", "user-cap", "set", "physics", c.user, "0.6", "--reason", "e2e")
    assert f"user {c.user} may spend 0.60 GPU-h per period" in p.stdout
    sync(sg, c, "--no-reconcile")  # the snapshot now carries nobody's cap

    first = nobody_sbatch(c, "-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "30")  # 0.5 GPU-h of 0.6
    r = as_nobody(c, "sbatch", "--parsable", "-H", "--chdir=/", "-o", "/dev/null", "-A", "physics",
                  "--gres=gpu:h100:1", "-t", "30", "--wrap", "true")
    assert r.returncode != 0
    assert "has 0.1 GPU-h left of their per-user cap of 0.6 GPU-h, job needs up to 0.5 GPU-h" in r.stderr, r.stderr
    assert r.stderr.strip().startswith("sbatch: error: slurmgov: account physics: ")
    # root, in the same account, with no cap: the account's budget alone
    other = c.job_id(c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:2", "-t", "30", "--wrap", "true"]))
    # nobody's work elsewhere is not capped by their cap in physics
    nobody_sbatch(c, "-H", "-A", "chem-ai", "--gres=gpu:h100:1", "-t", "30")

    rep = sync(sg, c, "--no-reconcile")
    assert rep["admitted"] == 3 and rep["refused"] == {"over_user_cap": 1}, rep
    holds = {h["hold_key"]: h for h in ledger.holds_open()}
    by_job = {job: next(h for h in holds.values() if h["account"] == "physics" and h["user"] == user)
              for job, user in ((first, c.user), (other, "root"))}
    assert by_job[first]["held_h"] == pytest.approx(0.5) and by_job[other]["held_h"] == pytest.approx(1.0)
    [u] = [u for u in ledger.user_balances() if u.user == c.user]
    assert (u.account, u.held_h, u.available_h) == ("physics", pytest.approx(0.5), pytest.approx(0.1))

    # from the ledger's side too (the new snapshot): still refused; with the cap raised, admitted
    r = as_nobody(c, "sbatch", "-H", "--chdir=/", "-o", "/dev/null", "-A", "physics", "--gres=gpu:h100:1", "-t", "30",
                  "--wrap", "true")
    assert r.returncode != 0 and "per-user cap of 0.6 GPU-h" in r.stderr
    sg("budget", "user-cap", "set", "physics", c.user, "1.0")
    sync(sg, c, "--no-reconcile")
    nobody_sbatch(c, "-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "30")


def test_an_account_slurm_has_without_a_budget_gets_the_sites_default(gov, root, tmp_path):
    c, sg, gsbatch, ledger = gov
    text = (root / "site_configs" / "demo-cluster.yaml").read_text()
    assert "  bio-ml: {budget_gpu_hours: 200, period: monthly}\n" in text
    site = tmp_path / "site.yaml"  # the demo site, without bio-ml, with a default budget
    site.write_text(text.replace("  bio-ml: {budget_gpu_hours: 200, period: monthly}\n", "")
                    + "default_budget: {budget_gpu_hours: 3, period: monthly}\n")
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir, "--site", site)
    assert "bio-ml" not in {b.account for b in ledger.balances()}
    rep = sync(sg, c, "--site", site)  # reconciles with Slurm: its associations name bio-ml
    assert rep["seeded"] == ["bio-ml"], rep
    [b] = [b for b in ledger.balances() if b.account == "bio-ml"]
    assert (b.budget_h, b.period[4]) == (3.0, "-")  # monthly: 'YYYY-MM'
    [seed] = [a for a in ledger.audit() if a["account"] == "bio-ml"]
    assert (seed["action"], seed["actor"], seed["new_budget_h"]) == ("seed", "slurmgov", 3.0)
    assert "Slurm's associations" in seed["reason"]
    assert "root" not in {b.account for b in ledger.balances()}  # Slurm's own root account gets none
    # the hook now has a budget for it (less what bio-ml jobs of earlier tests that sacct still
    # lists used: once the account has a budget, reconcile bills them to it)
    r = c.sbatch(["-H", "-A", "bio-ml", "--gres=gpu:h100:1", "-t", "30", "--wrap", "true"])
    assert r.returncode == 0, r.stderr
    r = c.sbatch(["-H", "-A", "bio-ml", "--gres=gpu:h100:4", "-t", "60", "--wrap", "true"])
    m = re.search(r"account bio-ml: ([0-9.]+) GPU-h left, job needs up to 4\.0 GPU-h", r.stderr)
    assert r.returncode != 0 and m, r.stderr
    assert float(m.group(1)) == pytest.approx(b.available_h - 0.5, abs=0.01)
    assert sync(sg, c, "--site", site)["seeded"] == []  # a second pass seeds nothing again
    assert len([a for a in ledger.audit() if a["account"] == "bio-ml"]) == 1


def test_slurmgov_run_on_slurm_past_the_users_cap_submits_nothing(gov, root):
    c, sg, gsbatch, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    sg("budget", "user-cap", "set", "chem-ai", "root", "0.5", "--reason", "e2e")
    p = sg("run", root / "jobspecs" / "research-fanout.yaml", check=4)
    assert "slurmgov: account chem-ai: user root has 0.5 GPU-h left of their per-user cap of 0.5 GPU-h, " \
           "workflow deep-research needs up to" in p.stderr and p.stderr.strip().endswith("; nothing was submitted")
    assert c.run("squeue", "-h", "-o", "%i").stdout.strip() == ""
    assert ledger.holds_open() == []


def test_a_capped_user_cannot_get_around_the_cap(gov):
    """The cap holds on the paths the account budget holds on: other spellings of the GPU request,
    an array (priced per task), and `scontrol update` of a held job onto GPUs or onto more GPUs;
    a change that fits under the cap goes through."""
    from helpers import show_job
    c, sg, gsbatch, ledger = gov
    ledger.set_budget("physics", 10.0, "quarterly", actor="test", reason="caps")
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    sg("budget", "user-cap", "set", "physics", c.user, "0.6", "--reason", "holes")
    sync(sg, c, "--no-reconcile")
    cap = "of their per-user cap of 0.6 GPU-h"
    for request in (["--gpus=h100:2"], ["--gpus-per-node=h100:2"], ["--gres=gpu:2"], ["-a", "0-1", "--gres=gpu:h100:1"]):
        r = as_nobody(c, "sbatch", "--parsable", "-H", "--chdir=/", "-o", "/dev/null", "-A", "physics", "-t", "30",
                      *request, "--wrap", "true")
        assert r.returncode != 0 and cap in r.stderr, (request, r.stderr)

    def refused_changes() -> int:
        return (c.log_dir / "slurmctld.log").read_text(errors="replace").count(
            "has 0.6 GPU-h left of their per-user cap of 0.6 GPU-h, the change needs up to")

    job = nobody_sbatch(c, "-H", "-A", "physics", "-t", "30")  # CPU only: nothing against the cap
    r = as_nobody(c, "scontrol", "update", f"jobid={job}", "TresPerNode=gres:gpu:h100:2")  # 1.0 GPU-h
    assert r.returncode != 0 and refused_changes() == 1, r.stderr
    assert "gpu" not in show_job(c, job).get("TresPerNode", "")
    r = as_nobody(c, "scontrol", "update", f"jobid={job}", "TresPerNode=gres:gpu:h100:1")  # 0.5 GPU-h: fits
    assert r.returncode == 0, r.stderr
    r = as_nobody(c, "scontrol", "update", f"jobid={job}", "TresPerNode=gres:gpu:h100:2")  # 0.5 more: past it
    assert r.returncode != 0
    assert show_job(c, job)["TresPerNode"] == f"{c.gres}gpu:h100:1"
    assert "the change needs up to 0.5 GPU-h more" in (c.log_dir / "slurmctld.log").read_text(errors="replace")
