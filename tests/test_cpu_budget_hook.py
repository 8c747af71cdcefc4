"""CPU-hour budgets in plugins/job_submit.lua (slurm_job_submit and slurm_job_modify under lua5.1,
with the hook's files in a scratch directory; no slurmctld): a job of an account with a CPU budget
(cpu_account line) is refused when its CPU price exceeds what the snapshot leaves minus what the
journal admitted since; an account without one is not priced at all."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hook_cases import DRIVER, HOOK, ROOT, SEP, line, unesc

from slurmgov.slurm import journal, snapshot

PART = ("part", SEP.join(["gpu", "30", "1440", "1", "1"]))  # DefaultTime 30, MaxTime 1440, default


@pytest.fixture
def hook_dir(tmp_path: Path) -> Path:
    shutil.copy(HOOK, tmp_path / "job_submit.lua")
    write_snapshot(tmp_path)
    return tmp_path


def write_snapshot(d: Path, written: int | None = None, **change) -> None:
    snap = snapshot.Snapshot(
        serial=int(time.time() * 1000), written=int(time.time()) if written is None else written, max_age_s=600,
        max_gpus_per_node=4, available_gpu_s={"chem-ai": 100 * 3600.0, "physics": 100 * 3600.0},
        available_cpu_s={"chem-ai": 10 * 3600.0}, partition_cpus={"gpu": (64, 1.0)}, max_cpus_per_node=64)
    for k, v in change.items():
        setattr(snap, k, v)
    snapshot.write(d / "slurmgov_snapshot.txt", snap)


def run(d: Path, *cmds: list[tuple[str, object]]) -> list[list[str]]:
    lines = [line(c) for c in cmds]
    proc = subprocess.run(["lua5.1", str(DRIVER), str(d / "job_submit.lua")], input="".join(x + "\n" for x in lines),
                          capture_output=True, text=True, check=True, cwd=ROOT, timeout=60)
    assert not proc.stderr, proc.stderr
    return [[unesc(f) for f in ln.split("\t")] for ln in proc.stdout.splitlines()]


def submit(account: str, uid: int = 1000, **desc) -> list[tuple[str, object]]:
    return [("cmd", "submit"), ("uid", uid), PART, ("d.account", account), ("d.user_id", str(uid)),
            *[(f"d.{k}", v) for k, v in desc.items()]]


def modify(rec: dict, uid: int, **desc) -> list[tuple[str, object]]:
    return [("cmd", "modify"), ("uid", uid), PART, *[(f"r.{k}", v) for k, v in rec.items()],
            *[(f"d.{k}", v) for k, v in desc.items()]]


def journal_lines(d: Path) -> list[str]:
    p = d / "slurmgov_journal.log"
    return p.read_text().splitlines() if p.exists() else []


def refusals(d: Path) -> list[str]:
    p = d / "slurmgov_refusals.log"
    return [x.split("\t")[2] for x in p.read_text().splitlines()] if p.exists() else []


def test_cpu_only_jobs_against_the_cpu_budget(lua51, hook_dir):
    rows = run(
        hook_dir,
        submit("chem-ai", num_tasks=64, time_limit=60),  # 64 CPU-h of 10
        submit("chem-ai", num_tasks=4, cpus_per_task=2, time_limit=60),  # 8 CPU-h: admitted
        submit("chem-ai", num_tasks=4, time_limit=60),  # 4 CPU-h of the 2 the journal leaves
        submit("CHEM-AI", num_tasks=2, time_limit=60),  # the same account in upper case: 2 of 2
        submit("physics", num_tasks=64, time_limit=6000),  # no CPU budget: untouched
    )
    assert rows[0][2] == "-1" and rows[0][4] == "slurmgov: account chem-ai: 10.0 CPU-h left, job needs up to 64.0 CPU-h"
    assert rows[1][2] == "0" and rows[1][3].startswith("slurmgov:hold=") and rows[1][4] == "-"
    assert rows[1][3].endswith("slurmgov:req=4,-,-,-,2")  # -c kept for a later change's price
    assert rows[2][2] == "-1" and rows[2][4] == "slurmgov: account chem-ai: 2.0 CPU-h left, job needs up to 4.0 CPU-h"
    assert rows[3][2] == "0"
    assert rows[4][2:] == ["0", "-", "-"]  # no hold, no AdminComment, no journal line
    admits = [journal.parse(x) for x in journal_lines(hook_dir)]
    assert [(a.account, a.cost_gpu_s, a.gpus, a.cpu_cost_s, a.cpus, a.time_limit_min) for a in admits] == [
        ("chem-ai", 0.0, 0, 8 * 3600.0, 8, 60), ("chem-ai", 0.0, 0, 2 * 3600.0, 2, 60)]
    assert rows[1][3].startswith(f"slurmgov:hold={admits[0].token} ")
    assert refusals(hook_dir) == ["over_cpu_budget", "over_cpu_budget"]


def test_gpu_jobs_pay_cpus_too_where_the_account_has_a_cpu_budget(lua51, hook_dir):
    rows = run(
        hook_dir,
        submit("chem-ai", tres_per_node="gres:gpu:1", num_tasks=16, time_limit=60),  # GPU fits, CPUs do not
        submit("chem-ai", tres_per_node="gres:gpu:1", num_tasks=2, time_limit=60),
        submit("physics", tres_per_node="gres:gpu:1", num_tasks=16, time_limit=60),
    )
    assert rows[0][2] == "-1" and rows[0][4] == "slurmgov: account chem-ai: 10.0 CPU-h left, job needs up to 16.0 CPU-h"
    assert rows[1][2] == "0" and rows[2][2] == "0"
    lines = journal_lines(hook_dir)
    a, b = (journal.parse(x) for x in lines)
    assert (a.account, a.cost_gpu_s, a.cpu_cost_s, a.cpus) == ("chem-ai", 3600.0, 2 * 3600.0, 2)
    assert (b.account, b.cost_gpu_s, b.cpu_cost_s, b.cpus) == ("physics", 3600.0, 0.0, 0)
    assert [len(x.split("\t")) for x in lines] == [13, 11]  # no CPU budget: the line as before CPU budgets


def test_exclusive_takes_the_partitions_whole_nodes_and_pins_them(lua51, hook_dir):
    rows = run(hook_dir, submit("chem-ai", shared=0, num_tasks=1, time_limit=10))  # 64 CPUs x 10 min
    assert rows[0][4] == "slurmgov: account chem-ai: 10.0 CPU-h left, job needs up to 10.67 CPU-h"
    write_snapshot(hook_dir, available_cpu_s={"chem-ai": 20 * 3600.0})
    rows = run(hook_dir, submit("chem-ai", shared=0, num_tasks=1, time_limit=10))
    assert rows[0][2] == "0"
    [a] = (journal.parse(x) for x in journal_lines(hook_dir))
    assert (a.cpus, a.cpu_cost_s) == (64, 64 * 600.0)


def test_changes_are_priced_against_the_cpu_budget(lua51, hook_dir):
    [row] = run(hook_dir, submit("chem-ai", num_tasks=4, cpus_per_task=2, time_limit=60))  # 8 of 10 CPU-h
    rec = {"job_id": 77, "account": "chem-ai", "user_id": "1000", "admin_comment": row[3], "min_cpus": 8,
           "pn_min_cpus": 2, "time_limit": 60, "partition": "gpu"}
    rows = run(
        hook_dir,
        modify(rec, 1000, min_cpus=16),  # scontrol update NumCPUs=16: 8 CPU-h more of 2
        modify(rec, 1000, time_limit=600),  # TimeLimit=600: 72 CPU-h more
        modify(rec, 1000, time_limit=70),  # 1.33 CPU-h more: within the 2
        modify(rec, 1000, time_limit=30),  # a shrink: nothing more
        modify(rec, 0, min_cpus=64),  # root may grow it past the budget: re-priced, override journaled
        modify({**rec, "account": "physics", "admin_comment": "-"}, 1000, min_cpus=64),  # no CPU budget
    )
    assert [r[2] for r in rows] == ["-1", "-1", "0", "0", "0", "0"]
    lines = [journal.parse(x) for x in journal_lines(hook_dir)][1:]
    assert [(m.new_cpu_cost_s, m.old_cpu_cost_s, m.cpus, m.override) for m in lines] == [
        (8 * 70 * 60.0, 8 * 3600.0, 8, False), (8 * 30 * 60.0, 8 * 3600.0, 8, False),
        (64 * 3600.0, 8 * 3600.0, 64, True)]
    assert refusals(hook_dir) == ["over_cpu_budget", "over_cpu_budget"]


def test_moving_a_job_into_an_account_with_a_cpu_budget_costs_all_of_it(lua51, hook_dir):
    rec = {"job_id": 78, "account": "physics", "user_id": "1000", "min_cpus": 16, "time_limit": 60,
           "partition": "gpu"}
    rows = run(hook_dir, modify(rec, 1000, account="chem-ai"), modify(rec, 1000, account="chem-ai", time_limit=30))
    assert [r[2] for r in rows] == ["-1", "0"]
    [m] = [journal.parse(x) for x in journal_lines(hook_dir)]
    assert (m.account, m.old_account, m.key, m.new_cpu_cost_s, m.old_cpu_cost_s) == \
        ("chem-ai", "physics", "job-78", 16 * 1800.0, 0.0)  # all of it: nothing was held in physics


def test_stale_snapshot_and_fail_policy(lua51, hook_dir):
    write_snapshot(hook_dir, written=int(time.time()) - 3600)
    rows = run(hook_dir, submit("chem-ai", num_tasks=1, time_limit=10), submit("physics", num_tasks=1, time_limit=10))
    assert rows[0][2] == "-1" and rows[0][4].startswith("slurmgov: budget snapshot is stale") and \
        rows[0][4].endswith("jobs of accounts with a CPU budget are refused until it is refreshed (fail_policy closed)")
    assert rows[1][2] == "0" and journal_lines(hook_dir) == []
    write_snapshot(hook_dir, written=int(time.time()) - 3600, fail_policy="open")
    rows = run(hook_dir, submit("chem-ai", num_tasks=1, time_limit=10))
    assert rows[0][2] == "0"
    [a] = (journal.parse(x) for x in journal_lines(hook_dir))
    assert (a.serial, a.cpu_cost_s) == (0, 600.0)  # journaled as a fail-open admission


def test_without_a_snapshot_a_site_with_cpu_budgets_fails_closed_for_cpu_jobs_too(lua51, hook_dir):
    """The hook cannot tell which accounts have CPU budgets without a snapshot: `cpu_budgets yes`
    in slurmgov_hook.conf says the site has some, and fail_policy closed then holds CPU jobs too."""
    (hook_dir / "slurmgov_snapshot.txt").unlink()
    rec = {"job_id": 79, "account": "chem-ai", "user_id": "1000", "min_cpus": 2, "time_limit": 60, "partition": "gpu"}
    cmds = (submit("chem-ai", num_tasks=1, time_limit=10), modify(rec, 1000, min_cpus=4),
            modify(rec, 1000, time_limit=30), modify(rec, 0, min_cpus=64), modify(rec, 1000, account="physics"))
    assert [r[2] for r in run(hook_dir, *cmds)] == ["0"] * 5  # not said: CPU jobs pass, as before CPU budgets
    (hook_dir / "slurmgov_hook.conf").write_text("cpu_budgets yes\n")
    rows = run(hook_dir, *cmds)
    assert rows[0][2] == "-1" and rows[0][4].startswith("slurmgov: budget snapshot unreadable: ") and \
        rows[0][4].endswith("; CPU jobs are refused until it is refreshed (fail_policy closed, cpu_budgets yes)")
    assert [r[2] for r in rows[1:]] == ["-1", "0", "0", "-1"]  # growth and moves refused; a shrink and root pass
    assert journal_lines(hook_dir) == []
    assert refusals(hook_dir) == ["snapshot_unreadable"] * 3
    (hook_dir / "slurmgov_hook.conf").write_text("cpu_budgets yes\nfail_policy open\n")
    assert [r[2] for r in run(hook_dir, *cmds)] == ["0"] * 5


def test_an_older_hook_ignores_cpu_budgets(lua51, hook_dir):
    """The snapshot's CPU keys are unknown keys to a hook before them: the same file still reads."""
    text = (hook_dir / "slurmgov_snapshot.txt").read_text()
    assert "\ncpu_account\tchem-ai\t36000.000\n" in text and "\npartition_cpus\tgpu\t64\t1\n" in text
    old = snapshot.parse("\n".join(x for x in text.splitlines() if not x.startswith(("cpu_account", "partition_cpus",
                                                                                      "max_cpus"))) + "\n")
    assert snapshot.parse(text).available_gpu_s == old.available_gpu_s
