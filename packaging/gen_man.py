"""Man pages from the CLI's own help: slurmgov(1), one page per command (slurmgov-limits-sync(1)),
and gsbatch(1). What `--help` says is what the pages say; nothing is written twice.

    python packaging/gen_man.py OUT_DIR      # writes OUT_DIR/slurmgov.1, OUT_DIR/slurmgov-*.1, ...

Needs only click and slurmgov (run it with the interpreter slurmgov is installed in)."""

from __future__ import annotations

import datetime
import os
import re
import sys
from pathlib import Path

import click

from slurmgov import __version__
from slurmgov.interface.cli import cli
from slurmgov.interface.gsbatch import HELP as GSBATCH_HELP

MANUAL = "slurmgov manual"


def _esc(text: str) -> str:
    """Text safe in roff: backslashes doubled, hyphens literal, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + ln) if ln[:1] in (".", "'") else ln for ln in text.split("\n"))


def _paragraphs(help_text: str) -> str:
    """click's help: blank-line separated paragraphs; one starting with \\b keeps its lines."""
    out = []
    for para in re.split(r"\n\s*\n", help_text.strip()):
        lines = para.split("\n")
        if lines[0].strip() == "\b":
            body = "\n".join(ln.rstrip() for ln in lines[1:])
            out.append(".PP\n.nf\n" + _esc(body) + "\n.fi")
        else:
            out.append(".PP\n" + _esc(" ".join(ln.strip() for ln in lines)))
    return "\n".join(out)


def _page_name(path: list[str]) -> str:
    return "-".join(path)


def _page(cmd: click.Command, path: list[str], date: str, see_also: list[str]) -> str:
    ctx = click.Context(cmd, info_name=" ".join(path), help_option_names=["-h", "--help"])
    first = (cmd.get_short_help_str(limit=200) or "").rstrip(".")
    parts = [f'.TH "{_page_name(path).upper()}" "1" "{date}" "slurmgov {__version__}" "{MANUAL}"',
             ".SH NAME", f"{_esc(_page_name(path))} \\- {_esc(first)}",
             ".SH SYNOPSIS", f".B {_esc(' '.join(path))}", _esc(" ".join(cmd.collect_usage_pieces(ctx)))]
    if cmd.help:
        parts += [".SH DESCRIPTION", _paragraphs(cmd.help)]
    options = [rec for p in cmd.get_params(ctx) if (rec := p.get_help_record(ctx))]
    if options:
        parts.append(".SH OPTIONS")
        for left, right in options:
            parts += [".TP", f"\\fB{_esc(left)}\\fR", _esc(right)]
    if isinstance(cmd, click.Group):
        parts.append(".SH COMMANDS")
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            parts += [".TP", f"\\fB{_esc(name)}\\fR", _esc(sub.get_short_help_str(limit=200)),
                      f"See \\fB{_esc(_page_name([*path, name]))}\\fR(1)."]
    if cmd.epilog:
        parts += [".SH EXIT STATUS", _paragraphs(cmd.epilog.replace("Exit codes:\n", ""))]
    if see_also:
        parts += [".SH SEE ALSO", ", ".join(f"\\fB{_esc(n)}\\fR(1)" for n in see_also)]
    return "\n".join(parts) + "\n"


def pages(date: str | None = None) -> dict[str, str]:
    """File name -> man page text, for slurmgov, each of its commands, and gsbatch."""
    date = date or _date()
    found: dict[str, str] = {}

    def walk(cmd: click.Command, path: list[str], parent: list[str] | None) -> None:
        ctx = click.Context(cmd, info_name=path[-1])
        subs = []
        if isinstance(cmd, click.Group):
            subs = [n for n in cmd.list_commands(ctx) if not (c := cmd.get_command(ctx, n)) or not c.hidden]
        see = ([_page_name(parent)] if parent else []) + [_page_name([*path, n]) for n in subs]
        found[_page_name(path) + ".1"] = _page(cmd, path, date, see)
        for name in subs:
            sub = cmd.get_command(ctx, name)
            assert sub is not None
            walk(sub, [*path, name], path)

    walk(cli, ["slurmgov"], None)
    found["gsbatch.1"] = _gsbatch_page(date)
    return found


def _gsbatch_page(date: str) -> str:
    """gsbatch is not a click command: its page is its own --help text (then sbatch's), as written."""
    text = GSBATCH_HELP.strip()
    return "\n".join([f'.TH "GSBATCH" "1" "{date}" "slurmgov {__version__}" "{MANUAL}"',
                      ".SH NAME", "gsbatch \\- sbatch, with what the job will cost shown first",
                      ".SH DESCRIPTION", ".nf", _esc(text), ".fi",
                      ".SH SEE ALSO", "\\fBslurmgov\\fR(1), \\fBsbatch\\fR(1)"]) + "\n"


def _date() -> str:
    """SOURCE_DATE_EPOCH's day when set (reproducible builds), else today."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch else datetime.datetime.now(
        datetime.timezone.utc)
    return when.strftime("%Y-%m-%d")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: gen_man.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, text in pages().items():
        (out / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
