"""Who may do what: the roles of a site and the one check every governed action makes.

Roles, from most to least:

- **admin**: root, and the users and groups under ``admins`` in the site file: everything.
- **operator**: the users and groups under ``operators``: grant and transfer GPU-hours (up to
  ``operators.max_grant_gpu_hours`` a change, if set), release holds, read every account. Not
  ``budget set``.
- **manager** of an account: its ``managers`` in the site file and, unless
  ``managers.slurm_coordinators`` is false, Slurm's coordinators of it (``sacctmgr add
  coordinator``): read its usage, budget, holds and audit trail, set its users' caps; grant or
  transfer between accounts they manage only up to ``managers.max_grant_gpu_hours`` a change
  (0, the default: not at all).
- **user**: read the accounts Slurm associates them with (on a site without Slurm, the site
  file's accounts).

The caller is the process's real uid (``whoami``), never $USER. What Slurm says of the caller
(its coordinator accounts, its associations) is asked by the interface, which has Slurm's
commands, and handed in on a ``Caller``: this module does no Slurm I/O. ``require`` raises
PermissionDenied (exit 6) with one line naming who, what, which account and which role would
allow it, and returns the role the action is allowed under, for the audit trail.
"""

from __future__ import annotations

import getpass
import grp
import os
import pwd
from dataclasses import dataclass

from slurmgov.errors import PermissionDenied

ADMIN, OPERATOR, MANAGER, USER = "admin", "operator", "manager", "user"

# action -> what it does, as the refusal says it ("may not <this> account X")
ACTIONS = {
    "budget.set": "set the budget of",
    "budget.grant": "grant GPU-hours to",
    "budget.transfer": "transfer GPU-hours between",
    "holds.release": "release a hold of",
    "usage.read": "read the usage, budget, holds or audit trail of",
    "usercap.set": "set user caps of",
}


def _passwd(uid: int) -> tuple[str, int]:
    """(name, gid) of ``uid``; without a passwd entry (a container), the login name and our gid."""
    try:
        pw = pwd.getpwuid(uid)
        return pw.pw_name, pw.pw_gid
    except KeyError:
        return getpass.getuser(), os.getegid()


def whoami() -> str:
    """The user this process runs as: its effective uid's name. Not getpass.getuser(), which
    reads $USER and $LOGNAME first: an environment variable must not make slurmgov act for, or
    ask Slurm about, someone else."""
    return _passwd(os.geteuid())[0]


@dataclass(frozen=True)
class Caller:
    """Who asks, and what Slurm says of them (asked by the interface; empty where not asked)."""

    name: str
    uid: int
    gid: int
    coordinates: frozenset[str] = frozenset()  # accounts Slurm lists this user as a coordinator of
    associations: frozenset[str] = frozenset()  # accounts this user may charge (Slurm, or a local site's)


def caller(uid: int | None = None, coordinates=(), associations=()) -> Caller:
    """The caller with ``uid`` (default: this process's effective uid)."""
    uid = os.geteuid() if uid is None else uid
    name, gid = _passwd(uid)
    return Caller(name, uid, gid, frozenset(coordinates), frozenset(associations))


def _listed(who: Caller, users, groups) -> bool:
    if who.name in users:
        return True
    for group in groups:
        try:
            g = grp.getgrnam(group)
        except KeyError:
            continue
        if g.gr_gid == who.gid or who.name in g.gr_mem:
            return True
    return False


def is_admin(site, uid: int | None = None) -> bool:
    who = caller(uid)
    return who.uid == 0 or _listed(who, site.admins.users, site.admins.groups)


def is_operator(site, who: Caller) -> bool:
    return _listed(who, site.operators.users, site.operators.groups)


def manages(site, who: Caller, account: str) -> bool:
    """Whether ``who`` manages ``account``: listed under its ``managers``, or (unless the site
    turns it off) Slurm's coordinator of it."""
    acct = site.accounts.get(account)
    if acct is not None and who.name in acct.managers:
        return True
    return site.managers.slurm_coordinators and account in who.coordinates


def managed(site, who: Caller) -> frozenset[str]:
    """Every account ``who`` manages."""
    mine = {a for a, acct in site.accounts.items() if who.name in acct.managers}
    if site.managers.slurm_coordinators:
        mine |= who.coordinates
    return frozenset(mine)


def role(site, who: Caller) -> str:
    """The highest role ``who`` holds on the site (manager: of at least one account)."""
    if who.uid == 0 or _listed(who, site.admins.users, site.admins.groups):
        return ADMIN
    if is_operator(site, who):
        return OPERATOR
    return MANAGER if managed(site, who) else USER


def visible(site, who: Caller) -> frozenset[str] | None:
    """The accounts ``who`` may read (usage, budgets, holds, runs, audit): None for all (admins
    and operators), else the accounts they manage and those Slurm associates them with."""
    if role(site, who) in (ADMIN, OPERATOR):
        return None
    return managed(site, who) | who.associations


def _hours(h: float) -> str:
    return f"{h:g} GPU-h"


def require(site, action: str, account: str | None = None, *, dest: str | None = None,
            gpu_hours: float | None = None, who: Caller | None = None) -> str:
    """Allow ``who`` (default: this process's user, without Slurm's view) ``action`` on
    ``account`` (a transfer: from ``account`` to ``dest``; a grant or transfer: of ``gpu_hours``),
    and return the role it is allowed under; else PermissionDenied, one line, exit 6."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    who = who or caller()
    mine = role(site, who)
    if mine == ADMIN:
        return ADMIN
    accounts = [a for a in (account, dest) if a is not None]
    op_max = site.operators.max_grant_gpu_hours
    mgr_max = site.managers.max_grant_gpu_hours
    within = gpu_hours is None or op_max is None or gpu_hours <= op_max
    if mine == OPERATOR and (action == "holds.release" or action == "usage.read"
                             or (action in ("budget.grant", "budget.transfer") and within)):
        return OPERATOR
    manager = bool(accounts) and all(manages(site, who, a) for a in accounts)
    if manager and (action in ("usage.read", "usercap.set") or (
            action in ("budget.grant", "budget.transfer") and mgr_max > 0
            and (gpu_hours is None or gpu_hours <= mgr_max))):
        return MANAGER
    if action == "usage.read" and account is not None and account in who.associations:
        return USER
    raise PermissionDenied(_refusal(site, who, mine, action, accounts, gpu_hours))


def daily_limit(site, role_: str) -> float | None:
    """The most GPU-hours one caller acting as ``role_`` may grant and transfer in all over any 24
    hours (None: no such limit; admins have none). A per-change limit alone is no limit: a change
    repeated ten times moves ten times as much. The ledger counts and enforces it (Ledger.grant)."""
    if role_ == OPERATOR:
        return site.operators.max_gpu_hours_per_day
    if role_ == MANAGER:
        return site.managers.max_gpu_hours_per_day
    return None


def _refusal(site, who: Caller, mine: str, action: str, accounts: list[str], gpu_hours: float | None) -> str:
    """One line: who (as what), may not do what to which account, and which roles would allow it."""
    what = ACTIONS[action]
    if gpu_hours is not None and action in ("budget.grant", "budget.transfer"):
        what = what.replace("GPU-hours", _hours(gpu_hours))
    where = " and ".join(f"account {a}" for a in accounts) if accounts else f"site {site.site}"
    admin = f"an admin (root, or `admins` in site {site.site})"
    op_max, mgr_max = site.operators.max_grant_gpu_hours, site.managers.max_grant_gpu_hours
    op_limit = "" if op_max is None else f", up to {_hours(op_max)} a change"
    mgr = (f"a manager of {' and '.join(accounts) or 'the account'} (its `managers` in the site file"
           + (", or its Slurm coordinator" if site.managers.slurm_coordinators else "") + ")")
    needs = {
        "budget.set": [admin],
        "budget.grant": [admin, f"an operator (`operators`{op_limit})"]
        + ([f"{mgr}, up to {_hours(mgr_max)} a change"] if mgr_max > 0 else []),
        "holds.release": [admin, "an operator (`operators`)"],
        "usage.read": [admin, "an operator", mgr, "a user Slurm associates with it" if site.executor == "slurm"
                       else f"any user, if site {site.site} lists it under `accounts`"],
        "usercap.set": [admin, mgr],
    }
    needs["budget.transfer"] = needs["budget.grant"]
    allowed = needs[action]
    text = allowed[0] if len(allowed) == 1 else ", ".join(allowed[:-1]) + " or " + allowed[-1]
    return f"{who.name} ({mine}) may not {what} {where}: that needs {text}"


def require_admin(site, what: str) -> None:
    if not is_admin(site):
        raise PermissionDenied(
            f"{what} needs an admin: root, or a user or group listed under `admins` in site {site.site}"
        )
