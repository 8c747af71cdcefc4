"""Per-user caps inside an account (issue 15, point 4): the ledger's rules, on SQLite and on the
session's PostgreSQL server (tests/pg_harness.py), and the schema migrations to versions 8 and 9."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

import pg_harness
import pytest

from slurmgov.errors import BudgetRefused, InputError, UnknownAccount
from slurmgov.ledger import schema as ledger_schema
from slurmgov.ledger.store import Ledger

NOW = datetime(2026, 5, 15, 12, tzinfo=timezone.utc).timestamp()
NEXT_MONTH = datetime(2026, 6, 1, 0, 0, 1, tzinfo=timezone.utc).timestamp()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.sqlite"
    return pg_harness.fresh_url(request.getfixturevalue("pg_url"))


@pytest.fixture
def led(db):
    led = Ledger.open(db)
    led.set_budget("chem", 10.0, "monthly", actor="test")
    led.set_user_cap("chem", "alice", 2.0, actor="admin", reason="intern")
    yield led
    led.disconnect()


def test_a_capped_user_is_refused_past_the_boundary_and_admitted_at_it(led):
    led.admit("a1", "chem", "wf", {"s": 1.5}, user="alice", now=NOW)
    with pytest.raises(BudgetRefused) as e:
        led.admit("a2", "chem", "wf", {"s": 0.5 + 1 / 3_600_000}, user="alice", now=NOW)  # one ms too many
    assert str(e.value) == ("account chem: user alice has 0.5 GPU-h left of their per-user cap of 2.0 GPU-h, "
                            "workflow needs up to 0.5 GPU-h")
    assert led.find_hold("a2") is None
    led.admit("a3", "chem", "wf", {"s": 0.5}, user="alice", now=NOW)  # exactly the cap
    [u] = led.user_balances(now=NOW)
    assert (u.account, u.user, u.cap_h, u.held_h, u.available_h) == ("chem", "alice", 2.0, 2.0, 0.0)
    with pytest.raises(BudgetRefused, match="user alice has 0.0 GPU-h left"):
        led.admit("a4", "chem", "wf", {"s": 0.001}, user="alice", now=NOW)


def test_other_users_and_uncapped_work_are_unaffected(led):
    led.admit("a1", "chem", "wf", {"s": 2.0}, user="alice", now=NOW)
    led.admit("b1", "chem", "wf", {"s": 5.0}, user="bob", now=NOW)  # bob has no cap: the account's budget only
    led.admit("n1", "chem", "wf", {"s": 1.0}, now=NOW)  # no user named: no cap to check
    assert led.balance("chem", now=NOW).available_h == pytest.approx(2.0)
    # the account's own budget still comes first, for a capped user too
    led.set_user_cap("chem", "alice", 100.0, actor="admin")
    with pytest.raises(BudgetRefused, match="^account chem: 2.0 GPU-h left, workflow needs up to 3.0 GPU-h$"):
        led.admit("a2", "chem", "wf", {"s": 3.0}, user="alice", now=NOW)
    # a cap in one account says nothing of the user's work in another
    led.set_budget("bio", 5.0, actor="test")
    led.set_user_cap("chem", "alice", 0.0, actor="admin")
    led.admit("a3", "bio", "wf", {"s": 4.0}, user="alice", now=NOW)


def test_charges_count_against_the_cap_in_their_period_only(led):
    led.admit("a1", "chem", "wf", {"s": 2.0}, user="alice", now=NOW)
    led.charge("c1", "a1", "s", 1, gpu_seconds=3600, weight=1.5, gpu_type=None, started=NOW, ended=NOW + 60,
               status="done")
    led.close("a1", "done")
    [u] = led.user_balances(now=NOW)
    assert (u.charged_h, u.held_h, u.available_h) == (1.5, 0.0, 0.5)
    with pytest.raises(BudgetRefused):
        led.admit("a2", "chem", "wf", {"s": 0.6}, user="alice", now=NOW)
    # next month the cap is whole again (as the account's budget is)
    led.admit("a3", "chem", "wf", {"s": 2.0}, user="alice", now=NEXT_MONTH)
    [u] = led.user_balances(now=NEXT_MONTH)
    assert (u.period, u.charged_h, u.held_h) == ("2026-06", 0.0, 2.0)


MONTH_START = datetime(2026, 6, 1, tzinfo=timezone.utc).timestamp()


def test_a_charge_counts_in_the_month_it_ended_to_the_second(led):
    """A user's charges are kept as running totals per month of their end (schema 9): a charge
    that ended half a second before the month turned counts in the old month, one that ended at
    the turn in the new one, as the charges' own end times say; quarterly and open-ended periods
    sum their months."""
    led.admit("a1", "chem", "wf", {"s": 1.0}, user="alice", now=NOW, enforce=False)
    led.charge("c1", "a1", "s", 1, 3600, 0.25, None, None, MONTH_START - 0.5, "done")
    led.charge("c2", "a1", "s", 2, 3600, 0.5, None, None, MONTH_START, "done", user="alice")
    led.bulk(lambda b: b.charge_many([dict(charge_key="c3", hold_key="a1", step="s", attempt=3, gpu_seconds=3600,
                                           weight=0.125, gpu_type=None, started=None, ended=MONTH_START + 1e-3,
                                           status="done")]))
    led.charge("c4", "a1", "s", 4, 3600, 1.0, None, None, NOW, "done", user="bob")  # another user's
    led.close("a1", "done")
    assert led.user_charged() == [("chem", "alice", "2026-05", 0.25), ("chem", "alice", "2026-06", 0.625),
                                  ("chem", "bob", "2026-05", 1.0)]
    [u] = led.user_balances(now=MONTH_START - 1)
    assert (u.period, u.charged_h, u.available_h) == ("2026-05", 0.25, 1.75)
    [u] = led.user_balances(now=MONTH_START)
    assert (u.period, u.charged_h, u.available_h) == ("2026-06", 0.625, 1.375)
    led.set_budget("chem", 10.0, "quarterly", actor="test")  # April-June: both months
    [u] = led.user_balances(now=MONTH_START)
    assert (u.period, u.charged_h) == ("2026-Q2", 0.875)
    led.set_budget("chem", 10.0, "none", actor="test")
    led.set_user_cap("chem", "alice", 1.0, actor="admin")
    with pytest.raises(BudgetRefused, match="user alice has 0.1 GPU-h left"):
        led.admit("a2", "chem", "wf", {"s": 0.2}, user="alice", now=NOW)


def test_work_admitted_elsewhere_is_recorded_and_counts(led):
    """The submit hook admits a Slurm job; the governor records it (enforce=False) past the cap,
    as it records one past the account's budget, and the user's next admission sees it."""
    led.admit("slurm:t1", "chem", "sbatch", {"job": 3.0}, user="alice", now=NOW, enforce=False)
    assert led.hold("slurm:t1").state == "open"
    with pytest.raises(BudgetRefused, match="has 0.0 GPU-h left"):
        led.check_admission("chem", "alice", 0.1, now=NOW)
    led.check_admission("chem", "bob", 0.1, now=NOW)
    with pytest.raises(BudgetRefused, match="^account chem: 7.0 GPU-h left"):
        led.check_admission("chem", "bob", 7.5, now=NOW)
    assert led.balance("chem", now=NOW).held_h == 3.0  # checking holds nothing


def test_bulk_admissions_count_for_the_user(led):
    led.bulk(lambda b: b.admit_many([("slurm:t1", "chem", "sbatch", {"job": 1.25}, "alice", "t1;-;1", NOW)]))
    [u] = led.user_balances(now=NOW)
    assert u.held_h == 1.25
    with pytest.raises(BudgetRefused, match="0.8 GPU-h left"):
        led.admit("a1", "chem", "wf", {"s": 1.0}, user="alice", now=NOW)


def test_cap_changes_are_audited_and_removable(led):
    led.set_user_cap("chem", "alice", 3.0, actor="admin", reason="more")
    led.set_user_cap("chem", "alice", 3.0, actor="admin", reason="same")  # no change: no audit row
    led.set_user_cap("chem", "alice", None, actor="admin", reason="graduated")
    rows = [a for a in led.audit() if a["action"] == "user-cap"]
    assert [(a["actor"], a["reason"], a["terms"]) for a in rows] == [
        ("admin", "intern", "user alice: cap 2 GPU-h per period (was none)"),
        ("admin", "more", "user alice: cap 3 GPU-h per period (was 2 GPU-h)"),
        ("admin", "graduated", "user alice: cap none per period (was 3 GPU-h)"),
    ]
    assert all(a["old_budget_h"] == a["new_budget_h"] == 10.0 for a in rows)
    assert led.user_balances() == []
    led.admit("a1", "chem", "wf", {"s": 9.0}, user="alice", now=NOW)


def test_bad_caps_are_refused(led):
    with pytest.raises(UnknownAccount):
        led.set_user_cap("nosuch", "alice", 1.0, actor="admin")
    for bad in ("", " ", "a\tb"):
        with pytest.raises(InputError, match="is not a user name"):
            led.set_user_cap("chem", bad, 1.0, actor="admin")
    with pytest.raises(InputError, match="GPU-hours >= 0"):
        led.set_user_cap("chem", "alice", -1.0, actor="admin")
    with pytest.raises(InputError, match="actor"):
        led.set_user_cap("chem", "alice", 1.0, actor="")


@pytest.mark.parametrize("version", [6, 7])
def test_a_version_6_or_7_ledger_gains_user_caps_on_open(db, version):
    """Version 7 is the roles' (audit.role), version 8 the caps': a ledger of either earlier shape
    migrates in place, and a cap change is audited with its role."""
    led = Ledger.open(db)
    led.set_budget("chem", 10.0, actor="test")
    led.admit("a1", "chem", "wf", {"s": 1.0}, user="alice", now=NOW)
    led.disconnect()
    stmts = ["DROP TABLE user_charged", "DROP TABLE account_charged", "DROP INDEX holds_user_open", "DROP TABLE user_caps",
             f"UPDATE schema_version SET version = {version}"]
    if version < 7:
        stmts.insert(0, "ALTER TABLE audit DROP COLUMN role")
    if db.startswith("sqlite:///"):
        conn = sqlite3.connect(db[len("sqlite://"):])
        for stmt in stmts:
            conn.execute(stmt)
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            for stmt in stmts:
                conn.execute(stmt)
    led = Ledger.open(db)  # migrates in place: the table and its indexes, the hold kept
    led.set_user_cap("chem", "alice", 1.5, actor="admin", role="manager")
    with pytest.raises(BudgetRefused, match="0.5 GPU-h left of their per-user cap of 1.5 GPU-h"):
        led.admit("a2", "chem", "wf", {"s": 1.0}, user="alice", now=NOW)
    assert led._read(lambda: led._one(ledger_schema.VERSION_GET))[0] == ledger_schema.SCHEMA_VERSION == 9
    assert [(a["action"], a["role"]) for a in led.audit()] == [("set", None), ("user-cap", "manager")]
    led.disconnect()


# ------------------------------------------------------------------ the submit hook (lua5.1, stub slurm)
def _hook_dir(tmp_path, user_caps: dict, accounts: dict | None = None, offset: int | None = None):
    """A scratch hook dir: job_submit.lua and a fresh snapshot with these capped users."""
    import shutil
    import time

    from hook_cases import HOOK

    from slurmgov.slurm import snapshot

    d = tmp_path / "hook"
    d.mkdir(exist_ok=True)
    shutil.copy(HOOK, d / "job_submit.lua")
    snapshot.write(d / "slurmgov_snapshot.txt", snapshot.Snapshot(
        serial=int(time.time() * 1000), written=int(time.time()), max_age_s=600, max_gpus_per_node=8,
        journal_offset=offset, available_gpu_s=accounts or {"chem-ai": 10 * 3600.0}, user_caps=user_caps))
    return d


def _submit(lua51, d, jobs: list[dict]) -> list[list[str]]:
    """slurm_job_submit of each job in turn, in one lua5.1 process: [rc, AdminComment, message]."""
    import subprocess

    from hook_cases import DRIVER, ROOT, SEP, line, unesc

    reqs = [line([("id", i), ("cmd", "submit"), ("uid", job.get("user_id", 0)),
                  ("part", SEP.join(["gpu", "30", "1440", "1", "1"])),
                  *[(f"d.{k}", v) for k, v in {"partition": "gpu", "account": "chem-ai", **job}.items()]])
            for i, job in enumerate(jobs)]
    proc = subprocess.run([lua51, str(DRIVER), str(d / "job_submit.lua")], input="".join(r + "\n" for r in reqs),
                          capture_output=True, text=True, check=True, cwd=ROOT, timeout=60)
    assert not proc.stderr, proc.stderr
    return [[unesc(f) for f in ln.split("\t")][2:] for ln in proc.stdout.splitlines()]


def _job(uid: int, gpus: int, minutes: int, **extra) -> dict:
    return {"tres_per_node": f"gres:gpu:{gpus}", "time_limit": minutes, "user_id": str(uid), "min_nodes": 1,
            "max_nodes": 1, **extra}


def test_a_version_8_ledger_gains_its_users_running_totals_on_open(db):
    """Version 9 keeps what each account and each user in it were charged per month as running
    totals instead of version 8's indexes charges_period and charges_user, and indexes only the
    open holds by account: a version 8 ledger migrates in place, its totals filled from the
    charges recorded (users, months; a charge without a user counts for its account only), the
    old indexes dropped, and balances and caps read the same as before."""
    led = Ledger.open(db)
    led.set_budget("chem", 10.0, actor="test")
    led.set_user_cap("chem", "alice", 2.0, actor="admin")
    led.admit("a1", "chem", "wf", {"s": 1.0}, user="alice", now=NOW, enforce=False)
    led.charge("c1", "a1", "s", 1, 3600, 0.5, None, None, NOW, "done")
    led.charge("c2", "a1", "s", 2, 3600, 0.25, None, None, MONTH_START - 0.5, "done")
    led.charge("c3", "a1", "s", 3, 3600, 0.75, None, None, MONTH_START, "done", user="bob")
    led.admit("n1", "chem", "wf", {"s": 1.0}, now=NOW)
    led.charge("c4", "n1", "s", 1, 3600, 1.0, None, None, NOW, "done")  # no user: no cap counts it
    before = led.user_charged()
    assert before == [("chem", "alice", "2026-05", 0.75), ("chem", "bob", "2026-06", 0.75)]
    balances = {t: led.balance("chem", now=t) for t in (NOW, MONTH_START)}
    assert [b.charged_h for b in balances.values()] == [1.75, 0.75]
    led.disconnect()
    stmts = ["DROP TABLE user_charged", "CREATE INDEX charges_user ON charges (account, user_name, ended)",
             "DROP TABLE account_charged", "CREATE INDEX charges_period ON charges (account, ended)",
             "DROP INDEX holds_open", "CREATE INDEX holds_open ON holds (account, state)",
             "UPDATE schema_version SET version = 8"]  # version 8's shape
    if db.startswith("sqlite:///"):
        conn = sqlite3.connect(db[len("sqlite://"):])
        for stmt in stmts:
            conn.execute(stmt)
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            for stmt in stmts:
                conn.execute(stmt)
    led = Ledger.open(db)
    assert led.user_charged() == before
    assert {t: led.balance("chem", now=t) for t in balances} == balances  # the accounts' totals too
    assert led._read(lambda: led._one(led._d.sql(
        "SELECT COUNT(*) FROM charges WHERE user_name = ?"), ("alice",)))[0] == 2
    for index in ("charges_user", "charges_period"):
        has_index = (f"SELECT 1 FROM sqlite_master WHERE name = '{index}'" if db.startswith("sqlite")
                     else f"SELECT to_regclass('{index}')")
        assert led._read(lambda q=has_index: led._one(q)) in (None, (None,))
    with pytest.raises(BudgetRefused, match="user alice has 1.2 GPU-h left"):
        led.admit("a2", "chem", "wf", {"s": 1.5}, user="alice", now=NOW)
    led.charge("c5", "a1", "s", 4, 3600, 0.25, None, None, NOW, "done")  # a charge after it adds up
    assert led.user_charged()[0] == ("chem", "alice", "2026-05", 1.0)
    # the open holds' index now holds the open ones only: what they hold reads the same
    assert [h["hold_key"] for h in led.holds_open()] == ["a1", "n1"] and led.check_held() == []
    led.close("a1", "done")
    assert [h["hold_key"] for h in led.holds_open()] == ["n1"] and led.check_held() == []
    assert led.balance("chem", now=NOW).held_h == 0  # n1 was charged in full: its share holds nothing
    assert led._read(lambda: led._one(ledger_schema.VERSION_GET))[0] == ledger_schema.SCHEMA_VERSION == 9
    led.disconnect()


def test_the_hook_refuses_a_user_past_their_cap_and_admits_another(lua51, tmp_path):
    # uid 1000 may spend 1 GPU-h of chem-ai (0.75 left); uid 1001 has no cap
    d = _hook_dir(tmp_path, {("chem-ai", 1000): (0.75 * 3600, 3600.0)})
    rows = _submit(lua51, d, [
        _job(1000, 1, 60, user_name="alice"),  # 1 GPU-h > 0.75 left
        _job(1001, 1, 60),  # no cap: the account's budget only
        _job(1000, 1, 45),  # exactly what the cap leaves
        _job(1000, 1, 1),  # nothing left now (the journal counts the one just admitted)
        _job(1000, 1, 1, account="bio-ml"),  # no budget line for bio-ml: the account's refusal comes first
    ])
    assert rows[0][0] == "-1" and rows[0][2] == ("slurmgov: account chem-ai: user alice (uid 1000) has 0.75 GPU-h "
                                                 "left of their per-user cap of 1.0 GPU-h, job needs up to 1.0 GPU-h")
    assert rows[1][0] == "0" and rows[1][1].startswith("slurmgov:hold=")
    assert rows[2][0] == "0"
    assert rows[3][0] == "-1" and rows[3][2].startswith("slurmgov: account chem-ai: uid 1000 has 0.0 GPU-h left of "
                                                        "their per-user cap of 1.0 GPU-h")
    assert rows[4][2] == "slurmgov: account bio-ml has no GPU budget, job needs up to 0.02 GPU-h"
    refusals = [ln.split("\t") for ln in (d / "slurmgov_refusals.log").read_text().splitlines()]
    assert [(r[2], r[3], r[4]) for r in refusals] == [("over_user_cap", "chem-ai", "1000"),
                                                       ("over_user_cap", "chem-ai", "1000"),
                                                       ("no_budget", "bio-ml", "1000")]
    admits = [ln.split("\t") for ln in (d / "slurmgov_journal.log").read_text().splitlines()]
    assert [(a[5], a[6]) for a in admits] == [("1001", "3600.000"), ("1000", "2700.000")]


def test_the_hook_counts_a_users_admissions_since_the_snapshot_in_a_new_process(lua51, tmp_path):
    """What the user was admitted since the snapshot is read back from the journal (a fresh Lua
    state too, as after a slurmctld restart), in their account only, and the account's budget
    still binds a capped user."""
    d = _hook_dir(tmp_path, {("chem-ai", 1000): (2 * 3600.0, 2 * 3600.0), ("bio-ml", 1000): (3600.0, 3600.0)},
                  accounts={"chem-ai": 10 * 3600.0, "bio-ml": 0.5 * 3600})
    assert [r[0] for r in _submit(lua51, d, [_job(1000, 1, 90)])] == ["0"]
    rows = _submit(lua51, d, [_job(1000, 1, 31), _job(1000, 1, 30), _job(1000, 1, 31, account="bio-ml"),
                              _job(1000, 1, 30, account="bio-ml")])
    assert [r[0] for r in rows] == ["-1", "0", "-1", "0"]
    assert "per-user cap of 2.0 GPU-h" in rows[0][2]
    assert rows[2][2] == "slurmgov: account bio-ml: 0.5 GPU-h left, job needs up to 0.52 GPU-h"


def test_a_job_change_past_the_owners_cap_is_refused(lua51, tmp_path):
    """slurm_job_modify: growing a job past its owner's cap is refused as growing it past the account is."""
    import subprocess

    from hook_cases import ROOT

    d = _hook_dir(tmp_path, {("chem-ai", 1000): (0.2 * 3600, 3600.0)})
    script = d / "modify.lua"
    script.write_text(f"""
slurm = {{ SUCCESS = 0, ERROR = -1, log_user = function() end, log_info = function(f, m) print(m) end }}
dofile({str(d / "job_submit.lua")!r})
local rec = {{ job_id = 7, account = "chem-ai", user_id = 1000, tres_per_node = "gres:gpu:1", time_limit = 30,
              min_nodes = 1, max_nodes = 1, min_cpus = 1, partition = "gpu" }}
local parts = {{ gpu = {{ name = "gpu", default_time = 30, max_time = 1440, flag_default = 1, max_share = 1 }} }}
print(slurm_job_modify({{ time_limit = 45 }}, rec, parts, 1000))
print(slurm_job_modify({{ time_limit = 31 }}, rec, parts, 1000))
""")
    out = subprocess.run([lua51, str(script)], capture_output=True, text=True, check=True, cwd=ROOT,
                         timeout=60).stdout.splitlines()
    assert out[0].startswith("slurmgov: change to job 7 by uid 1000 refused: account chem-ai: uid 1000 has 0.2 GPU-h "
                             "left of their per-user cap of 1.0 GPU-h, the change needs up to 0.25 GPU-h more")
    assert out[1:] == ["-1", "0"]


# ------------------------------------------------------------------ the CLI: budget user-cap, slurmgov run
def _sg(*args, check=None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([str(Path(sys.executable).parent / "slurmgov"), *map(str, args)], capture_output=True,
                          text=True, env=dict(os.environ), timeout=120, check=False)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    if check is not None:
        assert proc.returncode == check, proc.stderr + proc.stdout
    return proc


def test_slurmgov_run_past_the_users_cap_exits_4_and_submits_nothing(root, slurmgov_home):
    import json

    from slurmgov.policy.authz import whoami

    me = whoami()
    p = _sg("budget", "user-cap", "set", "chem-ai", me, "1.5", "--reason", "trial", check=0)
    period = datetime.now(timezone.utc).strftime("%Y-%m")
    assert p.stdout.strip() == f"account chem-ai: user {me} may spend 1.50 GPU-h per period, 1.50 left in {period}"
    p = _sg("run", root / "jobspecs/research-fanout.yaml", check=4)  # worst case 3.33 GPU-h
    assert p.stderr.strip() == (f"slurmgov: account chem-ai: user {me} has 1.5 GPU-h left of their per-user cap "
                                f"of 1.5 GPU-h, workflow needs up to 3.3 GPU-h")
    [row] = json.loads(_sg("budget", "user-cap", "show", "--json", check=0).stdout)
    assert (row["account"], row["user"], row["cap_h"], row["held_h"], row["charged_h"]) == ("chem-ai", me, 1.5, 0, 0)
    [bal] = [b for b in json.loads(_sg("budget", "show", "--json", check=0).stdout) if b["account"] == "chem-ai"]
    assert bal["held_h"] == 0 and bal["charged_h"] == 0  # refused: nothing held, nothing ran
    # $USER does not make the run someone else's
    import os
    import subprocess
    import sys
    from pathlib import Path

    p = subprocess.run([str(Path(sys.executable).parent / "slurmgov"), "run", str(root / "jobspecs/research-fanout.yaml")],
                       capture_output=True, text=True, env={**os.environ, "USER": "someone-else",
                                                            "LOGNAME": "someone-else"}, timeout=120, check=False)
    assert p.returncode == 4 and f"user {me} has" in p.stderr
    _sg("budget", "user-cap", "remove", "chem-ai", me, "--reason", "trial over", check=0)
    assert json.loads(_sg("budget", "user-cap", "show", "--json", check=0).stdout) == []
    audit = [a for a in json.loads(_sg("audit", "--json", check=0).stdout) if a["action"] == "user-cap"]
    assert [(a["actor"], a["reason"]) for a in audit] == [(me, "trial"), (me, "trial over")]
    import os as _os

    table = subprocess.run([str(Path(sys.executable).parent / "slurmgov"), "audit"], capture_output=True, text=True,
                           env={**_os.environ, "COLUMNS": "250"}, timeout=120, check=True).stdout
    assert f"user {me}: cap 1.5 GPU-h per period (was none): trial" in table


def test_user_cap_input_errors_are_one_line(root, slurmgov_home):
    p = _sg("budget", "user-cap", "set", "chem-ai", "al ice", "5", check=2)
    assert "not a user name" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = _sg("budget", "user-cap", "set", "chem-ai", "alice", "-5", check=2)
    assert "GPU_HOURS" in p.stderr
    p = _sg("budget", "user-cap", "set", "no-such", "nobody", "5", check=2)
    assert "account no-such has no budget" in p.stderr
    # a name this host has no uid for (a typo): a cap the submit hook could never enforce
    p = _sg("budget", "user-cap", "set", "chem-ai", "nosuchuser-typo", "5", check=2)
    assert p.stderr.strip() == ("slurmgov: user-cap: user 'nosuchuser-typo' has no uid on this host (no passwd "
                                "entry): the submit hook could not enforce a cap on it; give a user name or uid "
                                "this host knows")
    assert _sg("budget", "user-cap", "show", "--json", check=0).stdout.count("nosuchuser-typo") == 0


# ------------------------------------------------------------------ the governor: snapshot user lines, default budgets
SITE = """site: caps
executor: slurm
gpu_types:
  h100: {memory_gb: 80, weight: 1.0}
nodes:
  - {names: "gpu[01-02]", gpus: 4, gpu_type: h100, cpus: 16, memory: 64G}
partitions:
  - {name: gpu, nodes: "gpu[01-02]", default: true, default_time: "00:30:00", max_time: "1-00:00:00"}
accounts:
  physics: {budget_gpu_hours: 50, period: monthly}
ledger: sqlite:///${SLURMGOV_HOME}/ledger.sqlite
default_budget: {budget_gpu_hours: 5, period: quarterly}
"""


class _Slurm:
    """A stand-in for slurm.commands: two associated accounts, nothing in sacct or squeue."""

    @staticmethod
    def associated_accounts():
        return {"fresh", "physics"}

    @staticmethod
    def sacct_jobs():
        return []

    @staticmethod
    def squeue_tokens():
        return []


def test_the_governor_writes_capped_users_and_seeds_default_budgets(tmp_path):
    import pwd
    import time

    from slurmgov.site import model as site_mod
    from slurmgov.slurm import governor, journal, snapshot

    (tmp_path / "site.yaml").write_text(SITE)
    site = site_mod.load(tmp_path / "site.yaml")
    conf, state = tmp_path / "etc", tmp_path / "state"
    conf.mkdir()
    ledger = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite")
    now = int(time.time())
    # the hook admitted a job of uid 0 in an account the ledger has no budget for (fail-open)
    (conf / governor.ADMITS).write_text(f"admit\t{now}\t0\ttok-1\tjournal-only\t0\t1800.000\t1\t30\th100\t1\n"
                                        f"admit\t{now}\t0\ttok-2\tno spaces\t0\t1800.000\t1\t30\th100\t1\n")
    rep = governor.sync_once(ledger, site, conf, state, slurm=_Slurm())
    # a name no site file could hold gets no budget: its line stays a problem
    assert [p for p in rep.problems if "account no spaces has no budget" in p] == rep.problems != []
    assert rep.seeded == ["fresh", "journal-only"]
    root = pwd.getpwuid(0).pw_name
    hold = ledger.hold("slurm:tok-1")
    assert (hold.account, hold.user) == ("journal-only", root)  # the uid's name, as `slurmgov run` records users
    balances = {b.account: b for b in ledger.balances()}
    assert balances["fresh"].budget_h == balances["journal-only"].budget_h == 5.0
    assert balances["physics"].budget_h == 50.0  # the site file's own budget, not the default
    seeds = {a["account"]: a for a in ledger.audit() if a["action"] == "seed" and a["actor"] == "slurmgov"}
    assert set(seeds) == {"fresh", "journal-only"}
    assert seeds["fresh"]["reason"] == ("default budget (site file default_budget): account in Slurm's "
                                        "associations without a budget in the ledger")
    assert seeds["journal-only"]["new_period"] == "quarterly"
    assert {a["role"] for a in seeds.values()} == {None}  # slurmgov's own doing: no role, as the site file's seeds
    # a capped user reaches the snapshot by uid, with what their cap leaves
    ledger.set_user_cap("journal-only", root, 2.0, actor="admin")
    ledger.set_user_cap("physics", "no-such-user-here", 1.0, actor="admin")  # no uid: left out, logged
    governor.sync_once(ledger, site, conf, state, slurm=_Slurm())
    snap = snapshot.read(conf / governor.SNAPSHOT)
    assert snap.user_caps == {("journal-only", 0): (1.5 * 3600, 2.0 * 3600)}
    assert journal.parse((conf / governor.ADMITS).read_text().splitlines()[0]).user == "0"
    ledger.disconnect()


def test_without_a_default_budget_an_unknown_account_stays_a_problem(tmp_path):
    import time

    from slurmgov.site import model as site_mod
    from slurmgov.slurm import governor

    (tmp_path / "site.yaml").write_text(SITE.replace("default_budget: {budget_gpu_hours: 5, period: quarterly}\n", ""))
    site = site_mod.load(tmp_path / "site.yaml")
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / governor.ADMITS).write_text(f"admit\t{int(time.time())}\t0\ttok-1\tnobudget\t0\t60.000\t1\t1\t-\t1\n")
    ledger = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite")
    rep = governor.sync_once(ledger, site, conf, tmp_path / "state", slurm=_Slurm())
    assert [p for p in rep.problems if "account nobudget has no budget" in p]
    assert {b.account for b in ledger.balances()} == {"physics"}
    ledger.disconnect()


def test_a_bad_default_budget_names_its_line(tmp_path):
    from slurmgov.errors import InputError
    from slurmgov.site import model as site_mod

    (tmp_path / "site.yaml").write_text(SITE.replace("budget_gpu_hours: 5, period: quarterly",
                                                     "budget_gpu_hours: -5, period: quarterly"))
    with pytest.raises(InputError, match=r"site.yaml:12: default_budget.budget_gpu_hours"):
        site_mod.load(tmp_path / "site.yaml")


def test_gsbatch_refuses_past_the_submitters_cap_before_sbatch(root, slurmgov_home, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from slurmgov.policy.authz import whoami

    _sg("budget", "user-cap", "set", "physics", whoami(), "1", check=0)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nexit 1\n")  # Slurm unreachable: the site file's partitions
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "SLURM_CONF": str(tmp_path / "etc" / "slurm.conf")}
    p = subprocess.run([str(Path(sys.executable).parent / "gsbatch"), "--gsbatch-preview", "-A", "physics", "--gpus=2",
                        "-t", "60", "--wrap", "true"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert p.returncode == 4, p.stderr
    assert p.stderr.strip() == (f"gsbatch: account physics: user {whoami()} has 1.0 GPU-h left of their per-user cap "
                                f"of 1.0 GPU-h, job needs up to 2.0 GPU-h")


def test_a_hook_upgraded_in_a_live_lua_state_keeps_working(lua51, tmp_path):
    """slurmctld may keep the Lua state (slurmgov_state) across a reload of a new job_submit.lua: its
    caches, made by a hook from before user lines, have no users and no per-user sums."""
    import subprocess

    from hook_cases import ROOT

    d = _hook_dir(tmp_path, {("chem-ai", 1000): (3600.0, 3600.0)})
    script = d / "upgrade.lua"
    script.write_text(f"""
slurm = {{ SUCCESS = 0, ERROR = -1, log_user = function(f, m) print(m) end, log_info = function() end }}
dofile({str(d / "job_submit.lua")!r})
local parts = {{ gpu = {{ name = "gpu", default_time = 30, max_time = 1440, flag_default = 1, max_share = 1 }} }}
local function job() return {{ account = "chem-ai", user_id = 1000, tres_per_node = "gres:gpu:1", time_limit = 30,
                               min_nodes = 1, max_nodes = 1, partition = "gpu" }} end
print(slurm_job_submit(job(), parts, 1000))
slurmgov_state.snapshot.snap.users = nil -- as the older hook parsed it
slurmgov_state.journal.usums = nil
print(slurm_job_submit(job(), parts, 1000))
print(slurm_job_submit(job(), parts, 1000))
slurmgov_state.snapshot = nil -- the governor's next snapshot (a new serial) is parsed afresh
print(slurm_job_submit(job(), parts, 1000))
""")
    out = subprocess.run([lua51, str(script)], capture_output=True, text=True, check=True, cwd=ROOT,
                         timeout=60).stdout.splitlines()
    # no Lua error; the old parse has no user lines, so the cap binds from the next snapshot on,
    # counting every admission of the journal (the sums, lacking their per-user half, are read again)
    assert out[:3] == ["0", "0", "0"], out
    assert out[3].endswith("has 0.0 GPU-h left of their per-user cap of 1.0 GPU-h, job needs up to 0.5 GPU-h") \
        and out[4] == "-1", out


def test_gpu_time_billed_from_sacct_counts_against_its_users_cap(tmp_path):
    """A job the hook never held, whose settle line was lost too, is billed from sacct: to its user."""
    import time

    from slurmgov.site import model as site_mod
    from slurmgov.slurm import governor
    from slurmgov.slurm.commands import Job

    (tmp_path / "site.yaml").write_text(SITE)
    site = site_mod.load(tmp_path / "site.yaml")
    conf = tmp_path / "etc"
    conf.mkdir()
    ledger = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite")
    governor.sync_once(ledger, site, conf, tmp_path / "state")
    ledger.set_user_cap("physics", "alice", 1.0, actor="admin")
    t0 = int(time.time()) - 3600

    class Sacct(_Slurm):
        @staticmethod
        def sacct_jobs():
            return [Job("900", "physics", "COMPLETED", None, 2, t0, t0 + 900, 900, user="alice")]

    rep = governor.sync_once(ledger, site, conf, tmp_path / "state", slurm=Sacct(), grace_s=0)
    assert not rep.problems, rep.problems
    [charge] = ledger.charges("slurm:job-900")
    assert (charge["user"], charge["charged_h"]) == ("alice", 0.5)
    [u] = ledger.user_balances()
    assert (u.user, u.charged_h, u.available_h) == ("alice", 0.5, 0.5)
    ledger.disconnect()


def test_the_mcp_desk_tells_an_agent_its_users_cap(root, tmp_path):
    """budget_status shows the caller's cap; plan_workflow and suggest_cheaper plan within it."""
    from slurmgov.interface.mcp_tools import Desk
    from slurmgov.site import model as site_mod

    site = site_mod.load(root / "site_configs" / "local.yaml")
    ledger = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite")
    desk = Desk(site, str(root / "site_configs" / "local.yaml"), ledger, user="alice")
    assert desk.budget_status("chem-ai")["user_cap"] is None
    ledger.set_user_cap("chem-ai", "alice", 1.0, actor="admin")
    b = desk.budget_status("chem-ai")
    assert b["available_gpu_hours"] == 500.0
    assert b["user_cap"] == {"user": "alice", "cap_gpu_hours": 1.0, "charged_gpu_hours": 0.0, "held_gpu_hours": 0.0,
                             "available_gpu_hours": 1.0}
    spec = (root / "jobspecs" / "research-fanout.yaml").read_text()  # 3.33 GPU-h at worst
    p = desk.plan_workflow(spec)
    assert (p["fits_budget"], p["available_gpu_hours"]) == (False, 1.0)
    assert p["shortfall_gpu_hours"] == pytest.approx(p["worst_case_gpu_hours"] - 1.0)
    s = desk.suggest_cheaper(spec)
    assert s["fits"] is False and s["available_gpu_hours"] == 1.0
    assert all(a["worst_case_gpu_hours"] <= 1.0 + 1e-9 for a in s["alternatives"])
    ledger.disconnect()
