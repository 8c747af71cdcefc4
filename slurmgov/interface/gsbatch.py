"""`gsbatch`: sbatch with the cost shown first.

Takes sbatch's own arguments, works out what the submit hook (plugins/job_submit.lua) will
hold for the job: the job_desc sbatch sends (its arguments, #SBATCH lines and SBATCH_*
variables) priced by the hook's own rules (``gpu_request.hook_price``) over the partitions
slurmctld has (``scontrol``; else the site file's) and the budget snapshot the hook reads
(``slurmgov_snapshot.txt`` next to slurm.conf; else the site file's prices), with what the hook
will pin (time limit, node count).  Shows it beside what the account has left, and hands the
unchanged arguments to sbatch, returning its exit status.  A request the hook would refuse
whatever the budget is one error line (exit 2, or 3 if it can never start).  The budget itself
is enforced inside slurmctld by the hook; this is the preview.

gsbatch-only options (removed before sbatch sees the arguments):
  --gsbatch-site FILE   site description (default: $SLURMGOV_SITE or site_configs/local.yaml)
  --gsbatch-preview     show the cost and exit without submitting
  --gsbatch-tag WF/STEP attribute the job to a workflow and step (default: $SLURMGOV_WORKFLOW
                        and $SLURMGOV_STEP, set inside slurmgov steps); sent as --comment
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click

from slurmgov.errors import BudgetRefused, InfeasibleError, InputError, SlurmgovError
from slurmgov.interface.errors import guarded
from slurmgov.ledger.store import Ledger
from slurmgov.policy.authz import whoami
from slurmgov.site import model as site_mod
from slurmgov.site.names import is_name
from slurmgov.slurm import commands as slurm_cli
from slurmgov.slurm import snapshot
from slurmgov.slurm.governor import price_params, site_partitions
from slurmgov.slurm.gpu_request import (
    HookPartition,
    HookPrice,
    HookRefusal,
    PriceParams,
    hook_price,
    never_placeable,
    parse_sbatch_args,
)
from slurmgov.slurm.hooks_check import read_hook_conf


def _split_own(argv: list[str]) -> tuple[dict, list[str]]:
    own: dict[str, str | bool]
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


def hook_dir() -> Path:
    """Where the hook and its snapshot live: next to slurm.conf."""
    conf = os.environ.get("SLURM_CONF")
    return Path(conf).parent if conf else Path("/etc/slurm")


def pricing(site: site_mod.Site) -> tuple[list[HookPartition], PriceParams]:
    """Partitions from slurmctld when it answers, else the site file; snapshot parameters from
    the snapshot the hook reads when it is readable, else the site file."""
    try:
        partitions = slurm_cli.scontrol_partitions()
    except SlurmgovError:
        partitions = site_partitions(site)
    try:
        params = snapshot.read_price_params(read_hook_conf(hook_dir()).snapshot_path)
    except (OSError, ValueError):
        params = price_params(site)  # what the governor writes into the snapshot
    return partitions, params


def describe(p: HookPrice) -> tuple[str, str | None]:
    """The cost, and what the hook will set on the job (or None)."""
    if not p.any_gpu:
        return "up to 0.00 GPU-h (no GPUs)", None
    tasks = f" x {p.tasks} array tasks" if p.tasks != 1 else ""
    cost = (f"up to {p.cost / 3600:.2f} GPU-h ({p.cost:.3f} weighted GPU-s: {p.gpus} GPU(s) x {p.tl} min{tasks})")
    pins = ([f"--time={p.tl}"] if p.pin_time else []) + ([f"max nodes {p.nodes}"] if p.pin_nodes else [])
    return cost, ("the hook will set " + " and ".join(pins)) if pins else None


HELP = """Usage: gsbatch [GSBATCH OPTIONS] [SBATCH OPTIONS] SCRIPT [ARGS...]

sbatch with the cost shown first: prices the job as the site's submit hook will (its
arguments, #SBATCH lines and SBATCH_* variables), shows what the account has left and what
the hook will pin, then runs sbatch with the same arguments and returns its exit status.

gsbatch options (removed before sbatch sees the arguments):
  --gsbatch-site FILE    site description (default: $SLURMGOV_SITE or site_configs/local.yaml)
  --gsbatch-preview      show the cost and exit without submitting
  --gsbatch-tag WF/STEP  attribute the job to a workflow and step (default: $SLURMGOV_WORKFLOW
                         and $SLURMGOV_STEP); sent as --comment
  -h, --help             this help, then sbatch's

Exit codes: sbatch's own once it runs; before that 2 bad input, 3 can never be placed,
4 refused by the budget, 5 ledger unusable, 7 Slurm or a file unavailable, 70 internal error.

Examples:
  gsbatch --gres=gpu:h100:2 -t 2:00:00 -A chem-ai job.sh
  gsbatch --gsbatch-preview -p gpu --gpus-per-node=h100:4 -N 2 -t 30 job.sh
"""

# Asked of sbatch itself, never a submission: passed through without a price.
_SBATCH_INFO = ("--usage", "-V", "--version")


def _help() -> str:
    """gsbatch's help, then sbatch's own (its options are gsbatch's too)."""
    sbatch = shutil.which("sbatch")
    text = HELP
    if sbatch is None:
        return text + "\n(sbatch is not on PATH: its options are in `man sbatch`)\n"
    try:
        p = subprocess.run([sbatch, "--help"], capture_output=True, text=True, timeout=15, check=False)
        theirs, why = p.stdout.strip(), (p.stderr.strip().splitlines() or [""])[-1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        theirs, why = "", str(exc)
    return text + "\nsbatch options (sbatch --help):\n\n" + (
        theirs or f"(sbatch --help failed: {why or 'no output'}; see `man sbatch`)") + "\n"


def run(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        click.echo(_help(), nl=False)
        return 0
    if any(a in _SBATCH_INFO for a in argv):
        sbatch = shutil.which("sbatch")
        if sbatch is None:
            raise InputError("sbatch is not on PATH")
        os.execv(sbatch, [sbatch, *[a for a in argv if a in _SBATCH_INFO]])
    if not argv and sys.stdin.isatty():
        raise InputError("no batch script given (usage: gsbatch [options] SCRIPT; gsbatch --help)")
    own, sbatch_args = _split_own(argv)
    site = site_mod.load(own.get("site") or site_mod.default_site_path())
    script = _script_text(sbatch_args)
    piped = None
    if script is None and not any(a == "--wrap" or a.startswith("--wrap=") for a in sbatch_args) \
            and not sys.stdin.isatty():
        piped = script = sys.stdin.read()  # `gsbatch < job.sh`: sbatch reads it there; price its #SBATCH lines
    req = parse_sbatch_args(sbatch_args, script, env=os.environ)
    partitions, params = pricing(site)
    p = hook_price(req.view, params, partitions)
    if isinstance(p, HookRefusal):
        raise InputError(p.message)
    why = never_placeable(p, params)
    if why:
        raise InfeasibleError(why)
    cost, pins = describe(p)
    cost_h = p.cost / 3600 if p.any_gpu else 0.0
    account = req.account or os.environ.get("SBATCH_ACCOUNT") or os.environ.get("SLURM_ACCOUNT")
    account = account.lower() if account else None  # as Slurm and the hook spell it
    line = f"gsbatch: this job may use {cost}"
    if account:
        ledger = Ledger.open(os.environ.get("SLURMGOV_LEDGER") or site.ledger_url())
        acct = site.accounts.get(account)
        if acct is not None:
            ledger.ensure_account(account, acct.budget_gpu_hours, acct.period, **acct.terms())
        bal = ledger.balance(account)
        line += f"; account {account} has {bal.available_h:.2f} GPU-h left"
        if cost_h > bal.available_h:
            raise BudgetRefused(f"account {account}: {bal.available_h:.1f} GPU-h left, "
                                f"job needs up to {cost_h:.1f} GPU-h")
        if cost_h:  # the submitter's own cap in the account, as the hook will check it
            ledger.check_admission(account, whoami(), cost_h, what="job")
    click.echo(line, err=True)
    if pins:
        click.echo(f"gsbatch: {pins}", err=True)
    if own.get("preview"):
        return 0
    sbatch_args = _tagged(sbatch_args, own.get("tag"))
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise InputError("sbatch is not on PATH (use --gsbatch-preview to see the cost only)")
    if piped is not None:  # the script was read here: hand it on
        return subprocess.run([sbatch, *sbatch_args], input=piped, text=True, check=False).returncode
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
        if name and not is_name(name):
            raise InputError(f"--gsbatch-tag: {name!r} is not a workflow or step name")
    comment = f"slurmgov:wf={wf}" + (f",step={step}" if step else "")
    return [f"--comment={comment}", *args]


@guarded("gsbatch")
def _main(standalone_mode=False):
    return run(sys.argv[1:])


def main() -> None:
    sys.exit(_main())
