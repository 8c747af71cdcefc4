"""The submit-time GPU budget hook (plugins/job_submit.lua) inside a real Slurm 22.05.

The cluster (tests/slurm_harness.py) has 4 nodes x 4 fake h100 GPUs and partition ``gpu``
with DefaultTime=30 and MaxTime=1440 minutes.  Most jobs are submitted held (``-H``): the
hook runs at submission, so admission is decided without occupying nodes.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import admin_comment, journal, write_snapshot
from slurm_harness import PARTITION_DEFAULT_TIME_MIN, PARTITION_MAX_TIME_MIN, UNLIMITED_PARTITION

from slurmgov.slurm.gpu_request import parse_sbatch_args, worst_case_gpu_seconds


def settles(cluster) -> list[list[str]]:
    if not cluster.settle_path.exists():
        return []
    return [ln.split("\t") for ln in cluster.settle_path.read_text().splitlines()]


def slurmgov_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "slurmgov:" in ln]


pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("clean_hook_conf")]


def test_cluster_is_up(slurm_cluster):
    states = slurm_cluster.node_states()
    assert states == {n: "idle" for n in ("gpu01", "gpu02", "gpu03", "gpu04")}
    topo = slurm_cluster.run("scontrol", "show", "topology").stdout
    assert "leaf1" in topo and "leaf2" in topo and "spine" in topo


def test_under_budget_job_runs_and_is_settled(slurm_cluster):
    c = slurm_cluster
    serial = write_snapshot(c, {"chem-ai": 3600.0})
    r = c.sbatch(["--gres=gpu:h100:1", "-t", "10"])
    assert r.returncode == 0, r.stderr
    jobid = c.job_id(r)
    [line] = journal(c, serial)
    assert line[0] == "admit" and line[4] == "chem-ai" and line[5] == "0"
    assert (float(line[6]), line[7], line[8], line[9]) == (600.0, "1", "10", "h100")
    token = line[3]
    assert admin_comment(c, jobid) == f"slurmgov:hold={token}"
    assert c.wait_job(jobid, ("COMPLETED",), timeout=30) == "COMPLETED"
    out = (c.work_dir / f"slurm-{jobid}.out").read_text().split()
    assert out[0] in c.nodes and out[1:] == ["0"]  # one GPU visible to the job
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        mine = [s for s in settles(c) if s[1] == jobid]
        if mine:
            break
        time.sleep(0.1)
    [s] = mine
    assert s[0] == "settle" and s[2] == token and s[3] == "chem-ai" and s[4] == "1" and s[7] == "COMPLETED"
    assert 0 < int(s[5]) <= int(s[6])


def test_over_budget_is_refused_with_one_line(slurm_cluster):
    c = slurm_cluster
    serial = write_snapshot(c, {"chem-ai": 1800.0})  # 0.5 GPU-h
    r = c.sbatch(["-H", "--gres=gpu:h100:2", "-t", "60"])  # needs 2 GPU-h
    assert r.returncode == 1
    assert slurmgov_lines(r.stderr) == [
        "sbatch: error: slurmgov: account chem-ai: 0.5 GPU-h left, job needs up to 2.0 GPU-h"]
    assert journal(c, serial) == []
    # The same job fits once the budget does.
    serial = write_snapshot(c, {"chem-ai": 7200.0})
    r = c.sbatch(["-H", "--gres=gpu:h100:2", "-t", "60"])
    assert r.returncode == 0, r.stderr
    assert len(journal(c, serial)) == 1


def test_burst_never_overspends(slurm_cluster):
    c = slurm_cluster
    cost = 2 * 10 * 60  # --gres=gpu:2 -t 10
    serial = write_snapshot(c, {"chem-ai": 3 * cost + cost / 2})
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: c.sbatch(["-H", "--gres=gpu:2", "-t", "10"]), range(6)))
    ok = [r for r in results if r.returncode == 0]
    refused = [r for r in results if r.returncode != 0]
    assert len(ok) == 3 and len(refused) == 3
    for r in refused:
        assert "slurmgov: account chem-ai: 0.17 GPU-h left, job needs up to 0.33 GPU-h" in r.stderr
    lines = journal(c, serial)
    assert len(lines) == 3 and sum(float(ln[6]) for ln in lines) == 3 * cost
    assert len({ln[3] for ln in lines}) == 3  # distinct hold tokens


def test_journal_is_authoritative(slurm_cluster):
    """Holds recorded before (e.g. by a previous slurmctld) count even if this Lua state never saw them."""
    c = slurm_cluster
    serial = write_snapshot(c, {"bio-ml": 2 * 600.0})
    with open(c.journal_path, "a") as fh:
        fh.write(f"admit\t{int(time.time())}\t{serial}\tearlier-1\tbio-ml\t0\t600.000\t1\t10\t-\n")
    assert c.sbatch(["-H", "-A", "bio-ml", "--gres=gpu:1", "-t", "10"]).returncode == 0
    r = c.sbatch(["-H", "-A", "bio-ml", "--gres=gpu:1", "-t", "10"])
    assert r.returncode == 1 and "0.0 GPU-h left" in r.stderr


def test_journal_offset_counts_lines_the_writer_had_not_seen(slurm_cluster):
    c = slurm_cluster
    c.journal_path.touch()
    offset = c.journal_path.stat().st_size
    # An admission charged to the previous snapshot, after the writer read the journal.
    with open(c.journal_path, "a") as fh:
        fh.write(f"admit\t{int(time.time())}\t1\tlate-1\tphysics\t0\t900.000\t1\t15\t-\n")
    write_snapshot(c, {"physics": 1000.0}, extra=(f"journal_offset\t{offset}",))
    r = c.sbatch(["-H", "-A", "physics", "--gres=gpu:1", "-t", "2"])  # 120 s > 100 s left
    assert r.returncode == 1 and "physics: 0.03 GPU-h left" in r.stderr
    assert c.sbatch(["-H", "-A", "physics", "--gres=gpu:1", "-t", "1"]).returncode == 0


# (sbatch args, script or None, GPUs per array task, time min, expected weighted GPU-seconds)
# with weights h100=2.0, default (untyped) 0.5, partition DefaultTime 30, MaxTime 1440.
COST_CASES = [
    (["--gres=gpu:h100:1", "-t", "10"], None, 1, 10, 1 * 2.0 * 10 * 60),
    (["--gres=gpu:2", "-t", "10"], None, 2, 10, 2 * 0.5 * 600),
    (["--gpus=3", "-t", "5"], None, 3, 5, 3 * 0.5 * 300),
    (["--gpus=h100:3", "-t", "5"], None, 3, 5, 3 * 2.0 * 300),
    (["-G", "2", "-t", "1:00:00"], None, 2, 60, 2 * 0.5 * 3600),
    (["--gpus-per-node=2", "-N", "2", "-t", "10"], None, 4, 10, 4 * 0.5 * 600),
    (["--gpus-per-node=h100:1", "-N", "1-2", "-t", "10"], None, 2, 10, 2 * 2.0 * 600),
    (["--gpus-per-task=1", "-n", "3", "-t", "10"], None, 3, 10, 3 * 0.5 * 600),
    (["--gpus-per-task=h100:1", "--ntasks-per-node=2", "-N", "2", "-t", "10"], None, 4, 10, 4 * 2.0 * 600),
    (["--gpus-per-socket=1", "--sockets-per-node=2", "-N", "2", "-t", "10"], None, 4, 10, 4 * 0.5 * 600),
    (["--gres=gpu:h100:1", "-a", "0-9", "-t", "10"], None, 1, 10, 10 * 2.0 * 600),
    (["--gres=gpu:1", "-a", "1,3,5", "-t", "10"], None, 1, 10, 3 * 0.5 * 600),
    (["--gres=gpu:1", "--array=0-15:4%2", "-t", "10"], None, 1, 10, 4 * 0.5 * 600),
    (["--gpus=2", "--array=0-99%10", "-t", "1"], None, 2, 1, 100 * 2 * 0.5 * 60),
    (["--gres=gpu:1", "-t", "1-0"], None, 1, 1440, 1440 * 0.5 * 60),
    (["--gres=gpu:1", "-t", "0:30"], None, 1, 1, 0.5 * 60),  # seconds round up to a minute
    (["--gres=gpu:1", "-t", "1-01:30"], None, 1, 1530, 1530 * 0.5 * 60),
    (["--gres=gpu:h100:1"], None, 1, PARTITION_DEFAULT_TIME_MIN, 2.0 * 30 * 60),
    (["--gres=gpu:1", "-t", "UNLIMITED"], None, 1, PARTITION_MAX_TIME_MIN, 0.5 * 1440 * 60),
    # Two consistent forms at once (sbatch insists): charged once, not summed.
    (["--gres=gpu:h100:2", "--gpus=h100:4", "-N", "2", "-t", "10"], None, 4, 10, 4 * 2.0 * 600),
    (["-t", "3"], "#!/bin/sh\n#SBATCH --gres=gpu:h100:2\n#SBATCH -t 7\ntrue\n", 2, 3, 2 * 2.0 * 180),
]


def test_each_gpu_form_is_charged_and_python_agrees(slurm_cluster):
    c = slurm_cluster
    weights = {"h100": 2.0}
    serial = write_snapshot(c, {"chem-ai": 1e9}, weights=weights, default_weight=0.5)
    for args, script, *_ in COST_CASES:
        r = c.sbatch(["-H", *args], script)
        assert r.returncode == 0, (args, r.stderr)
    lines = journal(c, serial)
    assert len(lines) == len(COST_CASES)
    for (args, script, gpus, minutes, cost), line in zip(COST_CASES, lines):
        assert (int(line[7]), int(line[8]), float(line[6])) == (gpus, minutes, pytest.approx(cost)), args
        req = parse_sbatch_args(["-H", *args], script)
        py = worst_case_gpu_seconds(req, weights, default_weight=0.5,
                                    default_time_min=PARTITION_DEFAULT_TIME_MIN,
                                    max_time_min=PARTITION_MAX_TIME_MIN)
        assert py == pytest.approx(float(line[6])), args
        assert req.gpus_total == int(line[7]), args


@pytest.mark.parametrize("args,per_node", [
    (["--gres=gpu:8"], 8),
    (["--gpus-per-node=h100:5", "-N", "2"], 5),
    (["-N", "1", "--gpus=6"], 6),
    (["--gpus-per-task=1", "--ntasks-per-node=5", "-N", "1"], 5),
])
def test_never_placeable_refused_at_once(slurm_cluster, args, per_node):
    c = slurm_cluster
    serial = write_snapshot(c, {"chem-ai": 1e12})
    t0 = time.monotonic()
    r = c.sbatch(["-H", "-t", "10", *args])
    assert r.returncode == 1
    assert slurmgov_lines(r.stderr) == [
        f"sbatch: error: slurmgov: job asks for {per_node} GPUs on one node but no node has more than 4; "
        "it can never start"]
    assert time.monotonic() - t0 < 5
    assert journal(c, serial) == []


def test_stale_snapshot_fail_closed_and_fail_open(slurm_cluster):
    c = slurm_cluster
    write_snapshot(c, {"chem-ai": 1e9}, written=time.time() - 1000, max_age_s=600)
    r = c.sbatch(["-H", "--gres=gpu:1", "-t", "10"])
    assert r.returncode == 1
    [msg] = slurmgov_lines(r.stderr)
    assert "stale" in msg and "max 600 s" in msg and "fail_policy closed" in msg
    before = len(journal(c))
    write_snapshot(c, {"chem-ai": 1e9}, written=time.time() - 1000, max_age_s=600, fail_policy="open")
    r = c.sbatch(["-H", "--gres=gpu:1", "-t", "10"])
    assert r.returncode == 0, r.stderr
    new = journal(c)[before:]
    assert len(new) == 1 and new[0][2] == "0"  # serial 0: a fail-open admission
    assert admin_comment(c, c.job_id(r)) == f"slurmgov:hold={new[0][3]}"


@pytest.mark.parametrize("content", [
    None,  # missing
    "slurmgov-snapshot\t1\nserial\t1\nwritten\t{now}\nmax_age_s\t600\naccount\tchem-ai\t1e9\n",  # torn: no end
    "slurmgov-snapshot\t2\nserial\t1\nwritten\t{now}\nmax_age_s\t600\nend\n",  # unknown version
    "slurmgov-snapshot\t1\nserial\t1\nwritten\t{now}\nmax_age_s\t600\naccount\tchem-ai\tlots\nend\n",
    "slurmgov-snapshot\t1\nserial\t1\nwritten\t{now}\nmax_age_s\t600\naccount\tchem-ai\t0x10\nend\n",
    "slurmgov-snapshot\t1\nwritten\t{now}\nmax_age_s\t600\naccount\tchem-ai\t1e9\nend\n",  # no serial
    "slurmgov-snapshot\t1\nserial\t1\nwritten\t{now}\nmax_age_s\t600\naccount\tchem-ai\t1\n"
    "account\tchem-ai\t1e9\nend\n",  # duplicate account
])
def test_unreadable_snapshot_fails_closed_unless_configured_open(slurm_cluster, content):
    c = slurm_cluster
    c.snapshot_path.unlink(missing_ok=True)
    if content is not None:
        c.snapshot_path.write_text(content.format(now=int(time.time())))
    r = c.sbatch(["-H", "--gres=gpu:1", "-t", "10"])
    assert r.returncode == 1
    [msg] = slurmgov_lines(r.stderr)
    assert "budget snapshot unreadable" in msg and "fail_policy closed" in msg
    c.hook_conf_path.write_text("# site override\nfail_policy open\n")
    before = len(journal(c))
    r = c.sbatch(["-H", "--gres=gpu:1", "-t", "10"])
    assert r.returncode == 0, r.stderr
    assert [ln[2] for ln in journal(c)[before:]] == ["0"]


def test_partition_without_time_limits_uses_snapshot_default(slurm_cluster):
    c = slurm_cluster
    serial = write_snapshot(c, {"chem-ai": 1e9}, default_time_min=45)
    r = c.sbatch(["-H", "-p", UNLIMITED_PARTITION, "--gres=gpu:1"])
    assert r.returncode == 0, r.stderr
    [line] = journal(c, serial)
    assert (line[8], float(line[6])) == ("45", 45 * 60.0)
    req = parse_sbatch_args(["-p", UNLIMITED_PARTITION, "--gres=gpu:1"])
    assert worst_case_gpu_seconds(req, {}, default_time_min=45) == float(line[6])
    # No time limit anywhere: the worst case is unbounded, so the job is refused.
    r = c.sbatch(["-H", "-p", UNLIMITED_PARTITION, "--gres=gpu:1", "-t", "UNLIMITED"])
    assert r.returncode == 1
    assert slurmgov_lines(r.stderr) == [
        "sbatch: error: slurmgov: job has no time limit and its partition has no MaxTime; give --time"]


def test_hook_conf_moves_snapshot_and_journal(slurm_cluster, tmp_path):
    c = slurm_cluster
    c.snapshot_path.unlink(missing_ok=True)
    alt_snap, alt_journal = tmp_path / "snap.txt", tmp_path / "journal.log"
    write_snapshot(c, {"bio-ml": 600.0})
    c.snapshot_path.replace(alt_snap)
    c.hook_conf_path.write_text(f"snapshot_path {alt_snap}\njournal_path {alt_journal}\n")
    before = len(journal(c))
    assert c.sbatch(["-H", "-A", "bio-ml", "--gres=gpu:1", "-t", "10"]).returncode == 0
    r = c.sbatch(["-H", "-A", "bio-ml", "--gres=gpu:1", "-t", "10"])
    assert r.returncode == 1 and "bio-ml: 0.0 GPU-h left" in r.stderr
    assert len(journal(c)) == before  # the default journal is untouched
    [line] = [ln.split("\t") for ln in alt_journal.read_text().splitlines()]
    assert line[4] == "bio-ml" and float(line[6]) == 600.0


def test_hostile_account_names_match_nothing_else(slurm_cluster):
    c = slurm_cluster
    hostile = ["a.b%-[x]", ".*", "chem%-ai", "chem.ai", "[c]hem-ai", "chem-ai ", "^chem-ai$", "%a+", "'chem-ai'"]
    serial = write_snapshot(c, {**{h: 1e12 for h in hostile}, "bio-ml": 600.0})
    r = c.sbatch(["-H", "--gres=gpu:1", "-t", "10"])  # default account chem-ai: no entry of its own
    assert r.returncode == 1
    assert slurmgov_lines(r.stderr) == [
        "sbatch: error: slurmgov: account chem-ai has no GPU budget, job needs up to 0.17 GPU-h"]
    # The file still parses: the one plain account is honoured exactly.
    assert c.sbatch(["-H", "-A", "bio-ml", "--gres=gpu:1", "-t", "10"]).returncode == 0
    assert c.sbatch(["-H", "-A", "bio-ml", "--gres=gpu:1", "-t", "1"]).returncode == 1
    assert [ln[4] for ln in journal(c, serial)] == ["bio-ml"]


def test_cpu_only_job_needs_no_budget(slurm_cluster):
    c = slurm_cluster
    serial = write_snapshot(c, {"chem-ai": 0.0})
    r = c.sbatch(["-A", "physics", "-t", "1"])
    assert r.returncode == 0, r.stderr
    jobid = c.job_id(r)
    assert admin_comment(c, jobid) == ""
    assert c.wait_job(jobid, ("COMPLETED",), timeout=30) == "COMPLETED"
    c.snapshot_path.unlink()  # even with no snapshot at all
    assert c.sbatch(["-H", "-t", "1"]).returncode == 0
    assert journal(c, serial) == []


def test_unprivileged_user_cannot_grow_an_admitted_job_past_its_budget(slurm_cluster):
    c = slurm_cluster
    write_snapshot(c, {"chem-ai": 1000.0})
    as_nobody = ["runuser", "-u", c.user, "--"]
    env = c.unprivileged_env()
    r = c.run(*as_nobody, "sbatch", "--parsable", "-H", "--chdir=/", "-o", "/dev/null",
              "--gres=gpu:1", "-t", "10", input="#!/bin/sh\ntrue\n", cwd="/", env=env)
    assert r.returncode == 0, r.stderr
    jobid = c.job_id(r)
    r = c.run(*as_nobody, "scontrol", "update", f"jobid={jobid}", "TresPerNode=gres:gpu:4", cwd="/", env=env)
    assert r.returncode != 0
    # Refused by the hook (22.05 cannot show a job_modify message to the user; it is logged).
    log = (c.log_dir / "slurmctld.log").read_text()
    assert f"slurmgov: change to job {jobid} by uid {c.uid} refused: account chem-ai: 0.11 GPU-h left" in log
    show = c.run("scontrol", "show", "job", "-o", jobid).stdout
    assert f"TresPerNode={c.gres}gpu:1" in show
    # Shrinking is fine (the hold comes down once the governor sees Slurm applied it).
    r = c.run(*as_nobody, "scontrol", "update", f"jobid={jobid}", "TimeLimit=5", cwd="/", env=env)
    assert r.returncode == 0, r.stderr
