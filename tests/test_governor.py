"""The governor's pass over the hooks' journals, on files written the way the hooks write them."""

import time

import pytest

from slurmgov.ledger.store import Ledger
from slurmgov.site import model as site_mod
from slurmgov.slurm import governor, snapshot


@pytest.fixture
def env(root, tmp_path):
    site = site_mod.load(root / "site_configs" / "demo-cluster.yaml")
    conf = tmp_path / "etc"
    conf.mkdir()
    state = tmp_path / "state"
    ledger = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite")
    ledger.set_budget("physics", 10.0, "quarterly", actor="test")

    def sync():
        return governor.sync_once(ledger, site, conf, state)

    return site, conf, state, ledger, sync


T0 = int(time.time()) - 7200  # charges count in the period of their end: keep them in this one


def admit(token, account="physics", cost_h=2.0, gpus=2, minutes=60, gpu_type="h100", ts=T0):
    return f"admit\t{ts}\t1\t{token}\t{account}\t0\t{cost_h * 3600:.3f}\t{gpus}\t{minutes}\t{gpu_type}\n"


def settle(job, token, gpus=2, start=T0 + 100, end=T0 + 1900, state="COMPLETED", account="physics", array=None,
           restarts=None):
    line = f"settle\t{job}\t{token}\t{account}\t{gpus}\t{start}\t{end}\t{state}"
    if array is not None or restarts is not None:  # jobcomp's 11 fields
        line += f"\t-\t{array or '-'}\t{restarts or 0}"
    return line + "\n"


def modify(key, new_h, old_h, mod_id, account="physics", old_account="physics", job=500, uid=1000, override=0,
           gpus=2, minutes=60, gpu_type="h100", tasks=1, ts=T0 + 50):
    """A modify line as job_submit.lua's job_modify writes it (17 fields)."""
    return "\t".join(map(str, ("modify", ts, 1, key, account, 1000, f"{new_h * 3600:.3f}", gpus, minutes, gpu_type,
                                job, old_account, f"{old_h * 3600:.3f}", uid, override, mod_id, tasks))) + "\n"


def append(path, text):
    with open(path, "a") as fh:
        fh.write(text)


def test_admit_then_settle(env):
    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, admit("t1"))
    rep = sync()
    assert rep.admitted == 1 and not rep.problems
    assert ledger.balance("physics").held_h == pytest.approx(2.0)
    snap = snapshot.read(conf / governor.SNAPSHOT)
    assert snap.available_gpu_s["physics"] == pytest.approx(8.0 * 3600)
    assert snap.journal_offset == (conf / governor.ADMITS).stat().st_size  # ingested lines are not subtracted twice
    append(conf / governor.SETTLES, settle(101, "t1"))  # 2 GPUs x 1800 s = 1 GPU-h
    rep = sync()
    b = ledger.balance("physics")
    assert rep.settled == 1 and b.charged_h == pytest.approx(1.0) and b.held_h == 0
    assert ledger.hold("slurm:t1").state == "done"
    assert snapshot.read(conf / governor.SNAPSHOT).available_gpu_s["physics"] == pytest.approx(9.0 * 3600)


def test_hook_admissions_over_budget_are_recorded(env):
    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, admit("a", cost_h=7) + admit("b", cost_h=7))
    sync()
    assert ledger.balance("physics").available_h == pytest.approx(-4.0)
    assert snapshot.read(conf / governor.SNAPSHOT).available_gpu_s["physics"] == 0  # never negative on disk


def test_every_line_applied_exactly_once_even_without_cursors(env):
    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, admit("t1") + admit("t2"))
    append(conf / governor.SETTLES, settle(1, "t1") + settle(2, "t2", state="FAILED"))
    sync()
    before = ledger.balance("physics")
    (state / "governor-cursors.json").unlink()  # as if the governor died before saving its cursor
    sync()
    sync()
    assert ledger.balance("physics") == before
    assert before.charged_h == pytest.approx(2.0) and ledger.hold("slurm:t2").state == "failed"


def test_torn_line_waits_for_its_end(env):
    site, conf, state, ledger, sync = env
    line = admit("t1")
    append(conf / governor.ADMITS, line[:20])  # the hook was mid-write
    assert sync().admitted == 0
    assert snapshot.read(conf / governor.SNAPSHOT).journal_offset == 0
    append(conf / governor.ADMITS, line[20:])
    assert sync().admitted == 1
    assert ledger.balance("physics").held_h == pytest.approx(2.0)


def test_malformed_lines_are_reported_not_guessed(env):
    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, "admit\tgarbage\n" + admit("t1"))
    append(conf / governor.SETTLES, settle(9, "unknown-token"))
    rep = sync()
    assert rep.admitted == 1 and len(rep.problems) == 2
    assert "unrecognised journal line" in rep.problems[0] and "unknown-token" in rep.problems[1]
    assert ledger.balance("physics").charged_h == 0


def test_array_hold_closes_with_its_last_task(env):
    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, admit("arr", cost_h=3.0, gpus=1, minutes=60))  # 3 tasks x 1 GPU x 1 h
    for job in (201, 202):
        append(conf / governor.SETTLES, settle(job, "arr", gpus=1))
    sync()
    assert ledger.hold("slurm:arr").state == "open"
    append(conf / governor.SETTLES, settle(203, "arr", gpus=1))
    sync()
    assert ledger.hold("slurm:arr").state == "done"
    assert ledger.balance("physics").charged_h == pytest.approx(1.5)


def test_cancelled_while_pending_releases_the_hold(env):
    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, admit("p"))
    append(conf / governor.SETTLES, settle(300, "p", gpus=0, start=0, state="CANCELLED"))
    sync()
    b = ledger.balance("physics")
    assert b.held_h == 0 and b.charged_h == 0 and ledger.hold("slurm:p").state == "cancelled"


def test_install_hooks(env, root):
    import pwd
    import stat

    site, conf, state, ledger, sync = env
    names = governor.install_hooks(conf)
    assert names == ["job_submit.lua", "jobcomp.lua"]
    assert (conf / "job_submit.lua").read_text() == (root / "plugins" / "job_submit.lua").read_text()
    for name in governor.JOURNALS:  # no slurm.conf: SlurmUser is root
        st = (conf / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, 0)
    # SlurmUser's own files, in its group; a careless earlier 0666 is taken back
    (conf / "slurm.conf").write_text("ClusterName=c # SlurmUser=root\nSlurmctldHost=h SlurmUser=nobody\n")
    (conf / governor.SETTLES).chmod(0o666)
    governor.install_hooks(conf)
    nobody = pwd.getpwnam("nobody")
    for name in governor.JOURNALS:
        st = (conf / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, nobody.pw_uid, nobody.pw_gid)


def test_install_hooks_refuses_an_unknown_slurm_user(env):
    from slurmgov.errors import SlurmgovError

    site, conf, state, ledger, sync = env
    (conf / "slurm.conf").write_text("SlurmUser=no-such-user-here\n")
    with pytest.raises(SlurmgovError, match="SlurmUser=no-such-user-here is not a user on this host"):
        governor.install_hooks(conf)
    assert not (conf / "job_submit.lua").exists() and not (conf / governor.ADMITS).exists()


def test_sync_takes_back_a_careless_chmod_of_the_journals(env, caplog):
    import stat

    site, conf, state, ledger, sync = env
    governor.install_hooks(conf)
    (conf / governor.ADMITS).chmod(0o644)  # the tokens readable by every user
    (conf / governor.REFUSALS).chmod(0o600)  # tighter than needed: left alone
    with caplog.at_level("WARNING"):
        sync()
    modes = {n: stat.S_IMODE((conf / n).stat().st_mode) for n in governor.JOURNALS}
    assert modes == {governor.ADMITS: 0o640, governor.SETTLES: 0o640, governor.REFUSALS: 0o600}
    assert "mode 644 was more open than 640" in caplog.text


def test_snapshot_lists_the_site_admins_as_operators(env):
    import pwd

    from slurmgov.site.model import Admins

    site, conf, state, ledger, sync = env
    site = site.model_copy(update={"admins": Admins(users=("nobody", "no-such-user-here", "root"))})
    governor.sync_once(ledger, site, conf, state)
    assert snapshot.read(conf / governor.SNAPSHOT).operator_uids == [0, pwd.getpwnam("nobody").pw_uid]
    text = (conf / governor.SNAPSHOT).read_text()
    assert f"operator_uid\t{pwd.getpwnam('nobody').pw_uid}\n" in text and "no-such-user" not in text


# ---- job changes (modify lines), jobs without a token, arrays, requeues ---------------------

def test_modify_grows_and_shrinks_a_tokens_hold(env):
    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, admit("t1", cost_h=2.0) + modify("t1", 3.5, 2.0, "m1"))
    rep = sync()
    assert (rep.admitted, rep.modified, rep.problems) == (1, 1, [])
    assert ledger.balance("physics").held_h == pytest.approx(3.5)
    append(conf / governor.ADMITS, modify("t1", 1.0, 3.5, "m2"))  # shrunk below what was first held
    sync()
    h = ledger.hold("slurm:t1")
    assert (h.amount_h, h.remaining_h) == (pytest.approx(1.0), pytest.approx(1.0))
    assert ledger.balance("physics").held_h == pytest.approx(1.0)
    append(conf / governor.SETTLES, settle(101, "t1"))  # 2 GPUs x 1800 s: 1 GPU-h
    sync()
    b = ledger.balance("physics")
    assert (b.charged_h, b.held_h, ledger.hold("slurm:t1").state) == (pytest.approx(1.0), 0, "done")


def test_modify_moves_the_hold_to_the_jobs_new_account(env):
    site, conf, state, ledger, sync = env
    ledger.set_budget("chem-ai", 5.0, "quarterly", actor="test")
    append(conf / governor.ADMITS, admit("t1", cost_h=2.0)
           + modify("t1", 2.5, 2.0, "m1", account="chem-ai", old_account="physics"))
    sync()
    assert ledger.balance("physics").held_h == 0 and ledger.balance("chem-ai").held_h == pytest.approx(2.5)
    assert ledger.hold("slurm:t1").account == "chem-ai"
    append(conf / governor.SETTLES, settle(101, "t1", account="chem-ai"))
    sync()
    chem, phys = ledger.balance("chem-ai"), ledger.balance("physics")
    assert (chem.charged_h, chem.held_h, chem.available_h) == (pytest.approx(1.0), 0, pytest.approx(4.0))
    assert (phys.charged_h, phys.held_h, phys.available_h) == (0, 0, pytest.approx(10.0))


def test_modify_holds_a_job_the_hook_never_held_and_audits_an_override(env):
    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, modify("job-77", 4.0, 0.0, "m1", job=77, uid=0, override=1))
    sync()
    h = ledger.hold("slurm:job-77")
    assert (h.account, h.amount_h, h.state, h.run_id) == ("physics", 4.0, "open", "job-77;h100;1")
    assert ledger.balance("physics").held_h == pytest.approx(4.0)
    (a,) = [a for a in ledger.audit() if a["action"] == "override"]
    assert (a["action"], a["actor"], a["account"]) == ("override", "uid 0", "physics")
    assert a["old_budget_h"] == a["new_budget_h"] == 10.0  # the budget itself is unchanged
    assert "job 77" in a["reason"] and "uid 0" in a["reason"] and "4.00 GPU-h" in a["reason"]
    # its settle line has no token: it settles on job-77 (2 GPUs x 1800 s) and closes it
    append(conf / governor.SETTLES, settle(77, "-"))
    rep = sync()
    assert rep.settled == 1 and ledger.hold("slurm:job-77").state == "done"
    b = ledger.balance("physics")
    assert (b.charged_h, b.held_h) == (pytest.approx(1.0), 0)


def test_modify_lines_replayed_change_nothing(env):
    site, conf, state, ledger, sync = env
    ledger.set_budget("chem-ai", 5.0, "quarterly", actor="test")
    append(conf / governor.ADMITS, admit("t1", cost_h=2.0) + modify("t1", 3.0, 2.0, "m1", override=1, uid=0)
           + modify("t1", 3.0, 3.0, "m2", account="chem-ai") + modify("t1", 2.0, 3.0, "m3", account="chem-ai")
           + modify("job-9", 1.0, 0.0, "m4", job=9))
    sync()
    state_before = (ledger.balances(), ledger.hold("slurm:t1"), ledger.hold("slurm:job-9"), len(ledger.audit()))
    assert ledger.balance("chem-ai").held_h == pytest.approx(2.0) and ledger.balance("physics").held_h == 1.0
    for _ in range(2):
        (state / "governor-cursors.json").unlink()  # every line read again
        rep = sync()
        assert rep.problems == []  # the admit line of a re-priced, moved hold is a replay, not a conflict
        after = (ledger.balances(), ledger.hold("slurm:t1"), ledger.hold("slurm:job-9"), len(ledger.audit()))
        assert after == state_before


def test_a_closed_hold_is_not_repriced(env):
    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, admit("t1", cost_h=2.0))
    append(conf / governor.SETTLES, settle(101, "t1"))
    sync()
    append(conf / governor.ADMITS, modify("t1", 5.0, 2.0, "late"))  # read after the job had ended
    sync()
    h = ledger.hold("slurm:t1")
    assert (h.state, h.amount_h, h.remaining_h, h.shares["mod:late"]) == ("done", 2.0, 0, 0)
    assert ledger.balance("physics").held_h == 0


def test_a_settle_line_without_a_token_is_billed(env):
    site, conf, state, ledger, sync = env
    append(conf / governor.SETTLES, settle(300, "-", gpus=4)  # 4 GPUs x 1800 s
           + settle(301, "-", gpus=0, start=0, state="CANCELLED"))  # no GPU, no hold: nothing
    rep = sync()
    assert (rep.settled, rep.problems) == (1, [])
    h = ledger.hold("slurm:job-300")
    assert (h.state, h.amount_h, h.remaining_h) == ("done", 2.0, 0)
    assert [c["charge_key"] for c in ledger.charges("slurm:job-300")] == [f"slurm:job:300@{T0 + 100}"]
    assert ledger.find_hold("slurm:job-301") is None
    b = ledger.balance("physics")
    assert (b.charged_h, b.held_h) == (pytest.approx(2.0), 0)
    (state / "governor-cursors.json").unlink()
    sync()
    assert ledger.balance("physics").charged_h == pytest.approx(2.0)  # once


def test_an_arrays_record_of_tasks_never_started_releases_its_hold(env):
    site, conf, state, ledger, sync = env
    # 300 tasks x 1 GPU x 1 min: 5 GPU-h held
    append(conf / governor.ADMITS, admit("arr", cost_h=5.0, gpus=1, minutes=1))
    for task in range(2):
        append(conf / governor.SETTLES, settle(f"90{task}", "arr", gpus=1, start=T0, end=T0 + 60,
                                               array=f"900_{task}"))
    sync()
    assert ledger.balance("physics").held_h == pytest.approx(5.0 - 2 / 60)
    # scancel of the array: its 298 pending tasks end as one record, and never run
    append(conf / governor.SETTLES, settle(900, "arr", gpus=0, start=0, end=T0 + 100, state="CANCELLED",
                                           array="900_*"))
    sync()
    b = ledger.balance("physics")
    assert ledger.hold("slurm:arr").state == "cancelled" and b.held_h == 0
    assert b.charged_h == pytest.approx(2 / 60)
    # a task that was running when the array was cancelled settles afterwards: still billed
    append(conf / governor.SETTLES, settle("902", "arr", gpus=1, start=T0, end=T0 + 120, state="CANCELLED",
                                           array="900_2"))
    sync()
    b = ledger.balance("physics")
    assert (b.charged_h, b.held_h) == (pytest.approx(4 / 60), 0)


class FakeSlurm:
    """sacct and squeue as the governor sees them (slurm_cli's Job and Queued rows)."""

    def __init__(self, jobs=(), queued=()):
        self.jobs, self.queued = list(jobs), list(queued)

    def sacct_jobs(self):
        return self.jobs

    def squeue_jobs(self):
        return self.queued


def test_a_requeued_job_is_held_again_for_its_next_run(env):
    from slurmgov.slurm.commands import Job, Queued

    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, admit("rq", cost_h=2.0))
    # the first run: 2 GPUs x 180 s, then requeued (node failure): jobcomp's line says NODE_FAIL
    append(conf / governor.SETTLES, settle(400, "rq", start=T0 + 100, end=T0 + 280, state="NODE_FAIL"))
    first = Job("400", "physics", "NODE_FAIL", "rq", 2, T0 + 100, T0 + 280, 180)
    slurm = FakeSlurm([first], [Queued("400", "rq", "PENDING", restart_cnt=1)])
    rep = governor.sync_once(ledger, site, conf, state, slurm=slurm)
    assert ledger.hold("slurm:rq").state == "failed"  # its run is over
    rerun = ledger.hold("slurm:rq@rerun1")
    assert (rerun.state, rerun.amount_h, rerun.account) == ("open", 2.0, "physics")
    b = ledger.balance("physics")
    assert (b.charged_h, b.held_h) == (pytest.approx(0.1), pytest.approx(2.0))
    governor.sync_once(ledger, site, conf, state, slurm=slurm)  # created once
    assert ledger.balance("physics").held_h == pytest.approx(2.0) and not rep.problems
    # the second run ends: charged on the job's hold, the rerun hold released
    append(conf / governor.SETTLES, settle(400, "rq", start=T0 + 400, end=T0 + 580, restarts=1))
    second = Job("400", "physics", "COMPLETED", "rq", 2, T0 + 400, T0 + 580, 180)
    governor.sync_once(ledger, site, conf, state, slurm=FakeSlurm([first, second]))
    b = ledger.balance("physics")
    assert (b.charged_h, b.held_h) == (pytest.approx(0.2), 0)
    assert ledger.hold("slurm:rq@rerun1").state == "done" and len(ledger.charges("slurm:rq")) == 2


def test_a_requeued_jobs_rerun_hold_goes_when_sacct_says_it_ended(env):
    from slurmgov.slurm.commands import Job, Queued

    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, admit("rq", cost_h=2.0))
    append(conf / governor.SETTLES, settle(400, "rq", start=T0 + 100, end=T0 + 280, state="REQUEUED"))
    first = Job("400", "physics", "REQUEUED", "rq", 2, T0 + 100, T0 + 280, 180)
    governor.sync_once(ledger, site, conf, state, slurm=FakeSlurm([first], [Queued("400", "rq", "RUNNING", 1)]))
    governor.sync_once(ledger, site, conf, state, slurm=FakeSlurm([first], [Queued("400", "rq", "PENDING", 2)]))
    assert ledger.hold("slurm:rq@rerun1").state == "done"  # the second run is over: the third is held
    assert ledger.hold("slurm:rq@rerun2").state == "open"
    assert ledger.balance("physics").held_h == pytest.approx(2.0 - 0.1 + 2.0)  # the job's hold is open still
    # the last run's settle line is lost; sacct has it, squeue has nothing left of the job
    last = Job("400", "physics", "COMPLETED", "rq", 2, T0 + 600, T0 + 780, 180)
    rep = governor.sync_once(ledger, site, conf, state, slurm=FakeSlurm([first, last]), grace_s=0)
    assert ledger.hold("slurm:rq").state == "done" and ledger.hold("slurm:rq@rerun2").state == "done"
    b = ledger.balance("physics")
    assert (b.charged_h, b.held_h) == (pytest.approx(0.2), 0)
    assert "hold rq@rerun2: its jobs have all ended in Slurm; released" in rep.drift


def test_a_cancelled_pending_array_is_released_without_waiting_for_grace(env):
    from slurmgov.slurm.commands import Job

    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, admit("arr", cost_h=5.0, gpus=1, minutes=1, ts=int(time.time())))
    # scancel while pending; jobcomp's line never came, sacct shows the array's one record
    jobs = [Job("900", "physics", "CANCELLED by 1000", "arr", 0, 0, T0 + 100, 0)]
    governor.sync_once(ledger, site, conf, state, slurm=FakeSlurm(jobs), grace_s=3600)
    assert ledger.hold("slurm:arr").state == "cancelled" and ledger.balance("physics").held_h == 0


def test_tokens_in_a_users_own_comment_are_ignored(env, monkeypatch):
    import json

    from slurmgov.slurm import commands as slurm_cli
    site, conf, state, ledger, sync = env
    ledger.set_budget("bio-ml", 5.0, "quarterly", actor="test")
    append(conf / governor.ADMITS, admit("victim", cost_h=2.0, ts=T0))  # a job Slurm never created
    sacct = {"jobs": [
        {"job_id": 600, "account": "bio-ml", "state": {"current": "COMPLETED"},
         "comment": {"administrator": None, "job": "slurmgov:hold=victim", "system": None},
         "time": {"start": T0 + 100, "end": T0 + 1900, "elapsed": 1800},
         "tres": {"allocated": [{"type": "gres", "name": "gpu", "count": 2}]}, "array": {"job_id": 0}},
        {"job_id": 601, "account": "bio-ml", "state": {"current": "COMPLETED"}, "comment": "slurmgov:hold=victim",
         "time": {"start": 0, "end": T0, "elapsed": 0}, "tres": {"allocated": []}},
    ]}
    squeue = {"jobs": [{"job_id": 602, "job_state": "PENDING", "admin_comment": "", "restart_cnt": 3,
                        "comment": "slurmgov:hold=victim", "account": "bio-ml", "array_job_id": 0}]}
    outputs = {"sacct": json.dumps(sacct), "squeue": json.dumps(squeue), "scontrol": ""}
    monkeypatch.setattr(slurm_cli, "run", lambda cmd, **kw: outputs[cmd[0]])
    assert [j.token for j in slurm_cli.sacct_jobs()] == [None, None]
    assert [(q.token, q.key, q.restart_cnt) for q in slurm_cli.squeue_jobs()] == [(None, "job-602", 3)]
    assert slurm_cli.squeue_tokens() == set()
    rep = governor.sync_once(ledger, site, conf, state, slurm=slurm_cli)
    victim = ledger.hold("slurm:victim")
    assert victim.state == "cancelled" and ledger.charges("slurm:victim") == []  # neither pinned nor touched
    assert "hold victim: no such job in Slurm after 600 s; released" in rep.drift
    # the GPU job is billed to its own account, on a hold of its own
    assert ledger.balance("bio-ml").charged_h == pytest.approx(1.0) and ledger.balance("physics").charged_h == 0
    assert ledger.find_hold("slurm:job-602@rerun3") is None  # nothing was held for it: nothing to hold again


def test_the_admin_comment_carries_the_token(monkeypatch):
    import json

    from slurmgov.slurm import commands as slurm_cli
    sacct = {"jobs": [{"job_id": 7, "account": "physics", "state": {"current": "RUNNING"},
                       "comment": {"administrator": "slurmgov:hold=1-2-ab old note", "job": None},
                       "time": {"start": 5, "end": 0, "elapsed": 9}, "array": {"job_id": 6, "task_id": 1},
                       "tres": {"allocated": [{"type": "gres", "name": "gpu", "count": 4}]}}]}
    squeue = {"jobs": [{"job_id": 8, "job_state": "COMPLETED", "admin_comment": "slurmgov:hold=1-2-ab",
                        "restart_cnt": 0, "array_job_id": 6, "array_task_id": 2}]}
    outputs = {"sacct": json.dumps(sacct), "squeue": json.dumps(squeue), "scontrol": ""}
    monkeypatch.setattr(slurm_cli, "run", lambda cmd, **kw: outputs[cmd[0]])
    (job,) = slurm_cli.sacct_jobs()
    assert (job.token, job.gpus, job.array_job_id, job.final, job.keys) == ("1-2-ab", 4, "6", False, ("1-2-ab",))
    (q,) = slurm_cli.squeue_jobs()
    assert (q.token, q.key, q.live, q.array_job_id) == ("1-2-ab", "1-2-ab", False, "6")
    assert slurm_cli.Queued("9", None, "PENDING", 0, "6").keys == ("job-9", "job-6")


def test_journal_lines_of_the_new_kinds(env):
    from slurmgov.slurm import journal
    line = modify("1-2-ab", 3.0, 2.0, "m1", account="chem-ai", old_account="physics", job=42, uid=0, override=1,
                  tasks=4).rstrip("\n")
    m = journal.parse(line)
    assert (m.key, m.account, m.old_account, m.job_id, m.modify_uid, m.override, m.mod_id, m.tasks) == (
        "1-2-ab", "chem-ai", "physics", "42", "0", True, "m1", 4)
    assert (m.new_cost_gpu_s, m.old_cost_gpu_s, m.gpus, m.time_limit_min, m.gpu_type) == (10800, 7200, 2, 60, "h100")
    f = line.split("\t")
    for i, bad, why in ((6, "nan", "new cost"), (12, "-1", "old cost"), (14, "yes", "override"),
                        (3, "a@b", "key"), (15, "", "mod_id"), (7, "-2", "GPUs")):
        with pytest.raises(ValueError, match=why):
            journal.parse("\t".join(f[:i] + [bad] + f[i + 1:]))
    with pytest.raises(ValueError, match="unrecognised"):
        journal.parse("\t".join(f[:16]))
    s = journal.parse(settle(5, "-", array="4_*", restarts=2).rstrip("\n"))
    assert (s.token, s.array, s.array_rest, s.restart_cnt) == (None, "4_*", True, 2)
    old = journal.parse(settle(5, "t").rstrip("\n"))  # jobcomp's older 8 fields
    assert (old.array, old.array_rest, old.restart_cnt) == (None, False, 0)
    with pytest.raises(ValueError, match="restarts"):
        journal.parse("settle\t5\tt\tphysics\t2\t1\t2\tCOMPLETED\t-\t-\t-3")
    p = journal.parse("probe\t12\tslurmgov-probe-x\taccount=physics tres_per_node=gres:gpu:2 price=7200")
    assert (p.job_name, p.fields["tres_per_node"], p.fields["price"]) == ("slurmgov-probe-x", "gres:gpu:2", "7200")


def test_probe_lines_are_neither_applied_nor_problems(env):
    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, f"probe\t{T0}\tslurmgov-probe-1\taccount=physics price=7200\n" + admit("t1"))
    rep = sync()
    assert (rep.admitted, rep.problems) == (1, []) and ledger.balance("physics").held_h == pytest.approx(2.0)


def test_requeued_job_charges_each_run_once_and_closes_at_the_end(env):
    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, admit("rq", cost_h=2.0, gpus=2, minutes=60))
    # jobcomp fires when the job is requeued (its state is PENDING again), then when it ends
    append(conf / governor.SETTLES, settle(400, "rq", start=T0 + 100, end=T0 + 280, state="PENDING"))
    sync()
    assert ledger.hold("slurm:rq").state == "open"  # it will run again: keep holding
    append(conf / governor.SETTLES, settle(400, "rq", start=T0 + 400, end=T0 + 580))
    sync()
    sync()
    assert ledger.hold("slurm:rq").state == "done"
    assert ledger.balance("physics").charged_h == pytest.approx(2 * (180 + 180) / 3600)
    assert len(ledger.charges("slurm:rq")) == 2


def test_governor_service_picks_up_new_lines_and_stops_cleanly(env, root, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    site, conf, state, ledger, sync = env
    exe = Path(sys.executable).parent / "slurmgov"
    envv = {**os.environ, "SLURMGOV_LEDGER": f"sqlite:///{tmp_path}/ledger.sqlite", "SLURMGOV_HOME": str(state)}
    proc = subprocess.Popen([str(exe), "governor", "--slurm-conf-dir", str(conf), "--site",
                             str(root / "site_configs" / "demo-cluster.yaml"), "--interval", "0.2", "--no-reconcile"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=envv)
    try:
        append(conf / governor.ADMITS, "admit\tnot a number\n")  # a problem the service must log
        append(conf / governor.ADMITS, admit("svc", cost_h=3.0))
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if snapshot.read(conf / governor.SNAPSHOT).available_gpu_s["physics"] == pytest.approx(7 * 3600):
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the governor never wrote the new snapshot")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and "Traceback" not in err
    assert ledger.balance("physics").held_h == pytest.approx(3.0)
    # its output is a log a site can ship: each line stamped, levelled and named
    import re

    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    assert re.search(stamp + r"INFO slurmgov\.governor: started: hook dir ", err, re.M), err
    assert re.search(stamp + r"WARNING slurmgov\.governor: problem: .*slurmgov_journal\.log@0: ", err, re.M), err
    assert re.search(stamp + r"INFO slurmgov\.governor: stopped by SIGINT$", err, re.M), err
    assert all(re.match(stamp + r"(INFO|WARNING|ERROR) slurmgov[.\w]*: ", ln) for ln in err.splitlines() if ln), err


def test_governor_service_stops_cleanly_on_sigterm(env, tmp_path):
    """systemd stops a service with SIGTERM: the governor logs it and exits 0 (143 would be a failure)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    site, conf, state, ledger, sync = env
    exe = Path(sys.executable).parent / "slurmgov"
    envv = {**os.environ, "SLURMGOV_LEDGER": f"sqlite:///{tmp_path}/ledger.sqlite", "SLURMGOV_HOME": str(state)}
    proc = subprocess.Popen([str(exe), "governor", "--slurm-conf-dir", str(conf), "--interval", "0.2",
                             "--no-reconcile", "--placement-every", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=envv)
    try:
        deadline = time.time() + 30
        while not (conf / governor.SNAPSHOT).exists():  # a first pass done
            assert time.time() < deadline and proc.poll() is None, "the governor never wrote its snapshot"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert err.rstrip().endswith("INFO slurmgov.governor: stopped by SIGTERM"), err
    assert "Traceback" not in err and "hold released" not in err


def test_forecast_and_alerts(env):
    from slurmgov.policy.forecast import forecasts

    site, conf, state, ledger, sync = env
    now = time.time()
    # 7 GPU-h charged in the last week (an hour ago, so it stays in this period): 1 GPU-h a day
    append(conf / governor.ADMITS, admit("f1", cost_h=7.0, gpus=7, minutes=60, ts=now - 4300))
    append(conf / governor.SETTLES, settle(900, "f1", gpus=7, start=int(now - 4200), end=int(now - 600)))
    sync()
    (f,) = [f for f in forecasts(ledger, now) if f.account == "physics"]
    assert f.burn_h_per_day == pytest.approx(1.0) and f.used_pct == pytest.approx(70.0) and f.alert is None
    import datetime as dt

    assert f.runs_out == (dt.datetime.fromtimestamp(now, dt.timezone.utc) + dt.timedelta(days=3)).date().isoformat()
    assert f.sentence().startswith(f"physics runs out on {f.runs_out}")
    append(conf / governor.ADMITS, admit("f2", cost_h=1.6, ts=now - 60))
    sync()
    (f,) = [f for f in forecasts(ledger, now) if f.account == "physics"]
    assert f.used_pct == pytest.approx(86.0) and f.alert == "80%"


def test_governor_metrics_and_alerts(env):
    import urllib.request

    from slurmgov.policy.metrics import GovernorMetrics

    site, conf, state, ledger, sync = env
    m = GovernorMetrics(port=0)
    append(conf / governor.ADMITS, admit("m1", cost_h=9.0))
    append(conf / governor.REFUSALS, f"refuse\t{int(time.time())}\tover_budget\tphysics\t1000\n")
    append(conf / governor.REFUSALS, f"refuse\t{int(time.time())}\tsnapshot_stale\tphysics\t1000\n")
    append(conf / governor.REFUSALS, f"refuse\t{int(time.time())}\tover_budget\tbio-ml\t1001\n")
    rep = sync()
    assert rep.refused == {"over_budget": 2, "snapshot_stale": 1}
    alerts = m.update(ledger, rep, time.time() - 5)
    assert alerts and alerts[0].startswith("alert: account physics has used 90% of its budget (80%)")
    body = urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=10).read().decode()
    assert 'slurmgov_held_gpu_hours{account="physics"} 9.0' in body
    assert 'slurmgov_available_gpu_hours{account="physics"} 1.0' in body
    assert "slurmgov_hook_admissions_total 1.0" in body
    assert 'slurmgov_hook_refusals_total{reason="over_budget"} 2.0' in body
    age = float(next(ln.split()[1] for ln in body.splitlines() if ln.startswith("slurmgov_snapshot_age_seconds ")))
    assert 4 <= age < 60


# ---- reconcile in bulk: the same ledger as the one-job-at-a-time pass -----------------------

def reconcile_one_by_one(ledger, site, jobs, live_tokens, now, grace_s=600):
    """The reconcile pass as it was before it went bulk: one ledger call (transaction) at a time.
    The reference the bulk pass must agree with, job for job."""
    from slurmgov.slurm import journal
    drift, seen, unbilled = [], set(), {}
    budgets = {b.account for b in ledger.balances()}
    for job in jobs:
        seen.update(job.keys)
        if not job.final or not (job.token or job.gpus):
            continue
        token = job.token or f"job-{job.job_id}"
        key = governor.hold_key(token)
        if ledger.find_hold(key) is None:
            if not job.token and job.account not in budgets:
                unbilled.setdefault(job.account, set()).add(job.job_id)
                continue
            used_h = job.gpus * job.elapsed * site.weight(None) / 3600
            ledger.admit(key, job.account, "sbatch", {"job": used_h}, run_id=f"{token};-;1",
                         now=job.start or job.end or now, enforce=False)
            if job.token:
                drift.append(f"job {job.job_id}: no admit line for hold {job.token}; hold recreated from sacct")
        gpu_s = job.gpus * job.elapsed
        had = {c["charge_key"]: c for c in ledger.charges(key)}.get(governor.charge_key(job.job_id, job.start))
        if had is None:
            governor.apply(ledger, site, journal.Settle(job.job_id, job.token, job.account, job.gpus, None, job.start,
                                                        job.start + job.elapsed if job.start else job.end, job.state))
            drift.append(f"job {job.job_id}: no settle line; settled from sacct ({gpu_s} GPU-s)")
        elif abs(had["gpu_seconds"] - gpu_s) > 1:
            drift.append(f"job {job.job_id}: ledger charged {had['gpu_seconds']:g} GPU-s, sacct says {gpu_s}")
    drift += [f"account {a} has no budget in the ledger: {len(ids)} GPU job(s) without a hold left unbilled"
              for a, ids in sorted(unbilled.items())]
    for key, created in ledger.open_holds("slurm:"):
        token = key[len("slurm:"):].split("@")[0]
        if token in live_tokens:
            continue
        last = {}  # job id -> its latest run, as sacct lists it
        for job in jobs:
            if token in job.keys and (job.job_id not in last or
                                      (job.start, job.end) >= (last[job.job_id].start, last[job.job_id].end)):
                last[job.job_id] = job
        if last and all(j.final for j in last.values()):
            ledger.close(key, governor.close_state(max(last.values(), key=lambda j: (j.end, j.start)).state))
            drift.append(f"hold {key[len('slurm:'):]}: its jobs have all ended in Slurm; released")
        elif token not in seen and now - created > grace_s:
            ledger.close(key, "cancelled")
            drift.append(f"hold {key[len('slurm:'):]}: no such job in Slurm after {grace_s:g} s; released")
    return drift


def mixed_jobs(now):
    """Journal events already applied, then what sacct says: every case reconcile handles."""
    from slurmgov.slurm import journal
    from slurmgov.slurm.commands import Job

    t = int(now) - 5000

    def adm(token, cost_h=2.0, gpus=2, minutes=60, ts=t - 100):
        return journal.Admit(ts, 1, token, "physics", "ann", cost_h * 3600, gpus, minutes, "h100")

    def stl(job, token, gpus=2, start=t, end=t + 1800, state="COMPLETED"):
        return journal.Settle(job, token, "physics", gpus, None, start, end, state)

    events = [
        adm("ok"), stl("1", "ok"),  # settled by the journals: verified only
        adm("nosettle"),  # the settle line was lost
        adm("drift"), stl("3", "drift", gpus=1),  # charged 1 GPU, sacct says 2
        adm("arr", cost_h=3.0, gpus=1), stl("5_0", "arr", gpus=1),  # array of 3, one task settled
        adm("arr2", cost_h=2.0, gpus=1),  # array of 2: a 'CANCELLED by N' task is finished too
        adm("rq"), stl("7", "rq", start=t, end=t + 180, state="PENDING"),  # requeued, first run settled
        adm("run"),  # still running
        adm("orphan", ts=t - 4000), adm("young", ts=now - 10), adm("queued", ts=t - 4000),
        adm("closed", ts=t - 4000), stl("9", "closed", start=0, end=t, state="CANCELLED"),
        adm("arrp", cost_h=3.0, gpus=1),  # array of 3 cancelled while pending; its jobcomp line lost
        stl("14", None),  # no token: billed by its settle line already
    ]
    jobs = [
        Job("0", "physics", "COMPLETED", None, 2, t, t + 60, 60),  # no token, its settle line lost: billed
        Job("12", "physics", "COMPLETED", None, 0, t, t + 60, 60),  # no token, no GPU: nothing to bill
        Job("13", "nobudget", "COMPLETED", None, 2, t, t + 60, 60),  # no token, no budget: reported
        Job("13", "nobudget", "COMPLETED", None, 2, t, t + 60, 60),  # listed twice
        Job("14", "physics", "COMPLETED", None, 2, t, t + 1800, 1800),  # no token, settled: verified only
        Job("11", "physics", "CANCELLED", "arrp", 0, 0, t, 0),  # the array's pending record: all have ended
        Job("1", "physics", "COMPLETED", "ok", 2, t, t + 1800, 1800),
        Job("2", "physics", "FAILED", "nosettle", 2, t, t + 900, 900),
        Job("3", "physics", "COMPLETED", "drift", 2, t, t + 1800, 1800),
        Job("4", "physics", "COMPLETED", "noadmit", 4, t, t + 600, 600),  # the admit line was lost
        Job("4", "physics", "COMPLETED", "noadmit", 4, t, t + 600, 600),  # listed twice
        Job("5_0", "physics", "COMPLETED", "arr", 1, t, t + 1800, 1800),
        Job("5_1", "physics", "FAILED", "arr", 1, t, t + 300, 300),
        Job("5_2", "physics", "COMPLETED", "arr", 1, t, t + 1200, 1200),  # finishes the array: done
        Job("5_3", "physics", "TIMEOUT", "arr", 1, t, t + 60, 60),  # after the close: charged, holds nothing
        Job("6_0", "physics", "CANCELLED by 0", "arr2", 1, t, t + 60, 60),
        Job("6_1", "physics", "COMPLETED", "arr2", 1, t, t + 60, 60),
        Job("7", "physics", "PENDING", "rq", 2, t, t + 180, 180),  # the first run, as sacct lists it
        Job("7", "physics", "COMPLETED", "rq", 2, t + 400, t + 700, 300),  # its second run
        Job("8", "physics", "RUNNING", "run", 2, t, 0, 100),
        Job("10", "physics", "CANCELLED", "pendnoadmit", 0, 0, t, 0),  # never started, admit lost
    ]
    return events, jobs, {"run", "queued"}


def ledger_state(ledger, tokens):
    """Holds (without their closing time), charges (without when they were recorded), balances."""
    holds = []
    for tok in sorted(tokens):
        try:
            holds.append(ledger.hold(governor.hold_key(tok)))
        except Exception:  # noqa: BLE001 - a hold that is not there is part of the state
            holds.append(None)
    charges = [{k: v for k, v in c.items() if k != "recorded_at"} for c in ledger.charges()]
    return holds, charges, ledger.balances(now=time.time())


def mixed_keys(jobs):
    """Every hold token the mix can touch, job-<id> of jobs without one included."""
    return {k for j in jobs for k in j.keys} | {"orphan", "young", "queued", "closed", "job-14"}


def build_mixed(ledger, site, now):
    events, jobs, live = mixed_jobs(now)
    for ev in events:
        governor.apply(ledger, site, ev)
    return jobs, live


def test_reconcile_refuses_a_charge_recorded_on_another_hold(env):
    """A sacct job whose charge key the ledger already holds on another hold is the conflict
    ledger.charge reports (the database's check of the chunk returns it with the other hold); the
    job before it in the chunk keeps what it wrote, and a job charged as sacct says writes nothing."""
    from slurmgov.errors import LedgerError
    from slurmgov.slurm.commands import Job
    site, conf, state, ledger, sync = env
    now = time.time()
    for tok in ("a", "b", "c", "d"):
        ledger.admit(governor.hold_key(tok), "physics", "sbatch", {"job": 0.1}, run_id=f"{tok};-;1",
                     now=now - 600, enforce=False)
    common = dict(step="job", attempt=1, weight=1.0, gpu_type=None, status="completed")
    ledger.charge(charge_key=governor.charge_key("7", 100), hold_key="slurm:a", gpu_seconds=60, started=100,
                  ended=160, **common)
    ledger.charge(charge_key=governor.charge_key("5", 40), hold_key="slurm:d", gpu_seconds=60, started=40,
                  ended=100, **common)
    jobs = [Job("5", "physics", "COMPLETED", "d", 1, 40, 100, 60),  # charged as sacct says: checked only
            Job("6", "physics", "COMPLETED", "c", 1, 50, 110, 60),  # no settle line: settled from sacct
            Job("7", "physics", "COMPLETED", "b", 1, 100, 160, 60)]  # its charge key is hold a's
    with pytest.raises(LedgerError, match=r"^charge slurm:job:7@100 already exists with a different hold"):
        governor.reconcile(ledger, site, jobs, [], now=now)
    assert [c["charge_key"] for c in ledger.charges("slurm:c")] == ["slurm:job:6@50"]
    assert ledger.charges("slurm:b") == [] and len(ledger.charges("slurm:d")) == 1


@pytest.mark.parametrize("chunk", [1, 2, 3, 1000])
def test_bulk_reconcile_matches_one_job_at_a_time(env, tmp_path, monkeypatch, chunk):
    site, conf, state, ledger, sync = env
    ref = Ledger.open(f"sqlite:///{tmp_path}/reference.sqlite")
    ref.set_budget("physics", 10.0, "quarterly", actor="test")
    now = time.time()
    jobs, live = build_mixed(ledger, site, now)
    build_mixed(ref, site, now)
    monkeypatch.setattr(governor, "RECONCILE_CHUNK", chunk)  # chunk boundaries inside arrays and requeues
    drift = governor.reconcile(ledger, site, jobs, live, now=now)
    assert drift == reconcile_one_by_one(ref, site, jobs, live, now)
    tokens = mixed_keys(jobs)
    assert ledger_state(ledger, tokens) == ledger_state(ref, tokens)
    # what the mix must have produced, beyond agreeing with the reference
    assert ledger.hold("slurm:arr").state == "done" and ledger.hold("slurm:nosettle").state == "failed"
    assert ledger.hold("slurm:arr2").state == "done"  # 'CANCELLED by 0' counts as finished: the array closes
    assert ledger.hold("slurm:noadmit").run_id == "noadmit;-;1" and ledger.hold("slurm:orphan").state == "cancelled"
    assert ledger.hold("slurm:young").state == "open" and ledger.hold("slurm:queued").state == "open"
    assert sum(1 for d in drift if "no settle line" in d) == 11 and any("sacct says 3600" in d for d in drift)
    # jobs without a token: billed from sacct once (job 0), or verified (14), or nothing (12); 13 has no budget
    assert [c["gpu_seconds"] for c in ledger.charges("slurm:job-0")] == [120]
    assert ledger.hold("slurm:job-0").state == "done"
    assert len(ledger.charges("slurm:job-14")) == 1 and ledger.find_hold("slurm:job-12") is None
    assert "account nobudget has no budget in the ledger: 1 GPU job(s) without a hold left unbilled" in drift
    # the array cancelled while pending: every sacct row ended, nothing in squeue: released
    assert ledger.hold("slurm:arrp").state == "cancelled"
    assert "hold arrp: its jobs have all ended in Slurm; released" in drift


def test_bulk_reconcile_replay_changes_nothing(env):
    site, conf, state, ledger, sync = env
    now = time.time()
    jobs, live = build_mixed(ledger, site, now)
    governor.reconcile(ledger, site, jobs, live, now=now)
    tokens = mixed_keys(jobs)
    before = ledger_state(ledger, tokens)
    again = governor.reconcile(ledger, site, jobs, live, now=now)
    assert again == ["job 3: ledger charged 1800 GPU-s, sacct says 3600",  # reported, never rewritten
                     "account nobudget has no budget in the ledger: 1 GPU job(s) without a hold left unbilled"]
    assert ledger_state(ledger, tokens) == before


def test_bulk_reconcile_error_keeps_the_jobs_before_it(env):
    from slurmgov.errors import InputError
    from slurmgov.slurm.commands import Job

    site, conf, state, ledger, sync = env
    t = int(time.time()) - 5000
    jobs = [Job("1", "physics", "COMPLETED", "a", 2, t, t + 1800, 1800),
            Job("2", "nobudget", "COMPLETED", "b", 2, t, t + 1800, 1800),
            Job("3", "physics", "COMPLETED", "c", 2, t, t + 1800, 1800)]
    with pytest.raises(InputError, match="account nobudget has no budget"):
        governor.reconcile(ledger, site, jobs, set())
    assert ledger.hold("slurm:a").state == "done" and ledger.balance("physics").charged_h == pytest.approx(1.0)
    assert ledger.open_holds("slurm:") == []  # nothing of b or c


# ---- the journal pass in batches: the same ledger and report as one event at a time ---------

def mixed_journal(conf):
    """Every case the journal pass handles, in the files the hooks write, each ending in a torn line."""
    admits = [
        admit("ok"), admit("ok"),  # a replayed line changes nothing
        "admit\tgarbage\n",  # unparseable: reported
        admit("arr", cost_h=3.0, gpus=1, minutes=60),  # array of 3 tasks
        admit("arr2", cost_h=2.0, gpus=1, minutes=60, gpu_type="-"),  # untyped array of 2
        admit("rq"), admit("pend"), admit("fail"), admit("run"),
        modify("run", 3.0, 2.0, "m-grow"),  # the job grew: so does its hold
        modify("run", 3.0, 2.0, "m-grow"),  # the same change again: nothing
        modify("pend", 0.5, 2.0, "m-shrink"),  # it shrank: the difference is released
        admit("nobudget", account="no-such-account"),  # the ledger has no budget for it: reported
        admit("ok", cost_h=5.0),  # the same token, another cost: reported
        admit("typed", gpu_type="h100+a100"),
        admit("nan", cost_h=float("-1")),  # a negative cost: reported
        modify("job-20", 1.0, 0.0, "m-new", job=20, uid=0, override=1),  # no token: held now, override audited
        modify("fail", 2.0, 2.0, "m-away", account="no-such-account"),  # moved to an account without budget
        "modify\t1\t1\tx\tphysics\t0\t1\t1\t1\t-\t1\tphysics\t0\t0\t2\tm-bad\t1\n",  # override 2: reported
        f"probe\t{T0}\tslurmgov-probe-1\taccount=physics price=7200\n",  # for hooks check: not a problem
        admit("arr3", cost_h=3.0, gpus=1, minutes=60), admit("rr"),
    ]
    settles = [
        settle(101, "ok"), settle(101, "ok"),  # a replayed line
        settle("5_0", "arr", gpus=1), settle("5_1", "arr", gpus=1, state="FAILED"),
        "settle\tbroken\n",
        settle("5_2", "arr", gpus=1, end=T0 + 700),  # the last task: the array's hold closes
        settle("5_3", "arr", gpus=1, state="TIMEOUT"),  # after the close: charged, holds nothing
        settle("6_0", "arr2", gpus=1, state="CANCELLED by 0"), settle("6_1", "arr2", gpus=1),
        settle(7, "rq", start=T0 + 100, end=T0 + 280, state="PENDING"),  # requeued: its first run
        settle(7, "rq", start=T0 + 400, end=T0 + 580),  # its second run
        settle(7, "rq", start=T0 + 400, end=T0 + 580),  # and that line again
        settle(8, "pend", gpus=0, start=0, end=T0 + 50, state="CANCELLED"),  # cancelled while pending
        settle(9, "fail", state="NODE_FAIL"),
        settle(10, "-"),  # no token: billed on job-10, created from what it used
        settle(11, "unknown-token"),  # no such hold: reported
        settle(101, "fail"),  # job 101's charge key again, for another hold: reported
        settle(12, "run", gpus=-2),  # negative GPUs: reported
        admit("late"), settle(13, "late"), settle(14, "early"), admit("early"),  # order within a file
        settle(15, "typed", gpus=3),
        settle(20, "-"),  # the job the modify line held: charged on that hold, closed
        settle("21_0", "arr3", gpus=1, array="21_0"),
        settle(21, "arr3", gpus=0, start=0, state="CANCELLED", array="21_*"),  # the rest never ran: released
        settle(22, "rr", restarts=1),  # the final run of a requeued job (no rerun hold to close here)
    ]
    append(conf / governor.ADMITS, "".join(admits) + admit("torn")[:25])
    append(conf / governor.SETTLES, "".join(settles) + settle(16, "typed")[:20])
    append(conf / governor.REFUSALS, "".join(f"refuse\t{T0}\t{r}\tphysics\t1000\n"
                                             for r in ("over_budget", "no_budget", "over_budget")) + "refuse\tx\n")


MIXED_TOKENS = {"ok", "arr", "arr2", "rq", "pend", "fail", "run", "nobudget", "typed", "nan", "late", "early",
                "unknown-token", "torn", "job-10", "job-20", "arr3", "rr"}


def overrides(ledger):
    return [(a["actor"], a["account"], a["reason"], a["old_budget_h"], a["new_budget_h"])
            for a in ledger.audit() if a["action"] == "override"]


def report_of(rep):
    return rep.admitted, rep.settled, rep.problems, rep.refused, rep.drift


def reference_pass(tmp_path, site, conf, name="reference"):
    """A second ledger fed the same files one event at a time (``apply``): what batches must equal."""
    ref = Ledger.open(f"sqlite:///{tmp_path}/{name}.sqlite")
    ref.set_budget("physics", 10.0, "quarterly", actor="test")
    return ref, lambda: governor.sync_once(ref, site, conf, tmp_path / f"{name}-state", batch=0)


@pytest.mark.parametrize("batch", [1, 2, 3, 1000])
def test_journal_batches_match_one_event_at_a_time(env, tmp_path, monkeypatch, batch):
    site, conf, state, ledger, sync = env
    mixed_journal(conf)
    ref, ref_sync = reference_pass(tmp_path, site, conf)
    want = report_of(ref_sync())
    calls = []
    real_apply = governor.apply
    monkeypatch.setattr(governor, "apply", lambda *a: calls.append(a) or real_apply(*a))
    rep = governor.sync_once(ledger, site, conf, state, batch=batch)
    assert calls == []  # planned in batches, never fell back to one event at a time
    assert report_of(rep) == want
    assert ledger_state(ledger, MIXED_TOKENS) == ledger_state(ref, MIXED_TOKENS)
    # what the mix must have produced, beyond agreeing with the reference
    assert rep.refused == {"over_budget": 2, "no_budget": 1}
    assert [p.split(": ", 1)[1].split(" ")[0] for p in rep.problems] == [
        "unrecognised", "account", "hold", "cost",  # garbage, nobudget, ok with another cost, negative cost
        "account", "override",  # fail moved to an account without budget, the modify line with override 2
        "unrecognised", "hold", "charge", "GPUs", "hold",  # broken, unknown, 101 again, gpus -2, early
        "unrecognised"]  # the refusal without its fields
    assert rep.modified == 4 and overrides(ledger) == overrides(ref) and len(overrides(ledger)) == 1
    run, pend = ledger.hold("slurm:run"), ledger.hold("slurm:pend")
    assert (run.amount_h, run.remaining_h, run.shares) == (3.0, 3.0, {"job": 2.0, "mod:m-grow": 1.0})
    assert pend.amount_h == 0.5 and pend.shares["mod:m-shrink"] == 0 and pend.state == "cancelled"
    assert ledger.hold("slurm:fail").account == "physics"  # the failed move left it where it was
    job20 = ledger.hold("slurm:job-20")
    assert job20.state == "done" and [c["charged_h"] for c in ledger.charges("slurm:job-20")] == [1.0]
    assert [c["gpu_seconds"] for c in ledger.charges("slurm:job-10")] == [3600]  # no token: billed all the same
    assert ledger.hold("slurm:arr3").state == "cancelled" and ledger.hold("slurm:arr3").remaining_h == 0
    assert ledger.hold("slurm:arr").state == "done" and ledger.hold("slurm:arr2").state == "done"
    assert ledger.hold("slurm:rq").state == "done" and len(ledger.charges("slurm:rq")) == 2
    assert ledger.hold("slurm:pend").state == "cancelled" and ledger.hold("slurm:fail").state == "failed"
    assert ledger.hold("slurm:late").state == "done" and ledger.hold("slurm:early").state == "open"
    assert ledger.hold("slurm:run").state == "open" and ledger.hold("slurm:ok").amount_h == pytest.approx(2.0)
    offsets = {p: c["offset"] for p, c in governor.journal.Cursors(state / "governor-cursors.json").data.items()}
    assert offsets[str(conf / governor.ADMITS)] == (conf / governor.ADMITS).stat().st_size - 25  # the torn line waits
    assert snapshot.read(conf / governor.SNAPSHOT).journal_offset == offsets[str(conf / governor.ADMITS)]

    # replaying everything (the cursors lost) changes nothing but the settle line that came before
    # its admit line (its hold is there now), and says what the reference says
    def but_early():
        holds, charges, _ = ledger_state(ledger, MIXED_TOKENS - {"early"})
        return holds, [c for c in charges if c["hold_key"] != "slurm:early"]

    for replay in range(2):
        before, everything = but_early(), ledger_state(ledger, MIXED_TOKENS)
        (state / "governor-cursors.json").unlink()
        (tmp_path / "reference-state" / "governor-cursors.json").unlink()
        again = governor.sync_once(ledger, site, conf, state, batch=batch)
        assert report_of(again) == report_of(ref_sync())
        assert ledger_state(ledger, MIXED_TOKENS) == ledger_state(ref, MIXED_TOKENS)
        assert but_early() == before
        assert ledger.hold("slurm:early").state == "done" and len(again.problems) == len(rep.problems) - 1
        assert overrides(ledger) == overrides(ref) and len(overrides(ledger)) == 1  # audited once
        if replay:
            assert ledger_state(ledger, MIXED_TOKENS) == everything  # nothing at all
    assert ledger_state(ledger, MIXED_TOKENS) == ledger_state(ref, MIXED_TOKENS)

    # the torn lines end: picked up by the next pass, once
    append(conf / governor.ADMITS, admit("torn")[25:])
    append(conf / governor.SETTLES, settle(16, "typed")[20:])
    assert report_of(governor.sync_once(ledger, site, conf, state, batch=batch)) == report_of(ref_sync())
    assert ledger.hold("slurm:torn").state == "open" and len(ledger.charges("slurm:typed")) == 2
    assert ledger_state(ledger, MIXED_TOKENS) == ledger_state(ref, MIXED_TOKENS)


def test_an_event_that_fails_mid_batch_is_reported_and_the_others_applied(env):
    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, admit("a") + admit("b", account="nobudget") + admit("c"))
    append(conf / governor.SETTLES, settle(1, "a") + settle(2, "zzz") + settle(3, "c", state="FAILED"))
    rep = governor.sync_once(ledger, site, conf, state, batch=1000)
    b_at = len(admit("a"))
    assert rep.admitted == 2 and rep.settled == 2
    assert rep.problems == [f"{conf / governor.ADMITS}@{b_at}: account nobudget has no budget in the ledger; "
                            f"set one with `slurmgov budget set nobudget GPU_HOURS`",
                            f"{conf / governor.SETTLES}@{len(settle(1, 'a'))}: hold slurm:zzz is not in the ledger"]
    assert ledger.hold("slurm:a").state == "done" and ledger.hold("slurm:c").state == "failed"
    assert ledger.balance("physics").charged_h == pytest.approx(2.0)


def test_a_batch_that_fails_as_a_whole_is_applied_one_event_at_a_time(env, tmp_path, monkeypatch):
    from slurmgov.errors import LedgerError
    from slurmgov.ledger.store import Bulk

    site, conf, state, ledger, sync = env
    mixed_journal(conf)
    ref, ref_sync = reference_pass(tmp_path, site, conf)
    want = report_of(ref_sync())

    def broken(self, rows):
        raise LedgerError("ledger: disk I/O error")  # after the holds were written: all rolled back

    monkeypatch.setattr(Bulk, "charge_many", broken)
    with caplog_at(governor.log) as records:
        rep = governor.sync_once(ledger, site, conf, state, batch=4)
    assert report_of(rep) == want
    assert ledger_state(ledger, MIXED_TOKENS) == ledger_state(ref, MIXED_TOKENS)
    # never silent: each fallback is logged with its first event and the error, and counted
    fell = [r.getMessage() for r in records if "failed as a whole" in r.getMessage()]
    assert fell and len(fell) == rep.batch_fallbacks
    assert all("LedgerError: ledger: disk I/O error" in m and "(first: " in m for m in fell)
    from slurmgov.policy.metrics import GovernorMetrics

    m = GovernorMetrics()
    m.update(ledger, rep, None)
    assert m.registry.get_sample_value("slurmgov_journal_batch_fallbacks_total") == rep.batch_fallbacks


class caplog_at:
    """The records a logger emits inside the block (the project's own loggers, at WARNING)."""

    def __init__(self, logger):
        import logging

        self.logger, self.records = logger, []
        self.handler = logging.Handler(logging.WARNING)
        self.handler.emit = self.records.append

    def __enter__(self):
        self.logger.addHandler(self.handler)
        return self.records

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)


def test_a_pass_killed_between_batches_resumes_after_the_last_committed_one(env, tmp_path, monkeypatch):
    site, conf, state, ledger, sync = env
    mixed_journal(conf)
    ref, ref_sync = reference_pass(tmp_path, site, conf)
    ref_sync()
    real, seen = governor.apply_batch, []

    def dies_on_the_third_batch(*args):
        seen.append(len(args[2]))
        if len(seen) == 3:
            raise KeyboardInterrupt  # killed: batches 1 and 2 committed, their cursor saved
        return real(*args)

    monkeypatch.setattr(governor, "apply_batch", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        governor.sync_once(ledger, site, conf, state, batch=2)
    cur = governor.journal.Cursors(state / "governor-cursors.json").data[str(conf / governor.ADMITS)]
    assert cur["offset"] == len(admit("ok") * 2 + "admit\tgarbage\n" + admit("arr", cost_h=3.0, gpus=1))
    monkeypatch.setattr(governor, "apply_batch", real)
    governor.sync_once(ledger, site, conf, state, batch=2)
    assert ledger_state(ledger, MIXED_TOKENS) == ledger_state(ref, MIXED_TOKENS)


def test_batch_size_from_the_environment(env, monkeypatch):
    from slurmgov.errors import InputError

    site, conf, state, ledger, sync = env
    monkeypatch.delenv(governor.BATCH_ENV, raising=False)
    assert governor.journal_batch() == governor.JOURNAL_BATCH
    monkeypatch.setenv(governor.BATCH_ENV, "0")
    assert governor.journal_batch() == 0  # one event at a time, with apply
    append(conf / governor.ADMITS, admit("e1") + admit("e2"))
    assert sync().admitted == 2
    for bad in ("-1", "many", "1.5"):
        monkeypatch.setenv(governor.BATCH_ENV, bad)
        with pytest.raises(InputError, match=governor.BATCH_ENV):
            sync()


def test_journal_batches_on_postgresql_match_one_event_at_a_time(env, tmp_path, request):
    import pg_harness

    request.getfixturevalue("pg_url")  # starts the throwaway server, or skips where none can run
    site, conf, state, _, sync = env
    mixed_journal(conf)
    ref, ref_sync = reference_pass(tmp_path, site, conf)
    want = report_of(ref_sync())
    with Ledger.open(pg_harness.fresh_url()) as pg:
        pg.set_budget("physics", 10.0, "quarterly", actor="test")
        assert report_of(governor.sync_once(pg, site, conf, state, batch=3)) == want
        assert ledger_state(pg, MIXED_TOKENS) == ledger_state(ref, MIXED_TOKENS)


def test_a_poison_line_is_reported_once_and_never_blocks_later_passes(env):
    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, "admit\t1\t1\tbad\tphysics\t0\tnan\t2\t60\th100\n" + admit("good"))
    append(conf / governor.SETTLES, "settle\t9\tgood\tphysics\t2\t1\t2\t\n")  # no state
    rep = sync()
    assert rep.admitted == 1 and ledger.hold("slurm:good").state == "open"
    assert any("cost 'nan' is not a finite number" in p for p in rep.problems)
    assert any("settle line without a job state" in p for p in rep.problems)
    again = sync()  # the cursor moved past them: nothing to report, nothing stuck
    assert (again.admitted, again.problems) == (0, [])


@pytest.mark.parametrize("batch", [0, 1000])
def test_the_database_going_away_mid_pass_loses_no_line(env, monkeypatch, batch):
    from slurmgov.errors import LedgerUnavailable

    site, conf, state, ledger, sync = env
    append(conf / governor.ADMITS, admit("a1") + admit("a2"))
    real = governor.apply

    def flaky(ledger_, site_, event):
        if event.token == "a2":
            raise LedgerUnavailable("ledger x: server closed the connection unexpectedly")
        return real(ledger_, site_, event)

    monkeypatch.setattr(governor, "apply", flaky)
    monkeypatch.setattr(ledger, "bulk", lambda fn: (_ for _ in ()).throw(LedgerUnavailable("ledger x: down")))
    with pytest.raises(LedgerUnavailable):
        governor.sync_once(ledger, site, conf, state, batch=batch)
    monkeypatch.undo()
    rep = governor.sync_once(ledger, site, conf, state, batch=batch)  # the database is back
    assert rep.problems == []
    assert {ledger.hold("slurm:a1").state, ledger.hold("slurm:a2").state} == {"open"}


def test_a_job_of_two_gpu_types_is_charged_at_the_weight_it_was_priced(root, tmp_path):
    """A job asking for one a100 (weight 1) and one h100 (weight 2) per node is priced at 3
    weighted GPUs; its settle line says only "2 GPUs". It is charged 1.5 per GPU-second, not the
    a100's 1 (that would let anyone pay the cheap rate by adding a cheap GPU to a dear request).
    A hold made before the weight was kept (a 3-part run_id) is charged at the dearest type."""
    text = (root / "site_configs" / "demo-cluster.yaml").read_text()
    two = text.replace("  h100: {memory_gb: 80, weight: 1.0}\n",
                       "  a100: {memory_gb: 80, weight: 1.0}\n  h100: {memory_gb: 80, weight: 2.0}\n")
    assert two != text
    (tmp_path / "site.yaml").write_text(two)
    site = site_mod.load(tmp_path / "site.yaml")
    conf, state = tmp_path / "etc", tmp_path / "state"
    conf.mkdir()
    ledger = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite")
    ledger.set_budget("physics", 10.0, "quarterly", actor="test")
    # 2 GPUs (a100 + h100) for 60 minutes, 1 task: the hook's cost is 3 weighted GPUs x 3600 s
    append(conf / governor.ADMITS, admit("mix", cost_h=3.0, gpus=2, minutes=60, gpu_type="a100+h100").rstrip("\n")
           + "\t1\n")
    append(conf / governor.SETTLES, settle(77, "mix", gpus=2, start=T0 + 100, end=T0 + 1900))  # 30 minutes
    governor.sync_once(ledger, site, conf, state)
    (ch,) = ledger.charges("slurm:mix")
    assert ch["weight"] == pytest.approx(1.5) and ch["charged_h"] == pytest.approx(2 * 0.5 * 1.5)
    assert ledger.hold("slurm:mix").state == "done"
    # an older hold of the same shape, whose run_id has no weight: the dearest type's
    ledger.admit("slurm:old", "physics", "sbatch", {"job": 3.0}, run_id="old;a100+h100;1", enforce=False)
    append(conf / governor.SETTLES, settle(78, "old", gpus=2, start=T0 + 100, end=T0 + 1900))
    governor.sync_once(ledger, site, conf, state)
    (old,) = ledger.charges("slurm:old")
    assert old["weight"] == pytest.approx(2.0) and old["charged_h"] == pytest.approx(2 * 0.5 * 2.0)


def test_passes_sharing_a_state_directory_run_one_at_a_time(env, monkeypatch, tmp_path):
    """The governor and a timer's `slurmgov sync` share the cursors and write the snapshot: while
    one pass runs, another waits for it (here: does not wait, and says so)."""
    from slurmgov.errors import LedgerError

    site, conf, state, ledger, sync = env
    impatient = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite", wait_s=0)  # the env's ledger
    seen = []
    real = governor.write_snapshot

    def during_a_pass(*args, **kwargs):
        with pytest.raises(LedgerError, match=r"governor.lock: another governor pass is still running after 0 s"):
            governor.sync_once(impatient, site, conf, state)
        seen.append("refused")
        return real(*args, **kwargs)

    monkeypatch.setattr(governor, "write_snapshot", during_a_pass)
    append(conf / governor.ADMITS, admit("t1"))
    assert sync().admitted == 1 and seen == ["refused"]
    monkeypatch.setattr(governor, "write_snapshot", real)
    assert governor.sync_once(impatient, site, conf, state).admitted == 0  # the pass is over: free again


def test_sync_while_a_pass_runs_says_so_in_one_line(env, root, tmp_path):
    import fcntl
    import os
    import subprocess
    import sys

    site, conf, state, ledger, sync = env
    state.mkdir(parents=True, exist_ok=True)
    with open(state / governor.PASS_LOCK, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        p = subprocess.run([sys.executable, "-m", "slurmgov.interface.cli", "sync", "--slurm-conf-dir", str(conf),
                            "--site", str(root / "site_configs" / "demo-cluster.yaml"), "--no-reconcile", "--wait", "0"],
                           capture_output=True, text=True, env={**os.environ, "SLURMGOV_HOME": str(state)}, timeout=120,
                           check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 5 and len(lines) == 1 and "another governor pass is still running" in lines[0], p.stderr


def _wrapped(n, set_=True, infinite=False):
    return {"set": set_, "infinite": infinite, "number": n}


def test_sacct_and_squeue_of_24_11_read_as_22_05s(monkeypatch):
    """The same jobs as 22.05 (data_parser v0.0.38) and 24.11/26.05 (v0.0.40+: numbers wrapped in
    {set, infinite, number}, states and "shared" as lists of flags) write them read alike."""
    import json

    from slurmgov.slurm import commands as slurm_cli
    sacct_38 = {"jobs": [{"job_id": 7, "account": "physics", "state": {"current": "COMPLETED"}, "user": "alice",
                          "comment": {"administrator": "slurmgov:hold=1-2-ab", "job": None},
                          "time": {"start": 5, "end": 14, "elapsed": 9}, "array": {"job_id": 6, "task_id": 1},
                          "tres": {"allocated": [{"type": "gres", "name": "gpu", "count": 4}]}}]}
    sacct_40 = {"jobs": [{"job_id": 7, "account": "physics", "state": {"current": ["COMPLETED"], "reason": "None"},
                          "user": "alice", "comment": {"administrator": "slurmgov:hold=1-2-ab", "job": ""},
                          "time": {"start": 5, "end": 14, "elapsed": 9, "limit": _wrapped(10)},
                          "array": {"job_id": 6, "task_id": _wrapped(1), "task": ""},
                          "tres": {"allocated": [{"type": "gres", "name": "gpu", "id": 1001, "count": 4}]}}]}
    common = {"job_id": 8, "admin_comment": "slurmgov:hold=3-4-cd", "account": "chem-ai", "partition": "gpu",
              "tres_per_node": "gres:gpu:h100:2", "tres_per_job": "", "tres_per_task": "", "tres_per_socket": ""}
    squeue_38 = {"jobs": [{**common, "job_state": "PENDING", "restart_cnt": 2, "array_job_id": 0,
                           "time_limit": 4294967295, "node_count": 2, "max_nodes": 2, "tasks": 2,
                           "tasks_per_node": 0, "sockets_per_node": 4294967294, "shared": None}]}
    squeue_40 = {"jobs": [{**common, "tres_per_node": "gres/gpu:h100:2", "job_state": ["PENDING", "REQUEUED"],
                           "restart_cnt": 2, "array_job_id": _wrapped(0), "time_limit": _wrapped(0, infinite=True),
                           "node_count": _wrapped(2), "max_nodes": _wrapped(2), "tasks": _wrapped(2),
                           "tasks_per_node": _wrapped(0), "sockets_per_node": _wrapped(0, set_=False), "shared": []}]}
    seen = []
    for sacct, squeue in ((sacct_38, squeue_38), (sacct_40, squeue_40)):
        outputs = {"sacct": json.dumps(sacct), "squeue": json.dumps(squeue)}
        monkeypatch.setattr(slurm_cli, "run", lambda cmd, outputs=outputs, **kw: outputs[cmd[0]])
        (job,) = slurm_cli.sacct_jobs()
        (q,) = slurm_cli.squeue_jobs()
        assert (job.state, job.final, job.gpus, job.elapsed, job.array_job_id, job.token, job.user) == (
            "COMPLETED", True, 4, 9, "6", "1-2-ab", "alice")
        assert (q.token, q.live, q.restart_cnt, q.array_job_id, q.view.time_limit, q.view.min_nodes,
                q.view.sockets_per_node, q.view.shared) == ("3-4-cd", True, 2, None, slurm_cli.UNLIMITED, 2, None, None)
        seen.append(q.view.tres_per_node)
    assert seen == ["gres:gpu:h100:2", "gres/gpu:h100:2"]  # as each release spells it; the hook reads both
