"""`slurmgov hooks check`: held probe jobs through the real submit hook, then cancelled.

Against the test cluster (tests/slurm_harness.py: 4 nodes x 4 h100, partition ``gpu`` with
DefaultTime=30), with the shipped hook and with a hook that admits everything unjournaled.
The last tests drive the check with a stand-in runner (no Slurm): Ctrl-C still cancels.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_snapshot
from slurm_harness import PARTITION_DEFAULT_TIME_MIN

from slurmgov.slurm import hooks_check

pytestmark = pytest.mark.slurm
BIN = Path(sys.executable).parent
SHIPPED_HOOK = Path(__file__).resolve().parents[1] / "plugins" / "job_submit.lua"
NOOP_HOOK = ("function slurm_job_submit(j,p,u) return slurm.SUCCESS end\n"
             "function slurm_job_modify(j,r,p,u) return slurm.SUCCESS end\n"
             "return slurm.SUCCESS\n")
TYPED = "--gres=gpu:h100:2 -t 10"
CPU = "-t 10"


def put_hook(c, text: str) -> None:
    """Replace the conf dir's job_submit.lua whole. slurmctld reloads it when its mtime (whole
    seconds) changes, so the new file must not share the old one's second."""
    time.sleep(1.1)
    tmp = c.conf_dir / ".job_submit.lua.tmp"
    tmp.write_text(text)
    tmp.replace(c.conf_dir / "job_submit.lua")


def probe_jobs(c) -> list[str]:
    r = c.run("squeue", "-h", "-o", "%j")
    assert r.returncode == 0, r.stderr
    return [n for n in r.stdout.split() if n.startswith("slurmgov-probe")]


@pytest.fixture
def check(slurm_cluster, root, slurmgov_home):
    c = slurm_cluster
    c.cancel_all()
    c.hook_conf_path.unlink(missing_ok=True)
    # COLUMNS: rich draws the table this wide instead of folding cells at 80 columns.
    env = {**c.env, "SLURMGOV_HOME": str(slurmgov_home), "COLUMNS": "300"}

    def run(*args):
        p = subprocess.run([str(BIN / "slurmgov"), "hooks", "check", "--slurm-conf-dir", str(c.conf_dir),
                            "--site", str(root / "site_configs" / "demo-cluster.yaml"), *args],
                           capture_output=True, text=True, env=env, cwd=c.work_dir, timeout=120)
        assert "Traceback" not in p.stderr, p.stderr
        return p

    yield c, run
    c.cancel_all()


def test_probes_are_priced_shown_and_cancelled(check):
    c, run = check
    serial = write_snapshot(c, {"chem-ai": 1e9, "bio-ml": 0.0})
    p = run("--json")
    assert p.returncode == 0, p.stderr + p.stdout
    rep = json.loads(p.stdout)
    assert rep["ok"] and rep["problems"] == []
    assert rep["account"] == "chem-ai" and rep["gpu_type"] == "h100"  # the site's first budgeted account, first type
    assert rep["fail_policy"] == "closed"
    snap = rep["snapshot"]
    assert snap["readable"] and snap["serial"] == serial and snap["accounts"] == 2
    assert snap["max_age_s"] == 600 and snap["age_s"] >= 0 and snap["stale"] is False
    assert rep["slurm_conf"]["submit_lua"] and rep["slurm_conf"]["jobcomp_lua"]
    by = {pr["request"]: pr for pr in rep["probes"]}
    assert len(by) == 10 and CPU in by and "--gres=gpu:1" in by and "--gres=gpu:1 --exclusive -t 10" in by

    typed = by[TYPED]
    assert typed["outcome"] == "admitted" and typed["job_id"]
    price = typed["admit"]
    assert (price["gpus"], price["minutes"], price["weighted_gpu_s"], price["tasks"]) == ("2", "10", 1200.0, "1")
    assert price["account"] == "chem-ai" and price["gpu_type"] == "h100" and price["serial"] == serial
    assert "gpu:h100:2" in typed["handed"]["tres_per_node"] and typed["handed"]["time_limit"] == "10"
    assert typed["admin_comment"].startswith(f"slurmgov:hold={price['token']}")
    assert typed["slurm_now"]["TimeLimit"] == "00:10:00"

    untimed = by["--gres=gpu:1"]["admit"]
    assert (untimed["gpus"], untimed["minutes"]) == ("1", str(PARTITION_DEFAULT_TIME_MIN))
    for pr in rep["probes"]:
        if pr["gpu"]:  # every GPU form: a probe line, an admit line, and the two agree on the price
            assert pr["ok"] and pr["handed"] is not None and pr["admit"] is not None, pr
            assert float(pr["hook_price"]["price"]) == pytest.approx(pr["admit"]["weighted_gpu_s"]), pr
            assert pr["admit"]["tasks"] == pr["hook_price"]["tasks"], pr  # the admit line's own count

    cpu = by[CPU]
    assert cpu["outcome"] == "untouched" and cpu["ok"] and cpu["job_id"]
    assert cpu["admit"] is None and cpu["token"] is None and "slurmgov" not in (cpu["admin_comment"] or "")

    # Every probe went through the hook's journal, and none is left in the queue.
    journal = c.journal_path.read_text()
    assert all(f"\t{pr['job_name']}\t" in journal for pr in rep["probes"] if pr["gpu"])
    assert rep["left_in_queue"] == [] and probe_jobs(c) == []


def test_table_shows_prices_policy_and_age(check):
    c, run = check
    serial = write_snapshot(c, {"chem-ai": 1e9})
    p = run("--account", "chem-ai")
    assert p.returncode == 0, p.stderr + p.stdout
    out = p.stdout
    assert "fail policy in force: closed" in out
    assert f"serial {serial}, age " in out and "of max 600 s (fresh), 1 accounts" in out
    assert "JobSubmitPlugins=lua (lua: yes)" in out and "JobCompType=jobcomp/lua (jobcomp/lua: yes)" in out
    [typed_row] = [ln for ln in out.splitlines() if TYPED in ln]
    assert "1200 GPU-s = 0.33 GPU-h: 2 GPU x 10 min" in typed_row and "admitted" in typed_row
    [cpu_row] = [ln for ln in out.splitlines() if f"│ {CPU} " in ln]
    assert "untouched" in cpu_row
    assert "ok: every GPU probe was priced by the hook" in out
    assert probe_jobs(c) == []


def test_over_budget_probes_are_refusals_not_failures(check):
    c, run = check
    write_snapshot(c, {"bio-ml": 0.0})
    p = run("--account", "bio-ml", "--json")
    assert p.returncode == 0, p.stderr + p.stdout
    rep = json.loads(p.stdout)
    for pr in rep["probes"]:
        if pr["gpu"]:
            assert pr["outcome"] == "refused (budget)" and "slurmgov: account bio-ml" in pr["refusal"], pr
            assert pr["handed"] is not None and pr["admit"] is None
    assert probe_jobs(c) == []


def test_hook_that_journals_nothing_fails_the_check(check):
    c, run = check
    write_snapshot(c, {"chem-ai": 1e9})
    put_hook(c, NOOP_HOOK)
    try:
        p = run("--json")
        assert p.returncode == 1, p.stderr + p.stdout
        last = p.stderr.strip().splitlines()[-1]  # one line, after any warnings
        assert last.startswith("slurmgov: the hook journaled nothing for 9 GPU probe(s) that Slurm admitted")
        rep = json.loads(p.stdout)
        assert not rep["ok"]
        assert [pr["hook_inactive"] for pr in rep["probes"]] == [True] * 9 + [False]
        assert probe_jobs(c) == []
        p = run()  # the table says so too
        assert p.returncode == 1 and "admitted, not journaled" in p.stdout
        assert "job_submit.lua differs from slurmgov's plugins/job_submit.lua" in p.stderr
    finally:
        put_hook(c, SHIPPED_HOOK.read_text())
    assert probe_jobs(c) == []


def test_conf_dir_without_slurm_conf_or_hook_is_bad_input(check, tmp_path):
    c, run = check
    for missing in ("slurm.conf", "job_submit.lua"):
        d = tmp_path / missing.replace(".", "_")
        d.mkdir()
        for name in ("slurm.conf", "job_submit.lua"):
            if name != missing:
                shutil.copyfile(c.conf_dir / name, d / name)
        p = subprocess.run([str(BIN / "slurmgov"), "hooks", "check", "--slurm-conf-dir", str(d)],
                           capture_output=True, text=True, env=c.env, timeout=60)
        assert p.returncode == 2
        [line] = p.stderr.strip().splitlines()
        assert line.startswith("slurmgov: ") and f"no {missing}" in line


# ------------------------------------------------------------ no Slurm: a stand-in runner
class FakeSlurm:
    """sbatch hands out ids; the journal never hears of them (a hook that is not running)."""

    def __init__(self, interrupt_at: int | None = None):
        self.calls: list[list[str]] = []
        self.queue: list[str] = []
        self.interrupt_at = interrupt_at

    def __call__(self, cmd):
        self.calls.append(cmd)
        if cmd[0] == "sbatch":
            n = sum(1 for c in self.calls if c[0] == "sbatch")
            if n == self.interrupt_at:
                raise KeyboardInterrupt
            job = str(100 + n)
            self.queue.append(job)
            return hooks_check.Result(0, f"{job}\n", "")
        if cmd[0] == "scontrol":
            return hooks_check.Result(0, f"JobId={cmd[-1]} JobName=x TimeLimit=00:10:00 NumNodes=1 AdminComment=(null)\n", "")
        if cmd[0] == "scancel":
            self.queue = [j for j in self.queue if j not in cmd[1:]]
            return hooks_check.Result(0, "", "")
        if cmd[0] == "squeue":
            return hooks_check.Result(0, "".join(f"{j}\n" for j in self.queue), "")
        raise AssertionError(cmd)


class FakeClock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


@pytest.fixture
def hook_dir(tmp_path):
    (tmp_path / "slurm.conf").write_text("JobSubmitPlugins=lua\nJobCompType=jobcomp/lua\n")
    (tmp_path / "job_submit.lua").write_text(NOOP_HOOK)
    return tmp_path


def test_fake_inactive_hook_is_reported_and_probes_cancelled(hook_dir):
    fake = FakeSlurm()
    clock = FakeClock()
    rep = hooks_check.check(hook_dir, "chem-ai", "h100", fake, clock=clock, sleep=clock.sleep)
    assert not rep.ok and "journaled nothing for 9 GPU probe(s)" in rep.headline()
    assert fake.queue == [] and rep.left_in_queue == []
    [cancel] = [c for c in fake.calls if c[0] == "scancel"]
    assert cancel[1:] == [str(100 + i) for i in range(1, 11)]


def test_a_site_with_cpu_budgets_is_told_to_say_so_in_the_hook_conf(hook_dir):
    """Without a snapshot the hook cannot tell which accounts have CPU budgets: `hooks check`
    says so where the snapshot has some and slurmgov_hook.conf lacks `cpu_budgets yes`."""
    clock = FakeClock()
    (hook_dir / hooks_check.SNAPSHOT).write_text(
        f"slurmgov-snapshot\t1\nserial\t7\nwritten\t{int(clock.t)}\nmax_age_s\t600\n"
        "account\tchem-ai\t1\ncpu_account\tchem-ai\t3600\nend\n")

    def warned() -> list[str]:
        rep = hooks_check.check(hook_dir, "chem-ai", "h100", FakeSlurm(), clock=clock, sleep=clock.sleep)
        return [w for w in rep.warnings if "cpu_budgets yes" in w]

    [w] = warned()
    assert "gives 1 account(s) a CPU budget but slurmgov_hook.conf does not say `cpu_budgets yes`" in w
    (hook_dir / "slurmgov_hook.conf").write_text("cpu_budgets yes\n")
    assert warned() == []


def test_fake_interrupt_still_cancels_what_was_submitted(hook_dir):
    fake = FakeSlurm(interrupt_at=4)
    with pytest.raises(hooks_check.Interrupted) as exc:
        clock = FakeClock()
        hooks_check.check(hook_dir, None, "h100", fake, clock=clock, sleep=clock.sleep)
    assert exc.value.exit_code == 130
    assert fake.queue == []
    assert any(c[0] == "scancel" and c[1:] == ["101", "102", "103"] for c in fake.calls)


def test_hook_conf_is_read_as_the_hook_reads_it(tmp_path):
    """`key value`, the value running to the end of the line or to a `#` after a space (the hook
    drops such comments); a value the hook cannot use is shown as ignored."""
    (tmp_path / "slurmgov_hook.conf").write_text(
        "# site\njournal_path /var/lib/slurmgov/j.log\nfail_policy open   # for an unreadable snapshot\n"
        "default_time_min soon\n")
    conf = hooks_check.read_hook_conf(tmp_path)
    assert conf.journal_path == "/var/lib/slurmgov/j.log" and conf.snapshot_path == str(tmp_path / hooks_check.SNAPSHOT)
    assert conf.fail_policy == "open"
    [why] = conf.ignored
    assert "default_time_min 'soon' is not a whole number; the hook ignores it" in why
    assert not conf.cpu_budgets
    (tmp_path / "slurmgov_hook.conf").write_text("cpu_budgets yes  # this site budgets CPUs\n")
    assert hooks_check.read_hook_conf(tmp_path).cpu_budgets


def test_snapshot_header_fresh_stale_unreadable(tmp_path):
    path = tmp_path / "snap.txt"
    path.write_text("slurmgov-snapshot\t1\nserial\t7\nwritten\t1000\nmax_age_s\t600\n"
                    "account\ta\t1\naccount\tb\t-2.5\nend\n")
    s = hooks_check.read_snapshot(path, now=1500)
    assert (s.readable, s.serial, s.age_s, s.stale, s.fail_policy, s.accounts) == (True, "7", 500, False, "closed", ["a", "b"])
    assert hooks_check.read_snapshot(path, now=1601).stale
    path.write_text(path.read_text().replace("end\n", ""))
    s = hooks_check.read_snapshot(path, now=1500)
    assert not s.readable and "no end line" in s.error
    path.write_text("slurmgov-snapshot\t1\nserial\t7\nwritten\t1000\nmax_age_s\t600\n"
                    "account\ta\t1\ncpu_account\ta\t3600\nend\n")
    assert hooks_check.read_snapshot(path, now=1500).cpu_accounts == 1


def test_unset_fields_are_left_out_of_the_table():
    handed = {"account": "a", "min_nodes": "4294967294", "time_limit": "4294967295", "shared": "65534",
              "num_tasks": "65534", "ntasks_per_node": "65535"}
    assert hooks_check.set_fields(handed) == {"account": "a", "time_limit": "INFINITE", "num_tasks": "65534",
                                              "ntasks_per_node": "INFINITE"}
