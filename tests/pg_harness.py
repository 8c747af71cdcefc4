"""A throwaway PostgreSQL server for the test session.

``can_run()`` says whether one can be started here (installing Debian's ``postgresql`` package
when ``initdb`` is missing and we are root); the session fixture ``pg_url`` starts one and gives
``postgresql://ledger:PASSWORD@127.0.0.1:PORT/ledger_test``, and stops it at the end of the
session, registered for every test module in conftest.py.

The server: ``initdb`` into a fresh temp dir (as the ``postgres`` system user when we are root,
since PostgreSQL refuses to run as root), listening on a unix socket in that dir and on a free
127.0.0.1 port; local socket connections are trusted, TCP ones need the password (SCRAM). It
runs with fsync off: it holds nothing worth keeping. Its role ``ledger`` is not a superuser and
owns the database ``ledger_test``, as a site's ledger role would own its database.

Each test gets a clean ledger from ``fresh_url(pg_url)``: a new schema, named in the URL's
``options=-csearch_path=...``, so the ledger's tables land there and nowhere else.

Without a server (no binaries and no way to install them, or psycopg missing) ``pg_url`` skips
with the reason, except when CI=true: there no database test may skip, so it fails.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from urllib.parse import quote

import host_apt
import procs
import pytest

ROLE, PASSWORD, DBNAME = "ledger", "pg-harness-pw", "ledger_test"
START_TIMEOUT_S = 30  # bound on the server coming up and accepting connections
INSTALL_TIMEOUT_S = 900

_install_tried: tuple[bool, str] | None = None
_schemas = itertools.count()


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def find_bindir() -> str | None:
    """The directory holding initdb, pg_ctl and postgres, newest version first."""
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                       key=lambda p: [int(x) if x.isdigit() else 0 for x in p.split("/")[-2].split(".")],
                       reverse=True):
        if all(os.access(os.path.join(cand, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return cand
    initdb = shutil.which("initdb")
    if initdb:
        d = os.path.dirname(os.path.realpath(initdb))
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("pg_ctl", "postgres")):
            return d
    return None


def _install() -> tuple[bool, str]:
    """apt-get install Debian's postgresql (once per process)."""
    global _install_tried
    if _install_tried is not None:
        return _install_tried
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _install_tried = (False, "PostgreSQL is not installed (no initdb) and this is not root with "
                                 "apt-get to install it: apt-get install postgresql")
        return _install_tried
    try:
        r = host_apt.install("postgresql", timeout=INSTALL_TIMEOUT_S)
    except OSError as e:
        _install_tried = (False, f"apt-get install postgresql failed: {e}")
        return _install_tried
    if r.returncode != 0 or find_bindir() is None:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        _install_tried = (False, f"apt-get install postgresql failed (exit {r.returncode}): {tail}")
    else:
        _install_tried = (True, "installed")
    return _install_tried


def _run_as() -> list[str]:
    """The command prefix that runs the server's programs as a user PostgreSQL accepts."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def can_run() -> tuple[bool, str]:
    """Whether a throwaway server can be started here, and if not, why."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False, "psycopg is not installed: pip install 'slurmgov[postgres]'"
    if find_bindir() is None:
        ok, why = _install()
        if not ok:
            return False, why
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False, "running as root and there is no 'postgres' system user to run the server as"
        if not shutil.which("runuser"):
            return False, "running as root and there is no runuser to start the server as 'postgres'"
    return True, "ok"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One running throwaway server; ``stop()`` is idempotent."""

    def __init__(self):
        self.bindir = find_bindir()
        base = "/tmp" if os.path.isdir("/tmp") else None  # short: a socket path has ~100 bytes
        self.dir = tempfile.mkdtemp(prefix="slurmgov-pg-", dir=base)
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self.port: int | None = None
        self.pid: int | None = None  # the postmaster's, from postmaster.pid
        self.pid_ticks: int | None = None  # and when it started: its PID is free for others once it exits
        self._proc: subprocess.Popen | None = None  # runuser (as root) or the postmaster itself
        self._admin = None
        os.chmod(self.dir, 0o700)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    def _bin(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    def _sh(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(_run_as() + args, capture_output=True, text=True, timeout=timeout,
                              cwd=self.dir, env={**os.environ, "LC_ALL": "C", "LANG": "C"})

    def start(self) -> None:
        pwfile = os.path.join(self.dir, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        r = self._sh([self._bin("initdb"), "-D", self.data, "-U", "postgres", "--no-sync", "--no-locale",
                      "-E", "UTF8", "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"],
                     timeout=120)
        os.unlink(pwfile)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()[-500:]}")
        for _attempt in range(3):  # another process may take the free port before the server binds it
            self.port = _free_port()
            # The server is our (grand)child, not pg_ctl's orphan, so that its exit is reaped.
            log = open(self.log, "ab")
            try:
                self._proc = subprocess.Popen(
                    _run_as() + [self._bin("postgres"), "-D", self.data, "-k", self.dir, "-p", str(self.port),
                                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                                 "-c", "max_connections=100", "-c", "shared_buffers=32MB"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.dir, start_new_session=True)
            finally:
                log.close()
            if self._wait_ready():
                break
            self._stop_server()
        else:
            raise RuntimeError(f"PostgreSQL did not start within {START_TIMEOUT_S} s: {self._log_tail()}")
        import psycopg

        with psycopg.connect(self.socket_conninfo("postgres", "postgres"), autocommit=True) as a:
            a.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
            a.execute(f"CREATE DATABASE {DBNAME} OWNER {ROLE}")

    def _read_pid(self) -> None:
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                self.pid = int(f.readline().strip())
        except (OSError, ValueError):
            return
        self.pid_ticks = procs.start_ticks(self.pid)

    def _log_tail(self) -> str:
        try:
            with open(self.log) as f:
                return " | ".join(f.read().strip().splitlines()[-5:])
        except OSError:
            return "(no server log)"

    def _wait_ready(self) -> bool:
        """Wait (bounded) until the server accepts connections; False if it exited or never did."""
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.pid is None:
                self._read_pid()
            if self._proc.poll() is not None:
                return False  # e.g. the port was taken: the log says
            try:
                psycopg.connect(self.socket_conninfo("postgres", "postgres"), connect_timeout=2).close()
                self._read_pid()
                return True
            except psycopg.Error:
                time.sleep(0.03)
        return False

    def socket_conninfo(self, user: str, dbname: str) -> str:
        return f"host={self.dir} port={self.port} user={user} dbname={dbname}"

    def admin(self):
        """A superuser connection (autocommit) to the test database."""
        import psycopg

        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(self.socket_conninfo("postgres", DBNAME), autocommit=True)
        return self._admin

    @property
    def url(self) -> str:
        """The TCP URL, with the password, as a site would write it."""
        return f"postgresql://{ROLE}:{quote(PASSWORD, safe='')}@127.0.0.1:{self.port}/{DBNAME}"

    @property
    def socket_url(self) -> str:
        """The unix-socket URL (trusted, so no password)."""
        return f"postgresql://{ROLE}@/{DBNAME}?host={quote(self.dir)}&port={self.port}"

    def stop(self) -> None:
        self._stop_server()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_server(self) -> None:
        """pg_ctl stop -m fast, which signals the postmaster by the PID in postmaster.pid."""
        if self.pid is None:
            self._read_pid()
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:
                pass
            self._admin = None
        if self._postmaster_runs():
            try:
                self._sh([self._bin("pg_ctl"), "stop", "-D", self.data, "-m", "fast", "-w", "-t", "20"],
                         timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
            deadline = time.monotonic() + 20
            while self._postmaster_runs() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._postmaster_runs():  # pg_ctl could not stop it: that postmaster, not a PID's later owner
                os.kill(self.pid, signal.SIGKILL)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()  # only ever our own child
                self._proc.wait()
            self._proc = None
        self.pid = self.pid_ticks = None

    def _postmaster_runs(self) -> bool:
        """The postmaster this server started still runs. Once it exits, its parent (runuser, as
        root) reaps it and its PID may go to any process: a PID alone would have stop() wait for
        that stranger, then SIGKILL it."""
        return self.pid is not None and procs.still_running(self.pid, self.pid_ticks)


_server: Server | None = None


def current() -> Server:
    """The session's server (``pg_url`` must have started it)."""
    if _server is None:
        raise RuntimeError("no PostgreSQL server: request the pg_url fixture first")
    return _server


def start() -> Server:
    global _server
    if _server is None:
        s = Server()
        try:
            s.start()
        except BaseException:
            s.stop()
            raise
        _server = s
        atexit.register(stop)  # in case the session ends without running fixture finalizers
    return _server


def stop() -> None:
    global _server
    if _server is not None:
        s, _server = _server, None
        s.stop()


@contextlib.contextmanager
def for_bench(label: str = "postgres"):
    """A benchmark's server: yields True while one runs, or prints why not and yields False."""
    ok, why = can_run()
    if not ok:
        print(f"[{label}] skipped: {why}")
        yield False
        return
    try:
        start()
    except Exception as e:  # noqa: BLE001 - any failure to start is reported, not raised
        print(f"[{label}] skipped: the throwaway server did not start: {e}")
        yield False
        return
    try:
        yield True
    finally:
        stop()


def fresh_url(url: str | None = None, socket: bool = False) -> str:
    """A URL to an empty ledger: ``url`` (default: the server's TCP URL; ``socket=True``: its
    unix-socket URL) with a new, empty schema first on its search_path."""
    s = current()
    base = s.socket_url if socket else (url or s.url)
    name = f"t{os.getpid()}_{next(_schemas)}"
    s.admin().execute(f"CREATE SCHEMA {name} AUTHORIZATION {ROLE}")
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{name}"


@pytest.fixture(scope="session")
def pg_url():
    """The URL of a running throwaway PostgreSQL database (TCP, with password)."""
    ok, why = can_run()
    if not ok:
        if _ci():
            pytest.fail(f"PostgreSQL tests cannot run in CI: {why}", pytrace=False)
        pytest.skip(f"PostgreSQL tests skipped: {why}")
    try:
        server = start()
    except Exception as e:
        msg = f"throwaway PostgreSQL server did not start: {e}"
        if _ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    try:
        yield server.url
    finally:
        stop()
