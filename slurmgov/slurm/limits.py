"""Native Slurm limits from the ledger: each account's remaining budget as ``GrpTRESMins=gres/gpu=N``.

With the limit in slurmdbd, Slurm's own scheduler keeps an account within its budget even if the
job_submit hook is removed or bypassed: an over-limit job PENDS with reason ``AssocGrpGRESMinutes``.

What the number means. ``GrpTRESMins`` is a cap on the association's CUMULATIVE raw usage in
(unweighted) GPU-minutes, not an amount left. So the value set is

    cap = usage Slurm already counts for the account (GPU-minutes)
          + the ledger's remaining budget converted to unweighted GPU-minutes, rounded down

and never below that usage. When the budget is exhausted (available <= 0) the cap equals the
usage, which is what blocks every new GPU job of the account; CPU-only jobs are not affected.

Where the usage comes from (measured on Slurm 22.05.8). ``sshare --json`` does not exist in 22.05;
``sshare -n -P -A a,b -o Cluster,Account,User,GrpTRESRaw`` answers from slurmctld in ~10 ms::

    sgtest|bio-ml||cpu=0,mem=0,energy=0,node=0,billing=0,fs/disk=0,vmem=0,pages=0,gres/gpu=2
    sgtest| bio-ml|root|cpu=0,...,gres/gpu=2

The row with an empty user is the account's association; ``gres/gpu`` there is its usage in
whole GPU-minutes, rounded down (a 2-GPU job of 65 s and a 1-GPU job of 3 s show ``gres/gpu=2``).
It is the same number ``scontrol show assoc_mgr flags=assoc`` prints in ``GrpTRESMins=...
gres/gpu=LIMIT(USAGE)``, i.e. what the scheduler compares against the cap. Accounts Slurm does not
know are silently absent. Slurm's check is ``usage + running jobs' remaining minutes + the job's
GPUs x time limit > cap`` -> pend, so a job that needs exactly the minutes left still runs.

Conversion. The ledger counts weighted GPU-hours; Slurm counts plain GPU-minutes on any GPU type.
Remaining weighted GPU-hours are divided by the DEAREST weight the account could be charged (pass
``weight=site.weight(None)``, the dearest GPU type of the site; a per-account mapping is accepted
too). A GPU-minute on a cheaper type then costs the ledger less than the cap assumes, so Slurm's
cap is never looser than the ledger. It can be stricter: on cheaper GPUs, and because a job still
running is counted twice (its hold in the ledger and its remaining time in Slurm) until it settles.

Assumptions. The site runs ``AccountingStorageEnforce=associations,limits,safe`` with
``PriorityDecayHalfLife=0`` and ``PriorityUsageResetPeriod=NONE`` (usage is never decayed or reset;
with decay the cap loosens as usage decays). The ledger's periods need no reset in Slurm: at a new
period the remaining budget is the full budget again and the next sync raises the cap by it. Run
the sync after each settlement (``slurmgov sync``) and at the start of each period.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from fractions import Fraction

from slurmgov.errors import InputError, SlurmgovError
from slurmgov.ledger.cpu import is_cpu_account
from slurmgov.site.names import PATTERN, is_name
from slurmgov.slurm import commands as slurm_cli

TRES = "gres/gpu"
MS_PER_MIN = 60_000
MS_PER_H = 3_600_000
_TIMEOUT_S = 60


@dataclass(frozen=True)
class LimitChange:
    """One account's GrpTRESMins for ``gres/gpu`` before and after a sync (GPU-minutes).

    ``old`` is None when slurmdbd has no such limit; ``new`` is None when Slurm does not know the
    account (nothing is set then). ``status``: 'set', 'would set' (dry run), 'unchanged' or
    'not in slurm'."""

    account: str
    old: int | None
    new: int | None
    usage_min: int | None
    remaining_min: int | None
    available_h: float
    status: str

    @property
    def changed(self) -> bool:
        return self.new is not None and self.new != self.old

    def as_dict(self) -> dict:
        return asdict(self)


def check_account_name(account: str) -> str:
    if not is_name(account):
        raise InputError(f"account name {account!r} must match {PATTERN}; not passed to sacctmgr")
    return account


def _weight_of(weight: float | Mapping[str, float], account: str) -> Fraction:
    w = weight.get(account, max(weight.values(), default=1.0)) if isinstance(weight, Mapping) else weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
        raise InputError(f"price weight for {account} must be a number > 0, got {w!r}")
    return Fraction(repr(w))  # the decimal the user wrote: 1.1 is 11/10, not its binary neighbour


def remaining_minutes(available_h: float, weight: float | Mapping[str, float] = 1.0, account: str = "") -> int:
    """Weighted GPU-hours left -> unweighted GPU-minutes, rounded down; never negative.

    The ledger is exact to the weighted GPU-millisecond, so the hours are taken back to whole
    milliseconds first and the division is done exactly (no 0.7 * 60 = 41.999... surprises)."""
    if isinstance(available_h, bool) or not isinstance(available_h, (int, float)) or not math.isfinite(available_h):
        raise InputError(f"available budget of {account or 'an account'} must be a number, got {available_h!r}")
    ms = round(available_h * MS_PER_H)
    if ms <= 0:
        return 0
    return math.floor(Fraction(ms, MS_PER_MIN) / _weight_of(weight, account))


def plan_limits(balances: Iterable, usage_minutes: Mapping[str, int],
                weight: float | Mapping[str, float] = 1.0) -> dict[str, int]:
    """The GrpTRESMins ``gres/gpu`` cap per account: usage + remaining GPU-minutes, >= usage.

    ``balances``: ledger Balances (anything with ``account`` and ``available_h``).
    ``usage_minutes``: GPU-minutes Slurm already counts per account. Accounts without a usage
    entry are unknown to Slurm and left out of the plan."""
    plan: dict[str, int] = {}
    for b in balances:
        if b.account not in usage_minutes:
            continue
        usage = usage_minutes[b.account]
        if isinstance(usage, bool) or not isinstance(usage, int) or usage < 0:
            raise InputError(f"usage of {b.account} must be whole GPU-minutes >= 0, got {usage!r}")
        plan[b.account] = usage + remaining_minutes(b.available_h, weight, b.account)
    return plan


# ---- Slurm side ---------------------------------------------------------------------------

def _run(cmd: list[str], env=None, ok_codes=(0,)) -> str:
    return slurm_cli.run(cmd, env=env, timeout=_TIMEOUT_S, ok_codes=ok_codes)


def _tres_value(tres: str, name: str = TRES) -> int | None:
    """``cpu=1,gres/gpu=7`` -> 7; None when absent, empty or unlimited."""
    for part in tres.split(","):
        k, sep, v = part.strip().partition("=")
        if sep and k == name:
            try:
                n = int(v)
            except ValueError:
                raise SlurmgovError(f"cannot read {name} from {tres!r}") from None
            return None if n < 0 else n
    return None


def slurm_usage(accounts: list[str], env=None, sshare: str = "sshare") -> tuple[str | None, dict[str, int]]:
    """(cluster, GPU-minutes Slurm counts per account) from ``sshare ... GrpTRESRaw`` (see module doc)."""
    out = _run([sshare, "-n", "-P", "-A", ",".join(accounts), "-o", "Cluster,Account,User,GrpTRESRaw%500"], env)
    cluster, usage = None, {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 4 or parts[2].strip():
            continue  # user rows: the account's own association has an empty user
        acct = parts[1].strip()
        if acct in accounts:
            cluster = cluster or parts[0].strip() or None
            usage[acct] = _tres_value(parts[3]) or 0
    return cluster, usage


def current_limits(accounts: list[str], cluster: str | None = None, env=None,
                   sacctmgr: str = "sacctmgr") -> dict[str, int | None]:
    """GrpTRESMins ``gres/gpu`` of each account's association in slurmdbd (None: no limit)."""
    cmd = [sacctmgr, "-n", "-P", "show", "assoc", "where", f"account={','.join(accounts)}"]
    if cluster:
        cmd.append(f"cluster={cluster}")
    out = _run(cmd + ["format=account,user,grptresmins"], env)
    limits: dict[str, int | None] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) >= 3 and not parts[1].strip() and parts[0].strip() in accounts:
            limits[parts[0].strip()] = _tres_value(parts[2])
    return limits


def set_limit(accounts: list[str], minutes: int | None, cluster: str | None = None, env=None,
              sacctmgr: str = "sacctmgr") -> None:
    """One ``sacctmgr -i modify account`` call setting the same cap on ``accounts`` (None clears it)."""
    for a in accounts:
        check_account_name(a)
    where = ["where", f"name={','.join(accounts)}"] + ([f"cluster={cluster}"] if cluster else [])
    value = -1 if minutes is None else int(minutes)
    _run([sacctmgr, "-i", "modify", "account", *where, "set", f"GrpTRESMins={TRES}={value}"], env)


def clear_limits(accounts: list[str], cluster: str | None = None, env=None, sacctmgr: str = "sacctmgr") -> None:
    """Remove the ``gres/gpu`` GrpTRESMins cap from ``accounts`` (back to unlimited)."""
    if accounts:
        set_limit(list(accounts), None, cluster, env, sacctmgr)


def sync_limits(ledger, env=None, dry_run: bool = False, sacctmgr: str = "sacctmgr", *,
                weight: float | Mapping[str, float] = 1.0, sshare: str = "sshare",
                now=None) -> list[LimitChange]:
    """Push every ledger account's remaining budget into slurmdbd as ``GrpTRESMins=gres/gpu=N``.

    Reads usage (sshare, one call) and current caps (sacctmgr show, one call), then calls
    ``sacctmgr -i modify account`` only for accounts whose cap changes: one call for all accounts
    that get the same value, otherwise one per value. ``weight``: the price weight to convert by,
    normally ``site.weight(None)`` (see the module doc). Returns one LimitChange per ledger
    account, sorted by name. A name sacctmgr could misread is refused before anything runs."""
    # GPU budgets only: a CPU budget (cpu:<account>, ledger/cpu.py) is the submit hook's alone
    balances = sorted((b for b in ledger.balances(now) if not is_cpu_account(b.account)), key=lambda b: b.account)
    for b in balances:
        check_account_name(b.account)
    if not balances:
        return []
    accounts = [b.account for b in balances]
    for a in accounts:
        _weight_of(weight, a)
    cluster, usage = slurm_usage(accounts, env, sshare)
    plan = plan_limits(balances, usage, weight)
    old = current_limits(sorted(plan), cluster, env, sacctmgr) if plan else {}

    by_value: dict[int, list[str]] = {}
    for a, cap in plan.items():
        if old.get(a) != cap:
            by_value.setdefault(cap, []).append(a)
    if not dry_run:
        done: list[str] = []
        for cap, group in sorted(by_value.items()):
            try:
                set_limit(sorted(group), cap, cluster, env, sacctmgr)
            except SlurmgovError as e:
                already = f" (already set: {', '.join(done)})" if done else ""
                raise SlurmgovError(f"setting GrpTRESMins for {', '.join(sorted(group))}: {e}{already}") from None
            done += sorted(group)

    changes = []
    for b in balances:
        a = b.account
        if a not in plan:
            changes.append(LimitChange(a, None, None, None, None, b.available_h, "not in slurm"))
            continue
        status = "unchanged" if old.get(a) == plan[a] else ("would set" if dry_run else "set")
        changes.append(LimitChange(a, old.get(a), plan[a], usage[a], plan[a] - usage[a], b.available_h, status))
    return changes
