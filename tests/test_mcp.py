"""`slurmgov mcp`, driven by the MCP SDK's own client as an agent host would drive it: over stdio
(the server launched as a subprocess) and over streamable HTTP. An agent asks for a plan, is
refused for budget, takes a suggested cheaper plan, submits it, polls and reads the explanation;
the ledger's numbers are checked at each step. Hostile input gets one line and changes nothing.

Set SLURMGOV_TRANSCRIPT=FILE to have the conversation written out (the README's transcript).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from slurmgov.intent import jobspec, planner, run_records
from slurmgov.intent.alternatives import price
from slurmgov.ledger.store import Ledger
from slurmgov.site import model as site_mod

if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    import mcp  # in the test extra: under CI its absence is a failure
else:
    mcp = pytest.importorskip("mcp", reason="the MCP SDK (pip install -e '.[test]')")
import httpx2  # noqa: E402  (the SDK's HTTP client)
from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT = "physics"
CHAT = {"prompt_tokens": 1200, "completion_tokens": 300}
SPEC = f"""workflow: fanout-chat
account: {ACCOUNT}
steps:
  - {{id: plan, call: 'slurmgov.execution.demo_steps:plan_questions', params: {{topic: t, branches: 4}},
     resources: {{time: '00:05:00'}}}}
  - &branch
    id: ask-1
    call: slurmgov.execution.demo_steps:chat
    params: {{prompt_tokens: {CHAT['prompt_tokens']}, completion_tokens: {CHAT['completion_tokens']}}}
    after: [plan]
    resources: {{gpus: 1, time: '00:30:00'}}
    retries: 1
  - {{<<: *branch, id: ask-2}}
  - {{<<: *branch, id: ask-3}}
  - {{<<: *branch, id: ask-4}}
  - {{id: critic, call: 'slurmgov.execution.demo_steps:critique', after: [ask-1, ask-2, ask-3, ask-4],
     resources: {{gpus: 1, time: '00:10:00'}}}}
"""


@pytest.fixture
def site():
    return site_mod.load(ROOT / "site_configs" / "local.yaml")


@pytest.fixture
def ledger(site):
    led = Ledger.open(site.ledger_url())
    yield led
    led.disconnect()


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


SERVER = [sys.executable, "-m", "slurmgov.interface.cli", "mcp", "--site", str(ROOT / "site_configs" / "local.yaml")]


class Agent:
    """Calls tools as a host would, keeping a transcript of what was asked and answered."""

    def __init__(self, client):
        self.client = client
        self.lines: list[str] = []

    async def call(self, tool: str, args: dict, note: str = "") -> tuple[bool, dict | str]:
        r = await self.client.call_tool(tool, args)
        shown = {k: (v if not isinstance(v, (dict, list)) or k not in ("jobspec",) else "<jobspec>")
                 for k, v in args.items()}
        self.lines.append(f"agent> {tool}({json.dumps(shown)[:160]}){'   # ' + note if note else ''}")
        if r.is_error:
            text = r.content[0].text
            self.lines.append(f"slurmgov! {text}")
            return False, text
        self.lines.append(f"slurmgov> {json.dumps(_brief(r.structured_content), default=str)}")
        return True, r.structured_content


def _brief(data):
    """What the transcript shows of an answer (numbers rounded, bulky parts counted)."""
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if k in ("allocations", "steps") and isinstance(v, list):
                out[k] = f"<{len(v)}>"
            elif k == "jobspec":
                out[k] = "<jobspec>"
            else:
                out[k] = _brief(v)
        return out
    if isinstance(data, list):
        return [_brief(v) for v in data]
    return float(f"{data:.4g}") if isinstance(data, float) else data


async def _poll(agent: Agent, run_id: str, timeout: float = 180) -> dict:
    """run_status until the run has ended (tests/helpers.wait_for, in the client's event loop)."""
    deadline = time.monotonic() + timeout
    while True:
        r = await agent.client.call_tool("run_status", {"run_id": run_id})
        assert not r.is_error, r.content[0].text
        if r.structured_content["state"] != "running":
            agent.lines.append(f"agent> run_status({{\"run_id\": \"{run_id}\"}})   # polled until it ended")
            agent.lines.append(f"slurmgov> {json.dumps(_brief(r.structured_content))}")
            return r.structured_content
        if time.monotonic() > deadline:
            pytest.fail(f"run {run_id} still running after {timeout:.0f} s")
        await anyio.sleep(0.3)


async def _conversation(client, site, ledger) -> list[str]:
    agent = Agent(client)
    worst = planner.plan(jobspec.loads(SPEC), site).cost_h
    budget_h = round(worst * 0.6, 3)  # the whole fan-out does not fit; less of it does
    ledger.set_budget(ACCOUNT, budget_h, "none", actor="test", reason="a small grant")
    before = ledger.balance(ACCOUNT)

    ok, b = await agent.call("budget_status", {"account": ACCOUNT})
    assert ok and b["available_gpu_hours"] == pytest.approx(before.available_h) and b["held_gpu_hours"] == 0

    ok, p = await agent.call("plan_workflow", {"jobspec": SPEC})
    assert ok and p["feasible"] and not p["fits_budget"]
    assert p["worst_case_gpu_hours"] == pytest.approx(worst, abs=1e-6)
    assert p["shortfall_gpu_hours"] == pytest.approx(worst - budget_h, abs=1e-6)
    assert {s["id"] for s in p["steps"]} == {"plan", "ask-1", "ask-2", "ask-3", "ask-4", "critic"}

    ok, refusal = await agent.call("submit_workflow", {"jobspec": SPEC}, "the whole thing: refused")
    assert not ok and "\n" not in refusal and f"account {ACCOUNT}" in refusal and "GPU-h left" in refusal
    assert ledger.holds_open() == [] and ledger.balance(ACCOUNT) == before  # nothing held, nothing charged

    ok, s = await agent.call("suggest_cheaper", {"jobspec": SPEC})
    assert ok and not s["fits"] and 1 <= len(s["alternatives"]) <= 3 and s["nothing_fits"] is None
    for alt in s["alternatives"]:  # each fits, is priced as the planner prices it, and says what it gives up
        assert alt["worst_case_gpu_hours"] <= budget_h + 1e-9 and alt["gives_up"]
        assert price(alt["jobspec"], site).cost_h == pytest.approx(alt["worst_case_gpu_hours"])
    costs = [a["worst_case_gpu_hours"] for a in s["alternatives"]]
    assert costs == sorted(costs, reverse=True) and len({a["kind"] for a in s["alternatives"]}) == len(costs)
    chosen = s["alternatives"][0]  # the one that gives up least

    ok, sub = await agent.call("submit_workflow", {"jobspec": chosen["jobspec"]}, f"take: {chosen['gives_up']}")
    assert ok and sub["state"] == "running"
    run_id = sub["run_id"]
    hold = ledger.find_hold(f"run:{run_id}")  # the same hold `slurmgov run` places: its worst case
    assert hold is not None and hold.amount_h == pytest.approx(chosen["worst_case_gpu_hours"], abs=1e-6)
    assert sub["held_gpu_hours"] == pytest.approx(hold.amount_h) and hold.user == getpass.getuser()

    status = await _poll(agent, run_id)
    assert status["state"] == "ok", status
    charges = ledger.charges(f"run:{run_id}")
    charged = sum(c["charged_h"] for c in charges)
    after = ledger.balance(ACCOUNT)
    assert ledger.hold(f"run:{run_id}").state == "done" and after.held_h == pytest.approx(0)
    assert status["charged_gpu_hours"] == pytest.approx(charged) and after.charged_h == pytest.approx(charged)
    assert after.available_h == pytest.approx(budget_h - charged, abs=1e-6) and 0 < charged <= hold.amount_h

    ok, e = await agent.call("explain_cost", {"run_id": run_id})
    assert ok and e["charged_gpu_hours"] == pytest.approx(charged)
    assert e["released_gpu_hours"] == pytest.approx(hold.amount_h - charged, abs=1e-6)
    steps = e["steps"]
    gpu_s = sum(st["gpu_seconds"] for st in steps.values()) + e["idle"]["gpu_seconds"]
    assert gpu_s == pytest.approx(sum(c["gpu_seconds"] for c in charges))  # every charged GPU-second explained
    assert sum(st["share_of_hold"] for st in steps.values()) == pytest.approx(1.0)
    asked = [sid for sid in steps if sid.startswith("ask-")]
    assert asked and all(steps[sid]["prompt_tokens"] == CHAT["prompt_tokens"] for sid in asked)
    assert all(steps[sid]["tokens"] == sum(CHAT.values()) for sid in asked)
    assert all(steps[sid]["gpu_s_per_1k_tokens"] == pytest.approx(steps[sid]["gpu_seconds"] * 1000 / sum(CHAT.values()))
               for sid in asked)
    assert steps["critic"]["tokens"] is None  # it reported none

    ok, c = await agent.call("cancel_run", {"run_id": run_id}, "too late: it ended")
    assert ok and "already ended" in c["message"] and ledger.balance(ACCOUNT) == after

    res = await client.read_resource(f"slurmgov://budget/{ACCOUNT}")
    assert json.loads(res.contents[0].text)["charged_gpu_hours"] == pytest.approx(charged)
    res = await client.read_resource(f"slurmgov://runs/{ACCOUNT}")
    assert [r["run_id"] for r in json.loads(res.contents[0].text)] == [run_id]
    res = await client.read_resource("slurmgov://accounts")  # the ones this user may act for
    mine = {b["account"]: b for b in json.loads(res.contents[0].text)}
    assert set(mine) == set(site.accounts) and mine[ACCOUNT]["charged_gpu_hours"] == pytest.approx(charged)
    return agent.lines


def _transcript(lines: list[str]) -> None:
    path = os.environ.get("SLURMGOV_TRANSCRIPT")
    if path:
        Path(path).write_text("\n".join(lines) + "\n")


def test_an_agent_over_stdio_is_refused_takes_a_cheaper_plan_and_reads_its_cost(site, ledger):
    async def main():
        params = StdioServerParameters(command=SERVER[0], args=SERVER[1:], env=_env(), cwd=str(ROOT))
        async with Client(params) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {"budget_status", "plan_workflow", "suggest_cheaper", "submit_workflow",
                                  "run_status", "explain_cost", "cancel_run"}
            assert all(t.input_schema.get("type") == "object" and t.description for t in tools.values())
            assert tools["plan_workflow"].input_schema["required"] == ["jobspec"]
            return await _conversation(client, site, ledger)

    _transcript(anyio.run(main))


@pytest.fixture
def http_server():
    proc = subprocess.Popen([*SERVER, "--http", "--port", "0"], env=_env(), cwd=str(ROOT), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            m = re.search(r"serving MCP at (http://127\.0\.0\.1:\d+/mcp)", line)
            url = m.group(1) if m else None
        assert url, f"the server did not start (exit {proc.poll()})"
        token_file = site_mod.slurmgov_home() / "mcp-http-token"
        assert token_file.stat().st_mode & 0o077 == 0  # readable by this user only
        yield url, token_file.read_text().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


def _http(server) -> Client:
    """A client of the HTTP server that sends its bearer token, as a host configured with it would."""
    url, token = server
    headers = {"Authorization": f"Bearer {token}"}
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=60)))


def test_an_agent_over_streamable_http_does_the_same(site, ledger, http_server):
    async def main():
        async with _http(http_server) as client:
            return await _conversation(client, site, ledger)

    anyio.run(main)


def test_a_client_without_the_token_is_turned_away_and_changes_nothing(http_server, ledger):
    url, token = http_server
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "budget_status", "arguments": {"account": ACCOUNT}}}
    for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": token}):
        r = httpx2.post(url, json=body, headers={"Accept": "application/json, text/event-stream", **headers})
        assert r.status_code == 401 and "unauthorized" in r.text
    assert ledger.balances() == [] and ledger.audit() == []  # it did not even seed an account


def test_a_port_in_use_is_one_line_exit_7(http_server):
    port = http_server[0].rsplit(":", 1)[1].split("/")[0]
    p = subprocess.run([*SERVER, "--http", "--port", port], env=_env(), cwd=str(ROOT), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 7 and p.stderr.strip().splitlines()[-1].startswith(f"slurmgov: mcp: cannot listen on 127.0.0.1:{port}")


HOSTILE = [
    ({"jobspec": "workflow: x\naccount: physics\nsteps: [ {id: a, run: 'true'"}, "not valid YAML"),
    ({"jobspec": "workflow: x\n" + "#" * 300_000}, "bytes; a jobspec given here may have at most"),
    ({"jobspec": {"workflow": "x", "account": ACCOUNT, "steps": [{"id": f"s{i}", "run": "true"} for i in range(1001)]}},
     "steps: 1,001 steps"),
    ({"jobspec": {"workflow": "%d+.*[%]", "account": ACCOUNT, "steps": [{"id": "a", "run": "true"}]}}, "workflow"),
    ({"jobspec": {"workflow": "x", "account": ACCOUNT, "steps": [{"id": "a'); DROP TABLE holds;--", "run": "true"}]}},
     "id"),
    ({"jobspec": {"workflow": "x", "account": "rival", "steps": [{"id": "a", "run": "true"}]}},
     "may not act for account rival"),
    ({"jobspec": {"workflow": "x", "account": "phys'||'ics", "steps": [{"id": "a", "run": "true"}]}}, "account"),
    ({"jobspec": "workflow: x\naccount: physics\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10) if i else '1'}]\n" for i in range(9))
        + "steps: [{id: a, run: 'true', params: *l8}]\n"}, "once its YAML aliases are expanded"),
    ({"jobspec": 12}, "argument jobspec"),
    ({}, "argument jobspec"),
]


def test_hostile_input_is_one_line_and_changes_nothing(site, ledger, http_server, slurmgov_home):
    ledger.set_budget("rival", 100.0, "none", actor="admin", reason="another group's grant")  # not in the site file
    foreign = {"run_id": "20261201T000000-abcdef", "account": ACCOUNT, "user": "mallory", "status": "running",
               "hold_key": None, "pid": 1, "host": "elsewhere"}
    run_records.write(foreign["run_id"], foreign)
    audit, accounts = ledger.audit(), {b.account: b for b in ledger.balances()}

    async def main():
        async with _http(http_server) as client:
            async def refused(tool, args, fragment):
                r = await client.call_tool(tool, args)
                text = r.content[0].text
                assert r.is_error and "\n" not in text and fragment in text, (tool, args if len(str(args)) < 300 else "", text)
                assert "Traceback" not in text

            for args, fragment in HOSTILE:
                for tool in ("plan_workflow", "submit_workflow", "suggest_cheaper"):
                    await refused(tool, args, fragment)
            await refused("budget_status", {"account": "rival"}, "may not act for account rival")
            await refused("budget_status", {"account": "x'; DROP TABLE accounts;--"}, "is not an account name")
            await refused("budget_status", {"account": "%a+"}, "is not an account name")
            await refused("budget_status", {"account": "chem-ai\n"}, "is not an account name")
            await refused("suggest_cheaper", {"jobspec": SPEC, "account": "rival"}, "may not act for account rival")
            for tool in ("run_status", "explain_cost", "cancel_run"):
                await refused(tool, {"run_id": "../../etc/passwd"}, "is not a run id")
                await refused(tool, {"run_id": "x\n"}, "is not a run id")
                await refused(tool, {"run_id": "nope-123"}, "no run 'nope-123'")
                await refused(tool, {"run_id": foreign["run_id"]}, "is user mallory's")
            with pytest.raises(mcp.MCPError, match="may not act for account rival"):
                await client.read_resource("slurmgov://budget/rival")
            with pytest.raises(mcp.MCPError, match="may not act for account rival"):
                await client.read_resource("slurmgov://runs/rival")

    anyio.run(main)
    # nothing recorded, held, charged or changed; no run started
    assert ledger.holds_open() == [] and ledger.charges() == [] and ledger.audit() == audit
    after = {b.account: b for b in ledger.balances()}
    assert all(after[a] == b for a, b in accounts.items()) and set(after) - set(accounts) <= set(site.accounts)
    assert [d["run_id"] for d in run_records.read_all()] == [foreign["run_id"]]
    assert not list(slurmgov_home.glob("agent/*"))


def test_cancel_run_stops_a_running_workflow_and_settles_its_hold(site, ledger, http_server):
    spec = {"workflow": "long", "account": ACCOUNT, "steps": [
        {"id": "train", "run": "sleep 600", "resources": {"gpus": 2, "time": "00:10:00"}}]}

    async def main():
        async with _http(http_server) as client:
            r = await client.call_tool("submit_workflow", {"jobspec": spec})
            assert not r.is_error, r.content[0].text
            run_id = r.structured_content["run_id"]
            assert ledger.find_hold(f"run:{run_id}").state == "open"
            r = await client.call_tool("cancel_run", {"run_id": run_id})
            assert not r.is_error, r.content[0].text
            return run_id, r.structured_content

    run_id, c = anyio.run(main)
    hold = ledger.hold(f"run:{run_id}")
    charged = sum(x["charged_h"] for x in ledger.charges(hold.hold_key))
    assert c["state"] == "cancelled" and c["hold_state"] == hold.state == "cancelled"
    assert c["charged_gpu_hours"] == pytest.approx(charged) and ledger.balance(ACCOUNT).held_h == pytest.approx(0)
    assert ledger.balance(ACCOUNT).charged_h == pytest.approx(charged)


# ---- the governed actions themselves (mcp_tools.Desk), without a transport -------------------

def test_explain_cost_shows_the_kv_block_seconds_and_tokens_a_step_reported(site, ledger):
    from slurmgov.intent.launch import launch
    from slurmgov.interface.mcp_tools import Desk

    desk = Desk(site, str(ROOT / "site_configs" / "local.yaml"), ledger)
    out = '{"kv_block_seconds": 12.5, "usage": {"prompt_tokens": 64, "completion_tokens": 16}}'
    wf = jobspec.loads(f"workflow: kv\naccount: {ACCOUNT}\nsteps:\n"
                       f"  - {{id: decode, run: 'echo ''{out}''', resources: {{gpus: 1, time: '00:05:00'}}}}\n"
                       f"  - {{id: other, run: 'echo hi', resources: {{gpus: 1, time: '00:05:00'}}}}\n")
    rep = launch(wf, site, ledger, user=desk.user)
    e = desk.explain_cost(rep.result.run_id)
    assert e["steps"]["decode"]["kv_block_seconds"] == 12.5 and e["steps"]["decode"]["tokens"] == 80
    assert e["steps"]["other"]["kv_block_seconds"] is None and e["steps"]["other"]["tokens"] is None
    assert e["charged_gpu_hours"] == pytest.approx(ledger.balance(ACCOUNT).charged_h)


def test_an_infeasible_plan_gives_the_planners_refusal_as_data(site, ledger):
    from slurmgov.interface.mcp_tools import Desk

    desk = Desk(site, str(ROOT / "site_configs" / "local.yaml"), ledger)
    p = desk.plan_workflow(f"workflow: big\naccount: {ACCOUNT}\nsteps:\n"
                           "  - {id: small, run: 'true', resources: {gpus: 1}}\n"
                           "  - {id: huge, run: 'true', resources: {gpus: 16}, within: node}\n"
                           "  - {id: wide, run: 'true', resources: {gpus: 8, nodes: 4}, after: [huge]}\n")
    assert p["feasible"] is False  # every step that cannot be placed, not only the first
    assert [(r["step"], r["where"]) for r in p["refusals"]] == [("huge", "jobspec:5"), ("wide", "jobspec:6")]
    assert all(r["message"].startswith(f"{r['where']}: step '{r['step']}': ") for r in p["refusals"])
    assert ledger.holds_open() == []


def test_on_slurm_the_caller_acts_only_for_the_accounts_slurm_associates_it_with(root, ledger, tmp_path,
                                                                              monkeypatch):
    from slurmgov.errors import PermissionDenied
    from slurmgov.interface.mcp_tools import Desk

    fake = tmp_path / "bin" / "sacctmgr"  # what `sacctmgr -n -P show assoc where user=U format=account` prints
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n[ "$5" = "where" ] && [ "$6" = "user=alice" ] && printf "bio-ml\\nchem-ai\\n"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    slurm_site = site_mod.load(root / "site_configs" / "demo-cluster.yaml")
    desk = Desk(slurm_site, str(root / "site_configs" / "demo-cluster.yaml"), ledger, user="alice")
    assert desk.accounts() == ["bio-ml", "chem-ai"]
    assert desk.budget_status("chem-ai")["account"] == "chem-ai"
    with pytest.raises(PermissionDenied, match="may not act for account physics: not one Slurm associates"):
        desk.budget_status("physics")  # in the site file, but not alice's


def test_without_the_sdk_slurmgov_mcp_says_how_to_get_it():
    code = "import sys; sys.modules['mcp'] = None; from slurmgov.interface.cli import main; main(['mcp'])"
    p = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=str(ROOT), capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 7 and p.stderr.strip().splitlines()[-1] == (
        "slurmgov: mcp: needs the MCP SDK: pip install 'slurmgov[mcp]'")


# ---- on the real Slurm test cluster (tests/slurm_harness.py): who may act for which account ---

@pytest.fixture
def home_of():
    """A SLURMGOV_HOME another user owns (the test's tmp_path is root's only), removed after."""
    import pwd
    import shutil
    import tempfile

    made = []

    def make(user: str) -> Path:
        pw = pwd.getpwnam(user)
        home = Path(tempfile.mkdtemp(prefix=f"sg-mcp-{user}-"))
        os.chown(home, pw.pw_uid, pw.pw_gid)
        made.append(home)
        return home

    yield make
    for home in made:
        shutil.rmtree(home, ignore_errors=True)


def _as(c, user: str, home: Path, *env_words: str) -> StdioServerParameters:
    """`slurmgov mcp` on the demo cluster's site, run as ``user`` (runuser), over stdio."""
    from helpers import python_as

    py, env = python_as(c, user)
    return StdioServerParameters(
        command="runuser", cwd="/", env={**env, "SLURMGOV_HOME": str(home)},
        args=["-u", user, "--", "env", *env_words, py, "-m", "slurmgov.interface.cli", "mcp", "--site",
              str(ROOT / "site_configs" / "demo-cluster.yaml")])


def _slurm_spec(account: str) -> dict:
    return {"workflow": "assoc-check", "account": account,
            "steps": [{"id": "a", "run": "true", "resources": {"gpus": 1, "gpu_type": "h100", "time": "00:05:00"}}]}


@pytest.mark.slurm
def test_on_slurm_a_user_acts_only_for_the_accounts_slurm_associates_them_with(slurm_cluster, home_of):
    from slurm_harness import ACCOUNTS, LIMITED_ACCOUNT, LIMITED_USER

    c = slurm_cluster
    assoc = c.run("sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={LIMITED_USER}", "format=account",
                  check=True).stdout.split()
    assert set(assoc) == {LIMITED_ACCOUNT}  # Slurm's own answer: the one account it may charge
    others = [a for a in ACCOUNTS if a != LIMITED_ACCOUNT]  # in the site file, and other users' accounts
    home = home_of(LIMITED_USER)
    # $USER and $LOGNAME say root (what getpass.getuser() reads first): the server must ask Slurm
    # about the user it runs as, not the one its environment names
    params = _as(c, LIMITED_USER, home, "USER=root", "LOGNAME=root")

    async def main():
        async with Client(params) as client:
            res = await client.read_resource("slurmgov://accounts")
            assert [b["account"] for b in json.loads(res.contents[0].text)] == [LIMITED_ACCOUNT]
            r = await client.call_tool("budget_status", {"account": LIMITED_ACCOUNT})
            assert not r.is_error and r.structured_content["budget_gpu_hours"] == 200, r.content[0].text
            r = await client.call_tool("plan_workflow", {"jobspec": _slurm_spec(LIMITED_ACCOUNT)})
            assert not r.is_error and r.structured_content["feasible"] and r.structured_content["fits_budget"]
            assert r.structured_content["worst_case_gpu_hours"] == pytest.approx(5 / 60, abs=1e-6)

            async def refused(tool, args, fragment):
                r = await client.call_tool(tool, args)
                text = r.content[0].text
                assert r.is_error and "\n" not in text and fragment in text, (tool, text)

            for other in others:
                why = f"user {LIMITED_USER} may not act for account {other}: not one Slurm associates for this user"
                await refused("budget_status", {"account": other}, f"account: {why}")
                await refused("plan_workflow", {"jobspec": _slurm_spec(other)}, f"jobspec: account: {why}")
                await refused("submit_workflow", {"jobspec": _slurm_spec(other)}, f"jobspec: account: {why}")
                await refused("suggest_cheaper", {"jobspec": _slurm_spec(LIMITED_ACCOUNT), "account": other}, why)
                with pytest.raises(mcp.MCPError, match=f"may not act for account {other}"):
                    await client.read_resource(f"slurmgov://budget/{other}")
                with pytest.raises(mcp.MCPError, match=f"may not act for account {other}"):
                    await client.read_resource(f"slurmgov://runs/{other}")

    anyio.run(main)
    # nothing was submitted, held or charged; the server wrote only this user's own ledger
    assert not c.run("squeue", "-h", "-u", LIMITED_USER).stdout.strip()
    led = Ledger.open(f"sqlite:///{home}/ledger.sqlite")
    try:
        assert led.holds_open() == [] and led.charges() == []
        assert {b.account for b in led.balances()} == {LIMITED_ACCOUNT}  # the others were never even seeded
    finally:
        led.disconnect()
    assert not list(home.glob("agent/*"))


@pytest.mark.slurm
def test_on_slurm_the_accounts_are_each_users_own(slurm_cluster, home_of):
    c = slurm_cluster
    assoc = sorted(c.run("sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={c.user}", "format=account",
                         check=True).stdout.split())

    async def main():
        async with Client(_as(c, c.user, home_of(c.user))) as client:
            res = await client.read_resource("slurmgov://accounts")
            return [b["account"] for b in json.loads(res.contents[0].text)]

    assert anyio.run(main) == assoc == ["bio-ml", "chem-ai", "physics"]
