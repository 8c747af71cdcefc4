"""The hook files' golden copies (tests/data/hook_files/, specification: plugins/SNAPSHOT_FORMAT.md)
read by both readers of each: the Lua hook's own (plugins/job_submit.lua under lua5.1 and
tests/lua/hook_driver.lua, no slurmctld) and slurmgov's (slurmgov/slurm/snapshot.py,
slurmgov/slurm/journal.py). Every file's verdict is in tests/data/hook_files/MANIFEST.yaml and
both readers must give it."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from hook_cases import DRIVER, HOOK, ROOT, SEP, line, run_lua, unesc

from slurmgov.ledger.store import Ledger
from slurmgov.site import model as site_mod
from slurmgov.slurm import governor, journal, snapshot

GOLDEN = ROOT / "tests" / "data" / "hook_files"
MANIFEST = yaml.safe_load((GOLDEN / "MANIFEST.yaml").read_text())


def _g(x) -> str:
    """A number as the driver prints it (%.17g), or '-' for none."""
    return "-" if x is None else f"{x:.17g}"


def _py_snapshot_values(s: snapshot.Snapshot) -> dict:
    return {
        "serial": str(s.serial), "written": _g(s.written), "max_age_s": _g(s.max_age_s), "fail_policy": s.fail_policy,
        "default_time_min": _g(s.default_time_min), "default_weight": _g(s.default_weight),
        "sockets_per_node": _g(max(1, s.sockets_per_node or 1)), "max_gpus_per_node": _g(s.max_gpus_per_node),
        "total_gpus": _g(s.total_gpus), "journal_offset": _g(s.journal_offset),
        "weights": sorted(f"{t}{SEP}{_g(w)}" for t, w in s.weights.items()),
        "partition_gpus": sorted(f"{p}{SEP}{_g(n)}{SEP}{'-' if t is None else t}" for p, (n, t) in s.partition_gpus.items()),
        "operators": sorted({_g(u) for u in s.operator_uids}),
        "accounts": sorted(f"{a}{SEP}{_g(v)}" for a, v in s.available_gpu_s.items()),
        "users": sorted(f"{a}{SEP}{u}{SEP}{_g(av)}{SEP}{_g(cap)}" for (a, u), (av, cap) in s.user_caps.items()),
        "cpu_accounts": sorted(f"{a}{SEP}{_g(v)}" for a, v in s.available_cpu_s.items()),
        "partition_cpus": sorted(f"{p}{SEP}{_g(n)}{SEP}{_g(w)}" for p, (n, w) in s.partition_cpus.items()),
        "default_cpu_weight": _g(1.0 if s.default_cpu_weight is None else s.default_cpu_weight),
        "max_cpus_per_node": _g(s.max_cpus_per_node),
    }


def _lua_snapshot_values(fields: list[str]) -> dict:
    got: dict = dict(f.split("=", 1) for f in fields)
    for k in ("weights", "partition_gpus", "operators", "accounts", "users", "cpu_accounts", "partition_cpus"):
        got[k] = sorted(x for x in got[k].split(",") if x)
    got["serial"] = str(int(got["serial"]))
    return got


SNAPSHOT_FILES = sorted(MANIFEST["snapshot"].items())


def test_manifest_names_every_golden_file():
    assert {p.name for p in (GOLDEN / "snapshot").iterdir()} == set(MANIFEST["snapshot"])
    assert {p.name for p in (GOLDEN / "journal").iterdir()} == set(MANIFEST["journal"])
    assert any(v != "ok" for _, v in SNAPSHOT_FILES) and any(v == "ok" for _, v in SNAPSHOT_FILES)


def test_snapshots_lua_and_python_agree(lua51):
    rows = run_lua(lua51, [line([("id", name), ("cmd", "snapshot_file"), ("file", GOLDEN / "snapshot" / name)])
                           for name, _ in SNAPSHOT_FILES])
    for (name, want), row in zip(SNAPSHOT_FILES, rows):
        path = GOLDEN / "snapshot" / name
        assert row[0] == name
        if want != "ok":
            assert row[1:] == ["no", want], name
            with pytest.raises(ValueError) as exc:
                snapshot.read(path)
            assert str(exc.value) == f"{path}: {want}", name
            continue
        assert row[1] == "ok", (name, row)
        py = snapshot.read(path)
        assert _lua_snapshot_values(row[2:]) == _py_snapshot_values(py), name


def test_golden_snapshot_values():
    """The readers agree with each other above; here, with what the files say."""
    good = snapshot.read(GOLDEN / "snapshot" / "good.txt")
    assert (good.serial, good.written, good.max_age_s, good.fail_policy, good.default_time_min) == \
        (17, 1700000000, 600, "open", 45)
    assert (good.max_gpus_per_node, good.sockets_per_node, good.total_gpus, good.journal_offset) == (8, 2, 32, 1234)
    assert good.weights == {"h100": 2.0, "a100": 1.5} and good.default_weight == 0.5
    assert good.partition_gpus == {"gpu": (4, "h100"), "cpu": (0, None)} and good.operator_uids == [1001, 0]
    assert good.available_gpu_s == {"bio-ml": 600.0, "chem-ai": 12600.0, "physics": -5.0}
    assert snapshot.read(GOLDEN / "snapshot" / "crlf.txt") == good
    minimal = snapshot.read(GOLDEN / "snapshot" / "minimal-defaults.txt")
    assert (minimal.fail_policy, minimal.default_time_min, minimal.default_weight, minimal.max_gpus_per_node,
            minimal.sockets_per_node) == ("closed", 60, 1.0, None, None)
    assert snapshot.read_price_params(GOLDEN / "snapshot" / "sockets-zero-clamped.txt").sockets_per_node == 1
    users = snapshot.read(GOLDEN / "snapshot" / "users-good.txt")
    assert users.user_caps == {("chem-ai", 1001): (3600.0, 7200.0), ("chem-ai", 7): (-5.0, 1000.0),
                               ("physics", 1001): (0.5, 0.0), ("bio-ml", 4294967295): (0.0, 0.0)}
    assert users.available_gpu_s == {"chem-ai": 12600.0, "bio-ml": 600.0}


def test_the_writer_writes_the_golden_file():
    snap = snapshot.Snapshot(
        serial=1795592000123, written=1795592000, max_age_s=600, fail_policy="closed", default_time_min=60,
        max_gpus_per_node=4, default_weight=1.0, journal_offset=4096, total_gpus=16, sockets_per_node=2,
        weights={"h100": 2.0, "a100": 1.0, "h200\n": 1.0},
        available_gpu_s={"chem-ai": 12600.0, "bio-ml": -3.0, "bad\tname": 1.0, "physics\n": 1.0},
        operator_uids=[0, 1001], partition_gpus={"gpu": (4, "h100"), "cpu": (0, None), "big\n": (8, "h100")},
        user_caps={("chem-ai", 1001): (3600.0, 7200.0), ("bio-ml", 0): (-5.0, 36000.0), ("bad\tname", 7): (1.0, 1.0),
                   ("physics\n", 8): (1.0, 1.0)})  # names with a tab or a trailing newline are left out
    assert snap.render() == (GOLDEN / "snapshot" / "writer.txt").read_text()
    read = snapshot.parse(snap.render())
    assert read.available_gpu_s == {"bio-ml": 0.0, "chem-ai": 12600.0}
    assert read.user_caps == {("bio-ml", 0): (0.0, 36000.0), ("chem-ai", 1001): (3600.0, 7200.0)}


@pytest.mark.parametrize("change", [
    {"default_weight": float("nan")}, {"weights": {"h100": float("inf")}}, {"weights": {"h100": -1.0}},
    {"available_gpu_s": {"a": float("nan")}}, {"written": float("inf")}, {"default_time_min": 0},
    {"sockets_per_node": -1}, {"fail_policy": "ajar"}, {"partition_gpus": {"gpu": (-1, None)}},
    {"user_caps": {("a", -1): (1.0, 1.0)}}, {"user_caps": {("a", 2**32): (1.0, 1.0)}},
    {"user_caps": {("a", 1): (float("nan"), 1.0)}}, {"user_caps": {("a", 1): (1.0, float("inf"))}},
])
def test_the_writer_refuses_what_the_hook_would_refuse(change, tmp_path):
    snap = snapshot.Snapshot(**{"serial": 1, "written": 1, "max_age_s": 1, **change})
    with pytest.raises(ValueError):
        snap.render()
    with pytest.raises(ValueError):
        snapshot.write(tmp_path / "s.txt", snap)
    assert list(tmp_path.iterdir()) == []  # no temp file left, no snapshot written


# --------------------------------------------------------------------------- journal lines
def _py_charge(event) -> tuple[str, float, str, float] | None:
    """What the hook counts against a budget at once for an event (SNAPSHOT_FORMAT.md, "What is
    subtracted"), whose (the uid, for that user's cap in the account), and against the account's
    CPU budget."""
    if isinstance(event, journal.Admit):
        return event.account, event.cost_gpu_s, event.user, event.cpu_cost_s
    if isinstance(event, journal.Modify):
        if event.account == event.old_account:
            return (event.account, max(0.0, event.new_cost_gpu_s - event.old_cost_gpu_s), event.user,
                    max(0.0, event.new_cpu_cost_s - event.old_cpu_cost_s))
        return event.account, event.new_cost_gpu_s, event.user, event.new_cpu_cost_s
    return None


JOURNAL_FILES = sorted(MANIFEST["journal"].items())


def test_journal_lines_lua_and_python_agree(lua51, tmp_path):
    rows = run_lua(lua51, [line([("id", name), ("cmd", "journal_file"), ("file", GOLDEN / "journal" / name)])
                           for name, _ in JOURNAL_FILES])
    kinds = {journal.Admit: "admit", journal.Modify: "modify", journal.Settle: "settle", journal.Probe: "probe",
             journal.Refuse: "refuse"}
    seen = set()
    for (name, verdicts), row in zip(JOURNAL_FILES, rows):
        # The governor's own reader of the file (whole lines, from offset 0).
        lines, _ = journal.Cursors(tmp_path / f"{name}.cursors").read_new(GOLDEN / "journal" / name)
        assert row[:2] == [name, "ok"] and len(row) - 2 == len(lines) == len(verdicts), name
        for (_, text), want, lua in zip(lines, verdicts, row[2:]):
            try:
                event = journal.parse(text)
            except ValueError:
                event = None
            if want == "error":
                assert event is None, (name, text)
            else:
                assert event is not None and kinds[type(event)] == want["kind"], (name, text)
                if "tasks" in want:
                    assert event.tasks == want["tasks"], (name, text)
                if "cpus" in want:
                    assert event.cpus == want["cpus"], (name, text)
                if "cpu_cost" in want:
                    assert _py_charge(event)[3] == want["cpu_cost"], (name, text)
                seen.add(want["kind"])
            charge = _py_charge(event)
            assert lua == ("-" if charge is None else
                           f"{charge[0]}{SEP}{_g(charge[1])}{SEP}{charge[2]}{SEP}{_g(charge[3])}"), (name, text, lua)
    assert seen == set(kinds.values())


def test_settle_lines_of_every_jobcomp_version_ingest():
    """jobcomp.lua wrote 8 fields (0.1) and 11 since (gpu_type, array, restart_cnt); none wrote 9 or 10."""
    lines = (GOLDEN / "journal" / "settle.log").read_text().splitlines()
    old, new = journal.parse(lines[0]), journal.parse(lines[1])
    assert (old.job_id, old.token, old.gpus, old.array, old.restart_cnt) == ("4242", "1700000100-1-0a1b", 2, None, 0)
    assert (new.array, new.restart_cnt, new.gpu_seconds) == ("4240_2", 0, 1200)
    for n in (9, 10):
        with pytest.raises(ValueError, match=f"unrecognised journal line \\({n} fields\\)"):
            journal.parse("\t".join(lines[1].split("\t")[:n]))


# ------------------------------------------------ the array's task count, from the hook to the hold
SITE = """site: two-weights
executor: slurm
gpu_types:
  h100: {memory_gb: 80, weight: 2.0}
  a100: {memory_gb: 40, weight: 1.0}
nodes:
  - {names: "gpu[01-02]", gpus: 4, gpu_type: h100, cpus: 16, memory: 64G}
  - {names: "gpu[03-04]", gpus: 4, gpu_type: a100, cpus: 16, memory: 64G}
partitions:
  - {name: gpu, nodes: "gpu[01-04]", default: true, default_time: "00:30:00", max_time: "1-00:00:00"}
accounts:
  physics: {budget_gpu_hours: 50, period: quarterly}
ledger: sqlite:///${SLURMGOV_HOME}/ledger.sqlite
fail_policy: closed
snapshot_max_age_s: 300
"""


def _submit(lua51: str, hook_dir: Path, job_desc: dict) -> list[str]:
    """slurm_job_submit of the hook copied into ``hook_dir``, with the files there."""
    hook = hook_dir / "job_submit.lua"
    shutil.copy(HOOK, hook)
    req = line([("cmd", "submit"), ("uid", 1000), ("part", SEP.join(["gpu", "30", "1440", "1", "1"])),
                *[(f"d.{k}", v) for k, v in job_desc.items()]])
    proc = subprocess.run([lua51, str(DRIVER), str(hook)], input=req + "\n", capture_output=True, text=True,
                          check=True, cwd=ROOT, timeout=60)
    assert not proc.stderr, proc.stderr
    return [unesc(f) for f in proc.stdout.rstrip("\n").split("\t")]


def test_two_weights_the_admit_line_carries_the_tasks_the_cost_cannot_tell(lua51, tmp_path):
    """An array of 4 tasks, each with one a100 (weight 1) and one h100 (weight 2) per node: the hook
    prices 3 weighted GPUs x 4 tasks x 10 min. Dividing the cost by GPUs x minutes x the dearest
    weight (2 x 10 x 60 x 2) makes 3 tasks of it: the hold would close after 3 of its 4 tasks."""
    site_path = tmp_path / "site.yaml"
    site_path.write_text(SITE)
    site = site_mod.load(site_path)
    conf, state = tmp_path / "etc", tmp_path / "state"
    conf.mkdir()
    params = governor.price_params(site)
    snapshot.write(conf / governor.SNAPSHOT, snapshot.Snapshot(
        serial=1, written=int(time.time()), max_age_s=600, weights=dict(params.weights),
        default_weight=params.default_weight, max_gpus_per_node=4, available_gpu_s={"physics": 50 * 3600.0}))
    job = {"tres_per_node": "gres:gpu:a100:1,gres:gpu:h100:1", "array_inx": "0-3", "time_limit": 10,
           "partition": "gpu", "account": "physics", "user_id": "1000", "min_nodes": 1, "max_nodes": 1}
    row = _submit(lua51, conf, job)
    assert row[:3] == ["?", "ok", "0"], row
    [admit_line] = (conf / governor.ADMITS).read_text().splitlines()
    event = journal.parse(admit_line)
    assert (event.cost_gpu_s, event.gpus, event.time_limit_min, event.gpu_type, event.tasks) == \
        (3 * 4 * 600.0, 2, 10, "a100+h100", 4)
    assert row[3].startswith(f"slurmgov:hold={event.token} ")

    # The same admission as an older hook wrote it (10 fields, another token): 3 tasks, wrong.
    old_line = "\t".join(admit_line.split("\t")[:10]).replace(event.token, "old-token")
    assert journal.parse(old_line).tasks is None
    with open(conf / governor.ADMITS, "a") as fh:
        fh.write(old_line + "\n")

    ledger = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite")
    ledger.set_budget("physics", 50.0, "quarterly", actor="test")
    rep = governor.sync_once(ledger, site, conf, state)
    assert rep.admitted == 2 and not rep.problems, rep.problems
    new_hold, old_hold = ledger.hold(f"slurm:{event.token}"), ledger.hold("slurm:old-token")
    assert governor.run_tasks(new_hold.run_id) == 4
    assert governor.run_tasks(old_hold.run_id) == 3  # the old arithmetic, kept for old lines only

    # Tasks settle one by one: the new hold stays open until its 4th, the old closed at its 3rd.
    start = int(time.time()) - 3600
    with open(conf / governor.SETTLES, "w") as fh:
        for i, (job, token) in [(i, jt) for jt in ((100, event.token), (200, "old-token")) for i in range(3)]:
            fh.write(f"settle\t{job + i}\t{token}\tphysics\t2\t{start}\t{start + 60}\tCOMPLETED\t-\t99_{i}\t0\n")
    governor.sync_once(ledger, site, conf, state)
    assert ledger.hold(f"slurm:{event.token}").state == "open"
    assert ledger.hold("slurm:old-token").state != "open"
    with open(conf / governor.SETTLES, "a") as fh:
        fh.write(f"settle\t103\t{event.token}\tphysics\t2\t{start}\t{start + 60}\tCOMPLETED\t-\t99_3\t0\n")
    governor.sync_once(ledger, site, conf, state)
    assert ledger.hold(f"slurm:{event.token}").state == "done"
    ledger.disconnect()
