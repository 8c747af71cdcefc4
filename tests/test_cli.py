"""The CLI as a user meets it: real processes, exit codes, one-line errors, no tracebacks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def sg(*args, env=None, check=None):
    proc = subprocess.run([str(BIN / "slurmgov"), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120, check=False)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    if check is not None:
        assert proc.returncode == check, proc.stderr + proc.stdout
    return proc


def test_plan_json_on_the_demo_cluster(root):
    p = sg("plan", root / "jobspecs/multinode-finetune.yaml", "--site", root / "site_configs/demo-cluster.yaml",
           "--json", check=0)
    d = json.loads(p.stdout)
    assert d["site"] == "demo-cluster" and d["worst_case_gpu_hours"] == pytest.approx(16.25)
    opts = {o for a in d["allocations"] for o in a["slurm_options"]}
    assert "--switches=1@00:10:00" in opts


def test_plan_table(root):
    p = sg("plan", root / "jobspecs/research-fanout.yaml", check=0)
    assert "worst case" in p.stdout and "research-1" in p.stdout


def test_run_then_budget_and_usage(root):
    p = sg("run", root / "jobspecs/research-fanout.yaml", check=0)
    assert "held up to 3.33 GPU-h" in p.stdout and "run " in p.stdout
    bal = {b["account"]: b for b in json.loads(sg("budget", "show", "--json", check=0).stdout)}
    assert bal["chem-ai"]["held_h"] == 0 and 0 < bal["chem-ai"]["charged_h"] < 0.01
    assert bal["chem-ai"]["available_h"] == pytest.approx(500 - bal["chem-ai"]["charged_h"])
    rows = json.loads(sg("usage", "--by", "step", "--json", check=0).stdout)
    assert {r["key"] for r in rows} >= {"research-1", "critic"}
    by_wf = json.loads(sg("usage", "--by", "workflow", "--json", check=0).stdout)
    assert by_wf[0]["key"] == "deep-research"
    assert by_wf[0]["charged_h"] == pytest.approx(bal["chem-ai"]["charged_h"])


def test_run_json(root):
    d = json.loads(sg("run", root / "jobspecs/tensor-parallel-eval.yaml", "--json", check=0).stdout)
    assert d["status"] == "ok" and d["steps"]["generate-tp4"]["output"]["tp"] == 4


def test_budget_refusal_exits_4_with_the_message(root):
    sg("budget", "set", "physics", "2", "--reason", "test", check=0)
    p = sg("run", root / "jobspecs/multinode-finetune.yaml", check=4)
    assert p.stderr.strip() == "slurmgov: account physics: 2.0 GPU-h left, workflow needs up to 16.2 GPU-h"


@pytest.mark.parametrize("args,code,fragment", [
    (["plan", "nope.yaml"], 2, "nope.yaml: no such file"),
    (["plan", "jobspecs/research-fanout.yaml", "--site", "README.md"], 2, "README.md"),
    (["budget", "set", "chem-ai", "-5"], 2, "GPU_HOURS"),
    (["budget", "set", "chem ai; rm", "5"], 2, "not an account name"),
    (["budget", "show", "no-such-account"], None, "no-such-account"),
    (["usage", "--by", "colour"], 2, "colour"),
])
def test_bad_input_is_one_line(root, args, code, fragment):
    p = subprocess.run([str(BIN / "slurmgov"), *args], capture_output=True, text=True, cwd=root, timeout=60, check=False)
    assert "Traceback" not in p.stderr
    assert p.returncode != 0 and (code is None or p.returncode == code), p.stderr
    assert fragment in p.stderr


def test_infeasible_exits_3(root, tmp_path):
    spec = tmp_path / "big.yaml"
    spec.write_text("workflow: big\naccount: chem-ai\nsteps:\n  - {id: tp, run: x, within: nvlink-domain, resources: {gpus: 16, nodes: 2}}\n")
    p = sg("plan", spec, "--site", root / "site_configs/large-fat-tree.yaml", check=3)
    assert "the largest NVLink domain in partition h100 has 8" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_failed_step_exits_1(tmp_path):
    spec = tmp_path / "f.yaml"
    spec.write_text("workflow: f\naccount: chem-ai\nsteps:\n  - {id: a, run: 'exit 7'}\n")
    p = sg("run", spec, check=1)
    assert "step a failed: exit status 7" in p.stderr


def test_help_has_examples():
    for cmd in (["--help"], ["plan", "--help"], ["run", "--help"], ["budget", "set", "--help"], ["usage", "--help"]):
        p = sg(*cmd, check=0)
        assert "Example" in p.stdout


def test_grant_and_audit(root):
    sg("budget", "set", "bio-ml", "100", "--reason", "initial", check=0)
    sg("budget", "grant", "bio-ml", "25.5", "--reason", "deadline", check=0)
    bal = {b["account"]: b for b in json.loads(sg("budget", "show", "--json", check=0).stdout)}
    assert bal["bio-ml"]["budget_h"] == pytest.approx(125.5)
    rows = [r for r in json.loads(sg("audit", "--json", check=0).stdout) if r["account"] == "bio-ml"]
    assert [(r["action"], r["new_budget_h"], r["reason"]) for r in rows][-2:] == [("set", 100.0, "initial"),
                                                                                   ("grant", 125.5, "deadline")]
    assert rows[-1]["old_budget_h"] == 100.0 and rows[-1]["actor"]
    assert "deadline" in sg("audit", env={"COLUMNS": "250"}, check=0).stdout


def test_usage_formats(root, tmp_path):
    import pandas as pd

    sg("run", root / "jobspecs/tensor-parallel-eval.yaml", check=0)
    csv = sg("usage", "--by", "step", "--format", "csv", check=0).stdout
    assert csv.splitlines()[0] == ("step,charges,gpu_seconds,charged_h,prompt_tokens,completion_tokens,tokens,"
                                   "gpu_s_per_1k_tokens") and "generate-tp4" in csv
    out = tmp_path / "u.parquet"
    sg("usage", "--by", "step", "--format", "parquet", "-o", out, check=0)
    frame = pd.read_parquet(out)
    assert set(frame["step"]) >= {"generate-tp4", "judge-a"} and frame["gpu_seconds"].sum() > 0
    assert sg("usage", "--format", "parquet", check=None).returncode == 2  # binary needs a file
    future = json.loads(sg("usage", "--since", "2100-01-01", "--json", check=0).stdout)
    assert future == []


def test_topology_import_then_show_and_plan(root, tmp_path):
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "slurm.conf").write_text(
        "ClusterName=mini\nGresTypes=gpu\n"
        "NodeName=g[1-4] CPUs=32 RealMemory=256000 Gres=gpu:h100:4\n"
        "PartitionName=gpu Nodes=g[1-4] Default=YES DefaultTime=01:00:00 MaxTime=2-00:00:00\n")
    (conf / "topology.conf").write_text("SwitchName=l1 Nodes=g[1-2]\nSwitchName=l2 Nodes=g[3-4]\nSwitchName=s Switches=l[1-2]\n")
    site = tmp_path / "mini.yaml"
    sg("topology", "import", "--slurm-conf-dir", conf, "-o", site, check=0)
    shown = json.loads(sg("topology", "show", "--site", site, "--json", check=0).stdout)
    assert shown["site"] == "mini" and shown["gpus"] == 16
    assert shown["leaf_switches"]["l1"] == {"nodes": "g[1-2]", "gpus": 8}
    plan = json.loads(sg("plan", root / "jobspecs/multinode-finetune.yaml", "--site", site, "--json", check=0).stdout)
    assert any("--switches=1@00:10:00" in a["slurm_options"] for a in plan["allocations"])


def test_transfer_command():
    sg("budget", "show", check=0)  # seeds the site's accounts
    sg("budget", "transfer", "chem-ai", "bio-ml", "50", "--reason", "shared", check=0)
    bal = {b["account"]: b for b in json.loads(sg("budget", "show", "--json", check=0).stdout)}
    assert (bal["chem-ai"]["budget_h"], bal["bio-ml"]["budget_h"]) == (450, 250)
    p = sg("budget", "transfer", "physics", "bio-ml", "500", check=2)
    assert "account physics: 50.0 GPU-h available, cannot transfer 500.0" in p.stderr


def test_shell_completion_of_commands_and_the_sites_accounts(root):
    script = sg(env={"_SLURMGOV_COMPLETE": "bash_source"}, check=0).stdout
    assert "complete -o nosort -F _slurmgov_completion slurmgov" in script

    def complete(words: str) -> list[str]:
        env = {"_SLURMGOV_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1),
               "SLURMGOV_SITE": str(root / "site_configs" / "demo-cluster.yaml")}
        return [ln.split(",", 1)[1] for ln in sg(env=env, check=0).stdout.splitlines()]

    assert complete("slurmgov bud") == ["budget"]
    assert complete("slurmgov budget s") == ["set", "set-cpu", "show"]
    assert complete("slurmgov budget show p") == ["physics"]
    assert complete("slurmgov budget transfer chem-ai b") == ["bio-ml"]


# What completion of command names and --version must not import: they run at every TAB, and these
# cost 0.4-0.8 s of start-up (the root group imports a command's module only when it is looked up).
HEAVY = ("pydantic", "rich", "yaml", "dask", "distributed", "slurmgov.site.model", "slurmgov.ledger.store",
         "slurmgov.interface.commands")


def _modules_loaded_by(args: list[str], env: dict[str, str]) -> tuple[str, list[str]]:
    """Run the CLI's entry point in a fresh interpreter; its stdout and the HEAVY modules it imported."""
    code = ("import atexit, json, sys\n"
            f"heavy = {HEAVY!r}\n"
            "atexit.register(lambda: print('LOADED', json.dumps(sorted({m.split('.')[0] if not m.startswith('slurmgov') "
            "else m for m in sys.modules if m.startswith(heavy)})), file=sys.stderr))\n"
            "from slurmgov.interface.cli import main\n"
            f"main({args!r})\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env},
                       timeout=120, check=False)
    loaded = [ln for ln in p.stderr.splitlines() if ln.startswith("LOADED ")]
    assert p.returncode == 0 and len(loaded) == 1, p.stderr
    return p.stdout, json.loads(loaded[0][len("LOADED "):])


def test_every_command_loads_under_its_name_and_completing_a_name_imports_none_of_them():
    from click import Context

    from slurmgov.interface.cli import COMMANDS, cli

    ctx = Context(cli)
    names = cli.list_commands(ctx)
    assert {"run", "plan", "budget", "usage", "sync", "governor", "hooks", "mcp", "api"} <= set(names)
    for name in names:  # a name listed in --help that loads another command (or none) would fail only when used
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        # what zsh and fish show beside the name is the command's own one-line help
        assert COMMANDS[name][2] == command.get_short_help_str()
    assert cli.get_command(ctx, "no-such-command") is None

    env = {"_SLURMGOV_COMPLETE": "bash_complete", "COMP_WORDS": "slurmgov ", "COMP_CWORD": "1"}
    out, loaded = _modules_loaded_by([], env)
    assert [ln.split(",", 1)[1] for ln in out.splitlines()] == names and loaded == []
    out, loaded = _modules_loaded_by([], {**env, "_SLURMGOV_COMPLETE": "zsh_complete", "COMP_WORDS": "slurmgov bu"})
    assert out.split("\n")[:3] == ["plain", "budget", "Read and set accounts' GPU-hour budgets."] and loaded == []
    out, loaded = _modules_loaded_by(["--version"], {})
    assert out.startswith("slurmgov, version ") and loaded == []
    # looking a command up imports its module, and completion inside a command still works
    out, loaded = _modules_loaded_by([], {**env, "COMP_WORDS": "slurmgov budget s", "COMP_CWORD": "2"})
    assert [ln.split(",", 1)[1] for ln in out.splitlines()] == ["set", "set-cpu", "show"]
    assert "slurmgov.interface.commands.budget" in loaded and "pydantic" in loaded


def test_a_group_run_without_its_command_prints_its_help_as_click_does():
    for args in ([], ["budget"], ["hooks"]):
        p = sg(*args, check=2)  # click 8.2 on: exit 2, the help on stderr
        first = p.stderr.splitlines()[0]
        assert first == f"Usage: {' '.join(['slurmgov', *args])} [OPTIONS] COMMAND [ARGS]...", p.stderr
        assert "Commands:" in p.stderr and "(usage:" not in p.stderr and p.stdout == ""


def test_budget_terms_rollover_and_expiry_from_the_cli_and_the_site_file(root, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text((root / "site_configs" / "local.yaml").read_text().replace(
        "physics: {budget_gpu_hours: 50, period: quarterly}",
        "physics: {budget_gpu_hours: 50, period: quarterly, rollover_pct: 10, expires: 2020-01-01}"))
    shown = {b["account"]: b for b in json.loads(sg("budget", "show", "--site", site, "--json", check=0).stdout)}
    # seeded from the site file: the project ended in 2020, so it has nothing, and says when it ended
    assert shown["physics"]["expires"] == "2020-01-01" and shown["physics"]["available_h"] == 0
    assert shown["physics"]["runs_out"] == "2020-01-01"
    p = sg("budget", "set", "physics", "80", "--period", "quarterly", "--rollover", "25", "--no-expiry",
           "--reason", "extended", "--site", site, check=0)
    assert "account physics: budget 80.00 GPU-h" in p.stdout
    shown = {b["account"]: b for b in json.loads(sg("budget", "show", "--site", site, "--json", check=0).stdout)}
    assert shown["physics"]["expires"] is None and shown["physics"]["available_h"] == 80
    audit = json.loads(sg("audit", "--site", site, "--json", check=0).stdout)
    assert [a["terms"] for a in audit if a["account"] == "physics"] == ["rollover 10%; expires 2020-01-01T00:00:00+00:00",
                                                                           "rollover 25%"]
    bad = sg("budget", "set", "physics", "80", "--rollover", "101", "--site", site, check=2)
    assert "--rollover" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    nope = tmp_path / "bad.yaml"
    nope.write_text(site.read_text().replace("period: quarterly, rollover_pct: 10", "period: none, rollover_pct: 10"))
    err = sg("budget", "show", "--site", nope, check=2).stderr.strip()
    assert "bad.yaml" in err and "rollover_pct needs a monthly or quarterly period" in err and "\n" not in err


def test_a_relative_slurmgov_home_is_taken_from_the_starting_directory(tmp_path):
    """The ledger and the run records land together under ./rel/home (not the ledger under /),
    and a step sees the absolute path; `run:` steps run under /bin/sh, as the README says."""
    work = tmp_path / "work"
    work.mkdir()
    spec = tmp_path / "h.yaml"
    spec.write_text("workflow: h\naccount: chem-ai\nsteps:\n"
                    "  - id: a\n    resources: {gpus: 1}\n"
                    "    run: printf '[\"%s\", \"%s\"]' \"$0\" \"$SLURMGOV_HOME\"\n")
    env = {**os.environ, "SLURMGOV_HOME": "rel/home"}
    proc = subprocess.run([str(BIN / "slurmgov"), "run", str(spec), "--json"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    home = work / "rel" / "home"
    assert (home / "ledger.sqlite").is_file()
    assert Path(d["record"]) == home / "runs" / f"{d['run_id']}.json" and Path(d["record"]).is_file()
    assert d["steps"]["a"]["output"] == ["/bin/sh", str(home)]
    # the same home named absolutely, from elsewhere, is the same ledger: the run's charge is there
    bal = {b["account"]: b for b in json.loads(sg("budget", "show", "--json", env={"SLURMGOV_HOME": str(home)},
                                                   check=0).stdout)}
    assert bal["chem-ai"]["charged_h"] > 0  # a fresh ledger would have charged nothing


def test_budget_set_changes_only_what_it_is_told():
    sg("budget", "show", check=0)  # seeds physics from the site file: quarterly
    sg("budget", "set", "physics", "60", "--rollover", "25", "--expires", "2099-01-01", "--reason", "terms", check=0)
    p = sg("budget", "set", "physics", "100", "--reason", "raise", check=0)
    assert "account physics: budget 100.00 GPU-h (" in p.stdout and "-Q" in p.stdout and "expires 2099-01-01" in p.stdout
    last = json.loads(sg("audit", "--json", check=0).stdout)[-1]
    assert (last["account"], last["new_budget_h"], last["old_period"], last["new_period"]) == (
        "physics", 100.0, "quarterly", "quarterly")
    assert last["terms"] == "rollover 25%; expires 2099-01-01T00:00:00+00:00"
    sg("budget", "set", "physics", "100", "--period", "monthly", "--reason", "asked", check=0)
    assert json.loads(sg("audit", "--json", check=0).stdout)[-1]["new_period"] == "monthly"
    sg("budget", "set", "brand-new", "5", check=0)
    last = json.loads(sg("audit", "--json", check=0).stdout)[-1]
    assert (last["account"], last["new_period"], last["terms"]) == ("brand-new", "monthly", "")


@pytest.mark.parametrize("args", [
    ["budget", "set", "physics", "1e13"],
    ["budget", "set", "physics", "nan"],
    ["budget", "set", "physics", "inf"],
    ["budget", "grant", "physics", "1e13"],
    ["budget", "transfer", "chem-ai", "physics", "1e13"],
    ["budget", "set", "physics", "--", "-5"],
])
def test_amounts_the_ledger_cannot_store_are_refused_in_one_line(args):
    sg("budget", "show", check=0)
    before = sg("audit", "--json", check=0).stdout
    p = sg(*args[:2], "--reason", "too much", *args[2:], check=2)
    line = p.stderr.strip()
    assert "\n" not in line and any(why in line for why in ("more than the ledger can store", ">= 0", "x>=0")), line
    assert sg("audit", "--json", check=0).stdout == before  # nothing changed


@pytest.mark.parametrize("where,why", [
    ("missing/u.csv", "directory {tmp}/missing does not exist"),
    ("a-file/u.csv", "{tmp}/a-file is a file, not a directory"),
    ("a-file/deeper/u.parquet", "{tmp}/a-file is a file, not a directory"),
])
def test_usage_output_path_errors_are_one_line_exit_2(tmp_path, where, why):
    (tmp_path / "a-file").write_text("not a directory\n")
    target = tmp_path / where
    fmt = "parquet" if where.endswith(".parquet") else "csv"
    p = sg("usage", "--format", fmt, "-o", target, check=2)
    assert p.stderr.strip() == f"slurmgov: cannot write {target}: {why.format(tmp=tmp_path)}"
    assert not target.exists()


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs sysfs, where no one may create files")
def test_usage_into_an_unwritable_directory_is_one_line_exit_2():
    p = sg("usage", "--format", "csv", "-o", "/sys/slurmgov-usage.csv", check=2)
    assert p.stderr.strip() == "slurmgov: cannot write /sys/slurmgov-usage.csv: permission denied"


HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("committed", flush=True)
sys.stdin.read()
"""


def test_a_command_waiting_for_the_ledger_says_who_holds_it_and_gives_up_with_exit_5(tmp_path):
    db = tmp_path / "ledger.sqlite"
    env = {"SLURMGOV_LEDGER": f"sqlite:///{db}"}
    sg("budget", "show", env=env, check=0)  # creates the ledger and seeds the site's accounts
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"  # another process is writing
        shown = json.loads(sg("budget", "show", "--json", "--wait", "2", env=env, check=0).stdout)
        assert {b["account"] for b in shown} >= {"chem-ai", "physics"}  # reading does not queue behind a writer
        p = sg("budget", "grant", "chem-ai", "1", "--reason", "t", "--wait", "2", env=env, check=5)
        notice, gave_up = p.stderr.splitlines()
        assert notice.startswith(f"slurmgov: ledger {db} is busy: held by pid {holder.pid} (")
        assert notice.endswith("; waiting up to 2 s (--wait SECONDS or $SLURMGOV_WAIT to change)")
        assert gave_up.startswith(f"slurmgov: ledger {db} is busy: held by pid {holder.pid} (")
        assert gave_up.endswith("; gave up after waiting 2 s")
        # a command that is waiting goes on when the writer commits (SLURMGOV_WAIT: a generous limit)
        waiting = subprocess.Popen([str(BIN / "slurmgov"), "budget", "grant", "chem-ai", "1", "--reason", "t"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, **env, "SLURMGOV_WAIT": "600"})
        assert "is busy" in waiting.stderr.readline()  # the notice: it is waiting now
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "committed\n"
        out, rest = waiting.communicate(timeout=120)
        assert waiting.returncode == 0 and rest == "", rest
        assert "account chem-ai: budget 501.00 GPU-h" in out
    finally:
        holder.kill()
        holder.wait()


def test_a_large_plan_is_summarised_unless_all_is_asked(root, tmp_path):
    import yaml

    sys.path.insert(0, str(root / "bench"))
    import plan_scale

    spec = tmp_path / "big.yaml"
    spec.write_text(yaml.safe_dump(plan_scale.generate(300), sort_keys=False))
    site = root / "site_configs/large-fat-tree.yaml"
    summary = sg("plan", spec, "--site", site, env={"COLUMNS": "200"}, check=0).stdout
    assert "steps by shape" in summary and "300 steps in" in summary and "--all lists every" in summary
    assert "s299" not in summary and "--gpus-per-node" not in summary  # no row per step or allocation
    every = sg("plan", spec, "--site", site, "--all", env={"COLUMNS": "200"}, check=0).stdout
    assert all(f"s{i} " in every for i in (0, 150, 299)) and "--gpus-per-node=h100:8" in every
    last = summary.strip().splitlines()[-1]
    assert last.startswith("worst case:") and last == every.strip().splitlines()[-1]  # the same cost and makespan
    d = json.loads(sg("plan", spec, "--site", site, "--json", check=0).stdout)
    assert len(d["steps"]) == 300


def test_plan_makespan_counts_the_wait_inside_the_allocation(tmp_path):
    spec = tmp_path / "q.yaml"
    steps = "".join(f"  - {{id: s{i}, run: 'true', resources: {{gpus: 1, time: '00:10:00'}}}}\n" for i in range(16))
    spec.write_text("workflow: q\naccount: chem-ai\nsteps:\n" + steps)
    out = sg("plan", spec, env={"COLUMNS": "200"}, check=0).stdout  # the embedded default: 8 GPU slots
    assert "--time=00:20:00" in out and "makespan up to 00:20:00" in out


def test_a_request_larger_than_any_node_exits_3_naming_the_line(tmp_path):
    spec = tmp_path / "fat.yaml"
    spec.write_text("workflow: f\naccount: chem-ai\nsteps:\n  - {id: a, run: 'true'}\n"
                    "  - id: fat\n    run: 'true'\n    resources: {gpus: 1, cpus: 64}\n")
    p = sg("plan", spec, check=3)  # the embedded default's nodes have 8 CPUs
    assert p.stderr.strip() == f"slurmgov: {spec}:5: step 'fat': needs 64 CPUs per node; the largest h100 node in partition local has 8"


def test_one_version_source_and_the_license_the_package_declares(root):
    import importlib.metadata

    import slurmgov

    p = sg("--version", check=0)
    assert p.stdout.strip() == f"slurmgov, version {slurmgov.__version__}"
    assert importlib.metadata.version("slurmgov") == slurmgov.__version__  # setup.cfg reads the same
    assert f"## {slurmgov.__version__} " in (root / "CHANGELOG.md").read_text()  # every release says what changed
    assert "license = Apache-2.0" in (root / "setup.cfg").read_text()
    assert "Apache License" in (root / "LICENSE").read_text() and "Version 2.0" in (root / "LICENSE").read_text()


def test_a_run_id_given_must_be_new_and_a_name(root):
    from slurmgov.intent import run_records

    run_records.write("20261201T000000-aaaaaa", {"run_id": "20261201T000000-aaaaaa", "status": "ok"})
    spec = root / "jobspecs" / "research-fanout.yaml"
    p = sg("run", spec, "--run-id", "20261201T000000-aaaaaa", check=2)
    assert p.stderr.strip() == "slurmgov: run_id: run 20261201T000000-aaaaaa already exists; a new run needs a new id"
    p = sg("run", spec, "--run-id", "../../etc/x", check=2)
    assert p.stderr.strip().startswith("slurmgov: run_id: '../../etc/x' is not a run id")
    p = sg("run", spec, "--run-id", "x\n", check=2)  # a file name and a hold key never end in a newline
    assert p.stderr.strip().startswith("slurmgov: run_id: 'x\\n' is not a run id")
    assert sg("runs", "show", "../../etc/passwd", check=2).stderr.count("\n") == 1
    assert sg("holds", "--json", check=0).stdout.strip() == "[]"  # nothing was held


def test_plan_and_run_refuse_a_yaml_alias_bomb_in_one_line_before_anything_runs(root, tmp_path, slurmgov_home):
    # a step that echoes its params would have the run record write out 10**9 values (MemoryError after 90 s)
    (tmp_path / "echostep.py").write_text("def echo(inputs, **params):\n    return params\n")
    rows = "".join(f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10) if i else '1'}]\n" for i in range(9))
    spec = tmp_path / "laughs.yaml"
    spec.write_text(f"workflow: w\naccount: physics\nsteps:\n  - id: a\n    call: 'echostep:echo'\n    params:\n{rows}")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    for cmd in (["plan"], ["run"], ["run", "--json"]):
        p = sg(*cmd, spec, "--site", root / "site_configs/local.yaml", env=env, check=2)
        assert p.stderr.strip() == (f"slurmgov: {spec}: its YAML aliases expand it by 234,567,890 values; a jobspec's "
                                    "aliases may add at most 1,000,000 (write the repeated part out, or repeat it less)")
    assert not (slurmgov_home / "runs").exists() or not list((slurmgov_home / "runs").iterdir())
