"""Who may change budgets: root, and the users and groups a site lists under ``admins``."""

from __future__ import annotations

import getpass
import grp
import os
import pwd

from slurmgov.errors import PermissionDenied


def is_admin(site, uid: int | None = None) -> bool:
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return True
    try:
        pw = pwd.getpwuid(uid)
        name, gid = pw.pw_name, pw.pw_gid
    except KeyError:
        name, gid = getpass.getuser(), os.getegid()
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
