"""The GPU-budget ledger: admission, holds, charges, periods, audit, concurrency, replays.

Every test that takes ``db`` or ``led`` runs on both backends: SQLite, and a real PostgreSQL
server that tests/pg_harness.py starts for the session (each test gets a new, empty schema).
"""

import multiprocessing
import os
import sqlite3
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pg_harness
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slurmgov.errors import BudgetRefused, InputError, LedgerError, LedgerUnavailable
from slurmgov.ledger import schema as ledger_schema
from slurmgov.ledger.store import Ledger, period_of

MS = 3_600_000
NOW = datetime(2026, 5, 15, 12, tzinfo=timezone.utc)
LAST_MONTH = datetime(2026, 4, 30, 23, 59, tzinfo=timezone.utc).timestamp()
THIS_MONTH = datetime(2026, 5, 1, 0, 0, tzinfo=timezone.utc).timestamp()


def url(path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request):
    """'sqlite', or the URL of the session's PostgreSQL server (skipped where it cannot run,
    failed in CI)."""
    return request.getfixturevalue("pg_url") if request.param == "postgres" else "sqlite"


def fresh(backend, where: Path, socket: bool = False) -> str:
    """The URL of a new, empty ledger: a file under ``where``, or a new PostgreSQL schema
    (over TCP with the password, or ``socket=True``: over the unix socket)."""
    if backend == "sqlite":
        return url(where / "sub" / "ledger.sqlite")
    return pg_harness.fresh_url(socket=socket)


@pytest.fixture
def db(backend, tmp_path):
    """The URL of a new, empty ledger, on each backend."""
    return fresh(backend, tmp_path)


@pytest.fixture
def led(db):
    led = Ledger.open(db)
    led.ensure_account("chem", 10.0)
    yield led
    led.disconnect()


@contextmanager
def raw(db_url):
    """A plain DB-API connection to the ledger's database, past the Ledger, and its error class."""
    if db_url.startswith("sqlite:///"):
        conn = sqlite3.connect(db_url[len("sqlite://"):])
        try:
            yield conn, sqlite3.DatabaseError
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as conn:
            yield conn, psycopg.Error


def charge(led, key, hold, step, gpu_s, weight=1.0, ended=THIS_MONTH + 60, **kw):
    return led.charge(key, hold, step, 1, gpu_seconds=gpu_s, weight=weight, gpu_type="a100",
                      started=ended - 1, ended=ended, status="ok", **kw)


def bal(led, account="chem"):
    b = led.balance(account, now=NOW)
    return b.budget_h, b.charged_h, b.held_h, b.available_h


# ---- admission and balances ----------------------------------------------------------------

def test_admit_under_budget_then_refused_with_exact_message(led):
    h = led.admit("h1", "chem", "wf", {"a": 3.0, "b": 4.5}, user="alice", run_id="r1", now=NOW)
    assert (h.amount_h, h.remaining_h, h.state, h.shares) == (7.5, 7.5, "open", {"a": 3.0, "b": 4.5})
    assert (h.user, h.run_id) == ("alice", "r1")
    assert bal(led) == (10.0, 0.0, 7.5, 2.5)
    with pytest.raises(BudgetRefused) as e:
        led.admit("h2", "chem", "wf", {"a": 2.0, "b": 1.0}, user="bob", now=NOW)
    assert str(e.value) == "account chem: 2.5 GPU-h left, workflow needs up to 3.0 GPU-h"
    assert e.value.exit_code == 4
    assert bal(led) == (10.0, 0.0, 7.5, 2.5)  # a refusal holds nothing
    # exactly what is left is admitted
    led.admit("h3", "chem", "wf", {"a": 2.5}, user="bob", now=NOW)
    assert bal(led) == (10.0, 0.0, 10.0, 0.0)


def test_hook_admitted_holds_are_recorded_even_over_budget(led):
    # The submit hook inside slurmctld already admitted the job: the ledger must show its hold,
    # and the account goes negative rather than losing track of a running job.
    led.admit("slurm:t1", "chem", "sbatch", {"job": 12.0}, user="alice", now=NOW, enforce=False)
    assert bal(led) == (10.0, 0.0, 12.0, -2.0)
    with pytest.raises(BudgetRefused):
        led.admit("h2", "chem", "wf", {"a": 0.5}, user="bob", now=NOW)


def test_available_is_budget_minus_charged_minus_held(led):
    led.admit("h", "chem", "wf", {"a": 2.0, "b": 3.0}, user="u", now=NOW)
    charge(led, "c1", "h", "a", 1800, weight=2.0)  # 1 weighted GPU-h
    assert bal(led) == (10.0, 1.0, 4.0, 5.0)
    assert led.hold("h").shares == {"a": 1.0, "b": 3.0}
    led.settle_step("h", "a")
    assert bal(led) == (10.0, 1.0, 3.0, 6.0)
    assert led.hold("h").remaining_h == 3.0


def test_amounts_are_exact_integers_rounded_half_up_once(led):
    led.admit("h", "chem", "wf", {"a": 5.0}, user="u", now=NOW)
    for i in range(10):
        charge(led, f"c{i}", "h", "a", 36.0)  # 0.01 h each; float sums would drift
    assert led.balance("chem", now=NOW).charged_h == 0.1
    c = charge(led, "half", "h", "a", 0.0005)  # 0.5 ms rounds up to 1 ms
    assert c["charged_h"] == 1 / MS
    c = charge(led, "under", "h", "a", 0.00049)  # 0.49 ms rounds down to nothing
    assert c["charged_h"] == 0


def test_unknown_account_and_hold_and_bad_values(led):
    with pytest.raises(InputError, match="account ghost has no budget"):
        led.balance("ghost")
    with pytest.raises(InputError, match="ghost"):
        led.admit("h", "ghost", "wf", {"a": 1.0}, user="u")
    with pytest.raises(LedgerError, match="hold nope is not in the ledger"):
        charge(led, "c", "nope", "a", 10)
    with pytest.raises(LedgerError, match="nope"):
        led.settle_step("nope", "a")
    with pytest.raises(LedgerError, match="nope"):
        led.close("nope", "done")
    with pytest.raises(InputError):
        led.admit("h", "chem", "wf", {"a": -1.0}, user="u")
    with pytest.raises(InputError):
        led.admit("h", "chem", "wf", {"a": float("nan")}, user="u")
    led.admit("h", "chem", "wf", {"a": 1.0}, user="u", now=NOW)
    with pytest.raises(LedgerError, match="no share for step zz"):
        led.settle_step("h", "zz")
    with pytest.raises(InputError):
        led.close("h", "exploded")
    with pytest.raises(InputError):
        led.usage(by="colour")
    assert led.charges() == []  # nothing was half-written by the failures


# ---- idempotent replays --------------------------------------------------------------------

def test_replays_change_nothing(led):
    h1 = led.admit("h", "chem", "wf", {"a": 2.0, "b": 3.0}, user="u", now=NOW)
    assert led.admit("h", "chem", "wf", {"a": 2.0, "b": 3.0}, user="u", now=NOW) == h1
    assert bal(led) == (10.0, 0.0, 5.0, 5.0)
    c1 = charge(led, "c", "h", "a", 3600)
    assert charge(led, "c", "h", "a", 3600) == c1
    assert bal(led) == (10.0, 1.0, 4.0, 5.0) and len(led.charges()) == 1
    led.settle_step("h", "a")
    led.settle_step("h", "a")
    assert bal(led) == (10.0, 1.0, 3.0, 6.0)
    led.close("h", "done")
    after = bal(led)
    assert led.close("h", "failed").state == "done"  # the first close wins
    assert led.admit("h", "chem", "wf", {"a": 2.0, "b": 3.0}, user="u", now=NOW).state == "done"
    assert charge(led, "c", "h", "a", 3600) == c1
    assert bal(led) == after == (10.0, 1.0, 0.0, 9.0)


def test_replay_with_different_request_is_an_error(led):
    led.admit("h", "chem", "wf", {"a": 2.0}, user="u", now=NOW)
    with pytest.raises(LedgerError, match="already exists"):
        led.admit("h", "chem", "wf", {"a": 2.5}, user="u", now=NOW)
    with pytest.raises(LedgerError, match="already exists"):
        led.admit("h", "chem", "other-wf", {"a": 2.0}, user="u", now=NOW)
    charge(led, "c", "h", "a", 100)
    with pytest.raises(LedgerError, match="already exists"):
        charge(led, "c", "h", "a", 200)
    assert bal(led) == (10.0, 100 / 3600, 2.0 - 100 / 3600, 8.0)


# ---- re-pricing a hold (a job changed in Slurm) ---------------------------------------------

def test_reprice_grows_shrinks_and_moves_a_hold(led):
    led.ensure_account("bio", 5.0)
    led.admit("h", "chem", "sbatch", {"a": 3.0}, user="u", now=NOW)
    h = led.reprice("h", "m1", "chem", 1.5)
    assert (h.amount_h, h.remaining_h, h.shares) == (4.5, 4.5, {"a": 3.0, "mod:m1": 1.5})
    assert bal(led) == (10.0, 0.0, 4.5, 5.5)
    # moved to bio, 2 GPU-h cheaper: the release comes out of the shares in step order
    h = led.reprice("h", "m2", "bio", -2.0)
    assert (h.account, h.amount_h, h.remaining_h, h.shares) == ("bio", 2.5, 2.5,
                                                                {"a": 1.0, "mod:m1": 1.5, "mod:m2": 0.0})
    assert bal(led) == (10.0, 0.0, 0.0, 10.0) and bal(led, "bio") == (5.0, 0.0, 2.5, 2.5)
    charge(led, "c", "h", "a", 1800)  # charged to the account the hold is in now
    assert bal(led, "bio") == (5.0, 0.5, 2.0, 2.5) and led.charges("h")[0]["account"] == "bio"
    h = led.reprice("h", "m3", "bio", -10.0)  # never below nothing
    assert (h.amount_h, h.remaining_h) == (0.0, 0.0) and bal(led, "bio") == (5.0, 0.5, 0.0, 4.5)


def test_reprice_replayed_changes_nothing_and_admit_replays_still_match(led):
    led.ensure_account("bio", 5.0)
    led.admit("h", "chem", "sbatch", {"job": 2.0}, user="u", now=NOW)
    first = led.reprice("h", "m1", "bio", 1.0, actor="uid 0", override=True, reason="job 1: past the budget")
    audit = led.audit()
    for _ in range(2):
        assert led.reprice("h", "m1", "bio", 1.0, actor="uid 0", override=True, reason="again") == first
        assert led.reprice("h", "m1", "chem", -5.0) == first  # the id decides: a replay whatever it says
    assert led.audit() == audit and bal(led, "bio") == (5.0, 0.0, 3.0, 2.0)
    # the admission replayed (its journal line read again) is the same hold, moved and re-priced
    assert led.admit("h", "chem", "sbatch", {"job": 2.0}, user="u", now=NOW, enforce=False) == first
    with pytest.raises(LedgerError, match="already exists"):
        led.admit("h", "chem", "sbatch", {"job": 2.5}, user="u", now=NOW)


def test_reprice_override_is_audited_with_the_budget_unchanged(led):
    led.admit("h", "chem", "sbatch", {"job": 9.0}, user="u", now=NOW)
    led.reprice("h", "m1", "chem", 4.0, actor="uid 0", override=True, reason="job 12 grown by uid 0: +4 GPU-h")
    led.reprice("h", "m2", "chem", 1.0)  # no override: not audited
    rows = [r for r in led.audit() if r["action"] == "override"]
    assert [(r["actor"], r["account"], r["old_budget_h"], r["new_budget_h"], r["old_period"], r["new_period"],
             r["reason"]) for r in rows] == [("uid 0", "chem", 10.0, 10.0, "monthly", "monthly",
                                              "job 12 grown by uid 0: +4 GPU-h")]
    assert bal(led) == (10.0, 0.0, 14.0, -4.0)


def test_reprice_of_a_closed_hold_records_only_the_change(led):
    led.ensure_account("bio", 5.0)
    led.admit("h", "chem", "sbatch", {"job": 2.0}, user="u", now=NOW)
    charge(led, "c", "h", "job", 3600)
    led.close("h", "done")
    h = led.reprice("h", "m1", "bio", 3.0)
    assert (h.account, h.state, h.amount_h, h.remaining_h, h.shares) == ("chem", "done", 2.0, 0.0,
                                                                          {"job": 0.0, "mod:m1": 0.0})
    assert bal(led) == (10.0, 1.0, 0.0, 9.0) and bal(led, "bio") == (5.0, 0.0, 0.0, 5.0)


def test_reprice_creates_a_missing_hold_once_and_refuses_bad_input(led):
    with pytest.raises(LedgerError, match="hold nope is not in the ledger"):
        led.reprice("nope", "m0", "chem", 1.0)
    create = {"workflow": "sbatch", "shares": {"job": 1.5}, "user": "1000", "run_id": "job-5;-;1", "now": NOW}
    h = led.reprice("job-5", "m1", "chem", 1.5, create=create)
    assert (h.account, h.amount_h, h.shares, h.user, h.run_id) == ("chem", 1.5, {"job": 1.5, "mod:m1": 0.0},
                                                                   "1000", "job-5;-;1")
    assert led.reprice("job-5", "m1", "chem", 1.5, create=create) == h and bal(led) == (10.0, 0.0, 1.5, 8.5)
    with pytest.raises(InputError, match="account ghost has no budget"):
        led.reprice("job-5", "m2", "ghost", 1.0)
    with pytest.raises(InputError, match="must be a number"):
        led.reprice("job-5", "m3", "chem", float("nan"))
    assert led.hold("job-5") == h  # the refused changes wrote nothing


# ---- charges, settling, closing ------------------------------------------------------------

def test_charge_beyond_share_is_charged_in_full_and_share_stops_at_zero(led):
    led.admit("h", "chem", "wf", {"a": 1.0, "b": 2.0}, user="u", now=NOW)
    charge(led, "c", "h", "a", 3 * 3600)  # ran 3x longer than planned
    assert led.hold("h").shares == {"a": 0.0, "b": 2.0}
    assert bal(led) == (10.0, 3.0, 2.0, 5.0)


def test_close_releases_remainder(led):
    led.admit("h", "chem", "wf", {"a": 2.0, "b": 3.0}, user="u", now=NOW)
    charge(led, "c", "h", "b", 3600)
    h = led.close("h", "done")
    assert (h.state, h.remaining_h, h.amount_h, h.shares) == ("done", 0.0, 5.0, {"a": 0.0, "b": 0.0})
    assert bal(led) == (10.0, 1.0, 0.0, 9.0)


def test_failed_workflow_releases_hold_keeps_charges_and_late_charges_land(led):
    led.admit("h", "chem", "wf", {"a": 4.0, "b": 4.0}, user="u", now=NOW)
    charge(led, "c1", "h", "a", 2 * 3600)
    led.close("h", "failed")
    assert bal(led) == (10.0, 2.0, 0.0, 8.0)
    # an attempt that finished after the close still costs what it used; holds do not move
    charge(led, "late", "h", "b", 1800)
    h = led.hold("h")
    assert (h.state, h.remaining_h) == ("failed", 0.0)
    assert bal(led) == (10.0, 2.5, 0.0, 7.5)
    assert sorted(c["charge_key"] for c in led.charges("h")) == ["c1", "late"]
    assert led.charges("h")[0]["user"] == "u" and led.charges("h")[0]["workflow"] == "wf"


def test_usage_groups_charges(led):
    led.set_budget("phys", 100.0, actor="t")
    led.admit("h1", "chem", "wf1", {"a": 5.0}, user="alice", now=NOW)
    led.admit("h2", "phys", "wf2", {"a": 5.0, "b": 5.0}, user="bob", now=NOW)
    charge(led, "c1", "h1", "a", 3600, weight=2.0)
    charge(led, "c2", "h2", "a", 3600)
    charge(led, "c3", "h2", "b", 1800, ended=LAST_MONTH)
    by_acct = led.usage("account")
    no_tokens = {"prompt_tokens": None, "completion_tokens": None, "tokens": None, "gpu_s_per_1k_tokens": None}
    assert by_acct == [{"key": "chem", "gpu_seconds": 3600.0, "charged_h": 2.0, "charges": 1, **no_tokens},
                       {"key": "phys", "gpu_seconds": 5400.0, "charged_h": 1.5, "charges": 2, **no_tokens}]
    assert [(r["key"], r["charges"]) for r in led.usage("step")] == [("a", 2), ("b", 1)]
    assert [r["key"] for r in led.usage("user")] == ["alice", "bob"]
    assert led.usage("gpu_type")[0]["charged_h"] == 3.5
    assert [r["key"] for r in led.usage("workflow", since=THIS_MONTH)] == ["wf1", "wf2"]
    assert led.usage("account", since=THIS_MONTH)[1]["charged_h"] == 1.0
    assert led.usage("account", until=THIS_MONTH) == [
        {"key": "phys", "gpu_seconds": 1800.0, "charged_h": 0.5, "charges": 1, **no_tokens}]
    # only some accounts' charges (what `slurmgov api` shows a user of those accounts)
    assert [(r["key"], r["charges"]) for r in led.usage("user", accounts=["phys"])] == [("bob", 2)]
    assert [r["key"] for r in led.usage("account", accounts=["chem", "nope"])] == ["chem"]
    assert led.usage("workflow", accounts=[]) == []
    assert [r["key"] for r in led.usage("step", since=THIS_MONTH, accounts=["phys"])] == ["a"]


# ---- periods -------------------------------------------------------------------------------

def test_period_keys():
    t = datetime(2026, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp()
    key, start, end = period_of("monthly", t)
    assert key == "2026-12" and start <= t < end == datetime(2027, 1, 1, tzinfo=timezone.utc).timestamp()
    assert period_of("quarterly", t)[0] == "2026-Q4"
    assert period_of("quarterly", datetime(2026, 4, 1, tzinfo=timezone.utc).timestamp())[:2] == (
        "2026-Q2", datetime(2026, 4, 1, tzinfo=timezone.utc).timestamp())
    assert period_of("none", t)[0] == "all"


def test_charges_count_in_the_period_of_their_end_time(led):
    led.admit("h", "chem", "wf", {"a": 5.0}, user="u", now=LAST_MONTH - 3600)
    charge(led, "old", "h", "a", 3600, ended=LAST_MONTH)
    charge(led, "new", "h", "a", 1800, ended=THIS_MONTH)
    assert led.balance("chem", now=LAST_MONTH).charged_h == 1.0
    b = led.balance("chem", now=NOW)
    assert (b.period, b.charged_h, b.held_h, b.available_h) == ("2026-05", 0.5, 3.5, 6.0)
    # holds count against the current period whenever they were placed
    assert led.balance("chem", now=LAST_MONTH).held_h == 3.5
    # a naive datetime is UTC
    assert led.balance("chem", now=datetime(2026, 5, 2)).period == "2026-05"
    led.set_budget("chem", 10.0, "quarterly", actor="t")
    b = led.balance("chem", now=NOW)
    assert (b.period, b.charged_h) == ("2026-Q2", 1.5)
    led.set_budget("chem", 10.0, "none", actor="t")
    assert led.balance("chem", now=NOW).period == "all"


# ---- budgets and audit ---------------------------------------------------------------------

def test_ensure_account_does_not_overwrite_and_audit_is_append_only(led, db):
    led.ensure_account("chem", 999.0)
    assert led.balance("chem").budget_h == 10.0
    led.set_budget("chem", 20.0, "quarterly", actor="alice", reason="grant")
    led.set_budget("chem", 15.0, actor="bob", reason="cut")  # no period given: it stays quarterly
    assert led.balance("chem").budget_h == 15.0
    led.ensure_account("chem", 1.0)
    a = led.audit()
    assert [(r["actor"], r["action"], r["old_budget_h"], r["new_budget_h"], r["new_period"], r["reason"])
            for r in a] == [("site-config", "seed", None, 10.0, "monthly", "seeded from site config"),
                            ("alice", "set", 10.0, 20.0, "quarterly", "grant"),
                            ("bob", "set", 20.0, 15.0, "quarterly", "cut")]
    assert all(r["at"].endswith("+00:00") for r in a)
    with pytest.raises(InputError, match="actor"):
        led.set_budget("chem", 1.0)
    extra = () if db.startswith("sqlite:") else ("TRUNCATE audit", "DELETE FROM audit WHERE seq < 0")
    with raw(db) as (conn, error):
        for stmt in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit", *extra):
            with pytest.raises(error, match="append-only"):
                conn.execute(stmt)
    assert len(led.audit()) == 3


def test_persists_across_reopen(led, db):
    led.admit("h", "chem", "wf", {"a": 3.0}, user="u", now=NOW)
    charge(led, "c", "h", "a", 3600)
    before = led.balances(now=NOW)
    led.disconnect()
    again = Ledger.open(db)
    assert again.balances(now=NOW) == before
    assert again.admit("h", "chem", "wf", {"a": 3.0}, user="u", now=NOW).remaining_h == 2.0
    assert again.balances(now=NOW) == before
    again.disconnect()


def test_bad_urls(tmp_path):
    for bad in ("sqlite://relative.db", "/abs/path.db", "ledger.db", "sqlite:///", "", "postgresql:db"):
        with pytest.raises(LedgerError) as e:
            Ledger.open(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(LedgerError) as e:  # (PostgreSQL is supported now: here no host "db" answers)
        Ledger.open("postgresql://admin:s3cret@db/ledger?connect_timeout=3")
    assert "s3cret" not in str(e.value) and "\n" not in str(e.value)
    try:
        import psycopg  # noqa: F401
    except ImportError:  # then the error says what to install
        assert "pip install 'slurmgov[postgres]'" in str(e.value)
    else:
        assert str(e.value).startswith("ledger postgresql://admin@db/ledger?connect_timeout=3: cannot connect: ")
    junk = tmp_path / "junk.sqlite"  # SQLite only: a file that is not a database
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(LedgerError, match="junk.sqlite"):
        Ledger.open(url(junk))


def test_newer_schema_is_refused(db, led):
    with raw(db) as (conn, _):
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
        conn.commit()
    with pytest.raises(LedgerError, match="schema version 99, newer"):
        Ledger.open(db)


# ---- concurrency ---------------------------------------------------------------------------

def _admit_one(u: str, key: str, barrier) -> bool:
    led = Ledger.open(u)
    try:
        barrier.wait()
        led.admit(key, "chem", "wf", {"s": 1.0}, user="u")
        return True
    except BudgetRefused:
        return False
    finally:
        led.disconnect()


def test_threads_each_with_own_ledger_never_overspend(led, db):
    barrier, results, errors = threading.Barrier(16), [], []

    def work(i):
        try:
            results.append(_admit_one(db, f"t{i}", barrier))
        except Exception as e:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [False] * 6 + [True] * 10
    b = led.balance("chem")
    assert (b.held_h, b.available_h) == (10.0, 0.0)


def _proc_admit(args) -> list[bool]:
    u, proc, barrier = args
    led = Ledger.open(u)
    barrier.wait()
    out = []
    for i in range(4):
        try:
            led.admit(f"p{proc}-{i}", "chem", "wf", {"s": 1.0}, user="u")
            out.append(True)
        except BudgetRefused:
            out.append(False)
    led.disconnect()
    return out


def test_processes_never_overspend(led, db):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as m:
        barrier = m.Barrier(4)
        with ctx.Pool(4) as pool:
            results = pool.map(_proc_admit, [(db, p, barrier) for p in range(4)])
    assert sum(map(sum, results)) == 10
    assert led.balance("chem").held_h == 10.0


def _race(n: int, fn) -> list:
    """Run fn(i) in n threads released together; each result, or the exception it raised."""
    barrier, out = threading.Barrier(n), [None] * n

    def work(i):
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as e:
            out[i] = e

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_concurrent_charges_on_one_share_lose_no_update(led, db):
    led.admit("h", "chem", "wf", {"a": 10.0}, user="u", now=NOW)
    ledgers = [Ledger.open(db) for _ in range(8)]  # opened first, so the charges start together
    out = _race(8, lambda i: charge(ledgers[i], f"c{i}", "h", "a", 600))  # 1/6 GPU-h each
    for mine in ledgers:
        mine.disconnect()
    assert not [r for r in out if isinstance(r, Exception)]
    assert round(led.hold("h").remaining_h * MS) == 10 * MS - 8 * 600_000
    assert bal(led)[1:] == (8 * 600 / 3600, led.hold("h").remaining_h, 10.0 - 8 * 600 / 3600
                            - led.hold("h").remaining_h)


def test_charges_racing_a_hold_moving_between_accounts_lose_no_update(led, db):
    led.ensure_account("bio", 10.0)
    led.admit("h", "chem", "wf", {"a": 10.0}, user="u", now=NOW)
    ledgers = [Ledger.open(db) for _ in range(8)]

    def work(i):
        if i % 2:  # half the threads move the hold (each to the other account), half charge it
            return ledgers[i].reprice("h", f"m{i}", ("chem", "bio")[i % 4 == 1], 0.25)
        return charge(ledgers[i], f"c{i}", "h", "a", 600)

    out = _race(8, work)
    for mine in ledgers:
        mine.disconnect()
    assert not [r for r in out if isinstance(r, Exception)]
    h = led.hold("h")
    assert round(h.shares["a"] * MS) == 10 * MS - 4 * 600_000 and h.remaining_h == pytest.approx(h.shares["a"] + 1.0)
    held = {a: bal(led, a)[2] for a in ("chem", "bio")}
    assert held[h.account] == pytest.approx(h.remaining_h) and sum(held.values()) == pytest.approx(h.remaining_h)
    assert sum(bal(led, a)[1] for a in ("chem", "bio")) == pytest.approx(4 * 600 / 3600)


def test_one_new_hold_key_raced_from_two_accounts(led, db):
    led.ensure_account("phys", 10.0)
    ledgers = [Ledger.open(db) for _ in range(8)]
    out = _race(8, lambda i: ledgers[i].admit("k", ("chem", "phys")[i % 2], "wf", {"a": 1.0}, user="u", now=NOW))
    for mine in ledgers:
        mine.disconnect()
    holds = [r for r in out if not isinstance(r, Exception)]
    errors = [r for r in out if isinstance(r, Exception)]
    assert holds and len({h.account for h in holds}) == 1  # one account won; its replays agree
    assert len(holds) == 4 and len(errors) == 4
    assert all(isinstance(e, LedgerError) and "already exists" in str(e) for e in errors)
    assert sorted(b.held_h for b in led.balances(now=NOW)) == [0.0, 1.0]


def test_concurrent_first_opens_create_one_schema(backend, tmp_path):
    new = fresh(backend, tmp_path)

    def one(i):
        with Ledger.open(new) as mine:
            mine.ensure_account("chem", 5.0)

    assert _race(6, one) == [None] * 6
    with Ledger.open(new) as led:
        assert len(led.audit()) == 1 and led.balance("chem").budget_h == 5.0


def test_large_amounts_stay_exact(led):
    led.set_budget("big", 2_000_000.0, actor="t")  # 7.2e12 ms: past 32-bit integers
    led.admit("h", "big", "wf", {"a": 1_234_567.25, "b": 0.001}, user="u", now=NOW)
    charge(led, "c", "h", "a", 3_600_000_000.5)
    b = led.balance("big", now=NOW)
    assert (b.budget_h, b.charged_h) == (2_000_000.0, 1_000_000.0 + 0.5 / 3600)
    assert round(b.held_h * MS) == round(234_567.25 * MS) - 500 + 3600
    assert led.usage("account")[0]["charged_h"] == b.charged_h


# ---- PostgreSQL: URLs, errors, driver -----------------------------------------------------

def test_postgres_without_psycopg_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    for u in ("postgresql://admin:s3cret@db/ledger", "postgres:///ledger?host=/run/postgresql"):
        with pytest.raises(LedgerError) as e:
            Ledger.open(u)
        msg = str(e.value)
        assert "pip install 'slurmgov[postgres]'" in msg and "s3cret" not in msg and "\n" not in msg


def test_postgres_url_forms_and_errors_never_echo_the_password(pg_url):
    server = pg_harness.current()
    # postgres:// is the same as postgresql://; a unix-socket URL; a password in the query string
    for u in (pg_harness.fresh_url(pg_url.replace("postgresql://", "postgres://", 1)),
              pg_harness.fresh_url(socket=True),
              pg_harness.fresh_url(f"postgresql://{pg_harness.ROLE}@127.0.0.1:{server.port}/"
                                   f"{pg_harness.DBNAME}?password={pg_harness.PASSWORD}")):
        with Ledger.open(u) as led:
            led.ensure_account("chem", 1.0)
            assert led.balance("chem").budget_h == 1.0
            assert pg_harness.PASSWORD not in led._where
    wrong = f"postgresql://{pg_harness.ROLE}:not-the-pw-42@127.0.0.1:{server.port}/{pg_harness.DBNAME}"
    for u, why in ((wrong, "password authentication failed"),
                   (wrong.replace(":not-the-pw-42@", "@") + "?password=not-the-pw-42",
                    "password authentication failed"),
                   (wrong.replace(f":{server.port}/", f":{pg_harness._free_port()}/"), "cannot connect"),
                   (pg_url.replace(f"/{pg_harness.DBNAME}", "/no_such_db"), "no_such_db")):
        with pytest.raises(LedgerError) as e:
            Ledger.open(u)
        msg = str(e.value)
        assert why in msg and "\n" not in msg
        assert "not-the-pw-42" not in msg and pg_harness.PASSWORD not in msg
        assert msg.startswith(f"ledger postgresql://{pg_harness.ROLE}@127.0.0.1:")
    with pytest.raises(LedgerError) as e:
        Ledger.open("postgresql://u:s3cret@127.0.0.1:1/db?sslmode=bogus")
    assert "s3cret" not in str(e.value) and "\n" not in str(e.value)


def test_postgres_schema_types_and_audit_guard(pg_url):
    u = pg_harness.fresh_url()
    with Ledger.open(u) as led:
        led.ensure_account("chem", 1.0)
        with raw(u) as (conn, error):
            types = dict(conn.execute(
                "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND column_name LIKE '%\\_ms'").fetchall())
            assert set(types.values()) == {"bigint"} and "charges.amount_ms" in types
            with pytest.raises(error, match="append-only"):
                conn.execute("DELETE FROM audit")
        # a refusal rolls back the Ledger's open transaction and leaves its connection usable
        with pytest.raises(BudgetRefused):
            led.admit("h", "chem", "wf", {"a": 2.0}, user="u", now=NOW)
        assert led.admit("h", "chem", "wf", {"a": 1.0}, user="u", now=NOW).state == "open"


# ---- property: the ledger agrees with a plain model under any sequence ---------------------

STEPS = ("a", "b")
hold_keys = st.sampled_from(["h0", "h1", "h2", "h3"])
ops = st.one_of(
    st.tuples(st.just("admit"), hold_keys, st.fixed_dictionaries(
        {}, optional={s: st.integers(0, 12).map(lambda q: q * 0.25) for s in STEPS})),
    st.tuples(st.just("charge"), hold_keys, st.sampled_from(STEPS + ("x",)), st.integers(0, 5),
              st.integers(0, 3 * 3600), st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.booleans()),
    st.tuples(st.just("settle"), hold_keys, st.sampled_from(STEPS)),
    st.tuples(st.just("close"), hold_keys, st.sampled_from(["done", "failed", "cancelled"])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, max_size=25))
def test_ledger_matches_model(backend, seq):
    budget = 6 * MS
    holds: dict[str, dict] = {}  # key -> {"state", "req", "shares": {step: [amount, remaining]}}
    charges: dict[str, tuple] = {}  # key -> (args, ms, counts this period)
    with tempfile.TemporaryDirectory() as d:
        led = Ledger.open(fresh(backend, Path(d), socket=True))
        led.ensure_account("chem", 6.0)
        for op in seq:
            kind, key = op[0], op[1]
            h = holds.get(key)
            if kind == "admit":
                shares = h["req"] if h else op[2]  # a known key replays its first request
                need = sum(round(v * MS) for v in shares.values())
                if h is None and need > budget - charged(charges) - held(holds):
                    with pytest.raises(BudgetRefused):
                        led.admit(key, "chem", "wf", shares, user="u", now=NOW)
                    continue
                led.admit(key, "chem", "wf", shares, user="u", now=NOW)
                if h is None:
                    holds[key] = {"state": "open", "req": shares, "shares": {s: [round(v * MS)] * 2 for s, v in shares.items()}}
            elif kind == "charge":
                ck = f"c{op[3]}"
                args = charges[ck][0] if ck in charges else (key, op[2], op[4], op[5], op[6])
                hk, step, secs, weight, this = args
                ended = THIS_MONTH + 10 if this else LAST_MONTH
                if hk not in holds:
                    with pytest.raises(LedgerError):
                        charge(led, ck, hk, step, secs, weight=weight, ended=ended)
                    continue
                charge(led, ck, hk, step, secs, weight=weight, ended=ended)
                if ck not in charges:
                    ms = round(secs * weight * 1000)
                    charges[ck] = (args, ms, this)
                    sh = holds[hk]["shares"].get(step)
                    if holds[hk]["state"] == "open" and sh:
                        sh[1] = max(0, sh[1] - ms)
            elif kind == "settle":
                if h is None or op[2] not in h["shares"]:
                    with pytest.raises(LedgerError):
                        led.settle_step(key, op[2])
                    continue
                led.settle_step(key, op[2])
                h["shares"][op[2]][1] = 0
            else:
                if h is None:
                    with pytest.raises(LedgerError):
                        led.close(key, op[2])
                    continue
                assert led.close(key, op[2]).state == (op[2] if h["state"] == "open" else h["state"])
                if h["state"] == "open":
                    h["state"] = op[2]
                    for sh in h["shares"].values():
                        sh[1] = 0
            b = led.balance("chem", now=NOW)
            got = [round(x * MS) for x in (b.budget_h, b.charged_h, b.held_h, b.available_h)]
            assert got == [budget, charged(charges), held(holds), budget - charged(charges) - held(holds)]
            assert got[1] + got[2] + got[3] == got[0] and got[2] >= 0
            for k, m in holds.items():
                hk = led.hold(k)
                assert hk.state == m["state"]
                want = {s: v[1] for s, v in m["shares"].items()}
                assert {s: round(v * MS) for s, v in hk.shares.items()} == want
        led.disconnect()


def charged(charges) -> int:
    return sum(ms for _, ms, this in charges.values() if this)


def held(holds) -> int:
    return sum(sh[1] for h in holds.values() if h["state"] == "open" for sh in h["shares"].values())


def test_open_holds_by_prefix_treats_wildcards_literally(led):
    led.admit("slurm:a_1", "chem", "wf", {"job": 1.0}, now=NOW)
    led.admit("slurm:a%2", "chem", "wf", {"job": 1.0}, now=NOW)
    led.admit("slurmXa_3", "chem", "wf", {"job": 1.0}, now=NOW)
    led.admit("run:x", "chem", "wf", {"a": 1.0}, now=NOW)
    led.close("slurm:a%2", "done")
    assert [k for k, _ in led.open_holds("slurm:")] == ["slurm:a_1"]
    assert [k for k, _ in led.open_holds("slurm:a_")] == ["slurm:a_1"]
    assert len(led.open_holds()) == 3


def test_transfer_moves_only_what_is_available_atomically(led):
    led.ensure_account("bio", 2.0)
    led.admit("h", "chem", "wf", {"a": 7.0}, now=NOW)  # chem: 10 budget, 7 held, 3 available
    with pytest.raises(InputError, match="account chem: 3.0 GPU-h available, cannot transfer 4.0"):
        led.transfer("chem", "bio", 4.0, actor="admin", now=NOW)
    assert bal(led, "bio")[0] == 2.0  # a refused transfer moves nothing
    led.transfer("chem", "bio", 3.0, actor="admin", reason="shared project", now=NOW)
    assert bal(led) == (7.0, 0.0, 7.0, 0.0) and bal(led, "bio")[0] == 5.0
    actions = [(r["account"], r["action"], r["new_budget_h"]) for r in led.audit()][-2:]
    assert actions == [("chem", "transfer to bio", 7.0), ("bio", "transfer from chem", 5.0)]


def _attr_rows(run_id, used: dict, idle: float, account="chem"):
    base = dict(run_id=run_id, account=account, user="ana", workflow="wf", alloc="a1", job_ids="17",
                gpu_type="h100", weight=2.0, ended=THIS_MONTH + 60)
    rows = [dict(base, attr_key=f"{run_id}:a1:{s}", step=s, gpu_seconds=g) for s, g in used.items()]
    return rows + [dict(base, attr_key=f"{run_id}:a1:(idle)", step=None, gpu_seconds=idle)]


def test_attributions_are_recorded_once_and_summed_as_waste(led):
    rows = _attr_rows("r1", {"s1": 1800.0, "s2": 900.0}, 900.0)
    assert led.attribute(rows) == 3
    assert led.attribute(rows) == 0  # a replay records nothing
    got = led.attributions("r1")
    assert {r["step"]: r["cost_h"] for r in got} == {"s1": 1.0, "s2": 0.5, None: 0.5}  # weight 2
    led.attribute(_attr_rows("r2", {"s1": 3600.0}, 0.0))
    (w,) = led.waste(by="workflow")
    assert (w["key"], w["runs"], w["used_gpu_seconds"], w["idle_gpu_seconds"]) == ("wf", 2, 6300.0, 900.0)
    assert w["idle_share"] == pytest.approx(900 / 7200) and w["idle_h"] == pytest.approx(0.5)
    assert led.balance("chem").charged_h == 0  # an attribution splits a job's charge; it is not one
    with pytest.raises(InputError, match="waste by 'step'"):
        led.waste(by="step")


def test_a_version_1_ledger_gains_attributions_on_open(db):
    led = Ledger.open(db)
    led.disconnect()
    with raw(db) as (conn, _):
        conn.execute("DROP TABLE attributions")
        conn.execute("UPDATE schema_version SET version = 1")  # as a version-1 slurmgov left it
        if db.startswith("sqlite"):
            conn.commit()
    led = Ledger.open(db)  # migrates: version 2 adds the table, versions 3 and 4 find their columns there
    led.ensure_account("chem", 1.0)
    assert led.attribute(_attr_rows("r1", {"s1": 10.0}, 5.0)) == 2
    with raw(db) as (conn, _):
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == ledger_schema.SCHEMA_VERSION
    led.disconnect()


# ---- bulk imports and reconcile: the same ledger as one call at a time, on both backends ------

def _state(led, keys):
    holds = [led.hold(k) for k in keys]
    charges = [{k: v for k, v in c.items() if k != "recorded_at"} for c in led.charges()]
    return holds, charges, led.balances(NOW), led.open_holds()


BULK_HOLDS = [  # (key, account, workflow, shares, user, run_id, created)
    ("h1", "chem", "wf", {"a": 1.0, "b": 0.5}, "ann", "r1", NOW),
    ("h2", "chem", "wf", {"a": 0.0000001}, None, None, NOW),  # 0.36 ms: rounds to 0
    ("h3", "chem", "wf2", {"x": 2.0}, "bob", "r3", NOW),
    ("h1", "chem", "wf", {"a": 1.0, "b": 0.5}, "ann", "r1", NOW),  # a replay inside the batch
]
BULK_CHARGES = [  # charge()'s arguments
    dict(charge_key="c1", hold_key="h1", step="a", attempt=1, gpu_seconds=1800.0005, weight=1.0, gpu_type="h100",
         started=THIS_MONTH, ended=THIS_MONTH + 60, status="completed"),  # 1800000.5 ms: rounds up once
    dict(charge_key="c2", hold_key="h1", step="a", attempt=2, gpu_seconds=7200, weight=1.0, gpu_type="h100",
         started=None, ended=THIS_MONTH + 70, status="failed", user="zed", workflow="other"),  # past the share
    dict(charge_key="c3", hold_key="h3", step="x", attempt=1, gpu_seconds=3600, weight=0.5, gpu_type="l4",
         started=THIS_MONTH, ended=LAST_MONTH, status="completed"),  # last month: not in this period's balance
    dict(charge_key="c4", hold_key="h3", step="nostep", attempt=1, gpu_seconds=60, weight=1.0, gpu_type=None,
         started=THIS_MONTH, ended=THIS_MONTH + 80, status="completed"),  # no share for this step
]
BULK_CLOSES = [("h3", "done"), ("h3", "failed")]  # the first close wins
LATE = [dict(charge_key="c5", hold_key="h3", step="x", attempt=2, gpu_seconds=360, weight=1.0, gpu_type=None,
             started=THIS_MONTH, ended=THIS_MONTH + 90, status="completed")]  # after the close: holds stay put


def test_bulk_imports_match_one_call_at_a_time(backend, tmp_path):
    one, bulk = Ledger.open(fresh(backend, tmp_path / "one")), Ledger.open(fresh(backend, tmp_path / "bulk"))
    for led in (one, bulk):
        led.ensure_account("chem", 10.0)
    for key, account, workflow, shares, user, run_id, ts in BULK_HOLDS:
        one.admit(key, account, workflow, shares, user=user, run_id=run_id, now=ts, enforce=False)
    for c in BULK_CHARGES:
        one.charge(**c)
    for key, state in BULK_CLOSES:
        one.close(key, state)
    for c in LATE:
        one.charge(**c)
    assert bulk.import_holds(BULK_HOLDS, batch=2) == 3
    assert bulk.import_charges(BULK_CHARGES, batch=3) == 4
    assert bulk.close_holds(BULK_CLOSES, batch=1) == 1
    assert bulk.import_charges(LATE) == 1
    keys = ["h1", "h2", "h3"]
    assert _state(bulk, keys) == _state(one, keys)
    assert round(bulk.charges("h1")[0]["charged_h"] * MS) == 1800001 and bulk.hold("h1").shares["a"] == 0
    # replays add nothing and change nothing
    before = _state(bulk, keys)
    assert bulk.import_holds(BULK_HOLDS) == 0 and bulk.import_charges(BULK_CHARGES + LATE) == 0
    assert bulk.close_holds([("h1", "cancelled"), ("h3", "cancelled")]) == 1  # only h1 was still open
    one.close("h1", "cancelled")
    assert _state(bulk, keys) == _state(one, keys) and before[1] == _state(bulk, keys)[1]
    one.disconnect()
    bulk.disconnect()


def test_bulk_imports_refuse_what_one_call_refuses(led):
    led.import_holds([("h", "chem", "wf", {"a": 1.0}, None, None, NOW)])
    led.import_charges([dict(BULK_CHARGES[0], hold_key="h")])
    with pytest.raises(LedgerError, match="hold h already exists for a different account"):
        led.import_holds([("h", "chem", "wf", {"a": 2.0}, None, None, NOW)])
    with pytest.raises(InputError, match="account nobody has no budget"):
        led.import_holds([("h9", "nobody", "wf", {"a": 1.0}, None, None, NOW)])
    with pytest.raises(LedgerError, match="charge c1 already exists with a different hold, step, attempt or amount"):
        led.import_charges([dict(BULK_CHARGES[0], hold_key="h", gpu_seconds=1)])
    with pytest.raises(LedgerError, match="hold nohold is not in the ledger"):
        led.import_charges([dict(BULK_CHARGES[1], hold_key="nohold")])
    with pytest.raises(InputError, match="charge c2: gpu_seconds must be a number >= 0"):
        led.import_charges([dict(BULK_CHARGES[1], hold_key="h", gpu_seconds=-1)])
    with pytest.raises(InputError, match="hold state 'gone'"):
        led.close_holds([("h", "gone")])
    assert [h for h, _ in led.open_holds()] == ["h"] and len(led.charges()) == 1  # a refused batch wrote nothing


@pytest.mark.parametrize("sieve", [True, False], ids=["sieved", "each-row-checked"])
@pytest.mark.parametrize("chunk", [2, 1000])
def test_bulk_reconcile_matches_one_job_at_a_time_on_each_backend(backend, tmp_path, root, monkeypatch, chunk, sieve):
    import time as _time

    from test_governor import (
        build_mixed,
        ledger_state,
        mixed_keys,
        reconcile_one_by_one,
    )

    from slurmgov.site import model as site_mod
    from slurmgov.slurm import governor
    site = site_mod.load(root / "site_configs" / "demo-cluster.yaml")
    one, bulk = Ledger.open(fresh(backend, tmp_path / "one")), Ledger.open(fresh(backend, tmp_path / "bulk"))
    now = _time.time()
    for led in (one, bulk):
        led.set_budget("physics", 10.0, "quarterly", actor="test")
        jobs, live = build_mixed(led, site, now)
    monkeypatch.setattr(governor, "RECONCILE_CHUNK", chunk)
    if not sieve:  # the ledger's charges are never read for the sieve: every final row is checked exactly
        monkeypatch.setattr(governor, "SIEVE_READ_RATIO", 0)
    drift = governor.reconcile(bulk, site, jobs, live, now=now)
    assert drift == reconcile_one_by_one(one, site, jobs, live, now) and len(drift) == 17
    tokens = mixed_keys(jobs)
    assert ledger_state(bulk, tokens) == ledger_state(one, tokens)
    before = ledger_state(bulk, tokens)
    assert governor.reconcile(bulk, site, jobs, live, now=now) == [d for d in drift if "ledger charged" in d
                                                                   or "left unbilled" in d]
    assert ledger_state(bulk, tokens) == before
    one.disconnect()
    bulk.disconnect()


@pytest.mark.parametrize("page", [1, 2, None], ids=["pages-of-1", "pages-of-2", "one-page"])
def test_reconcile_checks_exactly_only_the_rows_the_sieve_cannot_vouch_for(backend, tmp_path, root, monkeypatch,
                                                                          page):
    """A charge on the job's hold within half a GPU-second of what sacct says is vouched for by its
    signature, read with every charge of the jobs' key range (a million such rows cost set lookups,
    not a database check each); every other final row is checked exactly, with the ±1 GPU-s
    tolerance, so the drift is what checking every row gives."""
    import time as _time

    from slurmgov.ledger import store
    from slurmgov.ledger.store import Bulk
    from slurmgov.site import model as site_mod
    from slurmgov.slurm import governor
    from slurmgov.slurm.commands import Job
    site = site_mod.load(root / "site_configs" / "demo-cluster.yaml")
    led = Ledger.open(fresh(backend, tmp_path / "sieve"))
    led.set_budget("physics", 10.0, "quarterly", actor="test")
    now = _time.time()
    t = int(now) - 5000
    # e: its settle line was lost; i: a charge of weight 0 may hold any number, even past BIGINT
    recorded = {"a": 120, "b": 120.4, "c": 120.8, "d": 121.5, "f": 120, "h": 120, "i": 1e300}
    for i, tok in enumerate("abcdefghi", 1):
        led.admit(governor.hold_key(tok), "physics", "sbatch", {"job": 1.0}, run_id=f"{tok};-;1", now=t - 100,
                  enforce=False)
        if tok in recorded:
            led.charge(charge_key=governor.charge_key(str(i), t), hold_key=governor.hold_key(tok),
                       gpu_seconds=recorded[tok], step="job", attempt=1, weight=0.0 if tok == "i" else 1.0,
                       gpu_type=None, started=t, ended=t + 60, status="completed")
    jobs = [Job(str(i), "physics", "COMPLETED", tok, 2, t, t + 60, 60) for i, tok in enumerate("abcde", 1)]
    jobs.append(Job("6", "physics", "RUNNING", "f", 2, t, 0, 60))  # its charge agrees, but it runs: nothing to do
    jobs.append(Job("7", "physics", "RUNNING", "g", 2, t, 0, 60))  # no charge, and it runs: nothing to do
    jobs.append(Job("8", "physics", "COMPLETED", "h", 2, t, t + 60, 60))  # agrees: on a later page of signatures
    jobs.append(Job("9", "physics", "COMPLETED", "i", 2, t, t + 60, 60))  # 1e300 GPU-s recorded: checked exactly
    checked: list[str] = []
    exact = Bulk.unmatched_charges

    def spy(self, rows):
        checked.extend(ck for ck, _, _ in rows)
        return exact(self, rows)

    monkeypatch.setattr(Bulk, "unmatched_charges", spy)
    if page:  # the signatures read a page at a time: 7 charges in pages of 1 or 2
        monkeypatch.setattr(store, "_SIGNATURE_PAGE", page)
    drift = governor.reconcile(led, site, jobs, ["f", "g"], now=now)
    assert checked == [f"slurm:job:{i}@{t}" for i in (3, 4, 5, 9)]
    assert [d for d in drift if d.startswith("job ")] == [
        "job 4: ledger charged 121.5 GPU-s, sacct says 120",  # 0.8 apart (job 3) is within the tolerance
        "job 5: no settle line; settled from sacct (120 GPU-s)",
        "job 9: ledger charged 1e+300 GPU-s, sacct says 120"]
    assert [c["gpu_seconds"] for c in led.charges("slurm:e")] == [120]
    led.disconnect()


def test_a_rows_signature_is_its_charges_as_the_ledger_writes_it():
    """The sieve compares texts: the one reconcile builds inline for a sacct row must be the one
    store.signature gives for its charge key, hold key and GPU-seconds, with a token or without."""
    from slurmgov.ledger.store import signature
    from slurmgov.slurm import governor
    from slurmgov.slurm.commands import Job, job_key
    rows = [Job("12_3", "physics", "COMPLETED", "tok", 4, 1000, 1600, 600),
            Job("13", "physics", "FAILED", None, 2, 2000, 2060, 60)]
    assert governor.signatures(rows) == [
        signature(governor.charge_key("12_3", 1000), governor.hold_key("tok"), 2400),
        signature(governor.charge_key("13", 2000), governor.hold_key(job_key("13")), 120)]


def test_concurrent_bulk_reconciles_settle_each_job_once(backend, tmp_path, root):
    import time as _time

    from test_governor import build_mixed, ledger_state, mixed_keys

    from slurmgov.site import model as site_mod
    from slurmgov.slurm import governor
    site = site_mod.load(root / "site_configs" / "demo-cluster.yaml")
    db_url, ref_url = fresh(backend, tmp_path / "race"), fresh(backend, tmp_path / "ref")
    now = _time.time()
    for u in (db_url, ref_url):
        with Ledger.open(u) as led:
            led.set_budget("physics", 10.0, "quarterly", actor="test")
            jobs, live = build_mixed(led, site, now)
    with Ledger.open(ref_url) as ref:
        alone = governor.reconcile(ref, site, jobs, live, now=now)

    def one(_):
        with Ledger.open(db_url) as led:
            return governor.reconcile(led, site, jobs, live, now=now)

    results = _race(4, one)
    assert all(isinstance(r, list) for r in results), results
    settled = [d for r in results for d in r if "no settle line" in d or "no admit line" in d]
    assert sorted(settled) == sorted(d for d in alone if "no settle line" in d or "no admit line" in d)
    tokens = mixed_keys(jobs)
    with Ledger.open(db_url) as led, Ledger.open(ref_url) as ref:
        assert ledger_state(led, tokens) == ledger_state(ref, tokens)


def _months_ahead(n: int, day: int) -> float:
    """A time in the n-th month after this one: rollover needs months the account lived through."""
    end = period_of("monthly", time.time())[2]
    for _ in range(n - 1):
        end = period_of("monthly", end)[2]
    return end + (day - 1) * 86400


JAN, FEB, MAR = _months_ahead(1, 15), _months_ahead(2, 10), _months_ahead(3, 10)


def _spend(led, key, hours, when):
    led.admit(key, "proj", "wf", {"s": hours}, now=when)
    led.charge(f"{key}:c", key, "s", 1, gpu_seconds=hours * 3600, weight=1.0, gpu_type="h100", started=when,
               ended=when, status="ok")
    led.close(key, "done")


def test_rollover_carries_last_periods_unused_budget_up_to_a_cap_without_compounding(db):
    led = Ledger.open(db)
    led.set_budget("proj", 100.0, "monthly", actor="admin", rollover_pct=50)
    _spend(led, "jan", 70.0, JAN)  # January leaves 30 unused
    feb = led.balance("proj", now=FEB)
    assert (feb.carried_h, feb.budget_h, feb.available_h) == (30.0, 130.0, 130.0)  # all 30: under the cap of 50
    _spend(led, "feb", 0.0, FEB)
    mar = led.balance("proj", now=MAR)  # February used nothing: the carry is capped at 50% of 100,
    assert (mar.carried_h, mar.budget_h) == (50.0, 150.0)  # and February's own carry does not roll again
    led.set_budget("proj", 100.0, "monthly", actor="admin", rollover_pct=0)
    assert led.balance("proj", now=MAR).carried_h == 0.0
    with pytest.raises(InputError, match="rollover must be a whole percentage 0..100"):
        led.set_budget("proj", 100.0, "monthly", actor="admin", rollover_pct=150)
    with pytest.raises(InputError, match="rollover needs a monthly or quarterly period"):
        led.set_budget("proj", 100.0, "none", actor="admin", rollover_pct=10)


def test_an_expired_account_has_no_budget_and_admits_nothing(db):
    led = Ledger.open(db)
    led.set_budget("proj", 100.0, "monthly", actor="admin", expires=FEB, reason="project ends")
    _spend(led, "jan", 10.0, JAN)
    assert led.balance("proj", now=JAN).available_h == 90.0
    after = led.balance("proj", now=FEB + 1)
    assert (after.budget_h, after.available_h) == (0.0, 0.0)
    assert after.expires == datetime.fromtimestamp(FEB, timezone.utc).date().isoformat()
    with pytest.raises(BudgetRefused, match="account proj"):
        led.admit("late", "proj", "wf", {"s": 1.0}, now=FEB + 1)
    led.set_budget("proj", 100.0, "monthly", actor="admin", clear_expiry=True, reason="extended")
    assert led.balance("proj", now=FEB + 1).available_h == 100.0
    terms = [a["terms"] for a in led.audit() if a["account"] == "proj"]
    assert terms == [f"expires {datetime.fromtimestamp(FEB, timezone.utc).isoformat()}", ""]  # the terms each change left


def test_a_version_2_ledger_gains_the_terms_columns(db):
    led = Ledger.open(db)
    led.set_budget("proj", 5.0, "monthly", actor="admin")
    led.disconnect()
    with raw(db) as (conn, _):
        for table, column in (("accounts", "rollover_pct"), ("accounts", "expires_at"), ("audit", "terms")):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute("UPDATE schema_version SET version = 2")
        if db.startswith("sqlite"):
            conn.commit()
    led = Ledger.open(db)
    assert led.balance("proj").available_h == 5.0  # nothing recorded was lost
    led.set_budget("proj", 5.0, "monthly", actor="admin", rollover_pct=20)
    assert led.audit()[-1]["terms"] == "rollover 20%" and led.audit()[0]["terms"] is None
    led.disconnect()


# ---- run leases: a hold lives while its run renews it ----------------------------------------

def test_a_lapsed_lease_is_released_by_the_next_command_and_what_was_charged_stays(db):
    led = Ledger.open(db)
    led.set_budget("chem", 10.0, "none", actor="t")
    t0 = time.time()
    led.admit("run:a", "chem", "wf", {"s1": 3.0, "s2": 3.0}, user="ann", run_id="a", now=t0, lease_s=60)
    led.charge("a:s1:1", "run:a", "s1", 1, gpu_seconds=3600, weight=1.0, gpu_type="h100",
               started=t0, ended=t0 + 1, status="ok")
    assert led.renew("run:a", 60, now=t0 + 50)  # renewed: lapses at t0 + 110 now
    assert led.release_lapsed(now=t0 + 100) == []
    assert led.hold("run:a").state == "open"
    assert led.release_lapsed(now=t0 + 111) == ["run:a"]
    bal = led.balance("chem")
    assert (bal.charged_h, bal.held_h, bal.available_h) == (1.0, 0.0, 9.0)  # charge kept, rest released
    assert led.hold("run:a").state == "failed"
    assert not led.renew("run:a", 60)  # a run that comes back learns its hold is gone
    (row,) = [a for a in led.audit() if a["action"] == "release"]
    assert "run:a" in row["reason"] and row["actor"] == "slurmgov"
    assert led.release_lapsed(now=t0 + 500) == []  # released once


def test_admission_releases_the_accounts_lapsed_leases_before_it_counts(db):
    led = Ledger.open(db)
    led.set_budget("chem", 4.0, "none", actor="t")
    t0 = time.time()
    led.admit("run:dead", "chem", "wf", {"s": 4.0}, now=t0 - 300, lease_s=60)  # its run was killed
    led.admit("run:new", "chem", "wf", {"s": 4.0}, now=t0, lease_s=60)  # not refused for dead money
    assert led.hold("run:dead").state == "failed" and led.hold("run:new").state == "open"
    with pytest.raises(BudgetRefused):
        led.admit("run:live", "chem", "wf", {"s": 1.0}, now=t0 + 1, lease_s=60)  # a live lease counts


def test_holds_without_a_lease_never_lapse_and_an_admin_release_is_audited(db):
    led = Ledger.open(db)
    led.set_budget("chem", 10.0, "none", actor="t")
    led.admit("slurm:tok", "chem", "sbatch", {"job": 2.0}, now=time.time() - 10 ** 6)
    assert led.release_lapsed() == []
    (h,) = led.holds_open()
    assert (h["hold_key"], h["held_h"], h["lease_until"]) == ("slurm:tok", 2.0, None)
    with pytest.raises(InputError, match="reason"):
        led.release("slurm:tok", actor="root", reason=" ")
    assert led.release("slurm:tok", actor="root", reason="job lost in a crash").state == "cancelled"
    assert led.balance("chem").held_h == 0 and led.holds_open() == []
    (row,) = [a for a in led.audit() if a["action"] == "release"]
    assert row["actor"] == "root" and "job lost in a crash" in row["reason"]
    led.release("slurm:tok", actor="root", reason="again")  # closed: nothing more, no second row
    assert len([a for a in led.audit() if a["action"] == "release"]) == 1


def test_a_version_3_ledger_gains_leases_on_open(db):
    led = Ledger.open(db)
    led.disconnect()
    with raw(db) as (conn, _):
        conn.execute("DROP INDEX holds_lease")  # version 5's index of open leases: not in a version-3 ledger
        conn.execute("ALTER TABLE holds DROP COLUMN lease_until")
        conn.execute("UPDATE schema_version SET version = 3")
        if db.startswith("sqlite"):
            conn.commit()
    led = Ledger.open(db)
    led.set_budget("chem", 1.0, "none", actor="t")
    led.admit("run:x", "chem", "wf", {"s": 0.5}, lease_s=30)
    assert led.holds_open()[0]["lease_until"] > time.time()


def test_a_version_4_ledger_gains_running_held_totals_from_its_open_holds(db):
    led = Ledger.open(db)
    led.set_budget("chem", 10.0, "none", actor="t")
    led.set_budget("bio", 10.0, "none", actor="t")
    led.admit("a", "chem", "wf", {"s": 2.0, "t": 1.0})
    led.admit("b", "chem", "wf", {"s": 1.5})
    led.admit("c", "bio", "wf", {"s": 4.0})
    led.charge("a1", "a", "s", 1, 3600, 0.5, None, None, NOW, "done")  # draws 0.5 from a's share s
    led.close("c", "done")
    led.disconnect()
    with raw(db) as (conn, _):
        conn.execute("DROP INDEX holds_lease")
        conn.execute("ALTER TABLE accounts DROP COLUMN held_ms")
        conn.execute("UPDATE schema_version SET version = 4")
        if db.startswith("sqlite"):
            conn.commit()
    led = Ledger.open(db)  # migrates: the totals are summed from the open holds, once
    assert led.check_held() == []
    assert led.balance("chem").held_h == 4.0 and led.balance("bio").held_h == 0.0
    led.admit("d", "bio", "wf", {"s": 1.0})
    assert led.balance("bio").held_h == 1.0 and led.check_held() == []
    with raw(db) as (conn, _):
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == ledger_schema.SCHEMA_VERSION
    led.disconnect()


def test_a_version_5_ledger_gains_token_columns_and_keeps_its_charges(db):
    led = Ledger.open(db)
    led.set_budget("chem", 10.0, "none", actor="t")
    led.admit("a", "chem", "wf", {"s": 2.0})
    led.charge("a1", "a", "s", 1, 3600, 0.5, None, None, NOW, "ok")
    led.attribute([dict(attr_key="r:a1:s", run_id="r", account="chem", user="u", workflow="wf", alloc="a1",
                        job_ids="7", step="s", gpu_type=None, gpu_seconds=60.0, weight=1.0, ended=NOW)])
    led.disconnect()
    with raw(db) as (conn, _):
        for table in ("charges", "attributions"):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN prompt_tokens")
            conn.execute(f"ALTER TABLE {table} DROP COLUMN completion_tokens")
        conn.execute("UPDATE schema_version SET version = 5")
        if db.startswith("sqlite"):
            conn.commit()
    led = Ledger.open(db)  # migrates in place: the old charge is kept, with no tokens reported
    (old,) = led.charges("a")
    assert (old["charged_h"], old["prompt_tokens"], old["completion_tokens"]) == (0.5, None, None)
    led.charge("a2", "a", "s", 2, 1800, 1.0, None, None, NOW, "ok", prompt_tokens=1200, completion_tokens=300)
    assert led.balance("chem").charged_h == 1.0 and led.check_held() == []
    (row,) = led.usage(by="step")
    # tokens summed over the charges that reported them; GPU-s per 1,000 tokens from those charges only
    assert (row["charges"], row["prompt_tokens"], row["completion_tokens"], row["tokens"]) == (2, 1200, 300, 1500)
    assert row["gpu_s_per_1k_tokens"] == pytest.approx(1800 / 1.5)
    # a Slurm run's steps report their tokens on its attributions (its charges are its jobs')
    led.attribute([dict(attr_key="r:a1:t", run_id="r", account="chem", user="u", workflow="wf", alloc="a1",
                        job_ids="7", step="t", gpu_type=None, gpu_seconds=30.0, weight=1.0, ended=NOW,
                        prompt_tokens=10, completion_tokens=5)])
    got = {a["step"]: (a["prompt_tokens"], a["completion_tokens"]) for a in led.attributions("r")}
    assert got == {"s": (None, None), "t": (10, 5)}
    with raw(db) as (conn, _):
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == ledger_schema.SCHEMA_VERSION
    led.disconnect()


def test_a_version_6_ledger_gains_the_audit_role_and_keeps_its_trail(db):
    led = Ledger.open(db)
    led.set_budget("chem", 10.0, "none", actor="alice", reason="before roles")
    led.disconnect()
    with raw(db) as (conn, _):  # as version 6 had it: no audit.role, no user_caps (version 8)
        for stmt in ("ALTER TABLE audit DROP COLUMN role", "DROP TABLE user_charged", "DROP TABLE account_charged",
                     "DROP INDEX holds_user_open",
                     "DROP TABLE user_caps", "UPDATE schema_version SET version = 6"):
            conn.execute(stmt)
        if db.startswith("sqlite"):
            conn.commit()
    led = Ledger.open(db)  # migrates in place: the old row is kept, with no role
    led.grant("chem", 2.0, actor="daemon", reason="deadline", role="operator")
    led.admit("h", "chem", "wf", {"s": 1.0})
    led.release("h", actor="daemon", reason="run gone", role="operator")
    led.set_user_cap("chem", "bob", 1.0, actor="nobody", role="manager")
    assert [(a["actor"], a["action"], a["role"]) for a in led.audit()] == [
        ("alice", "set", None), ("daemon", "grant", "operator"), ("daemon", "release", "operator"),
        ("nobody", "user-cap", "manager")]
    with raw(db) as (conn, _):
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == ledger_schema.SCHEMA_VERSION == 9
    led.disconnect()


def test_usage_waste_and_audit_of_some_accounts_only(db):
    led = Ledger.open(db)
    for acct in ("chem", "bio", "phys"):
        led.set_budget(acct, 10.0, "none", actor="t", role="admin")
        led.admit(f"h-{acct}", acct, "wf", {"s": 2.0}, user=f"u-{acct}")
        led.charge(f"c-{acct}", f"h-{acct}", "s", 1, 3600, 1.0, None, None, NOW, "ok")
        led.attribute([dict(attr_key=f"r:{acct}", run_id=f"r-{acct}", account=acct, user=f"u-{acct}", workflow="wf",
                            alloc="a", job_ids="7", step=None, gpu_type=None, gpu_seconds=60.0, weight=1.0,
                            ended=NOW)])
    assert [r["key"] for r in led.usage(by="user", accounts={"bio", "phys"})] == ["u-bio", "u-phys"]
    assert [r["key"] for r in led.usage(by="account")] == ["bio", "chem", "phys"]
    assert led.usage(by="account", accounts=set()) == []
    assert [r["key"] for r in led.waste(by="user", accounts={"chem"})] == ["u-chem"]
    assert {a["account"] for a in led.audit(accounts={"chem"})} == {"chem"}
    assert {a["role"] for a in led.audit()} == {"admin"}
    led.disconnect()


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, "12", True])
def test_a_token_count_the_ledger_cannot_store_is_refused_in_one_line_and_charges_nothing(db, bad):
    led = Ledger.open(db)
    led.set_budget("chem", 10.0, "none", actor="t")
    led.admit("a", "chem", "wf", {"s": 2.0})
    with pytest.raises(InputError, match=r"^prompt_tokens: .* is not a whole number of tokens") as e:
        led.charge("a1", "a", "s", 1, 3600, 0.5, None, None, NOW, "ok", prompt_tokens=bad)
    assert "\n" not in str(e.value) and led.charges("a") == [] and led.balance("chem").charged_h == 0
    led.disconnect()


# ---- budget changes change only what they are told -----------------------------------------

def test_set_budget_keeps_the_period_rollover_and_expiry_it_is_not_given(db):
    led = Ledger.open(db)
    expiry = f"expires {datetime.fromtimestamp(MAR, timezone.utc).isoformat()}"
    led.set_budget("proj", 100.0, "quarterly", actor="admin", rollover_pct=25, expires=MAR)
    led.set_budget("proj", 150.0, actor="admin", reason="raise")  # only the amount
    last = led.audit()[-1]
    assert (last["new_budget_h"], last["new_period"], last["terms"]) == (150.0, "quarterly", f"rollover 25%; {expiry}")
    assert led.balance("proj", now=JAN).period == period_of("quarterly", JAN)[0]
    led.set_budget("proj", 150.0, "monthly", actor="admin")  # a period given is a period changed
    assert (led.audit()[-1]["new_period"], led.audit()[-1]["terms"]) == ("monthly", f"rollover 25%; {expiry}")
    led.set_budget("new", 5.0, actor="admin")  # a new account: monthly, no rollover, no expiry
    assert (led.audit()[-1]["new_period"], led.audit()[-1]["terms"]) == ("monthly", "")
    led.set_budget("flat", 5.0, "none", actor="admin")
    with pytest.raises(InputError, match="rollover needs a monthly or quarterly period"):
        led.set_budget("flat", 5.0, actor="admin", rollover_pct=10)  # the kept period is 'none'
    assert led.audit()[-1]["account"] == "flat" and led.audit()[-1]["terms"] == ""
    led.disconnect()


def test_amounts_beyond_64_bit_milliseconds_are_refused_in_one_line(led):
    from slurmgov.ledger.store import MAX_GPU_HOURS

    most = (2**63 - 2048) / MS  # the largest float amount whose milliseconds fit a signed 64-bit column
    assert most < MAX_GPU_HOURS < 2.6e12
    led.set_budget("big", most, actor="t")
    assert round(led.balance("big").budget_h * MS) == 2**63 - 2048
    for call in (lambda: led.set_budget("big", 1e13, actor="t"), lambda: led.set_budget("big", MAX_GPU_HOURS + 1, actor="t"),
                 lambda: led.grant("chem", 1e13, actor="t"), lambda: led.grant("big", 1.0, actor="t"),
                 lambda: led.transfer("chem", "big", 1.0, actor="t"), lambda: led.ensure_account("x", 1e300),
                 lambda: led.admit("h", "chem", "wf", {"s": 1e13}, user="u"),
                 lambda: charge(led, "c", "h", "s", 1e300, weight=1e300)):
        with pytest.raises(InputError, match="more than the ledger can store") as e:
            call()
        assert "\n" not in str(e.value)
    assert led.balance("big").budget_h == most and led.balance("chem").budget_h == 10.0  # nothing half-done
    assert [a["account"] for a in led.audit()] == ["chem", "big"]


# ---- waiting for a busy ledger ---------------------------------------------------------------

@contextmanager
def _writer_holding(db_url):
    """Another connection in the middle of a write transaction on the ledger (SQLite: BEGIN
    IMMEDIATE; PostgreSQL: the chem account row locked, as a writer locks it), and the id of
    the process that holds it, as the notice should name it. Yields (commit, pid)."""
    if db_url.startswith("sqlite:///"):
        conn = sqlite3.connect(db_url[len("sqlite://"):], isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        pid = os.getpid()
    else:
        import psycopg

        conn = psycopg.connect(db_url, autocommit=True)
        conn.execute("BEGIN")
        conn.execute("SELECT account FROM accounts WHERE account = 'chem' FOR UPDATE")
        pid = conn.info.backend_pid
    try:
        yield (lambda: conn.execute("COMMIT")), pid
    finally:
        conn.close()


def test_a_writer_that_waits_says_who_holds_the_lock_then_gives_up(led, db):
    notices: list[str] = []
    with _writer_holding(db) as (_, pid):
        mine = Ledger.open(db, wait_s=1.5, on_wait=notices.append)  # opening reads: it does not wait
        assert mine.balance("chem").budget_h == 10.0  # nor does a read
        with pytest.raises(LedgerUnavailable) as e:
            mine.grant("chem", 1.0, actor="t")
    assert len(notices) == 1 and notices[0].startswith(f"ledger {mine._where} is busy: held by pid {pid} (")
    assert str(e.value).startswith(notices[0]) and str(e.value).endswith("; gave up after waiting 1.5 s")
    mine.grant("chem", 1.0, actor="t")  # the writer has gone: no wait, no notice
    assert len(notices) == 1 and led.balance("chem").budget_h == 11.0
    mine.disconnect()


def test_a_waiting_writer_goes_on_once_the_holder_commits(led, db):
    notices: list[str] = []
    with _writer_holding(db) as (commit, _):
        def notice(text):  # the holder commits when told that someone waits: no timing involved
            notices.append(text)
            commit()

        mine = Ledger.open(db, wait_s=600, on_wait=notice)
        mine.grant("chem", 2.0, actor="t")
    assert len(notices) == 1 and "is busy" in notices[0]
    assert led.balance("chem").budget_h == 12.0
    mine.disconnect()


# ---- the running held total (schema 5) stays exact whatever writes the holds ---------------

def test_the_running_held_total_equals_the_open_holds_after_a_random_mix_of_writes(db):
    import random

    rnd = random.Random(13)
    led = Ledger.open(db)
    accounts = ["chem", "bio", "phys"]
    for a in accounts:
        led.set_budget(a, 1_000.0, "none", actor="t")
    keys: list[str] = []
    t = time.time()
    for i in range(160):
        op = rnd.choice(("admit", "admit", "lease", "charge", "settle", "close", "release", "reprice",
                         "bulk_admit", "bulk_charge", "bulk_close", "lapse"))
        key = rnd.choice(keys) if keys else None
        if op in ("admit", "lease") or key is None:
            keys.append(f"h{i}")
            led.admit(f"h{i}", rnd.choice(accounts), "wf", {"a": rnd.uniform(0, 3), "b": rnd.uniform(0, 2)},
                      enforce=rnd.random() < 0.5, lease_s=rnd.choice((1, 1000)) if op == "lease" else None)
        elif op == "charge":
            led.charge(f"c{i}", key, rnd.choice("ab"), 1, rnd.uniform(0, 9000), rnd.uniform(0.5, 2), None, None, t,
                       "done")
        elif op == "settle":
            led.settle_step(key, rnd.choice("ab"))
        elif op == "close":
            led.close(key, rnd.choice(("done", "failed")))
        elif op == "release":
            led.release(key, "admin", "test")
        elif op == "reprice":
            led.reprice(key, f"m{i}", rnd.choice(accounts), rnd.uniform(-3, 3))
        elif op == "bulk_admit":
            rows = [(f"h{i}.{j}", rnd.choice(accounts), "wf", {"a": rnd.uniform(0, 2), "b": 0.5}, None, None, t)
                    for j in range(5)]
            led.import_holds(rows + rows[:1])  # a replay inside the batch too
            keys += [r[0] for r in rows]
        elif op == "bulk_charge":
            led.import_charges([dict(charge_key=f"c{i}.{j}", hold_key=rnd.choice(keys), step=rnd.choice("ab"),
                                     attempt=1, gpu_seconds=rnd.uniform(0, 5000), weight=1.0, gpu_type=None,
                                     started=None, ended=t, status="done") for j in range(6)])
        elif op == "bulk_close":
            led.close_holds([(rnd.choice(keys), "done") for _ in range(4)])
        elif op == "lapse":
            led.release_lapsed(now=time.time() + 5)  # the 1 s leases have lapsed; the 1000 s ones not
        assert led.check_held() == [], (i, op)
    open_ = {a: 0.0 for a in accounts}
    for h in led.holds_open():
        open_[h["account"]] += h["held_h"]
    for a in accounts:
        assert abs(led.balance(a).held_h - open_[a]) < 1e-9
    led.disconnect()


def test_check_held_finds_a_total_that_a_write_forgot(db):
    led = Ledger.open(db)
    led.set_budget("chem", 10.0, "none", actor="t")
    led.admit("a", "chem", "wf", {"s": 2.0})
    with raw(db) as (conn, _):
        conn.execute("UPDATE accounts SET held_ms = 1 WHERE account = 'chem'")
        if db.startswith("sqlite"):
            conn.commit()
    assert led.check_held() == [("chem", 1 / MS, 2.0)]
    led.disconnect()


# ---- SQLite: slurmgov's writers queue on a flock before SQLite's own lock ------------------

def test_a_sqlite_writer_waits_for_the_writers_lock_says_who_holds_it_then_gives_up(tmp_path):
    import fcntl

    db = url(tmp_path / "ledger.sqlite")
    led = Ledger.open(db)
    led.ensure_account("chem", 10.0)
    fd = os.open(str(tmp_path / "ledger.sqlite-writers"), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as another slurmgov writer in its transaction holds it
    notices: list[str] = []
    mine = Ledger.open(db, wait_s=1.5, on_wait=notices.append)
    try:
        t = time.monotonic()
        with pytest.raises(LedgerUnavailable) as e:
            mine.grant("chem", 1.0, actor="t")
        assert 1.4 < time.monotonic() - t < 5
        assert len(notices) == 1 and notices[0].startswith(f"ledger {mine._where} is busy: held by pid {os.getpid()} (")
        assert str(e.value).endswith("; gave up after waiting 1.5 s")
        threading.Timer(0.3, os.close, (fd,)).start()  # the holder lets go while we wait (in the kernel by then)
        fd = -1
        mine.grant("chem", 1.0, actor="t")
        assert led.balance("chem").budget_h == 11.0
    finally:
        if fd >= 0:
            os.close(fd)
        mine.disconnect()
        led.disconnect()


def test_an_actors_daily_limit_counts_its_grants_and_transfers_of_the_last_24_hours(led, monkeypatch):
    """A per-change limit repeated is no limit: an operator's (or manager's) grants and transfers
    over any 24 hours are capped in all, counted from the audit trail in the change's own
    transaction; each actor has its own, yesterday's changes drop out, admins have none."""
    from slurmgov.errors import PermissionDenied
    from slurmgov.ledger import store

    led.ensure_account("bio", 10.0)
    real = time.time
    monkeypatch.setattr(store.time, "time", lambda: real() - 86400 - 60)  # a day and a minute ago
    led.grant("chem", 8, actor="op", role="operator", daily_limit_h=10)
    monkeypatch.setattr(store.time, "time", real)
    led.grant("chem", 6, actor="op", role="operator", daily_limit_h=10)  # yesterday's 8 no longer count
    led.transfer("chem", "bio", 3, actor="op", role="operator", daily_limit_h=10)  # 9 of 10
    with pytest.raises(PermissionDenied, match=r"^op \(operator\) may not grant 2 GPU-h to account chem: an operator "
                                               r"grants and transfers at most 10 GPU-h in any 24 hours, and op moved "
                                               r"9 GPU-h in the last 24$"):
        led.grant("chem", 2, actor="op", role="operator", daily_limit_h=10)
    with pytest.raises(PermissionDenied, match=r"may not transfer 2 GPU-h from account chem to account bio"):
        led.transfer("chem", "bio", 2, actor="op", role="operator", daily_limit_h=10)
    led.grant("chem", 1, actor="op", role="operator", daily_limit_h=10)  # exactly at the limit
    led.grant("chem", 5, actor="op2", role="operator", daily_limit_h=10)  # another operator: its own
    led.grant("chem", 50, actor="op", role="admin")  # as an admin: no daily limit
    assert led.balance("chem").budget_h == pytest.approx(10 + 8 + 6 - 3 + 1 + 5 + 50)
    assert led.balance("bio").budget_h == pytest.approx(13)


def test_an_actors_changes_at_once_on_different_accounts_cannot_pass_its_daily_limit(led, db):
    """Grants to different accounts lock different account rows (PostgreSQL), so nothing but the
    actor's own turn-taking stops eight at once from each reading the same audit trail: 8 x 3
    GPU-h against a 10 GPU-h daily limit lets exactly 3 through, on either backend."""
    from slurmgov.errors import PermissionDenied

    names = [f"acct{i}" for i in range(8)]
    for name in names:
        led.ensure_account(name, 1.0)
    ledgers = [Ledger.open(db) for _ in names]  # opened first, so the grants start together
    try:
        out = _race(8, lambda i: ledgers[i].grant(names[i], 3, actor="op", role="operator", daily_limit_h=10))
    finally:
        for mine in ledgers:
            mine.disconnect()
    assert all(r is None or isinstance(r, PermissionDenied) for r in out), out
    granted = [n for n, r in zip(names, out) if r is None]
    assert len(granted) == 3, out
    assert sorted(b.account for b in led.balances() if b.budget_h == 4.0) == sorted(granted)
    assert sum(1 for r in led.audit() if r["actor"] == "op") == 3
