"""The ledger's money rules, written once: pure functions of numbers and keys, no database.

Every path that writes money calls these and nothing else decides: single calls
(``Ledger.admit``, ``charge``, ``close``, ``reprice``, balances), bulk transactions
(``Bulk.admit_many``, ``charge_many``, ``close_many``) and the governor's journal batches and
reconcile chunks, which plan a batch event by event before Bulk writes it. A rule changed here
changes for all of them.

Amounts enter as weighted GPU-hours (floats) and are kept as integer weighted GPU-milliseconds,
rounded half up once at entry, so every sum is exact. Periods are UTC: monthly 'YYYY-MM',
quarterly 'YYYY-Qn', or 'none' (one period, 'all').
"""

from __future__ import annotations

import functools
import math
import time
from datetime import datetime, timezone

from slurmgov.errors import BudgetRefused, InputError, LedgerError, PermissionDenied, UnknownAccount
from slurmgov.ledger.schema import MAX_MS  # the storage limit: what one amount column holds

MS_PER_H = 3_600_000
MAX_GPU_HOURS = MAX_MS / MS_PER_H  # about 2.56e12
PERIOD_KINDS = ("monthly", "quarterly", "none")
CLOSED_STATES = ("done", "failed", "cancelled")
FOREVER = 1e18  # epoch-seconds bound for the open-ended period and unbounded queries
MOD_PREFIX = "mod:"  # the share a re-pricing (reprice) adds; its key makes the change idempotent


# ---- amounts and times --------------------------------------------------------------------

def hours(ms: int) -> float:
    return ms / MS_PER_H


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def too_much(what: str, ms: float, verb: str = ":") -> InputError:
    h = ms / MS_PER_H
    said = f"{h:,.0f}" if h < 1e15 else f"{h:.3g}"  # whole hours, so that it differs visibly from the limit
    return InputError(f"{what}{verb} {said} GPU-h, more than the ledger can store (at most {MAX_GPU_HOURS:,.0f} GPU-h)")


def storable_ms(x: float, what: str) -> int:
    """``x`` milliseconds rounded half up, or InputError when that is more than a 64-bit column holds."""
    if x >= 2**63 or x + 0.5 >= 2**63:  # exact comparisons (float against int); inf included
        raise too_much(what, x)
    return round_half_up(x)


def amount_ms(hours_: object, what: str) -> int:
    """A number of GPU-hours >= 0 as integer milliseconds, or InputError."""
    if isinstance(hours_, bool) or not isinstance(hours_, (int, float)) or not math.isfinite(hours_) or hours_ < 0:
        raise InputError(f"{what} must be a number of GPU-hours >= 0, got {hours_!r}")
    return storable_ms(hours_ * MS_PER_H, what)


def epoch(t, what: str = "time") -> float:
    """A time as the ledger takes it: None is now; a naive datetime is taken as UTC; numbers are
    epoch seconds; anything else is InputError."""
    if t is None:
        return time.time()
    if isinstance(t, datetime):
        return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
        return float(t)
    raise InputError(f"{what} must be a datetime or epoch seconds, got {t!r}")


# ---- budgets and periods ------------------------------------------------------------------

def check_kind(kind: str) -> str:
    if kind not in PERIOD_KINDS:
        raise InputError(f"period {kind!r} is not one of {', '.join(PERIOD_KINDS)}")
    return kind


def check_terms(account: str, rollover_pct, expires) -> tuple[int, float | None]:
    if isinstance(rollover_pct, bool) or not isinstance(rollover_pct, int) or not 0 <= rollover_pct <= 100:
        raise InputError(f"budget of {account}: rollover must be a whole percentage 0..100, got {rollover_pct!r}")
    return rollover_pct, None if expires is None else epoch(expires, "expires")


def terms_text(pct: int, expires: float | None) -> str:
    parts = [f"rollover {pct}%"] if pct else []
    if expires is not None:
        parts.append(f"expires {datetime.fromtimestamp(expires, timezone.utc).isoformat()}")
    return "; ".join(parts)


def period_of(kind: str, ts: float) -> tuple[str, float, float]:
    """The period holding epoch time ``ts``: (key, start, end) with start <= ts < end."""
    if kind == "none":
        return "all", -FOREVER, FOREVER
    d = datetime.fromtimestamp(ts, timezone.utc)
    if kind == "monthly":
        first, months, key = d.month, 1, f"{d.year:04d}-{d.month:02d}"
    elif kind == "quarterly":
        q = (d.month - 1) // 3
        first, months, key = 3 * q + 1, 3, f"{d.year:04d}-Q{q + 1}"
    else:
        raise InputError(f"period {kind!r} is not one of {', '.join(PERIOD_KINDS)}")
    nxt = first - 1 + months
    start = datetime(d.year, first, 1, tzinfo=timezone.utc)
    end = datetime(d.year + nxt // 12, nxt % 12 + 1, 1, tzinfo=timezone.utc)
    return key, start.timestamp(), end.timestamp()


def charge_month(ts: float) -> str:
    """The UTC month ('YYYY-MM') whose per-user running total a charge that ended at epoch time
    ``ts`` adds to (schema version 9). Periods start and end on whole seconds at a month's first
    instant, so the month of floor(ts) is in [start, end) exactly when ts is; a time no calendar
    holds gets a key outside every month: before -FOREVER '!', after FOREVER '9999-99', and
    '0000-00' / '9999-98' between, inside only the open-ended period, as the charges' own
    ``ended`` comparisons had it."""
    if ts < -FOREVER:
        return "!"
    if ts >= FOREVER:
        return "9999-99"
    return _day_month(math.floor(ts) // 86400)


@functools.lru_cache(maxsize=4096)
def _day_month(day: int) -> str:
    """The month of UTC day ``day`` (days since the epoch): months begin at a day's first second,
    so every second of a day is in its month, and the calendar's ends fall on whole days too;
    a bulk pass's charges end on a few hundred days, computed once each."""
    try:
        d = datetime.fromtimestamp(day * 86400, timezone.utc)
    except (OverflowError, ValueError, OSError):
        return "0000-00" if day < 0 else "9999-98"
    return f"{d.year:04d}-{d.month:02d}"


def period_months(kind: str, ts: float) -> tuple[str, str]:
    """(first, end) month keys of the period holding ``ts``: a charge counts in the period exactly
    when first <= charge_month(ended) < end."""
    _, start, end = period_of(kind, ts)
    return charge_month(start), charge_month(end)


def expired(expires: float | None, ts: float) -> bool:
    """An account past its expiry has no budget at ``ts``."""
    return expires is not None and ts >= expires


def rollover_window(kind: str, pct: int, start: float) -> tuple[float, float] | None:
    """The previous period, whose unused budget rolls into the one starting at ``start``; None
    where nothing rolls over (no rollover, or one period for ever). Only a period the account
    lived through can leave budget (the caller checks that)."""
    if not pct or kind == "none":
        return None
    _, p_start, p_end = period_of(kind, start - 1)
    return p_start, p_end


def carried(budget: int, pct: int, previous_charged: int) -> int:
    """What rolls over: the previous period's unused standing budget (its budget minus its
    charges), up to ``pct`` of the standing budget, never negative; a period's own carry never
    rolls over again (no compounding)."""
    return max(0, min(budget - previous_charged, budget * pct // 100))


def available(budget: int, charged: int, held: int) -> int:
    """available = this period's budget - charged in the period - still held by open holds."""
    return budget - charged - held


# ---- holds --------------------------------------------------------------------------------

def no_budget(account: str) -> UnknownAccount:
    return UnknownAccount(account, f"account {account} has no budget in the ledger; set one with "
                                   f"`slurmgov budget set {account} GPU_HOURS`")


def missing_hold(hold_key: str) -> LedgerError:
    return LedgerError(f"hold {hold_key} is not in the ledger")


def hold_conflict(hold_key: str) -> LedgerError:
    """What a hold key replayed with a different account, workflow or shares raises."""
    return LedgerError(f"hold {hold_key} already exists for a different account, workflow "
                       f"or shares; a replay must repeat the original request")


def mod_step(mod_id: str) -> str:
    """The share that records re-pricing ``mod_id`` (its amount: what it added, 0 for a shrink)."""
    return f"{MOD_PREFIX}{mod_id}"


def shares_ms(shares: dict) -> dict[str, int]:
    """An admission's shares (step -> weighted GPU-h) as integer milliseconds, each validated."""
    return {str(step): amount_ms(h, f"share of step {step}") for step, h in shares.items()}


def check_lease(hold_key: str, lease_s) -> None:
    if lease_s is not None and not (isinstance(lease_s, (int, float)) and math.isfinite(lease_s) and lease_s > 0):
        raise InputError(f"hold {hold_key}: the lease must be a positive number of seconds, got {lease_s!r}")


def replay_matches(had_account: str, had_workflow: str, had_shares: dict[str, int], account: str, workflow: str,
                   want: dict[str, int]) -> bool:
    """Whether an admission (account, workflow, shares in ms) repeats the hold that is there. A
    re-priced hold is compared on the shares it was admitted with: its account may have moved."""
    base = {k: v for k, v in had_shares.items() if not k.startswith(MOD_PREFIX)}
    asked = {k: v for k, v in want.items() if not k.startswith(MOD_PREFIX)}
    moved = len(base) != len(had_shares)
    return had_workflow == workflow and base == asked and (moved or had_account == account)


def admit_replay(hold_key: str, had: tuple[str, str, dict[str, int]] | None, account: str, workflow: str,
                 want: dict[str, int]) -> bool:
    """Whether admitting ``hold_key`` is a replay (True: hold nothing more) given the hold that is
    there, ``had`` = (account, workflow, shares as admitted in ms), or None; a replay that does
    not repeat the original request is a LedgerError."""
    if had is None:
        return False
    if not replay_matches(*had, account, workflow, want):
        raise hold_conflict(hold_key)
    return True


def check_admit(account: str, avail: int, need: int) -> None:
    """An enforced admission holds ``need`` only while ``avail`` covers it, else BudgetRefused."""
    if avail < need:
        raise BudgetRefused(f"account {account}: {hours(avail):.1f} GPU-h left, "
                            f"workflow needs up to {hours(need):.1f} GPU-h")


def user_available(cap: int, charged: int, held: int) -> int:
    """What a capped user may still hold in an account: their cap for the period - what they were
    charged in the account this period - what their open holds in it still hold."""
    return cap - charged - held


def check_user_cap(account: str, user: str, cap: int, avail: int, need: int, what: str = "workflow") -> None:
    """An enforced admission by a capped user holds ``need`` only while what the cap leaves them
    (``avail``: user_available) covers it, else BudgetRefused naming the cap. Checked after the
    account's own budget (check_admit): a user's cap never gives more than the account has."""
    if avail < need:
        raise BudgetRefused(f"account {account}: user {user} has {hours(max(0, avail)):.1f} GPU-h left of "
                            f"their per-user cap of {hours(cap):.1f} GPU-h, {what} needs up to {hours(need):.1f} GPU-h")


def cap_terms(user: str, cap: int | None, old: int | None) -> str:
    """A cap change in the audit trail's terms column: 'user alice: cap 10 GPU-h per period (was none)'."""
    def said(ms: int | None) -> str:
        return "none" if ms is None else f"{hours(ms):.12g} GPU-h"
    return f"user {user}: cap {said(cap)} per period (was {said(old)})"


DAY_S = 86400


def check_daily_limit(actor: str, role: str, moved_ms: int, add_ms: int, limit_ms: int, what: str) -> None:
    """PermissionDenied where ``actor`` (acting as ``role``), having granted or transferred
    ``moved_ms`` in the last 24 hours, would pass ``limit_ms`` with ``add_ms`` more."""
    if moved_ms + add_ms > limit_ms:
        raise PermissionDenied(
            f"{actor} ({role}) may not {what}: {'an' if role[:1] in 'aeiou' else 'a'} {role} grants and transfers "
            f"at most {limit_ms / 3.6e6:g} GPU-h "
            f"in any 24 hours, and {actor} moved {moved_ms / 3.6e6:g} GPU-h in the last 24")


def check_close_state(state: str) -> str:
    if state not in CLOSED_STATES:
        raise InputError(f"hold state {state!r} is not one of {', '.join(CLOSED_STATES)}")
    return state


def closes(hold_state: str) -> bool:
    """Whether closing a hold in ``hold_state`` changes it: closing again keeps the first state."""
    return hold_state == "open"


def reprice_ms(hold_key: str, delta_h) -> int:
    """A re-pricing's change in ms (> 0 adds a share, < 0 releases from what is still held)."""
    if isinstance(delta_h, bool) or not isinstance(delta_h, (int, float)) or not math.isfinite(delta_h):
        raise InputError(f"re-pricing of {hold_key}: the change must be a number of GPU-hours, got {delta_h!r}")
    return amount_ms(abs(delta_h), f"re-pricing of {hold_key}") * (1 if delta_h >= 0 else -1)


# ---- charges ------------------------------------------------------------------------------

def charge_conflict(charge_key: str) -> LedgerError:
    """What a charge key replayed with a different hold, step, attempt or amount raises."""
    return LedgerError(f"charge {charge_key} already exists with a different hold, step, attempt or amount")


def charge_ms(charge_key: str, gpu_seconds, weight) -> int:
    """A charge's amount in weighted GPU-milliseconds: gpu_seconds x weight, each a number >= 0,
    rounded once, straight from seconds."""
    for v, what in ((gpu_seconds, "gpu_seconds"), (weight, "weight")):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise InputError(f"charge {charge_key}: {what} must be a number >= 0, got {v!r}")
    return storable_ms(gpu_seconds * weight * 1000, f"charge {charge_key}")


def charge_sig(hold_key: str, step: str, attempt: int, ms: int) -> tuple[str, str, int, int]:
    """What a replayed charge key must repeat."""
    return hold_key, step, attempt, ms


def charge_replay(charge_key: str, had: tuple | None, sig: tuple) -> bool:
    """Whether recording ``charge_key`` is a replay (True: record nothing) given the ``charge_sig``
    of the charge already under that key, or None; a different one is a LedgerError."""
    if had is None:
        return False
    if tuple(had) != tuple(sig):
        raise charge_conflict(charge_key)
    return True


def share_draw(hold_state: str, remaining: int | None, ms: int) -> int:
    """How much a charge of ``ms`` draws from its step's share that still holds ``remaining``
    (None: the hold has no share for the step). A closed hold has released everything: a late
    charge is recorded but holds stay put. Usage beyond the share is charged in full; the share
    just stops at zero."""
    if hold_state != "open" or not remaining:
        return 0
    return min(remaining, ms)
