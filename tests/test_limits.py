"""`slurmgov limits sync`: remaining budgets pushed into slurmdbd as GrpTRESMins=gres/gpu=N.

Pure tests of the arithmetic (plan_limits), of the sacctmgr calls against a fake sshare/sacctmgr
pair, and (marked slurm) against the real test cluster: Slurm itself makes an over-limit GPU job
pend with AssocGrpGRESMinutes while the submit hook admits everything.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import pytest

from slurmgov.errors import InputError
from slurmgov.ledger.store import Ledger
from slurmgov.slurm import limits, snapshot


@dataclass(frozen=True)
class B:  # the two fields plan_limits reads from a ledger Balance
    account: str
    available_h: float


# ---- plan_limits: conversion, rounding, floor ---------------------------------------------

def test_cap_is_usage_plus_remaining_minutes():
    plan = limits.plan_limits([B("a", 1.0), B("b", 0.1)], {"a": 0, "b": 1000})
    assert plan == {"a": 60, "b": 1006}


def test_weighted_hours_divide_by_the_dearest_weight():
    bal = [B("a", 1.0), B("b", 3.0)]
    assert limits.plan_limits(bal, {"a": 5, "b": 5}, weight=2.0) == {"a": 35, "b": 95}
    assert limits.plan_limits(bal, {"a": 0, "b": 0}, weight=1.5) == {"a": 40, "b": 120}
    # a weight per account; an account without one gets the dearest given
    assert limits.plan_limits(bal, {"a": 0, "b": 0}, weight={"a": 4.0, "x": 6.0}) == {"a": 15, "b": 30}


def test_rounds_down_and_exactly():
    assert limits.plan_limits([B("a", 59.9 / 3600)], {"a": 7}) == {"a": 7}  # 0.998 GPU-min -> 0
    assert limits.plan_limits([B("a", 1.0)], {"a": 0}, weight=7) == {"a": 8}  # 8.57 -> 8
    # decimal amounts whose binary float times 60 lands just under the integer
    for h, m in ((0.7, 42), (0.29, 17), (1.15, 69), (0.57, 34)):
        assert limits.plan_limits([B("a", h)], {"a": 0}) == {"a": m}
    assert limits.plan_limits([B("a", 1.1)], {"a": 0}, weight=1.1) == {"a": 60}


def test_exhausted_or_overdrawn_budget_caps_at_usage():
    plan = limits.plan_limits([B("zero", 0.0), B("over", -2.5), B("dust", 1e-9)],
                              {"zero": 12, "over": 30, "dust": 0})
    assert plan == {"zero": 12, "over": 30, "dust": 0}


def test_accounts_slurm_does_not_know_are_left_out():
    assert limits.plan_limits([B("a", 1.0), B("ghost", 1.0)], {"a": 0}) == {"a": 60}


@pytest.mark.parametrize("usage", [-1, 1.5, "3", True])
def test_bad_usage_is_refused(usage):
    with pytest.raises(InputError):
        limits.plan_limits([B("a", 1.0)], {"a": usage})


@pytest.mark.parametrize("w", [0, -1, float("nan"), "2"])
def test_bad_weight_is_refused(w):
    with pytest.raises(InputError):
        limits.plan_limits([B("a", 1.0)], {"a": 0}, weight=w)


# ---- sync_limits against a fake sshare + sacctmgr ------------------------------------------

FAKE = r'''
import json, os, sys
state_path = os.environ["FAKE_SLURM_STATE"]
st = json.load(open(state_path))
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(state_path + ".log", "a") as log:
    log.write(json.dumps([tool] + args) + "\n")
def arg(prefix):
    return next(a.split("=", 1)[1] for a in args if a.startswith(prefix))
if tool == "sshare":
    for a in args[args.index("-A") + 1].split(","):
        if a in st["usage"]:
            print(f"c1|{a}||cpu=3,mem=0,gres/gpu={st['usage'][a]}")
            print(f"c1| {a}|root|cpu=3,mem=0,gres/gpu={st['usage'][a]}")
elif args[:3] == ["-n", "-P", "show"]:
    for a in arg("account=").split(","):
        if a in st["usage"]:
            lim = st["limits"].get(a)
            print(f"{a}||" + ("" if lim is None else f"cpu=100,gres/gpu={lim}"))
            print(f"{a}|root|")
elif args[:3] == ["-i", "modify", "account"]:
    val = int(arg("GrpTRESMins=gres/gpu=").rsplit("=", 1)[1])
    for a in arg("name=").split(","):
        st["limits"][a] = None if val < 0 else val
    json.dump(st, open(state_path, "w"))
    print(" Modified account associations...")
else:
    sys.exit("unexpected call")
'''


class FakeSlurm:
    def __init__(self, tmp_path, usage, limits_=None):
        self.state = tmp_path / "state.json"
        self.state.write_text(json.dumps({"usage": usage, "limits": limits_ or {}}))
        for tool in ("sshare", "sacctmgr"):
            p = tmp_path / tool
            p.write_text(f"#!{sys.executable}\n{FAKE}")
            p.chmod(0o755)
        self.sshare, self.sacctmgr = str(tmp_path / "sshare"), str(tmp_path / "sacctmgr")
        self.env = {"FAKE_SLURM_STATE": str(self.state), "PATH": "/usr/bin:/bin"}

    def calls(self, kind: str | None = None) -> list[list[str]]:
        log = self.state.with_name(self.state.name + ".log")
        rows = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        return [r for r in rows if kind is None or kind in r]

    def limits(self) -> dict:
        return json.loads(self.state.read_text())["limits"]

    def sync(self, ledger, **kw):
        return limits.sync_limits(ledger, env=self.env, sacctmgr=self.sacctmgr, sshare=self.sshare, **kw)


@pytest.fixture
def ledger(tmp_path):
    lg = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite")
    yield lg
    lg.disconnect()


def test_equal_caps_share_one_call_and_unchanged_ones_none(tmp_path, ledger):
    for a, h in (("a", 1.0), ("b", 0.5), ("c", 0.25), ("d", 2.0)):
        ledger.set_budget(a, h, "none", actor="test")
    # a and b land on the same cap (60); c's cap is already right; d is new
    fake = FakeSlurm(tmp_path, usage={"a": 0, "b": 30, "c": 5, "d": 0}, limits_={"c": 20, "d": 7})
    res = fake.sync(ledger)
    assert [(r.account, r.old, r.new, r.usage_min, r.remaining_min, r.status) for r in res] == [
        ("a", None, 60, 0, 60, "set"), ("b", None, 60, 30, 30, "set"),
        ("c", 20, 20, 5, 15, "unchanged"), ("d", 7, 120, 0, 120, "set")]
    assert [r.changed for r in res] == [True, True, False, True]
    mods = fake.calls("modify")
    assert mods == [
        ["sacctmgr", "-i", "modify", "account", "where", "name=a,b", "cluster=c1", "set", "GrpTRESMins=gres/gpu=60"],
        ["sacctmgr", "-i", "modify", "account", "where", "name=d", "cluster=c1", "set", "GrpTRESMins=gres/gpu=120"]]
    assert fake.limits() == {"a": 60, "b": 60, "c": 20, "d": 120}
    # one read of each kind, whatever the number of accounts
    assert len(fake.calls("sshare")) == 1 and len(fake.calls("show")) == 1
    json.dumps([r.as_dict() for r in res])  # printable as JSON by the CLI
    # a second pass finds nothing to change and modifies nothing
    assert {r.status for r in fake.sync(ledger)} == {"unchanged"}
    assert len(fake.calls("modify")) == 2


def test_dry_run_reads_but_never_modifies(tmp_path, ledger):
    ledger.set_budget("a", 1.0, "none", actor="test")
    fake = FakeSlurm(tmp_path, usage={"a": 3})
    (r,) = fake.sync(ledger, dry_run=True)
    assert (r.old, r.new, r.status) == (None, 63, "would set")
    assert fake.calls("modify") == [] and fake.limits() == {}


def test_weight_and_unknown_accounts(tmp_path, ledger):
    ledger.set_budget("a", 1.0, "none", actor="test")
    ledger.set_budget("ghost", 1.0, "none", actor="test")
    fake = FakeSlurm(tmp_path, usage={"a": 0})
    res = {r.account: r for r in fake.sync(ledger, weight=4.0)}
    assert res["a"].new == 15 and res["ghost"].status == "not in slurm" and res["ghost"].new is None
    assert [c[5] for c in fake.calls("modify")] == ["name=a"]


class FakeLedger:
    def __init__(self, *names):
        self.names = names

    def balances(self, now=None):
        return [B(n, 1.0) for n in self.names]


@pytest.mark.parametrize("bad", ["-a", "a b", "a,b", "a;rm", "", "x" * 65, "a=b", "ä", "ok\n"])
def test_hostile_names_are_refused_before_any_call(tmp_path, bad):
    fake = FakeSlurm(tmp_path, usage={"ok": 0})
    with pytest.raises(InputError) as e:
        fake.sync(FakeLedger("ok", bad))
    assert "\n" not in str(e.value) and "must match" in str(e.value)
    assert fake.calls() == []


# ---- against the real Slurm 22.05 test cluster ------------------------------------------------

def _gpu_limit_and_usage(c, account: str) -> tuple[str, str]:
    """slurmctld's own view: ``GrpTRESMins=...gres/gpu=LIMIT(USAGE)`` of the account's association."""
    out = c.run("scontrol", "-o", "show", "assoc_mgr", f"accounts={account}", "flags=assoc", check=True).stdout
    for line in out.splitlines():
        if f" Account={account} UserName= " in line:
            tres = next(t for t in line.split() if t.startswith("GrpTRESMins="))
            # One LIMIT(USAGE) per TRES, comma-separated (22.05: gres/gpu last; 24.11 may list more after it).
            gpu = [i for i in tres.split("=", 1)[1].split(",") if i.startswith("gres/gpu=")]
            assert len(gpu) == 1, tres
            lim, usage = gpu[0].split("=", 1)[1].rstrip(")").split("(")
            return lim, usage
    raise AssertionError(f"no association for {account} in {out!r}")


def _reason(c, job: str, want: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        r = c.run("squeue", "-h", "-o", "%r", "-j", job).stdout.strip()
        if r == want or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


@pytest.fixture
def native(slurm_cluster, tmp_path):
    """The cluster with a hook that admits everything; every account's GPU cap cleared afterwards."""
    c = slurm_cluster
    c.cancel_all()
    c.hook_conf_path.unlink(missing_ok=True)
    saved = c.snapshot_path.read_bytes() if c.snapshot_path.exists() else None
    snapshot.write(c.snapshot_path, snapshot.Snapshot(
        serial=snapshot.next_serial(None), written=int(time.time()), max_age_s=3600, fail_policy="closed",
        default_time_min=60, max_gpus_per_node=4, default_weight=1.0, weights={"h100": 1.0},
        available_gpu_s={a: 1e12 for a in c.accounts}))
    lg = Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite")
    try:
        yield c, lg
    finally:
        lg.disconnect()
        c.cancel_all()
        limits.clear_limits(list(c.accounts), env=c.env)
        if saved is None:
            c.snapshot_path.unlink(missing_ok=True)
        else:
            c.snapshot_path.write_bytes(saved)
        left = limits.current_limits(list(c.accounts), env=c.env)
        assert left == {a: None for a in c.accounts}, left


@pytest.mark.slurm
def test_sync_sets_grptresmins_in_slurmdbd(native):
    c, lg = native
    for a, h in (("chem-ai", 2.0), ("bio-ml", 0.1), ("physics", 0.0)):
        lg.set_budget(a, h, "none", actor="test")
    cluster, usage = limits.slurm_usage(list(c.accounts), env=c.env)
    assert cluster == c.cluster_name and set(usage) == set(c.accounts)
    t0 = time.monotonic()
    res = limits.sync_limits(lg, env=c.env, weight=2.0)  # h100 priced at 2: 2.0 h -> 60 GPU-min
    first_s = time.monotonic() - t0
    want = {"chem-ai": usage["chem-ai"] + 60, "bio-ml": usage["bio-ml"] + 3, "physics": usage["physics"]}
    assert {r.account: (r.old, r.new, r.usage_min, r.status) for r in res} == {
        a: (None, want[a], usage[a], "set") for a in want}
    assert limits.current_limits(list(c.accounts), env=c.env) == want
    shown = c.run("sacctmgr", "-n", "-P", "show", "assoc", "where", "account=bio-ml",
                  "format=account,user,grptresmins", check=True).stdout.splitlines()
    assert f"bio-ml||gres/gpu={want['bio-ml']}" in shown
    # slurmctld has it too (pushed by slurmdbd), with the same usage
    assert _gpu_limit_and_usage(c, "bio-ml") == (str(want["bio-ml"]), str(usage["bio-ml"]))
    # nothing changed: no sacctmgr modify, so a second pass costs two reads
    t0 = time.monotonic()
    assert {r.status for r in limits.sync_limits(lg, env=c.env, weight=2.0)} == {"unchanged"}
    second_s = time.monotonic() - t0
    assert second_s < first_s
    # a dry run after a budget change says what it would do and does nothing
    lg.set_budget("physics", 0.5, "none", actor="test")
    res = {r.account: r for r in limits.sync_limits(lg, env=c.env, weight=2.0, dry_run=True)}
    assert res["physics"].status == "would set" and res["physics"].new == usage["physics"] + 15
    assert limits.current_limits(["physics"], env=c.env) == {"physics": want["physics"]}


@pytest.mark.slurm
def test_slurm_itself_holds_over_budget_gpu_jobs(native):
    c, lg = native
    acct = "bio-ml"
    lg.set_budget(acct, 0.1, "none", actor="test")  # 6 GPU-minutes left; the hook would admit 1e12
    (r,) = [x for x in limits.sync_limits(lg, env=c.env) if x.account == acct]
    assert r.remaining_min == 6 and r.new == r.usage_min + 6
    over = c.job_id(c.sbatch(["-A", acct, "--gres=gpu:h100:2", "-t", "5"]))  # 10 GPU-min: accepted, pends
    assert _reason(c, over, "AssocGrpGRESMinutes") == "AssocGrpGRESMinutes"
    assert c.job_state(over) == "PENDING"
    within = c.job_id(c.sbatch(["-A", acct, "--gres=gpu:h100:1", "-t", "5"]))  # 5 GPU-min: runs
    assert c.wait_job(within, ("COMPLETED",), timeout=20) == "COMPLETED"
    assert c.job_state(over) == "PENDING"

    # budget exhausted: the cap drops to the usage and no GPU job of the account starts; CPU jobs do
    lg.set_budget(acct, 0.0, "none", actor="test")
    (r,) = [x for x in limits.sync_limits(lg, env=c.env) if x.account == acct]
    assert r.new == r.usage_min and r.status == "set"
    tiny = c.job_id(c.sbatch(["-A", acct, "--gres=gpu:h100:1", "-t", "1"]))
    cpu = c.job_id(c.sbatch(["-A", acct, "-t", "1"]))
    other = c.job_id(c.sbatch(["-A", "physics", "--gres=gpu:h100:1", "-t", "5"]))  # not capped
    assert c.wait_job(cpu, ("COMPLETED",), timeout=20) == "COMPLETED"
    assert c.wait_job(other, ("COMPLETED",), timeout=20) == "COMPLETED"
    assert _reason(c, tiny, "AssocGrpGRESMinutes") == "AssocGrpGRESMinutes"
    assert c.job_state(tiny) == "PENDING" and c.job_state(over) == "PENDING"
