"""Who may change budgets: root, and the users and groups a site lists under ``admins``."""

from __future__ import annotations

import getpass
import grp
import os
import pwd

from slurmgov.errors import PermissionDenied


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


def is_admin(site, uid: int | None = None) -> bool:
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return True
    name, gid = _passwd(uid)
    if name in site.admins.users:
        return True
    for group in site.admins.groups:
        try:
            g = grp.getgrnam(group)
        except KeyError:
            continue
        if g.gr_gid == gid or name in g.gr_mem:
            return True
    return False


def require_admin(site, what: str) -> None:
    if not is_admin(site):
        raise PermissionDenied(
            f"{what} needs an admin: root, or a user or group listed under `admins` in site {site.site}"
        )
