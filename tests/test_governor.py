"""The governor's pass over the hooks' journals, on files written the way the hooks write them."""

import time

import pytest
from pg_harness import pg_url  # noqa: F401  (session fixture: the PostgreSQL batch test)

from slurmgov.governance import governor, snapshot
from slurmgov.governance import site as site_mod
from slurmgov.governance.ledger import Ledger


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


def settle(job, token, gpus=2, start=T0 + 100, end=T0 + 1900, state="COMPLETED", account="physics"):
    return f"settle\t{job}\t{token}\t{account}\t{gpus}\t{start}\t{end}\t{state}\n"


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
    site, conf, state, ledger, sync = env
    names = governor.install_hooks(conf)
    assert names == ["job_submit.lua", "jobcomp.lua"]
    assert (conf / "job_submit.lua").read_text() == (root / "plugins" / "job_submit.lua").read_text()
    for name in (governor.ADMITS, governor.SETTLES):
        assert (conf / name).stat().st_mode & 0o777 == 0o644


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


def test_forecast_and_alerts(env):
    from slurmgov.governance.forecast import forecasts

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

    from slurmgov.governance.metrics import GovernorMetrics

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
    from slurmgov.errors import SlurmgovError
    from slurmgov.governance import journal

    drift, seen = [], set()
    for job in jobs:
        if not job.token:
            continue
        seen.add(job.token)
        if not job.final:
            continue
        key = governor.hold_key(job.token)
        try:
            ledger.hold(key)
        except SlurmgovError:
            used_h = job.gpus * job.elapsed * site.weight(None) / 3600
            ledger.admit(key, job.account, "sbatch", {"job": used_h}, run_id=f"{job.token};-;1",
                         now=job.start or job.end or now, enforce=False)
            drift.append(f"job {job.job_id}: no admit line for hold {job.token}; hold recreated from sacct")
        gpu_s = job.gpus * job.elapsed
        had = {c["charge_key"]: c for c in ledger.charges(key)}.get(governor.charge_key(job.job_id, job.start))
        if had is None:
            governor.apply(ledger, site, journal.Settle(job.job_id, job.token, job.account, job.gpus, None, job.start,
                                                        job.start + job.elapsed if job.start else job.end, job.state))
            drift.append(f"job {job.job_id}: no settle line; settled from sacct ({gpu_s} GPU-s)")
        elif abs(had["gpu_seconds"] - gpu_s) > 1:
            drift.append(f"job {job.job_id}: ledger charged {had['gpu_seconds']:g} GPU-s, sacct says {gpu_s}")
    for key, created in ledger.open_holds("slurm:"):
        token = key[len("slurm:"):]
        if token not in seen and token not in live_tokens and now - created > grace_s:
            ledger.close(key, "cancelled")
            drift.append(f"hold {token}: no such job in Slurm after {grace_s:g} s; released")
    return drift


def mixed_jobs(now):
    """Journal events already applied, then what sacct says: every case reconcile handles."""
    from slurmgov.governance import journal
    from slurmgov.governance.slurm_cli import Job

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
    ]
    jobs = [
        Job("0", "physics", "COMPLETED", None, 2, t, t + 60, 60),  # no token: not governed
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


def build_mixed(ledger, site, now):
    events, jobs, live = mixed_jobs(now)
    for ev in events:
        governor.apply(ledger, site, ev)
    return jobs, live


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
    tokens = {j.token for j in jobs if j.token} | {"orphan", "young", "queued", "closed"}
    assert ledger_state(ledger, tokens) == ledger_state(ref, tokens)
    # what the mix must have produced, beyond agreeing with the reference
    assert ledger.hold("slurm:arr").state == "done" and ledger.hold("slurm:nosettle").state == "failed"
    assert ledger.hold("slurm:arr2").state == "done"  # 'CANCELLED by 0' counts as finished: the array closes
    assert ledger.hold("slurm:noadmit").run_id == "noadmit;-;1" and ledger.hold("slurm:orphan").state == "cancelled"
    assert ledger.hold("slurm:young").state == "open" and ledger.hold("slurm:queued").state == "open"
    assert sum(1 for d in drift if "no settle line" in d) == 9 and any("sacct says 3600" in d for d in drift)


def test_bulk_reconcile_replay_changes_nothing(env):
    site, conf, state, ledger, sync = env
    now = time.time()
    jobs, live = build_mixed(ledger, site, now)
    governor.reconcile(ledger, site, jobs, live, now=now)
    tokens = {j.token for j in jobs if j.token} | {"orphan", "young", "queued", "closed"}
    before = ledger_state(ledger, tokens)
    again = governor.reconcile(ledger, site, jobs, live, now=now)
    assert again == ["job 3: ledger charged 1800 GPU-s, sacct says 3600"]  # reported, never rewritten
    assert ledger_state(ledger, tokens) == before


def test_bulk_reconcile_error_keeps_the_jobs_before_it(env):
    from slurmgov.errors import InputError
    from slurmgov.governance.slurm_cli import Job

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
        admit("nobudget", account="no-such-account"),  # the ledger has no budget for it: reported
        admit("ok", cost_h=5.0),  # the same token, another cost: reported
        admit("typed", gpu_type="h100+a100"),
        admit("nan", cost_h=float("-1")),  # a negative cost: reported
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
        settle(10, "-"),  # no token: not governed, not counted
        settle(11, "unknown-token"),  # no such hold: reported
        settle(101, "fail"),  # job 101's charge key again, for another hold: reported
        settle(12, "run", gpus=-2),  # negative GPUs: reported
        admit("late"), settle(13, "late"), settle(14, "early"), admit("early"),  # order within a file
        settle(15, "typed", gpus=3),
    ]
    append(conf / governor.ADMITS, "".join(admits) + admit("torn")[:25])
    append(conf / governor.SETTLES, "".join(settles) + settle(16, "typed")[:20])
    append(conf / governor.REFUSALS, "".join(f"refuse\t{T0}\t{r}\tphysics\t1000\n"
                                             for r in ("over_budget", "no_budget", "over_budget")) + "refuse\tx\n")


MIXED_TOKENS = {"ok", "arr", "arr2", "rq", "pend", "fail", "run", "nobudget", "typed", "nan", "late", "early",
                "unknown-token", "torn"}


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
        "unrecognised", "hold", "charge", "GPUs", "hold",  # broken, unknown, 101 again, gpus -2, early
        "unrecognised"]  # the refusal without its fields
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
    from slurmgov.governance.ledger import Bulk

    site, conf, state, ledger, sync = env
    mixed_journal(conf)
    ref, ref_sync = reference_pass(tmp_path, site, conf)
    want = report_of(ref_sync())

    def broken(self, rows):
        raise LedgerError("ledger: disk I/O error")  # after the holds were written: all rolled back

    monkeypatch.setattr(Bulk, "charge_many", broken)
    assert report_of(governor.sync_once(ledger, site, conf, state, batch=4)) == want
    assert ledger_state(ledger, MIXED_TOKENS) == ledger_state(ref, MIXED_TOKENS)


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
