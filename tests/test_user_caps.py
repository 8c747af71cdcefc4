"""Per-user caps inside an account (issue 15, point 4): the ledger's rules, on SQLite and on the
session's PostgreSQL server (tests/pg_harness.py), and the schema migration to version 7."""

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


def test_a_version_6_ledger_gains_user_caps_on_open(db):
    led = Ledger.open(db)
    led.set_budget("chem", 10.0, actor="test")
    led.admit("a1", "chem", "wf", {"s": 1.0}, user="alice", now=NOW)
    led.disconnect()
    if db.startswith("sqlite:///"):
        conn = sqlite3.connect(db[len("sqlite://"):])
        for stmt in ("DROP INDEX charges_user", "DROP INDEX holds_user_open", "DROP TABLE user_caps",
                     "UPDATE schema_version SET version = 6"):
            conn.execute(stmt)
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            for stmt in ("DROP INDEX charges_user", "DROP INDEX holds_user_open", "DROP TABLE user_caps",
                         "UPDATE schema_version SET version = 6"):
                conn.execute(stmt)
    led = Ledger.open(db)  # migrates in place: the table and its indexes, the hold kept
    led.set_user_cap("chem", "alice", 1.5, actor="admin")
    with pytest.raises(BudgetRefused, match="0.5 GPU-h left of their per-user cap of 1.5 GPU-h"):
        led.admit("a2", "chem", "wf", {"s": 1.0}, user="alice", now=NOW)
    assert led._read(lambda: led._one(ledger_schema.VERSION_GET))[0] == ledger_schema.SCHEMA_VERSION == 7
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
