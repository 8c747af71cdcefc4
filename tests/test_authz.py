"""Who may change budgets: root, and the users and groups a site lists under `admins`."""

import grp
import pwd

import pytest

from slurmgov.errors import PermissionDenied
from slurmgov.policy import authz
from slurmgov.site import model as site_mod
from slurmgov.site import yamlfile

NOBODY = pwd.getpwnam("nobody")
NOBODY_GROUP = grp.getgrgid(NOBODY.pw_gid).gr_name


def site(admins: str = ""):
    text = ("site: s\ngpu_types: {h100: {memory_gb: 80}}\nnodes:\n  - {names: n1, gpus: 4, gpu_type: h100}\n"
            "partitions:\n  - {name: p, nodes: n1}\n"
            + admins)
    return site_mod.parse(yamlfile.load_text(text, "s.yaml"))


def test_root_is_admin_a_researcher_is_not():
    assert authz.is_admin(site(), uid=0)
    assert not authz.is_admin(site(), uid=NOBODY.pw_uid)


@pytest.mark.parametrize("admins", ["admins: {users: [nobody]}\n", f"admins: {{groups: [{NOBODY_GROUP}]}}\n"])
def test_site_listed_users_and_groups_are_admins(admins):
    assert authz.is_admin(site(admins), uid=NOBODY.pw_uid)


def test_unknown_group_is_ignored_not_an_error():
    assert not authz.is_admin(site("admins: {groups: [no-such-group-here]}\n"), uid=NOBODY.pw_uid)


def test_refusal_message(monkeypatch):
    monkeypatch.setattr(authz.os, "geteuid", lambda: NOBODY.pw_uid)
    with pytest.raises(PermissionDenied) as e:
        authz.require_admin(site(), "changing a budget")
    assert e.value.exit_code == 6
    assert str(e.value) == "changing a budget needs an admin: root, or a user or group listed under `admins` in site s"
