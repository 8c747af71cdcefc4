"""The researchers' page, loaded in a real headless Chromium while a workflow runs."""

import re
import threading
import time
from pathlib import Path

import pytest

import browser
from slurmgov.governance import site as site_mod
from slurmgov.governance.ledger import Ledger
from slurmgov.intent import jobspec
from slurmgov.intent.launch import launch
from slurmgov.interface import dashboard

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def statuses(html: str) -> dict:
    return dict(re.findall(r'<g class="step" data-step="([^"]+)" data-status="([a-z]+)"', html))


def test_page_follows_a_running_workflow(root, tmp_path):
    exe = browser.ensure()
    gate = tmp_path / "gate"
    wf = jobspec.loads(
        "workflow: watched\naccount: chem-ai\nsteps:\n"
        "  - {id: first, run: 'sleep 0.2', resources: {gpus: 1}}\n"
        f"  - {{id: gate, run: 'while [ ! -f {gate} ]; do sleep 0.05; done', after: [first], resources: {{gpus: 2}}}}\n"
        "  - {id: last, run: 'echo done', after: [gate], resources: {gpus: 1}}\n", "watched.yaml")
    site = site_mod.load(root / "site_configs" / "local.yaml")
    ledger = Ledger.open(site.ledger_url())
    page, seen = {}, {}
    checked = threading.Event()

    def admitted(p, hold):
        page["state"] = dashboard.DashboardState(p, ledger)

    def backend_up(backend):
        page["url"] = dashboard.install(backend, page["state"])

    def finished(result):
        page["state"].finish(result.status)
        try:
            seen["final"] = browser.dom(exe, page["url"])
            ARTIFACTS.mkdir(exist_ok=True)
            browser.screenshot(exe, page["url"], str(ARTIFACTS / "dashboard.png"))
        finally:
            checked.set()

    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rep", launch(
        wf, site, ledger, on_admitted=admitted, on_backend=backend_up, on_finish=finished,
        on_change=lambda e: page["state"].update(e))))
    t.start()
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            st = page.get("state")
            if st and st.engine and st.engine.steps["gate"].status == "running":
                break
            time.sleep(0.05)
        else:
            pytest.fail("the gate step never started")
        running = browser.dom(exe, page["url"])
    finally:
        gate.touch()
        t.join(timeout=120)
    assert checked.is_set() and "rep" in result
    # while running: the page showed the DAG with each step's live state
    assert statuses(running) == {"first": "ok", "gate": "running", "last": "waiting"}, running[:2000]
    assert 'id="status">running<' in running
    # at the end: every step done, the numbers match what the ledger charged
    final = seen["final"]
    assert statuses(final) == {"first": "ok", "gate": "ok", "last": "ok"}
    assert 'id="progress">3 / 3<' in final
    charged = float(re.search(r'id="charged">([0-9.]+) GPU-h<', final).group(1))
    assert charged == pytest.approx(result["rep"].charged_h, abs=1e-5) and charged > 0
    left = float(re.search(r'id="left">([0-9.]+) GPU-h<', final).group(1))
    assert left == pytest.approx(ledger.balance("chem-ai").available_h, abs=0.01)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
