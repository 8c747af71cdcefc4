"""`slurmgov budget set-cpu` and `budget show` of CPU budgets, as users run them (real processes,
runuser for the roles): admins set a CPU budget, audited; others are refused in one line (exit 6);
`budget show` (and --json) shows CPU budget, held and available beside the account's GPU budget."""

from __future__ import annotations

import json
import re

from test_authz import LOCAL_SITE, SPOOF, As, shared_dir  # noqa: F401 - the fixture, used by name


def test_set_and_show_cpu_budgets_by_role(shared_dir):  # noqa: F811
    site_path = shared_dir / "roles.yaml"
    site_path.write_text(LOCAL_SITE.format(executor="local", nodes="n[1-2]", partition="local"))
    site_path.chmod(0o644)
    sg = As(None, site_path, shared_dir)
    sg("root", "budget", "show", check=0)  # seeds the site's accounts
    (shared_dir / "ledger.sqlite").chmod(0o666)
    p = sg("root", "budget", "set-cpu", "chem-ai", "5000", "--reason", "CPU allocation", check=0)
    assert re.fullmatch(r"account chem-ai: CPU budget 5000\.00 CPU-h \(\d{4}-\d\d\), 5000\.00 available", p.stdout.strip())

    shown = {b["account"]: b for b in sg.json("root", "budget", "show")}
    assert set(shown) == {"chem-ai", "bio-ml", "physics"}  # cpu:chem-ai is no account of its own here
    assert shown["chem-ai"]["cpu"] == {"period": shown["chem-ai"]["cpu"]["period"], "budget_h": 5000.0,
                                       "charged_h": 0.0, "held_h": 0.0, "available_h": 5000.0, "carried_h": 0.0}
    assert "cpu" not in shown["physics"] and shown["chem-ai"]["budget_h"] == 500.0  # the GPU budget: unchanged
    [one] = sg.json("root", "budget", "show", "chem-ai")
    assert one["cpu"]["budget_h"] == 5000.0
    table = sg("root", "budget", "show", "--format", "tsv", check=0).stdout.splitlines()
    assert table[0].split("\t")[-3:] == ["CPU budget CPU-h", "CPU held", "CPU available"]
    rows = {r.split("\t")[0]: r.split("\t") for r in table[1:]}
    assert [float(x) for x in rows["chem-ai"][-3:]] == [5000.0, 0.0, 5000.0] and rows["physics"][-3:] == ["-", "-", "-"]

    audit = sg.json("root", "audit")
    assert any(r["account"] == "cpu:chem-ai" and r["actor"] == "root" and r["new_budget_h"] == 5000.0
               and r["reason"] == "CPU allocation" for r in audit), audit
    # an operator sets no budget, GPU or CPU; a manager neither
    assert "daemon (operator) may not set the budget of account chem-ai" in sg(
        "daemon", "budget", "set-cpu", "chem-ai", "1", env=SPOOF, check=6).stderr
    assert "nobody (manager) may not set the budget of account chem-ai" in sg(
        "nobody", "budget", "set-cpu", "chem-ai", "1", check=6).stderr
    assert "not an account name" in sg("root", "budget", "set-cpu", "cpu:chem-ai", "1", check=2).stderr
    assert json.loads(sg("root", "budget", "show", "--json", check=0).stdout)[0]["account"] != "cpu:chem-ai"
