"""`gsbatch`: sbatch with the cost shown first.

Takes sbatch's own arguments, works out the job's worst-case weighted GPU-hours from every
form a GPU can be asked for (the same parser the submit hook mirrors), shows it beside what
the account has left, and hands the unchanged arguments to sbatch, returning its exit status.
The budget itself is enforced inside slurmctld by plugins/job_submit.lua; this is the preview.

gsbatch-only options (removed before sbatch sees the arguments):
  --gsbatch-site FILE   site description (default: $SLURMGOV_SITE or site_configs/local.yaml)
  --gsbatch-preview     show the cost and exit without submitting
  --gsbatch-tag WF/STEP attribute the job to a workflow and step (default: $SLURMGOV_WORKFLOW
                        and $SLURMGOV_STEP, set inside slurmgov steps); sent as --comment
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import click

from slurmgov.errors import BudgetRefused, InputError
from slurmgov.governance import site as site_mod
from slurmgov.governance.gpu_request import parse_sbatch_args, worst_case_gpu_seconds
from slurmgov.governance.ledger import Ledger
from slurmgov.interface.errors import guarded

TAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _split_own(argv: list[str]) -> tuple[dict, list[str]]:
    own, rest, i = {}, [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--gsbatch-preview":
            own["preview"] = True
        elif a in ("--gsbatch-site", "--gsbatch-tag"):
            if i + 1 >= len(argv):
                raise InputError(f"{a} needs a value")
            own[a[10:]] = argv[i + 1]
            i += 1
        elif a.startswith(("--gsbatch-site=", "--gsbatch-tag=")):
            name, value = a.split("=", 1)
            own[name[10:]] = value
        else:
            rest.append(a)
        i += 1
    return own, rest


def _script_text(argv: list[str]) -> str | None:
    """The batch script: the first argument that is an existing file and not an option's value."""
    for a in argv:
        if not a.startswith("-") and Path(a).is_file():
            try:
                return Path(a).read_text(errors="replace")
            except OSError:
                return None
    return None


def run(argv: list[str]) -> int:
    own, sbatch_args = _split_own(argv)
    site = site_mod.load(own.get("site") or site_mod.default_site_path())
    req = parse_sbatch_args(sbatch_args, _script_text(sbatch_args))
    part = site.partition(req.partition) if site.partitions else None
    default_min = (part.default_time_s if part else 3600) // 60
    weights = {name: t.weight for name, t in site.gpu_types.items()}
    cost_h = worst_case_gpu_seconds(req, weights, default_weight=site.weight(None), default_time_min=default_min) / 3600
    account = req.account or os.environ.get("SBATCH_ACCOUNT") or os.environ.get("SLURM_ACCOUNT")
    line = f"gsbatch: this job may use up to {cost_h:.2f} GPU-h"
    if account:
        ledger = Ledger.open(os.environ.get("SLURMGOV_LEDGER") or site.ledger_url())
        acct = site.accounts.get(account)
        if acct is not None:
            ledger.ensure_account(account, acct.budget_gpu_hours, acct.period, **acct.terms())
        bal = ledger.balance(account)
        line += f"; account {account} has {bal.available_h:.2f} GPU-h left"
        if cost_h > bal.available_h:
            raise BudgetRefused(f"account {account}: {bal.available_h:.1f} GPU-h left, job needs up to {cost_h:.1f} GPU-h")
    click.echo(line, err=True)
    if own.get("preview"):
        return 0
    sbatch_args = _tagged(sbatch_args, own.get("tag"))
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise InputError("sbatch is not on PATH (use --gsbatch-preview to see the cost only)")
    os.execv(sbatch, [sbatch, *sbatch_args])  # sbatch's own exit status becomes ours
    return 0  # not reached


def _tagged(args: list[str], tag: str | None) -> list[str]:
    """Add ``--comment=slurmgov:wf=W,step=S`` for attribution, unless the user set a comment."""
    if tag:
        wf, _, step = tag.partition("/")
    else:
        wf, step = os.environ.get("SLURMGOV_WORKFLOW", ""), os.environ.get("SLURMGOV_STEP", "")
    if not wf or any(a == "--comment" or a.startswith("--comment=") for a in args):
        return args
    for name in (wf, step):
        if name and not TAG_NAME.match(name):
            raise InputError(f"--gsbatch-tag: {name!r} is not a workflow or step name")
    comment = f"slurmgov:wf={wf}" + (f",step={step}" if step else "")
    return [f"--comment={comment}", *args]


@guarded("gsbatch")
def _main(standalone_mode=False):
    return run(sys.argv[1:])


def main() -> None:
    sys.exit(_main())
