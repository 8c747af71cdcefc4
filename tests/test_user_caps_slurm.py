"""Per-user caps on a real Slurm 22.05 (tests/slurm_harness.py): the submit hook refuses a user's
sbatch past their cap in an account while another user of the same account is admitted, and the
governor holds each job on its user."""

from __future__ import annotations

import json

import pytest
from helpers import as_nobody, nobody_sbatch

pytestmark = pytest.mark.slurm


def sync(sg, c, *extra):
    return json.loads(sg("sync", "--slurm-conf-dir", c.conf_dir, "--json", *extra).stdout)


def test_sbatch_past_a_users_cap_is_refused_while_another_user_is_admitted(gov):
    c, sg, gsbatch, ledger = gov
    ledger.set_budget("physics", 10.0, "quarterly", actor="test", reason="caps")
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    p = sg("budget", "user-cap", "set", "physics", "nobody", "0.6", "--reason", "e2e")
    assert "user nobody may spend 0.60 GPU-h per period" in p.stdout
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
              for job, user in ((first, "nobody"), (other, "root"))}
    assert by_job[first]["held_h"] == pytest.approx(0.5) and by_job[other]["held_h"] == pytest.approx(1.0)
    [u] = [u for u in ledger.user_balances() if u.user == "nobody"]
    assert (u.account, u.held_h, u.available_h) == ("physics", pytest.approx(0.5), pytest.approx(0.1))

    # from the ledger's side too (the new snapshot): still refused; with the cap raised, admitted
    r = as_nobody(c, "sbatch", "-H", "--chdir=/", "-o", "/dev/null", "-A", "physics", "--gres=gpu:h100:1", "-t", "30",
                  "--wrap", "true")
    assert r.returncode != 0 and "per-user cap of 0.6 GPU-h" in r.stderr
    sg("budget", "user-cap", "set", "physics", "nobody", "1.0")
    sync(sg, c, "--no-reconcile")
    nobody_sbatch(c, "-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "30")
