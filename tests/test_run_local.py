"""Full local runs: Dask executes the steps, the ledger holds, charges and releases."""

import time

import pytest

from slurmgov.errors import BudgetRefused
from slurmgov.intent import jobspec
from slurmgov.intent.launch import launch
from slurmgov.ledger.store import Ledger
from slurmgov.site import model as site_mod


@pytest.fixture
def local(root):
    return site_mod.load(root / "site_configs" / "local.yaml")


@pytest.fixture
def ledger(local):
    return Ledger.open(local.ledger_url())


def wf(steps: str, account="chem-ai", extra=""):
    return jobspec.loads(f"workflow: t\naccount: {account}\n{extra}steps:\n{steps}", "t.yaml")


@pytest.mark.parametrize("name", ["research-fanout", "tensor-parallel-eval", "multinode-finetune"])
def test_each_example_runs_and_settles(root, local, ledger, name):
    w = jobspec.load(root / "jobspecs" / f"{name}.yaml")
    rep = launch(w, local, ledger, user="alice")
    assert rep.result.status == "ok", {s: r.reason for s, r in rep.result.steps.items()}
    assert all(r.status == "ok" and len(r.attempts) == 1 for r in rep.result.steps.values())
    hold = ledger.hold(rep.hold_key)
    assert hold.state == "done" and hold.remaining_h == pytest.approx(0)
    b = ledger.balance(w.account)
    assert b.held_h == pytest.approx(0)
    # what was charged is what the allocations held: the GPU-seconds the steps used, at the type's
    # weight, plus the allocations' idle time (as Slurm would bill the pilots)
    used = sum(r.gpu_seconds for r in rep.result.steps.values()) / 3600
    held = sum(a.cost_h for a in rep.allocations.values())
    idle = sum(a.idle_gpu_s for a in rep.allocations.values()) / 3600
    assert b.charged_h == pytest.approx(held, rel=1e-6, abs=1e-6) and used > 0
    assert held == pytest.approx(used + idle, rel=1e-6, abs=1e-6)  # these examples' types weigh 1
    assert b.available_h == pytest.approx(b.budget_h - held, abs=1e-6)
    assert rep.record_path.exists()


def test_outputs_flow_downstream_and_gpus_are_distinct(root, local, ledger):
    rep = launch(jobspec.load(root / "jobspecs" / "research-fanout.yaml"), local, ledger, user="alice")
    steps = rep.result.steps
    assert steps["critic"].output["reviewed"] == 4  # the critic saw all four researchers' findings
    assert steps["research-2"].output["question"].endswith("angle 2")
    ids = [steps[f"research-{i}"].output["gpus"] for i in range(1, 5)]
    assert all(len(g) == 1 for g in ids)
    tp = launch(jobspec.load(root / "jobspecs" / "tensor-parallel-eval.yaml"), local, ledger).result.steps
    assert sorted(tp["generate-tp4"].output["gpus"]) == ["0", "1", "2", "3"]


def test_shell_step_sees_its_inputs_and_environment(local, ledger):
    w = wf("  - {id: a, run: 'echo [1, 2, 3]'}\n"
           "  - id: b\n    after: [a]\n    resources: {gpus: 2}\n"
           "    run: python3 -c \"import json,os; print(json.dumps([json.load(open(os.environ['SLURMGOV_INPUTS'])), os.environ['CUDA_VISIBLE_DEVICES'], os.environ['SLURMGOV_STEP']]))\"\n")
    rep = launch(w, local, ledger)
    assert rep.result.steps["a"].output == [1, 2, 3]
    inputs, devices, step = rep.result.steps["b"].output
    assert inputs == {"a": [1, 2, 3]} and len(devices.split(",")) == 2 and step == "b"


def test_retries_charge_every_attempt(local, ledger):
    w = wf("  - {id: f, call: 'slurmgov.execution.demo_steps:flaky', params: {fail_times: 2}, retries: 2, resources: {gpus: 1}}\n")
    rep = launch(w, local, ledger)
    rec = rep.result.steps["f"]
    assert rec.status == "ok" and len(rec.attempts) == 3 and rec.output == {"attempt": 3}
    charges = [c for c in ledger.charges(rep.hold_key) if c["step"] == "f"]  # (and the allocation's idle time)
    assert sorted(c["attempt"] for c in charges) == [1, 2, 3]
    assert [c["status"] for c in sorted(charges, key=lambda c: c["attempt"])] == ["failed", "failed", "ok"]


def test_failure_skips_dependants_and_continues_elsewhere(local, ledger):
    w = wf("  - {id: bad, run: 'echo boom >&2; exit 3', resources: {gpus: 1}}\n"
           "  - {id: child, run: 'echo never', after: [bad]}\n"
           "  - {id: other, run: 'sleep 0.3; echo fine', resources: {gpus: 1}}\n")
    rep = launch(w, local, ledger)
    s = rep.result.steps
    assert rep.result.status == "failed"
    assert s["bad"].status == "failed" and "exit status 3: boom" in s["bad"].reason
    assert s["child"].status == "skipped" and s["child"].reason == "dependency bad failed"
    assert s["other"].status == "ok"
    assert ledger.hold(rep.hold_key).state == "failed" and ledger.balance("chem-ai").held_h == pytest.approx(0)


def test_on_failure_cancel_starts_nothing_more(local, ledger):
    w = wf("  - {id: bad, run: 'exit 1'}\n"
           "  - {id: later, run: 'echo x', after: [ok1]}\n"
           "  - {id: ok1, run: 'sleep 0.5'}\n", extra="on_failure: cancel\n")
    rep = launch(w, local, ledger)
    s = rep.result.steps
    assert rep.result.status == "cancelled"
    assert s["bad"].status == "failed" and s["later"].status == "cancelled"


def test_step_time_limit_kills_the_step(local, ledger):
    w = wf("  - {id: slow, run: 'sleep 30', resources: {time: '0:02'}}\n")
    t = time.time()
    rep = launch(w, local, ledger)
    assert time.time() - t < 15
    assert rep.result.steps["slow"].attempts[0].status == "timeout"


def test_budget_refusal_runs_nothing(local, ledger, tmp_path):
    ledger.set_budget("physics", 1.0, "monthly", actor="test", reason="tiny")
    marker = tmp_path / "ran"
    w = wf(f"  - {{id: a, run: 'touch {marker}', resources: {{gpus: 4, time: '01:00:00'}}}}\n", account="physics")
    with pytest.raises(BudgetRefused) as exc:
        launch(w, local, ledger)
    assert str(exc.value) == "account physics: 1.0 GPU-h left, workflow needs up to 4.0 GPU-h"
    assert not marker.exists()
    assert ledger.balance("physics").held_h == 0


def test_allocations_start_late_and_stop_early(local, ledger):
    # a1 (1 GPU) runs first; the 4-GPU allocation starts only when its step is ready
    w = wf("  - {id: first, run: 'sleep 0.4', resources: {gpus: 1}}\n"
           "  - {id: cpu, run: 'sleep 0.4', after: [first]}\n"
           "  - {id: second, run: 'sleep 0.2', after: [cpu], resources: {gpus: 4}}\n")
    rep = launch(w, local, ledger)
    a = {al.spec.gpus: al for al in rep.result.allocations.values() if al.spec.kind == "gpu"}
    assert a[1].ended <= a[4].started  # never both held: no GPU sat idle waiting upstream
    first = rep.result.steps["first"].attempts[0]
    assert a[1].idle_gpu_s < 1.0 and a[1].busy_gpu_s == pytest.approx(first.gpu_seconds)


def test_interrupt_releases_the_hold_and_charges_what_ran(local, ledger):
    w = wf("  - {id: long, run: 'sleep 20', resources: {gpus: 2}}\n")
    seen = {}

    def interrupt(engine):
        if any(r.status == "running" for r in engine.steps.values()):
            seen.setdefault("t", time.time())
            if time.time() - seen["t"] > 0.3:
                raise KeyboardInterrupt

    t = time.time()
    with pytest.raises(KeyboardInterrupt):
        launch(w, local, ledger, run_id="intr", on_change=interrupt)
    assert time.time() - t < 10  # the shell step was killed, not waited for
    hold = ledger.hold("run:intr")
    assert hold.state == "cancelled"
    b = ledger.balance("chem-ai")
    assert b.held_h == 0 and b.charged_h > 0  # the interrupted attempt is charged, the rest released


def test_one_cost_story_the_charge_is_steps_plus_waste_everywhere(root, local, ledger, tmp_path):
    """A run's charge = its steps' costs + its allocations' idle time, in its report, its JSON,
    `slurmgov runs`, the ledger and the site dashboard alike."""
    import json
    import subprocess
    import sys

    from slurmgov.interface.site_dashboard import site_state
    from slurmgov.site.model import slurmgov_home

    spec = tmp_path / "story.yaml"
    # two steps in one allocation, one idle while the other finishes: there is waste to account for
    spec.write_text("workflow: story\naccount: chem-ai\nsteps:\n"
                    "  - {id: short, run: 'sleep 0.1', resources: {gpus: 1}}\n"
                    "  - {id: long, run: 'sleep 0.8', resources: {gpus: 1}}\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, "-m", "slurmgov.interface.cli", "run", str(spec), "--json"],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    charged = doc["charged_gpu_hours"]
    steps_h = sum(s["cost"]["cost_h"] for s in doc["steps"].values())
    (alloc,) = doc["allocations"].values()
    waste_h = alloc["idle_gpu_s"] * alloc["cost_h"] / alloc["held_gpu_s"]
    assert doc["waste_gpu_seconds"] > 0 and waste_h > 0
    assert charged == pytest.approx(steps_h + waste_h, abs=1e-6)
    assert charged == pytest.approx(alloc["cost_h"], abs=1e-6)
    ledger_h = sum(c["charged_h"] for c in ledger.charges(f"run:{doc['run_id']}"))
    assert charged == pytest.approx(ledger_h, abs=1e-9)
    listed = json.loads(subprocess.run([sys.executable, "-m", "slurmgov.interface.cli", "runs", "--json"],
                                       capture_output=True, text=True, env=env, timeout=60, check=True).stdout)
    assert [x["charged_h"] for x in listed] == [pytest.approx(charged, abs=1e-9)]
    (run,) = site_state(local, ledger, slurmgov_home())["runs"]
    assert run["cost_h"] == pytest.approx(charged, abs=1e-9)
    assert ledger.balance("chem-ai").charged_h == pytest.approx(charged, abs=1e-6)
