"""The researchers' page, loaded in a real headless Chromium while a workflow runs."""

import re
import threading
import time
from pathlib import Path

import browser
import pytest

from slurmgov.intent import jobspec
from slurmgov.intent.launch import launch
from slurmgov.interface import dashboard
from slurmgov.ledger.store import Ledger
from slurmgov.site import model as site_mod

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

    def finished(result, charged_h):
        page["state"].finish(result.status, charged_h)
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


def test_site_dashboard_shows_every_account_and_recent_workflows(root, tmp_path, slurmgov_home):
    """`slurmgov dashboard`: the site-wide page, in Chromium, agrees with the ledger and the runs."""
    import json
    import os
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    exe = browser.ensure()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "SLURMGOV_HOME": str(slurmgov_home), "COLUMNS": "200"}
    run = subprocess.run([str(bin_dir / "slurmgov"), "run", str(root / "jobspecs" / "research-fanout.yaml"), "--json"],
                         capture_output=True, text=True, env=env, timeout=180)
    assert run.returncode == 0, run.stderr
    run_id = json.loads(run.stdout)["run_id"]
    server = subprocess.Popen([str(bin_dir / "slurmgov"), "dashboard", "--port", "0"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        url = re.search(r"(http://\S+/#token=\S+)", line).group(1)
        base, token = url.split("#token=")
        # the page's data goes only to a request with this start's token: any local user reaches the port
        for headers in ({}, {"Authorization": "Bearer " + token[:-1]}, {"Authorization": token}):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(base + "state.json", headers=headers), timeout=30)
            assert refused.value.code == 401 and "token" in json.loads(refused.value.read())["error"]
        with urllib.request.urlopen(urllib.request.Request(
                base + "state.json", headers={"Authorization": "Bearer " + token}), timeout=30) as r:
            assert {a["account"] for a in json.loads(r.read())["accounts"]} >= {"chem-ai", "bio-ml", "physics"}
        html = browser.dom(exe, url).split("<script>")[0]  # the rendered page, not the script's templates
        ledger = Ledger.open(site_mod.load(root / "site_configs" / "local.yaml").ledger_url())
        for b in ledger.balances():  # every account, with the ledger's own numbers
            row = re.search(rf'<tr data-account="{b.account}">(.*?)</tr>', html).group(1)
            assert f'<td class="available">{b.available_h:.3f}</td>' in row
        run_row = re.search(rf'<tr data-run="{run_id}">(.*?)</tr>', html).group(1)
        assert "deep-research" in run_row and '<td class="status ok">ok</td>' in run_row and "8 / 8" in run_row
        assert re.search(r'<svg class="plot" data-account="chem-ai"', html)  # its burn-down plot
        site = site_mod.load(root / "site_configs" / "local.yaml")
        assert re.findall(r'<tr data-leaf="([^"]+)">', html) == list(site.topology.leaves)  # free slots per leaf
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(exe, url, str(ARTIFACTS / "site-dashboard.png"), size="1280,1100")
        assert (ARTIFACTS / "site-dashboard.png").stat().st_size > 10_000
    finally:
        server.terminate()
        server.wait(10)
