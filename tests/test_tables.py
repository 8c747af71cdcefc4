"""Tables never lose a value: whole cells through a pipe, whole tokens on an 80-column terminal,
and `--format tsv` for scripts."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

from slurmgov.interface import tables

BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

ACCOUNT = "chem-ai-protein-folding-2026"
WORKFLOW = "protein-folding-literature-review"
STEP = "summarise-literature-findings"
REASON = "[urgent] grant for the protein-folding campaign"


def sample_table(rows: int = 3) -> tables.Table:
    t = tables.Table(title="allocations of a wide plan")
    for col in ("alloc", "account", "steps", "worst case GPU-h", "Slurm options", "why"):
        t.add_column(col, justify="right" if "GPU-h" in col else "left")
    for i in range(rows):
        t.add_row(f"a{i}", f"{ACCOUNT}-{i}", f"research-{i}, critic-{i}", f"{123456.789 + i:.3f}",
                  f"--partition=gpu --nodes=2 --gpus-per-node=h100:8 --time=00:5{i}:00 --mem=16384M{i}",
                  f"[bold]kept[/bold] {i} as typed")
    return t


def tokens(t: tables.Table) -> list[str]:
    return [tok for row in t.rows for cell in row.cells for tok in cell.split()]


def terminal(width: int) -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None, legacy_windows=False)


@pytest.mark.parametrize("width", [200, 120, 80, 60, 40])
def test_on_a_terminal_cells_wrap_between_tokens_never_inside_them(width):
    t = sample_table()
    con = terminal(width)
    tables.show(t, con)
    text = ANSI.sub("", con.file.getvalue())
    assert max(cell_len(line) for line in text.splitlines()) <= width
    assert "…" not in text
    for tok in tokens(t):
        assert tok in text, f"{tok!r} was split or cut at {width} columns:\n{text}"


def test_a_table_that_fits_the_terminal_keeps_each_row_on_one_line():
    t = sample_table()
    con = terminal(250)
    tables.show(t, con)
    lines = con.file.getvalue().splitlines()
    for row in t.rows:
        assert any(all(cell in line for cell in row.cells) for line in lines), row.cells


def test_not_a_terminal_every_row_is_one_whole_line_whatever_the_width():
    t = sample_table()
    con = Console(file=io.StringIO(), width=40)  # a pipe or file: rich would use 80 columns, or $COLUMNS
    assert not con.is_terminal
    tables.show(t, con)
    lines = con.file.getvalue().splitlines()
    for row in t.rows:
        assert sum(all(cell in line for cell in row.cells) for line in lines) == 1, row.cells
    assert "allocations of a wide plan" in lines[0]  # the title, on one line too


def test_tsv_is_a_header_line_and_one_line_per_row_of_whole_values():
    t = sample_table(rows=2)
    t.add_row("a9", "x\ty", "two\nlines")
    con = Console(file=io.StringIO(), force_terminal=True, width=30)  # tsv ignores the terminal
    tables.show(t, con, "tsv")
    lines = con.file.getvalue().splitlines()
    assert [line.split("\t") for line in lines] == (
        [[c.header for c in t.columns]] + [r.cells for r in t.rows[:2]] + [["a9", "x y", "two lines", "", "", ""]])


def test_too_many_cells_is_a_programming_error_not_a_silent_cut():
    t = tables.Table(title="t")
    t.add_column("a")
    with pytest.raises(ValueError):
        t.add_row("1", "2")


# The real `slurmgov` entry point, its stdout a pipe.

def sg(*args, env, check=0):
    proc = subprocess.run([str(BIN / "slurmgov"), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120, check=False)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == check, proc.stderr + proc.stdout
    return proc


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """One small local run under a long account, workflow and step name (its own home and site)."""
    d = tmp_path_factory.mktemp("tables")
    root = Path(__file__).resolve().parents[1]
    site = d / "site.yaml"
    site.write_text((root / "site_configs" / "local.yaml").read_text().replace(
        "accounts:\n", f"accounts:\n  {ACCOUNT}: {{budget_gpu_hours: 500, period: monthly}}\n"))
    spec = d / "spec.yaml"
    spec.write_text(f"workflow: {WORKFLOW}\naccount: {ACCOUNT}\nsteps:\n"
                    f"  - {{id: {STEP}, run: 'echo 1', resources: {{gpus: 1}}}}\n")
    env = {"SLURMGOV_HOME": str(d / "home"), "SLURMGOV_SITE": str(site)}
    sg("budget", "set", ACCOUNT, "123456.789", "--reason", REASON, env=env)
    sg("run", spec, "--json", env=env)
    return env


COMMANDS = [("budget", "show"), ("usage", "--by", "step"), ("waste", "--by", "workflow"), ("audit",),
            ("topology", "show")]


def expected(args, env) -> tuple[str, list[str]]:
    """The name a user greps for, and whole values (as the table formats them) that belong on its row."""
    import json

    if args[0] == "usage":
        r = next(r for r in json.loads(sg(*args, "--json", env=env).stdout) if r["key"] == STEP)
        return STEP, [f"{r['gpu_seconds']:.2f}", f"{r['charged_h']:.5f}"]
    if args[0] == "waste":
        r = next(r for r in json.loads(sg(*args, "--json", env=env).stdout) if r["key"] == WORKFLOW)
        return WORKFLOW, [f"{r['used_gpu_seconds']:.1f}", f"{r['idle_gpu_seconds']:.1f}", f"{r['idle_h']:.4f}"]
    return {"budget": (ACCOUNT, ["123456.8"]), "audit": (ACCOUNT, ["123456.789", REASON]),
            "topology": ("leaf1", ["local[1-2]", "8/4/2/0"])}[args[0]]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_through_a_pipe_every_row_is_whole_and_greppable(ran, args):
    name, values = expected(args, ran)
    out = sg(*args, env={**ran, "COLUMNS": "80"}).stdout  # rich would cut to 80 columns here
    assert "…" not in out
    matches = [line for line in out.splitlines() if name in line]  # `slurmgov ... | grep NAME`
    assert matches, out
    assert any(all(v in line for v in values) for line in matches), out


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_on_an_80_column_terminal_names_and_numbers_stay_whole(ran, args):
    name, values = expected(args, ran)
    out = ANSI.sub("", sg(*args, env={**ran, "COLUMNS": "80", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}).stdout)
    assert max(cell_len(line) for line in out.splitlines()) <= 80, out
    assert "…" not in out
    for tok in [name, *(t for v in values for t in v.split())]:
        assert tok in out, f"{tok!r} split or cut at 80 columns:\n{out}"


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_format_tsv_is_plain_tab_separated_lines(ran, args):
    name, values = expected(args, ran)
    out = sg(*args, "--format", "tsv", env={**ran, "TTY_COMPATIBLE": "1", "COLUMNS": "40"}).stdout
    assert "\x1b" not in out and "│" not in out
    header, *rows = [line.split("\t") for line in out.splitlines()]
    assert all(len(r) == len(header) for r in rows), out
    assert any(name in r and all(v in r for v in values) for r in rows), out  # whole cells, one row


def test_usage_tsv_to_a_file_is_what_stdout_shows(ran, tmp_path):
    shown = sg("usage", "--by", "step", "--format", "tsv", env=ran).stdout
    sg("usage", "--by", "step", "--format", "tsv", "-o", tmp_path / "u.tsv", env=ran)
    assert (tmp_path / "u.tsv").read_text() == shown and shown.startswith("step\tcharges\t")
