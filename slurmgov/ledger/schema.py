"""Every SQL statement the ledger runs, in one place.

Statements are standard SQL with ``?`` parameters; a ``Dialect`` holds the few things that
differ between engines (placeholder style, how transactions begin and lock, the identity and
text column types, triggers): ``SQLITE`` and ``POSTGRES``.
Amounts are BIGINT weighted GPU-milliseconds; times are DOUBLE PRECISION epoch seconds (UTC).

Concurrency. SQLite: a write transaction is BEGIN IMMEDIATE, which takes the one database write
lock before its first read, so writers are serialised outright. PostgreSQL: a write transaction
is READ COMMITTED and first locks the affected account's budget row (``SELECT ... FOR UPDATE``,
``ACCOUNT_LOCK``); every write that touches an account's holds or charges takes that same one
row lock, so writers of one account are serialised and each of their later statements sees
what the writer before committed, while other accounts proceed in parallel. Each transaction
locks a single account row, so they cannot deadlock. The one race the row lock cannot cover,
two first-time inserts of the same key (an account, a hold or a charge key), ends in a
unique-key violation; the ledger retries the whole transaction, which then finds the row and
behaves as a replay. Reads run in one REPEATABLE READ READ ONLY snapshot, so budget, charged
and held always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 9  # 2: attributions; 3: rollover and expiry terms; 4: run leases on holds;
# 5: each account's running total of what its open holds still hold (accounts.held_ms);
# 6: the tokens a step reported (prompt_tokens, completion_tokens on charges and attributions);
# 7: the role a change was made under (audit.role: admin, operator, manager);
# 8: per-user caps inside an account (user_caps) and the indexes that sum a user's charges and holds
# 9: running totals of what each account, and each user in it, was charged per month
#    (account_charged, user_charged), instead of the indexes of every charge by account and by user
#    (charges_period, charges_user) that every charge insert kept up; the index of holds by account
#    holds only the open ones (holds_open)
# The largest amount a column can hold: BIGINT (PostgreSQL) and INTEGER (SQLite) are signed 64-bit.
MAX_MS = 2**63 - 1
SCHEMA_LOCK_KEY = 8317151746168680310  # PostgreSQL: the advisory lock of Dialect.schema_lock ('slurmgov')
TABLES = ("schema_version", "accounts", "audit", "holds", "hold_shares", "charges", "attributions", "user_caps",
          "account_charged", "user_charged")


@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str  # what ``?`` becomes
    begin_write: str  # starts a transaction that serialises writers (admission reads then writes)
    begin_read: str  # starts a read-only transaction that sees one snapshot
    identity: str  # an auto-numbered primary key column type
    text: str  # the type of text columns: ordering must be by code point, as SQLite's BINARY
    extra_ddl: tuple[str, ...]  # engine-specific guards, run after the tables exist
    row_locks: bool  # True: writers lock the account row (ACCOUNT_LOCK); False: BEGIN locks all
    has_table: str  # one row when the table named by the parameter exists
    has_column: str  # one row when the (table, column) named by the parameters exists
    schema_lock: str | None = None  # serialises concurrent first opens that create the tables
    session: tuple[str, ...] = ()  # run once on each new connection, outside any transaction
    # how long the engine waits for a lock before it reports the database busy ({ms}: 1 or more)
    lock_wait: str = "PRAGMA busy_timeout = {ms}"
    # ``{col} IN <a set of keys given as one parameter>``: bulk lookups pass thousands of keys in
    # one parameter (SQLite: a JSON array, PostgreSQL: a text[]), not thousands of placeholders.
    keys_in: str = "{col} IN (SELECT value FROM json_each(?))"
    keys_as_json: bool = True
    copy_rows: bool = False  # bulk inserts with COPY ... FROM STDIN (PostgreSQL) instead of executemany
    # many hold_shares.remaining_ms set in one statement from three array parameters (keys,
    # steps, amounts); None: executemany of SHARE_SET
    shares_set_arrays: str | None = None
    # reconcile's check of many jobs' charges in one statement: given (charge_key, hold_key,
    # gpu_seconds) rows (SQLite: one JSON array of triples; PostgreSQL: three arrays), the
    # 0-based index, hold_key and gpu_seconds of each row whose charge is missing (NULLs), on
    # another hold, or more than 1 GPU-second apart. Only those rows cross into Python. None: the
    # rows' charges are fetched and compared in Python (PostgreSQL: its planner hashes the whole
    # charges table for a 50,000-row unnest join, where an index lookup per key is what is wanted).
    charge_check: str | None = """SELECT k.key, c.hold_key, c.gpu_seconds FROM json_each(?) AS k
        LEFT JOIN charges AS c ON c.charge_key = json_extract(k.value, '$[0]')
        WHERE c.charge_key IS NULL OR c.hold_key <> json_extract(k.value, '$[1]')
           OR abs(c.gpu_seconds - json_extract(k.value, '$[2]')) > 1"""
    text_agg: str = "group_concat"  # texts joined by a separator (SQLite before 3.44 has no string_agg)

    def sql(self, q: str) -> str:
        return q if self.placeholder == "?" else q.replace("?", self.placeholder)

    def aggregated(self, q: str) -> str:
        """``q`` with its ``{agg}`` replaced by this engine's text aggregate."""
        return q.replace("{agg}", self.text_agg)

    def in_keys(self, q: str, col: str) -> str:
        """``q`` with its ``{keys}`` replaced by this engine's test of ``col`` against a key set."""
        return q.replace("{keys}", self.keys_in.format(col=col))


SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    # IMMEDIATE takes the write lock before the first read, so two admissions cannot both
    # read the same "available" and both insert. (PostgreSQL: BEGIN + SELECT ... FOR UPDATE
    # on the account row.)
    begin_write="BEGIN IMMEDIATE",
    begin_read="BEGIN",
    identity="INTEGER PRIMARY KEY",
    text="TEXT",
    extra_ddl=(
        # The audit trail is append-only: refuse any UPDATE or DELETE, whoever issues it.
        "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END",
        "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END",
    ),
    row_locks=False,
    has_table="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    has_column="SELECT 1 FROM pragma_table_info(?) WHERE name = ?",
    session=(
        # WAL lets readers run beside the one writer; FULL sync because a lost commit is lost money.
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = FULL",
        "PRAGMA foreign_keys = ON",
    ),
)

POSTGRES = Dialect(
    name="postgresql",
    placeholder="%s",
    # READ COMMITTED, so that once a writer holds the account row lock each later statement
    # reads what the writers before it committed (see the module docstring).
    begin_write="BEGIN ISOLATION LEVEL READ COMMITTED",
    begin_read="BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    identity="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    text='TEXT COLLATE "C"',
    extra_ddl=(
        # The audit trail is append-only: refuse any UPDATE, DELETE or TRUNCATE, whoever issues
        # it (statement-level, so even one that matches no row is refused).
        "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'audit is append-only'; END $$",
        "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
    ),
    row_locks=True,
    has_table="SELECT 1 WHERE to_regclass(?) IS NOT NULL",
    has_column="SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
               "AND table_name = %s AND column_name = %s",
    # A transaction-scoped advisory lock (key: 'slurmgov' as an integer) held while the schema
    # is checked or created, so two first opens cannot both create the tables.
    schema_lock=f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})",
    lock_wait="SET lock_timeout = {ms}",
    keys_in="{col} = ANY(CAST(? AS TEXT[]))",
    keys_as_json=False,
    copy_rows=True,
    shares_set_arrays="""UPDATE hold_shares SET remaining_ms = v.remaining_ms
        FROM (SELECT unnest(CAST(? AS TEXT[])) AS hold_key, unnest(CAST(? AS TEXT[])) AS step,
                     unnest(CAST(? AS BIGINT[])) AS remaining_ms) AS v
        WHERE hold_shares.hold_key = v.hold_key AND hold_shares.step = v.step""",
    charge_check=None,
    text_agg="string_agg",
)


def ddl(d: Dialect) -> list[str]:
    T = d.text
    return [
        VERSION_TABLE,
        f"""CREATE TABLE IF NOT EXISTS accounts (
            account {T} PRIMARY KEY,
            budget_ms BIGINT NOT NULL CHECK (budget_ms >= 0),
            period_kind {T} NOT NULL CHECK (period_kind IN ('monthly', 'quarterly', 'none')),
            updated_at DOUBLE PRECISION NOT NULL,
            rollover_pct INTEGER NOT NULL DEFAULT 0 CHECK (rollover_pct >= 0 AND rollover_pct <= 100),
            expires_at DOUBLE PRECISION,
            held_ms BIGINT NOT NULL DEFAULT 0 CHECK (held_ms >= 0))""",
        f"""CREATE TABLE IF NOT EXISTS audit (
            seq {d.identity},
            at {T} NOT NULL,
            actor {T} NOT NULL,
            account {T} NOT NULL,
            action {T} NOT NULL,
            old_budget_ms BIGINT,
            new_budget_ms BIGINT NOT NULL,
            old_period_kind {T},
            new_period_kind {T} NOT NULL,
            reason {T} NOT NULL,
            terms {T},
            role {T})""",
        f"""CREATE TABLE IF NOT EXISTS holds (
            hold_key {T} PRIMARY KEY,
            account {T} NOT NULL REFERENCES accounts (account),
            workflow {T} NOT NULL,
            user_name {T},
            run_id {T},
            amount_ms BIGINT NOT NULL CHECK (amount_ms >= 0),
            state {T} NOT NULL CHECK (state IN ('open', 'done', 'failed', 'cancelled')),
            created_at DOUBLE PRECISION NOT NULL,
            closed_at DOUBLE PRECISION,
            lease_until DOUBLE PRECISION)""",
        f"""CREATE TABLE IF NOT EXISTS hold_shares (
            hold_key {T} NOT NULL REFERENCES holds (hold_key),
            step {T} NOT NULL,
            amount_ms BIGINT NOT NULL CHECK (amount_ms >= 0),
            remaining_ms BIGINT NOT NULL CHECK (remaining_ms >= 0 AND remaining_ms <= amount_ms),
            PRIMARY KEY (hold_key, step))""",
        f"""CREATE TABLE IF NOT EXISTS charges (
            charge_key {T} PRIMARY KEY,
            hold_key {T} NOT NULL REFERENCES holds (hold_key),
            account {T} NOT NULL,
            workflow {T} NOT NULL,
            step {T} NOT NULL,
            attempt INTEGER NOT NULL,
            user_name {T},
            gpu_type {T},
            gpu_seconds DOUBLE PRECISION NOT NULL CHECK (gpu_seconds >= 0),
            weight DOUBLE PRECISION NOT NULL CHECK (weight >= 0),
            amount_ms BIGINT NOT NULL CHECK (amount_ms >= 0),
            started DOUBLE PRECISION,
            ended DOUBLE PRECISION NOT NULL,
            status {T} NOT NULL,
            recorded_at DOUBLE PRECISION NOT NULL,
            prompt_tokens BIGINT CHECK (prompt_tokens >= 0),
            completion_tokens BIGINT CHECK (completion_tokens >= 0))""",
        *attribution_ddl(d),
        *user_caps_ddl(d),
        *charged_ddl(d),
        OPEN_INDEX,
        "CREATE INDEX IF NOT EXISTS charges_hold ON charges (hold_key)",
        LEASE_INDEX,
        *d.extra_ddl,
    ]


def attribution_ddl(d: Dialect) -> list[str]:
    """Version 2. A pilot allocation's settled cost split across the steps that ran in it; the
    rest (step IS NULL) is the allocation's idle time: waste. Not charges: the job's charge is."""
    T = d.text
    return [
        f"""CREATE TABLE IF NOT EXISTS attributions (
            attr_key {T} PRIMARY KEY,
            run_id {T} NOT NULL,
            account {T} NOT NULL,
            user_name {T},
            workflow {T} NOT NULL,
            alloc {T} NOT NULL,
            job_ids {T} NOT NULL,
            step {T},
            gpu_type {T},
            gpu_seconds DOUBLE PRECISION NOT NULL CHECK (gpu_seconds >= 0),
            amount_ms BIGINT NOT NULL CHECK (amount_ms >= 0),
            ended DOUBLE PRECISION NOT NULL,
            recorded_at DOUBLE PRECISION NOT NULL,
            prompt_tokens BIGINT CHECK (prompt_tokens >= 0),
            completion_tokens BIGINT CHECK (completion_tokens >= 0))""",
        "CREATE INDEX IF NOT EXISTS attributions_run ON attributions (run_id)",
    ]


def terms_ddl(d: Dialect) -> list[tuple[str, str, str]]:
    """Version 3: unused budget carried into the next period (a share of it, not compounding),
    an expiry date after which the account has no budget, and the terms in each audit row.
    (table, column, statement): a column already there is not added again."""
    return [
        ("accounts", "rollover_pct", "ALTER TABLE accounts ADD COLUMN rollover_pct INTEGER NOT NULL DEFAULT 0 "
                                     "CHECK (rollover_pct >= 0 AND rollover_pct <= 100)"),
        ("accounts", "expires_at", "ALTER TABLE accounts ADD COLUMN expires_at DOUBLE PRECISION"),
        ("audit", "terms", f"ALTER TABLE audit ADD COLUMN terms {d.text}"),
    ]


def lease_ddl(d: Dialect) -> list[tuple[str, str, str]]:
    """Version 4: a run's hold is a lease its run renews while it lives (``lease_until``, epoch
    seconds; NULL for holds no process keeps, such as Slurm jobs'). One that lapses is released
    by the next command that opens the ledger. (table, column, statement) as terms_ddl."""
    return [("holds", "lease_until", "ALTER TABLE holds ADD COLUMN lease_until DOUBLE PRECISION")]


def held_ddl(d: Dialect) -> list[tuple[str, str, str]]:
    """Version 5: ``accounts.held_ms``, what the account's open holds still hold (the sum of their
    shares' remaining_ms), kept exact by every write that opens, re-prices, draws down, settles,
    closes, releases or lapses a hold, in the same transaction; so an admission reads one row
    instead of summing every open hold. (table, column, statement) as terms_ddl; the migration
    then fills the column from the open holds (HELD_FILL) and adds LEASE_INDEX."""
    return [("accounts", "held_ms", "ALTER TABLE accounts ADD COLUMN held_ms BIGINT NOT NULL DEFAULT 0 "
                                    "CHECK (held_ms >= 0)")]


def tokens_ddl(d: Dialect) -> list[tuple[str, str, str]]:
    """Version 6: the tokens a step reported (``usage: {prompt_tokens, completion_tokens}`` in its
    output): per attempt on a charge (local runs), per step on an attribution (Slurm runs, whose
    charges are their jobs'); NULL where none were reported (everything before version 6, Slurm
    jobs' own charges, steps that are not model calls). (table, column, statement) as terms_ddl."""
    return [(table, col, f"ALTER TABLE {table} ADD COLUMN {col} BIGINT CHECK ({col} >= 0)")
            for table in ("charges", "attributions") for col in ("prompt_tokens", "completion_tokens")]


def role_ddl(d: Dialect) -> list[tuple[str, str, str]]:
    """Version 7: the role each audited change was made under (``admin``, ``operator``,
    ``manager``; NULL for what slurmgov did itself, and for every row before version 7).
    (table, column, statement) as terms_ddl."""
    return [("audit", "role", f"ALTER TABLE audit ADD COLUMN role {d.text}")]


def user_caps_ddl(d: Dialect) -> list[str]:
    """Version 8. A user may spend at most ``cap_ms`` of an account's budget per period (the
    account's period): what the user's charges in the period and open holds in the account add up
    to. The index reads one user's open holds, not the whole account's (their charges: version 9)."""
    T = d.text
    return [
        f"""CREATE TABLE IF NOT EXISTS user_caps (
            account {T} NOT NULL REFERENCES accounts (account),
            user_name {T} NOT NULL,
            cap_ms BIGINT NOT NULL CHECK (cap_ms >= 0),
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (account, user_name))""",
        "CREATE INDEX IF NOT EXISTS holds_user_open ON holds (account, user_name) WHERE state = 'open'",
    ]


def charged_ddl(d: Dialect) -> list[str]:
    """Version 9. What each account, and each user in it, was charged per UTC month of the charges'
    end (rules.charge_month): running totals moved by every charge insert in its transaction
    (ACCOUNT_CHARGED_ADD, USER_CHARGED_ADD), as accounts.held_ms is for open holds; a balance and a
    user's cap sum their period's months (CHARGED_IN, USER_CHARGED_IN), a few rows. They replace
    the indexes charges_period (account, ended) and charges_user (account, user_name, ended) that
    every charge insert updated, each at a scattered page. The migration drops those indexes and
    fills the totals from the charges (CHARGES_MONTHS)."""
    T = d.text
    return [
        f"""CREATE TABLE IF NOT EXISTS account_charged (
            account {T} NOT NULL,
            month {T} NOT NULL,
            amount_ms BIGINT NOT NULL CHECK (amount_ms >= 0),
            PRIMARY KEY (account, month))""",
        f"""CREATE TABLE IF NOT EXISTS user_charged (
            account {T} NOT NULL,
            user_name {T} NOT NULL,
            month {T} NOT NULL,
            amount_ms BIGINT NOT NULL CHECK (amount_ms >= 0),
            PRIMARY KEY (account, user_name, month))""",
    ]


# the indexes version 9 replaced by account_charged and user_charged
CHARGE_INDEX_DROPS = ("DROP INDEX IF EXISTS charges_period", "DROP INDEX IF EXISTS charges_user")
# The open holds by account. Every read of holds by account asks for the open ones only; until
# version 9 it was (account, state) over every hold, so each close moved the hold's entry into its
# account's closed ones, at a scattered page. Now a close only removes the entry, from a small
# index; a read of all open holds (release_ended's) reads it instead of the whole table.
OPEN_INDEX = "CREATE INDEX IF NOT EXISTS holds_open ON holds (account) WHERE state = 'open'"
OPEN_INDEX_DROP = "DROP INDEX IF EXISTS holds_open"  # (account, state), before version 9

# The open holds with a lease, by account and lease end: an admission's look for its account's
# lapsed leases reads only those that lapsed, not every open hold of the account (version 5).
LEASE_INDEX = ("CREATE INDEX IF NOT EXISTS holds_lease ON holds (account, lease_until) "
               "WHERE state = 'open' AND lease_until IS NOT NULL")

ATTR_COLUMNS = """attr_key, run_id, account, user_name, workflow, alloc, job_ids, step, gpu_type, gpu_seconds,
    amount_ms, ended, recorded_at, prompt_tokens, completion_tokens"""
ATTR_INSERT = f"INSERT INTO attributions ({ATTR_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
ATTR_GET = "SELECT attr_key FROM attributions WHERE attr_key = ?"
ATTR_OF_RUN = f"SELECT {ATTR_COLUMNS} FROM attributions WHERE run_id = ? ORDER BY alloc, step"
WASTE_COLUMNS = {"account": "account", "workflow": "workflow", "user": "user_name"}


def waste_sql(by: str, some_accounts: bool = False) -> str:
    """``some_accounts``: as usage_sql."""
    col = WASTE_COLUMNS[by]
    return f"""SELECT {col},
        COALESCE(SUM(CASE WHEN step IS NOT NULL THEN gpu_seconds ELSE 0 END), 0),
        COALESCE(SUM(CASE WHEN step IS NULL THEN gpu_seconds ELSE 0 END), 0),
        CAST(COALESCE(SUM(CASE WHEN step IS NOT NULL THEN amount_ms ELSE 0 END), 0) AS BIGINT),
        CAST(COALESCE(SUM(CASE WHEN step IS NULL THEN amount_ms ELSE 0 END), 0) AS BIGINT),
        COUNT(DISTINCT run_id)
        FROM attributions WHERE ended >= ? AND ended < ?{" AND {keys}" if some_accounts else ""}
        GROUP BY {col} ORDER BY {col}"""


VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
VERSION_GET = "SELECT MAX(version) FROM schema_version"
VERSION_SET = "INSERT INTO schema_version (version) VALUES (?)"

# PostgreSQL: who holds the ledger's locks, as far as the server tells: other sessions holding
# more than a read lock on a ledger table of this schema, or the schema lock; oldest first.
# (Another role's client address and transaction start are NULL without pg_read_all_stats.)
PG_LOCK_HOLDERS = """SELECT a.pid, a.usename, host(a.client_addr), a.application_name,
        CAST(EXTRACT(EPOCH FROM clock_timestamp() - a.xact_start) AS DOUBLE PRECISION)
    FROM pg_stat_activity a
    WHERE a.pid <> pg_backend_pid() AND a.pid IN (
        SELECT l.pid FROM pg_locks l WHERE l.granted AND (
            (l.locktype = 'relation' AND l.mode <> 'AccessShareLock' AND l.relation IN (
                SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = current_schema() AND CAST(c.relname AS TEXT) = ANY(CAST(? AS TEXT[]))))
            OR (l.locktype = 'advisory'
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND CAST(l.classid AS BIGINT) = ? AND CAST(l.objid AS BIGINT) = ?)))
    ORDER BY a.xact_start NULLS LAST LIMIT 3"""

ACCOUNT_GET = "SELECT account, budget_ms, period_kind FROM accounts WHERE account = ?"
# Taken first by every PostgreSQL write (Dialect.row_locks); see the module docstring.
ACCOUNT_LOCK = "SELECT account FROM accounts WHERE account = ? FOR UPDATE"
HOLD_ACCOUNT = "SELECT account FROM holds WHERE hold_key = ?"
ACCOUNT_NAMES = "SELECT account FROM accounts ORDER BY account"
ACCOUNT_INSERT = "INSERT INTO accounts (account, budget_ms, period_kind, updated_at) VALUES (?, ?, ?, ?)"
ACCOUNT_UPDATE = "UPDATE accounts SET budget_ms = ?, period_kind = ?, updated_at = ? WHERE account = ?"
ACCOUNT_SINCE = "SELECT MIN(at) FROM audit WHERE account = ?"
ACCOUNT_TERMS = "SELECT rollover_pct, expires_at FROM accounts WHERE account = ?"
# every balance (each admission among them) reads the account row once, terms included
ACCOUNT_BALANCE = "SELECT budget_ms, period_kind, rollover_pct, expires_at FROM accounts WHERE account = ?"
ACCOUNT_SET_TERMS = "UPDATE accounts SET rollover_pct = ?, expires_at = ? WHERE account = ?"
# Per-user caps (version 8): one user's cap in an account, what they charged in [start, end)
# and what their open holds in the account still hold.
# GPU-ms one actor, acting as one role, granted or moved (a transfer: its destination's gain) since
# an ISO time (audit.at, UTC isoformat: ordered as text)
AUDIT_MOVED_SINCE = """SELECT CAST(COALESCE(SUM(new_budget_ms - COALESCE(old_budget_ms, 0)), 0) AS BIGINT)
    FROM audit WHERE actor = ? AND role = ? AND (action = 'grant' OR substr(action, 1, 14) = 'transfer from ') AND at >= ?"""
PG_ACTOR_LOCK = "SELECT pg_advisory_xact_lock(hashtext(?))"  # one actor's limited changes take turns
USER_CAP_GET = "SELECT cap_ms FROM user_caps WHERE account = ? AND user_name = ?"
USER_CAP_INSERT = "INSERT INTO user_caps (account, user_name, cap_ms, updated_at) VALUES (?, ?, ?, ?)"
USER_CAP_UPDATE = "UPDATE user_caps SET cap_ms = ?, updated_at = ? WHERE account = ? AND user_name = ?"
USER_CAP_DELETE = "DELETE FROM user_caps WHERE account = ? AND user_name = ?"
USER_CAPS_ALL = "SELECT account, user_name, cap_ms FROM user_caps ORDER BY account, user_name"
# (version 9: a user's charges in a period are the sum of their months' running totals)
USER_CHARGED_IN = """SELECT CAST(COALESCE(SUM(amount_ms), 0) AS BIGINT) FROM user_charged
    WHERE account = ? AND user_name = ? AND month >= ? AND month < ?"""
USER_CHARGED_ADD = """INSERT INTO user_charged (account, user_name, month, amount_ms) VALUES (?, ?, ?, ?)
    ON CONFLICT (account, user_name, month) DO UPDATE SET amount_ms = user_charged.amount_ms + excluded.amount_ms"""
ACCOUNT_CHARGED_ADD = """INSERT INTO account_charged (account, month, amount_ms) VALUES (?, ?, ?)
    ON CONFLICT (account, month) DO UPDATE SET amount_ms = account_charged.amount_ms + excluded.amount_ms"""
CHARGES_MONTHS = "SELECT account, user_name, ended, amount_ms FROM charges"  # what the totals are made of
CHARGED_CLEAR = ("DELETE FROM account_charged", "DELETE FROM user_charged")  # before the migration fills them
USER_CHARGED_ALL = "SELECT account, user_name, month, amount_ms FROM user_charged ORDER BY account, user_name, month"
USER_HELD = """SELECT CAST(COALESCE(SUM(s.remaining_ms), 0) AS BIGINT) FROM holds h
    JOIN hold_shares s ON s.hold_key = h.hold_key
    WHERE h.account = ? AND h.user_name = ? AND h.state = 'open'"""
AUDIT_INSERT = """INSERT INTO audit (at, actor, account, action, old_budget_ms, new_budget_ms,
    old_period_kind, new_period_kind, reason, terms, role) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
AUDIT_LIST = """SELECT seq, at, actor, account, action, old_budget_ms, new_budget_ms,
    old_period_kind, new_period_kind, reason, terms, role FROM audit ORDER BY seq"""

# What an account has charged in [start, end) and what its open holds still reserve.
# (CAST: PostgreSQL sums BIGINTs as NUMERIC; the ledger wants exact integers back.)
# (version 9: the sum of its months' running totals, given as [first, end) month keys)
CHARGED_IN = """SELECT CAST(COALESCE(SUM(amount_ms), 0) AS BIGINT) FROM account_charged
    WHERE account = ? AND month >= ? AND month < ?"""
# What its open holds still reserve: a running total per account (version 5), read by every
# balance, moved by every write to an open hold's shares in the same transaction (HELD_ADD), so an
# admission reads one row instead of summing the account's open holds. HELD_CHECK: each account
# whose total differs from the sum over its open holds (none, unless a write forgot it).
HELD_GET = "SELECT held_ms FROM accounts WHERE account = ?"
HELD_ADD = "UPDATE accounts SET held_ms = held_ms + ? WHERE account = ?"
HELD_FILL = """UPDATE accounts SET held_ms = (SELECT CAST(COALESCE(SUM(s.remaining_ms), 0) AS BIGINT)
    FROM hold_shares s JOIN holds h ON h.hold_key = s.hold_key
    WHERE h.account = accounts.account AND h.state = 'open')"""
HELD_CHECK = """SELECT a.account, a.held_ms, CAST(COALESCE(SUM(s.remaining_ms), 0) AS BIGINT) FROM accounts a
    LEFT JOIN holds h ON h.account = a.account AND h.state = 'open'
    LEFT JOIN hold_shares s ON s.hold_key = h.hold_key
    GROUP BY a.account, a.held_ms HAVING a.held_ms <> CAST(COALESCE(SUM(s.remaining_ms), 0) AS BIGINT)
    ORDER BY a.account"""
HOLD_REMAINING = "SELECT CAST(COALESCE(SUM(remaining_ms), 0) AS BIGINT) FROM hold_shares WHERE hold_key = ?"

HOLD_GET = """SELECT hold_key, account, workflow, user_name, run_id, amount_ms, state, created_at, closed_at
    FROM holds WHERE hold_key = ?"""
HOLD_INSERT = """INSERT INTO holds (hold_key, account, workflow, user_name, run_id, amount_ms, state, created_at)
    VALUES (?, ?, ?, ?, ?, ?, 'open', ?)"""
# Ordered by an expression, not the column: SQLite otherwise walks the whole primary key (every
# hold, open or not: 872,000 after a 1,000,000-job reconcile) to skip a sort, where holds_open
# lists the few thousand open ones; the order is the same (hold_key || '' is hold_key).
HOLDS_OPEN = """SELECT hold_key, created_at FROM holds WHERE state = 'open' AND hold_key LIKE ? ESCAPE '\\'
    ORDER BY hold_key || ''"""
HOLD_CLOSE = "UPDATE holds SET state = ?, closed_at = ? WHERE hold_key = ? AND state = 'open'"
HOLD_LEASE = "UPDATE holds SET lease_until = ? WHERE hold_key = ? AND state = 'open'"
# (HOLDS_LAPSED_OF, an admission's, reads LEASE_INDEX: only its account's open leases that lapsed)
HOLDS_LAPSED = """SELECT hold_key, account, lease_until FROM holds
    WHERE state = 'open' AND lease_until IS NOT NULL AND lease_until < ? ORDER BY hold_key"""
HOLDS_LAPSED_OF = """SELECT hold_key, account, lease_until FROM holds
    WHERE state = 'open' AND lease_until IS NOT NULL AND lease_until < ? AND account = ? ORDER BY hold_key"""
# Open holds for `slurmgov holds`: what each still reserves, its owner, age and lease.
HOLDS_LIST = """SELECT h.hold_key, h.account, h.workflow, h.user_name, h.run_id, h.amount_ms,
    CAST(COALESCE(SUM(s.remaining_ms), 0) AS BIGINT), h.created_at, h.lease_until
    FROM holds h LEFT JOIN hold_shares s ON s.hold_key = h.hold_key
    WHERE h.state = 'open' GROUP BY h.hold_key, h.account, h.workflow, h.user_name, h.run_id, h.amount_ms,
    h.created_at, h.lease_until ORDER BY h.created_at, h.hold_key"""
SHARES_GET = "SELECT step, amount_ms, remaining_ms FROM hold_shares WHERE hold_key = ? ORDER BY step"
# A job changed in Slurm (job_modify): its hold is re-priced and may move to another account.
HOLD_MOVE = "UPDATE holds SET account = ? WHERE hold_key = ?"
HOLD_SET_AMOUNT = "UPDATE holds SET amount_ms = ? WHERE hold_key = ?"
HOLD_SET_RUN_ID = "UPDATE holds SET run_id = ? WHERE hold_key = ?"
SHARE_INSERT = "INSERT INTO hold_shares (hold_key, step, amount_ms, remaining_ms) VALUES (?, ?, ?, ?)"
SHARE_GET = "SELECT amount_ms, remaining_ms FROM hold_shares WHERE hold_key = ? AND step = ?"
SHARE_SET = "UPDATE hold_shares SET remaining_ms = ? WHERE hold_key = ? AND step = ?"
SHARES_RELEASE = "UPDATE hold_shares SET remaining_ms = 0 WHERE hold_key = ?"

CHARGE_COLUMNS = """charge_key, hold_key, account, workflow, step, attempt, user_name, gpu_type,
    gpu_seconds, weight, amount_ms, started, ended, status, recorded_at"""
# Reads add the tokens (version 6) after the columns bulk imports write (CHARGE_ROWS: no tokens).
CHARGE_READ = f"{CHARGE_COLUMNS}, prompt_tokens, completion_tokens"
CHARGE_GET = f"SELECT {CHARGE_READ} FROM charges WHERE charge_key = ?"
CHARGE_INSERT = f"INSERT INTO charges ({CHARGE_READ}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
CHARGES_ALL = f"SELECT {CHARGE_READ} FROM charges ORDER BY ended, charge_key"
CHARGES_OF_HOLD = f"SELECT {CHARGE_READ} FROM charges WHERE hold_key = ? ORDER BY ended, charge_key"

# ``by`` picks the grouping column from this fixed map, never from user text.
USAGE_COLUMNS = {"account": "account", "workflow": "workflow", "step": "step", "user": "user_name",
                 "gpu_type": "gpu_type"}


# Bulk reads and writes (reconcile, imports): keys are tested with Dialect.in_keys.
HOLDS_BULK = """SELECT hold_key, account, workflow, user_name, run_id, state, created_at FROM holds
    WHERE {keys}"""
SHARES_BULK = "SELECT hold_key, step, amount_ms, remaining_ms FROM hold_shares WHERE {keys}"
CHARGES_BULK = """SELECT charge_key, hold_key, step, attempt, amount_ms, gpu_seconds, status FROM charges
    WHERE {keys}"""
HOLD_ROWS = ("holds", ("hold_key", "account", "workflow", "user_name", "run_id", "amount_ms", "state", "created_at"))
SHARE_ROWS = ("hold_shares", ("hold_key", "step", "amount_ms", "remaining_ms"))
CHARGE_ROWS = ("charges", tuple(c.strip() for c in CHARGE_COLUMNS.split(",")))
SHARES_RELEASE_BULK = "UPDATE hold_shares SET remaining_ms = 0 WHERE {keys}"
# what closing these holds releases, by account (only open holds hold anything)
HELD_OF_BULK = """SELECT h.account, CAST(COALESCE(SUM(s.remaining_ms), 0) AS BIGINT) FROM hold_shares s
    JOIN holds h ON h.hold_key = s.hold_key WHERE h.state = 'open' AND {keys} GROUP BY h.account"""
HOLDS_CLOSE_BULK = "UPDATE holds SET state = ?, closed_at = ? WHERE state = 'open' AND {keys}"
CHARGE_SECONDS_BULK = "SELECT charge_key, hold_key, gpu_seconds FROM charges WHERE {keys}"
CHARGE_STATUS_BULK = "SELECT hold_key, charge_key, status FROM charges WHERE {keys}"
# reconcile's first sieve (Ledger.charge_signatures): how many charges a key range holds, counted
# no further than a limit; then, a page at a time in key order, each one's "charge_key SEP hold_key
# SEP GPU-seconds rounded" (from 1e15 on "-", which no row's signature has: a charge of weight 0 may
# hold any number, and PostgreSQL refuses a BIGINT out of range), the page's signatures joined into one text ({agg}: the dialect's
# text_agg; one string crosses into Python, not a row object per charge). The first page starts
# at the range's low key, each next one after the last key seen.
CHARGES_IN_RANGE = """SELECT COUNT(*) FROM (SELECT 1 FROM charges WHERE charge_key >= ? AND charge_key <= ?
    LIMIT ?) AS r"""
_SIGNATURES = """SELECT {agg}(s, CAST(? AS TEXT)) FROM (SELECT charge_key || CAST(? AS TEXT) || hold_key
    || CAST(? AS TEXT) || CASE WHEN gpu_seconds < 1e15 THEN CAST(CAST(round(gpu_seconds) AS BIGINT) AS TEXT)
    ELSE '-' END AS s FROM charges
    WHERE charge_key %s ? AND charge_key <= ? ORDER BY charge_key LIMIT ?) AS p"""
CHARGE_SIGNATURES_FIRST = _SIGNATURES % ">="
CHARGE_SIGNATURES_NEXT = _SIGNATURES % ">"


def insert_sql(table: str, cols: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


def copy_sql(table: str, cols: tuple[str, ...]) -> str:
    return f"COPY {table} ({', '.join(cols)}) FROM STDIN"


def usage_sql(by: str, some_accounts: bool = False) -> str:
    """``some_accounts``: only the accounts of one more parameter (a key set, Dialect.in_keys)."""
    col = USAGE_COLUMNS[by]
    # tokens: summed over the charges that reported them (SUM ignores NULL), with how many did
    return f"""SELECT {col}, SUM(gpu_seconds), CAST(SUM(amount_ms) AS BIGINT), COUNT(*),
        CAST(SUM(prompt_tokens) AS BIGINT), CAST(SUM(completion_tokens) AS BIGINT),
        SUM(CASE WHEN prompt_tokens IS NULL AND completion_tokens IS NULL THEN 0 ELSE gpu_seconds END)
        FROM charges WHERE ended >= ? AND ended < ?{" AND {keys}" if some_accounts else ""}
        GROUP BY {col} ORDER BY {col}"""
