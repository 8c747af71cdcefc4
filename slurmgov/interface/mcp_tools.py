"""What an agent may ask of slurmgov through the MCP server, governed as the CLI governs a user.

`mcp_server.py` publishes these as MCP tools and resources; this module knows nothing of MCP.
Every price is the planner's (`planner.plan`), every admission is `slurmgov run`'s own (the run
is a `slurmgov run` process, so its hold, lease, charges and release are those of the CLI), and
every cancellation is `slurmgov runs cancel`'s (`runs.stop_run`). The caller is the user the
server runs as; it may act only for the accounts Slurm associates it with (`sacctmgr`), or on
a local site, the accounts its site file lists. Every failure is a SlurmgovError of one line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from slurmgov.errors import (
    BudgetRefused,
    InfeasibleError,
    InputError,
    LedgerError,
    PermissionDenied,
    SlurmgovError,
)
from slurmgov.intent import alternatives, jobspec, planner, run_records
from slurmgov.intent.jobspec import Workflow
from slurmgov.interface.commands.runs import run_summary, stop_run
from slurmgov.ledger.seed import ensure_budget
from slurmgov.ledger.store import Ledger, per_1k_tokens
from slurmgov.policy.authz import whoami
from slurmgov.policy.forecast import forecasts
from slurmgov.site import model as site_mod
from slurmgov.site import yamlfile
from slurmgov.site.names import is_name
from slurmgov.slurm.commands import user_accounts

log = logging.getLogger("slurmgov.mcp")

MAX_JOBSPEC_BYTES = 256 * 1024  # an agent's jobspec: a workflow, not a data set
MAX_STEPS = 1000
MAX_REFUSAL_STEPS = 200  # a larger infeasible jobspec gets its first refusal only
MAX_VALUES = 200_000  # values in the jobspec, aliases expanded
ADMIT_WAIT_S = 120  # how long submit_workflow waits for its run to be admitted or refused
CANCEL_WAIT_S = 60
RECENT_RUNS = 20
ACCOUNTS_TTL_S = 60  # how long Slurm's answer on a user's associations is taken as still true
_EXIT_ERRORS: dict[int, type[SlurmgovError]] = {2: InputError, 3: InfeasibleError, 4: BudgetRefused, 5: LedgerError,
                                               6: PermissionDenied}


def read_jobspec(spec: Any, name: str = "jobspec") -> tuple[Workflow, dict]:
    """A jobspec given as YAML text or as an object, checked as `slurmgov plan` checks a file,
    with limits on its size first (an agent's input is not trusted)."""
    if isinstance(spec, dict):
        try:
            text = json.dumps(spec)  # JSON is YAML: one reader, one set of error messages
        except (TypeError, ValueError) as e:
            raise InputError(f"{name}: not a JSON object: {e}") from None
    elif isinstance(spec, str):
        text = spec
    else:
        raise InputError(f"{name}: give the jobspec as YAML text or as an object, not {type(spec).__name__}")
    size = len(text.encode("utf-8", "replace"))
    if size > MAX_JOBSPEC_BYTES:
        raise InputError(f"{name}: {size:,} bytes; a jobspec given here may have at most {MAX_JOBSPEC_BYTES:,}")
    doc = yamlfile.load_text(text, name)
    if doc.values > MAX_VALUES:  # tighter than the loader's limit on what aliases add
        raise InputError(f"{name}: more than {MAX_VALUES:,} values once its YAML aliases are expanded")
    steps = doc.data.get("steps") if isinstance(doc.data, dict) else None
    if isinstance(steps, list) and len(steps) > MAX_STEPS:
        raise InputError(f"{name}: steps: {len(steps):,} steps; a jobspec given here may have at most {MAX_STEPS:,}")
    wf = jobspec.parse(doc)
    return wf, doc.data


def _refusal(exc: InfeasibleError) -> dict:
    text = str(exc)
    step = re.search(r"step '([^']+)'", text)
    where = re.match(r"^([^:\s]+:\d+): ", text)
    return {"message": text, "step": step.group(1) if step else None, "where": where.group(1) if where else None}


class Desk:
    """The governed actions for one user on one site and ledger (shared by the server's threads)."""

    def __init__(self, site: site_mod.Site, site_path: str, ledger: Ledger, user: str | None = None):
        self.site = site
        self.site_path = site_path
        self.ledger = ledger
        self.user = user or whoami()
        self._children: dict[str, subprocess.Popen] = {}
        self._accounts: tuple[float, list[str]] | None = None
        self._lock = threading.Lock()

    # ---- who may act for which account ----------------------------------------------------

    def accounts(self) -> list[str]:
        """The accounts this user may act for: Slurm's associations (asked again after
        ACCOUNTS_TTL_S, not on every call), or the local site's list."""
        if self.site.executor != "slurm":
            return sorted(self.site.accounts)
        with self._lock:
            cached = self._accounts
        if cached is None or time.monotonic() - cached[0] > ACCOUNTS_TTL_S:
            cached = (time.monotonic(), sorted(user_accounts(self.user)))
            with self._lock:
                self._accounts = cached
        return list(cached[1])

    def authorize(self, account: Any, field: str = "account") -> str:
        if not is_name(account):
            raise InputError(f"{field}: {str(account)[:80]!r} is not an account name (letters, digits, . _ -)")
        if account not in self.accounts():
            how = "Slurm associates" if self.site.executor == "slurm" else f"site {self.site.site} lists"
            raise PermissionDenied(f"{field}: user {self.user} may not act for account {account}: not one {how} "
                                   f"for this user")
        return account

    def _balance(self, account: str):
        self.ledger.release_lapsed()  # as every CLI command that opens the ledger does
        ensure_budget(self.ledger, self.site, account)
        return self.ledger.balance(account)

    def _left(self, account: str, b) -> float:
        """What this user may still hold in ``account``: its balance, or less under their cap there."""
        u = self.ledger.user_balance(account, self.user)
        return b.available_h if u is None else min(b.available_h, u.available_h)

    # ---- asking ----------------------------------------------------------------------------

    def budget_status(self, account: str) -> dict:
        account = self.authorize(account)
        b = self._balance(account)
        now = time.time()
        f = next(x for x in forecasts(self.ledger, now, balances=[b]) if x.account == account)
        u = self.ledger.user_balance(account, self.user)
        cap = None if u is None else {"user": u.user, "cap_gpu_hours": u.cap_h, "charged_gpu_hours": u.charged_h,
                                      "held_gpu_hours": u.held_h, "available_gpu_hours": u.available_h}
        return {"account": account, "period": b.period, "budget_gpu_hours": b.budget_h,
                "carried_gpu_hours": b.carried_h, "charged_gpu_hours": b.charged_h, "held_gpu_hours": b.held_h,
                "available_gpu_hours": b.available_h, "burn_gpu_hours_per_day": f.burn_h_per_day,
                "runs_out": f.runs_out, "used_pct": f.used_pct, "alert": f.alert, "expires": b.expires,
                "user_cap": cap}

    def plan_workflow(self, spec: Any) -> dict:
        wf, data = read_jobspec(spec)
        self.authorize(wf.account, "jobspec: account")
        try:
            p = planner.plan(wf, self.site)
        except InfeasibleError as exc:
            return {"workflow": wf.workflow, "account": wf.account, "feasible": False,
                    "refusals": self._refusals(wf, data, exc)}
        left = self._left(wf.account, self._balance(wf.account))
        return {"feasible": True, "refusals": [], "fits_budget": p.cost_h <= left + 1e-9,
                "available_gpu_hours": left, "shortfall_gpu_hours": max(0.0, p.cost_h - left),
                **p.to_dict()}

    def _refusals(self, wf: Workflow, data: dict, first: InfeasibleError) -> list[dict]:
        """The planner stops at the first step it cannot place; each other step is planned alone
        (without its dependencies) for its own refusal, so the agent sees every one at once."""
        found = [_refusal(first)]
        if len(wf.steps) > MAX_REFUSAL_STEPS:
            return found
        for i, st in enumerate(data.get("steps") or []):
            sid = wf.steps[i].id
            if any(r["step"] == sid for r in found) or not isinstance(st, dict):
                continue
            try:
                alternatives.price({**data, "steps": [{**st, "after": []}]}, self.site)
            except InfeasibleError as exc:
                where = wf.where_step(sid)
                text = re.sub(r"^\S+:\d+: ", "", str(exc))
                found.append({"message": f"{where}: {text}" if where else text, "step": sid,
                              "where": where})
            except SlurmgovError:
                continue
        return found

    def suggest_cheaper(self, spec: Any, account: str | None = None) -> dict:
        wf, data = read_jobspec(spec)
        acct = self.authorize(account if account is not None else wf.account)
        if acct != wf.account:
            self.authorize(wf.account, "jobspec: account")
            data = {**data, "account": acct}
            wf, data = read_jobspec(data)
        base = planner.plan(wf, self.site)
        left = self._left(acct, self._balance(acct))
        head = {"account": acct, "workflow": wf.workflow, "worst_case_gpu_hours": base.cost_h,
                "available_gpu_hours": left}
        if base.cost_h <= left + 1e-9:
            return {**head, "fits": True, "alternatives": [], "nothing_fits": None}
        found, cheapest = alternatives.cheaper(data, self.site, base, left)
        alts = [{"kind": a.kind, "gives_up": a.gives_up, "worst_case_gpu_hours": a.cost_h,
                 "left_after_gpu_hours": left - a.cost_h, "jobspec": a.data} for a in found]
        nothing = None
        if not alts:
            nothing = (f"nothing fits: account {acct} has {left:.3f} GPU-h left and workflow {wf.workflow} "
                       f"needs up to {base.cost_h:.3f} (short by {base.cost_h - left:.3f})")
            if cheapest is not None:
                nothing += (f"; the cheapest change found still needs {cheapest:.3f} "
                            f"(short by {max(0.0, cheapest - left):.3f})")
        return {**head, "fits": False, "shortfall_gpu_hours": base.cost_h - left, "alternatives": alts,
                "nothing_fits": nothing}

    # ---- acting ----------------------------------------------------------------------------

    def submit_workflow(self, spec: Any) -> dict:
        """Start the workflow as `slurmgov run` in the background: it is admitted against the
        budget with the CLI's own hold, or refused. Returns once one or the other happened."""
        wf, data = read_jobspec(spec)
        self.authorize(wf.account, "jobspec: account")
        p = planner.plan(wf, self.site)  # refusals before anything starts (the run plans the same)
        run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        where = site_mod.slurmgov_home() / "agent"
        where.mkdir(parents=True, exist_ok=True)
        path = where / f"{run_id}.yaml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data, indent=1, default=str))
        logf = open(where / f"{run_id}.log", "wb")
        cmd = [sys.executable, "-m", "slurmgov.interface.cli", "run", str(path), "--json", "--run-id", run_id,
               "--site", self.site_path]
        log.info("submit %s: workflow %s account %s, worst case %.3f GPU-h", run_id, wf.workflow, wf.account, p.cost_h)
        with logf:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # the server's Ctrl-C is not the run's
        with self._lock:
            self._children[run_id] = proc
        deadline = time.monotonic() + ADMIT_WAIT_S
        while time.monotonic() < deadline:
            if run_records.record_path(run_id).exists():
                hold = self.ledger.find_hold(f"run:{run_id}")
                return {"run_id": run_id, "state": "running", "workflow": wf.workflow, "account": wf.account,
                        "hold_key": hold.hold_key if hold else None,
                        "held_gpu_hours": hold.amount_h if hold else None, "worst_case_gpu_hours": p.cost_h}
            rc = proc.poll()
            if rc is not None:  # refused before it was admitted: nothing of it is kept
                exc = self._failed(run_id, rc, where / f"{run_id}.log")
                for leftover in (path, where / f"{run_id}.log"):
                    leftover.unlink(missing_ok=True)
                raise exc
            time.sleep(0.1)
        raise SlurmgovError(f"run {run_id} was neither admitted nor refused in {ADMIT_WAIT_S} s; "
                            f"see {where / f'{run_id}.log'}")

    def _failed(self, run_id: str, rc: int, logfile: Path) -> SlurmgovError:
        try:
            lines = [ln for ln in logfile.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        last = lines[-1].strip() if lines else f"exit status {rc}"
        last = last.removeprefix("slurmgov: ")
        if rc == 4:  # refused by the budget: nothing was held, nothing ran
            last += "; nothing was held or run (suggest_cheaper lists what fits)"
        return _EXIT_ERRORS.get(rc, SlurmgovError)(last)

    def _reap(self) -> None:
        with self._lock:
            for rid, proc in list(self._children.items()):
                if proc.poll() is not None:
                    del self._children[rid]

    def _run(self, run_id: Any) -> dict:
        """The run's record, if the caller may see it: a run of theirs, for an account of theirs."""
        if not isinstance(run_id, str):
            raise InputError("run_id: give the run id submit_workflow returned")
        self._reap()
        doc = run_records.read(run_id)
        self.authorize(doc.get("account"), "run's account")
        if doc.get("user") != self.user:
            raise PermissionDenied(f"run {run_id} is user {doc.get('user')}'s, not {self.user}'s")
        return doc

    def run_status(self, run_id: str) -> dict:
        doc = self._run(run_id)
        s = run_summary(doc, self.ledger)
        charges = self.ledger.charges(doc["hold_key"]) if doc.get("hold_key") else []
        steps: dict[str, dict] = {}
        for sid, st in (doc.get("steps") or {}).items():
            steps[sid] = {"status": st.get("status"), "attempts": len(st.get("attempts") or []),
                          "reason": st.get("reason")}
        for c in charges:  # while it runs, what each step was charged so far
            if c["step"] != "(idle)":
                steps.setdefault(c["step"], {"status": "charged so far", "attempts": 0, "reason": None})
        return {"run_id": run_id, "state": s["state"], "workflow": s["workflow"], "account": s["account"],
                "started": s["started"], "ended": s["ended"], "hold_key": s["hold_key"], "hold_state": s["hold_state"],
                "worst_case_gpu_hours": s["worst_case_h"], "held_gpu_hours": s["held_h"],
                "charged_gpu_hours": s["charged_h"], "steps": steps}

    def explain_cost(self, run_id: str) -> dict:
        doc = self._run(run_id)
        s = run_summary(doc, self.ledger)
        if doc.get("hold_key"):  # a local run: its charges, an attempt each, idle time as step (idle)
            charges = self.ledger.charges(doc["hold_key"])
        else:  # on Slurm the jobs are charged; the run's split of their cost is its attributions
            charges = [{**a, "step": a["step"] or "(idle)", "charged_h": a["cost_h"]}
                       for a in self.ledger.attributions(run_id)]
        plan_steps = {ps["id"]: ps for ps in (doc.get("plan") or {}).get("steps", [])}
        worst = (doc.get("plan") or {}).get("worst_case_gpu_hours") or s["worst_case_h"] or 0.0
        allocs = {aid: (a.get("cost") or {}) for aid, a in (doc.get("allocations") or {}).items()}
        per: dict[str, dict] = {}
        idle = {"gpu_seconds": 0.0, "charged_gpu_hours": 0.0}
        for c in charges:
            if c["step"] == "(idle)":
                idle["gpu_seconds"] += c["gpu_seconds"]
                idle["charged_gpu_hours"] += c["charged_h"]
                continue
            row = per.setdefault(c["step"], {"gpu_seconds": 0.0, "charged_gpu_hours": 0.0, "attempts": 0,
                                             "prompt_tokens": None, "completion_tokens": None})
            row["gpu_seconds"] += c["gpu_seconds"]
            row["charged_gpu_hours"] += c["charged_h"]
            row["attempts"] += 1
            for k in ("prompt_tokens", "completion_tokens"):
                if c[k] is not None:
                    row[k] = (row[k] or 0) + c[k]
        for sid, ps in plan_steps.items():
            row = per.setdefault(sid, {"gpu_seconds": 0.0, "charged_gpu_hours": 0.0, "attempts": 0,
                                       "prompt_tokens": None, "completion_tokens": None})
            rec = (doc.get("steps") or {}).get(sid) or {}
            a = allocs.get(ps.get("alloc") or "", {})
            held = a.get("held_gpu_s") or 0.0
            tokens = None if row["prompt_tokens"] is None and row["completion_tokens"] is None else \
                (row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0)
            row.update({
                "status": rec.get("status"), "alloc": ps.get("alloc"), "gpus": ps.get("gpus"),
                "hold_share_gpu_hours": ps.get("share_h"),
                "share_of_hold": (ps.get("share_h") or 0.0) / worst if worst else None,
                "kv_block_seconds": _kv_block_seconds(rec),
                "tokens": tokens, "gpu_s_per_1k_tokens": per_1k_tokens(row["gpu_seconds"], tokens),
                "alloc_idle_share": (a.get("idle_gpu_s") or 0.0) / held if held else None,
            })
        charged = sum(c["charged_h"] for c in charges)
        return {"run_id": run_id, "state": s["state"], "workflow": s["workflow"], "account": s["account"],
                "worst_case_gpu_hours": worst, "charged_gpu_hours": charged,
                "released_gpu_hours": max(0.0, worst - charged) if s["hold_state"] not in (None, "open") else None,
                "idle": {**idle, "share_of_charge": idle["charged_gpu_hours"] / charged if charged else None},
                "steps": per,
                "summary": (f"run {run_id} ({s['state']}): held up to {worst:.3f} GPU-h, charged {charged:.5f} "
                            f"GPU-h, of which {idle['charged_gpu_hours']:.5f} for allocated GPUs no step used")}

    def cancel_run(self, run_id: str) -> dict:
        self._run(run_id)
        message = stop_run(self.site, self.ledger, run_id, CANCEL_WAIT_S)
        self._reap()
        status = self.run_status(run_id)
        return {"message": message, **status}

    def recent_runs(self, account: str) -> list[dict]:
        account = self.authorize(account)
        docs = [d for d in run_records.read_all(limit=200) if d.get("account") == account
                and d.get("user") == self.user][:RECENT_RUNS]
        return [run_summary(d, self.ledger) for d in docs]


def _kv_block_seconds(rec: dict) -> float | None:
    """KV block-seconds a step reported (a step that meters its KV cache, as the shared-prefix demo)."""
    total, seen = 0.0, False
    for att in rec.get("attempts") or []:
        out = att.get("output")
        if isinstance(out, dict) and isinstance(out.get("kv_block_seconds"), (int, float)):
            total += float(out["kv_block_seconds"])
            seen = True
    return total if seen else None

