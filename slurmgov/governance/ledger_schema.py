"""Every SQL statement the ledger runs, in one place.

Statements are standard SQL with ``?`` parameters; a ``Dialect`` holds the few things that
differ between engines (placeholder style, how a write transaction takes its lock, the
identity column, triggers), so a PostgreSQL dialect can be added beside ``SQLITE``.
Amounts are BIGINT weighted GPU-milliseconds; times are DOUBLE PRECISION epoch seconds (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str  # what ``?`` becomes
    begin_write: str  # starts a transaction that serialises writers (admission reads then writes)
    identity: str  # an auto-numbered primary key column type
    extra_ddl: tuple[str, ...]  # engine-specific guards, run after the tables exist

    def sql(self, q: str) -> str:
        return q if self.placeholder == "?" else q.replace("?", self.placeholder)


SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    # IMMEDIATE takes the write lock before the first read, so two admissions cannot both
    # read the same "available" and both insert. (PostgreSQL: BEGIN + SELECT ... FOR UPDATE
    # on the account row.)
    begin_write="BEGIN IMMEDIATE",
    identity="INTEGER PRIMARY KEY",
    extra_ddl=(
        # The audit trail is append-only: refuse any UPDATE or DELETE, whoever issues it.
        "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END",
        "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END",
    ),
)


def ddl(d: Dialect) -> list[str]:
    return [
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
        """CREATE TABLE IF NOT EXISTS accounts (
            account TEXT PRIMARY KEY,
            budget_ms BIGINT NOT NULL CHECK (budget_ms >= 0),
            period_kind TEXT NOT NULL CHECK (period_kind IN ('monthly', 'quarterly', 'none')),
            updated_at DOUBLE PRECISION NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS audit (
            seq {d.identity},
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            account TEXT NOT NULL,
            action TEXT NOT NULL,
            old_budget_ms BIGINT,
            new_budget_ms BIGINT NOT NULL,
            old_period_kind TEXT,
            new_period_kind TEXT NOT NULL,
            reason TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS holds (
            hold_key TEXT PRIMARY KEY,
            account TEXT NOT NULL REFERENCES accounts (account),
            workflow TEXT NOT NULL,
            user_name TEXT,
            run_id TEXT,
            amount_ms BIGINT NOT NULL CHECK (amount_ms >= 0),
            state TEXT NOT NULL CHECK (state IN ('open', 'done', 'failed', 'cancelled')),
            created_at DOUBLE PRECISION NOT NULL,
            closed_at DOUBLE PRECISION)""",
        """CREATE TABLE IF NOT EXISTS hold_shares (
            hold_key TEXT NOT NULL REFERENCES holds (hold_key),
            step TEXT NOT NULL,
            amount_ms BIGINT NOT NULL CHECK (amount_ms >= 0),
            remaining_ms BIGINT NOT NULL CHECK (remaining_ms >= 0 AND remaining_ms <= amount_ms),
            PRIMARY KEY (hold_key, step))""",
        """CREATE TABLE IF NOT EXISTS charges (
            charge_key TEXT PRIMARY KEY,
            hold_key TEXT NOT NULL REFERENCES holds (hold_key),
            account TEXT NOT NULL,
            workflow TEXT NOT NULL,
            step TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            user_name TEXT,
            gpu_type TEXT,
            gpu_seconds DOUBLE PRECISION NOT NULL CHECK (gpu_seconds >= 0),
            weight DOUBLE PRECISION NOT NULL CHECK (weight >= 0),
            amount_ms BIGINT NOT NULL CHECK (amount_ms >= 0),
            started DOUBLE PRECISION,
            ended DOUBLE PRECISION NOT NULL,
            status TEXT NOT NULL,
            recorded_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS holds_open ON holds (account, state)",
        "CREATE INDEX IF NOT EXISTS charges_period ON charges (account, ended)",
        "CREATE INDEX IF NOT EXISTS charges_hold ON charges (hold_key)",
        *d.extra_ddl,
    ]


VERSION_GET = "SELECT MAX(version) FROM schema_version"
VERSION_SET = "INSERT INTO schema_version (version) VALUES (?)"

ACCOUNT_GET = "SELECT account, budget_ms, period_kind FROM accounts WHERE account = ?"
ACCOUNT_NAMES = "SELECT account FROM accounts ORDER BY account"
ACCOUNT_INSERT = "INSERT INTO accounts (account, budget_ms, period_kind, updated_at) VALUES (?, ?, ?, ?)"
ACCOUNT_UPDATE = "UPDATE accounts SET budget_ms = ?, period_kind = ?, updated_at = ? WHERE account = ?"
AUDIT_INSERT = """INSERT INTO audit (at, actor, account, action, old_budget_ms, new_budget_ms,
    old_period_kind, new_period_kind, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""
AUDIT_LIST = """SELECT seq, at, actor, account, action, old_budget_ms, new_budget_ms,
    old_period_kind, new_period_kind, reason FROM audit ORDER BY seq"""

# What an account has charged in [start, end) and what its open holds still reserve.
CHARGED_IN = "SELECT COALESCE(SUM(amount_ms), 0) FROM charges WHERE account = ? AND ended >= ? AND ended < ?"
HELD_OPEN = """SELECT COALESCE(SUM(s.remaining_ms), 0) FROM hold_shares s
    JOIN holds h ON h.hold_key = s.hold_key WHERE h.account = ? AND h.state = 'open'"""

HOLD_GET = """SELECT hold_key, account, workflow, user_name, run_id, amount_ms, state, created_at, closed_at
    FROM holds WHERE hold_key = ?"""
HOLD_INSERT = """INSERT INTO holds (hold_key, account, workflow, user_name, run_id, amount_ms, state, created_at)
    VALUES (?, ?, ?, ?, ?, ?, 'open', ?)"""
HOLD_CLOSE = "UPDATE holds SET state = ?, closed_at = ? WHERE hold_key = ? AND state = 'open'"
SHARES_GET = "SELECT step, amount_ms, remaining_ms FROM hold_shares WHERE hold_key = ? ORDER BY step"
SHARE_INSERT = "INSERT INTO hold_shares (hold_key, step, amount_ms, remaining_ms) VALUES (?, ?, ?, ?)"
SHARE_GET = "SELECT amount_ms, remaining_ms FROM hold_shares WHERE hold_key = ? AND step = ?"
SHARE_SET = "UPDATE hold_shares SET remaining_ms = ? WHERE hold_key = ? AND step = ?"
SHARES_RELEASE = "UPDATE hold_shares SET remaining_ms = 0 WHERE hold_key = ?"

CHARGE_COLUMNS = """charge_key, hold_key, account, workflow, step, attempt, user_name, gpu_type,
    gpu_seconds, weight, amount_ms, started, ended, status, recorded_at"""
CHARGE_GET = f"SELECT {CHARGE_COLUMNS} FROM charges WHERE charge_key = ?"
CHARGE_INSERT = f"INSERT INTO charges ({CHARGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
CHARGES_ALL = f"SELECT {CHARGE_COLUMNS} FROM charges ORDER BY ended, charge_key"
CHARGES_OF_HOLD = f"SELECT {CHARGE_COLUMNS} FROM charges WHERE hold_key = ? ORDER BY ended, charge_key"

# ``by`` picks the grouping column from this fixed map, never from user text.
USAGE_COLUMNS = {"account": "account", "workflow": "workflow", "step": "step", "user": "user_name",
                 "gpu_type": "gpu_type"}


def usage_sql(by: str) -> str:
    col = USAGE_COLUMNS[by]
    return f"""SELECT {col}, SUM(gpu_seconds), SUM(amount_ms), COUNT(*) FROM charges
        WHERE ended >= ? AND ended < ? GROUP BY {col} ORDER BY {col}"""
