"""Hostile names at every door a user can reach without Slurm: jobspecs, site files, the CLI.

Names reach Lua patterns, shells, sacctmgr and SQL; slurmgov accepts only plain names
(letters, digits, ``.``, ``_``, ``-``, at most 64) and refuses anything else with one line
naming the field, before it goes anywhere. (The hook's own handling of hostile account
names inside slurmctld is in test_slurm_hook.py.)
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]

HOSTILE = [
    "chem%-ai",                              # Lua pattern escape
    ".*",                                    # regex / Lua pattern
    "a;rm -rf /tmp/x",                       # shell
    "$(touch /tmp/sg-pwned)",                # shell substitution
    "`id`",
    "x'); DROP TABLE holds; --",             # SQL
    "chem-ai\nadmit\t1\t2",                  # a forged journal/snapshot line
    "chem-ai\n",                             # Python's `$` matches before a trailing newline
    '"quoted"',
    "a" * 5000,                              # very long
    "-A",                                    # an option in disguise
    "name with space",
    "ünïcode",
]


def sg(*args, env=None, input=None):
    return subprocess.run([str(BIN / "slurmgov"), *map(str, args)], capture_output=True, text=True, input=input,
                          env={**os.environ, **(env or {})}, timeout=60)


def one_line_refusal(p, code=2) -> str:
    assert p.returncode == code, p.stderr + p.stdout
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    return lines[0]


def jobspec(tmp_path, account="chem-ai", workflow="wf", step="s1") -> Path:
    path = tmp_path / "hostile.yaml"
    path.write_text(json.dumps({"workflow": workflow, "account": account,
                                "steps": [{"id": step, "run": "true", "resources": {"gpus": 1}}]}))
    return path


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("field", ["account", "workflow", "step"])
def test_jobspec_names_are_refused_before_anything_runs(tmp_path, name, field):
    path = jobspec(tmp_path, **{field: name})
    line = one_line_refusal(sg("run", path))
    assert "hostile.yaml" in line and (field if field != "step" else "id") in line
    assert not Path("/tmp/sg-pwned").exists()
    runs = Path(os.environ["SLURMGOV_HOME"]) / "runs"
    assert not runs.exists() or not list(runs.glob("*.json"))  # nothing ran, nothing was recorded


@pytest.mark.parametrize("name", HOSTILE)
def test_site_file_account_names_are_refused(tmp_path, name):
    site = (ROOT / "site_configs" / "local.yaml").read_text()
    path = tmp_path / "site.yaml"
    path.write_text(site.replace("chem-ai:", json.dumps(name) + ":", 1))
    line = one_line_refusal(sg("plan", ROOT / "jobspecs" / "research-fanout.yaml", "--site", path))
    assert "site.yaml" in line and "account" in line


@pytest.mark.parametrize("name", HOSTILE)
def test_budget_commands_refuse_hostile_accounts_and_the_ledger_is_untouched(name, slurmgov_home):
    p = sg("budget", "set", name, "10", "--reason", "x")
    line = one_line_refusal(p)
    assert "ACCOUNT" in line or "account" in line or "No such option" in line
    db = slurmgov_home / "ledger.sqlite"
    if db.exists():  # nothing was written for the hostile name, and every table is still there
        conn = sqlite3.connect(db)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"holds", "charges", "audit", "accounts"} <= tables
        assert conn.execute("SELECT COUNT(*) FROM accounts WHERE account = ?", (name,)).fetchone()[0] == 0
        conn.close()
