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
