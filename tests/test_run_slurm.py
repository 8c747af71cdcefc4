"""Workflows on real Slurm allocations: `slurmgov run --site demo-cluster.yaml` on the test cluster.

Each allocation is a pilot job admitted by the job_submit hook, running Dask workers; the
governor (`slurmgov governor`, running beside the tests) charges the jobs from jobcomp/sacct;
the run splits each job's cost across its steps and records the idle rest as waste.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import procs
import pytest
from helpers import governing, sacct_state

from slurmgov.intent import run_records
from slurmgov.ledger.store import Ledger
from slurmgov.site import model as site_mod

pytestmark = pytest.mark.slurm
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "site_configs" / "demo-cluster.yaml"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("sg-home-slurm")


@pytest.fixture(scope="module")
def governed(slurm_cluster, home):
    """The hooks installed and a governor keeping the snapshot fresh and settling jobs."""
    c = slurm_cluster
    c.cancel_all()
    for p in (c.journal_path, c.settle_path, c.hook_conf_path):
        if p.exists():
            p.unlink()
    env = {**c.env, "SLURMGOV_HOME": str(home), "SLURMGOV_SITE": str(SITE), "COLUMNS": "200"}
    with governing(c, env, "--placement-every", "0.3"):
        yield c, env


@pytest.fixture
def sg(governed, home, monkeypatch):
    c, env = governed
    monkeypatch.setenv("SLURMGOV_HOME", str(home))  # this module's ledger, shared with the governor

    def run(*args, check=0, timeout=240):
        p = subprocess.run([str(BIN / "slurmgov"), *map(str, args)], capture_output=True, text=True, env=env,
                           timeout=timeout, cwd=c.work_dir)
        assert "Traceback" not in p.stderr + p.stdout, p.stderr
        assert check is None or p.returncode == check, p.stderr + p.stdout[-3000:]
        return p
    return run


def ledger() -> Ledger:
    return Ledger.open(site_mod.load(SITE).ledger_url())


def sacct(c, job_ids) -> dict[str, dict]:
    """What Slurm's accounting says each job used (the authority), read independently here."""
    data = json.loads(c.run("sacct", "--json", "-a", "-j", ",".join(job_ids), check=True).stdout)
    out = {}
    for j in data["jobs"]:
        gpus = sum(int(t["count"]) for t in j["tres"]["allocated"] if t["type"] == "gres" and t["name"] == "gpu")
        out[str(j["job_id"])] = {"gpu_s": gpus * j["time"]["elapsed"], "state": sacct_state(j),
                                 "nodes": j["nodes"]}
    return out


def sacct_by_name(c, name: str) -> dict[str, str]:
    out = c.run("sacct", "-a", "-n", "-X", "-P", "--name", name, "-o", "JobID,State", check=True).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if line)


def wait_charged(job_ids, timeout=30) -> dict[str, float]:
    """The governor's charge for each job (one per run), once all are in the ledger."""
    deadline = time.time() + timeout
    while True:
        got = {}
        for ch in ledger().charges():
            jid = ch["charge_key"].split(":")[2].split("@")[0] if ch["charge_key"].startswith("slurm:job:") else None
            if jid in job_ids:
                got[jid] = got.get(jid, 0) + ch["gpu_seconds"]
        if set(got) == set(job_ids) or time.time() > deadline:
            return got
        time.sleep(0.3)


def test_research_fanout_costs_add_up_to_sacct(sg, governed, tmp_path):
    c, _ = governed
    # The example's steps take a fraction of a second; sacct counts whole seconds, so its pilot could
    # show 0 elapsed. Here the researchers work 1.5 s and the critic 2 s (3 GPUs idle meanwhile).
    spec = tmp_path / "research-fanout.yaml"
    spec.write_text((JOBSPECS / "research-fanout.yaml").read_text()
                    .replace("params: {angle: ", "params: {seconds: 1.5, angle: ")
                    .replace("call: slurmgov.execution.demo_steps:critique\n",
                             "call: slurmgov.execution.demo_steps:critique\n    params: {seconds: 2}\n"))
    rep = json.loads(sg("run", spec, "--json").stdout)
    assert rep["status"] == "ok" and rep["executor"] == "slurm"
    allocs = rep["allocations"]
    # the four researchers and the critic share one pilot job: 1 Slurm job for 5 GPU steps
    assert list(allocs) == ["a2"] and len(allocs["a2"]["job_ids"]) == 1
    jobs = [j for a in allocs.values() for j in a["job_ids"]]
    truth = sacct(c, jobs)
    assert all(t["state"] == "COMPLETED" for t in truth.values()), truth  # ended by us, not cancelled
    held = sum(t["gpu_s"] for t in truth.values())
    steps = {s: v["cost"] for s, v in rep["steps"].items() if v.get("cost")}
    assert set(steps) == {"research-1", "research-2", "research-3", "research-4", "critic"}
    # per-step costs plus the idle rest add up to what sacct says the allocation used
    assert sum(s["gpu_s"] for s in steps.values()) + rep["waste_gpu_seconds"] == pytest.approx(held)
    assert 0 < rep["waste_gpu_seconds"] < held  # three GPUs sat idle while the critic worked
    assert sum(a["cost_h"] for a in allocs.values()) == pytest.approx(held / 3600)  # h100 weight 1
    # each step was metered on the node its worker ran on; the allocation landed as asked
    assert all(s["nodes"] == allocs["a2"]["nodes"] and s["achieved"] == "node" for s in steps.values())
    assert allocs["a2"]["locality_ok"] and allocs["a2"]["nodes"] == truth[jobs[0]]["nodes"].split(",")
    # the same split is in the ledger, and the governor charged each job exactly what sacct says
    rows = ledger().attributions(rep["run_id"])
    assert sum(r["gpu_seconds"] for r in rows) == pytest.approx(held)
    assert [r for r in rows if r["step"] is None][0]["gpu_seconds"] == pytest.approx(rep["waste_gpu_seconds"])
    assert wait_charged(jobs) == {j: pytest.approx(t["gpu_s"]) for j, t in truth.items()}
    waste = json.loads(sg("waste", "--by", "workflow", "--json").stdout)
    assert any(w["key"] == "deep-research" and w["idle_gpu_seconds"] > 0 for w in waste)
    assert not c.run("squeue", "-h", "-n", "sg.deep-research.a2").stdout.strip()


@pytest.mark.parametrize("name", ["multinode-finetune", "tensor-parallel-eval", "shared-prefix-agents"])
def test_examples_run_on_the_demo_cluster(sg, governed, name):
    c, _ = governed
    rep = json.loads(sg("run", JOBSPECS / f"{name}.yaml", "--json").stdout)
    assert rep["status"] == "ok", rep["steps"]
    jobs = [j for a in rep["allocations"].values() for j in a["job_ids"]]
    truth = sacct(c, jobs)
    held = sum(t["gpu_s"] for t in truth.values())
    attributed = sum(v["cost"]["gpu_s"] for v in rep["steps"].values() if v.get("cost"))
    assert attributed + rep["waste_gpu_seconds"] == pytest.approx(held)
    for a in rep["allocations"].values():
        assert a["locality_ok"], a
    if name == "multinode-finetune":
        ft = rep["allocations"][rep["steps"]["finetune"]["cost"]["alloc"]]
        # two nodes under one leaf switch, as --switches=1 asked
        assert len(ft["nodes"]) == 2 and len(ft["leaves"]) == 1 and ft["achieved"] == "leaf-switch"


def test_placement_and_fragmentation_are_recorded_from_live_jobs(sg, governed, tmp_path):
    c, env = governed
    # the fine-tune trains until the gate appears: the pilot stays up until the governor has
    # sampled it, however slow its passes are on a busy machine
    gate = tmp_path / "gate"
    spec = tmp_path / "multinode-finetune.yaml"
    spec.write_text((JOBSPECS / "multinode-finetune.yaml").read_text()
                    .replace("params: {steps: 20}", f"params: {{steps: 20, until: '{gate}'}}"))
    proc = subprocess.Popen([str(BIN / "slurmgov"), "run", str(spec), "--json"], env=env, cwd=c.work_dir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while json.loads(sg("topology", "placement", "--json").stdout)["by_request"]["leaf-switch"]["jobs"] < 1:
            assert time.time() < deadline and proc.poll() is None, "the governor never sampled the pilot"
            time.sleep(0.3)
        while (json.loads(sg("topology", "fragmentation", "--json").stdout).get("total", {}).get("1") or
               {"min": 16})["min"] >= 16:
            assert time.time() < deadline, "no fragmentation sample while the pilot ran"
            time.sleep(0.3)
    finally:
        gate.touch()
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    rep = json.loads(out)
    ft = rep["allocations"][rep["steps"]["finetune"]["cost"]["alloc"]]
    (job,) = ft["job_ids"]
    placed = json.loads(sg("topology", "placement", "--json").stdout)
    # the governor saw the pilot running: it asked for one leaf switch (its comment says so) and got it
    assert placed["by_request"]["leaf-switch"]["jobs"] >= 1
    assert all(m["job_id"] != job for m in placed["misses"])
    assert placed["share"] == 1.0
    frag = json.loads(sg("topology", "fragmentation", "--json").stdout)
    assert frag["samples"] >= 2
    # while the 2-node pilot ran, some sample had fewer than all 16 free 1-GPU slots
    assert frag["total"]["1"]["min"] < 16 and frag["total"]["1"]["now"] <= 16
    live = json.loads(sg("topology", "show", "--live", "--json").stdout)
    assert live["free_slots"]["total"]["free_gpus"] <= 16


def one_step_run(c, env, tmp_path, workflow: str, command: str, gpus: int, *args: str):
    """Start `slurmgov run` of a one-step workflow in the background; return it once the step
    has begun (its command writes the file it is given as {mark}) and that file."""
    mark = tmp_path / "started"
    spec = tmp_path / f"{workflow}.yaml"
    spec.write_text(f"workflow: {workflow}\naccount: chem-ai\nsteps:\n"
                    f"  - {{id: step, run: '{command.format(mark=mark)}', "
                    f"resources: {{gpus: {gpus}, gpu_type: h100, time: '00:05:00'}}}}\n")
    proc = subprocess.Popen([str(BIN / "slurmgov"), "run", str(spec), *args], env=env, cwd=c.work_dir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, mark


def wait_started(proc, mark, timeout=60) -> None:
    deadline = time.time() + timeout
    while not (mark.exists() and mark.read_text().strip()):
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.1)


def test_killed_allocation_is_resubmitted_and_nothing_is_charged_twice(sg, governed, tmp_path):
    c, env = governed
    # The first attempt cannot finish by itself (it waits until killed), so the kill always lands
    # mid-step: with a short sleep a slow cancel let the step end first, on a busy 24.11 cluster.
    # `exec`: Slurm's SIGTERM may reach the sleep before the shell, and a shell still there would
    # go on to `echo done` and end the step well in the dying job (seen once on an idle 24.11:
    # proctrack/linuxproc signals the deepest processes of the tree first, kill_tree.c).
    proc, mark = one_step_run(c, env, tmp_path, "kill-me",
                              "echo $SLURM_JOB_ID >> {mark}; [ $(wc -l < {mark}) -gt 1 ] || exec sleep 600; echo done", 1,
                              "--json")
    wait_started(proc, mark)
    first = mark.read_text().split()[0]
    c.run("scancel", first, check=True)  # the allocation dies under its running step
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err + out
    rep = json.loads(out)
    alloc = rep["allocations"]["a1"]
    assert alloc["job_ids"][0] == first and len(alloc["job_ids"]) == 2
    assert alloc["states"][0] == "CANCELLED" and "resubmitted as job" in alloc["events"][0]
    step = rep["steps"]["step"]
    assert step["status"] == "ok" and step["attempts"] == 1 and step["output"] == "done"
    assert mark.read_text().split() == alloc["job_ids"]  # it ran again, in the new job
    # both jobs are charged once each, what sacct says; the killed one's time is waste
    truth = sacct(c, alloc["job_ids"])
    assert wait_charged(alloc["job_ids"]) == {j: pytest.approx(t["gpu_s"]) for j, t in truth.items()}
    assert alloc["held_gpu_s"] == pytest.approx(sum(t["gpu_s"] for t in truth.values()))
    assert not ledger().open_holds("slurm:")  # every job's hold closed by the governor


@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "interrupt-me"), (signal.SIGTERM, 143, "term-me")])
def test_ctrl_c_or_sigterm_cancels_the_workflows_jobs(governed, tmp_path, sig, code, name):
    c, env = governed
    proc, mark = one_step_run(c, env, tmp_path, name, "echo started > {mark}; sleep 60", 2)
    page = None
    for line in proc.stdout:  # printed before any step runs
        m = re.search(r"dashboard: (http://\S+/slurmgov)", line)
        if m:
            page = m.group(1)
            break
    assert page, "no dashboard link printed"
    wait_started(proc, mark)
    # the workflow's page says where its allocation landed, while it runs
    deadline = time.time() + 10
    while True:
        state = json.loads(urllib.request.urlopen(page + "/state.json", timeout=10).read())
        (alloc,) = [a for a in state["allocations"] if a["id"] == "a1"]
        if alloc["jobs"] and alloc["jobs"][0]["nodes"] or time.time() > deadline:
            break
        time.sleep(0.3)
    assert alloc["jobs"][0]["state"] == "RUNNING" and alloc["jobs"][0]["nodes"][0].startswith("gpu0")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code and "Traceback" not in err, err
    assert "Slurm jobs cancelled" in err
    deadline = time.time() + 20
    while c.run("squeue", "-h", "-n", f"sg.{name}.a1").stdout.strip():  # COMPLETING, briefly
        assert time.time() < deadline, "the pilot job outlived the signal"
        time.sleep(0.2)
    (job,) = [j for j, t in sacct_by_name(c, f"sg.{name}.a1").items()]
    assert sacct(c, [job])[job]["state"] == "CANCELLED"


def test_a_killed_runs_pilot_ends_and_takes_its_step_with_it(governed, tmp_path):
    """SIGKILL runs no clean-up: the pilot's worker loses its scheduler, gives up after its
    death timeout (60 s), and its job ends with the step it was running."""
    c, env = governed
    proc, mark = one_step_run(c, env, tmp_path, "kill-9", "echo $$ > {mark}; exec sleep 617", 1)
    wait_started(proc, mark)
    step_pid = int(mark.read_text())
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.time() + 180
    while c.run("squeue", "-h", "-n", "sg.kill-9.a1").stdout.strip():
        assert time.time() < deadline, "the pilot job outlived its killed run"
        time.sleep(1)
    deadline = time.time() + 30
    while procs.alive(step_pid):
        assert time.time() < deadline, "the step's process outlived its pilot"
        time.sleep(0.2)


def test_over_budget_workflow_submits_nothing(sg, governed):
    c, _ = governed
    ledger().set_budget("physics", 0.5, "quarterly", actor="test", reason="too small for the fine-tune")
    time.sleep(1)  # sacct's -S has one-second resolution: start after the earlier tests' jobs ended
    t0 = time.strftime("%Y-%m-%dT%H:%M:%S")
    p = sg("run", JOBSPECS / "multinode-finetune.yaml", check=4)
    assert re.search(r"account physics: 0\.\d\d GPU-h left, workflow finetune-leaf needs up to 16.25 GPU-h", p.stderr)
    assert "nothing was submitted" in p.stderr
    names = ",".join(f"sg.finetune-leaf.a{i}" for i in range(1, 4))
    assert not c.run("sacct", "-a", "-n", "-X", "-S", t0, "--name", names, "-o", "JobID").stdout.split()


JOBSPECS = ROOT / "jobspecs"


def test_an_agent_submits_through_the_mcp_server_and_reads_each_steps_gpu_seconds(sg, governed, tmp_path):
    """`slurmgov mcp` on the Slurm site, driven by the SDK's client over stdio: submit_workflow
    admits the workflow, its pilot job is held in the ledger (the submit hook's hold) while it
    runs, the run ends ok, and explain_cost splits what sacct says the job used across its step
    and the idle rest; the governor charges the job exactly that and closes its hold."""
    import anyio
    from helpers import wait_for

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        import mcp  # noqa: F401  (in the test extra: under CI its absence is a failure)
    else:
        pytest.importorskip("mcp", reason="the MCP SDK (pip install -e '.[test]')")
    from mcp import Client, StdioServerParameters

    c, env = governed
    gate, mark = tmp_path / "gate", tmp_path / "started"
    usage = '{"usage": {"prompt_tokens": 64, "completion_tokens": 16}}'
    spec = {"workflow": "mcp-agent", "account": "chem-ai", "steps": [
        {"id": "think", "run": f"echo $SLURM_JOB_ID > {mark}; while [ ! -e {gate} ]; do sleep 0.2; done; echo '{usage}'",
         "resources": {"gpus": 1, "gpu_type": "h100", "time": "00:05:00"}}]}
    before = {h for h, _ in ledger().open_holds("slurm:")}
    params = StdioServerParameters(command=str(BIN / "slurmgov"), args=["mcp", "--site", str(SITE)], env=env,
                                   cwd=str(c.work_dir))

    def new_holds():
        return [h for h, _ in ledger().open_holds("slurm:") if h not in before and ledger().hold(h).account == "chem-ai"]

    async def main():
        async with Client(params) as client:
            res = await client.read_resource("slurmgov://accounts")  # root's associations: Slurm's root account too
            mine = {b["account"]: b for b in json.loads(res.contents[0].text)}
            assert {"chem-ai", "bio-ml", "physics"} <= set(mine) and mine["chem-ai"]["budget_gpu_hours"] == 500
            assert all(b["budget_gpu_hours"] is None and "no budget" in b["note"] for a, b in mine.items()
                       if a not in ("chem-ai", "bio-ml", "physics"))
            r = await client.call_tool("submit_workflow", {"jobspec": spec})
            assert not r.is_error, r.content[0].text
            run_id = r.structured_content["run_id"]
            assert r.structured_content["state"] == "running"
            assert r.structured_content["worst_case_gpu_hours"] == pytest.approx(5 / 60, abs=1e-6)
            # the pilot is a Slurm job the submit hook admitted: held in the ledger while the step waits
            (key,) = await anyio.to_thread.run_sync(lambda: wait_for(new_holds, 120, "the pilot job's hold"))
            assert ledger().hold(key).amount_h == pytest.approx(5 / 60, abs=1e-3)
            await anyio.to_thread.run_sync(lambda: wait_for(mark.exists, 120, "the step to start in the pilot"))
            r = await client.call_tool("run_status", {"run_id": run_id})
            assert not r.is_error and r.structured_content["state"] == "running"
            await anyio.sleep(1)  # the step's work: a GPU-second it holds (sacct counts whole seconds)
            gate.touch()
            deadline = time.monotonic() + 180
            while True:
                r = await client.call_tool("run_status", {"run_id": run_id})
                assert not r.is_error, r.content[0].text
                if r.structured_content["state"] != "running":
                    break
                assert time.monotonic() < deadline, "the run did not end"
                await anyio.sleep(0.3)
            status = r.structured_content
            r = await client.call_tool("explain_cost", {"run_id": run_id})
            assert not r.is_error, r.content[0].text
            return run_id, key, status, r.structured_content

    run_id, key, status, e = anyio.run(main)
    assert status["state"] == "ok" and status["steps"]["think"]["status"] == "ok", status
    (job,) = run_records.read(run_id)["allocations"]["a1"]["cost"]["job_ids"]
    # slurmdbd lists a job a moment after it ends
    truth = wait_for(lambda: sacct(c, [job]).get(job), 30, f"sacct to list job {job}")
    assert truth["state"] == "COMPLETED" and truth["gpu_s"] > 0 and mark.read_text().strip() == job
    think = e["steps"]["think"]
    # every GPU-second sacct says the pilot held is the step's or idle, and the step reported its tokens
    assert think["gpu_seconds"] >= 1 and think["gpu_seconds"] + e["idle"]["gpu_seconds"] == pytest.approx(truth["gpu_s"])
    assert think["tokens"] == 80 and think["gpu_s_per_1k_tokens"] == pytest.approx(think["gpu_seconds"] * 1000 / 80)
    assert e["charged_gpu_hours"] == pytest.approx(truth["gpu_s"] / 3600)  # h100 weight 1
    assert e["state"] == "ok" and e["account"] == "chem-ai"
    # the governor charged the job what sacct says, and closed its hold
    assert wait_charged([job]) == {job: pytest.approx(truth["gpu_s"])}
    wait_for(lambda: ledger().hold(key).state != "open", 60, "the pilot's hold to close")
    assert not c.run("squeue", "-h", "-n", "sg.mcp-agent.a1").stdout.strip()
