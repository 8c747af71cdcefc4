"""The GPU-budget ledger: budgets, holds placed at admission, charges for what ran, an audit trail.

Money rules. Amounts enter as weighted GPU-hours (floats) and are stored as integer weighted
GPU-milliseconds, rounded half up once at entry, so every sum is exact. For an account:

    available = budget - charged in the current period - still held by open holds

A charge belongs to the period of its end time; open holds count against the current period.
Periods are UTC: monthly 'YYYY-MM', quarterly 'YYYY-Qn', or 'none' (one period, 'all').

Every mutating method is one transaction and idempotent by its key, so a caller that crashed
and replays cannot hold or charge twice. Admission takes the write lock before it reads the
balance, so concurrent admissions (threads or processes, each with its own Ledger) can never
hold more than the budget.
"""

from __future__ import annotations

import math
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from slurmgov.errors import BudgetRefused, InputError, LedgerError
from slurmgov.governance import ledger_schema as S

MS_PER_H = 3_600_000
PERIOD_KINDS = ("monthly", "quarterly", "none")
CLOSED_STATES = ("done", "failed", "cancelled")
USAGE_BY = tuple(S.USAGE_COLUMNS)
_FOREVER = 1e18  # epoch-seconds bound for the open-ended period and unbounded usage queries
_BUSY_S = 10.0  # how long SQLite itself waits for a lock before reporting "database is locked"
_RETRIES = 8  # then we back off and retry the whole transaction this many times


@dataclass(frozen=True)
class Balance:
    account: str
    period: str
    budget_h: float
    charged_h: float
    held_h: float
    available_h: float


@dataclass(frozen=True)
class Hold:
    hold_key: str
    account: str
    workflow: str
    amount_h: float
    remaining_h: float
    state: str  # 'open', 'done', 'failed' or 'cancelled'
    shares: dict[str, float]  # step -> weighted GPU-h still held for it
    user: str | None = None
    run_id: str | None = None


def _h(ms: int) -> float:
    return ms / MS_PER_H


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _ms(hours, what: str) -> int:
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not math.isfinite(hours) or hours < 0:
        raise InputError(f"{what} must be a number of GPU-hours >= 0, got {hours!r}")
    return _round_half_up(hours * MS_PER_H)


def _epoch(t, what: str = "time") -> float:
    """None is now; a naive datetime is taken as UTC; numbers are epoch seconds."""
    if t is None:
        return time.time()
    if isinstance(t, datetime):
        return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
        return float(t)
    raise InputError(f"{what} must be a datetime or epoch seconds, got {t!r}")


def period_of(kind: str, ts: float) -> tuple[str, float, float]:
    """The period holding epoch time ``ts``: (key, start, end) with start <= ts < end."""
    if kind == "none":
        return "all", -_FOREVER, _FOREVER
    d = datetime.fromtimestamp(ts, timezone.utc)
    if kind == "monthly":
        first, months, key = d.month, 1, f"{d.year:04d}-{d.month:02d}"
    elif kind == "quarterly":
        q = (d.month - 1) // 3
        first, months, key = 3 * q + 1, 3, f"{d.year:04d}-Q{q + 1}"
    else:
        raise InputError(f"period {kind!r} is not one of {', '.join(PERIOD_KINDS)}")
    nxt = first - 1 + months
    start = datetime(d.year, first, 1, tzinfo=timezone.utc)
    end = datetime(d.year + nxt // 12, nxt % 12 + 1, 1, tzinfo=timezone.utc)
    return key, start.timestamp(), end.timestamp()


def _check_kind(kind: str) -> str:
    if kind not in PERIOD_KINDS:
        raise InputError(f"period {kind!r} is not one of {', '.join(PERIOD_KINDS)}")
    return kind


def _locked(e: sqlite3.Error) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


def _charge_dict(r) -> dict:
    (key, hold_key, account, workflow, step, attempt, user, gpu_type, gpu_s, weight, ms, started, ended,
     status, recorded_at) = r
    return {"charge_key": key, "hold_key": hold_key, "account": account, "workflow": workflow, "step": step,
            "attempt": attempt, "user": user, "gpu_type": gpu_type, "gpu_seconds": gpu_s, "weight": weight,
            "charged_h": _h(ms), "started": started, "ended": ended, "status": status, "recorded_at": recorded_at}


class Ledger:
    """One connection to one ledger. Safe to share between threads (calls are serialised);
    for parallel writers give each process its own Ledger."""

    def __init__(self, conn: sqlite3.Connection, where: str, dialect: S.Dialect = S.SQLITE):
        self._conn, self._where, self._d = conn, where, dialect
        self._lock = threading.RLock()

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str) -> Ledger:
        """Open (creating if needed) the ledger at ``sqlite:///ABSOLUTE/PATH``."""
        if not isinstance(url, str) or not url.startswith("sqlite:///"):
            if isinstance(url, str) and url.split(":", 1)[0] in ("postgres", "postgresql"):
                # never echo a URL that may carry a password
                raise LedgerError("PostgreSQL ledgers are not supported yet; use sqlite:///ABSOLUTE/PATH")
            raise LedgerError(f"ledger URL {url!r} is not of the form sqlite:///ABSOLUTE/PATH")
        path = Path(url[len("sqlite://"):])
        if not path.name:
            raise LedgerError(f"ledger URL {url!r} names no file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), timeout=_BUSY_S, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise LedgerError(f"ledger {path}: cannot open: {e}") from None
        ledger = cls(conn, str(path))
        try:
            ledger._setup()
        except BaseException:
            conn.close()
            raise
        return ledger

    def _setup(self) -> None:
        c = self._conn
        c.execute(f"PRAGMA busy_timeout = {int(_BUSY_S * 1000)}")
        # WAL lets readers run beside the one writer; FULL sync because a lost commit is lost money.
        self._retry(lambda: c.execute("PRAGMA journal_mode = WAL").fetchone())
        c.execute("PRAGMA synchronous = FULL")
        c.execute("PRAGMA foreign_keys = ON")
        self._write(self._ensure_schema)

    def _ensure_schema(self) -> None:
        self._x("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = self._one(S.VERSION_GET)[0]
        if version is not None and version > S.SCHEMA_VERSION:
            raise LedgerError(f"ledger {self._where} has schema version {version}, newer than this "
                              f"slurmgov understands ({S.SCHEMA_VERSION}); upgrade slurmgov")
        if version is None:
            for stmt in S.ddl(self._d):
                self._x(stmt)
            self._x(S.VERSION_SET, (S.SCHEMA_VERSION,))
        # (version < SCHEMA_VERSION: migrations go here when there is a version 2)

    def disconnect(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()

    # ---- transactions --------------------------------------------------------------------

    def _x(self, q: str, params: tuple = ()) -> sqlite3.Cursor:
        return self._conn.execute(self._d.sql(q), params)

    def _one(self, q: str, params: tuple = ()):
        return self._x(q, params).fetchone()

    def _retry(self, fn):
        """Run ``fn`` again, with jittered exponential backoff, while the database is locked."""
        for attempt in range(_RETRIES):
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if not _locked(e) or attempt == _RETRIES - 1:
                    raise LedgerError(f"ledger {self._where}: {e}") from None
                time.sleep(min(1.0, 0.02 * 2 ** attempt) * random.uniform(0.5, 1.0))
            except sqlite3.Error as e:
                raise LedgerError(f"ledger {self._where}: {e}") from None

    def _tx(self, fn, begin: str):
        def once():
            self._x(begin)
            try:
                out = fn()
                self._x("COMMIT")
                return out
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

        with self._lock:
            return self._retry(once)

    def _write(self, fn):
        return self._tx(fn, self._d.begin_write)

    def _read(self, fn):
        return self._tx(fn, "BEGIN")  # one snapshot, so budget/charged/held agree

    # ---- budgets -------------------------------------------------------------------------

    def _account(self, account: str):
        row = self._one(S.ACCOUNT_GET, (account,))
        if row is None:
            raise InputError(f"account {account} has no budget in the ledger; set one with "
                             f"`slurmgov budget set {account} GPU_HOURS`")
        return row

    def _put_budget(self, account, ms, kind, actor, reason, action, overwrite: bool) -> None:
        now = time.time()
        old = self._one(S.ACCOUNT_GET, (account,))
        if old is not None and not overwrite:
            return
        if old is None:
            self._x(S.ACCOUNT_INSERT, (account, ms, kind, now))
        else:
            self._x(S.ACCOUNT_UPDATE, (ms, kind, now, account))
        at = datetime.fromtimestamp(now, timezone.utc).isoformat()
        self._x(S.AUDIT_INSERT, (at, actor, account, action, old and old[1], ms, old and old[2], kind, reason))

    def ensure_account(self, account: str, gpu_hours: float, period_kind: str = "monthly",
                       actor: str = "site-config") -> None:
        """Seed ``account``'s budget unless it already has one (an existing budget wins)."""
        ms, kind = _ms(gpu_hours, f"budget of {account}"), _check_kind(period_kind)
        self._write(lambda: self._put_budget(account, ms, kind, actor, "seeded from site config", "seed", False))

    def set_budget(self, account: str, gpu_hours: float, period_kind: str = "monthly", actor: str = "",
                   reason: str = "") -> None:
        """Set ``account``'s budget per period; who, when, what and why go to the audit trail."""
        if not actor:
            raise InputError(f"set_budget of {account}: say who is changing it (actor)")
        ms, kind = _ms(gpu_hours, f"budget of {account}"), _check_kind(period_kind)
        self._write(lambda: self._put_budget(account, ms, kind, actor, reason or "", "set", True))

    def audit(self) -> list[dict]:
        cols = ("seq", "at", "actor", "account", "action", "old_budget_h", "new_budget_h",
                "old_period", "new_period", "reason")
        rows = self._read(lambda: self._x(S.AUDIT_LIST).fetchall())
        out = [dict(zip(cols, r)) for r in rows]
        for d in out:
            d["old_budget_h"] = None if d["old_budget_h"] is None else _h(d["old_budget_h"])
            d["new_budget_h"] = _h(d["new_budget_h"])
        return out

    # ---- balances ------------------------------------------------------------------------

    def _balance_ms(self, account: str, ts: float) -> tuple[str, int, int, int]:
        _, budget, kind = self._account(account)
        key, start, end = period_of(kind, ts)
        charged = self._one(S.CHARGED_IN, (account, start, end))[0]
        held = self._one(S.HELD_OPEN, (account,))[0]
        return key, budget, charged, held

    def _balance(self, account: str, ts: float) -> Balance:
        key, budget, charged, held = self._balance_ms(account, ts)
        return Balance(account, key, _h(budget), _h(charged), _h(held), _h(budget - charged - held))

    def balance(self, account: str, now=None) -> Balance:
        ts = _epoch(now, "now")
        return self._read(lambda: self._balance(account, ts))

    def balances(self, now=None) -> list[Balance]:
        ts = _epoch(now, "now")
        return self._read(lambda: [self._balance(a, ts) for (a,) in self._x(S.ACCOUNT_NAMES).fetchall()])

    # ---- holds ---------------------------------------------------------------------------

    def _hold(self, hold_key: str) -> Hold:
        row = self._one(S.HOLD_GET, (hold_key,))
        if row is None:
            raise LedgerError(f"hold {hold_key} is not in the ledger")
        key, account, workflow, user, run_id, amount, state, _, _ = row
        shares = {step: rem for step, _, rem in self._x(S.SHARES_GET, (hold_key,)).fetchall()}
        return Hold(key, account, workflow, _h(amount), _h(sum(shares.values())), state,
                    {s: _h(ms) for s, ms in shares.items()}, user, run_id)

    def hold(self, hold_key: str) -> Hold:
        return self._read(lambda: self._hold(hold_key))

    def admit(self, hold_key: str, account: str, workflow: str, shares: dict[str, float], user: str | None = None,
              run_id: str | None = None, now=None, enforce: bool = True) -> Hold:
        """Hold sum(shares) against ``account``, or raise BudgetRefused. Replaying ``hold_key`` returns
        the existing hold and holds nothing more. ``enforce=False`` records a hold that was already
        admitted elsewhere (by the submit hook inside slurmctld): the job exists, so must its hold."""
        want = {str(step): _ms(h, f"share of step {step}") for step, h in shares.items()}
        need, ts = sum(want.values()), _epoch(now, "now")

        def tx() -> Hold:
            old = self._one(S.HOLD_GET, (hold_key,))
            if old is not None:
                had = {step: amount for step, amount, _ in self._x(S.SHARES_GET, (hold_key,)).fetchall()}
                if (old[1], old[2], had) != (account, workflow, want):
                    raise LedgerError(f"hold {hold_key} already exists for a different account, workflow "
                                      f"or shares; a replay must repeat the original request")
                return self._hold(hold_key)
            _, budget, charged, held = self._balance_ms(account, ts)
            avail = budget - charged - held
            if enforce and avail < need:
                raise BudgetRefused(f"account {account}: {_h(avail):.1f} GPU-h left, "
                                    f"workflow needs up to {_h(need):.1f} GPU-h")
            self._x(S.HOLD_INSERT, (hold_key, account, workflow, user, run_id, need, ts))
            for step, ms in want.items():
                self._x(S.SHARE_INSERT, (hold_key, step, ms, ms))
            return self._hold(hold_key)

        return self._write(tx)

    def settle_step(self, hold_key: str, step: str) -> None:
        """Release what is left of ``step``'s share (its work is over)."""
        def tx():
            self._hold(hold_key)
            row = self._one(S.SHARE_GET, (hold_key, step))
            if row is None:
                raise LedgerError(f"hold {hold_key} has no share for step {step}")
            if row[1]:
                self._x(S.SHARE_SET, (0, hold_key, step))

        self._write(tx)

    def close(self, hold_key: str, state: str) -> Hold:
        """Release every remaining share and close the hold; closing again keeps the first state."""
        if state not in CLOSED_STATES:
            raise InputError(f"hold state {state!r} is not one of {', '.join(CLOSED_STATES)}")

        def tx() -> Hold:
            if self._hold(hold_key).state == "open":
                self._x(S.SHARES_RELEASE, (hold_key,))
                self._x(S.HOLD_CLOSE, (state, time.time(), hold_key))
            return self._hold(hold_key)

        return self._write(tx)

    # ---- charges -------------------------------------------------------------------------

    def charge(self, charge_key: str, hold_key: str, step: str, attempt: int, gpu_seconds: float, weight: float,
               gpu_type: str | None, started, ended, status: str, user: str | None = None,
               workflow: str | None = None) -> dict:
        """Charge gpu_seconds x weight / 3600 weighted GPU-h for one attempt of ``step`` and draw
        the same amount from its share of the hold. Replaying ``charge_key`` changes nothing."""
        for v, what in ((gpu_seconds, "gpu_seconds"), (weight, "weight")):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InputError(f"charge {charge_key}: {what} must be a number >= 0, got {v!r}")
        ms = _round_half_up(gpu_seconds * weight * 1000)  # straight from seconds: one rounding
        t0 = None if started is None else _epoch(started, "started")
        t1 = _epoch(ended, "ended")

        def tx() -> dict:
            old = self._one(S.CHARGE_GET, (charge_key,))
            if old is not None:
                if (old[1], old[4], old[5], old[10]) != (hold_key, step, attempt, ms):
                    raise LedgerError(f"charge {charge_key} already exists with a different hold, step, "
                                      f"attempt or amount")
                return _charge_dict(old)
            h = self._hold(hold_key)
            row = (charge_key, hold_key, h.account, workflow or h.workflow, step, attempt, user or h.user,
                   gpu_type, float(gpu_seconds), float(weight), ms, t0, t1, status, time.time())
            self._x(S.CHARGE_INSERT, row)
            share = self._one(S.SHARE_GET, (hold_key, step))
            # A closed hold has released everything: a late charge is recorded but holds stay put.
            # Usage beyond the share is charged in full; the share just stops at zero.
            if h.state == "open" and share is not None and share[1]:
                self._x(S.SHARE_SET, (max(0, share[1] - ms), hold_key, step))
            return _charge_dict(row)

        return self._write(tx)

    def charges(self, hold_key: str | None = None) -> list[dict]:
        if hold_key is None:
            rows = self._read(lambda: self._x(S.CHARGES_ALL).fetchall())
        else:
            rows = self._read(lambda: self._x(S.CHARGES_OF_HOLD, (hold_key,)).fetchall())
        return [_charge_dict(r) for r in rows]

    def usage(self, by: str = "account", since=None, until=None) -> list[dict]:
        """Charges whose end time is in [since, until), grouped by account|workflow|step|user|gpu_type."""
        if by not in S.USAGE_COLUMNS:
            raise InputError(f"usage by {by!r}: choose one of {', '.join(USAGE_BY)}")
        lo = -_FOREVER if since is None else _epoch(since, "since")
        hi = _FOREVER if until is None else _epoch(until, "until")
        rows = self._read(lambda: self._x(S.usage_sql(by), (lo, hi)).fetchall())
        return [{"key": k, "gpu_seconds": s or 0.0, "charged_h": _h(ms), "charges": n} for k, s, ms, n in rows]
