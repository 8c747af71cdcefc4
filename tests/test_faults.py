"""Faults a site admin relies on surviving, on a real Slurm 22.05 cluster (tests/slurm_harness.py).

- the governor SIGKILLed mid-ingest and restarted: every journal line applied exactly once;
- slurmctld restarted while jobs pend and run: no lost or doubled charge, every hold closes;
- the (PostgreSQL) ledger unreachable: sync fails in one line, the hook admits from its snapshot
  until that is stale, then refuses GPU jobs; one sync after the ledger returns catches up;
- a corrupted snapshot refuses GPU jobs and journals nothing; torn and garbage journal lines;
- the hook files belong to root and nobody else can write them.

Every wait is bounded by a deadline.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from helpers import wait_for
from pg_harness import fresh_url

from slurmgov.ledger.store import WRITER_LOCK_SUFFIX, Ledger
from slurmgov.site import model as site_mod
from slurmgov.slurm import governor, snapshot

pytestmark = pytest.mark.slurm
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
DEMO_SITE = ROOT / "site_configs" / "demo-cluster.yaml"
STALE_MSG = ("GPU jobs are refused until it is refreshed (fail_policy closed)")


def lines(path: Path) -> list[list[str]]:
    return [ln.split("\t") for ln in path.read_text().splitlines()] if path.exists() else []


def admit_tokens(c) -> list[str]:
    return [f[3] for f in lines(c.journal_path) if f[0] == "admit"]


def settle_rows(c) -> list[list[str]]:
    return [f for f in lines(c.settle_path) if f[0] == "settle"]


def sacct_gpu_seconds(c, jobs: list[str]) -> dict[str, list[int]]:
    """job id -> GPU-seconds of each of its runs (sacct -D), from slurmdbd."""
    out = {}
    r = c.run("sacct", "--json", "-D", "-j", ",".join(jobs), timeout=30)
    for j in json.loads(r.stdout)["jobs"]:
        gpus = sum(t["count"] for t in j["tres"]["allocated"] if t["type"] == "gres" and t["name"] == "gpu")
        out.setdefault(str(j["job_id"]), []).append(gpus * j["time"]["elapsed"])
    return out


def count_holds(sqlite_path: Path) -> int:
    with sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM holds WHERE hold_key LIKE 'slurm:%'").fetchone()[0]


class Gov:
    """A fresh governor (ledger, state, journals) against the session's cluster."""

    def __init__(self, c, home: Path, site_path: Path = DEMO_SITE, ledger_url: str | None = None):
        self.c, self.home, self.site_path = c, home, site_path
        self.env = {**c.env, "SLURMGOV_HOME": str(home), "SLURMGOV_SITE": str(site_path)}
        if ledger_url:
            self.env["SLURMGOV_LEDGER"] = ledger_url
        self.site = site_mod.load(site_path)
        self.ledger_url = ledger_url or f"sqlite:///{home}/ledger.sqlite"
        self.ledger = Ledger.open(self.ledger_url)

    def sg(self, *args, check=0, env=None, timeout=120):
        p = subprocess.run([str(BIN / "slurmgov"), *map(str, args)], capture_output=True, text=True,
                           env=env or self.env, timeout=timeout)
        assert "Traceback" not in p.stderr, p.stderr
        assert check is None or p.returncode == check, p.stderr + p.stdout
        return p

    def install(self):
        return self.sg("hooks", "install", "--slurm-conf-dir", self.c.conf_dir)

    def sync(self, *extra, check=0, env=None):
        p = self.sg("sync", "--slurm-conf-dir", self.c.conf_dir, "--json", *extra, check=check, env=env)
        return json.loads(p.stdout) if p.returncode == 0 else p


@pytest.fixture
def fresh(slurm_cluster, slurmgov_home):
    c = slurm_cluster
    c.cancel_all()
    for p in (c.journal_path, c.settle_path, c.hook_conf_path):
        p.unlink(missing_ok=True)
    yield c, slurmgov_home
    if not any(n == "slurmctld" and p.poll() is None for n, p in c._procs):
        c.start_slurmctld()  # a test failed with slurmctld down
    c.cancel_all()
    c.hook_conf_path.unlink(missing_ok=True)


def submit_many(c, args_list, workers: int = 8) -> list:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda a: c.sbatch(a), args_list))


# ---------------------------------------------------------------- 1. governor killed mid-ingest
def test_governor_killed_mid_ingest_applies_every_line_once(fresh, tmp_path):
    c, home = fresh
    g = Gov(c, home)
    g.install()
    n_run, n_held = 20, 130
    runs = submit_many(c, [["-A", "chem-ai", "--gres=gpu:h100:1", "-t", "2", "--wrap", "sleep 1"]] * n_run)
    held = submit_many(c, [["-H", "-A", "bio-ml", "--gres=gpu:h100:2", "-t", "3", "--wrap", "true"]] * n_held)
    assert all(r.returncode == 0 for r in runs + held), [r.stderr for r in runs + held if r.returncode][:3]
    run_ids = [c.job_id(r) for r in runs]
    held_ids = [c.job_id(r) for r in held]
    # cancelled while pending: a settle line with no run time each; enough of them that the
    # settlement pass has many batches for a kill to land in, however busy the machine
    cancelled = held_ids[:100]
    c.run("scancel", *cancelled, check=True)
    for j in run_ids:
        assert c.wait_job(j, ("COMPLETED",), timeout=60) == "COMPLETED"
    wait_for(lambda: len(settle_rows(c)) >= n_run + len(cancelled), 30, "settle lines")
    tokens = admit_tokens(c)
    assert len(tokens) == n_run + n_held == len(set(tokens))

    # The reference: one clean ingest of a copy of the journals into a fresh ledger.
    ref_dir, ref_home = tmp_path / "ref-conf", tmp_path / "ref-home"
    ref_dir.mkdir()
    for p in (c.journal_path, c.settle_path):
        shutil.copyfile(p, ref_dir / p.name)
    ref_env = {**g.env, "SLURMGOV_HOME": str(ref_home)}
    ref = json.loads(g.sg("sync", "--slurm-conf-dir", ref_dir, "--no-reconcile", "--json", env=ref_env).stdout)
    assert (ref["admitted"], ref["settled"], ref["problems"]) == (n_run + n_held, n_run + len(cancelled), [])
    ref_ledger = Ledger.open(f"sqlite:///{ref_home}/ledger.sqlite")

    # SIGKILL the real governor at several points of its ingest: as soon as a pass has added a
    # hold or a charge, then let one pass finish. Batches of 8 lines (one transaction and one
    # cursor commit each) so that kills land between batches and inside the files.
    g.env["SLURMGOV_JOURNAL_BATCH"] = "8"
    ledger_file = home / "ledger.sqlite"
    n_charges = n_run + len(cancelled)

    def progress() -> tuple[int, int]:
        with sqlite3.connect(f"file:{ledger_file}?mode=ro", uri=True, timeout=10) as db:
            return tuple(db.execute(
                "SELECT (SELECT count(*) FROM holds WHERE hold_key LIKE 'slurm:%'),"
                " (SELECT count(*) FROM charges WHERE charge_key LIKE 'slurm:job:%')").fetchone())

    # kill points, in lines applied: a quarter, half, three quarters into the admits, half-way
    # into the settlements
    targets = [len(tokens) // 4, len(tokens) // 2, 3 * len(tokens) // 4, len(tokens) + n_charges // 2]
    kills = []
    writers = os.open(f"{ledger_file}{WRITER_LOCK_SUFFIX}", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    for _ in range(12):
        seen = progress()
        if seen == (len(tokens), n_charges):
            break
        ahead = [t for t in targets if t > sum(seen)]
        target = ahead[0] if ahead else len(tokens) + n_charges
        p = subprocess.Popen([str(BIN / "slurmgov"), "sync", "--slurm-conf-dir", str(c.conf_dir), "--no-reconcile"],
                             env=g.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # The pass is stepped, not raced: the test holds the ledger's writer lock (the flock every
        # slurmgov writer queues on) while it reads the progress, then lets the pass take the lock
        # for a transaction and takes it back (flock is not fair: the pass may win it again for
        # another one or two first). A kill so lands a few transactions (8 lines each) past its
        # target however busy the machine is, well inside each window; polling a free-running
        # pass missed the settle journal's whole window under load.
        deadline = time.monotonic() + 60
        fcntl.flock(writers, fcntl.LOCK_EX)
        while p.poll() is None and time.monotonic() < deadline:
            if sum(progress()) >= target:
                p.send_signal(signal.SIGKILL)
                break
            fcntl.flock(writers, fcntl.LOCK_UN)
            while p.poll() is None and time.monotonic() < deadline:
                try:
                    fcntl.flock(writers, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # the pass has it: ours again when its transaction ends
                    fcntl.flock(writers, fcntl.LOCK_EX)
                    break
                fcntl.flock(writers, fcntl.LOCK_UN)  # not taken yet: give it the chance
                time.sleep(0.001)
        else:
            if p.poll() is None:
                p.kill()
        fcntl.flock(writers, fcntl.LOCK_UN)
        p.wait(timeout=10)
        assert "Traceback" not in p.stderr.read()
        p.stderr.close()
        if p.returncode == -signal.SIGKILL:
            kills.append(progress())
    os.close(writers)
    # kills landed in the middle of the admit journal and of the settle journal
    assert any(0 < h < len(tokens) for h, _ in kills), kills
    assert any(h == len(tokens) and 0 < n < n_charges for h, n in kills), kills
    # (--no-reconcile: sacct also knows earlier tests' jobs, which would be settled into this ledger)
    g.sync("--no-reconcile")
    again = g.sync("--no-reconcile")  # nothing left to apply
    assert (again["admitted"], again["settled"], again["problems"]) == (0, 0, [])

    # every admit line once: one hold per admitted job, no other
    assert count_holds(ledger_file) == len(tokens)
    for t in tokens:
        assert g.ledger.hold(governor.hold_key(t)).amount_h == ref_ledger.hold(governor.hold_key(t)).amount_h
    # every finished run charged once, with its GPU-seconds from sacct
    charges = [ch for ch in g.ledger.charges() if ch["charge_key"].startswith("slurm:job:")]
    by_job: dict[str, list[float]] = {}
    for ch in charges:
        by_job.setdefault(ch["charge_key"][len("slurm:job:"):].split("@")[0], []).append(ch["gpu_seconds"])
    assert sorted(by_job) == sorted(run_ids + cancelled)
    assert all(len(v) == 1 for v in by_job.values()), {k: v for k, v in by_job.items() if len(v) != 1}
    sacct = sacct_gpu_seconds(c, run_ids)
    for j in run_ids:
        assert abs(by_job[j][0] - sacct[j][0]) <= 1, (j, by_job[j], sacct[j])  # jobcomp vs sacct rounding
    assert all(by_job[j] == [0] for j in cancelled)
    # and the balances are exactly those of the clean ingest
    got = {b.account: (b.charged_h, b.held_h, b.available_h) for b in g.ledger.balances()}
    want = {b.account: (b.charged_h, b.held_h, b.available_h) for b in ref_ledger.balances()}
    assert got == want
    assert got["bio-ml"][1] == pytest.approx((n_held - len(cancelled)) * 2 * 3 / 60)


# ---------------------------------------------------------------- 2. slurmctld restarted
def test_slurmctld_restart_keeps_holds_and_charges_right(fresh):
    c, home = fresh
    g = Gov(c, home)
    g.install()
    running = [c.job_id(c.sbatch(["-A", "physics", "--gres=gpu:h100:2", "-t", "2", "--wrap", "sleep 3"]))
               for _ in range(3)]
    pending = [c.job_id(c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "2", "--wrap", "sleep 1"]))
               for _ in range(3)]
    doomed = c.job_id(c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "2", "--wrap", "true"]))
    for j in running:
        c.wait_job(j, ("RUNNING",), timeout=30)
    rep = g.sync()
    assert rep["admitted"] == 7
    # slurmctld goes away while they run; they finish while it is down
    c.restart_slurmctld(down_s=4, timeout=40)
    for j in running + pending + [doomed]:
        assert c.job_state(j) is not None, f"job {j} lost across the slurmctld restart"
    # right after a restart slurmctld may refuse updates while slurmdbd gives it the jobs' DB
    # indexes ("try again in a bit"): released once it takes them
    def released() -> bool:  # done, or refused for another reason (a job a try before already released)
        r = c.run("scontrol", "release", *pending)
        return r.returncode == 0 or "try again" not in (r.stderr + r.stdout)

    wait_for(released, 60, "slurmctld to accept the release")
    c.run("scancel", doomed, check=True)
    for j in running + pending:
        assert c.wait_job(j, ("COMPLETED",), timeout=60) == "COMPLETED"
    assert c.wait_job(doomed, ("CANCELLED",), timeout=30) == "CANCELLED"
    jobs = running + pending + [doomed]
    wait_for(lambda: {r[1] for r in settle_rows(c)} >= set(jobs), 30, "settle lines")
    # A job that finishes after all of them: once its settle line is written, so is any doubled
    # line for theirs (jobcomp writes completions in order), and the sync below would see it.
    sentinel = c.job_id(c.sbatch(["-A", "physics", "--gres=gpu:h100:1", "-t", "1", "--wrap", "true"]))
    assert c.wait_job(sentinel, ("COMPLETED",), timeout=60) == "COMPLETED"
    wait_for(lambda: sentinel in {r[1] for r in settle_rows(c)}, 30, "the sentinel's settle line")
    rep = g.sync()
    assert rep["problems"] == [] and not [d for d in rep["drift"] if d.split(":")[0] in {f"job {j}" for j in jobs}]
    assert g.sync()["admitted"] == 0
    sacct = sacct_gpu_seconds(c, jobs)
    charges = [ch for ch in g.ledger.charges() if ch["charge_key"].startswith("slurm:job:")]
    for j in running + pending:
        mine = [ch for ch in charges if ch["charge_key"].startswith(f"slurm:job:{j}@")]
        assert len(mine) == len(sacct[j]) == 1, (j, mine, sacct[j])
        assert abs(mine[0]["gpu_seconds"] - sacct[j][0]) <= 2, (j, mine[0]["gpu_seconds"], sacct[j])
        assert g.ledger.hold(mine[0]["hold_key"]).state == "done"
    for t in admit_tokens(c):
        assert g.ledger.hold(governor.hold_key(t)).state in ("done", "cancelled")
    # (reconcile also settles earlier tests' jobs from sacct into this fresh ledger: only ours count)
    assert g.ledger.balance("physics").held_h == 0


# ---------------------------------------------------------------- 3. ledger unavailable
def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_ledger_down_hook_admits_until_stale_then_catches_up(fresh, pg_url, tmp_path):
    c, home = fresh
    max_age = 6
    doc = yaml.safe_load(DEMO_SITE.read_text())
    doc["snapshot_max_age_s"] = max_age
    site_path = tmp_path / "site.yaml"
    site_path.write_text(yaml.safe_dump(doc))
    url = fresh_url(pg_url)
    g = Gov(c, home, site_path, ledger_url=url)
    g.install()
    snap0 = snapshot.read(c.snapshot_path)
    down = {**g.env, "SLURMGOV_LEDGER": f"postgresql://ledger:x@127.0.0.1:{_closed_port()}/ledger_test"}

    # the database is gone: sync fails in one line, non-zero, and leaves the snapshot alone
    p = g.sg("sync", "--slurm-conf-dir", c.conf_dir, check=None, env=down)
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slurmgov: "), p.stderr
    assert snapshot.read(c.snapshot_path).serial == snap0.serial
    # the hook keeps admitting from the snapshot while it is young
    ok = [c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "5", "--wrap", "true"]) for _ in range(3)]
    run = c.sbatch(["-A", "physics", "--gres=gpu:h100:1", "-t", "5", "--wrap", "sleep 1"])
    assert [r.returncode for r in ok + [run]] == [0] * 4, [r.stderr for r in ok + [run]]
    assert time.time() - snap0.written <= max_age
    run_id = c.job_id(run)
    assert c.wait_job(run_id, ("COMPLETED",), timeout=30) == "COMPLETED"
    wait_for(lambda: any(r[1] == run_id for r in settle_rows(c)), 15, "the settle line")
    # still down when the snapshot turns stale: GPU jobs refused, others admitted
    wait_for(lambda: time.time() >= snap0.written + max_age + 1.5, max_age + 5, "the snapshot to go stale")
    assert g.sg("sync", "--slurm-conf-dir", c.conf_dir, check=None, env=down).returncode != 0
    before = c.journal_path.stat().st_size
    r = c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "5", "--wrap", "true"])
    assert r.returncode == 1
    msg = [ln for ln in r.stderr.splitlines() if "slurmgov:" in ln]
    assert len(msg) == 1 and "slurmgov: budget snapshot is stale (written " in msg[0], r.stderr
    assert msg[0].endswith(f"s ago, max {max_age} s); " + STALE_MSG), msg
    assert c.journal_path.stat().st_size == before
    assert c.sbatch(["-H", "-A", "physics", "-t", "5", "--wrap", "true"]).returncode == 0  # no GPUs: admitted
    # the database is back: one sync takes in everything written meanwhile
    rep = g.sync()
    assert (rep["admitted"], rep["settled"], rep["problems"]) == (4, 1, [])
    for t in admit_tokens(c):
        g.ledger.hold(governor.hold_key(t))
    b = g.ledger.balance("physics")
    assert b.held_h == pytest.approx(3 * 5 / 60)
    assert 0 < b.charged_h <= 5 / 60
    assert c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "5", "--wrap", "true"]).returncode == 0


# ---------------------------------------------------------------- 4. corrupted snapshot / journal
def _valid_snapshot_lines(c) -> list[str]:
    return c.snapshot_path.read_text().splitlines()


@pytest.mark.parametrize("corruption", ["garbage", "no-end", "duplicate-account"])
def test_corrupted_snapshot_refuses_gpu_jobs_and_journals_nothing(fresh, corruption):
    c, home = fresh
    g = Gov(c, home)
    g.install()
    good = _valid_snapshot_lines(c)
    if corruption == "garbage":
        text = "\x00\xffthis is not a snapshot\n\tend\n"
    elif corruption == "no-end":
        text = "\n".join(ln for ln in good if ln != "end") + "\n"
    else:
        acct = next(ln for ln in good if ln.startswith("account\tphysics\t"))
        text = "\n".join(ln if ln != "end" else f"{acct}\nend" for ln in good) + "\n"
    tmp = c.snapshot_path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, c.snapshot_path)
    before = c.journal_path.stat().st_size
    r = c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "5", "--wrap", "true"])
    assert r.returncode == 1
    msg = [ln for ln in r.stderr.splitlines() if "slurmgov:" in ln]
    assert len(msg) == 1 and msg[0].startswith("sbatch: error: slurmgov: budget snapshot unreadable: "), r.stderr
    assert msg[0].endswith(STALE_MSG)
    assert c.journal_path.stat().st_size == before
    assert c.sbatch(["-H", "-A", "physics", "-t", "5", "--wrap", "true"]).returncode == 0  # no GPUs: admitted
    # a sync writes a good snapshot again and GPU jobs are admitted
    g.sync("--no-reconcile")
    assert c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "5", "--wrap", "true"]).returncode == 0


def test_torn_journal_line_waits_for_its_end_and_is_charged_right(fresh):
    c, home = fresh
    g = Gov(c, home)
    g.install()
    serial = snapshot.read(c.snapshot_path).serial
    line = f"admit\t{int(time.time())}\t{serial}\t1700000000-1-torn\tphysics\t0\t3600.000\t1\t60\th100\n"
    cut = line.index("3600.000") + 2  # "...\t36": read now, it would be a 36 GPU-s hold
    with open(c.journal_path, "a") as fh:
        fh.write(line[:cut])
    rep = g.sync("--no-reconcile")
    assert (rep["admitted"], rep["problems"]) == (0, [])
    assert count_holds(home / "ledger.sqlite") == 0
    assert snapshot.read(c.snapshot_path).journal_offset == c.journal_path.stat().st_size - cut
    with open(c.journal_path, "a") as fh:
        fh.write(line[cut:])
    rep = g.sync("--no-reconcile")
    assert (rep["admitted"], rep["problems"]) == (1, [])
    h = g.ledger.hold("slurm:1700000000-1-torn")
    assert h.amount_h == pytest.approx(1.0) and h.account == "physics"
    assert g.sync("--no-reconcile")["admitted"] == 0
    assert g.ledger.balance("physics").held_h == pytest.approx(1.0)


def test_garbage_journal_lines_are_reported_and_skipped(fresh):
    c, home = fresh
    g = Gov(c, home)
    g.install()
    with open(c.journal_path, "a") as fh:
        fh.write("this is not a journal line\n")
    with open(c.settle_path, "a") as fh:
        fh.write("settle\tgarbage\n")
    job = c.job_id(c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "5", "--wrap", "true"]))
    rep = g.sync("--no-reconcile")
    assert rep["admitted"] == 1 and rep["settled"] == 0
    assert len(rep["problems"]) == 2, rep["problems"]
    assert rep["problems"][0].startswith(f"{c.journal_path}@0: unrecognised journal line")
    assert rep["problems"][1].startswith(f"{c.settle_path}@0: unrecognised journal line")
    c.run("scancel", job, check=True)
    wait_for(lambda: any(r[1] == job for r in settle_rows(c)), 15, "the settle line")
    rep = g.sync("--no-reconcile")
    assert (rep["admitted"], rep["settled"], rep["problems"]) == (0, 1, [])  # reported once, skipped
    assert g.ledger.balance("physics").held_h == 0
    assert count_holds(home / "ledger.sqlite") == 1


# ---------------------------------------------------------------- 5. permissions
def test_hook_files_belong_to_root_and_nobody_cannot_write_them(fresh):
    c, home = fresh
    # a careless earlier state: journals anyone may write
    for p in (c.journal_path, c.settle_path):
        p.touch()
        p.chmod(0o666)
    g = Gov(c, home)
    g.install()
    g.sync("--no-reconcile")
    files = (c.snapshot_path, c.journal_path, c.settle_path)
    for p in files:
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (0, 0), p
        assert stat.S_IMODE(st.st_mode) & 0o022 == 0, f"{p}: mode {stat.S_IMODE(st.st_mode):o}"
    # nobody can reach the files (let it traverse the directories above them), read the snapshot but
    # not the journals (hold tokens), and write none of them
    opened = []
    try:
        d = c.conf_dir
        while d != d.parent:
            mode = stat.S_IMODE(d.stat().st_mode)
            if not mode & 0o001:
                opened.append((d, mode))
                d.chmod(mode | 0o001)
            d = d.parent
        for p in files:
            size = p.stat().st_size
            rd = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(p)], capture_output=True, timeout=10)
            if p == c.snapshot_path:  # budgets: readable
                assert rd.returncode == 0, (p, rd.stderr)
            else:  # hold tokens: not for users (0640)
                assert rd.returncode != 0 and b"Permission denied" in rd.stderr, (p, rd.stderr)
            wr = subprocess.run(["runuser", "-u", "nobody", "--", "sh", "-c", f"echo x >> '{p}'"],
                                capture_output=True, text=True, timeout=10)
            assert wr.returncode != 0 and "Permission denied" in wr.stderr, (p, wr.stderr)
            assert p.stat().st_size == size
    finally:
        for d, mode in reversed(opened):
            d.chmod(mode)


def test_admission_after_a_torn_journal_line_is_not_lost(fresh):
    """slurmctld died in the middle of appending an admit line: the next admission must not be
    glued onto that half line (it would be unparseable, and the new job's hold lost)."""
    c, home = fresh
    g = Gov(c, home)
    g.install()
    serial = snapshot.read(c.snapshot_path).serial
    with open(c.journal_path, "a") as fh:
        fh.write(f"admit\t{int(time.time())}\t{serial}\t1700000000-2-torn\tphys")
    job = c.job_id(c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "5", "--wrap", "true"]))
    token = admit_tokens(c)[-1]
    rep = g.sync("--no-reconcile")
    assert rep["admitted"] == 1, rep
    assert len(rep["problems"]) == 1 and "unrecognised journal line" in rep["problems"][0]  # the half line
    h = g.ledger.hold(governor.hold_key(token))
    assert h.amount_h == pytest.approx(5 / 60) and h.state == "open"
    assert f"slurmgov:hold={token}" in c.run("scontrol", "show", "job", "-o", job).stdout
    assert g.ledger.balance("physics").held_h == pytest.approx(5 / 60)
    # the same for jobcomp's settle journal: the settlement after a half line is not lost
    with open(c.settle_path, "a") as fh:
        fh.write(f"settle\t{job}\t{token}\tphys")
    c.run("scancel", job, check=True)
    wait_for(lambda: any(r[1] == job and len(r) == 12 for r in settle_rows(c)), 15, "the settle line")
    rep = g.sync("--no-reconcile")
    assert (rep["admitted"], rep["settled"]) == (0, 1), rep
    assert len(rep["problems"]) == 1 and "unrecognised journal line" in rep["problems"][0]
    assert g.ledger.hold(governor.hold_key(token)).state == "cancelled"
    assert g.ledger.balance("physics").held_h == 0
