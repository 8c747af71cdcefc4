"""The GPU-budget ledger: budgets, holds placed at admission, charges for what ran, an audit trail.

Money rules (each written once, in ``rules``, and called from here, from ``Bulk`` and from the
governor's batches). Amounts enter as weighted GPU-hours (floats) and are stored as integer
weighted GPU-milliseconds, rounded half up once at entry, so every sum is exact. For an account:

    available = budget - charged in the current period - still held by open holds

A charge belongs to the period of its end time; open holds count against the current period.
What open holds still hold is kept per account as a running total (``accounts.held_ms``, schema
5), moved in the same transaction by every write to an open hold's shares (``Ledger._held``,
``Bulk._add_held``), so an admission costs the same however many holds are open;
``check_held`` compares it with the sum over the open holds.
Periods are UTC: monthly 'YYYY-MM', quarterly 'YYYY-Qn', or 'none' (one period, 'all').

Every mutating method is one transaction and idempotent by its key, so a caller that crashed
and replays cannot hold or charge twice. Admission takes the write lock before it reads the
balance, so concurrent admissions (threads or processes, each with its own Ledger) can never
hold more than the budget.

Bulk work (reconcile of a million sacct jobs, imports) goes through ``Ledger.bulk``: the same
rules (the same ``rules`` functions), row by row, but read with a few key-set queries and
written with executemany (COPY on PostgreSQL), in transactions of many rows (``Bulk``).

Backends: ``sqlite:///ABSOLUTE/PATH`` (the standard library), and ``postgresql://`` or
``postgres://`` URLs (psycopg 3, the ``postgres`` extra) for sites whose login nodes and
controller share one ledger. The logic here is shared; the SQL and what differs between the
engines (how a writer locks, see ledger_schema) is in ledger_schema.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import math
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from slurmgov.errors import (
    InputError,
    LedgerError,
    LedgerUnavailable,
)
from slurmgov.ledger import rules as R
from slurmgov.ledger import schema as S
from slurmgov.ledger.cpu import is_cpu_account
from slurmgov.ledger.rules import (  # the rules, written once (rules.py); re-exported where callers use them
    CLOSED_STATES,
    MAX_GPU_HOURS,
    MS_PER_H,
    PERIOD_KINDS,
    period_of,
)
from slurmgov.ledger.rules import FOREVER as _FOREVER
from slurmgov.ledger.rules import amount_ms as _ms
from slurmgov.ledger.rules import epoch as _epoch
from slurmgov.ledger.rules import hours as _h

__all__ = ["BULK_ROWS", "CLOSED_STATES", "DEFAULT_WAIT_S", "MAX_GPU_HOURS", "MS_PER_H", "PERIOD_KINDS", "Balance",
           "Bulk", "ChargeRow", "Hold", "HoldRow", "Ledger", "UserBalance", "period_of"]

USAGE_BY = tuple(S.USAGE_COLUMNS)
DEFAULT_WAIT_S = 30.0  # how long a transaction waits, in all, for a lock another writer holds
NOTICE_S = 1.0  # after this long waiting, on_wait hears that (and who) the ledger is busy
_RETRIES = 8  # transactions a server aborted (serialization, deadlock, key race): retried this many times
_ENGINE_WAIT_MAX_S = 86_400.0  # one engine wait at most (an infinite --wait waits in day-long turns)
_CONNECT_TIMEOUT_S = 10  # PostgreSQL, unless the URL says connect_timeout=
_PG_URL = re.compile(r"postgres(ql)?://", re.IGNORECASE)
_PG_HINT = "pip install 'slurmgov[postgres]'"
# key sets and rows as bulk statements take them (SQLite: one JSON text): plain lists of strings
# and numbers, so no walk for circular references; no spaces
_JSON = json.JSONEncoder(check_circular=False, separators=(",", ":")).encode
_BULK_KEYS = 50_000  # keys per bulk lookup query: one round trip for many keys
BULK_ROWS = 50_000  # rows per import transaction: other writers wait for at most one batch

SIGNATURE_SEP = "\x1f"  # between a charge signature's fields: in no charge key, hold key or number
_PAGE_SEP = "\x1e"  # between the signatures of a page
_SIGNATURE_PAGE = 250_000  # charges per page of signatures: one text of ~20 MB


def signature(charge_key: str, hold_key: str, gpu_seconds: int) -> str:
    """What Ledger.charge_signatures gives a charge of ``gpu_seconds`` (a whole number)."""
    return f"{charge_key}{SIGNATURE_SEP}{hold_key}{SIGNATURE_SEP}{gpu_seconds}"


@dataclass(frozen=True)
class Balance:
    account: str
    period: str
    budget_h: float  # this period's: the standing budget, plus what rolled over, or 0 once expired
    charged_h: float
    held_h: float
    available_h: float
    carried_h: float = 0.0  # rolled over from the previous period (included in budget_h)
    expires: str | None = None  # ISO date (UTC) after which the account has no budget


@dataclass(frozen=True)
class UserBalance:
    """A capped user in an account: their cap per period (the account's period), what they were
    charged in the account this period, what their open holds in it hold, and what is left."""
    account: str
    user: str
    period: str
    cap_h: float
    charged_h: float
    held_h: float
    available_h: float  # cap - charged - held (may be < 0 once charges ran past it)


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


def _locked(e: sqlite3.Error) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


def _one_line(msg: object) -> str:
    return "; ".join(line.strip() for line in str(msg).splitlines() if line.strip()) or "unknown error"


class _Driver:
    """What differs between the DB-API modules themselves (the SQL differences are a Dialect)."""

    def __init__(self, error: type[Exception], secrets: tuple[str, ...] = ()):
        self.error, self._secrets = error, secrets

    def retryable(self, e: Exception) -> bool:
        raise NotImplementedError

    def lock_wait(self, e: Exception) -> bool:
        """Whether ``e`` says a lock another connection holds was not free in time (retried until
        the ledger's wait runs out, rather than a number of times)."""
        raise NotImplementedError

    def in_tx(self, conn) -> bool:
        raise NotImplementedError

    def message(self, e: Exception) -> str:
        """One line, and never a password from the URL."""
        msg = _one_line(e)
        for secret in self._secrets:
            msg = msg.replace(secret, "***")
        return msg


class _SqliteDriver(_Driver):
    def __init__(self):
        super().__init__(sqlite3.Error)

    def retryable(self, e: Exception) -> bool:
        return isinstance(e, sqlite3.OperationalError) and _locked(e)

    def lock_wait(self, e: Exception) -> bool:
        return self.retryable(e)

    def in_tx(self, conn) -> bool:
        return conn.in_transaction


class _PgDriver(_Driver):
    def __init__(self, psycopg, secrets: tuple[str, ...]):
        super().__init__(psycopg.Error, secrets)
        self._pg = psycopg
        e = psycopg.errors
        # 40001/40P01: a server set to stricter isolation may abort us; 55P03: lock_timeout ran out;
        # 23505: two first-time inserts of one key raced, and the retry sees the winner's row.
        self._retry = (e.SerializationFailure, e.DeadlockDetected, e.LockNotAvailable, e.UniqueViolation)

    def retryable(self, e: Exception) -> bool:
        return isinstance(e, self._retry)

    def lock_wait(self, e: Exception) -> bool:
        return isinstance(e, self._pg.errors.LockNotAvailable)

    def in_tx(self, conn) -> bool:
        return conn.info.transaction_status != self._pg.pq.TransactionStatus.IDLE

    def message(self, e: Exception) -> str:
        diag = getattr(e, "diag", None)
        primary = diag.message_primary if diag is not None else None
        if primary:  # a server error: its first line, not the PL/pgSQL CONTEXT that follows
            e = primary
        return super().message(e)


def _pg_where(url: str) -> tuple[str, tuple[str, ...]]:
    """The URL as safe to show (no password) and the passwords it carries, to scrub from errors."""
    secrets: set[str] = set()
    try:
        parts = urlsplit(url)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        user, _, pw = userinfo.partition(":")
        if pw:
            secrets |= {pw, unquote(pw)}
        query = []
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            if k == "password":
                secrets.add(v)
            else:
                query.append((k, v))
        where = f"{parts.scheme}://{user}{at}{hosts}{parts.path}"
        if query:
            where += "?" + urlencode(query, safe="/=,:")
    except ValueError:
        where = "postgresql://(unparseable URL)"
    return where, tuple(sorted((s for s in secrets if s), key=len, reverse=True))


def _pg_holders(rows) -> str | None:
    """PG_LOCK_HOLDERS' rows in words: 'pid 123 (alice from 10.0.0.5, slurmgov, in a transaction for 12 s)'."""
    said = []
    for pid, user, addr, app, age in rows:
        about = [f"{user or '?'} from {addr or 'this host'}"]
        if app:
            about.append(app)
        if age is not None:
            about.append(f"in a transaction for {age:.0f} s")
        said.append(f"pid {pid} ({', '.join(about)})")
    return f"held by {' and '.join(said)}" if said else None


_SHM_WRITE_LOCK = "120"  # SQLite's unix VFS locks byte 120 of the -shm file while a WAL writer writes


def _inode(path: str) -> str | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"


def _sqlite_holder(path: str) -> str | None:
    """Which process holds the write lock of the WAL database at ``path``, or the writers' lock
    file next to it (_WriterLock), from Linux's /proc/locks (a process on another host, through
    a network file system, is not there)."""
    shm, side = _inode(path + "-shm"), _inode(path + WRITER_LOCK_SUFFIX)
    with open("/proc/locks") as f:
        for line in f:  # "1: POSIX  ADVISORY  WRITE 4242 fe:00:2146356 120 120" ("->" marks waiters)
            p = line.split()
            if len(p) < 8 or p[3] != "WRITE":
                continue
            if (p[1] == "POSIX" and p[5] == shm and p[6] == _SHM_WRITE_LOCK) or (p[1] == "FLOCK" and p[5] == side):
                return f"held by {_process(int(p[4]))}"
    return None


WRITER_LOCK_SUFFIX = "-writers"  # SQLite: the file next to the database whose flock writers queue on
_FLOCK_STEP_S = 0.001  # a writer waiting for the writers' lock tries again this often ...
_FLOCK_POLL_S = 0.05  # ... for this long, then waits in the kernel (a helper thread) for the rest


class _WriterLock:
    """SQLite: writers queue on an exclusive flock of a file next to the database before BEGIN
    IMMEDIATE. A writer that finds SQLite's own lock taken polls for it (its busy handler sleeps
    1, 2, 5 ... up to 100 ms between tries), so under many processes the lock is mostly won by
    whoever just let it go and one unlucky writer can wait seconds (bench/ledger_load.py, 16
    processes: max 0.9-1.3 s, some attempts over 1 s). Here a waiter tries every millisecond,
    so no writer sleeps long past the lock's release (same bench: max 55-90 ms, at about a
    quarter less throughput than the unfair handler: the lock changes hands every transaction;
    see bench/RESULTS.md). SQLite's lock stays the one that guards the data (a writer that does
    not take this file, such as the sqlite3 shell, is still waited for as before); the flock
    only orders slurmgov's own writers, and goes with its holder's file or process.

    A wait longer than _FLOCK_POLL_S (a bulk import, a stopped process) blocks in the kernel in
    a helper thread, which closes the file if the wait was given up (``wait_s``, or the notice
    due after NOTICE_S) by the time it gets the lock. Where the file cannot be opened (a
    read-only directory) or locked, writers go straight to SQLite's lock."""

    def __init__(self, path: str):
        self.path = path + WRITER_LOCK_SUFFIX
        self.usable = True

    def acquire(self, timeout: float) -> int | None:
        """An fd holding the lock (close it to release), None where there is no usable lock file;
        sqlite3.OperationalError('database is locked') after ``timeout`` seconds, as SQLite's own
        busy wait ends, so that the ledger's wait loop treats both alike."""
        if not self.usable:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            self.usable = False
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        except OSError:  # a file system without flock
            os.close(fd)
            self.usable = False
            return None
        # A short wait (the usual one: another writer's transaction) polls every millisecond;
        # a long one (a bulk import, a stopped process) waits in the kernel, in a helper thread.
        start = time.monotonic()
        while (waited := time.monotonic() - start) < min(timeout, _FLOCK_POLL_S):
            time.sleep(_FLOCK_STEP_S)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                pass
        timeout -= waited
        state: list[bool | None] = [None]  # None: waiting; True: got it; False: given up on
        mutex, done = threading.Lock(), threading.Event()

        def wait() -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                got = True
            except OSError:
                got = False
            with mutex:
                if state[0] is None and got:
                    state[0] = True
                else:
                    state[0] = False
                    os.close(fd)
            done.set()

        threading.Thread(target=wait, name="slurmgov ledger writer lock", daemon=True).start()
        done.wait(timeout)
        with mutex:
            if state[0]:
                return fd
            state[0] = False  # the thread closes the file once its flock returns
        raise sqlite3.OperationalError("database is locked (another slurmgov writer holds the writers' lock)")


def _process(pid: int) -> str:
    """'pid 4242 (alice: slurmgov budget grant chem-ai 5)', as much of it as /proc shows."""
    if pid == os.getpid():
        return f"pid {pid} (this process, another connection)"
    try:
        import pwd

        user = pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name
    except (OSError, KeyError):
        user = None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = " ".join(f.read().decode(errors="replace").replace("\0", " ").split())  # one line
    except OSError:
        cmd = ""
    cmd = cmd if len(cmd) <= 80 else cmd[:79] + "…"
    about = ": ".join(x for x in (user, cmd) if x)
    return f"pid {pid}" + (f" ({about})" if about else "")


def _charge_dict(r) -> dict:
    (key, hold_key, account, workflow, step, attempt, user, gpu_type, gpu_s, weight, ms, started, ended,
     status, recorded_at, prompt_tokens, completion_tokens) = r
    return {"charge_key": key, "hold_key": hold_key, "account": account, "workflow": workflow, "step": step,
            "attempt": attempt, "user": user, "gpu_type": gpu_type, "gpu_seconds": gpu_s, "weight": weight,
            "charged_h": _h(ms), "started": started, "ended": ended, "status": status, "recorded_at": recorded_at,
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}


def _tokens(value, what: str) -> int | None:
    """A token count the ledger can store: None (not reported) or a whole number in 0 .. MAX_MS."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= S.MAX_MS:
        raise InputError(f"{what}: {value!r} is not a whole number of tokens from 0 to {S.MAX_MS}")
    return value


def per_1k_tokens(gpu_seconds: float, tokens: int | None) -> float | None:
    """GPU-seconds per 1,000 tokens (None when no tokens were reported)."""
    return gpu_seconds * 1000 / tokens if tokens else None


class Ledger:
    """One connection to one ledger. Safe to share between threads (calls are serialised);
    for parallel writers give each process its own Ledger.

    ``wait_s``: how long a transaction waits for locks other writers hold before it gives up
    with LedgerUnavailable ('... is busy'); ``on_wait(text)``: told once per wait that passes
    NOTICE_S, with who holds the lock where the database can tell."""

    def __init__(self, conn, where: str, dialect: S.Dialect = S.SQLITE, driver: _Driver | None = None,
                 wait_s: float = DEFAULT_WAIT_S, on_wait: Callable[[str], None] | None = None):
        self._conn, self._where, self._d = conn, where, dialect
        self._drv = driver or _SqliteDriver()
        self._lock = threading.RLock()
        if not (isinstance(wait_s, (int, float)) and wait_s >= 0):  # NaN fails too
            raise InputError(f"ledger wait must be a number of seconds >= 0, got {wait_s!r}")
        self.wait_s, self.on_wait = float(wait_s), on_wait
        self._engine_wait_ms: int | None = None  # the lock wait the connection has now (None: not set yet)
        self._wait_now = 0.0  # seconds the current try may wait for a lock (_engine_wait)
        self._writers: _WriterLock | None = None  # SQLite: set by open()

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, wait_s: float = DEFAULT_WAIT_S, on_wait: Callable[[str], None] | None = None) -> Ledger:
        """Open (creating if needed) the ledger at ``sqlite:///ABSOLUTE/PATH``, or on PostgreSQL at
        ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB`` (also ``postgres://``, and any libpq URL
        such as ``postgresql:///DB?host=/run/postgresql`` for a unix socket). ``wait_s`` and
        ``on_wait``: see the class."""
        waiting = {"wait_s": wait_s, "on_wait": on_wait}
        if isinstance(url, str) and _PG_URL.match(url):
            return cls._open_postgres(url, waiting)
        if not isinstance(url, str) or not url.startswith("sqlite:///"):
            if isinstance(url, str) and url.split(":", 1)[0].lower() in ("postgres", "postgresql"):
                # never echo a URL that may carry a password
                raise LedgerError("ledger URL is not of the form postgresql://USER@HOST:PORT/DB")
            raise LedgerError(f"ledger URL {url!r} is not of the form sqlite:///ABSOLUTE/PATH "
                              f"or postgresql://USER@HOST:PORT/DB")
        path = Path("/" + url[len("sqlite://"):].lstrip("/"))  # sqlite:////abs gives //abs: one slash
        if not path.name:
            raise LedgerError(f"ledger URL {url!r} names no file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # timeout 0: the ledger sets the lock wait itself, before each transaction (_retry)
            conn = sqlite3.connect(str(path), timeout=0, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise LedgerUnavailable(f"ledger {path}: cannot open: {e}") from None
        ledger = cls._started(conn, str(path), S.SQLITE, None, waiting, _WriterLock(str(path)))
        return ledger

    @classmethod
    def _open_postgres(cls, url: str, waiting: dict) -> Ledger:
        try:
            import psycopg
        except ImportError:
            raise LedgerError(f"PostgreSQL ledgers need psycopg 3, which is not installed: {_PG_HINT}") from None
        where, secrets = _pg_where(url)
        try:
            info = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error:
            raise LedgerError(f"ledger URL {where} is not a valid postgresql://USER@HOST:PORT/DB URL") from None
        if info.get("password"):
            secrets = tuple(sorted({*secrets, str(info["password"])}, key=len, reverse=True))
        drv = _PgDriver(psycopg, secrets)
        kw: dict[str, Any] = {} if "connect_timeout" in info else {"connect_timeout": _CONNECT_TIMEOUT_S}
        try:
            # autocommit: the ledger issues BEGIN/COMMIT itself, as it does on SQLite
            conn = psycopg.connect(url, autocommit=True, application_name="slurmgov", **kw)
        except psycopg.Error as e:
            raise LedgerUnavailable(f"ledger {where}: cannot connect: {drv.message(e)}") from None
        return cls._started(conn, where, S.POSTGRES, drv, waiting)

    @classmethod
    def _started(cls, conn, where: str, dialect: S.Dialect, driver: _Driver | None, waiting: dict,
                 writers: _WriterLock | None = None) -> Ledger:
        """A Ledger on ``conn`` with its session set up and schema checked; the connection is
        closed if that fails, so a bad ledger never leaks one."""
        try:
            ledger = cls(conn, where, dialect, driver, **waiting)
            ledger._writers = writers
            ledger._setup()
        except BaseException:
            conn.close()
            raise
        return ledger

    def _setup(self) -> None:
        for stmt in self._d.session:
            self._retry(lambda stmt=stmt: self._x(stmt))
        # Read first: a ledger that is up to date is opened without the write lock, so readers
        # (budget show, usage) never queue behind a writer.
        if not self._read(self._schema_current):
            self._write(self._ensure_schema)

    def _schema_current(self) -> bool:
        if self._one(self._d.has_table, ("schema_version",)) is None:
            return False
        version = self._one(S.VERSION_GET)[0]
        if version is not None and version > S.SCHEMA_VERSION:
            raise LedgerError(f"ledger {self._where} has schema version {version}, newer than this "
                              f"slurmgov understands ({S.SCHEMA_VERSION}); upgrade slurmgov")
        return version == S.SCHEMA_VERSION

    def _ensure_schema(self) -> None:
        if self._d.schema_lock:
            self._x(self._d.schema_lock)
        if self._one(self._d.has_table, ("schema_version",)) is None:
            self._x(S.VERSION_TABLE)
        version = self._one(S.VERSION_GET)[0]
        if version is not None and version > S.SCHEMA_VERSION:
            raise LedgerError(f"ledger {self._where} has schema version {version}, newer than this "
                              f"slurmgov understands ({S.SCHEMA_VERSION}); upgrade slurmgov")
        if version is None:
            for stmt in S.ddl(self._d):
                self._x(stmt)
            self._x(S.VERSION_SET, (S.SCHEMA_VERSION,))
        elif version < S.SCHEMA_VERSION:
            if version < 2:
                for stmt in S.attribution_ddl(self._d):
                    self._x(stmt)
            if version < 3:
                for table, column, stmt in S.terms_ddl(self._d):
                    if self._one(self._d.has_column, (table, column)) is None:
                        self._x(stmt)
            if version < 4:
                for table, column, stmt in S.lease_ddl(self._d):
                    if self._one(self._d.has_column, (table, column)) is None:
                        self._x(stmt)
            if version < 5:
                for table, column, stmt in S.held_ddl(self._d):
                    if self._one(self._d.has_column, (table, column)) is None:
                        self._x(stmt)
                self._x(S.HELD_FILL)  # from the open holds, under the write lock: exact from here on
                self._x(S.LEASE_INDEX)
            if version < 6:
                for table, column, stmt in S.tokens_ddl(self._d):
                    if self._one(self._d.has_column, (table, column)) is None:
                        self._x(stmt)
            if version < 7:
                for table, column, stmt in S.role_ddl(self._d):
                    if self._one(self._d.has_column, (table, column)) is None:
                        self._x(stmt)
            if version < 8:
                for stmt in S.user_caps_ddl(self._d):
                    self._x(stmt)
            if version < 9:
                self._x(S.OPEN_INDEX_DROP)
                self._x(S.OPEN_INDEX)
                for stmt in (*S.CHARGE_INDEX_DROPS, *S.charged_ddl(self._d), *S.CHARGED_CLEAR):
                    self._x(stmt)
                # from the charges, under the write lock: exact from here on (each charge's month by
                # the one rule, in Python, not by an engine's date functions)
                self._add_charged(_charged_deltas(self._x(S.CHARGES_MONTHS)))
            self._x(S.VERSION_SET, (S.SCHEMA_VERSION,))

    def disconnect(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()

    # ---- transactions --------------------------------------------------------------------

    def _x(self, q: str, params: tuple = ()):
        q = self._d.sql(q)
        return self._conn.execute(q, params) if params else self._conn.execute(q)

    def _one(self, q: str, params: tuple = ()):
        return self._x(q, params).fetchone()

    def _retry(self, fn):
        """Run ``fn``; while a lock it needs is held elsewhere, run it again until ``wait_s`` has
        passed (the engine itself waits for the lock, so no turn is lost in sleeps); after
        NOTICE_S tell ``on_wait`` once. A transaction the server aborted (serialization failure,
        deadlock, a raced first insert) is run again up to _RETRIES times, with jittered backoff."""
        start, waited, aborted = time.monotonic(), 0.0, 0
        told = self.on_wait is None
        holder: str | None = None
        while True:
            left = self.wait_s - waited
            try:
                # until the notice is due the engine waits only that long, so that it comes on time
                self._engine_wait(left if told else min(left, NOTICE_S - waited))
                return fn()
            except self._drv.error as e:
                if not self._drv.retryable(e):
                    raise LedgerUnavailable(f"ledger {self._where}: {self._drv.message(e)}") from None
                waited = time.monotonic() - start
                if self._drv.lock_wait(e):
                    if waited >= self.wait_s:
                        holder = holder or self._holder()
                        raise LedgerUnavailable(f"{self._busy(holder)}; gave up after waiting "
                                                f"{self.wait_s:g} s") from None
                    if not told and waited >= NOTICE_S and self.on_wait is not None:
                        told, holder = True, self._holder()
                        self.on_wait(self._busy(holder))
                    pause = 0.01  # the engine has waited already; this only keeps an instant 'busy' from spinning
                else:
                    aborted += 1
                    if aborted >= _RETRIES:
                        raise LedgerUnavailable(f"ledger {self._where}: {self._drv.message(e)}") from None
                    pause = min(1.0, 0.02 * 2 ** aborted)
                time.sleep(min(pause * random.uniform(0.5, 1.0), max(0.0, self.wait_s - waited)))
                waited = time.monotonic() - start

    def _engine_wait(self, seconds: float) -> None:
        """Make the engine wait up to ``seconds`` (at least 1 ms: 0 means forever on PostgreSQL)
        for a lock, before it reports the database busy; a statement only when that changes."""
        ms = max(1, math.ceil(min(seconds, _ENGINE_WAIT_MAX_S) * 1000))
        self._wait_now = ms / 1000
        if ms != self._engine_wait_ms:
            self._x(self._d.lock_wait.format(ms=ms))
            self._engine_wait_ms = ms

    def _busy(self, holder: str | None) -> str:
        return f"ledger {self._where} is busy: " + (holder or "another connection holds its write lock")

    def _holder(self) -> str | None:
        """Who holds the ledger's lock, in words, where the database can tell; never raises."""
        try:
            if self._d.row_locks:  # PostgreSQL
                return _pg_holders(self._x(S.PG_LOCK_HOLDERS, (
                    list(S.TABLES), S.SCHEMA_LOCK_KEY >> 32, S.SCHEMA_LOCK_KEY & 0xFFFFFFFF)).fetchall())
            return _sqlite_holder(self._where)
        except (OSError, ValueError, TypeError, self._drv.error):  # best effort: never fail a wait over it
            return None

    def _tx(self, fn, begin: str):
        writers = self._writers if begin == self._d.begin_write else None

        def once():
            t0 = time.monotonic()
            fd = None if writers is None else writers.acquire(self._wait_now)
            if fd is not None and (took := time.monotonic() - t0) > 0.01:
                # a long wait for the writers' lock counts against this try's wait for SQLite's
                self._engine_wait(max(0.001, self._wait_now - took))
            try:
                return in_tx()
            finally:
                if fd is not None:
                    os.close(fd)  # after COMMIT or ROLLBACK: the next writer may begin

        def in_tx():
            self._x(begin)
            try:
                out = fn()
                self._x("COMMIT")
                return out
            except BaseException:
                try:
                    if self._drv.in_tx(self._conn):
                        self._conn.execute("ROLLBACK")
                except self._drv.error:
                    pass  # a broken connection: the original error says more
                raise

        with self._lock:
            return self._retry(once)

    def _write(self, fn):
        return self._tx(fn, self._d.begin_write)

    def _read(self, fn):
        return self._tx(fn, self._d.begin_read)  # one snapshot, so budget/charged/held agree

    def _lock_account(self, account: str) -> None:
        """PostgreSQL: lock ``account``'s budget row until the transaction ends (see ledger_schema).
        SQLite: nothing to do, BEGIN IMMEDIATE already locked the whole database."""
        if self._d.row_locks:
            self._x(S.ACCOUNT_LOCK, (account,))

    def _lock_hold(self, hold_key: str, also: str | None = None) -> None:
        """Lock the account of ``hold_key`` (and ``also``), if the hold exists. reprice can move
        a hold: its account is read again under the lock until it stays put."""
        if not self._d.row_locks:
            return
        locked: set[str] = set()
        while True:
            row = self._one(S.HOLD_ACCOUNT, (hold_key,))
            want = ({row[0]} if row else set()) | ({also} if also else set())
            if want <= locked:
                return
            for account in sorted(want - locked):  # one order, as transfer locks
                self._lock_account(account)
            locked |= want

    # ---- budgets -------------------------------------------------------------------------

    def _account(self, account: str):
        row = self._one(S.ACCOUNT_GET, (account,))
        if row is None:
            raise R.no_budget(account)
        return row

    def _put_budget(self, account, ms, kind, actor, reason, action, overwrite: bool, terms=None, role=None) -> None:
        """``terms``: (rollover %, expiry epoch or None) to set; None keeps the account's. ``role``:
        what the actor acted as (admin, operator, manager), for the audit trail."""
        if ms > S.MAX_MS:  # a grant or transfer onto a budget near the limit
            raise R.too_much(f"budget of {account}", ms, " would be")
        self._lock_account(account)
        now = time.time()
        old = self._one(S.ACCOUNT_GET, (account,))
        if old is not None and not overwrite:
            return
        if old is None:
            self._x(S.ACCOUNT_INSERT, (account, ms, kind, now))
        else:
            self._x(S.ACCOUNT_UPDATE, (ms, kind, now, account))
        if terms is not None:
            self._x(S.ACCOUNT_SET_TERMS, (terms[0], terms[1], account))
        pct, expires = self._one(S.ACCOUNT_TERMS, (account,))
        at = datetime.fromtimestamp(now, timezone.utc).isoformat()
        self._x(S.AUDIT_INSERT, (at, actor, account, action, old and old[1], ms, old and old[2], kind, reason,
                                 R.terms_text(pct, expires), role))

    def ensure_account(self, account: str, gpu_hours: float, period_kind: str = "monthly",
                       actor: str = "site-config", rollover_pct: int = 0, expires=None,
                       reason: str = "seeded from site config") -> bool:
        """Seed ``account``'s budget unless it already has one (an existing budget wins); the seed
        goes on the audit trail with ``actor`` and ``reason``. True where this call seeded it."""
        ms, kind = _ms(gpu_hours, f"budget of {account}"), R.check_kind(period_kind)
        terms = R.check_terms(account, rollover_pct, expires)
        if self._read(lambda: self._one(S.ACCOUNT_GET, (account,))) is not None:
            return False  # seeded before: no need to queue for the write lock (the write checks again)

        def tx() -> bool:
            self._lock_account(account)
            if self._one(S.ACCOUNT_GET, (account,)) is not None:
                return False  # another process seeded it since the read
            self._put_budget(account, ms, kind, actor, reason, "seed", False, terms)
            return True

        return self._write(tx)

    # ---- per-user caps inside an account -------------------------------------------------

    def _user_cap(self, account: str, user: str, ts: float) -> tuple[str, int, int, int] | None:
        """(period key, cap, charged, held) in ms of ``user`` in ``account`` at ``ts``, or None
        where the user has no cap there. The period is the account's."""
        row = self._one(S.USER_CAP_GET, (account, user))
        if row is None:
            return None
        kind = self._one(S.ACCOUNT_BALANCE, (account,))[1]
        key = period_of(kind, ts)[0]
        charged = self._one(S.USER_CHARGED_IN, (account, user, *R.period_months(kind, ts)))[0]
        held = self._one(S.USER_HELD, (account, user))[0]
        return key, row[0], charged, held

    def _check_user_cap(self, account: str, user: str | None, need: int, ts: float, what: str) -> None:
        """BudgetRefused (rules.check_user_cap) where ``user`` has a cap in ``account`` that does
        not leave ``need``; nothing for a user without one (one primary-key read)."""
        if user is None or (got := self._user_cap(account, user, ts)) is None:
            return
        _, cap, charged, held = got
        R.check_user_cap(account, user, cap, R.user_available(cap, charged, held), need, what)

    def check_admission(self, account: str, user: str | None, gpu_hours: float, now=None,
                        what: str = "workflow") -> None:
        """Whether an admission of ``gpu_hours`` by ``user`` in ``account`` would pass, without
        holding anything (BudgetRefused, or UnknownAccount, where not): the account's budget
        (rules.check_admit), then the user's cap. For work admitted elsewhere (the submit hook
        holds a Slurm job when it is submitted): ``slurmgov run`` on a Slurm site checks first."""
        need, ts = _ms(gpu_hours, "admission"), _epoch(now, "now")

        def tx() -> None:
            R.check_admit(account, R.available(*self._balance_ms(account, ts)[1:]), need)
            self._check_user_cap(account, user, need, ts, what)

        self._read(tx)

    def set_user_cap(self, account: str, user: str, gpu_hours: float | None, actor: str, reason: str = "",
                     role: str | None = None) -> None:
        """Cap what ``user`` may spend of ``account``'s budget per period (charged in the period plus
        still held) at ``gpu_hours``; None removes the cap. Audited with who (as which ``role``) and why."""
        if not actor:
            raise InputError(f"user cap of {user} in {account}: say who is changing it (actor)")
        if not isinstance(user, str) or not user.strip() or any(c in user for c in "\t\r\n"):
            raise InputError(f"user cap in {account}: {user!r} is not a user name")
        cap = None if gpu_hours is None else _ms(gpu_hours, f"cap of user {user} in {account}")

        def tx() -> None:
            self._lock_account(account)
            _, budget, kind = self._account(account)[:3]
            old = self._one(S.USER_CAP_GET, (account, user))
            old_cap = None if old is None else old[0]
            if old_cap == cap:
                return  # nothing changes: nothing to audit
            now = time.time()
            if cap is None:
                self._x(S.USER_CAP_DELETE, (account, user))
            elif old is None:
                self._x(S.USER_CAP_INSERT, (account, user, cap, now))
            else:
                self._x(S.USER_CAP_UPDATE, (cap, now, account, user))
            at = datetime.fromtimestamp(now, timezone.utc).isoformat()
            self._x(S.AUDIT_INSERT, (at, actor, account, "user-cap", budget, budget, kind, kind, reason or "",
                                     R.cap_terms(user, cap, old_cap), role))

        self._write(tx)

    def _user_balance(self, account: str, user: str, ts: float) -> UserBalance | None:
        got = self._user_cap(account, user, ts)
        if got is None:
            return None
        key, cap, charged, held = got
        return UserBalance(account, user, key, _h(cap), _h(charged), _h(held), _h(R.user_available(cap, charged, held)))

    def user_balance(self, account: str, user: str, now=None) -> UserBalance | None:
        """``user``'s cap in ``account`` as user_balances gives it, or None where they have none."""
        ts = _epoch(now, "now")
        return self._read(lambda: self._user_balance(account, user, ts))

    def user_balances(self, now=None) -> list[UserBalance]:
        """Every capped user, by account and user: cap, charged and held this period, available."""
        ts = _epoch(now, "now")

        def tx() -> list[UserBalance]:
            rows = self._x(S.USER_CAPS_ALL).fetchall()
            return [u for account, user, _ in rows if (u := self._user_balance(account, user, ts)) is not None]

        return self._read(tx)

    def set_budget(self, account: str, gpu_hours: float, period_kind: str | None = None, actor: str = "",
                   reason: str = "", rollover_pct: int | None = None, expires=None, clear_expiry: bool = False,
                   role: str | None = None) -> None:
        """Set ``account``'s budget per period; who (as which ``role``), when, what and why go to the
        audit trail.

        What is not given stays as the account has it (a new account: monthly, no rollover, no
        expiry): ``period_kind``; ``rollover_pct``, last period's unused budget carried into each
        period up to this share of the budget; ``expires``, a time after which the account has no
        budget (``clear_expiry`` removes it)."""
        if not actor:
            raise InputError(f"set_budget of {account}: say who is changing it (actor)")
        ms = _ms(gpu_hours, f"budget of {account}")
        kind = None if period_kind is None else R.check_kind(period_kind)
        if rollover_pct is not None:
            R.check_terms(account, rollover_pct, None)
        when = None if expires is None else _epoch(expires, "expires")

        def tx():
            self._lock_account(account)
            row, terms = self._one(S.ACCOUNT_GET, (account,)), self._one(S.ACCOUNT_TERMS, (account,))
            k = kind or (row[2] if row else "monthly")
            if rollover_pct and k == "none":
                raise InputError(f"budget of {account}: rollover needs a monthly or quarterly period")
            pct = rollover_pct if rollover_pct is not None else (terms[0] if terms else 0)
            exp = None if clear_expiry else (when if when is not None else (terms[1] if terms else None))
            self._put_budget(account, ms, k, actor, reason or "", "set", True, R.check_terms(account, pct, exp), role)

        self._write(tx)

    def grant(self, account: str, gpu_hours: float, actor: str, reason: str = "", role: str | None = None,
              daily_limit_h: float | None = None) -> None:
        """Add ``gpu_hours`` to ``account``'s budget, read and written in one transaction.
        ``daily_limit_h``: the most ``actor`` acting as ``role`` may grant and transfer in all over
        any 24 hours (authz.daily_limit), checked in the same transaction."""
        if not actor:
            raise InputError(f"grant to {account}: say who is granting (actor)")
        add = _ms(gpu_hours, f"grant to {account}")

        def tx():
            self._check_daily_limit(actor, role, add, daily_limit_h, f"grant {gpu_hours:g} GPU-h to account {account}")
            self._lock_account(account)
            _, budget, kind = self._account(account)[:3]
            self._put_budget(account, budget + add, kind, actor, reason or "", "grant", True, role=role)

        self._write(tx)

    def transfer(self, source: str, dest: str, gpu_hours: float, actor: str, reason: str = "", now=None,
                 role: str | None = None, daily_limit_h: float | None = None) -> None:
        """Move ``gpu_hours`` of budget from ``source`` to ``dest`` in one transaction; only what
        ``source`` has available (not charged, not held) can move. ``daily_limit_h``: as grant's."""
        if not actor:
            raise InputError(f"transfer from {source}: say who is moving it (actor)")
        if source == dest:
            raise InputError(f"transfer: source and destination are both {source}")
        amount, ts = _ms(gpu_hours, f"transfer from {source}"), _epoch(now, "now")

        def tx():
            self._check_daily_limit(actor, role, amount, daily_limit_h,
                                    f"transfer {gpu_hours:g} GPU-h from account {source} to account {dest}")
            for account in sorted((source, dest)):  # one lock order: two opposite transfers never deadlock
                self._lock_account(account)
            _, budget, charged, held = self._balance_ms(source, ts)
            if (avail := R.available(budget, charged, held)) < amount:
                raise InputError(f"account {source}: {_h(avail):.1f} GPU-h available, "
                                 f"cannot transfer {_h(amount):.1f}")
            _, src_budget, src_kind = self._account(source)
            _, dst_budget, dst_kind = self._account(dest)
            why = reason or ""
            self._put_budget(source, src_budget - amount, src_kind, actor, why, f"transfer to {dest}", True, role=role)
            self._put_budget(dest, dst_budget + amount, dst_kind, actor, why, f"transfer from {source}", True,
                             role=role)

        self._write(tx)

    def _check_daily_limit(self, actor: str, role: str | None, add: int, limit_h: float | None, what: str) -> None:
        """In a write transaction: PermissionDenied where ``actor``'s grants and transfers as
        ``role`` over the last 24 hours, with ``add`` more, would pass ``limit_h``. PostgreSQL:
        the actor's changes take turns first (an advisory lock on the name), so two at once cannot
        both fit under the limit; SQLite's write transaction already serialises them."""
        if limit_h is None:
            return
        if self._d.row_locks:
            self._x(S.PG_ACTOR_LOCK, (f"slurmgov actor {actor}",))
        since = datetime.fromtimestamp(time.time() - R.DAY_S, timezone.utc).isoformat()
        (moved,) = self._one(S.AUDIT_MOVED_SINCE, (actor, role or "", since))
        R.check_daily_limit(actor, role or "", int(moved), add, _ms(limit_h, "daily limit"), what)

    def audit(self, accounts=None) -> list[dict]:
        """The audit trail, oldest first; ``accounts``: only these accounts' rows (None: all)."""
        cols = ("seq", "at", "actor", "account", "action", "old_budget_h", "new_budget_h",
                "old_period", "new_period", "reason", "terms", "role")
        rows = self._read(lambda: self._x(S.AUDIT_LIST).fetchall())
        out = [dict(zip(cols, r)) for r in rows if accounts is None or r[3] in accounts]
        for d in out:
            d["old_budget_h"] = None if d["old_budget_h"] is None else _h(d["old_budget_h"])
            d["new_budget_h"] = _h(d["new_budget_h"])
        return out

    # ---- balances ------------------------------------------------------------------------

    def _balance_ms(self, account: str, ts: float) -> tuple[str, int, int, int]:
        key, budget, charged, held, _, _ = self._balance_full(account, ts)
        return key, budget, charged, held

    def _balance_full(self, account: str, ts: float):
        """(period key, this period's budget, charged, held, carried, expiry) in milliseconds.

        This period's budget: 0 once the account has expired; otherwise the standing budget
        plus the rollover: what the previous period left unused (its standing budget minus its
        charges), up to ``rollover_pct`` of the standing budget, not compounding (a period's
        own carry never rolls over again)."""
        row = self._one(S.ACCOUNT_BALANCE, (account,))
        if row is None:
            raise R.no_budget(account)
        budget, kind, pct, expires = row
        key, start, _ = period_of(kind, ts)
        charged = self._one(S.CHARGED_IN, (account, *R.period_months(kind, ts)))[0]
        held = self._one(S.HELD_GET, (account,))[0]  # the running total: one row, however many holds
        carried = 0
        if R.expired(expires, ts):
            budget = 0
        elif (window := R.rollover_window(kind, pct, start)) is not None and self._existed_before(account, start):
            months = (R.charge_month(window[0]), R.charge_month(window[1]))
            carried = R.carried(budget, pct, self._one(S.CHARGED_IN, (account, *months))[0])
            budget += carried
        return key, budget, charged, held, carried, expires

    def _existed_before(self, account: str, ts: float) -> bool:
        """Only a period the account lived through can leave budget to roll over."""
        first = self._one(S.ACCOUNT_SINCE, (account,))[0]
        return first is not None and datetime.fromisoformat(first).timestamp() < ts

    def _balance(self, account: str, ts: float) -> Balance:
        key, budget, charged, held, carried, expires = self._balance_full(account, ts)
        exp = None if expires is None else datetime.fromtimestamp(expires, timezone.utc).date().isoformat()
        return Balance(account, key, _h(budget), _h(charged), _h(held), _h(R.available(budget, charged, held)),
                       _h(carried), exp)

    def balance(self, account: str, now=None) -> Balance:
        ts = _epoch(now, "now")
        return self._read(lambda: self._balance(account, ts))

    def account_names(self) -> list[str]:
        """Every account the ledger has a budget for, sorted (GPU accounts and ``cpu:`` ones)."""
        return self._read(lambda: [a for (a,) in self._x(S.ACCOUNT_NAMES).fetchall()])

    def gpu_balances(self, now=None) -> list[Balance]:
        """balances() of the GPU budgets alone: without the CPU budgets' accounts (ledger/cpu.py)."""
        return [b for b in self.balances(now) if not is_cpu_account(b.account)]

    def balances(self, now=None) -> list[Balance]:
        ts = _epoch(now, "now")
        return self._read(lambda: [self._balance(a, ts) for (a,) in self._x(S.ACCOUNT_NAMES).fetchall()])

    # ---- holds ---------------------------------------------------------------------------

    def _hold(self, hold_key: str) -> Hold:
        row = self._one(S.HOLD_GET, (hold_key,))
        if row is None:
            raise R.missing_hold(hold_key)
        key, account, workflow, user, run_id, amount, state, _, _ = row
        shares = {step: rem for step, _, rem in self._x(S.SHARES_GET, (hold_key,)).fetchall()}
        return Hold(key, account, workflow, _h(amount), _h(sum(shares.values())), state,
                    {s: _h(ms) for s, ms in shares.items()}, user, run_id)

    def hold(self, hold_key: str) -> Hold:
        return self._read(lambda: self._hold(hold_key))

    def find_hold(self, hold_key: str) -> Hold | None:
        """The hold, or None where there is none."""
        return self._read(lambda: None if self._one(S.HOLD_ACCOUNT, (hold_key,)) is None else self._hold(hold_key))

    def open_holds(self, prefix: str = "") -> list[tuple[str, float]]:
        """(hold_key, created_at) of every open hold whose key starts with ``prefix``."""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return self._read(lambda: [tuple(r) for r in self._x(S.HOLDS_OPEN, (pattern,)).fetchall()])

    def charge_signatures(self, low: str, high: str, limit: int) -> set[str] | None:
        """``signature(charge_key, hold_key, gpu_seconds)`` of every charge whose key lies in
        [``low``, ``high``], GPU-seconds rounded to a whole number; None if there are more than
        ``limit`` of them (reading them all would cost more than looking up the few wanted).

        A row whose signature is in the set has its charge, on that hold, within half a GPU-second:
        set lookups in C sieve out a million such rows; the rest are checked exactly. Charges are
        never rewritten or deleted, so what this read saw stays true for a later transaction."""
        def read() -> set[str] | None:
            (n,) = self._x(S.CHARGES_IN_RANGE, (low, high, limit + 1)).fetchone()
            if n > limit:
                return None
            out: set[str] = set()
            q, after = S.CHARGE_SIGNATURES_FIRST, low
            while True:
                (text,) = self._x(self._d.aggregated(q), (_PAGE_SEP, SIGNATURE_SEP, SIGNATURE_SEP, after, high,
                                                          _SIGNATURE_PAGE)).fetchone()
                page = text.split(_PAGE_SEP) if text else []
                out.update(page)
                if len(page) < _SIGNATURE_PAGE:
                    return out
                q, after = S.CHARGE_SIGNATURES_NEXT, max(page).split(SIGNATURE_SEP, 1)[0]
        return self._read(read)

    def admit(self, hold_key: str, account: str, workflow: str, shares: dict[str, float], user: str | None = None,
              run_id: str | None = None, now=None, enforce: bool = True, lease_s: float | None = None) -> Hold:
        """Hold sum(shares) against ``account``, or raise BudgetRefused. Replaying ``hold_key`` returns
        the existing hold and holds nothing more. ``enforce=False`` records a hold that was already
        admitted elsewhere (by the submit hook inside slurmctld): the job exists, so must its hold.
        ``lease_s``: the hold is a lease its holder renews (``renew``) within that many seconds,
        or the next command that opens the ledger releases it (``release_lapsed``). Lapsed
        leases of ``account`` are released first: a dead run's money never refuses new work."""
        want = R.shares_ms(shares)
        need, ts = sum(want.values()), _epoch(now, "now")
        R.check_lease(hold_key, lease_s)

        def tx() -> Hold:
            self._lock_account(account)  # before reading the balance
            self._release_lapsed(ts, account)
            old = self._one(S.HOLD_GET, (hold_key,))
            had = None if old is None else (old[1], old[2], {
                step: amount for step, amount, _ in self._x(S.SHARES_GET, (hold_key,)).fetchall()})
            if R.admit_replay(hold_key, had, account, workflow, want):
                return self._hold(hold_key)
            avail = R.available(*self._balance_ms(account, ts)[1:])  # also: no budget, no hold (enforced or not)
            if enforce:
                R.check_admit(account, avail, need)
                self._check_user_cap(account, user, need, ts, "workflow")
            self._insert_hold(hold_key, account, workflow, want, user, run_id, ts)
            if lease_s is not None:
                self._x(S.HOLD_LEASE, (ts + lease_s, hold_key))
            return self._hold(hold_key)

        return self._write(tx)

    # ---- leases: a run's hold lives while its run does -----------------------------------

    def renew(self, hold_key: str, lease_s: float, now=None) -> bool:
        """Extend ``hold_key``'s lease to ``lease_s`` from now; False when the hold is no longer
        open (it was released: the run should stop, its money is no longer reserved)."""
        ts = _epoch(now, "now")

        def tx() -> bool:
            self._lock_hold(hold_key)
            return self._x(S.HOLD_LEASE, (ts + lease_s, hold_key)).rowcount == 1

        return self._write(tx)

    def _release_lapsed(self, ts: float, account: str | None = None) -> list[str]:
        released = []
        # an admission asks only for its own account's: one indexed read beside the balance it sums
        lapsed = (self._x(S.HOLDS_LAPSED, (ts,)) if account is None
                  else self._x(S.HOLDS_LAPSED_OF, (ts, account))).fetchall()
        for acct in sorted({r[1] for r in lapsed}):  # one order, as transfer locks
            self._lock_account(acct)
        for key, acct, until in lapsed:
            self._release_hold(key, acct, "failed", ts)
            self._audit_note(acct, "slurmgov", "release", f"hold {key}: its run stopped renewing its lease "
                             f"(lapsed {max(0.0, ts - until):.0f} s ago); what it charged stays charged")
            released.append(key)
        return released

    def release_lapsed(self, now=None) -> list[str]:
        """Release every open hold whose lease lapsed (its run was killed, or its host died):
        what its steps charged stays charged, the rest is released. The hold keys released."""
        ts = _epoch(now, "now")
        if not self._read(lambda: self._x(S.HOLDS_LAPSED, (ts,)).fetchall()):
            return []  # the common case stays a read: no write lock for every command
        return self._write(lambda: self._release_lapsed(ts))

    def release(self, hold_key: str, actor: str, reason: str, role: str | None = None) -> Hold:
        """An admin releases an open hold (a run that cannot be stopped any other way); the
        release, with who and why, goes on the audit trail. Closing it again changes nothing."""
        if not reason.strip():
            raise InputError(f"releasing hold {hold_key} needs a reason (--reason): it goes on the audit trail")

        def tx() -> Hold:
            self._lock_hold(hold_key)
            h = self._hold(hold_key)
            if R.closes(h.state):
                self._release_hold(hold_key, h.account, "cancelled", time.time())
                self._audit_note(h.account, actor, "release", f"hold {hold_key} released "
                                    f"({h.remaining_h:.3f} GPU-h): {reason}", role)
            return self._hold(hold_key)

        return self._write(tx)

    def holds_open(self) -> list[dict]:
        """Every open hold: key, account, workflow, user, run id, amount and still-held GPU-h,
        when it was made and when its lease lapses (None: no lease, e.g. a Slurm job's hold)."""
        rows = self._read(lambda: self._x(S.HOLDS_LIST).fetchall())
        return [{"hold_key": k, "account": a, "workflow": w, "user": u, "run_id": r, "amount_h": _h(amt),
                 "held_h": _h(held), "created_at": c, "lease_until": lease}
                for k, a, w, u, r, amt, held, c, lease in rows]

    def _insert_hold(self, hold_key: str, account: str, workflow: str, want: dict[str, int], user: str | None,
                     run_id: str | None, ts: float) -> None:
        self._x(S.HOLD_INSERT, (hold_key, account, workflow, user, run_id, sum(want.values()), ts))
        for step, ms in want.items():
            self._x(S.SHARE_INSERT, (hold_key, step, ms, ms))
        self._held(account, sum(want.values()))

    def _held(self, account: str, delta: int) -> None:
        """Move ``account``'s running total of what its open holds hold (schema version 5) by
        ``delta`` ms, in the transaction that changed the holds: every write to an open hold's
        shares calls this (Bulk too); ``check_held`` finds one that did not."""
        if delta:
            self._x(S.HELD_ADD, (delta, account))

    def _add_charged(self, deltas: tuple[dict[tuple[str, str], int], dict[tuple[str, str, str], int]]) -> None:
        """Move the accounts' and users' running totals of what they were charged per month (schema
        version 9) by the charges this transaction recorded (_charged_deltas): every charge insert
        calls this (Bulk too)."""
        accounts, users = deltas
        for q, rows in ((S.ACCOUNT_CHARGED_ADD, [(*k, ms) for k, ms in sorted(accounts.items())]),
                        (S.USER_CHARGED_ADD, [(*k, ms) for k, ms in sorted(users.items())])):
            if rows:
                self._conn.cursor().executemany(self._d.sql(q), rows)

    def user_charged(self) -> list[tuple[str, str, str, float]]:
        """(account, user, month, GPU-h charged) of every user's running total (schema version 9)."""
        return [(a, u, m, _h(ms)) for a, u, m, ms in self._read(lambda: self._x(S.USER_CHARGED_ALL).fetchall())]

    def _release_hold(self, hold_key: str, account: str, state: str, ts: float) -> None:
        """Close the open hold ``hold_key`` of ``account``: every share released, the total too."""
        self._held(account, -self._one(S.HOLD_REMAINING, (hold_key,))[0])
        self._x(S.SHARES_RELEASE, (hold_key,))
        self._x(S.HOLD_CLOSE, (state, ts, hold_key))

    def check_held(self) -> list[tuple[str, float, float]]:
        """(account, running total, sum over its open holds) in GPU-h for each account whose
        running held total disagrees with its open holds; empty when the ledger is consistent."""
        rows = self._read(lambda: self._x(S.HELD_CHECK).fetchall())
        return [(a, _h(t), _h(s)) for a, t, s in rows]

    def reprice(self, hold_key: str, mod_id: str, account: str, delta_h: float, actor: str = "slurmgov",
                override: bool = False, reason: str = "", run_id: str | None = None,
                create: dict | None = None) -> Hold:
        """Re-price an open hold after its job changed, in one transaction; replaying ``mod_id``
        changes nothing (its share ``mod:<mod_id>`` records that it was applied).

        The hold moves to ``account``; ``delta_h`` > 0 adds a share ``mod:<mod_id>`` of that much,
        < 0 releases that much from what the hold still holds (never below 0). ``run_id``: the
        hold's new run_id (None: kept). A closed hold holds nothing: only the change is recorded.
        A missing hold is admitted (enforce=False) with ``create`` (admit's workflow, shares, user,
        run_id, now) at ``account``, instead of being re-priced; without ``create`` it is an error.
        ``override``: an operator passed the budget; the audit trail says who (``actor``) and why."""
        delta = R.reprice_ms(hold_key, delta_h)
        step = R.mod_step(mod_id)
        born = None
        if create is not None:
            born = (create.get("workflow", "sbatch"), {**R.shares_ms(create["shares"]), step: 0}, create.get("user"),
                    create.get("run_id"), _epoch(create.get("now"), "now"))

        def tx() -> Hold:
            self._lock_hold(hold_key, also=account)
            self._account(account)  # a budget to move to
            if self._one(S.HOLD_ACCOUNT, (hold_key,)) is None:
                if born is None:
                    raise R.missing_hold(hold_key)
                self._insert_hold(hold_key, account, born[0], born[1], born[2], born[3], born[4])
            elif self._one(S.SHARE_GET, (hold_key, step)) is None:  # else: a replay
                self._reprice(hold_key, step, account, delta, run_id)
            else:
                return self._hold(hold_key)
            if override:
                self._audit_note(account, actor, "override", reason)
            return self._hold(hold_key)

        return self._write(tx)

    def _reprice(self, hold_key: str, step: str, account: str, delta: int, run_id: str | None) -> None:
        old = self._one(S.HOLD_GET, (hold_key,))
        if not R.closes(old[6]):  # closed: it released everything, nothing to re-price
            self._x(S.SHARE_INSERT, (hold_key, step, 0, 0))
            return
        if old[1] != account:
            self._x(S.HOLD_MOVE, (account, hold_key))
        if run_id is not None:
            self._x(S.HOLD_SET_RUN_ID, (run_id, hold_key))
        before = self._one(S.HOLD_REMAINING, (hold_key,))[0]
        added = max(0, delta)
        self._x(S.SHARE_INSERT, (hold_key, step, added, added))
        self._x(S.HOLD_SET_AMOUNT, (max(0, old[5] + delta), hold_key))
        release = -min(0, delta)
        for share, _, remaining in self._x(S.SHARES_GET, (hold_key,)).fetchall():
            if release <= 0:
                break
            take = min(remaining, release)
            if take:
                self._x(S.SHARE_SET, (remaining - take, hold_key, share))
                release -= take
        # what the hold held leaves its old account; what it holds now counts on the new one
        self._held(old[1], -before)
        self._held(account, self._one(S.HOLD_REMAINING, (hold_key,))[0])

    def _audit_note(self, account: str, actor: str, action: str, reason: str, role: str | None = None) -> None:
        """An ``action`` on the append-only audit trail that leaves the budget as it is: an operator
        passing the budget ("override"), a hold released other than by its run's end ("release")."""
        _, budget, kind = self._account(account)[:3]
        pct, expires = self._one(S.ACCOUNT_TERMS, (account,))
        at = datetime.now(timezone.utc).isoformat()
        self._x(S.AUDIT_INSERT, (at, actor, account, action, budget, budget, kind, kind, reason,
                                 R.terms_text(pct, expires), role))

    def settle_step(self, hold_key: str, step: str) -> None:
        """Release what is left of ``step``'s share (its work is over)."""
        def tx():
            self._lock_hold(hold_key)
            h = self._hold(hold_key)
            row = self._one(S.SHARE_GET, (hold_key, step))
            if row is None:
                raise LedgerError(f"hold {hold_key} has no share for step {step}")
            if row[1]:
                self._x(S.SHARE_SET, (0, hold_key, step))
                if R.closes(h.state):  # only open holds count in the running total
                    self._held(h.account, -row[1])

        self._write(tx)

    def close(self, hold_key: str, state: str) -> Hold:
        """Release every remaining share and close the hold; closing again keeps the first state."""
        R.check_close_state(state)

        def tx() -> Hold:
            self._lock_hold(hold_key)
            h = self._hold(hold_key)
            if R.closes(h.state):
                self._release_hold(hold_key, h.account, state, time.time())
            return self._hold(hold_key)

        return self._write(tx)

    # ---- charges -------------------------------------------------------------------------

    def charge(self, charge_key: str, hold_key: str, step: str, attempt: int, gpu_seconds: float, weight: float,
               gpu_type: str | None, started, ended, status: str, user: str | None = None,
               workflow: str | None = None, prompt_tokens: int | None = None,
               completion_tokens: int | None = None) -> dict:
        """Charge gpu_seconds x weight / 3600 weighted GPU-h for one attempt of ``step`` and draw
        the same amount from its share of the hold. Replaying ``charge_key`` changes nothing.
        ``prompt_tokens``/``completion_tokens``: what the attempt reported (metered, not priced)."""
        ms = R.charge_ms(charge_key, gpu_seconds, weight)
        t0 = None if started is None else _epoch(started, "started")
        t1 = _epoch(ended, "ended")
        tokens = (_tokens(prompt_tokens, "prompt_tokens"), _tokens(completion_tokens, "completion_tokens"))

        def tx() -> dict:
            self._lock_hold(hold_key)  # before the share is read, so no two charges lose an update
            old = self._one(S.CHARGE_GET, (charge_key,))
            if R.charge_replay(charge_key, old and R.charge_sig(old[1], old[4], old[5], old[10]),
                               R.charge_sig(hold_key, step, attempt, ms)):
                return _charge_dict(old)
            h = self._hold(hold_key)
            row = (charge_key, hold_key, h.account, workflow or h.workflow, step, attempt, user or h.user,
                   gpu_type, float(gpu_seconds), float(weight), ms, t0, t1, status, time.time(), *tokens)
            self._x(S.CHARGE_INSERT, row)
            self._add_charged(_charged_deltas([(row[2], row[6], t1, ms)]))
            share = self._one(S.SHARE_GET, (hold_key, step))
            if share is not None and (take := R.share_draw(h.state, share[1], ms)):
                self._x(S.SHARE_SET, (share[1] - take, hold_key, step))
                self._held(h.account, -take)
            return _charge_dict(row)

        return self._write(tx)

    def charges(self, hold_key: str | None = None) -> list[dict]:
        if hold_key is None:
            rows = self._read(lambda: self._x(S.CHARGES_ALL).fetchall())
        else:
            rows = self._read(lambda: self._x(S.CHARGES_OF_HOLD, (hold_key,)).fetchall())
        return [_charge_dict(r) for r in rows]

    def attribute(self, rows: list[dict]) -> int:
        """Record how settled allocation costs split across steps (and idle time); idempotent by
        ``attr_key``. Returns how many rows were new. Rows: attr_key, run_id, account, user,
        workflow, alloc, job_ids, step (None: idle), gpu_type, gpu_seconds, weight, ended, and
        prompt_tokens, completion_tokens where the step reported them."""
        now = time.time()
        for r in rows:  # checked before anything is written
            for k in ("prompt_tokens", "completion_tokens"):
                _tokens(r.get(k), k)

        def tx():
            new = 0
            for r in rows:
                if self._one(S.ATTR_GET, (r["attr_key"],)) is not None:
                    continue  # a replay: already recorded
                ms = _ms(r["gpu_seconds"] * r["weight"] / 3600, "attributed GPU-hours")
                self._x(S.ATTR_INSERT, (r["attr_key"], r["run_id"], r["account"], r.get("user"), r["workflow"],
                                        r["alloc"], r["job_ids"], r["step"], r.get("gpu_type"), r["gpu_seconds"],
                                        ms, _epoch(r["ended"], "ended"), now, r.get("prompt_tokens"),
                                        r.get("completion_tokens")))
                new += 1
            return new
        return self._write(tx)

    def attributions(self, run_id: str) -> list[dict]:
        cols = [c.strip() for c in S.ATTR_COLUMNS.split(",")]
        rows = self._read(lambda: self._x(S.ATTR_OF_RUN, (run_id,)).fetchall())
        out = []
        for r in rows:
            d = dict(zip(cols, r))
            d["cost_h"] = _h(d.pop("amount_ms"))
            d["user"] = d.pop("user_name")
            out.append(d)
        return out

    def _by_accounts(self, sql: str, lo: float, hi: float, accounts) -> list:
        """``sql``'s rows for ends in [lo, hi), of ``accounts`` only unless that is None."""
        if accounts is None:
            return self._read(lambda: self._x(sql, (lo, hi)).fetchall())
        keys = sorted(set(accounts))
        if not keys:
            return []
        q, param = self._d.in_keys(sql, "account"), json.dumps(keys) if self._d.keys_as_json else keys
        return self._read(lambda: self._x(q, (lo, hi, param)).fetchall())

    def waste(self, by: str = "account", since=None, until=None, accounts=None) -> list[dict]:
        """Pilot allocations' settled GPU time, split into what steps used and what sat idle;
        ``accounts``: only these accounts' allocations (None: all)."""
        if by not in S.WASTE_COLUMNS:
            raise InputError(f"waste by {by!r}: choose one of {', '.join(S.WASTE_COLUMNS)}")
        lo = -_FOREVER if since is None else _epoch(since, "since")
        hi = _FOREVER if until is None else _epoch(until, "until")
        rows = self._by_accounts(S.waste_sql(by, accounts is not None), lo, hi, accounts)
        return [{"key": k, "used_gpu_seconds": u, "idle_gpu_seconds": i, "used_h": _h(um), "idle_h": _h(im),
                 "idle_share": (i / (u + i)) if u + i else 0.0, "runs": n} for k, u, i, um, im, n in rows]

    def usage(self, by: str = "account", since=None, until=None, accounts=None) -> list[dict]:
        """Charges whose end time is in [since, until), grouped by account|workflow|step|user|gpu_type;
        ``accounts``: only these accounts' charges (None: all)."""
        if by not in S.USAGE_COLUMNS:
            raise InputError(f"usage by {by!r}: choose one of {', '.join(USAGE_BY)}")
        lo = -_FOREVER if since is None else _epoch(since, "since")
        hi = _FOREVER if until is None else _epoch(until, "until")
        rows = self._by_accounts(S.usage_sql(by, accounts is not None), lo, hi, accounts)
        # tokens: summed over the charges that reported any; per 1,000 of them, those charges' GPU-seconds
        return [{"key": k, "gpu_seconds": s or 0.0, "charged_h": _h(ms), "charges": n, "prompt_tokens": pt,
                 "completion_tokens": ct, "tokens": None if pt is None and ct is None else (pt or 0) + (ct or 0),
                 "gpu_s_per_1k_tokens": per_1k_tokens(ts or 0.0, (pt or 0) + (ct or 0))}
                for k, s, ms, n, pt, ct, ts in rows]

    # ---- bulk: reconcile and imports -----------------------------------------------------

    def bulk(self, fn):
        """Run ``fn(Bulk(...))`` as one write transaction, retried whole while the database is busy
        (so ``fn`` must build all its state inside)."""
        return self._write(lambda: fn(Bulk(self)))

    def _in_batches(self, rows, batch: int, method: str) -> int:
        rows, done = iter(rows), 0
        while chunk := list(itertools.islice(rows, batch)):
            done += len(self.bulk(lambda b, chunk=chunk: getattr(b, method)(chunk)))
        return done

    def import_holds(self, rows, batch: int = BULK_ROWS) -> int:
        """Record holds admitted elsewhere, in transactions of ``batch`` rows; rows as Bulk.admit_many.
        Idempotent by hold key. Returns how many were new."""
        return self._in_batches(rows, batch, "admit_many")

    def import_charges(self, rows, batch: int = BULK_ROWS) -> int:
        """Record charges, in transactions of ``batch`` rows; rows as Bulk.charge_many. Idempotent
        by charge key. Returns how many were new."""
        return self._in_batches(rows, batch, "charge_many")

    def close_holds(self, pairs, batch: int = BULK_ROWS) -> int:
        """Close many holds ((hold_key, state) pairs), the rules of close(). Returns how many were open."""
        return self._in_batches(pairs, batch, "close_many")


def _charged_deltas(charges) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str, str], int]]:
    """What (account, user, ended, amount_ms) charges add to the running totals (schema version 9):
    (account, month) -> ms and (account, user, month) -> ms, by rules.charge_month; a charge
    without a user adds to its account's only."""
    accounts: dict[tuple[str, str], int] = {}
    users: dict[tuple[str, str, str], int] = {}
    month = R.charge_month
    for account, user, ended, ms in charges:
        m = month(ended)
        accounts[account, m] = accounts.get((account, m), 0) + ms
        if user is not None:
            users[account, user, m] = users.get((account, user, m), 0) + ms
    return accounts, users


class HoldRow(NamedTuple):  # a tuple: bulk reads build hundreds of thousands of them
    """A hold as bulk reads return it (no shares): enough to decide what a batch must write."""
    hold_key: str
    account: str
    workflow: str
    user: str | None
    run_id: str | None
    state: str
    created_at: float


class ChargeRow(NamedTuple):
    charge_key: str
    hold_key: str
    step: str
    attempt: int
    amount_ms: int
    gpu_seconds: float
    status: str


class Bulk:
    """Many holds and charges, read and written inside ONE write transaction (``Ledger.bulk``).

    Each row goes through the same ``rules`` calls as admit(enforce=False), charge and close, in
    the order given (idempotent by key, one rounding, shares drawn down and released, the running
    held total moved); only the I/O differs: a few key-set queries to read, executemany
    (PostgreSQL: COPY and array updates) to write."""

    def __init__(self, ledger: Ledger):
        self._l = ledger
        self._locked: set[str] = set()
        self._accounts: set[str] | None = None
        # SQLite: BEGIN IMMEDIATE holds the whole database for this transaction, so a hold read in
        # it stays what the database has, but for what this Bulk writes itself (admit_many and
        # close_many keep this up to date): a batch's plan, its closes and its charges read each
        # hold once. PostgreSQL reads again: a hold may change until its account is locked.
        self._memo: dict[str, HoldRow] | None = None if ledger._d.row_locks else {}

    def _keyed(self, q: str, col: str, keys, before: tuple = ()):
        """Run ``q`` (with ``{keys}``) for ``col`` in ``keys``, a few thousand keys a statement;
        ``before``: the parameters ahead of the key set. Yields each statement's cursor."""
        keys, d = list(dict.fromkeys(keys)), self._l._d
        q = d.in_keys(q, col)
        for i in range(0, len(keys), _BULK_KEYS):
            part = keys[i:i + _BULK_KEYS]
            yield self._l._x(q, (*before, _JSON(part) if d.keys_as_json else part))

    def _select(self, q: str, col: str, keys) -> list:
        return [row for cur in self._keyed(q, col, keys) for row in cur.fetchall()]

    def _update(self, q: str, col: str, keys, before: tuple = ()) -> None:
        for _ in self._keyed(q, col, keys, before):
            pass

    def _many(self, q: str, rows: list) -> None:
        if rows:
            self._l._conn.cursor().executemany(self._l._d.sql(q), rows)

    def _insert(self, spec: tuple[str, tuple[str, ...]], rows: list) -> None:
        """Insert rows (tuples in ``spec``'s column order): COPY on PostgreSQL, else executemany."""
        if not rows:
            return
        if not self._l._d.copy_rows:
            return self._many(S.insert_sql(*spec), rows)
        with self._l._conn.cursor().copy(S.copy_sql(*spec)) as copy:
            for row in rows:
                copy.write_row(row)

    def _set_shares(self, rows: list[tuple[int, str, str]]) -> None:
        """(remaining_ms, hold_key, step) rows, as SHARE_SET."""
        q = self._l._d.shares_set_arrays
        if q is None or not rows:
            return self._many(S.SHARE_SET, rows)
        for i in range(0, len(rows), _BULK_KEYS):
            part = rows[i:i + _BULK_KEYS]
            self._l._x(q, ([r[1] for r in part], [r[2] for r in part], [r[0] for r in part]))

    def lock(self, accounts) -> bool:
        """PostgreSQL: lock these accounts' rows, in one order (as transfer does), and say True: rows
        read before may be stale. SQLite: BEGIN IMMEDIATE already locked everything; False."""
        if not self._l._d.row_locks:
            return False
        for account in sorted(set(accounts) - self._locked):
            self._l._x(S.ACCOUNT_LOCK, (account,))
            self._locked.add(account)
        return True

    def require_account(self, account: str) -> None:
        """Raise what admit raises for an account with no budget."""
        if self._accounts is None:
            self._accounts = {a for (a,) in self._l._x(S.ACCOUNT_NAMES).fetchall()}
        if account not in self._accounts:
            raise R.no_budget(account)

    def holds(self, keys) -> dict[str, HoldRow]:
        memo = self._memo
        if memo is None:
            return {r[0]: HoldRow._make(r) for r in self._select(S.HOLDS_BULK, "hold_key", keys)}
        keys = list(dict.fromkeys(keys))
        for r in self._select(S.HOLDS_BULK, "hold_key", [k for k in keys if k not in memo]):
            memo[r[0]] = HoldRow._make(r)
        return {k: h for k in keys if (h := memo.get(k)) is not None}

    def _locked_holds(self, keys) -> dict[str, HoldRow]:
        """The holds, read after their accounts are locked (read again until no hold has moved to
        an account not locked yet: reprice moves holds)."""
        keys = list(keys)
        holds = self.holds(keys)
        while self._l._d.row_locks and holds and not {h.account for h in holds.values()} <= self._locked:
            self.lock(h.account for h in holds.values())
            holds = self.holds(keys)  # READ COMMITTED: now we see what the last writer committed
        return holds

    def charges(self, keys) -> dict[str, ChargeRow]:
        return {r[0]: ChargeRow._make(r) for r in self._select(S.CHARGES_BULK, "charge_key", keys)}

    def charged(self, keys) -> dict[str, tuple[str, float]]:
        """charge_key -> (hold_key, gpu_seconds): what reconcile checks of each job's charge."""
        return {k: (h, s) for k, h, s in self._select(S.CHARGE_SECONDS_BULK, "charge_key", keys)}

    def unmatched_charges(self, rows: list[tuple[str, str, float]]) -> dict[int, tuple[str | None, float | None]]:
        """Check many (charge_key, hold_key, gpu_seconds) rows against the charges recorded: index ->
        (hold_key, gpu_seconds) as recorded ((None, None): no such charge) for each row whose charge
        is missing, on another hold or more than 1 GPU-second apart. The comparison runs in the
        database, so a million rows that agree cost no Python objects (reconcile's common case)."""
        d = self._l._d
        out: dict[int, tuple[str | None, float | None]] = {}
        if d.charge_check is None:
            had = self.charged(ck for ck, _, _ in rows)
            for n, (ck, hk, s) in enumerate(rows):
                got = had.get(ck)
                if got is None:
                    out[n] = (None, None)
                elif got[0] != hk or abs(got[1] - s) > 1:
                    out[n] = got
            return out
        for i in range(0, len(rows), _BULK_KEYS):
            part = rows[i:i + _BULK_KEYS]
            for n, hk, s in self._l._x(d.charge_check, (_JSON(part),)).fetchall():
                out[i + n] = (hk, s)
        return out

    def charge_statuses(self, hold_keys) -> dict[str, list[tuple[str, str]]]:
        """hold_key -> [(charge_key, status)] of every charge recorded against it."""
        out: dict[str, list[tuple[str, str]]] = {}
        for hk, ck, status in self._select(S.CHARGE_STATUS_BULK, "hold_key", hold_keys):
            out.setdefault(hk, []).append((ck, status))
        return out

    def _shares(self, hold_keys) -> dict[str, dict[str, list[int]]]:
        """hold_key -> step -> [amount_ms, remaining_ms]."""
        out: dict[str, dict[str, list[int]]] = {}
        for hk, step, amount, remaining in self._select(S.SHARES_BULK, "hold_key", hold_keys):
            out.setdefault(hk, {})[step] = [amount, remaining]
        return out

    def share_amounts(self, hold_keys) -> dict[str, dict[str, int]]:
        """hold_key -> {step: amount_ms as admitted}: what a replayed admission must repeat."""
        return {hk: {st: a for st, (a, _) in steps.items()} for hk, steps in self._shares(hold_keys).items()}

    def admit_many(self, rows) -> list[str]:
        """Record holds by admit(..., enforce=False)'s rules; rows are (hold_key, account, workflow,
        shares {step: GPU-h}, user, run_id, created_at). A replayed key adds nothing (and must
        repeat the original request). Returns the new hold keys."""
        rows = [(key, account, workflow, R.shares_ms(shares), user, run_id, _epoch(ts, "now"))
                for key, account, workflow, shares, user, run_id, ts in rows]
        self.lock({r[1] for r in rows})
        old = self.holds(r[0] for r in rows)
        old_shares = self._shares(old)
        had = {k: (h.account, h.workflow, {st: a for st, (a, _) in old_shares.get(k, {}).items()})
               for k, h in old.items()}
        holds: list[tuple] = []
        shares: list[tuple[str, str, int, int]] = []
        new: dict[str, tuple[str, str, dict[str, int]]] = {}
        for key, account, workflow, want, user, run_id, ts in rows:
            if R.admit_replay(key, had.get(key) or new.get(key), account, workflow, want):
                continue
            self.require_account(account)
            holds.append((key, account, workflow, user, run_id, sum(want.values()), "open", ts))
            shares.extend((key, st, ms, ms) for st, ms in want.items())
            new[key] = (account, workflow, want)
        self._insert(S.HOLD_ROWS, holds)
        self._insert(S.SHARE_ROWS, shares)
        if self._memo is not None:
            self._memo.update((r[0], HoldRow(r[0], r[1], r[2], r[3], r[4], r[6], r[7])) for r in holds)
        held: dict[str, int] = {}
        for account, _, want in new.values():
            held[account] = held.get(account, 0) + sum(want.values())
        self._add_held(held)
        return list(new)

    def _add_held(self, deltas: dict[str, int]) -> None:
        """Move each account's running held total (Ledger._held) by its delta, in this transaction."""
        self._many(S.HELD_ADD, [(d, a) for a, d in sorted(deltas.items()) if d])

    def charge_many(self, rows) -> list[str]:
        """Record charges by charge()'s rules; rows are dicts of charge()'s arguments (charge_key,
        hold_key, step, attempt, gpu_seconds, weight, gpu_type, started, ended, status, and
        optionally user, workflow). Returns the new charge keys."""
        prepared = [(r, R.charge_ms(r["charge_key"], r["gpu_seconds"], r["weight"])) for r in rows]
        holds = self._locked_holds(r["hold_key"] for r, _ in prepared)
        old = {k: (c.hold_key, c.step, c.attempt, c.amount_ms)
               for k, c in self.charges(r["charge_key"] for r, _ in prepared).items()}
        shares = self._shares(k for k, h in holds.items() if h.state == "open")  # a closed hold's draw nothing
        now, out, changed = time.time(), [], set()
        held: dict[str, int] = {}
        for r, ms in prepared:
            key, hk, step = r["charge_key"], r["hold_key"], r["step"]
            sig = R.charge_sig(hk, step, r["attempt"], ms)
            if R.charge_replay(key, old.get(key), sig):
                continue
            h = holds.get(hk)
            if h is None:
                raise R.missing_hold(hk)
            t0 = None if r["started"] is None else _epoch(r["started"], "started")
            out.append((key, hk, h.account, r.get("workflow") or h.workflow, step, r["attempt"],
                        r.get("user") or h.user, r["gpu_type"], float(r["gpu_seconds"]), float(r["weight"]), ms, t0,
                        _epoch(r["ended"], "ended"), r["status"], now))
            old[key] = sig
            share = shares.get(hk, {}).get(step)
            if share is not None and (take := R.share_draw(h.state, share[1], ms)):
                held[h.account] = held.get(h.account, 0) - take
                share[1] -= take
                changed.add((hk, step))
        self._insert(S.CHARGE_ROWS, out)
        self._l._add_charged(_charged_deltas((r[2], r[6], r[12], r[10]) for r in out))
        self._add_held(held)
        self._set_shares([(shares[hk][st][1], hk, st) for hk, st in sorted(changed)])
        return [row[0] for row in out]

    def close_many(self, pairs) -> list[str]:
        """Close holds by close()'s rules: (hold_key, state) pairs; the first close of a hold wins.
        Returns the keys that were open."""
        pairs = list(pairs)
        for _, state in pairs:
            R.check_close_state(state)
        holds, closing = self._locked_holds(k for k, _ in pairs), {}
        for key, state in pairs:
            h = holds.get(key)
            if h is None:
                raise R.missing_hold(key)
            if R.closes(h.state) and key not in closing:
                closing[key] = state
        now = time.time()
        released: dict[str, int] = {}
        for account, ms in self._select(S.HELD_OF_BULK, "s.hold_key", closing):  # one row per account and key set
            released[account] = released.get(account, 0) - ms
        self._add_held(released)
        self._update(S.SHARES_RELEASE_BULK, "hold_key", closing)
        for state in CLOSED_STATES:
            self._update(S.HOLDS_CLOSE_BULK, "hold_key", [k for k, st in closing.items() if st == state], (state, now))
        if self._memo is not None:
            # (_make, not _replace: 77,000 holds close in a 1,000,000-job reconcile)
            self._memo.update((k, HoldRow._make((*holds[k][:5], st, holds[k][6]))) for k, st in closing.items())
        return list(closing)
