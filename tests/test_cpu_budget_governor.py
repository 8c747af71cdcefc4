"""CPU-hour budgets from the site file through the hook to the ledger (governor.sync_once, real
SQLite, the Lua hook under lua5.1; no Slurm): a CPU budget is the ledger account cpu:<account>,
a job's CPU hold is held on admit lines, charged cpus x elapsed x its partition's weight on settle
lines, closed, and never counted twice; accounts without a CPU budget are untouched."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hook_cases import DRIVER, HOOK, ROOT, SEP, line, unesc

from slurmgov.ledger.store import Ledger
from slurmgov.site import model as site_mod
from slurmgov.slurm import governor, snapshot

SITE = """site: cpu-budgets
executor: slurm
gpu_types:
  h100: {memory_gb: 80, weight: 1.0}
nodes:
  - {names: "gpu[01-02]", gpus: 4, gpu_type: h100, cpus: 16, memory: 64G}
partitions:
  - {name: gpu, nodes: "gpu[01-02]", default: true, default_time: "00:30:00", max_time: "1-00:00:00", cpu_weight: 2.0}
accounts:
  chem-ai: {budget_gpu_hours: 50, budget_cpu_hours: 10}
  physics: {budget_gpu_hours: 50}
ledger: sqlite:///${SLURMGOV_HOME}/ledger.sqlite
fail_policy: closed
snapshot_max_age_s: 300
"""


@pytest.fixture
def env(tmp_path: Path, lua51):
    (tmp_path / "site.yaml").write_text(SITE)
    site = site_mod.load(tmp_path / "site.yaml")
    conf, state = tmp_path / "etc", tmp_path / "state"
    conf.mkdir()
    shutil.copy(HOOK, conf / "job_submit.lua")
    ledger = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite")
    yield site, conf, state, ledger
    ledger.disconnect()


def submit(conf: Path, account: str, **desc) -> list[str]:
    req = line([("cmd", "submit"), ("uid", 1000), ("part", SEP.join(["gpu", "30", "1440", "1", "1"])),
                ("d.account", account), ("d.user_id", "1000"), *[(f"d.{k}", v) for k, v in desc.items()]])
    proc = subprocess.run(["lua5.1", str(DRIVER), str(conf / "job_submit.lua")], input=req + "\n",
                          capture_output=True, text=True, check=True, cwd=ROOT, timeout=60)
    assert not proc.stderr, proc.stderr
    return [unesc(f) for f in proc.stdout.rstrip("\n").split("\t")]


def token_of(admin_comment: str) -> str:
    return admin_comment.split()[0].removeprefix("slurmgov:hold=")


def test_cpu_budget_from_site_file_to_snapshot_hold_and_charge(env):
    site, conf, state, ledger = env
    rep = governor.sync_once(ledger, site, conf, state)
    assert not rep.problems
    snap = snapshot.read(conf / governor.SNAPSHOT)
    assert snap.available_cpu_s == {"chem-ai": 36000.0}  # physics has no CPU budget
    assert snap.partition_cpus == {"gpu": (16, 2.0)} and snap.max_cpus_per_node == 16
    assert set(snap.available_gpu_s) == {"chem-ai", "physics"}  # cpu:chem-ai is no GPU account
    from slurmgov.interface import views
    assert {b["account"] for b in views.budgets(ledger)} == {"chem-ai", "physics"}  # the API's and dashboard's too

    row = submit(conf, "chem-ai", num_tasks=2, time_limit=60)  # 2 CPUs x 1 h x 2.0 = 4 CPU-h
    assert row[2] == "0", row
    token = token_of(row[3])
    assert submit(conf, "physics", num_tasks=64, time_limit=60)[2:] == ["0", "-", "-"]
    rep = governor.sync_once(ledger, site, conf, state)
    assert not rep.problems and rep.admitted == 1
    hold = ledger.hold(f"slurm:cpu:{token}")
    assert (hold.account, hold.amount_h, hold.state) == ("cpu:chem-ai", 4.0, "open")
    assert ledger.hold(f"slurm:{token}").amount_h == 0.0  # its GPU hold: nothing
    assert ledger.balance("cpu:chem-ai").held_h == 4.0
    assert snapshot.read(conf / governor.SNAPSHOT).available_cpu_s == {"chem-ai": 6 * 3600.0}

    # The snapshot now leaves 6 CPU-h: an 8 CPU-h job is refused
    row = submit(conf, "chem-ai", num_tasks=4, time_limit=60)
    assert row[2] == "-1" and row[4] == "slurmgov: account chem-ai: 6.0 CPU-h left, job needs up to 8.0 CPU-h"

    # Settled: 2 CPUs x 30 min x 2.0 = 2 CPU-h charged, the hold closed, the rest back
    start = int(time.time()) - 3600
    settle = f"settle\t4242\t{token}\tchem-ai\t0\t{start}\t{start + 1800}\tCOMPLETED\t-\t-\t0\t2\n"
    (conf / governor.SETTLES).write_text(settle)
    rep = governor.sync_once(ledger, site, conf, state)
    assert not rep.problems
    assert ledger.hold(f"slurm:cpu:{token}").state == "done"
    [charge] = ledger.charges(f"slurm:cpu:{token}")
    assert charge["charge_key"] == f"slurm:job:cpu:4242@{start}"
    b = ledger.balance("cpu:chem-ai")
    assert (b.charged_h, b.held_h, b.available_h) == (2.0, 0.0, 8.0)
    assert ledger.balance("chem-ai").charged_h == 0.0  # no GPU was used

    # The same line read again (a cursor lost): nothing counted twice
    (state / "governor-cursors.json").unlink()
    rep = governor.sync_once(ledger, site, conf, state)
    assert not rep.problems
    assert ledger.balance("cpu:chem-ai").charged_h == 2.0


def test_a_job_without_a_hold_is_billed_its_cpus_at_the_dearest_weight(env):
    site, conf, state, ledger = env
    governor.sync_once(ledger, site, conf, state)
    start = int(time.time()) - 3600
    (conf / governor.SETTLES).write_text(
        f"settle\t4300\t-\tchem-ai\t0\t{start}\t{start + 900}\tCOMPLETED\t-\t-\t0\t8\n"  # 8 CPUs x 15 min x 2.0
        f"settle\t4301\t-\tphysics\t0\t{start}\t{start + 900}\tCOMPLETED\t-\t-\t0\t8\n")  # no CPU budget
    rep = governor.sync_once(ledger, site, conf, state)
    assert not rep.problems
    assert ledger.balance("cpu:chem-ai").charged_h == 4.0
    assert ledger.hold("slurm:job-cpu:4300").state == "done"
    assert ledger.find_hold("slurm:job-4301") is None and ledger.find_hold("slurm:job-cpu:4301") is None


def test_a_change_re_prices_the_cpu_hold(env):
    site, conf, state, ledger = env
    governor.sync_once(ledger, site, conf, state)
    token = token_of(submit(conf, "chem-ai", num_tasks=2, time_limit=60)[3])
    mod = "\t".join(["modify", str(int(time.time())), "0", token, "chem-ai", "1000", "0.000", "0", "90", "-", "4242",
                     "chem-ai", "0.000", "0", "1", "1700000200-9-00ac", "1", "21600.000", "14400.000", "2"])
    with open(conf / governor.ADMITS, "a") as fh:
        fh.write(mod + "\n")
    rep = governor.sync_once(ledger, site, conf, state)
    assert not rep.problems and rep.modified == 1
    assert ledger.hold(f"slurm:cpu:{token}").amount_h == 6.0
    assert any("CPU-h" in a.get("reason", "") for a in ledger.audit(["cpu:chem-ai"]))  # the override, audited


class StandInSlurm:
    """sacct and squeue rows as slurm/commands.py parses them (a stand-in: the real ones run in
    tests/test_cpu_budget_slurm.py)."""

    def __init__(self, jobs=(), queued=()):
        self.jobs, self.queued = list(jobs), list(queued)

    def sacct_jobs(self):
        return self.jobs

    def squeue_jobs(self):
        return self.queued


def test_reconcile_bills_cpus_from_sacct_where_settle_lines_were_lost(env):
    from slurmgov.slurm.commands import Job

    site, conf, state, ledger = env
    governor.sync_once(ledger, site, conf, state)
    token = token_of(submit(conf, "chem-ai", num_tasks=2, time_limit=60)[3])
    governor.sync_once(ledger, site, conf, state)
    start = int(time.time()) - 3600
    jobs = [Job("4400", "chem-ai", "COMPLETED", token, 0, start, start + 1800, 1800, cpus=2),  # held, line lost
            Job("4401", "chem-ai", "COMPLETED", None, 0, start, start + 900, 900, cpus=4),  # never held
            Job("4402", "physics", "COMPLETED", None, 0, start, start + 900, 900, cpus=4)]  # no CPU budget
    rep = governor.sync_once(ledger, site, conf, state, slurm=StandInSlurm(jobs))
    assert ledger.hold(f"slurm:cpu:{token}").state == "done"
    assert [c["charge_key"] for c in ledger.charges(f"slurm:cpu:{token}")] == [f"slurm:job:cpu:4400@{start}"]
    assert ledger.hold("slurm:job-cpu:4401").state == "done"
    # 2 CPUs x 30 min x 2.0 (the priced weight) + 4 CPUs x 15 min x 2.0 (the dearest partition's)
    assert ledger.balance("cpu:chem-ai").charged_h == 4.0
    assert any("job cpu:4400: no settle line" in d for d in rep.drift)
    # the settle line comes after all: the charge is the one reconcile made, not a second
    (conf / governor.SETTLES).write_text(
        f"settle\t4400\t{token}\tchem-ai\t0\t{start}\t{start + 1800}\tCOMPLETED\t-\t-\t0\t2\n")
    rep = governor.sync_once(ledger, site, conf, state, slurm=StandInSlurm(jobs))
    assert not rep.problems
    assert ledger.balance("cpu:chem-ai").charged_h == 4.0
    assert ledger.find_hold("slurm:job-cpu:4402") is None


def test_a_job_held_before_its_account_had_a_cpu_budget_is_billed_once(env):
    """Its admit line carries no CPUs (11 fields): the settle line and sacct both bill its CPUs on the
    one hold cpu:<token>, never on two."""
    from slurmgov.slurm.commands import Job

    site, conf, state, ledger = env
    governor.sync_once(ledger, site, conf, state)
    now, start = int(time.time()), int(time.time()) - 3600
    (conf / governor.ADMITS).write_text(f"admit\t{now}\t0\told-1\tchem-ai\t1000\t600.000\t1\t10\t-\t1\n")
    (conf / governor.SETTLES).write_text(
        f"settle\t4500\told-1\tchem-ai\t1\t{start}\t{start + 900}\tCOMPLETED\t-\t-\t0\t4\n")
    jobs = [Job("4500", "chem-ai", "COMPLETED", "old-1", 1, start, start + 900, 900, cpus=4)]
    rep = governor.sync_once(ledger, site, conf, state, slurm=StandInSlurm(jobs))
    assert not rep.problems, rep.problems
    [charge] = ledger.charges("slurm:cpu:old-1")
    assert charge["gpu_seconds"] == 4 * 900 and ledger.hold("slurm:cpu:old-1").state == "done"
    assert ledger.balance("cpu:chem-ai").charged_h == 4 * 900 * 2.0 / 3600  # at the dearest CPU weight
    assert not any("cpu" in d for d in rep.drift), rep.drift
