"""Tokens as a metered consequence: a step's reported usage reaches the ledger per step, the
usage report, the run report, the run record and the dashboards, beside its GPU-seconds."""

import io
import json
import re

import pytest
from rich.console import Console

from slurmgov.intent import jobspec, run_records
from slurmgov.intent.launch import launch
from slurmgov.interface import dashboard, report, site_dashboard
from slurmgov.ledger.store import Ledger
from slurmgov.site import model as site_mod

STEPS = """workflow: chatty
account: chem-ai
steps:
  - {id: ask, call: 'slurmgov.execution.demo_steps:chat', params: {prompt_tokens: 1500, completion_tokens: 500},
     resources: {gpus: 1, time: '00:05:00'}}
  - {id: again, call: 'slurmgov.execution.demo_steps:chat', params: {prompt_tokens: 700, completion_tokens: 300},
     resources: {gpus: 1, time: '00:05:00'}, after: [ask]}
  - id: liar
    run: 'echo ''{"usage": {"prompt_tokens": -5, "completion_tokens": "many"}}'''
    resources: {gpus: 1, time: '00:05:00'}
  - {id: quiet, run: 'echo done', resources: {gpus: 1, time: '00:05:00'}}
"""


@pytest.fixture
def local(root):
    return site_mod.load(root / "site_configs" / "local.yaml")


def test_reported_tokens_are_recorded_per_step_and_shown_with_gpu_seconds_per_1k(local):
    ledger = Ledger.open(local.ledger_url())
    seen: dict = {}
    rep = launch(jobspec.loads(STEPS, "chatty.yaml"), local, ledger, user="alice",
                 on_change=lambda engine: seen.setdefault("engine", engine))
    assert rep.result.status == "ok"
    by_step = {c["step"]: c for c in ledger.charges(rep.hold_key)}
    assert (by_step["ask"]["prompt_tokens"], by_step["ask"]["completion_tokens"]) == (1500, 500)
    assert (by_step["again"]["prompt_tokens"], by_step["again"]["completion_tokens"]) == (700, 300)
    # a malformed report records no tokens and is charged all the same; so is a step reporting none
    for sid in ("liar", "quiet"):
        assert by_step[sid]["prompt_tokens"] is None and by_step[sid]["completion_tokens"] is None
        assert by_step[sid]["gpu_seconds"] > 0
    # per step on the run's attributions too (on Slurm, where the charges are the jobs', only there)
    attributed = {a["step"]: a for a in ledger.attributions(rep.result.run_id) if a["step"]}
    assert (attributed["ask"]["prompt_tokens"], attributed["ask"]["completion_tokens"]) == (1500, 500)
    assert attributed["liar"]["prompt_tokens"] is None
    usage = {r["key"]: r for r in ledger.usage(by="step")}
    assert usage["ask"]["tokens"] == 2000 and usage["again"]["tokens"] == 1000 and usage["quiet"]["tokens"] is None
    assert usage["ask"]["gpu_s_per_1k_tokens"] == pytest.approx(by_step["ask"]["gpu_seconds"] / 2)
    # the money is the GPU time alone: tokens change no amount
    assert sum(r["charged_h"] for r in usage.values()) == pytest.approx(ledger.balance("chem-ai").charged_h)
    by_wf = ledger.usage(by="workflow")[0]
    assert by_wf["tokens"] == 3000 and by_wf["prompt_tokens"] == 2200

    buf = io.StringIO()
    report.run_tables(rep, ledger.balance("chem-ai"), Console(file=buf, width=250))
    ask_row = next(ln for ln in buf.getvalue().splitlines() if re.match(r"^[│ ]*ask\s", ln))
    assert "2,000" in ask_row and "GPU-s/1k tokens" in buf.getvalue()

    record = run_records.read(rep.result.run_id)
    assert (record["steps"]["ask"]["prompt_tokens"], record["steps"]["ask"]["completion_tokens"]) == (1500, 500)
    (run,) = site_dashboard.recent_runs(run_records.runs_dir())
    assert run["tokens"] == 3000
    assert run["gpu_s_per_1k_tokens"] == pytest.approx(
        (rep.result.steps["ask"].gpu_seconds + rep.result.steps["again"].gpu_seconds) / 3)
    json.dumps(run)  # served as JSON

    page = dashboard.DashboardState(rep.plan, ledger)  # the run's own page
    page.update(seen["engine"])
    steps = {st["id"]: st for st in page.snapshot()["steps"]}
    assert steps["ask"]["tokens"] == 2000 and steps["quiet"]["tokens"] is None
    assert steps["ask"]["gpu_s_per_1k_tokens"] == pytest.approx(rep.result.steps["ask"].gpu_seconds / 2)
