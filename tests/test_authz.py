"""Who may do what: admins, operators, account managers (the site file's and Slurm's coordinators)
and users; the one check every governed action makes, and its one-line refusals (exit 6)."""

import grp
import pwd

import pytest

from slurmgov.errors import InputError, PermissionDenied
from slurmgov.policy import authz
from slurmgov.site import model as site_mod
from slurmgov.site import yamlfile
from slurmgov.slurm.commands import parse_coordinators

NOBODY = pwd.getpwnam("nobody")
NOBODY_GROUP = grp.getgrgid(NOBODY.pw_gid).gr_name
DAEMON = pwd.getpwnam("daemon")


def site(admins: str = "", accounts: str = ""):
    text = ("site: s\ngpu_types: {h100: {memory_gb: 80}}\nnodes:\n  - {names: n1, gpus: 4, gpu_type: h100}\n"
            "partitions:\n  - {name: p, nodes: n1}\n"
            + admins + (f"accounts:\n{accounts}" if accounts else ""))
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


# ---- roles ---------------------------------------------------------------------------------

ROLES = ("operators: {users: [daemon], max_grant_gpu_hours: 10}\n"
         "managers: {max_grant_gpu_hours: 2}\n")
ACCOUNTS = ("  chem: {budget_gpu_hours: 10, managers: [nobody]}\n"
            "  chem2: {budget_gpu_hours: 10, managers: [nobody]}\n"
            "  bio: {budget_gpu_hours: 10}\n")


def who(pw, coordinates=(), associations=()):
    return authz.Caller(pw.pw_name, pw.pw_uid, pw.pw_gid, frozenset(coordinates), frozenset(associations))


def refused(s, action, account=None, **kw) -> str:
    with pytest.raises(PermissionDenied) as e:
        authz.require(s, action, account, **kw)
    assert e.value.exit_code == 6 and "\n" not in str(e.value)
    return str(e.value)


def test_an_admin_may_do_everything():
    s, root = site(ROLES, ACCOUNTS), authz.caller(0)
    for action in authz.ACTIONS:
        assert authz.require(s, action, "bio", dest="chem", gpu_hours=1e6, who=root) == "admin"
    assert authz.visible(s, root) is None


def test_an_operator_grants_and_transfers_up_to_the_limit_and_releases_holds_but_sets_no_budget():
    s, op = site(ROLES, ACCOUNTS), who(DAEMON)
    assert authz.require(s, "budget.grant", "bio", gpu_hours=10, who=op) == "operator"
    assert authz.require(s, "budget.transfer", "bio", dest="chem", gpu_hours=3, who=op) == "operator"
    assert authz.require(s, "holds.release", "chem", who=op) == "operator"
    assert authz.require(s, "usage.read", "bio", who=op) == "operator"
    assert authz.visible(s, op) is None  # operators see every account
    assert refused(s, "budget.grant", "bio", gpu_hours=10.5, who=op) == (
        "daemon (operator) may not grant 10.5 GPU-h to account bio: that needs an admin (root, or `admins` in "
        "site s), an operator (`operators`, up to 10 GPU-h a change) or a manager of bio (its `managers` in the "
        "site file, or its Slurm coordinator), up to 2 GPU-h a change")
    assert "transfer 11 GPU-h between account bio and account chem" in refused(
        s, "budget.transfer", "bio", dest="chem", gpu_hours=11, who=op)
    assert refused(s, "budget.set", "bio", who=op) == (
        "daemon (operator) may not set the budget of account bio: that needs an admin (root, or `admins` in site s)")
    assert "daemon (operator) may not set user caps of account bio" in refused(s, "usercap.set", "bio", who=op)


def test_an_operator_group_and_an_unlimited_operator():
    s = site(f"operators: {{groups: [{NOBODY_GROUP}]}}\n", ACCOUNTS)
    assert authz.role(s, who(NOBODY)) == "operator"
    assert authz.require(s, "budget.grant", "bio", gpu_hours=1e9, who=who(NOBODY)) == "operator"


def test_a_manager_reads_and_caps_their_accounts_grants_within_the_site_limit_and_nothing_on_others():
    s, mgr = site(ROLES, ACCOUNTS), who(NOBODY)
    assert authz.role(s, mgr) == "manager"
    for action in ("usage.read", "usercap.set"):
        assert authz.require(s, action, "chem", who=mgr) == "manager"
        assert "nobody (manager) may not" in refused(s, action, "bio", who=mgr)
    assert authz.require(s, "budget.grant", "chem", gpu_hours=2, who=mgr) == "manager"
    assert authz.require(s, "budget.transfer", "chem", dest="chem2", gpu_hours=1, who=mgr) == "manager"
    assert refused(s, "budget.grant", "chem", gpu_hours=3, who=mgr) == (
        "nobody (manager) may not grant 3 GPU-h to account chem: that needs an admin (root, or `admins` in site s), "
        "an operator (`operators`, up to 10 GPU-h a change) or a manager of chem (its `managers` in the site file, "
        "or its Slurm coordinator), up to 2 GPU-h a change")
    refused(s, "budget.grant", "bio", gpu_hours=1, who=mgr)
    refused(s, "budget.transfer", "chem", dest="bio", gpu_hours=1, who=mgr)  # must manage both
    refused(s, "holds.release", "chem", who=mgr)
    refused(s, "budget.set", "chem", who=mgr)
    assert authz.visible(s, mgr) == {"chem", "chem2"}


def test_by_default_a_manager_grants_nothing():
    s, mgr = site("", ACCOUNTS), who(NOBODY)
    assert "nobody (manager) may not grant 1 GPU-h to account chem" in refused(
        s, "budget.grant", "chem", gpu_hours=1, who=mgr)


def test_a_slurm_coordinator_manages_the_account_unless_the_site_says_not():
    on, off = site("", ACCOUNTS), site("managers: {slurm_coordinators: false}\n", ACCOUNTS)
    coord = who(DAEMON, coordinates={"bio"}, associations={"chem"})  # as sacctmgr says of daemon
    assert authz.role(on, coord) == "manager" and authz.manages(on, coord, "bio")
    assert authz.require(on, "usercap.set", "bio", who=coord) == "manager"
    assert authz.require(on, "usage.read", "bio", who=coord) == "manager"
    assert authz.visible(on, coord) == {"bio", "chem"}
    assert authz.role(off, coord) == "user" and not authz.manages(off, coord, "bio")
    assert "daemon (user) may not set user caps of account bio" in refused(off, "usercap.set", "bio", who=coord)
    assert authz.require(off, "usage.read", "chem", who=coord) == "user"
    assert authz.visible(off, coord) == {"chem"}


def test_a_user_reads_only_the_accounts_they_are_associated_with():
    s, user = site("", ACCOUNTS), who(DAEMON, associations={"bio"})
    assert authz.role(s, user) == "user"
    assert authz.require(s, "usage.read", "bio", who=user) == "user"
    assert refused(s, "usage.read", "chem", who=user) == (
        "daemon (user) may not read the usage, budget, holds or audit trail of account chem: that needs an admin "
        "(root, or `admins` in site s), an operator, a manager of chem (its `managers` in the site file, or its "
        "Slurm coordinator) or a user Slurm associates with it")
    assert authz.visible(s, user) == {"bio"}
    for action in ("budget.set", "budget.grant", "budget.transfer", "holds.release", "usercap.set"):
        refused(s, action, "bio", dest="chem" if action == "budget.transfer" else None, gpu_hours=0.1, who=user)


def test_a_release_without_a_hold_is_refused_on_the_site():
    assert refused(site(), "holds.release", who=who(NOBODY)).startswith("nobody (user) may not release a hold of site s")


def test_the_caller_is_the_real_uid_whatever_user_says(monkeypatch):
    monkeypatch.setenv("USER", "root")
    monkeypatch.setenv("LOGNAME", "root")
    monkeypatch.setattr(authz.os, "geteuid", lambda: NOBODY.pw_uid)
    assert authz.whoami() == "nobody" and authz.caller().uid == NOBODY.pw_uid
    assert "nobody (manager) may not set the budget" in refused(site("admins: {users: [root]}\n", ACCOUNTS),
                                                                "budget.set", "chem")


@pytest.mark.parametrize("text, where", [
    ("operators: {users: [daemon], max_grant: 3}\n", "s.yaml:7: operators.max_grant: unknown key"),
    ("operators: {users: [daemon], max_grant_gpu_hours: -1}\n", "s.yaml:7: operators.max_grant_gpu_hours: "),
    ("managers: {may_grant: true}\n", "s.yaml:7: managers.may_grant: unknown key"),
    ("accounts:\n  chem: {budget_gpu_hours: 1, managers: ['a b']}\n", "s.yaml:8: accounts.chem.managers"),
    ("accounts:\n  chem: {budget_gpu_hours: 1, manager: [nobody]}\n", "s.yaml:8: accounts.chem.manager: unknown key"),
])
def test_the_role_sections_of_a_site_file_are_strict(text, where):
    with pytest.raises(InputError) as e:
        site(text)
    assert str(e.value).startswith(where) and "\n" not in str(e.value), str(e.value)


def test_sacctmgr_coordinator_lines_are_parsed_for_the_one_user():
    text = "daemon|chem-ai,physics\nnobody|\n"
    assert parse_coordinators(text, "daemon") == {"chem-ai", "physics"}
    assert parse_coordinators(text, "nobody") == set() == parse_coordinators("", "daemon")
    assert parse_coordinators("daemonx|bio-ml\n", "daemon") == set()


# ---- the CLI, run as unprivileged users ------------------------------------------------------

LOCAL_SITE = """site: roles
executor: {executor}
gpu_types: {{h100: {{memory_gb: 80}}}}
nodes:
  - {{names: "{nodes}", gpus: 4, gpu_type: h100}}
partitions:
  - {{name: {partition}, nodes: "{nodes}", default: true}}
operators: {{users: [daemon], max_grant_gpu_hours: 10}}
managers: {{max_grant_gpu_hours: 2}}
accounts:
  chem-ai: {{budget_gpu_hours: 500, managers: [nobody]}}
  bio-ml: {{budget_gpu_hours: 200}}
  physics: {{budget_gpu_hours: 50}}
"""


@pytest.fixture
def shared_dir():
    """A directory every user may write (pytest's tmp_path is root's only): the site file, the
    ledger and the run records the users share. Removed after."""
    import shutil
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp(prefix="sg-roles-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class As:
    """`slurmgov` run as a given user (runuser) on one site file and one shared ledger; the files
    it makes are world-writable (umask 0), so the next user can open the ledger too."""

    def __init__(self, cluster, site_path, home):
        self.cluster, self.site_path, self.home = cluster, site_path, home
        self.ledger_url = f"sqlite:///{home}/ledger.sqlite"

    def __call__(self, user, *args, env=(), check=None):
        import subprocess

        from helpers import python_as

        py, base = python_as(self.cluster, user)
        full = {**base, "SLURMGOV_HOME": str(self.home), "SLURMGOV_SITE": str(self.site_path),
                "SLURMGOV_LEDGER": self.ledger_url}
        cmd = ["runuser", "-u", user, "--", "env", *env, "sh", "-c", 'umask 0; exec "$@"', "sh", py, "-m",
               "slurmgov.interface.cli", *map(str, args)]
        p = subprocess.run(cmd, env=full, cwd="/", capture_output=True, text=True, timeout=120, check=False)
        assert "Traceback" not in p.stderr + p.stdout, p.stderr
        if check is not None:
            assert p.returncode == check, (user, args, p.returncode, p.stderr + p.stdout)
        if p.returncode == 6:  # every refusal: one line
            assert len(p.stderr.strip().splitlines()) == 1 and not p.stdout.strip(), p.stderr + p.stdout
        return p

    def json(self, user, *args, env=()):
        import json

        return json.loads(self(user, *args, "--json", env=env, check=0).stdout)

    def ledger(self):
        from slurmgov.ledger.store import Ledger

        return Ledger.open(self.ledger_url)


def _seed(sg: As) -> None:
    """Root seeds the ledger: an account only the ledger has (no user's), and a hold on chem-ai."""
    sg("root", "budget", "set", "secret", "7", "--reason", "not in the site file", check=0)
    sg("root", "budget", "show", check=0)  # seeds the site's accounts
    (sg.home / "ledger.sqlite").chmod(0o666)  # SQLite gives its -wal and -shm files the same mode
    led = sg.ledger()
    try:
        led.admit("run:held", "chem-ai", "wf", {"s": 1.0}, user="root")
    finally:
        led.disconnect()


def _audit_row(sg: As, **want) -> dict:
    rows = sg.json("root", "audit")
    assert any(all(r[k] == v for k, v in want.items()) for r in rows), rows
    return rows[-1]


SPOOF = ("USER=root", "LOGNAME=root")  # what getpass.getuser() reads first


def test_on_a_local_site_each_role_does_what_it_may_and_is_refused_the_rest_in_one_line(shared_dir):
    site_path = shared_dir / "roles.yaml"
    site_path.write_text(LOCAL_SITE.format(executor="local", nodes="n[1-2]", partition="local"))
    site_path.chmod(0o644)
    sg = As(None, site_path, shared_dir)
    _seed(sg)
    # daemon, an operator: grants and transfers up to 10 GPU-h a change, releases holds, sets no budget
    sg("daemon", "budget", "grant", "bio-ml", "10", "--reason", "deadline", check=0)
    _audit_row(sg, actor="daemon", role="operator", account="bio-ml", action="grant", new_budget_h=210.0)
    p = sg("daemon", "budget", "grant", "bio-ml", "10.5", "--reason", "too much", check=6)
    assert p.stderr.startswith("slurmgov: daemon (operator) may not grant 10.5 GPU-h to account bio-ml: that needs "
                               "an admin (root, or `admins` in site roles), an operator (`operators`, up to 10 GPU-h")
    sg("daemon", "budget", "transfer", "chem-ai", "physics", "5", "--reason", "shared", check=0)
    _audit_row(sg, actor="daemon", role="operator", account="physics", action="transfer from chem-ai")
    assert "daemon (operator) may not set the budget of account bio-ml" in sg(
        "daemon", "budget", "set", "bio-ml", "1", env=SPOOF, check=6).stderr
    # nobody, chem-ai's manager: grants up to 2 GPU-h to chem-ai only; reads; releases no hold
    assert "nobody (manager) may not release a hold" in sg(
        "nobody", "holds", "release", "run:held", "--reason", "x", env=SPOOF, check=6).stderr
    sg("nobody", "budget", "grant", "chem-ai", "2", "--reason", "mine", check=0)
    _audit_row(sg, actor="nobody", role="manager", account="chem-ai", action="grant")
    assert "nobody (manager) may not grant 1 GPU-h to account bio-ml" in sg(
        "nobody", "budget", "grant", "bio-ml", "1", "--reason", "not mine", check=6).stderr
    assert "nobody (manager) may not transfer 1 GPU-h between account chem-ai and account physics" in sg(
        "nobody", "budget", "transfer", "chem-ai", "physics", "1", "--reason", "x", check=6).stderr
    # $USER=root makes nobody no admin: nothing changes
    before = sg.json("root", "budget", "show")
    for args in (("budget", "set", "chem-ai", "9999"), ("budget", "grant", "chem-ai", "9999"),
                 ("budget", "transfer", "physics", "chem-ai", "1"), ("holds", "release", "run:held")):
        assert sg("nobody", *args, "--reason", "spoof", env=SPOOF, check=6).stderr.startswith("slurmgov: nobody (")
    assert sg.json("root", "budget", "show") == before
    # on a site without Slurm a user reads the site file's accounts; the ledger-only one is not theirs
    site_accounts = ["bio-ml", "chem-ai", "physics"]
    for user in ("nobody", "games"):
        assert sorted(b["account"] for b in sg.json(user, "budget", "show", env=SPOOF)) == site_accounts
        assert {r["account"] for r in sg.json(user, "audit", env=SPOOF)} == set(site_accounts)
    assert "games (user) may not read the usage, budget, holds or audit trail of account secret" in sg(
        "games", "budget", "show", "secret", env=SPOOF, check=6).stderr
    assert "secret" in {b["account"] for b in sg.json("daemon", "budget", "show")}  # operators see all
    # the site-wide dashboard shows every account: a manager or a user may not start it
    for user, role in (("nobody", "manager"), ("games", "user")):
        assert f"{user} ({role}) may not read the usage, budget, holds or audit trail of site roles" in sg(
            user, "dashboard", "--port", "0", env=SPOOF, check=6).stderr
    # the operator releases the hold: audited with its role
    sg("daemon", "holds", "release", "run:held", "--reason", "run gone", check=0)
    _audit_row(sg, actor="daemon", role="operator", account="chem-ai", action="release")
    # every change is on the trail under its real user; root made only its own
    rows = sg.json("root", "audit")
    assert [(r["actor"], r["role"], r["account"]) for r in rows if r["actor"] == "root"] == [("root", "admin", "secret")]
    assert {r["actor"] for r in rows} == {"root", "site-config", "daemon", "nobody"}


SLURM_SITE = """site: roles
executor: slurm
gpu_types: {h100: {memory_gb: 80}}
nodes:
  - {names: "gpu[01-04]", gpus: 4, gpu_type: h100}
partitions:
  - {name: gpu, nodes: "gpu[01-04]", default: true}
operators: {users: [nobody], max_grant_gpu_hours: 10}
managers: {max_grant_gpu_hours: 2}
accounts:
  chem-ai: {budget_gpu_hours: 500}
  bio-ml: {budget_gpu_hours: 200}
  physics: {budget_gpu_hours: 50}
"""


@pytest.mark.slurm
def test_on_slurm_associations_and_coordinators_decide_what_a_user_sees_and_may_change(slurm_cluster, shared_dir,
                                                                                       monkeypatch):
    from slurm_harness import LIMITED_ACCOUNT, LIMITED_USER

    c = slurm_cluster
    site_path = shared_dir / "roles.yaml"
    site_path.write_text(SLURM_SITE)
    site_path.chmod(0o644)
    sg = As(c, site_path, shared_dir)
    sg("root", "budget", "show", check=0)  # seeds the site's accounts
    (sg.home / "ledger.sqlite").chmod(0o666)
    led = sg.ledger()
    try:  # a hold and a charge on each of two accounts
        for acct in ("chem-ai", LIMITED_ACCOUNT):
            led.admit(f"slurm:{acct}", acct, "wf", {"s": 1.0}, user="root")
            led.charge(f"c-{acct}", f"slurm:{acct}", "s", 1, 360, 1.0, "h100", None, 1.7e9, "ok")
    finally:
        led.disconnect()
    assert c.run("sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={LIMITED_USER}", "format=account",
                 check=True).stdout.split() == [LIMITED_ACCOUNT]

    # daemon: Slurm associates it with bio-ml only; $USER=root changes nothing
    user = LIMITED_USER
    assert [b["account"] for b in sg.json(user, "budget", "show", env=SPOOF)] == [LIMITED_ACCOUNT]
    assert [r["key"] for r in sg.json(user, "usage", env=SPOOF)] == [LIMITED_ACCOUNT]
    assert [h["account"] for h in sg.json(user, "holds", env=SPOOF)] == [LIMITED_ACCOUNT]
    assert {r["account"] for r in sg.json(user, "audit", env=SPOOF)} == {LIMITED_ACCOUNT}
    assert sg(user, "budget", "show", "chem-ai", env=SPOOF, check=6).stderr.strip() == (
        "slurmgov: daemon (user) may not read the usage, budget, holds or audit trail of account chem-ai: that needs "
        "an admin (root, or `admins` in site roles), an operator, a manager of chem-ai (its `managers` in the site "
        "file, or its Slurm coordinator) or a user Slurm associates with it")
    assert "daemon (user) may not grant 1 GPU-h to account physics" in sg(
        user, "budget", "grant", "physics", "1", "--reason", "x", env=SPOOF, check=6).stderr
    # runs: its own, and those of its accounts; another's run it can neither read nor cancel
    from slurmgov.intent import run_records

    monkeypatch.setenv("SLURMGOV_HOME", str(shared_dir))
    for run_id, owner, acct in (("r-chem", "root", "chem-ai"), ("r-bio", "root", LIMITED_ACCOUNT),
                                ("r-own", user, "physics")):
        run_records.write(run_id, {"run_id": run_id, "status": "running", "user": owner, "account": acct,
                                   "workflow": "wf", **run_records.this_process()})
    assert sorted(r["run_id"] for r in sg.json(user, "runs", env=SPOOF)) == ["r-bio", "r-own"]
    assert "daemon (user) may not read the usage, budget, holds or audit trail of account chem-ai" in sg(
        user, "runs", "show", "r-chem", env=SPOOF, check=6).stderr
    assert sg(user, "runs", "cancel", "r-chem", env=SPOOF, check=6).stderr.startswith(
        "slurmgov: daemon (user) may not cancel run r-chem of user root, account chem-ai: that needs its user or an "
        "admin")
    assert run_records.state(run_records.read("r-chem")) == "running"  # this process: still here

    # Slurm makes daemon a coordinator of physics: it manages physics from then on
    c.run("sacctmgr", "-i", "add", "coordinator", "account=physics", f"names={user}", check=True)
    try:
        assert [b["account"] for b in sg.json(user, "budget", "show")] == [LIMITED_ACCOUNT, "physics"]
        sg(user, "budget", "grant", "physics", "2", "--reason", "coordinator", check=0)
        _audit_row(sg, actor=user, role="manager", account="physics", action="grant", new_budget_h=52.0)
        assert "daemon (manager) may not grant 3 GPU-h to account physics" in sg(
            user, "budget", "grant", "physics", "3", "--reason", "over the managers' limit", check=6).stderr
        assert "daemon (manager) may not grant 1 GPU-h to account chem-ai" in sg(
            user, "budget", "grant", "chem-ai", "1", "--reason", "not its account", check=6).stderr
        # ... and caps physics's users (usercap.set), no other account's
        sg(user, "budget", "user-cap", "set", "physics", "games", "4", "--reason", "coordinator", check=0)
        _audit_row(sg, actor=user, role="manager", account="physics", action="user-cap")
        assert "daemon (manager) may not set user caps of account chem-ai" in sg(
            user, "budget", "user-cap", "set", "chem-ai", "games", "4", check=6).stderr
    finally:
        c.run("sacctmgr", "-i", "remove", "coordinator", "account=physics", f"names={user}", check=True)
    assert [b["account"] for b in sg.json(user, "budget", "show")] == [LIMITED_ACCOUNT]
    assert "daemon (user) may not set user caps of account physics" in sg(
        user, "budget", "user-cap", "remove", "physics", "games", check=6).stderr

    # nobody, an operator: sees every account, grants up to 10 GPU-h a change
    assert [h["account"] for h in sg.json("nobody", "holds", env=SPOOF)] == ["chem-ai", LIMITED_ACCOUNT]
    assert "nobody (operator) may not grant 20 GPU-h to account chem-ai" in sg(
        "nobody", "budget", "grant", "chem-ai", "20", "--reason", "over the limit", env=SPOOF, check=6).stderr
    sg("nobody", "budget", "grant", "chem-ai", "10", "--reason", "within the limit", env=SPOOF, check=0)
    _audit_row(sg, actor="nobody", role="operator", account="chem-ai", action="grant", new_budget_h=510.0)
    assert {b["account"]: b["budget_h"] for b in sg.json("root", "budget", "show")} == {
        "bio-ml": 200.0, "chem-ai": 510.0, "physics": 52.0}


def test_per_user_caps_are_set_by_admins_and_the_accounts_managers_and_read_as_budgets_are(shared_dir):
    site_path = shared_dir / "roles.yaml"
    site_path.write_text(LOCAL_SITE.format(executor="local", nodes="n[1-2]", partition="local"))
    site_path.chmod(0o644)
    sg = As(None, site_path, shared_dir)
    _seed(sg)
    # nobody manages chem-ai (the site file's `managers:`): caps its users, audited as a manager
    sg("nobody", "budget", "user-cap", "set", "chem-ai", "games", "3", "--reason", "intern", env=SPOOF, check=0)
    _audit_row(sg, actor="nobody", role="manager", account="chem-ai", action="user-cap")
    # ... but no other account's, $USER=root or not: one line, exit 6, nothing changed
    for account in ("bio-ml", "secret"):
        p = sg("nobody", "budget", "user-cap", "set", account, "games", "1", env=SPOOF, check=6)
        assert p.stderr.startswith(f"slurmgov: nobody (manager) may not set user caps of account {account}: that "
                                   "needs an admin"), p.stderr
    # a plain user caps nobody, even themself; an operator (grants, releases) caps no one either
    p = sg("games", "budget", "user-cap", "set", "chem-ai", "games", "100", env=SPOOF, check=6)
    assert p.stderr.startswith("slurmgov: games (user) may not set user caps of account chem-ai"), p.stderr
    assert "daemon (operator) may not set user caps of account bio-ml" in sg(
        "daemon", "budget", "user-cap", "remove", "bio-ml", "games", check=6).stderr
    assert "games (user) may not set user caps of account chem-ai" in sg(
        "games", "budget", "user-cap", "remove", "chem-ai", "games", env=SPOOF, check=6).stderr
    # root caps anyone anywhere, audited as admin
    sg("root", "budget", "user-cap", "set", "secret", "nobody", "1", "--reason", "ledger only", check=0)
    _audit_row(sg, actor="root", role="admin", account="secret", action="user-cap")
    caps = {(u["account"], u["user"]): u["cap_h"] for u in sg.json("root", "budget", "user-cap", "show")}
    assert caps == {("chem-ai", "games"): 3.0, ("secret", "nobody"): 1.0}
    # show follows the read filter: a user sees the caps of the accounts they may read, and no other's
    for user in ("nobody", "games"):
        assert [(u["account"], u["user"]) for u in sg.json(user, "budget", "user-cap", "show", env=SPOOF)] == [
            ("chem-ai", "games")]
    assert "games (user) may not read the usage, budget, holds or audit trail of account secret" in sg(
        "games", "budget", "user-cap", "show", "secret", env=SPOOF, check=6).stderr
    assert len(sg.json("daemon", "budget", "user-cap", "show")) == 2  # operators read all
    # the manager removes the cap: the account's budget alone binds games again
    sg("nobody", "budget", "user-cap", "remove", "chem-ai", "games", "--reason", "hired", check=0)
    assert [(u["account"], u["user"]) for u in sg.json("root", "budget", "user-cap", "show")] == [("secret", "nobody")]
    rows = [(r["actor"], r["role"], r["account"]) for r in sg.json("root", "audit") if r["action"] == "user-cap"]
    assert rows == [("nobody", "manager", "chem-ai"), ("root", "admin", "secret"), ("nobody", "manager", "chem-ai")]


def test_an_operators_changes_are_capped_per_day_not_only_per_change(shared_dir):
    """Ten grants of the per-change limit would be ten times the limit: with
    `max_gpu_hours_per_day`, an operator's grants and transfers over any 24 hours stop at it (exit
    6, one line); another operator has its own; an admin has none."""
    site_path = shared_dir / "roles.yaml"
    site_path.write_text(LOCAL_SITE.format(executor="local", nodes="n[1-2]", partition="local").replace(
        "operators: {users: [daemon], max_grant_gpu_hours: 10}",
        "operators: {users: [daemon, games], max_grant_gpu_hours: 10, max_gpu_hours_per_day: 15}"))
    site_path.chmod(0o644)
    sg = As(None, site_path, shared_dir)
    _seed(sg)
    sg("daemon", "budget", "grant", "bio-ml", "10", "--reason", "one", check=0)
    sg("daemon", "budget", "transfer", "chem-ai", "physics", "5", "--reason", "two", check=0)
    p = sg("daemon", "budget", "grant", "bio-ml", "1", "--reason", "three", check=6)
    assert p.stderr.strip() == ("slurmgov: daemon (operator) may not grant 1 GPU-h to account bio-ml: an operator "
                                "grants and transfers at most 15 GPU-h in any 24 hours, and daemon moved 15 GPU-h "
                                "in the last 24")
    sg("daemon", "budget", "transfer", "chem-ai", "bio-ml", "1", "--reason", "four", check=6)
    sg("games", "budget", "grant", "bio-ml", "10", "--reason", "its own", check=0)
    sg("root", "budget", "grant", "bio-ml", "100", "--reason", "admin", check=0)
    [bio] = [b for b in sg.json("root", "budget", "show") if b["account"] == "bio-ml"]
    assert bio["budget_h"] == 200 + 10 + 10 + 100
