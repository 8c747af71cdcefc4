"""Allocations that are not batch jobs pay the same price: srun, salloc and heterogeneous jobs on a real Slurm.

sbatch and ``scontrol update`` are tested in tests/test_hook_holes.py and tests/test_budget_paths.py.
``srun`` and ``salloc`` outside an allocation ask slurmctld for one of their own, and each component
of a heterogeneous job is handed to the submit hook on its own (issue 11: every path to GPU time is
priced, held and charged). So: an interactive allocation the account cannot pay for is refused
with the hook's one line, one it can pay for is held and then charged what sacct says it used,
and a heterogeneous job whose components fit one by one but not together does not get in.
"""

from __future__ import annotations

import json

import pytest
from helpers import governor_sees_final, journal, settle_of, sync, wait_for

pytestmark = pytest.mark.slurm

# srun's and salloc's own command prints the allocation's id: neither prints it otherwise
PRINT_ID = ("sh", "-c", "echo JOB=$SLURM_JOB_ID")


def allocate(c, tool: str, *args: str):
    """``srun``/``salloc`` as root (the test cluster's spool is root's) with PRINT_ID as its command."""
    return c.run(tool, *args, *PRINT_ID, timeout=90)


def job_of(r) -> str:
    assert r.returncode == 0, r.stderr
    [line] = [ln for ln in r.stdout.splitlines() if ln.startswith("JOB=")][-1:]
    return line[len("JOB="):]


def tokens_of(c, job: str) -> list[str]:
    """The hold tokens in the AdminComment of each of the job's records (a heterogeneous job: one per component)."""
    shown = c.run("scontrol", "show", "job", "-o", job).stdout.split()
    return [t[len("AdminComment=slurmgov:hold="):] for t in shown if t.startswith("AdminComment=slurmgov:hold=")]


def admits(c) -> list[list[str]]:
    return [ln for ln in journal(c) if ln[0] == "admit"]


@pytest.mark.parametrize("tool", ["srun", "salloc"])
def test_an_interactive_allocation_over_the_budget_is_refused(gov, tool):
    c, sg, _, ledger = gov  # physics: 1 GPU-h
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    before = len(admits(c))
    r = allocate(c, tool, "-A", "physics", "--gres=gpu:h100:4", "-t", "30")  # 2 GPU-h
    assert r.returncode != 0
    assert "slurmgov: account physics:" in r.stderr and "job needs up to 2.0 GPU-h" in r.stderr, r.stderr
    assert "JOB=" not in r.stdout  # no allocation, nothing ran
    assert len(admits(c)) == before
    assert ledger.balance("physics").held_h == 0


@pytest.mark.parametrize("tool", ["srun", "salloc"])
def test_an_interactive_allocation_is_held_then_charged_what_it_used(gov, tool):
    c, sg, _, ledger = gov
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    job = job_of(allocate(c, tool, "-A", "physics", "--gres=gpu:h100:2", "-t", "6"))
    # the hook admitted it like a batch job: its token in the AdminComment, an admit line at its price
    [token] = tokens_of(c, job)
    [adm] = [a for a in admits(c) if a[3] == token]
    assert (adm[4], float(adm[6])) == ("physics", 2 * 6 * 60.0)
    wait_for(lambda: settle_of(c, job), timeout=60, what="its settle line")
    wait_for(lambda: governor_sees_final(c, job), timeout=60, what="sacct to show it ended")
    rep = sync(sg, c)
    assert not rep["problems"], rep
    sacct = json.loads(c.run("sacct", "--json", "-j", job).stdout)["jobs"][0]
    [charge] = [ch for ch in ledger.charges() if ch["charge_key"].startswith(f"slurm:job:{job}@")]
    assert charge["account"] == "physics" and charge["hold_key"] == f"slurm:{token}"
    assert charge["gpu_seconds"] == pytest.approx(2 * sacct["time"]["elapsed"], abs=2)
    assert ledger.hold(f"slurm:{token}").state == "done" and ledger.balance("physics").held_h == 0
    assert not [d for d in sync(sg, c)["drift"] if f"job {job}" in d]  # billed once


HETJOB = "#!/bin/sh\ntrue\n"


@pytest.mark.parametrize("tool", ["sbatch", "salloc"])
def test_a_heterogeneous_job_over_the_budget_is_refused_though_each_component_fits(gov, tool):
    c, sg, _, ledger = gov  # physics: 1 GPU-h
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    part = ["-A", "physics", "--gres=gpu:h100:2", "-t", "20"]  # 2/3 GPU-h each: one fits, two do not
    if tool == "sbatch":
        r = c.sbatch(["-H", *part, ":", *part], script=HETJOB)
    else:
        r = allocate(c, "salloc", *part, ":", *part)
    assert r.returncode != 0 and "slurmgov: account physics:" in r.stderr, r.stderr
    assert "JOB=" not in r.stdout and c.run("squeue", "-h", "-A", "physics").stdout.strip() == ""
    # the first component's admission (the hook said yes before it saw the second) is released
    # once no job carries its token
    rep = sync(sg, c, "--grace", "0")
    assert not rep["problems"], rep
    assert ledger.balance("physics").held_h == 0


def test_a_heterogeneous_job_that_fits_is_held_per_component(gov):
    c, sg, _, ledger = gov  # physics: 1 GPU-h
    sg("hooks", "install", "--slurm-conf-dir", c.conf_dir)
    small = ["-A", "physics", "--gres=gpu:h100:1", "-t", "20"]  # 1/3 GPU-h each
    job = c.job_id(c.sbatch(["-H", *small, ":", *small], script=HETJOB))
    tokens = tokens_of(c, job)
    assert len(tokens) == 2 == len(set(tokens)), tokens  # one hold per component
    sync(sg, c)
    assert ledger.balance("physics").held_h == pytest.approx(2 / 3)
    for t in tokens:
        assert ledger.hold(f"slurm:{t}").amount_h == pytest.approx(1 / 3)
