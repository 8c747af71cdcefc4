"""Slurm behind a small interface: its command-line tools with JSON output (22.05+).

pyslurm cannot be built against Slurm 22.05 here, so the CLI is the tested backend.
Commands run with an argument list (never a shell) and a bounded time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime

import hostlist

from slurmgov.errors import SlurmgovError
from slurmgov.site.units import slurm_seconds
from slurmgov.slurm.gpu_request import (
    INFINITE,
    NO_VAL,
    UNLIMITED,
    HookPartition,
    HookView,
)

TOKEN = re.compile(r"slurmgov:hold=([A-Za-z0-9_.:-]+)")
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
         "OUT_OF_MEMORY"}


def job_key(job_id: str) -> str:
    """The hold key of a job without a token (one the hook never held, or held before it ran)."""
    return f"job-{job_id}"


def _keys(token: str | None, job_id: str, array_job_id: str | None) -> tuple[str, ...]:
    """A job's hold keys: its token; without one, job-<id> and its array's job-<array id>."""
    if token:
        return (token,)
    if array_job_id and array_job_id != job_id:
        return job_key(job_id), job_key(array_job_id)
    return (job_key(job_id),)


def final_state(state: str) -> bool:
    """Whether a sacct or squeue state is one a job never leaves (its first word: "CANCELLED by 0")."""
    return (state.split() or [""])[0] in FINAL


@dataclass(frozen=True)
class Job:
    """One row of sacct."""

    job_id: str
    account: str
    state: str
    token: str | None
    gpus: int  # allocated
    start: int
    end: int
    elapsed: int
    array_job_id: str | None = None
    user: str | None = None  # whose job it is (sacct's user name)
    cpus: int = 0  # allocated (sacct's AllocCPUS: the cpu count of its allocated TRES)

    @property
    def final(self) -> bool:
        return final_state(self.state)

    @property
    def keys(self) -> tuple[str, ...]:
        return _keys(self.token, self.job_id, self.array_job_id)


@dataclass(frozen=True)
class Queued:
    """A job slurmctld still has (squeue lists finished ones too, for MinJobAge)."""

    job_id: str
    token: str | None
    state: str
    restart_cnt: int = 0  # how often it was requeued
    array_job_id: str | None = None
    account: str = ""
    view: HookView | None = None  # its request as the hook prices it (None: an array, priced per task)

    @property
    def key(self) -> str:
        return self.token or job_key(self.job_id)

    @property
    def keys(self) -> tuple[str, ...]:
        return _keys(self.token, self.job_id, self.array_job_id)

    @property
    def live(self) -> bool:
        """Pending, running, or on its way back (requeued): it can still use GPUs."""
        return not final_state(self.state)


def run(cmd: list[str], env=None, timeout: float = 60, ok_codes=(0,)) -> str:
    """Run one Slurm command (argument list, no shell); a failure is one SlurmgovError line."""
    what = " ".join([os.path.basename(cmd[0]), *cmd[1:3]])
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except FileNotFoundError:
        raise SlurmgovError(f"{cmd[0]}: not found; is this a Slurm login node?") from None
    except subprocess.TimeoutExpired:
        raise SlurmgovError(f"{what}: no answer in {timeout:g} s") from None
    if p.returncode not in ok_codes:
        last = ((p.stderr.strip() or p.stdout.strip()).splitlines() or ["(no message)"])[-1].strip()
        raise SlurmgovError(f"{what} failed (rc {p.returncode}): {last}")
    return p.stdout


def ping(env=None, timeout: float = 15) -> None:
    """Raise one SlurmgovError line unless slurmctld answers (`scontrol ping`): what a run checks
    before it admits anything, rather than have every step fail on the first submission."""
    out = run(["scontrol", "ping"], env=env, timeout=timeout)
    if "UP" not in out:
        raise SlurmgovError(f"scontrol ping: slurmctld is not up: {out.strip().splitlines()[-1:] or '(no answer)'}")


def _token(comment) -> str | None:
    """The hold token of sacct's comment dict: only its AdminComment ("administrator"), which
    only root and SlurmUser can set. A user's Comment (or a bare string) is never trusted."""
    text = comment.get("administrator") if isinstance(comment, dict) else None
    m = TOKEN.search(text if isinstance(text, str) else "")
    return m.group(1) if m else None


def _id(value) -> str | None:
    """A job id from JSON; 0 or nothing is none."""
    return str(value) if value not in (None, "", 0, "0") else None


def _num(value):
    """A number of the JSON: Slurm 23.11+ (data_parser v0.0.40+, 24.11 and 26.05) wraps it as
    {"set", "infinite", "number"}; 22.05 (v0.0.38) gives it bare. Unset: None; infinite: INFINITE."""
    if isinstance(value, dict) and "number" in value:
        if not value.get("set"):
            return None
        return INFINITE if value.get("infinite") else value.get("number")
    return value


def _flags(value) -> str:
    """A state of the JSON: a list of flags from 23.11 (["PENDING", "REQUEUED"]; 24.11, 26.05), a
    string in 22.05; "" when missing. The base state comes first either way."""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value or "")


def _queued_v38(j: dict) -> dict:
    """A job of squeue --json with its numbers and flags as 22.05 writes them (see _num, _flags)."""
    out = {k: _num(v) for k, v in j.items()}
    out["job_state"] = _flags(j.get("job_state"))
    # 23.11+ lists "shared" as flags ([] when unset, ["user"], ...); 22.05 gives one word or null.
    if isinstance(j.get("shared"), list):
        out["shared"] = j["shared"][0] if j["shared"] else None
    return out


def _gpus(tres: list) -> int:
    return sum(int(t.get("count") or 0) for t in tres or () if t.get("type") == "gres" and t.get("name") == "gpu")


def _cpus(tres: list) -> int:
    """AllocCPUS, as sacct --json gives it: the ``cpu`` entry of the allocated TRES."""
    return sum(int(t.get("count") or 0) for t in tres or () if t.get("type") == "cpu")


def sacct_jobs(since: str = "now-2days", env=None, job_ids=None) -> list[Job]:
    """Jobs of every user that ended or ran since ``since`` (sacct's -S syntax), or just the
    jobs ``job_ids`` (whenever they ran: sacct's -j reaches back to the epoch)."""
    window = ["-j", ",".join(job_ids)] if job_ids else ["-S", since, "-E", "now"]
    data = json.loads(run(["sacct", "--json", "-a", *window], env=env))
    out = []
    for j in data.get("jobs", []):
        t = {k: _num(v) for k, v in (j.get("time") or {}).items()}
        state = _flags((j.get("state") or {}).get("current"))
        out.append(Job(str(j["job_id"]), j.get("account") or "", state, _token(j.get("comment")),
                       _gpus(j.get("tres", {}).get("allocated")), int(t.get("start") or 0),
                       int(t.get("end") or 0), int(t.get("elapsed") or 0),
                       _id(_num((j.get("array") or {}).get("job_id"))), j.get("user") or None,
                       _cpus(j.get("tres", {}).get("allocated"))))
    return out


def squeue_jobs(env=None) -> list[Queued]:
    """Every job slurmctld has (22.05's squeue --json ignores state filters: finished ones too)."""
    return [_queued(j) for j in squeue_json(env).get("jobs", [])]


def _queued(j: dict) -> Queued:
    # AdminComment only: a user's own Comment may name someone else's token
    return Queued(str(j["job_id"]), _token({"administrator": j.get("admin_comment")}), str(j.get("job_state") or ""),
                  int(j.get("restart_cnt") or 0), _id(j.get("array_job_id")), str(j.get("account") or ""),
                  None if _id(j.get("array_job_id")) else _view(j))


_SHARED = {"none": 0, "user": 2, "mcs": 3}  # squeue's "shared" -> job_desc.shared (0: --exclusive)


def _view(j: dict) -> HookView:
    """A queued job's request in the hook's terms (squeue --json as _queued_v38 gives it)."""
    def text(k):
        v = j.get(k)
        return v if isinstance(v, str) and v else None

    def count(k):
        v = j.get(k)
        return v if isinstance(v, int) and not isinstance(v, bool) and 0 < v < NO_VAL else None

    tl = j.get("time_limit")
    if not isinstance(tl, int) or isinstance(tl, bool) or tl == NO_VAL:
        time_limit = None
    else:
        time_limit = UNLIMITED if tl in (0, INFINITE) else tl
    return HookView(tres_per_node=text("tres_per_node"), tres_per_job=text("tres_per_job"),
                    tres_per_task=text("tres_per_task"), tres_per_socket=text("tres_per_socket"),
                    min_nodes=count("node_count"), max_nodes=count("max_nodes"), num_tasks=count("tasks"),
                    ntasks_per_node=count("tasks_per_node"), sockets_per_node=count("sockets_per_node"),
                    shared=_SHARED.get(text("shared") or ""), time_limit=time_limit, partition=text("partition"),
                    tasks_in_array=1)


def squeue_tokens(env=None) -> set[str]:
    """Hold tokens of the jobs Slurm still has (any state)."""
    return {q.token for q in squeue_jobs(env) if q.token}


def parse_partitions(text: str) -> list:
    """``scontrol -o show partition`` lines -> gpu_request.HookPartition, as the submit hook's
    part_list shows them: DefaultTime and MaxTime in minutes (NONE, UNLIMITED: None),
    Default=YES, OverSubscribe=EXCLUSIVE as max_share 0."""
    def minutes(value: str | None) -> int | None:
        secs = slurm_seconds(value) if value and value.upper() not in ("NONE", "UNLIMITED", "INFINITE") else None
        return None if secs is None else -(-secs // 60)

    out = []
    for line in text.splitlines():
        kv = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        if not kv.get("PartitionName"):
            continue
        out.append(HookPartition(
            kv["PartitionName"], default_time=minutes(kv.get("DefaultTime")), max_time=minutes(kv.get("MaxTime")),
            default=kv.get("Default", "NO").upper() == "YES",
            max_share=0 if kv.get("OverSubscribe", "").upper().startswith("EXCLUSIVE") else 1))
    return out


def scontrol_partitions(env=None, timeout: float = 15) -> list:
    """Every partition slurmctld has, hidden ones too (``scontrol -a -o show partition``), as
    the submit hook sees them (parse_partitions); SlurmgovError when Slurm does not answer."""
    return parse_partitions(run(["scontrol", "-a", "-o", "show", "partition"], env=env, timeout=timeout))


def job_states(job_ids, env=None) -> dict[str, tuple[str, list[str], float | None]]:
    """job id -> (state, nodes, start time) for the jobs squeue still knows."""
    ids = ",".join(job_ids)
    out = run(["squeue", "-h", "--states=all", "-j", ids, "-o", "%i|%T|%N|%S"], env=env, ok_codes=(0, 1))
    rows = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4:
            continue
        jid, state, nodes, start = parts
        try:
            names = hostlist.expand_hostlist(nodes) if nodes and nodes != "(null)" else []
        except hostlist.BadHostlist:
            names = []
        rows[jid] = (state, names, _slurm_time(start))
    return rows


def _slurm_time(text: str) -> float | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def sbatch_error(text: str) -> str:
    """The useful line of sbatch's stderr (the hook's message), without dask-jobqueue's wrapping."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "sbatch: error:" in ln:
            return ln.split("sbatch: error:", 1)[1].strip()
    return lines[-1] if lines else "sbatch failed"


def node_gres_used(env=None) -> str:
    """sinfo's ``NODE GRES_USED`` per node (placement.busy_gpus parses it)."""
    return run(["sinfo", "-N", "-h", "-O", "NodeList:64,GresUsed:256"], env=env)


def squeue_json(env=None) -> dict:
    """Every job squeue lists, all partitions, as its JSON document, each job's numbers and
    flags as 22.05 writes them (_queued_v38) whatever the release."""
    data = json.loads(run(["squeue", "--json", "-a"], env=env))
    data["jobs"] = [_queued_v38(j) for j in data.get("jobs") or []]
    return data


SLURM_ROOT_ACCOUNT = "root"  # the parent of every account in slurmdbd; no one's work is governed there


def associated_accounts(env=None, timeout: float = 15) -> set[str]:
    """Every account with an association in slurmdbd (``sacctmgr show assoc``), lower case as
    Slurm keeps them, but Slurm's own ``root`` account."""
    out = run(["sacctmgr", "-n", "-P", "show", "assoc", "format=account"], env=env, timeout=timeout)
    return {a for ln in out.splitlines() if (a := ln.strip().lower()) and a != SLURM_ROOT_ACCOUNT}


_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")


def _askable(user: str) -> None:
    if not _USER.fullmatch(user):
        raise SlurmgovError(f"user name {user!r} is not one sacctmgr can be asked about")


def user_accounts(user: str, env=None, timeout: float = 15) -> set[str]:
    """The accounts Slurm associates ``user`` with (``sacctmgr show assoc``): those a user may
    charge work to. The user name is passed as one argument, never through a shell."""
    _askable(user)
    out = run(["sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={user}", "format=account"], env=env,
              timeout=timeout)
    return {ln.strip() for ln in out.splitlines() if ln.strip()}


def parse_coordinators(text: str, user: str) -> set[str]:
    """``sacctmgr -n -P show user ... withcoord format=user,coordinators`` lines (``user|a,b``) ->
    the accounts ``user`` coordinates (only that user's line counts)."""
    found: set[str] = set()
    for line in text.splitlines():
        name, _, coords = line.strip().partition("|")
        if name == user:
            found |= {a.strip() for a in coords.split(",") if a.strip()}
    return found


def coordinator_accounts(user: str, env=None, timeout: float = 15) -> set[str]:
    """The accounts Slurm lists ``user`` as a coordinator of (``sacctmgr add coordinator
    account=A names=U``), A's sub-accounts included (sacctmgr lists them too, as tested on 22.05);
    none for a user Slurm does not know."""
    _askable(user)
    out = run(["sacctmgr", "-n", "-P", "show", "user", "where", f"name={user}", "withcoord",
               "format=user,coordinators"], env=env, timeout=timeout)
    return parse_coordinators(out, user)
